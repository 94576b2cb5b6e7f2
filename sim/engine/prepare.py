"""Program -> the engine's arrays (NumPy only, no Numba): the per-instruction table, the sorted
events, the sizes of every state array, and the memory image before cycle 0.

Everything the reference decides per event from an instruction's fields (its unit, latency,
position, resources, stream keys, whether its slice group is aligned) is decided here once per
instruction, vectorised; the kernel only looks it up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.engine import schema as c
from sim.engine.rounding import round_vector
from sim.hardware import MAX_ELEMENT_BYTES
from sim.isa import (
    DTYPE_BY_NAME,
    DTYPE_BYTES,
    FLAG_TRANSPOSED,
    OP_UNIT,
    VXM_ARITY,
    DType,
    Op,
    Unit,
    latency,
    queue_position,
    queue_sxm,
)
from sim.program import Program, pack_tensor


def _lookup(table: dict, keys: np.ndarray, default: int = 0) -> np.ndarray:
    """table[key] for every key (small non-negative integer keys)."""
    lut = np.full(max(int(k) for k in table) + 1, default, np.int64)
    for k, v in table.items():
        lut[int(k)] = int(v)
    return lut[keys]


def _pow2_at_least(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def ring_size(hw, positions: np.ndarray) -> int:
    """Diagonals each stream key keeps (a power of two, so `diag & (RING - 1)` is the slot).

    Events run in cycle order. At cycle t, a take at position p in [0, P] (P the largest position
    of any unit, < hw.width_positions) reads diagonal t - p east or t + p west, and a put issued at
    t enters at t0 = t + lat, lat in [1, L] (L the largest latency), on diagonal t0 - p0 or t0 + p0.
    So every diagonal touched at cycle t lies in [t - P, t + L + P]: 2P + L + 1 consecutive values,
    and since t never decreases, a diagonal below that window is never touched again. Two live
    diagonals of one stream therefore differ by less than RING >= 2P + L + 1 and never share a slot;
    a slot holding another diagonal is stale (that vector has left the chip) and reads as empty.
    We take the next power of two >= 2 * (width_positions + L), which bounds 2P + L + 1.
    """
    ops = list(Op)
    largest = max(latency(hw, op) for op in ops)
    width = max(hw.width_positions, int(positions.max(initial=0)) + 1)
    return _pow2_at_least(2 * (width + largest))


@dataclass(frozen=True)
class Prepared:
    """A Program lowered to the engine's arrays (shared by both kernel variants)."""

    ins: np.ndarray  # (instructions, schema.N_COLS) int64
    imm: np.ndarray  # (instructions,) float64 immediate operands
    ev_t: np.ndarray  # (events,) int64 cycle of each event, sorted by (cycle, instruction, rep)
    ev_i: np.ndarray  # (events,) int32 its instruction
    par: np.ndarray  # (schema.N_PAR,) int64
    tables: np.ndarray  # (tables, lanes) int32 PERMUTE tables
    chip0: int  # index of chip 0 in the chip axis (chips are offset to start at 0)
    chips: int  # length of the chip axis
    mem_slices: int  # slices per chip in the memory arrays (>= hw.mem_slices)
    words: int  # addresses per slice in the memory arrays (what the program uses)
    ring_keys: int
    ring: int  # diagonals per key
    resources: int
    planes: int
    pending: int  # pending-commit FIFO capacity
    cycles: int  # when the last event's result lands (the reference's `end`)
    counts: dict  # event counts per resource kind, except stream hops (counted by the kernel)

    def cell(self, chip: int, slice_: np.ndarray, addr: np.ndarray) -> np.ndarray:
        """Flat memory index of (chip, slice, address)."""
        return ((chip + self.chip0) * self.mem_slices + slice_) * self.words + addr


def _check_fields(ins: np.ndarray) -> None:
    """Refuse records no executor can interpret, naming the first bad one."""
    for name, valid in (("op", {int(o) for o in Op}), ("dtype", {int(d) for d in DType})):
        bad = ~np.isin(ins[name], list(valid))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"instruction #{i} has {name} {int(ins[name][i])}, which is not a valid "
                f"{'Op' if name == 'op' else 'DType'} (valid: {sorted(valid)})"
            )
    bad = ins["queue"] < 0
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"instruction #{i} has queue {int(ins['queue'][i])}; queues are >= 0")


