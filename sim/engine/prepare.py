"""Program -> what the event loop needs: the geometry (sizes, ranges, dense indices of SXM
hemispheres and MXM planes), the events sorted by (cycle, instruction, repetition), lookup tables,
and the memory image before cycle 0.

The kernel decodes each instruction record itself (a few table lookups and integer operations),
so preparation is one compiled pass over the records (`_scan`); only a program whose
instructions repeat or are out of cycle order needs a NumPy sort of its events, and only one
naming SXM/MXM units far outside the chip's a second pass (`_mark`) to number them densely.
Every pass over a large program's records is memory-bound, so there are as few as possible.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from sim.engine import schema as c
from sim.engine.flags import njit
from sim.engine.icu import dispatch_cycles
from sim.engine.rounding import quiet_nans, round_vector
from sim.hardware import HardwareConfig
from sim.icu import check_predicted, raise_problem
from sim.isa import (
    DTYPE_BY_NAME,
    DTYPE_BYTES,
    DTYPE_NUMPY,
    OP_UNIT,
    SELECT_REGISTERS,
    VXM_ARITY,
    DType,
    Op,
    Unit,
    latency,
    link_cycles,
    periods,
    queue_position,
    queue_sxm,
    queue_unit,
    repetitions,
    topk_registers,
)
from sim.program import Program, pack_tensor

READ, WRITE, INSTALL, MATMUL = int(Op.READ), int(Op.WRITE), int(Op.INSTALL), int(Op.MATMUL)
TOPK, IFETCH = int(Op.TOPK), int(Op.IFETCH)
SEND, RECV = int(Op.SEND), int(Op.RECV)
MEM, VXM, SXM, MXM = int(Unit.MEM), int(Unit.VXM), int(Unit.SXM), int(Unit.MXM)
C2C = int(Unit.C2C)
F32_WORDS = DTYPE_BYTES[DType.FLOAT32]  # a MATMUL result is float32 whatever its dtype field


def _lut(table: dict) -> np.ndarray:
    """`table` as an array indexed by a uint8 field (0 where absent)."""
    out = np.zeros(256, np.int64)
    for k, v in table.items():
        out[int(k)] = int(v)
    return out


# Per-op and per-dtype tables, indexed by the record's uint8 fields (0 for an invalid code).
# They are constants of the compiled code: see flags.py on refreshing the cache after a change.
UNIT_LUT = _lut(OP_UNIT)
ARITY_LUT = _lut(VXM_ARITY)
WIDTH_LUT = _lut(DTYPE_BYTES)
VALID_OP = _lut(dict.fromkeys(Op, 1))
VALID_DTYPE = _lut(dict.fromkeys(DType, 1))


def latency_lut(hw: HardwareConfig) -> np.ndarray:
    return _lut({op: latency(hw, op) for op in Op})


def _pow2_at_least(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


# Vectors the ring keeps per (stream, diagonal) at first. A diagonal carries one vector per
# position that puts on it; a program that puts more on one diagonal runs again with twice as many
# (the results cannot differ: only the ring's capacity does).
FIRST_WAYS = 2


@functools.lru_cache(maxsize=64)
def ring_size(hw: HardwareConfig, largest_position: int) -> int:
    """Diagonals each stream key keeps (a power of two, so `diag & (RING - 1)` is the slot).

    Events run in cycle order. At cycle t, a take at position p in [0, P] (P the largest position
    of any unit, < hw.width_positions) reads diagonal t - p east or t + p west, and a put issued at
    t enters at t0 = t + lat, lat in [1, L] (L the largest latency), on diagonal t0 - p0 or t0 + p0.
    So every diagonal touched at cycle t lies in [t - P, t + L + P]: 2P + L + 1 consecutive values,
    and since t never decreases, a diagonal below that window is never touched again. Two live
    diagonals of one stream therefore differ by less than RING >= 2P + L + 1 and never share a
    slot; a slot holding another diagonal is stale (its vector has left the chip) and reads as
    empty. We take the next power of two >= 2 * (width_positions + L), which exceeds 2P + L + 1.
    """
    largest_latency = max(latency(hw, op) for op in Op)
    width = max(hw.width_positions, largest_position + 1)
    return _pow2_at_least(2 * (width + largest_latency))


@njit
def _scan(ins, lat_lut, first_sxm_queue, stats, cycles):
    """One pass over the records (dispatched at `cycles`): validity, ranges, event count, end
    cycle, resource counts, and whether the events are the records in order."""
    big = np.iinfo(np.int64).max
    stats[:] = 0
    stats[c.S_BAD_OP] = -1
    stats[c.S_IN_ORDER] = 1
    for k in (c.S_CHIP_LO, c.S_QUEUE_LO, c.S_HEMI_LO, c.S_PLANE_LO, c.S_STREAM_LO):
        stats[k] = big
    for k in (c.S_CHIP_HI, c.S_QUEUE_HI, c.S_HEMI_HI, c.S_PLANE_HI, c.S_STREAM_HI):
        stats[k] = -big
    previous = -big
    for i in range(ins.size):
        r = ins[i]
        op = np.int64(r["op"])
        q = np.int64(r["queue"])
        bad = 0 if not VALID_OP[op] else (1 if not VALID_DTYPE[np.int64(r["dtype"])] else -1)
        unit = UNIT_LUT[op]
        if bad >= 0:
            stats[c.S_BAD_OP] = i
            stats[c.S_BAD_FIELD] = bad
            return
        chip = np.int64(r["chip"])
        stats[c.S_CHIP_LO] = min(stats[c.S_CHIP_LO], chip)
        stats[c.S_CHIP_HI] = max(stats[c.S_CHIP_HI], chip)
        stats[c.S_QUEUE_LO] = min(stats[c.S_QUEUE_LO], q)
        stats[c.S_QUEUE_HI] = max(stats[c.S_QUEUE_HI], q)
        # The stream operands this op reads and writes (as the kernel decodes them).
        arity = ARITY_LUT[op]
        s1 = np.int64(r["s1"])
        for st, used in (
            (np.int64(r["s0"]), (unit != MEM and op != RECV) or op == WRITE),
            (s1, unit == VXM and arity >= 2 and s1 >= 0),
            (np.int64(r["s2"]), unit == VXM and arity == 3),
            (np.int64(r["sd"]), op in (READ, MATMUL, RECV) or unit in (VXM, SXM)),
        ):
            if used:
                stats[c.S_STREAM_LO] = min(stats[c.S_STREAM_LO], st)
                stats[c.S_STREAM_HI] = max(stats[c.S_STREAM_HI], st)
        if unit == SXM:
            stats[c.S_HEMI_LO] = min(stats[c.S_HEMI_LO], q - first_sxm_queue)
            stats[c.S_HEMI_HI] = max(stats[c.S_HEMI_HI], q - first_sxm_queue)
        elif unit == MXM:
            stats[c.S_PLANE_LO] = min(stats[c.S_PLANE_LO], np.int64(r["plane"]))
            stats[c.S_PLANE_HI] = max(stats[c.S_PLANE_HI], np.int64(r["plane"]))
        reps = max(np.int64(r["repeat"]), 0)
        cycle = cycles[i]
        if reps != 1 or cycle < previous:
            stats[c.S_IN_ORDER] = 0
        previous = cycle
        if reps == 0:
            continue
        stats[c.S_EVENTS] += reps
        period = max(np.int64(r["period"]), 1)
        stats[c.S_END] = max(stats[c.S_END], cycle + (reps - 1) * period + lat_lut[op])
        words = WIDTH_LUT[np.int64(r["dtype"])]
        if unit == MEM:
            a = np.int64(r["addr"])
            stats[c.S_TOUCHED] = max(stats[c.S_TOUCHED], a + 1, a + (reps - 1) * r["stride"] + 1)
            stats[c.S_MEM_READ if op == READ else c.S_MEM_WRITE] += words * reps
        elif unit == VXM:
            stats[c.S_VXM] += reps
        elif unit == SXM:
            stats[c.S_SXM] += reps
            stats[c.S_TOPK] += op == TOPK
        elif unit == MXM:
            stats[c.S_INSTALL if op == INSTALL else c.S_MATMUL] += reps
        elif op == IFETCH:  # a word of instructions, through a read port
            stats[c.S_MEM_READ] += reps
        elif op == SEND:
            stats[c.S_C2C_SEND] += reps


@njit
def _mark(ins, g, hemi_present, plane_present):
    """Mark the (chip, hemisphere) and (chip, plane) pairs the SXM and MXM instructions name."""
    for i in range(ins.size):
        r = ins[i]
        unit = UNIT_LUT[np.int64(r["op"])]
        ci = np.int64(r["chip"]) - g[c.G_CHIP_LO]
        if unit == SXM:
            hemi = np.int64(r["queue"]) - g[c.G_FIRST_SXM_QUEUE] - g[c.G_HEMI_LO]
            hemi_present[ci * g[c.G_HEMIS] + hemi] = True
        elif unit == MXM:
            plane_present[ci * g[c.G_PLANES] + np.int64(r["plane"]) - g[c.G_PLANE_LO]] = True


def _events(ins: np.ndarray, cycle: np.ndarray, in_order: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every repetition j of instruction i is an event at cycle[i] + j * period[i], sorted by
    (cycle, i, j) (j follows from the cycle, so sorting on (cycle, i) suffices)."""
    n = len(cycle)
    if in_order:  # the compiler's output: events are the instructions, in order
        return cycle, np.arange(n, dtype=np.int32)
    ev_i, j = repetitions(ins)
    if not len(ev_i):
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    ev_t = cycle[ev_i] + j * periods(ins)[ev_i]
    lo, hi = int(ev_t.min()), int(ev_t.max())
    if (hi - lo + 1) * n < 2**62:  # one int64 key: one sort, much faster than lexsort
        key = np.sort((ev_t - lo) * n + ev_i)
        return key // n + lo, (key % n).astype(np.int32)
    order = np.lexsort((ev_i, ev_t))
    return ev_t[order], ev_i[order].astype(np.int32)


