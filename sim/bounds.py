"""Lower bounds on a Program's cycle count on its chip, and what sets them.

Every bound is what the Program's own work needs on this machine, however it were scheduled:

    mxm_install   installed rows / (planes x rows a plane installs per cycle)
    mxm_compute   compute-pipeline cycles / planes (an INT8 input a cycle, FP16 at a quarter)
    sram_read     words read / (slices x read ports per slice); sram_write likewise
    vxm, sxm      vector ops / ALUs (units) that run them each cycle
    streams       the busiest cut between two neighbouring positions: the words that cross it
                  one way / streams per direction (each stream carries one word per cycle past
                  any point). A vector crosses from where it is put to where it is taken
    dependency    the longest chain of the Program's dataflow, every instruction as early as
                  its inputs allow (with their real latencies and distances) and no unit, port
                  or stream ever busy: what is left when resource conflicts cost nothing (a
                  vector a SEND sends is at its RECV c2c_latency + link_cycles later)

Both the stream cuts and the dependency chain match each taken vector to the put it came from as
the simulator does (the nearest put upstream on its diagonal), from each instruction's first
repetition: the compiler streams a run from one run.

Each resource term is the busiest chip's (every chip has its own units, ports and streams); the
dependency chain runs across chips, through their transfers. The largest is the step's bound; `bound / simulated cycles` says how close the schedule comes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.icu import cycles_of
from sim.isa import (
    DTYPE_BYTES,
    DTYPE_WIDTHS,
    OP_UNIT,
    VXM_ARITY,
    DType,
    Op,
    Unit,
    latency,
    link_channel,
    link_cycles,
    link_problem,
    n_queues,
    periods,
    queue_position,
)
from sim.program import Program

F32 = DTYPE_BYTES[DType.FLOAT32]


@dataclass(frozen=True)
class Bounds:
    cycles: int  # the largest of the terms
    binding: str  # the term that sets it
    terms: dict[str, int]

    def fraction(self, simulated_cycles: int) -> float:
        return self.cycles / simulated_cycles if simulated_cycles else 1.0


def _lut(table: dict, default: int) -> np.ndarray:
    """`table` as an array indexed by a uint8 field (`default` where absent)."""
    out = np.full(256, default, np.int64)
    for k, v in table.items():
        out[int(k)] = int(v)
    return out


UNIT_LUT = _lut(OP_UNIT, -1)


def put_words(ins: np.ndarray) -> np.ndarray:
    """Words (streams) of the vector each instruction puts on a stream: its element type's,
    float32 for a MATMUL whatever its dtype field."""
    w = DTYPE_WIDTHS[ins["dtype"].astype(np.int64)]
    return np.where(ins["op"] == int(Op.MATMUL), F32, w)


def matmul_cycles(ins: np.ndarray) -> int:
    """Compute-pipeline cycles of every MATMUL repetition: one per INT8 input, more per wider
    (its period, as the compiler streams them; at least the machine's rate)."""
    mm = ins[ins["op"] == int(Op.MATMUL)]
    return int((mm["repeat"].astype(np.int64) * periods(mm)).sum())


def resource_bounds(program: Program) -> dict[str, int]:
    """Each unit kind's work over its units, on the busiest chip (every chip has its own)."""
    program = program.expand()  # bodies written out on their chips
    chips = program.instrs["chip"]
    per_chip = [_chip_bounds(program.hw, program.instrs[chips == c]) for c in np.unique(chips)]
    return {k: max(b[k] for b in per_chip) for k in per_chip[0]} if per_chip else {}


def _chip_bounds(hw, ins: np.ndarray) -> dict[str, int]:
    op = ins["op"].astype(np.int64)
    reps = ins["repeat"].astype(np.int64)
    width = put_words(ins)

    def events(*ops) -> int:
        return int(reps[np.isin(op, [int(o) for o in ops])].sum())

    per_unit = UNIT_LUT[op]
    reads = int((reps * width)[op == int(Op.READ)].sum())
    writes = int((reps * width)[op == int(Op.WRITE)].sum())

    def ceil(a: int, b: int) -> int:
        return -(-a // b)

    return {
        "mxm_install": ceil(events(Op.INSTALL), hw.mxm_planes * hw.mxm_install_vectors_per_cycle),
        "mxm_compute": ceil(matmul_cycles(ins), hw.mxm_planes),
        "sram_read": ceil(reads, hw.mem_slices * hw.mem_read_ports_per_slice),
        "sram_write": ceil(writes, hw.mem_slices * hw.mem_write_ports_per_slice),
        "vxm": ceil(int(reps[per_unit == int(Unit.VXM)].sum()), hw.vxm_alus),
        "sxm": ceil(int(reps[per_unit == int(Unit.SXM)].sum()), 2 * hw.sxm_units_per_hemisphere),
    }


class _Puts:
    """The vectors put on each (chip, stream, diagonal), by position: a take at p finds the one
    put nearest upstream of p (p itself included), as the simulator does."""

    def __init__(self, streams_per_direction: int) -> None:
        self.S = streams_per_direction
        self.at: dict[tuple, dict[int, tuple]] = {}

    def add(self, chip: int, st: int, diag: int, p: int, value: tuple) -> None:
        self.at.setdefault((chip, st, diag), {})[p] = value

    def nearest(self, chip: int, st: int, diag: int, p: int) -> tuple[tuple, int] | None:
        """(value, position) of the put a take at p sees, or None."""
        at = self.at.get((chip, st, diag))
        if not at:
            return None
        east = st // self.S == 0
        if len(at) == 1:  # the common case: one vector on the diagonal
            ((p0, value),) = at.items()
            return (value, p0) if (p0 <= p if east else p0 >= p) else None
        up = [p0 for p0 in at if (p0 <= p if east else p0 >= p)]
        if not up:
            return None
        p0 = max(up) if east else min(up)
        return at[p0], p0


def _expanded(program: Program, cycles: np.ndarray | None):
    """The program with its bodies written out on their chips, and `cycles` for it (given for
    either: the written-out program's, or the placed program's predictions)."""
    if not program.placed:
        return program, cycles
    whole = program.expand()
    if cycles is None or len(cycles) == len(whole.instrs):
        return whole, cycles
    if cycles is program.predicted:
        return whole, whole.predicted
    raise ValueError(
        f"{len(cycles)} cycles for a program of {len(whole.instrs)} instructions with its bodies "
        "written out"
    )


def _dataflow(program: Program, cycles: np.ndarray | None = None) -> tuple[int, int]:
    """(dependency, streams): the Program's dataflow with every resource free, each instruction
    at the earliest cycle its operands could reach it (a run of n vectors keeps its pace), and
    the busiest stream cut."""
    program, cycles = _expanded(program, cycles)
    hw, ins = program.hw, program.instrs
    S = hw.streams_per_direction
    lat = {o: latency(hw, o) for o in Op}
    pos = [queue_position(hw, q) for q in range(n_queues(hw))]
    rl, wl = hw.mem_read_latency_cycles, hw.mem_write_latency_cycles
    words = put_words(ins)

    def diag(st: int, t: int, p: int) -> int:
        return t - p if st // S == 0 else t + p

    put = _Puts(S)  # (asap cycle it enters its stream, words) of each put vector
    ready: dict[tuple, int] = {}  # (chip, slice, addr) -> asap cycle its vector is readable
    tile_ready: dict[tuple, int] = {}  # (chip, plane, tile) -> asap cycle it is installed
    landed: dict[tuple, int] = {}  # (link channel, vid) -> asap cycle a SEND's vector lands
    # crossings[chip, direction, boundary b] (between positions b and b + 1): words crossing it
    width = max(hw.width_positions, max(pos) + 1)
    crossings = np.zeros((max(program.chips, 1), 2, width + 1), np.int64)
    end = 0

    def arrival(chip: int, st: int, t: int, p: int, repeat: int) -> int:
        """Asap cycle the vector taken at (st, t, p) in the real schedule could be at p; the
        run's words cross every boundary between its put and p."""
        found = put.nearest(chip, st, diag(st, t, p), p)
        if found is None:
            return 0
        (t_in, w), p_in = found
        lo, hi = sorted((p_in, p))
        crossings[chip, st // S, lo] += repeat * w
        crossings[chip, st // S, hi] -= repeat * w
        return t_in + abs(p - p_in)

    release: dict[tuple, int] = {}  # (chip, barrier) -> asap cycle its SYNCs may dispatch
    start: dict[tuple, int] = {}  # (chip, queue) -> asap cycle after its last SYNC
    cycles = cycles_of(program) if cycles is None else cycles
    for i in np.argsort(cycles, kind="stable"):
        r = ins[i]
        o = Op(int(r["op"]))
        chip, q, t = int(r["chip"]), int(r["queue"]), int(cycles[i])
        if o == Op.NOTIFY:  # a queue's own work is all that holds a NOTIFY back
            release[(chip, int(r["table"]))] = start.get((chip, q), 0) + hw.icu_sync_latency_cycles
            continue
        if o == Op.SYNC:
            barrier = release.get((chip, int(r["table"])), 0)
            start[(chip, q)] = max(start.get((chip, q), 0), barrier) + 1
            continue
        if o == Op.IFETCH:
            continue
        # a run's last vector comes period * (repeat - 1) cycles after its first
        per = int(periods(r))
        n = (int(r["repeat"]) - 1) * per + 1
        rep, w = int(r["repeat"]), int(words[i])
        p = pos[q]
        if o == Op.READ:  # data enters the dataflow here, once its queue has started
            a = max(ready.get((chip, int(r["slice"]), int(r["addr"])), 0), start.get((chip, q), 0))
            put.add(chip, int(r["sd"]), diag(int(r["sd"]), t + rl, p), p, (a + rl, w))
            end = max(end, a + n - 1 + rl)
        elif o == Op.WRITE:
            a = arrival(chip, int(r["s0"]), t, p, rep)
            s, a0, stride = int(r["slice"]), int(r["addr"]), int(r["stride"])
            for j in range(int(r["repeat"])):  # vector j lands `period` after vector j - 1
                ready[(chip, s, a0 + j * stride)] = a + j * per + wl
            end = max(end, a + n - 1 + wl)
        elif o in (Op.SEND, Op.RECV):
            if link_problem(program.links, r) is not None:
                continue
            channel = link_channel(program.links, r)[0]
            if o == Op.SEND:
                a = arrival(chip, int(r["s0"]), t, p, rep)
                lands = a + hw.c2c_latency_cycles + link_cycles(hw, w)
                landed[(channel, int(r["vid"]))] = lands
                end = max(end, a + n - 1 + lat[o])
            else:
                a = landed.get((channel, int(r["vid"])), 0)
                put.add(chip, int(r["sd"]), diag(int(r["sd"]), t + lat[o], p), p, (a + lat[o], w))
                end = max(end, a + n - 1 + lat[o])
        elif o == Op.INSTALL:
            a = arrival(chip, int(r["s0"]), t, p, rep)
            key = (chip, int(r["plane"]), int(r["aux"]))
            tile_ready[key] = max(tile_ready.get(key, 0), a + n - 1 + lat[o])
            end = max(end, a + n - 1 + lat[o])
        else:
            streams = ["s0"]
            if o in VXM_ARITY and VXM_ARITY[o] >= 2 and r["s1"] >= 0:
                streams.append("s1")
            if o in VXM_ARITY and VXM_ARITY[o] == 3:
                streams.append("s2")
            a = max(arrival(chip, int(r[f]), t, p, rep) for f in streams)
            if o == Op.MATMUL:
                a = max(a, tile_ready.get((chip, int(r["plane"]), int(r["aux"])), 0))
            put.add(chip, int(r["sd"]), diag(int(r["sd"]), t + lat[o], p), p, (a + lat[o], w))
            end = max(end, a + n - 1 + lat[o])
    busiest = int(np.cumsum(crossings, axis=2).max(initial=0))
    return end, -(-busiest // S)


def dependency_bound(program: Program, cycles: np.ndarray | None = None) -> int:
    """The Program's dataflow with every resource free: each instruction at the earliest cycle
    its operands could reach it. Producers are found as the simulator finds them (the vector on
    the operand's stream at its diagonal, put nearest upstream); a run of n vectors keeps its
    one-per-cycle pace."""
    program, cycles = _expanded(program, cycles)
    return _dataflow(program, cycles)[0]


def bounds(program: Program, cycles: np.ndarray | None = None) -> Bounds:
    """`cycles`: each instruction's dispatch cycle, if known (else the queues are run again).

    A program of placed bodies (a pipeline's stages) is bound stage by stage: the chips placed
    at one cycle run their bodies side by side, and those placed later wait for them (a token
    crosses the stages in turn), so each term is the sum, over the placements' cycles, of the
    largest of that term among the bodies placed there, each body bound alone (at the
    scheduler's cycles). The chips' own transfers between stages are not in it."""
    if program.placed:
        return _placed_bounds(program)
    program, cycles = _expanded(program, cycles)
    terms = resource_bounds(program)
    terms["dependency"], terms["streams"] = _dataflow(program, cycles)
    binding = max(terms, key=terms.get)
    return Bounds(terms[binding], binding, terms)


def _placed_bounds(program: Program) -> Bounds:
    alone = []
    for body in program.bodies:
        part = Program(hw=program.hw, instrs=body.instrs, tables=program.tables, symbols=(),
                       consts={}, sources=(), predicted_cycles=0, words_used=program.words_used,
                       predicted=body.predicted)  # fmt: skip
        terms = resource_bounds(part)
        terms["dependency"], terms["streams"] = _dataflow(part, body.predicted)
        alone.append(terms)
    pl = program.placements
    total: dict[str, int] = dict.fromkeys(alone[0], 0) if alone else {}
    for shift in np.unique(pl["shift"]).tolist():
        here = [alone[k] for k in np.unique(pl["body"][pl["shift"] == shift]).tolist()]
        for name in total:
            total[name] += max(t[name] for t in here)
    binding = max(total, key=total.get)
    return Bounds(total[binding], binding, total)
