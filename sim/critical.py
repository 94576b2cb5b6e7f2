"""Where one token's cycles go: its critical path through the schedule, split four ways.

    critical_path(program, cycles) -> {"compute": c, "data movement": m, "waiting": w,
                                        "chip to chip": x}      (c + m + w + x = cycles)

The path is walked back from the instruction that finishes last, through the schedule as it ran
(the compiler's cycles, which the simulator checks), to the start. At each instruction the walk
takes the operand that came last, the one the instruction could not have started without:

- a vector taken from a stream arrives exactly when it is taken (a stream is a conveyor), so the
  walk goes to the instruction that put it (the nearest put upstream on its diagonal, as the
  simulator finds it): that instruction's own time (its latency, and a run's later vectors) is
  **compute** for the VXM, SXM and MXM, **data movement** for SRAM reads and writes, and the
  vector's journey along the stream to the taker (its hops) is **data movement**;
- a READ takes what the last WRITE to its address left: the time the vector sat in SRAM, from
  the WRITE's commit to the READ, is **waiting** (for a port, a stream or a unit: what the
  resources cost the token); the WRITE's own time is data movement. A vector loaded before the
  step (a weight, the input) has waited since the start;
- a RECV takes what the partner chip SENT. Every chip of a tensor-parallel group runs the same
  instructions in lockstep, so the partner's SEND is this chip's own SEND of the same role and
  slot: from that SEND to the RECV is **chip to chip**, and the walk goes on from the SEND; a
  vector that sat in SRAM until a SEND read it waited for its link: chip to chip too;
- MATMULs take their weights from a tile installed earlier: the installed tile waited (the
  stream operand is the one that came last), so the walk follows the stream.

A pipeline (Program.meta["stages"]) is walked stage by stage, each stage's body once for all the
stages that run it; the cycles between stages (x crossing the links) are chip to chip. Only the
first repetition of a run is matched, as sim.bounds does (the compiler streams a run from one
run). The instruction fetches, SYNCs and NOTIFYs are not on the path: a queue's ICU work shows
as waiting.
"""

from __future__ import annotations

import numpy as np

from sim.isa import FLAG_ACC_OUT, OP_UNIT, VXM_ARITY, Op, Unit, latency, periods, queue_position
from sim.program import Program

KINDS = ("compute", "data movement", "waiting", "chip to chip")
READ, WRITE, SEND, RECV, INSTALL, MATMUL = (int(o) for o in (Op.READ, Op.WRITE, Op.SEND, Op.RECV,
                                                             Op.INSTALL, Op.MATMUL))  # fmt: skip
COMPUTE_UNITS = (Unit.VXM, Unit.SXM, Unit.MXM)


def critical_path(program: Program, cycles: int) -> dict[str, int]:
    """The token's `cycles` (its simulated step) along the critical path, by KINDS."""
    out = dict.fromkeys(KINDS, 0)
    stages = program.meta.get("stages")
    if not stages or not program.placed:  # one program on its chips: walked as chip 0's
        ins = program.instrs
        chip0 = ins["chip"] == 0
        pred = program.predicted
        if pred is None:
            from sim.icu import cycles_of

            pred = cycles_of(program)
        walked = _walk(program.hw, ins[chip0], pred[chip0], cycles)
        return {k: walked[k] for k in KINDS}
    place = {
        int(ch): int(k)
        for ch, k in zip(program.placements["chip"], program.placements["body"], strict=True)
    }
    seen: dict[tuple[int, int], dict] = {}
    for s in stages:
        k = place[int(s["chip"])]
        key = (k, int(s["cycles"]))
        if key not in seen:
            body = program.bodies[k]
            seen[key] = _walk(program.hw, body.instrs, body.predicted, int(s["cycles"]))
        for kind in KINDS:
            out[kind] += seen[key][kind]
    out["chip to chip"] += cycles - sum(int(s["cycles"]) for s in stages)
    return out