def _dense(present: np.ndarray) -> tuple[np.ndarray, int]:
    """slot -> consecutive index over the slots present, and how many there are."""
    return np.cumsum(present) - 1, int(present.sum())


@dataclass(frozen=True)
class Prepared:
    """A Program ready for the kernels (shared by both variants)."""

    ev_t: np.ndarray  # (events,) int64 cycle of each event, sorted by (cycle, instruction, rep)
    ev_i: np.ndarray  # (events,) int32 its instruction
    dispatch: np.ndarray  # (instructions,) int64 the cycle each one's queue dispatches it
    g: np.ndarray  # (schema.N_GEOMETRY,) int64
    lat_lut: np.ndarray  # (256,) int64 latency per op code
    pos_lut: np.ndarray  # (queues,) int64 floorplan position per queue, from schema.G_QUEUE_LO
    queue_lut: np.ndarray  # (queues, 2) int64 (unit, index) of each queue, the same way
    hemi_map: np.ndarray  # dense slot of each (chip, hemisphere) / (chip, plane), see schema.G_*
    plane_map: np.ndarray
    tables: np.ndarray  # (tables, lanes) int32 PERMUTE tables
    table_ok: np.ndarray  # (tables,) bool: no entry beyond the lanes
    cells: int  # memory cells (chip, slice, address)
    ring_rows: int  # slots per way: the ring holds ring_rows * g[G_WAYS]
    resources: int
    planes: int
    pending: int  # capacity of the pending-commit FIFO
    sel_first: np.ndarray  # (chips * SELECT_REGISTERS,) int64, see schema.NEVER
    sel_pending: int  # capacity of the pending select-register FIFO
    cycles: int  # when the last event's result lands (the reference's `end`)
    counts: dict  # events per resource kind, except stream hops (counted by the kernel)
    links: np.ndarray  # (links, 2) int64 the chips each link joins
    arrivals: int  # capacity of each arrivals FIFO (SENDs in flight)
    external: np.ndarray  # (arrivals, N_ARRIVAL) int64 other chips' SENDs to this program's
    link_bytes: np.ndarray  # (links, 2) int64 bytes each channel carries (if the run completes)

    def cell(self, chip: int, slice_: np.ndarray, addr: np.ndarray) -> np.ndarray:
        """Flat memory index of (chip, slice, address)."""
        g = self.g
        chip_index = chip - g[c.G_CHIP_LO]
        return ((chip_index * g[c.G_CELL_WORDS] + addr) * g[c.G_CELL_SLICES] + slice_).astype(
            np.int64
        )


