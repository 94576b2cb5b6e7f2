"""The reference interpreter: the living specification of the ISA, in plain Python.

Slow, short and meant to be obviously right. The Numba engine (sim/engine) implements the same
semantics and must agree with it bit for bit and cycle for cycle.

Execution model. First the queues say when each instruction dispatches (sim/icu.py: delays,
SYNC/NOTIFY, issue width), and those cycles are checked against the scheduler's prediction. Every
repetition of every instruction is then an *event* at one cycle; events run in cycle order (ties in
program order). Nothing inside one cycle depends on another event of that cycle, because every
latency is at least one cycle (SYNC and NOTIFY do nothing at their event).

- Streams. A vector entering eastward stream s at position p0 at cycle t0 is at position p0 + k at
  cycle t0 + k; westward, at p0 - k. So a vector is identified by its stream, direction and
  *diagonal* d = t0 - p0 (east) or t0 + p0 (west). It flows on until the chip's edge or until a
  unit downstream puts another vector on the same diagonal, which replaces it from there on (the
  TSP's stream registers: each position passes on what it received unless its unit writes).
  A consumer at position p at cycle t takes the vector on diagonal t - p (t + p) that entered
  nearest upstream of p (at p itself included); there must be one, and a vector that was replaced
  before it reached its consumer is caught by the vector id the consumer expects. Two vectors put
  at one position on one diagonal are a conflict.
- Memory. A WRITE commits `mem_write_latency` cycles after issue; a READ sees commits up to its
  cycle. Each word remembers the vector id it holds, so a READ of a vector that is not (yet, or any
  more) there is caught.
- Units. An op runs only on a queue of its unit (and an MXM op on its plane's): `unit_problem`.
- MXM tiles. Each plane holds one tile at a time, named by `aux`: an INSTALL of another tile
  starts a new one. Per plane, a flag per lane says which rows (columns) of it are installed, so
  a row installed twice, or a MATMUL whose extent (`row`) is not exactly the rows installed, is
  caught in either mode (`tile_problem`), as is a MATMUL of a tile the plane no longer holds.
- MXM accumulators. Per plane, rows of partial sums (mxm_accumulator_vectors): a MATMUL with
  ACC_OUT keeps its sums in row table + j (which must not hold a sum no MATMUL added yet), one
  with ACC_IN adds the sum it expects there (vid in1 + j) and takes it; a sum left at the end is
  a violation.
- Resources. Per cycle: one read and one write per MEM slice, `vxm_alus` VXM ops,
  `sxm_units_per_hemisphere` SXM ops per hemisphere, `mxm_install_vectors_per_cycle` installs and
  one matmul per MXM plane.
- Links. Per channel (a link's direction, sim/isa.py "Chip-to-chip links") the cycle it is busy
  until, and per (channel, receive slot) the vector it holds. A SEND's vector is in flight until
  it lands, t + c2c_latency + link_cycles(width) (like a WRITE's commit, arrivals land before the
  events of their cycle, in arrival order, ties in issue order); landing in a slot that still
  holds a vector no RECV took is a violation of the SEND. A RECV sees the vectors landed up to its
  cycle and frees its slot. Every violation of a SEND or RECV on an existing link of its chip
  begins with the link and both chips (`link_name`). Resident tensors are preloaded on, and
  outputs read back from, their symbol's chip.
- Select registers. A TOPK's register writes land `sxm_latency` cycles after issue, like a WRITE's
  commit; an indirect READ sees those landed up to its cycle. Which cycle first writes each
  register is known from the instructions alone, so a READ before it is caught in either mode.
- Arithmetic. VXM/SXM/MXM compute in float64, round to float32, then to the instruction's element
  type (`_round`, as the table in sim/isa.py says). Sums run sequentially in lane/row order.
  Resident tensors are rounded to their symbol's element type when preloaded.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from sim.errors import ScheduleViolation
from sim.icu import check_predicted, dispatch, raise_problem
from sim.isa import (
    DTYPE_BY_NAME,
    DTYPE_BYTES,
    DTYPE_NUMPY,
    FLAG_ACC_IN,
    FLAG_ACC_OUT,
    FLAG_BUFFER,
    FLAG_INDIRECT,
    FLAG_TRANSPOSED,
    OP_UNIT,
    SELECT_REGISTERS,
    VXM_ARITY,
    DType,
    Op,
    Unit,
    diagonal,
    disassemble_one,
    latency,
    link_channel,
    link_cycles,
    link_name,
    link_problem,
    matmul_period,
    matmul_problem,
    periods,
    queue_mxm,
    queue_name,
    queue_position,
    queue_sxm,
    stream_name,
    topk_problem,
    topk_registers,
    unit_problem,
)
from sim.program import Program, pack_tensor, unpack_tensor


@dataclass
class RawResult:
    """What an executor measured; `sim.result.SimResult` adds derived figures."""

    cycles: int
    outputs: dict[str, np.ndarray]
    counts: dict[str, int]  # events per resource kind (see COUNT_KEYS)
    bytes_read: int
    bytes_written: int
    instructions: int
    events: int
    trace: list[tuple[int, int, int]] = field(default_factory=list)  # (cycle, instr, rep)
    # (links, 2) int64 bytes sent over each link's channels a -> b and b -> a
    link_bytes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    # Groups of identical chips each simulated once (by its first), every chip in one; empty
    # when every chip was simulated (sim/engine/share.py)
    chip_groups: tuple[tuple[int, ...], ...] = ()


COUNT_KEYS = (
    "mem_read", "mem_write", "vxm", "sxm", "mxm_install", "mxm_matmul", "stream_hops", "c2c_send",
)  # fmt: skip


def _vxm(op: Op, a, b, c):
    """One VXM op on float64 operands (None where unused)."""
    if op == Op.ADD:
        return a + b
    if op == Op.SUB:
        return a - b
    if op == Op.MUL:
        return a * b
    if op in (Op.MAX, Op.MIN):
        pick = a >= b if op == Op.MAX else a <= b
        return np.where(np.isnan(a) | np.isnan(b), np.nan, np.where(pick, a, b))
    if op == Op.NEG:
        return -a
    if op == Op.EXP:
        return np.exp(a)
    if op == Op.RSQRT:
        return 1.0 / np.sqrt(a)
    if op == Op.CONVERT:
        return a
    if op == Op.SELECT:
        return np.where(a != 0, b, c)
    raise AssertionError(op)


def _round(values64: np.ndarray, code: int) -> np.ndarray:
    """float64 values rounded to float32, then to element type `code`, kept as float32."""
    out = values64.astype(np.float32)
    if code in (DType.FLOAT16, DType.BFLOAT16, DType.FP8E4M3):
        return out.astype(DTYPE_NUMPY[code]).astype(np.float32)
    if code == DType.BOOL:
        return (out != 0).astype(np.float32)
    if code == DType.INT8:
        # NumPy leaves float -> int8 casts of NaN and out-of-range values undefined: saturate
        # first; the int8 round trip turns rint's -0.0 into 0.0.
        whole = np.rint(np.clip(np.nan_to_num(out, nan=0.0), -128, 127))
        return whole.astype(np.int8).astype(np.float32)
    return out


def _spans(rows: np.ndarray) -> str:
    """Sorted row numbers as runs: [3, 5, 6, 7] -> '3, 5..7'."""
    runs, first = [], 0
    for k in range(1, len(rows) + 1):
        if k == len(rows) or rows[k] != rows[k - 1] + 1:
            a, b = int(rows[first]), int(rows[k - 1])
            runs.append(f"{a}" if a == b else f"{a}..{b}")
            first = k
    return ", ".join(runs)


def tile_problem(tile: int, extent: int, installed: np.ndarray, transposed: bool) -> str | None:
    """Why a MATMUL of `extent` cannot use the tile whose installed rows (columns) are
    `installed` ((lanes,) bool), or None: it must hold 0..extent-1, and no other."""
    what = "column" if transposed else "row"
    missing = np.flatnonzero(~installed[:extent])
    if len(missing):
        many = len(missing) > 1
        return (
            f"uses tile {tile} but {what}{'s' if many else ''} {_spans(missing)} "
            f"{'are' if many else 'is'} not installed (its extent is {extent})"
        )
    beyond = np.flatnonzero(installed[extent:]) + extent
    if len(beyond):
        return (
            f"uses tile {tile} of extent {extent} but it holds {what}s {_spans(beyond)} beyond it"
        )
    return None


def run_reference(
    program: Program,
    inputs: dict[str, np.ndarray] | None = None,
    *,
    functional: bool = True,
    trace: bool = False,
) -> RawResult:
    program = program.expand()  # bodies written out on their chips
    hw = program.hw
    lanes, S = hw.lanes, hw.streams_per_direction
    ins = program.instrs
    inputs = inputs or {}
    cycle, problem = dispatch(hw, ins)  # the queues' timing, from delays and barriers alone
    raise_problem(program, problem)
    check_predicted(program, cycle)

    links = program.links

    def violation(i: int, t: int, conflict: str) -> ScheduleViolation:
        if int(ins[i]["op"]) in (Op.SEND, Op.RECV) and link_problem(links, ins[i]) is None:
            conflict = f"{link_name(links, ins[i])}: {conflict}"
        return ScheduleViolation(
            chip=int(ins[i]["chip"]),
            unit=queue_name(hw, int(ins[i]["queue"])),
            cycle=t,
            index=i,
            instr=disassemble_one(hw, ins[i]),
            source=program.source(int(ins[i]["src"])),
            conflict=conflict,
        )

    # --- state ---------------------------------------------------------------------------------
    mem_vid: dict[tuple, int] = {}  # (chip, slice, addr) -> vid held by that word
    mem_val: dict[tuple, np.ndarray] = {}  # (chip, base slice, addr) -> (lanes,) float32
    pending: list[tuple[int, tuple, int, int, np.ndarray]] = []  # commits (cycle, key, w, vid, v)
    # (chip, dir, s, diag) -> {p0: (vid, values, p0, width, instr)}: the vectors put on a diagonal
    streams: dict[tuple, dict[int, tuple]] = {}
    busy: dict[tuple, int] = {}  # (resource..., cycle) -> uses
    planes: dict[tuple, dict] = {}  # (chip, plane, weight buffer) -> tile state
    accumulators: dict[tuple, dict] = {}  # (chip, plane) -> {row: (partial sum vid, values)}
    sel: dict[tuple, int] = {}  # (chip, register) -> unit index (functional mode; 0 if unwritten)
    sel_pending: list[tuple[int, tuple, int]] = []  # TOPK register writes (cycle, key, index)
    first_sel: dict[tuple, int] = {}  # (chip, register) -> cycle the first TOPK write lands
    for i in np.nonzero(ins["op"] == Op.TOPK)[0]:
        if ins[i]["repeat"] > 0:
            ready = int(cycle[i]) + latency(hw, Op.TOPK)
            for reg in topk_registers(hw, ins[i]):
                key = (int(ins[i]["chip"]), reg)
                first_sel[key] = min(first_sel.get(key, ready), ready)
    chan_busy: dict[int, int] = {}  # channel -> the cycle it is free again
    slots: dict[tuple, tuple] = {}  # (channel, slot) -> (vid, values) landed and not yet received
    # SENDs in flight, a heap of (arrival, issue order, channel, slot, vid, values, instr, cycle)
    arrivals: list[tuple] = []
    link_bytes = np.zeros((len(links), 2), np.int64)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    bytes_read = bytes_written = 0
    events_trace = []

    # Preload: parameters, inputs and constants sit in SRAM before cycle 0.
    for sym, values in program.resident(inputs, functional):
        width = DTYPE_BYTES[DTYPE_BY_NAME[sym.dtype]]
        vecs = pack_tensor(values, lanes) if values is not None else None
        for k in range(len(sym.addrs)):
            s, a = int(sym.slices[k]), int(sym.addrs[k])
            for m in range(width):
                mem_vid[(sym.chip, s + m, a)] = int(sym.vids[k])
            if vecs is not None:
                mem_val[(sym.chip, s, a)] = _round(
                    vecs[k].astype(np.float64), DTYPE_BY_NAME[sym.dtype]
                )

    def claim(i: int, t: int, resource: tuple, capacity: int, what: str) -> None:
        key = (*resource, t)
        busy[key] = busy.get(key, 0) + 1
        if busy[key] > capacity:
            raise violation(i, t, f"{what} is already in use in this cycle (capacity {capacity})")

    def put(i, chip, st, p0, t0, vid, values, width):
        d, s = divmod(st, S)
        if s % width or s + width > S:
            raise violation(i, t0, f"stream group {stream_name(hw, st)} x{width} is misaligned")
        diag = diagonal(d, t0, p0)
        for m in range(width):
            at = streams.setdefault((chip, d, s + m, diag), {})
            if p0 in at:
                other = at[p0]
                raise violation(
                    i,
                    t0,
                    f"stream {stream_name(hw, st + m)} already carries vector {other[0]} "
                    f"(from instruction #{other[4]}) put at this position on this diagonal",
                )
            at[p0] = (vid, values, p0, width, i)

    def nearest(chip, d, s, diag, p):
        """The vector on (stream s of direction d, diag) that entered nearest upstream of p."""
        at = streams.get((chip, d, s, diag), {})
        up = [p0 for p0 in at if (p0 <= p if d == 0 else p0 >= p)]
        return at[max(up) if d == 0 else min(up)] if up else None

    def width_at(chip, st, p, t) -> int:
        """Words of the vector on stream `st` at (p, t), 1 if none (taking it will say so)."""
        d, s = divmod(st, S)
        entry = nearest(chip, d, s, diagonal(d, t, p), p)
        return 1 if entry is None else entry[3]

    def take(i, chip, st, p, t, expect=-1):
        d, s = divmod(st, S)
        diag = diagonal(d, t, p)
        entry = nearest(chip, d, s, diag, p)
        if entry is None:
            raise violation(
                i, t, f"reads stream {stream_name(hw, st)} but no vector arrives there at cycle {t}"
            )
        vid, values, p0, width, src = entry
        for m in range(1, width):
            other = nearest(chip, d, s + m, diag, p)
            if other is None or other[4] != src:
                raise violation(i, t, f"stream group {stream_name(hw, st)} x{width} is torn")
        if expect >= 0 and vid != expect:
            raise violation(
                i,
                t,
                f"expects vector {expect} on stream {stream_name(hw, st)} but vector {vid} "
                "passes at this cycle (its operand is not there yet, no longer, or was replaced "
                "upstream)",
            )
        counts["stream_hops"] += abs(p - p0) * width
        return vid, values

    def land(upto: float) -> None:
        """The SENDs' vectors that arrive by cycle `upto` land in their slots."""
        while arrivals and arrivals[0][0] <= upto:
            at, _, ch, slot, vid, values, i, t_send = heapq.heappop(arrivals)
            if (ch, slot) in slots:
                raise violation(
                    i, t_send, f"vector {vid} lands in slot {slot} at cycle {at} and overwrites "
                    f"vector {slots[(ch, slot)][0]} not yet received",
                )  # fmt: skip
            slots[(ch, slot)] = (vid, values)

    # --- events --------------------------------------------------------------------------------
    reps, period = ins["repeat"].astype(np.int64), periods(ins)
    order = sorted(
        (int(cycle[i]) + j * int(period[i]), i, j)
        for i in range(len(ins))
        for j in range(int(reps[i]))
    )
    end = 0
    for t, i, j in order:
        while pending and pending[0][0] <= t:
            _, (chip, s, a), width, vid, values = pending.pop(0)
            for m in range(width):
                mem_vid[(chip, s + m, a)] = vid
            if values is not None:
                mem_val[(chip, s, a)] = values
        while sel_pending and sel_pending[0][0] <= t:
            _, key, index = sel_pending.pop(0)
            sel[key] = index
        land(t)
        if trace:
            events_trace.append((t, i, j))
        r = ins[i]
        op, chip, q = Op(int(r["op"])), int(r["chip"]), int(r["queue"])
        unit = OP_UNIT[op]
        if (problem := unit_problem(hw, r)) is not None:
            raise violation(i, t, problem)
        code = int(r["dtype"])
        width = DTYPE_BYTES[DType(code)]
        vid = int(r["vid"]) + j
        expect = [int(r[f"in{k}"]) + j if r[f"in{k}"] >= 0 else -1 for k in range(3)]
        p = queue_position(hw, q)
        lat = latency(hw, op)
        end = max(end, t + lat)

        if unit == Unit.MEM:
            s, a = int(r["slice"]), int(r["addr"]) + j * int(r["stride"])
            if s % width or s + width > hw.mem_slices or q != s:
                raise violation(i, t, f"slice group {s} x{width} is misaligned or not this queue")
            expect_vid = vid
            if op == Op.READ and r["flags"] & FLAG_INDIRECT:
                reg = int(r["row"])
                if not 0 <= reg < SELECT_REGISTERS:
                    raise violation(
                        i, t, f"select register {reg} is outside 0..{SELECT_REGISTERS - 1}"
                    )
                ready = first_sel.get((chip, reg), t)
                if ready > t:
                    raise violation(
                        i, t, f"reads select register {reg} before TOPK writes it at cycle {ready}"
                    )
                unit_index = sel.get((chip, reg), 0) if functional else 0
                a += unit_index * int(r["count"])
                expect_vid += unit_index * int(r["aux"])
            if a < 0 or a >= hw.words_per_slice:
                raise violation(i, t, f"address {a} is outside 0..{hw.words_per_slice - 1}")
            port = "rd" if op == Op.READ else "wr"
            ports = hw.mem_read_ports_per_slice if op == Op.READ else hw.mem_write_ports_per_slice
            for m in range(width):
                claim(
                    i, t, (chip, port, s + m), ports, f"every {queue_name(hw, s + m)} {port} port"
                )
            if op == Op.READ:
                for m in range(width):
                    held = mem_vid.get((chip, s + m, a), -1)
                    if held != expect_vid:
                        raise violation(
                            i,
                            t,
                            f"expects vector {expect_vid} at {queue_name(hw, s + m)}[{a}] but it holds "
                            + (
                                f"vector {held} (overwritten before its last reader)"
                                if held >= 0
                                else "nothing yet (read before the write arrives)"
                            ),
                        )
                # A word never written reads as zeros (an unchecked READ, vid -1, can reach one).
                values = (
                    mem_val.get((chip, s, a), np.zeros(lanes, np.float32)) if functional else None
                )
                put(i, chip, int(r["sd"]), p, t + lat, vid, values, width)
                counts["mem_read"] += width
                bytes_read += width * lanes
            else:
                got, values = take(i, chip, int(r["s0"]), p, t)
                if got != vid:
                    raise violation(i, t, f"stream carries vector {got}, not {vid}")
                pending.append((t + lat, (chip, s, a), width, vid, values))
                counts["mem_write"] += width
                bytes_written += width * lanes

        elif unit == Unit.VXM:
            claim(i, t, (chip, "vxm"), hw.vxm_alus, "every VXM ALU")
            arity = VXM_ARITY[op]
            _, a = take(i, chip, int(r["s0"]), p, t, expect[0])
            b = c = None
            if arity >= 2:
                b = (
                    take(i, chip, int(r["s1"]), p, t, expect[1])[1]
                    if r["s1"] >= 0
                    else float(r["imm"])
                )
            if arity == 3:
                c = take(i, chip, int(r["s2"]), p, t, expect[2])[1]
            values = None
            if functional:
                with np.errstate(all="ignore"):
                    f = [None if v is None else np.asarray(v, np.float64) for v in (a, b, c)]
                    values = _round(np.broadcast_to(_vxm(op, *f), (lanes,)), code)
            put(i, chip, int(r["sd"]), p, t + lat, vid, values, width)
            counts["vxm"] += 1

        elif unit == Unit.SXM:
            hemi = q - queue_sxm(hw, 0)
            if op == Op.TOPK and (problem := topk_problem(hw, r)) is not None:
                raise violation(i, t, problem)
            claim(i, t, (chip, "sxm", hemi), hw.sxm_units_per_hemisphere, "every SXM unit")
            _, a = take(i, chip, int(r["s0"]), p, t, expect[0])
            values = None
            if op == Op.TOPK:
                width = DTYPE_BYTES[DType.FLOAT32]
            if functional:
                if op == Op.TOPK:
                    k = int(r["imm"])
                    # IEEE 754 totalOrder as a signed integer key of the float32 bits.
                    bits = a[: int(r["count"])].view(np.int32).astype(np.int64)
                    keys = np.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
                    best = np.argsort(-keys, kind="stable")[:k]  # ties: the lower lane first
                    values = np.zeros(lanes, np.float32)
                    values[:k] = best
                    values[k : 2 * k] = a[best]
                    for n, lane in enumerate(best):
                        sel_pending.append((t + lat, (chip, int(r["table"]) + n), int(lane)))
                elif op == Op.PERMUTE:
                    table = program.tables[int(r["table"])]
                    values = np.where(table >= 0, a[np.maximum(table, 0)], 0.0).astype(np.float32)
                else:
                    acc = 0.0 if op == Op.REDUCE_SUM else -math.inf
                    for x in a[: int(r["count"])]:
                        x = float(x)
                        if op == Op.REDUCE_SUM:
                            acc += x
                        elif math.isnan(x) or math.isnan(acc):
                            acc = math.nan
                        elif x > acc:
                            acc = x
                    values = _round(np.full(lanes, acc), code)
            put(i, chip, int(r["sd"]), p, t + lat, vid, values, width)
            counts["sxm"] += 1

        elif unit == Unit.C2C:
            if (problem := link_problem(links, r)) is not None:
                raise violation(i, t, problem)
            ch, _, _ = link_channel(links, r)
            slot = int(r["addr"]) + j * int(r["stride"])
            if not 0 <= slot < hw.c2c_buffer_vectors:
                raise violation(
                    i, t, f"slot {slot} is outside 0..{hw.c2c_buffer_vectors - 1} "
                    "(c2c_buffer_vectors)",
                )  # fmt: skip
            if op == Op.SEND:
                busy_until = chan_busy.get(ch, t)
                if busy_until > t:
                    raise violation(i, t, f"the link is busy until cycle {busy_until} sending "
                                    "an earlier vector")  # fmt: skip
                cost = link_cycles(hw, width)
                chan_busy[ch] = t + cost
                _, values = take(i, chip, int(r["s0"]), p, t, expect[0])
                at = t + hw.c2c_latency_cycles + cost
                heapq.heappush(arrivals, (at, counts["c2c_send"], ch, slot, vid, values, i, t))
                counts["c2c_send"] += 1
                link_bytes[ch // 2, ch % 2] += width * lanes
            else:
                held = slots.get((ch, slot))
                if held is None or held[0] != vid:
                    coming = [x for x in arrivals if x[2] == ch and x[3] == slot]
                    if held is not None:
                        what = f"it holds vector {held[0]}"
                    elif coming:
                        first = min(coming, key=lambda x: x[:2])
                        what = (
                            f"nothing has landed there yet (vector {first[4]} lands at cycle "
                            f"{first[0]})"
                        )
                    else:
                        what = "it holds nothing and no SEND in flight fills it"
                    raise violation(i, t, f"expects vector {vid} in slot {slot} but {what}")
                put(i, chip, int(r["sd"]), p, t + lat, vid, held[1], width)
                del slots[(ch, slot)]

        elif unit == Unit.ICU:  # SYNC/NOTIFY did their work in the queues' timing
            if op == Op.IFETCH:  # an instruction word through the slice's read port
                s, a = int(r["slice"]), int(r["addr"])
                if not 0 <= s < hw.mem_slices:
                    raise violation(i, t, f"IFETCH reads slice {s}, outside 0..{hw.mem_slices - 1}")
                if a < 0 or a >= hw.words_per_slice:
                    raise violation(i, t, f"address {a} is outside 0..{hw.words_per_slice - 1}")
                claim(
                    i, t, (chip, "rd", s), hw.mem_read_ports_per_slice,
                    f"every {queue_name(hw, s)} rd port",
                )  # fmt: skip
                counts["mem_read"] += 1
                bytes_read += lanes

        else:  # MXM
            plane = int(r["plane"])
            buffer = 1 if int(r["flags"]) & FLAG_BUFFER else 0  # a tile per weight buffer
            st = planes.setdefault(
                (chip, plane, buffer),
                {
                    "tile": -1,
                    "ready": 0,
                    "installed": np.zeros(lanes, bool),  # rows (columns) of the tile
                    "used": False,
                    "transposed": False,
                    "w": np.zeros((lanes, lanes)),
                },
            )
            tile = int(r["aux"])
            if op == Op.INSTALL:
                transposed = bool(r["flags"] & FLAG_TRANSPOSED)
                what = "column" if transposed else "row"
                row = int(r["row"]) + j
                if not 0 <= row < lanes:
                    raise violation(
                        i, t, f"installs {what} {row} of tile {tile}, outside 0..{lanes - 1}"
                    )
                claim(
                    i, t, (chip, "mxi", plane), hw.mxm_install_vectors_per_cycle, "the install port"
                )
                _, v = take(i, chip, int(r["s0"]), p, t, expect[0])
                if st["tile"] != tile:  # a new tile; the old weights stay in place
                    st.update(tile=tile, used=False, ready=0, transposed=transposed)
                    st["installed"][:] = False
                elif st["used"]:
                    raise violation(i, t, f"installs into tile {tile} after a matmul used it")
                elif st["transposed"] != transposed:
                    held = "columns" if st["transposed"] else "rows"
                    raise violation(i, t, f"installs a {what} of tile {tile}, which holds {held}")
                if st["installed"][row]:
                    raise violation(i, t, f"installs {what} {row} of tile {tile} twice")
                st["installed"][row] = True
                if functional:
                    if transposed:
                        st["w"][:, row] = v
                    else:
                        st["w"][row, :] = v
                st["ready"] = max(st["ready"], t + lat)
                counts["mxm_install"] += 1
            else:
                if (problem := matmul_problem(hw, r)) is not None:
                    raise violation(i, t, problem)
                # The pipeline takes a cycle per INT8 input, several per wider one.
                busy_for = matmul_period(hw, width_at(chip, int(r["s0"]), p, t))
                for k in range(busy_for):
                    claim(i, t + k, (chip, "mxc", plane), 1, "the plane's compute port")
                _, x = take(i, chip, int(r["s0"]), p, t, expect[0])
                k, extent = int(r["count"]), int(r["row"])
                if st["tile"] != tile:
                    raise violation(
                        i,
                        t,
                        f"needs tile {tile} but the plane holds tile {st['tile']} "
                        "(overwritten before its last reader, or never installed)",
                    )
                if t < st["ready"]:
                    raise violation(i, t, f"tile {tile} is not installed until cycle {st['ready']}")
                problem = tile_problem(tile, extent, st["installed"], st["transposed"])
                if problem is not None:
                    raise violation(i, t, problem)
                if not st["transposed"] and extent < k:
                    raise violation(i, t, f"uses {k} rows of tile {tile}; {extent} installed")
                flags, row = int(r["flags"]), int(r["table"]) + j  # accumulator row
                rows = accumulators.setdefault((chip, plane), {})  # row -> (partial, values)
                if (
                    flags & (FLAG_ACC_IN | FLAG_ACC_OUT)
                    and not 0 <= row < hw.mxm_accumulator_vectors
                ):
                    raise violation(
                        i,
                        t,
                        f"accumulator row {row} is outside 0..{hw.mxm_accumulator_vectors - 1}",
                    )
                base = None
                if flags & FLAG_ACC_IN:
                    want, (held, base) = int(r["in1"]) + j, rows.pop(row, (-1, None))
                    if held != want:
                        raise violation(
                            i, t, f"expects partial sum {want} in accumulator row {row} but it "
                            f"holds {f'partial sum {held}' if held >= 0 else 'nothing'}",
                        )  # fmt: skip
                st["used"] = True
                values = None
                if functional:
                    acc = np.zeros(lanes, np.float64) if base is None else base.astype(np.float64)
                    w = st["w"].astype(np.float64)
                    for kk in range(k):
                        acc += float(x[kk]) * w[kk]
                    values = _round(acc, DType.FLOAT32)
                counts["mxm_matmul"] += 1
                if flags & FLAG_ACC_OUT:
                    if row in rows:
                        raise violation(
                            i, t, f"keeps partial sum {vid} in accumulator row {row}, which still "
                            f"holds partial sum {rows[row][0]} that no MATMUL added",
                        )  # fmt: skip
                    rows[row] = (vid, values)
                    continue
                put(i, chip, int(r["sd"]), p, t + lat, vid, values, DTYPE_BYTES[DType.FLOAT32])

    for _, (chip, s, a), width, vid, values in pending:
        for m in range(width):
            mem_vid[(chip, s + m, a)] = vid
        if values is not None:
            mem_val[(chip, s, a)] = values
    land(math.inf)  # vectors still in flight land (no RECV takes them)

    for (chip, plane), rows in sorted(accumulators.items()):
        for row, (vid, _) in sorted(rows.items()):
            raise ScheduleViolation(
                chip=chip,
                unit=queue_name(hw, queue_mxm(hw, plane)),
                cycle=end,
                index=-1,
                instr=f"accumulator row {row}",
                source="program end",
                conflict=f"partial sum {vid} is left in the accumulator: no MATMUL added it",
            )

    outputs = {}
    for sym in program.symbols_of("output"):
        width = DTYPE_BYTES[DTYPE_BY_NAME[sym.dtype]]
        vecs = np.zeros((len(sym.addrs), lanes), np.float32)
        for k in range(len(sym.addrs)):
            s, a, want = int(sym.slices[k]), int(sym.addrs[k]), int(sym.vids[k])
            held = mem_vid.get((sym.chip, s, a), -1)
            if held != want:
                raise ScheduleViolation(
                    chip=sym.chip,
                    unit=queue_name(hw, s),
                    cycle=end,
                    index=-1,
                    instr=f"output {sym.name}[{k}]",
                    source="program end",
                    conflict=f"output vector {want} is not at [{a}] (it holds {held})",
                )
            if functional:
                vecs[k] = mem_val[(sym.chip, s, a)]
        if functional:
            outputs[sym.name] = sym.to_host(unpack_tensor(vecs, sym.shape, lanes))
    return RawResult(
        cycles=end,
        outputs=outputs,
        counts=counts,
        bytes_read=bytes_read,
        bytes_written=bytes_written,
        instructions=len(ins),
        events=len(order),
        trace=events_trace,
        link_bytes=link_bytes,
    )