def _walk(hw, ins: np.ndarray, cycles: np.ndarray, end: int) -> dict[str, int]:
    """[0, end) of one chip's instructions (dispatched at `cycles`) along its critical path."""
    out = dict.fromkeys(KINDS, 0)
    S = hw.streams_per_direction
    n = len(ins)
    if not n:
        out["waiting"] = end
        return out
    pos = np.array([queue_position(hw, q) for q in range(int(ins["queue"].max()) + 1)], np.int64)
    op = ins["op"].astype(np.int64)
    lat = np.array([latency(hw, Op(int(o))) for o in op], np.int64)
    per = periods(ins).astype(np.int64)
    reps = np.maximum(ins["repeat"].astype(np.int64), 1)
    done = cycles + (reps - 1) * per + lat  # when its last vector is out (or committed)
    p_of = pos[ins["queue"].astype(np.int64)]

    def diag(st: int, t: int, p: int) -> int:
        return t - p if st // S == 0 else t + p

    puts: dict[tuple[int, int], dict[int, int]] = {}  # (stream, diagonal) -> position -> instr
    written: dict[tuple[int, int], int] = {}  # (slice, addr) -> the last WRITE there
    sent: dict[tuple[int, int], int] = {}  # (role, slot) -> the last SEND
    before = np.full(n, -1, np.int64)  # the instruction whose output each one came last from
    how = np.zeros(n, np.int8)  # 0 stream, 1 SRAM (a READ's WRITE), 2 link (a RECV's SEND)
    ready = [0] * n

    def taken(st: int, t: int, p: int) -> int:
        at = puts.get((st, diag(st, t, p)))
        if not at:
            return -1
        east = st // S == 0
        up = [p0 for p0 in at if (p0 <= p if east else p0 >= p)]
        if not up:
            return -1
        return at[max(up) if east else min(up)]

    f = {k: ins[k].astype(np.int64).tolist() for k in
         ("s0", "s1", "s2", "sd", "slice", "addr", "stride", "table", "flags")}  # fmt: skip
    units = {int(o): OP_UNIT.get(o) for o in Op}
    arity = {int(o): a for o, a in VXM_ARITY.items()}
    ops, ts, ps, lats, nreps = (
        op.tolist(),
        cycles.tolist(),
        p_of.tolist(),
        lat.tolist(),
        reps.tolist(),
    )
    for i in np.argsort(cycles, kind="stable").tolist():
        o, t, p = ops[i], ts[i], ps[i]
        if units[o] == Unit.ICU:
            continue
        ready[i] = t  # (when what it puts was first possible: its dispatch, for most)
        if o == READ:
            before[i], how[i] = written.get((f["slice"][i], f["addr"][i]), -1), 1
            # a vector computed in the step since it was committed; one loaded before, never
            ready[i] = int(done[before[i]]) if before[i] >= 0 else -1
        elif o == RECV:
            before[i], how[i] = sent.get((f["table"][i], f["addr"][i]), -1), 2
        else:  # its stream operands all arrive as it takes them: the one that could have come
            # last (a computed vector before a weight loaded ahead of the step)
            a = arity.get(o, 1)
            streams = (
                [f["s0"][i]] + ([f["s1"][i]] if a >= 2 else []) + ([f["s2"][i]] if a == 3 else [])
            )
            got = [g for g in (taken(st, t, p) for st in streams if st >= 0) if g >= 0]
            before[i] = max(got, key=lambda g: (ready[g], g)) if got else -1
        if o == WRITE:
            for j in range(nreps[i]):
                written[(f["slice"][i], f["addr"][i] + j * f["stride"][i])] = i
        elif o == SEND:
            sent[(f["table"][i], f["addr"][i])] = i
        elif o != INSTALL and not (o == MATMUL and f["flags"][i] & FLAG_ACC_OUT):
            sd = f["sd"][i]
            if sd >= 0:
                puts.setdefault((sd, diag(sd, t + lats[i], p)), {})[p] = i

    # back from what finishes last
    ends = np.where(np.isin(op, [int(Op.SYNC), int(Op.NOTIFY), int(Op.IFETCH)]), -1, done)
    i = int(np.argmax(ends))
    cursor = min(end, int(ends[i]))
    out["waiting"] += end - cursor  # (after the last: a queue's closing work)
    taker = -1  # the op of the instruction the walk came from
    while i >= 0 and cursor > 0:
        t = int(cycles[i])
        own = max(0, cursor - max(t, 0))
        work = min(own, int(done[i]) - t)  # its latency and its run
        # (a SEND's or RECV's own cycle is data movement: its link time is below)
        kind = "compute" if OP_UNIT.get(Op(int(op[i]))) in COMPUTE_UNITS else "data movement"
        out[kind] += work
        out["data movement"] += own - work  # from its output to its taker, along the stream
        cursor = min(cursor, max(t, 0))
        j = int(before[i])
        if j < 0:
            break
        if how[i] == 1:  # parked in SRAM from the WRITE's commit to the READ: for a SEND's
            landed = min(cursor, int(done[j]))  # READ, waiting for its link
            out["chip to chip" if taker == SEND else "waiting"] += cursor - landed
            cursor = landed
        elif how[i] == 2:  # on the link, from the SEND's output to the RECV
            ready = min(cursor, int(cycles[j]) + int(lat[j]))
            out["chip to chip"] += cursor - ready
            cursor = ready
        taker, i = int(op[i]), j
    out["waiting"] += max(cursor, 0)  # loaded before the step, or waiting from the start
    return out