@functools.lru_cache(maxsize=64)
def _queue_luts(hw: HardwareConfig, queue_lo: int, queues: int) -> tuple[np.ndarray, np.ndarray]:
    """(position, (unit, plane)) of queues queue_lo..queue_lo + queues - 1 (-1: none); cached (a
    placed run prepares hundreds of small programs), so shared: read, never written (writeable
    all the same: a read-only array is another type to Numba's kernels)."""
    pos_lut = np.array([queue_position(hw, queue_lo + q) for q in range(queues)], np.int64)
    queue_lut = np.full((queues, 2), -1, np.int64)
    for q in range(queues):
        held = queue_unit(hw, queue_lo + q)
        if held is not None:
            queue_lut[q] = int(held[0]), held[1]
    return pos_lut, queue_lut


def scan(program: Program, cycles: np.ndarray) -> np.ndarray:
    """The pre-pass's statistics (schema S_*) of a program dispatched at `cycles`; a ValueError
    for an instruction no executor can run."""
    hw, ins = program.hw, program.instrs
    stats = np.zeros(c.N_STATS, np.int64)
    _scan(ins, latency_lut(hw), queue_sxm(hw, 0), stats, cycles)
    if stats[c.S_BAD_OP] >= 0:
        i, field = int(stats[c.S_BAD_OP]), ("op", "dtype")[int(stats[c.S_BAD_FIELD])]
        valid = {"op": sorted(map(int, Op)), "dtype": sorted(map(int, DType))}
        raise ValueError(
            f"instruction #{i} has {field} {int(ins[field][i])}, which no executor can run "
            f"(valid: {valid[field]})"
        )
    return stats


