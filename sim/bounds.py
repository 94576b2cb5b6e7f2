"""Lower bounds on a Program's cycle count on its chip, and what sets them.

Every bound is what the Program's own work needs on this machine, however it were scheduled:

    mxm_install   installed rows / (planes x rows a plane installs per cycle)
    mxm_compute   compute-pipeline cycles / planes (an INT8 input a cycle, FP16 at a quarter)
    sram_read     words read / slices (one read port per slice per cycle); sram_write likewise
    vxm, sxm      vector ops / ALUs (units) that run them each cycle
    streams       stream slots its vectors take / streams (one vector per stream per diagonal)
    dependency    the longest chain of the Program's dataflow, every instruction as early as
                  its inputs allow (with their real latencies and distances) and no unit, port
                  or stream ever busy: what is left when resource conflicts cost nothing

The largest is the step's bound; `bound / simulated cycles` says how close the schedule comes.
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


def matmul_cycles(program: Program) -> int:
    """Compute-pipeline cycles of every MATMUL repetition: one per INT8 input, more per wider
    (its period, as the compiler streams them; at least the machine's rate)."""
    ins = program.instrs
    mm = ins[ins["op"] == int(Op.MATMUL)]
    return int((mm["repeat"].astype(np.int64) * periods(mm)).sum())


def resource_bounds(program: Program) -> dict[str, int]:
    hw, ins = program.hw, program.instrs
    op = ins["op"].astype(np.int64)
    reps = ins["repeat"].astype(np.int64)
    width = put_words(ins)

    def events(*ops) -> int:
        return int(reps[np.isin(op, [int(o) for o in ops])].sum())

    per_unit = UNIT_LUT[op]
    reads = int((reps * width)[op == int(Op.READ)].sum())
    writes = int((reps * width)[op == int(Op.WRITE)].sum())
    puts = (op != int(Op.WRITE)) & (op != int(Op.INSTALL)) & (per_unit != int(Unit.ICU))
    slots = int((reps * width)[puts].sum())
    chips = max(program.chips, 1)

    def ceil(a: int, b: int) -> int:
        return -(-a // b)

    return {
        "mxm_install": ceil(
            events(Op.INSTALL), chips * hw.mxm_planes * hw.mxm_install_vectors_per_cycle
        ),
        "mxm_compute": ceil(matmul_cycles(program), chips * hw.mxm_planes),
        "sram_read": ceil(reads, chips * hw.mem_slices),
        "sram_write": ceil(writes, chips * hw.mem_slices),
        "vxm": ceil(int(reps[per_unit == int(Unit.VXM)].sum()), chips * hw.vxm_alus),
        "sxm": ceil(
            int(reps[per_unit == int(Unit.SXM)].sum()), chips * 2 * hw.sxm_units_per_hemisphere
        ),
        "streams": ceil(slots, chips * 2 * hw.streams_per_direction),
    }


def dependency_bound(program: Program, cycles: np.ndarray | None = None) -> int:
    """The Program's dataflow with every resource free: each instruction at the earliest cycle
    its operands could reach it. Producers are found as the simulator finds them (the vector on
    the operand's stream at its diagonal); a run of n vectors keeps its one-per-cycle pace."""
    hw, ins = program.hw, program.instrs
    S = hw.streams_per_direction
    lat = {o: latency(hw, o) for o in Op}
    pos = [queue_position(hw, q) for q in range(n_queues(hw))]
    rl, wl = hw.mem_read_latency_cycles, hw.mem_write_latency_cycles

    def diag(st: int, t: int, p: int) -> int:
        return t - p if st // S == 0 else t + p

    put: dict[tuple, tuple[int, int]] = {}  # (chip, stream, diagonal) -> (asap entry, position)
    ready: dict[tuple, int] = {}  # (chip, slice, addr) -> asap cycle its vector is readable
    tile_ready: dict[tuple, int] = {}  # (chip, plane, tile) -> asap cycle it is installed
    end = 0

    def arrival(chip: int, st: int, t: int, p: int) -> int:
        """Asap cycle the vector taken at (st, t, p) in the real schedule could be at p."""
        found = put.get((chip, st, diag(st, t, p)))
        if found is None:
            return 0
        t_in, p_in = found
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
        # a run's last vector comes period * (repeat - 1) cycles after its first
        per = int(periods(r))
        n = (int(r["repeat"]) - 1) * per + 1
        p = pos[q]
        if o == Op.READ:  # data enters the dataflow here, once its queue has started
            a = max(ready.get((chip, int(r["slice"]), int(r["addr"])), 0), start.get((chip, q), 0))
            put[(chip, int(r["sd"]), diag(int(r["sd"]), t + rl, p))] = (a + rl, p)
            end = max(end, a + n - 1 + rl)
        elif o == Op.WRITE:
            a = arrival(chip, int(r["s0"]), t, p)
            s, a0, stride = int(r["slice"]), int(r["addr"]), int(r["stride"])
            for j in range(int(r["repeat"])):  # vector j lands `period` after vector j - 1
                ready[(chip, s, a0 + j * stride)] = a + j * per + wl
            end = max(end, a + n - 1 + wl)
        elif o == Op.INSTALL:
            a = arrival(chip, int(r["s0"]), t, p)
            key = (chip, int(r["plane"]), int(r["aux"]))
            tile_ready[key] = max(tile_ready.get(key, 0), a + n - 1 + lat[o])
            end = max(end, a + n - 1 + lat[o])
        else:
            streams = ["s0"]
            if o in VXM_ARITY and VXM_ARITY[o] >= 2 and r["s1"] >= 0:
                streams.append("s1")
            if o in VXM_ARITY and VXM_ARITY[o] == 3:
                streams.append("s2")
            a = max(arrival(chip, int(r[s]), t, p) for s in streams)
            if o == Op.MATMUL:
                a = max(a, tile_ready.get((chip, int(r["plane"]), int(r["aux"])), 0))
            put[(chip, int(r["sd"]), diag(int(r["sd"]), t + lat[o], p))] = (a + lat[o], p)
            end = max(end, a + n - 1 + lat[o])
    return end


def bounds(program: Program, cycles: np.ndarray | None = None) -> Bounds:
    """`cycles`: each instruction's dispatch cycle, if known (else the queues are run again)."""
    terms = resource_bounds(program)
    terms["dependency"] = dependency_bound(program, cycles)
    binding = max(terms, key=terms.get)
    return Bounds(terms[binding], binding, terms)