def _events(cycle: np.ndarray, reps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every repetition j of instruction i is an event at cycle[i] + j, sorted by (cycle, i, j)
    (j follows from the cycle, so (cycle, i) is unique and sorting on it suffices)."""
    n = len(cycle)
    if n == 0 or not reps.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    if (reps == 1).all():
        ev_i = np.arange(n, dtype=np.int64)
        ev_t = cycle
    else:
        ev_i = np.repeat(np.arange(n, dtype=np.int64), reps)
        first = np.repeat(np.cumsum(reps) - reps, reps)  # event number of each repetition 0
        ev_t = cycle[ev_i] + (np.arange(len(ev_i)) - first)
    lo, hi = int(ev_t.min()), int(ev_t.max())
    if (hi - lo + 1) * n < 2**62:  # one int64 key: one sort, much faster than lexsort
        key = np.sort((ev_t - lo) * n + ev_i)
        return key // n + lo, (key % n).astype(np.int32)
    order = np.lexsort((ev_i, ev_t))
    return ev_t[order], ev_i[order].astype(np.int32)


def prepare(program: Program) -> Prepared:
    hw = program.hw
    ins = program.instrs
    _check_fields(ins)
    n = len(ins)
    lanes, S = hw.lanes, hw.streams_per_direction
    col = np.zeros((n, c.N_COLS), np.int64)

    op = ins["op"].astype(np.int64)
    code = ins["dtype"].astype(np.int64)
    q = ins["queue"].astype(np.int64)
    unit = _lookup(OP_UNIT, op)
    width = np.where(op == Op.MATMUL, DTYPE_BYTES[DType.FLOAT32], _lookup(DTYPE_BYTES, code))
    lat = _lookup({o: latency(hw, o) for o in Op}, op)
    uq, q_inv = np.unique(q, return_inverse=True)
    pos = np.array([queue_position(hw, int(x)) for x in uq], np.int64)[q_inv]
    reps = np.maximum(ins["repeat"].astype(np.int64), 0)
    cycle = ins["cycle"].astype(np.int64)
    col[:, c.I_CYCLE] = cycle
    col[:, c.I_UNIT] = unit
    col[:, c.I_OP] = op
    col[:, c.I_CODE] = code
    col[:, c.I_WIDTH] = width
    col[:, c.I_LAT] = lat
    col[:, c.I_POS] = pos
    col[:, c.I_VID] = ins["vid"]

    # Chips: the reference keys state by chip number; the arrays offset the chip axis to 0.
    chip = ins["chip"].astype(np.int64)
    chip_lo = min(0, int(chip.min(initial=0)))
    chips = max(program.chips - 1, int(chip.max(initial=0))) - chip_lo + 1
    ci = chip - chip_lo

    # --- memory: (chip, slice, address) cells; only the addresses the program touches ---------------
    mem = unit == Unit.MEM
    s = ins["slice"].astype(np.int64)
    slice_ok = mem & (s % width == 0) & (s + width <= hw.mem_slices) & (q == s)
    syms = [sym for sym in program.symbols if len(sym.addrs)]
    for sym in syms:
        if (np.asarray(sym.slices) < 0).any() or (np.asarray(sym.addrs) < 0).any():
            raise ValueError(f"symbol {sym.name!r} has a negative slice or address")
    sym_width = [DTYPE_BYTES[DTYPE_BY_NAME[sym.dtype]] for sym in syms]
    mem_slices = max(
        [hw.mem_slices] + [int(sym.slices.max()) + w for sym, w in zip(syms, sym_width, strict=True)]
    )
    addr, stride = ins["addr"].astype(np.int64), ins["stride"].astype(np.int64)
    last = addr + np.maximum(reps - 1, 0) * stride
    touched = np.maximum(addr, last)[slice_ok & (reps > 0)]  # beyond the slice: caught, not stored
    words = max(
        program.words_used,
        1,
        min(int(touched.max(initial=-1)) + 1, hw.words_per_slice),
        *(int(sym.addrs.max()) + 1 for sym in syms),
    )
    col[:, c.I_SLICE_OK] = slice_ok
    col[:, c.I_CELL] = np.where(slice_ok, (ci * mem_slices + s) * words, 0)
    col[:, c.I_ADDR] = addr
    col[:, c.I_STRIDE] = stride

    # --- resources: MEM ports (chip, rd|wr, slice), VXM per chip, SXM per (chip, hemisphere),
    # MXM install and compute ports per (chip, plane); compacted to consecutive indices ---------------
    sxm, mxm = unit == Unit.SXM, unit == Unit.MXM
    port = (op == Op.WRITE).astype(np.int64)
    hemi_keys, hemi = np.unique(
        np.stack([ci, q - queue_sxm(hw, 0)], axis=1)[sxm], axis=0, return_inverse=True
    )
    plane_keys, plane = np.unique(
        np.stack([ci, ins["plane"].astype(np.int64)], axis=1)[mxm], axis=0, return_inverse=True
    )
    base_vxm = chips * 2 * hw.mem_slices
    base_sxm = base_vxm + chips
    base_install = base_sxm + len(hemi_keys)
    base_compute = base_install + len(plane_keys)
    res = np.zeros(n, np.int64)
    res[slice_ok] = ((ci * 2 + port) * hw.mem_slices + s)[slice_ok]
    res[unit == Unit.VXM] = (base_vxm + ci)[unit == Unit.VXM]
    res[sxm] = base_sxm + hemi.ravel()
    col[mxm, c.I_PLANE] = plane.ravel()
    res[mxm] = np.where(op[mxm] == Op.INSTALL, base_install, base_compute) + plane.ravel()
    col[:, c.I_RES] = res
    col[:, c.I_CAP] = np.select(
        [mem, unit == Unit.VXM, sxm, op == Op.INSTALL],
        [1, hw.vxm_alus, hw.sxm_units_per_hemisphere, hw.mxm_install_vectors_per_cycle],
        1,
    )

    # --- streams: key = (chip, direction, stream), direction = st // S as Python's divmod, so the
    # unused operand -1 lands where the reference puts it (a "direction -1" stream) -------------------
    arity = _lookup(VXM_ARITY, op)
    vxm = unit == Unit.VXM
    used = {
        "s0": (op == Op.WRITE) | vxm | sxm | mxm,
        "s1": vxm & (arity >= 2) & (ins["s1"] >= 0),
        "s2": vxm & (arity == 3),
        "sd": (op == Op.READ) | vxm | sxm | (op == Op.MATMUL),
    }
    streams = {f: ins[f].astype(np.int64) for f in used}
    dirs = np.concatenate([streams[f][u] // S for f, u in used.items()] + [np.array([0, 1])])
    d_lo, n_dirs = int(dirs.min()), int(dirs.max() - dirs.min()) + 1
    block = S + MAX_ELEMENT_BYTES  # room for the group check to look past the last stream
    for f, k_col, e_col in (
        ("s0", c.I_K0, c.I_EAST0),
        ("s1", c.I_K1, c.I_EAST1),
        ("s2", c.I_K2, c.I_EAST2),
        ("sd", c.I_KD, c.I_EASTD),
    ):
        d, within = np.divmod(streams[f], S)
        col[:, k_col] = np.where(used[f], (ci * n_dirs + d - d_lo) * block + within, -1)
        col[:, e_col] = d == 0
    within_d = streams["sd"] % S
    col[:, c.I_SD_OK] = (within_d % width == 0) & (within_d + width <= S)
    col[:, c.I_ARITY] = arity

    # --- MXM, SXM operands ------------------------------------------------------------------------
    col[:, c.I_TILE] = ins["aux"]
    col[:, c.I_TRANSPOSED] = (ins["flags"] & FLAG_TRANSPOSED) != 0
    col[:, c.I_ROW] = ins["row"]
    count = ins["count"].astype(np.int64)
    col[:, c.I_COUNT] = count
    col[:, c.I_NRED] = np.where(count >= 0, np.minimum(count, lanes), np.maximum(lanes + count, 0))
    tables = np.ascontiguousarray(program.tables, dtype=np.int32).reshape(-1, lanes)
    table = ins["table"].astype(np.int64)
    table = np.where(table < 0, table + len(tables), table)  # Python indexing, as the reference
    good_table = (tables < lanes).all(axis=1) if len(tables) else np.zeros(0, bool)
    ok = (table >= 0) & (table < len(tables))
    ok[ok] = good_table[table[ok]]
    col[:, c.I_TABLE] = np.where(ok, table, -1)

    ev_t, ev_i = _events(cycle, reps)
    ring = ring_size(hw, pos)
    write_lat = hw.mem_write_latency_cycles
    # At most one WRITE per slice port per cycle is in flight for write_lat cycles.
    pending = _pow2_at_least(chips * hw.mem_slices * write_lat + 2)
    par = np.zeros(c.N_PAR, np.int64)
    par[c.P_LANES] = lanes
    par[c.P_WORDS] = hw.words_per_slice
    par[c.P_CELL_STRIDE] = words
    par[c.P_RING_MASK] = ring - 1
    par[c.P_PENDING_MASK] = pending - 1

    live = reps > 0
    cycles = max(0, int((cycle + reps - 1 + lat)[live].max(initial=0)))
    words_moved = width * reps  # a MEM event counts one use per slice of its group
    counts = {
        "mem_read": int(words_moved[op == Op.READ].sum()),
        "mem_write": int(words_moved[op == Op.WRITE].sum()),
        "vxm": int(reps[vxm].sum()),
        "sxm": int(reps[sxm].sum()),
        "mxm_install": int(reps[op == Op.INSTALL].sum()),
        "mxm_matmul": int(reps[op == Op.MATMUL].sum()),
    }
    return Prepared(
        ins=col,
        imm=ins["imm"].astype(np.float64),
        ev_t=ev_t,
        ev_i=ev_i,
        par=par,
        tables=tables,
        chip0=-chip_lo,
        chips=chips,
        mem_slices=mem_slices,
        words=words,
        ring_keys=chips * n_dirs * block,
        ring=ring,
        resources=base_compute + len(plane_keys),
        planes=len(plane_keys),
        pending=pending,
        cycles=cycles,
        counts=counts,
    )


def preload(
    program: Program, prep: Prepared, inputs: dict, functional: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Memory before cycle 0: parameters, inputs and constants (chip 0), as the reference.

    Returns (vid per cell, value per cell: (cells, lanes) float32, empty unless functional).
    """
    lanes = program.hw.lanes
    cells = prep.chips * prep.mem_slices * prep.words
    mem_vid = np.full(cells, -1, np.int64)
    mem_val = np.zeros((cells if functional else 0, lanes), np.float32)
    for sym in program.symbols:
        if sym.kind == "output":
            continue
        code = DTYPE_BY_NAME[sym.dtype]
        if sym.kind == "const":
            values = program.consts[sym.name]
        elif sym.name in inputs:
            values = np.asarray(inputs[sym.name])
            if tuple(values.shape) != tuple(sym.shape):
                raise ValueError(
                    f"input {sym.name!r} has shape {values.shape}; the program needs {sym.shape}"
                )
        elif functional:
            raise ValueError(
                f"functional simulation needs input {sym.name!r} {sym.dtype}{list(sym.shape)}"
            )
        else:
            values = None
        if not len(sym.addrs):
            continue
        cell = prep.cell(0, sym.slices.astype(np.int64), sym.addrs.astype(np.int64))
        for m in range(DTYPE_BYTES[code]):
            mem_vid[cell + m * prep.words] = sym.vids
        if functional and values is not None:
            # Through float64 like every value the reference stores (this quiets signalling NaNs),
            # then rounded to the symbol's element type.
            vecs = pack_tensor(values, lanes).astype(np.float64).astype(np.float32).ravel()
            round_vector(vecs, int(code))
            mem_val[cell] = vecs.reshape(-1, lanes)
    return mem_vid, mem_val