def counts_of(stats: np.ndarray) -> dict:
    """Events per resource kind the pre-pass counted (all but stream hops)."""
    return dict(
        zip(
            ("mem_read", "mem_write", "vxm", "sxm", "mxm_install", "mxm_matmul"),
            (int(x) for x in stats[c.S_MEM_READ : c.S_MATMUL + 1]),
            strict=True,
        ),
        c2c_send=int(stats[c.S_C2C_SEND]),
    )


def prepare_program(
    program: Program, cycles: np.ndarray | None = None, external: np.ndarray | None = None
) -> Prepared:
    """`cycles`: the queues' dispatch cycles, already derived and checked (a chip of a larger
    program, sim/engine/share.py); `external`: (arrivals, N_ARRIVAL) int64 vectors other chips
    send to this program's, by arrival (A_EVENT -1), for FIFO_EXTERNAL: chip 0 then runs alone
    (schema.G_ALONE)."""
    alone = external is not None
    hw = program.hw
    ins = program.instrs
    lanes, S = hw.lanes, hw.streams_per_direction
    lat_lut = latency_lut(hw)
    if cycles is None:
        cycles, problem = dispatch_cycles(hw, ins)  # the queues' timing, from delays and barriers
        raise_problem(program, problem)
        check_predicted(program, cycles)
    external = np.zeros((0, c.N_ARRIVAL), np.int64) if external is None else external
    stats = scan(program, cycles)
    n = len(ins)

    def span(lo, hi):  # (first, count) of a range the pre-pass found, (0, 1) if it found none
        return (
            (int(stats[lo]), int(stats[hi] - stats[lo]) + 1) if stats[lo] <= stats[hi] else (0, 1)
        )

    queue_lo, queues = span(c.S_QUEUE_LO, c.S_QUEUE_HI)
    pos_lut, queue_lut = _queue_luts(hw, queue_lo, queues)

    # Chips: the reference keys state by chip number; the arrays offset the chip axis to 0.
    chip_lo = min(0, int(stats[c.S_CHIP_LO])) if n else 0
    chips = max(program.chips - 1, int(stats[c.S_CHIP_HI]) if n else 0) - chip_lo + 1

    # Memory cells (chip, slice, address): the chip's slices and any symbol's, and the addresses
    # the program names (one beyond the slice is caught before it is stored).
    syms = [sym for sym in program.symbols if len(sym.addrs)]
    for sym in syms:
        if (sym.slices < 0).any() or (sym.addrs < 0).any():
            raise ValueError(f"symbol {sym.name!r} has a negative slice or address")
    cell_slices = max(
        [hw.mem_slices]
        + [int(sym.slices.max()) + DTYPE_BYTES[DTYPE_BY_NAME[sym.dtype]] for sym in syms]
    )
    cell_words = max(
        program.words_used,
        1,
        min(int(stats[c.S_TOUCHED]), hw.words_per_slice),
        *(int(sym.addrs.max()) + 1 for sym in syms),
    )

    hemi_lo, hemis = span(c.S_HEMI_LO, c.S_HEMI_HI)
    plane_lo, planes_per_chip = span(c.S_PLANE_LO, c.S_PLANE_HI)
    # Stream keys (chip, direction, stream) for every direction an operand uses.
    stream_lo, streams = span(c.S_STREAM_LO, c.S_STREAM_HI)
    dir_lo = stream_lo // S
    dirs = (stream_lo + streams - 1) // S - dir_lo + 1
    ring = ring_size(hw, int(pos_lut.max()))
    # A WRITE stays pending write-latency cycles and holds a port of its slice when issued.
    pending = _pow2_at_least(
        chips * hw.mem_slices * hw.mem_write_ports_per_slice * hw.mem_write_latency_cycles + 2
    )

    g = np.zeros(c.N_GEOMETRY, np.int64)
    g[c.G_STREAMS], g[c.G_SLICES], g[c.G_LANES] = S, hw.mem_slices, lanes
    g[c.G_WORDS_PER_SLICE] = hw.words_per_slice
    g[c.G_CHIP_LO], g[c.G_CELL_SLICES], g[c.G_CELL_WORDS] = chip_lo, cell_slices, cell_words
    g[c.G_HEMI_LO], g[c.G_HEMIS] = hemi_lo, hemis
    g[c.G_PLANE_LO], g[c.G_PLANES] = plane_lo, planes_per_chip
    g[c.G_DIR_LO], g[c.G_DIRS] = dir_lo, dirs
    g[c.G_FIRST_SXM_QUEUE], g[c.G_QUEUE_LO] = queue_sxm(hw, 0), queue_lo
    if hemis <= 2 and planes_per_chip <= hw.mxm_planes + 1:  # as the compiler names them
        hemi_map, n_hemi = np.arange(chips * hemis), chips * hemis
        plane_map, n_planes = np.arange(chips * planes_per_chip), chips * planes_per_chip
    else:  # number only the units the program names, so state and weights stay small
        hemi_present = np.zeros(chips * hemis, bool)
        plane_present = np.zeros(chips * planes_per_chip, bool)
        _mark(ins, g, hemi_present, plane_present)
        hemi_map, n_hemi = _dense(hemi_present)
        plane_map, n_planes = _dense(plane_present)
    g[c.G_BASE_VXM] = chips * 2 * hw.mem_slices
    g[c.G_BASE_SXM] = g[c.G_BASE_VXM] + chips
    g[c.G_BASE_INSTALL] = g[c.G_BASE_SXM] + n_hemi
    g[c.G_BASE_COMPUTE] = g[c.G_BASE_INSTALL] + n_planes
    g[c.G_BASE_LINK] = g[c.G_BASE_COMPUTE] + n_planes
    g[c.G_VXM_CAP], g[c.G_SXM_CAP] = hw.vxm_alus, hw.sxm_units_per_hemisphere
    g[c.G_INSTALL_CAP] = hw.mxm_install_vectors_per_cycle
    g[c.G_READ_PORTS] = hw.mem_read_ports_per_slice
    g[c.G_WRITE_PORTS] = hw.mem_write_ports_per_slice
    g[c.G_WAYS] = FIRST_WAYS
    g[c.G_WEIGHT_BUFFERS] = hw.mxm_weight_buffers
    g[c.G_FP16_CYCLES] = hw.mxm_fp16_cycles_per_vector
    g[c.G_ACC_ROWS] = hw.mxm_accumulator_vectors
    tables = np.ascontiguousarray(program.tables, dtype=np.int32).reshape(-1, lanes)
    g[c.G_TABLES] = len(tables)
    g[c.G_RING_MASK], g[c.G_PENDING_MASK] = ring - 1, pending - 1
    # TOPKs in flight: issued in the last sxm-latency cycles, each writing <= every register.
    sel_pending = _pow2_at_least(
        n_hemi * hw.sxm_units_per_hemisphere * hw.sxm_latency_cycles * SELECT_REGISTERS + 1
    )
    g[c.G_SEL_PENDING_MASK] = sel_pending - 1
    g[c.G_KEYS] = chips * dirs * (S + c.KEY_PAD)
    links = program.links.astype(np.int64)
    channels = 2 * len(links)
    for w in (1, 2, 4):
        g[c.G_LINK_CYCLES + w] = link_cycles(hw, w)
    g[c.G_LINKS], g[c.G_C2C_SLOTS] = len(links), hw.c2c_buffer_vectors
    g[c.G_C2C_LATENCY] = hw.c2c_latency_cycles
    # A FIFO holds the SENDs issued in the last latency + link cycles (those landing later), and a
    # channel sends at most one vector per link_cycles(1): so few per channel, and never more
    # than the program has.
    in_flight = (hw.c2c_latency_cycles + link_cycles(hw, 4)) // link_cycles(hw, 1) + 1
    arrivals = _pow2_at_least(
        max(min(channels * in_flight, int(stats[c.S_C2C_SEND])), len(external)) + 1
    )
    g[c.G_ARRIVAL_MASK] = arrivals - 1
    g[c.G_EXTERNAL] = len(external)
    g[c.G_ALONE] = int(alone)

    ev_t, ev_i = _events(ins, cycles, bool(stats[c.S_IN_ORDER]))
    sel_first = np.full(chips * SELECT_REGISTERS, c.NEVER, np.int64)
    if stats[c.S_TOPK]:  # one more pass over the records, only for programs that select
        _first_select_writes(hw, ins, cycles, chip_lo, sel_first)
    return Prepared(
        ev_t=ev_t,
        ev_i=ev_i,
        dispatch=cycles,
        g=g,
        lat_lut=lat_lut,
        pos_lut=pos_lut,
        queue_lut=queue_lut,
        hemi_map=hemi_map,
        plane_map=plane_map,
        tables=tables,
        table_ok=(tables < lanes).all(axis=1),  # a larger entry: IndexError in the reference
        cells=chips * cell_slices * cell_words,
        ring_rows=int(g[c.G_KEYS]) * ring,
        resources=int(g[c.G_BASE_LINK]) + channels,
        planes=n_planes,
        pending=pending,
        sel_first=sel_first,
        sel_pending=sel_pending,
        cycles=max(0, int(stats[c.S_END])),
        counts=counts_of(stats),
        links=links,
        arrivals=arrivals,
        external=external,
        link_bytes=link_bytes(hw, ins, links) if stats[c.S_C2C_SEND] else np.zeros_like(links),
    )


def link_bytes(hw: HardwareConfig, ins: np.ndarray, links: np.ndarray) -> np.ndarray:
    """Bytes the SENDs put on each (link, direction), counted from the instructions alone (a
    run that completes runs every SEND, each on a link that exists and ends at its chip)."""
    table = ins["table"]
    sel = np.flatnonzero((ins["op"] == SEND) & (table >= 0) & (table < len(links)))
    link = table[sel].astype(np.int64)
    backward = (ins["chip"][sel] != links[link, 0]).astype(np.int64)  # sent from its chip b
    n = np.maximum(ins["repeat"][sel].astype(np.int64), 0) * WIDTH_LUT[ins["dtype"][sel]]
    words = np.bincount(2 * link + backward, n, minlength=2 * len(links))  # (exact: < 2**53)
    return (words.astype(np.int64) * hw.lanes).reshape(-1, 2).astype(links.dtype)


def _first_select_writes(hw: HardwareConfig, ins, cycles, chip_lo: int, first: np.ndarray):
    """first[chip index * SELECT_REGISTERS + register] = when the first TOPK write lands."""
    lat = latency(hw, Op.TOPK)
    for i in np.nonzero(ins["op"] == TOPK)[0]:
        r = ins[i]
        if r["repeat"] <= 0:
            continue
        ready = int(cycles[i]) + lat
        for reg in topk_registers(hw, r):
            k = (int(r["chip"]) - chip_lo) * SELECT_REGISTERS + reg
            first[k] = ready if first[k] == c.NEVER else min(int(first[k]), ready)


def preload(
    program: Program, prep: Prepared, inputs: dict, functional: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Memory before cycle 0: parameters, inputs and constants on their symbols' chips.

    Returns (vector id per cell, values per cell: (cells, lanes) float32, empty unless functional).
    """
    lanes = program.hw.lanes
    mem_vid = np.full(prep.cells, -1, np.int64)
    mem_val = np.zeros((prep.cells if functional else 0, lanes), np.float32)
    for sym, values in program.resident(inputs, functional):
        code = DTYPE_BY_NAME[sym.dtype]
        if not len(sym.addrs):
            continue
        cell = prep.cell(sym.chip, sym.slices, sym.addrs)
        for m in range(DTYPE_BYTES[code]):
            mem_vid[cell + m] = sym.vids
        if functional:
            vecs = pack_tensor(values, lanes)  # (vectors, lanes) float32, a fresh array
            flat = vecs.reshape(-1)
            quiet_nans(flat)  # as the reference's round trip through float64
            if values.dtype != DTYPE_NUMPY[code]:  # otherwise rounding changes nothing
                round_vector(flat, int(code))
            mem_val[cell] = vecs
    return mem_vid, mem_val
