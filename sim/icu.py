"""The instruction control unit: the cycle of every instruction, derived by running the queues.

    dispatch(hw, instrs)        -> cycles    the queues' semantics (sim/isa.py), in plain Python:
                                             the specification sim/engine/icu.py follows
    check_predicted(program, cycles)         the scheduler's prediction against the derivation
    encode(hw, instrs, cycles)  -> Program instrs with the `delay` (NOP) fields that make the
                                   queues dispatch each instruction at `cycles` (the compiler's and
                                   the tests' way to write a timed schedule down)

Nothing here trusts a stored cycle: a Program holds delays, repeat counts and SYNC/NOTIFY, and the
executors time every event from what `dispatch` derives. The compiler may keep its predicted cycle
of each instruction beside the Program (`Program.predicted`); any difference is reported as a
ScheduleViolation naming the instruction, so "predicted = simulated" checks the scheduler.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from sim.errors import ScheduleViolation
from sim.hardware import HardwareConfig
from sim.isa import Op, disassemble_one, issue_width, queue_name

# Problem codes of a dispatch (shared with the engine's kernel, which returns them).
OK, NEGATIVE_DELAY, TOO_MANY, NOTIFIED_TWICE, DEADLOCK = 0, 1, 2, 3, 4
NOT_FETCHED, BAD_FETCH, OVERFLOW = 5, 6, 7


def fetch_width(hw: HardwareConfig) -> int:
    """Instructions one SRAM word holds: what one IFETCH delivers at most."""
    return hw.lanes // hw.icu_instruction_bytes


def dispatch(hw: HardwareConfig, ins: np.ndarray) -> tuple[np.ndarray, tuple]:
    """(cycles, problem): the cycle each instruction dispatches, and (code, instruction, cycle,
    a) of the first problem (code OK if none; then every cycle is set).

    Instruction buffers: a queue holds icu_queue_instructions; its first ones are loaded before
    cycle 0 and the rest arrive by its own IFETCHes, each delivering the next `count` (1 ..
    fetch_width) mem_read_latency_cycles after it dispatches. An instruction not yet delivered
    holds its queue until it is (a stall: the derived cycle is later). Then every delivery must
    find room: the instructions delivered and not dispatched before it lands fit the buffer."""
    cycles = np.full(len(ins), -1, np.int64)
    queues: dict[tuple, list[int]] = defaultdict(list)
    for i in range(len(ins)):
        queues[(int(ins[i]["chip"]), int(ins[i]["queue"]))].append(i)
    cap = hw.icu_queue_instructions
    # position, last dispatch cycle, dispatched in it, instructions delivered, delivery in use
    state = {key: [0, 0, 0, min(cap, len(order)), 0] for key, order in queues.items()}
    landed: dict[tuple, list] = {key: [] for key in queues}  # (arrival, delivered up to, i)
    release: dict[tuple, int] = {}  # (chip, barrier) -> cycle its SYNCs may dispatch from
    waiting = sorted(queues)
    while waiting:
        progressed = False
        for key in waiting:
            order, st, fetched = queues[key], state[key], landed[key]
            while st[0] < len(order):
                i = order[st[0]]
                r = ins[i]
                delay, op = int(r["delay"]), int(r["op"])
                t = st[1] + delay
                if delay < 0:
                    return cycles, (NEGATIVE_DELAY, i, st[1], delay)
                barrier = (key[0], int(r["table"]))
                if op == Op.SYNC:
                    if barrier not in release:
                        break  # parked until a NOTIFY of this barrier dispatches
                    t = max(t, release[barrier])
                if st[0] >= min(cap, len(order)):  # not preloaded: an IFETCH brought it
                    while st[4] < len(fetched) and fetched[st[4]][1] <= st[0]:
                        st[4] += 1
                    if st[4] == len(fetched):
                        return cycles, (NOT_FETCHED, i, t, st[0])
                    t = max(t, fetched[st[4]][0])
                used = st[2] + 1 if st[0] and t == st[1] else 1
                if used > issue_width(hw, key[1]):
                    return cycles, (TOO_MANY, i, t, used)
                if op == Op.NOTIFY:
                    if barrier in release:
                        return cycles, (NOTIFIED_TWICE, i, t, barrier[1])
                    release[barrier] = t + hw.icu_sync_latency_cycles
                if op == Op.IFETCH:
                    count = int(r["count"])
                    if not 1 <= count <= min(fetch_width(hw), len(order) - st[3]):
                        return cycles, (BAD_FETCH, i, t, count)
                    st[3] += count
                    fetched.append((t + hw.mem_read_latency_cycles, st[3], i))
                cycles[i] = t
                st[:3] = [st[0] + 1, t, used]
                progressed = True
        waiting = [k for k in waiting if state[k][0] < len(queues[k])]
        if waiting and not progressed:
            key = waiting[0]
            i = queues[key][state[key][0]]
            return cycles, (DEADLOCK, i, state[key][1], int(ins[i]["table"]))
    for key in sorted(queues):  # room for every delivery when it lands
        dispatched = cycles[queues[key]]
        for arrival, upto, i in landed[key]:
            held = upto - int(np.searchsorted(dispatched, arrival))
            if held > cap:
                return cycles, (OVERFLOW, i, arrival, held)
    return cycles, (OK, -1, 0, 0)


def problem_text(hw: HardwareConfig, ins: np.ndarray, problem: tuple) -> str:
    code, i, _, a = problem
    q = int(ins[i]["queue"])
    if code == NEGATIVE_DELAY:
        return f"has a negative delay ({a}): a queue dispatches in order"
    if code == TOO_MANY:
        return (
            f"makes {a} instructions queue {queue_name(hw, q)} dispatches in this cycle; it "
            f"dispatches at most {issue_width(hw, q)} a cycle (icu_issue_width)"
        )
    if code == NOTIFIED_TWICE:
        return f"notifies barrier {a}, which an earlier NOTIFY already released"
    if code == NOT_FETCHED:
        return (
            f"is instruction {a} of queue {queue_name(hw, q)}, beyond the {hw.icu_queue_instructions}"
            " it holds (icu_queue_instructions), and no IFETCH before it brings it"
        )
    if code == BAD_FETCH:
        return (
            f"fetches {a} instructions: an IFETCH brings 1 to {fetch_width(hw)} (a word of "
            f"{hw.lanes} bytes / icu_instruction_bytes), and no more than the queue has left"
        )
    if code == OVERFLOW:
        return (
            f"lands while queue {queue_name(hw, q)} would hold {a} instructions; it holds "
            f"{hw.icu_queue_instructions} (icu_queue_instructions)"
        )
    return f"waits for barrier {a}, which no queue notifies before it (the queues deadlock)"


def raise_problem(program, problem: tuple) -> None:
    code, i, t, _ = problem
    if code == OK:
        return
    ins = program.instrs
    raise ScheduleViolation(
        chip=int(ins[i]["chip"]),
        unit=queue_name(program.hw, int(ins[i]["queue"])),
        cycle=int(t),
        index=int(i),
        instr=disassemble_one(program.hw, ins[i]),
        source=program.source(int(ins[i]["src"])),
        conflict=problem_text(program.hw, ins, problem),
    )


def check_predicted(program, cycles: np.ndarray) -> None:
    """Raise a ScheduleViolation at the first instruction (by cycle, then index) the queues
    dispatch at another cycle than the scheduler predicted."""
    predicted = program.predicted
    if predicted is None:
        return
    wrong = np.flatnonzero(cycles != predicted)
    if not len(wrong):
        return
    when = np.minimum(cycles[wrong], predicted[wrong])
    i = int(wrong[np.lexsort((wrong, when))[0]])
    ins = program.instrs
    raise ScheduleViolation(
        chip=int(ins[i]["chip"]),
        unit=queue_name(program.hw, int(ins[i]["queue"])),
        cycle=int(cycles[i]),
        index=i,
        instr=disassemble_one(program.hw, ins[i]),
        source=program.source(int(ins[i]["src"])),
        conflict=(
            f"dispatches at cycle {int(cycles[i])} by its queue's delays, but the scheduler "
            f"predicted cycle {int(predicted[i])}"
        ),
    )


def encode(ins: np.ndarray, cycles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(instrs, cycles) with each queue's instructions in cycle order (stable) at the array
    positions that queue held, and `delay` set so that each dispatches at its cycle. SYNCs are
    encoded like any instruction (their barrier must be released by then)."""
    cycles = np.asarray(cycles, np.int64)
    if not len(ins):
        return ins.copy(), cycles.copy()
    order, delay = encoding(ins["chip"], ins["queue"], cycles)
    ins, cycles = np.take(ins, order), cycles[order]  # take: NumPy indexes records slowly
    ins["delay"] = delay
    return ins, cycles


def encoding(chip: np.ndarray, queue: np.ndarray, cycles: np.ndarray):
    """`encode` as (order, delays): the encoded instructions are the given ones in `order`, with
    `delay` set to `delays`."""
    n = len(cycles)
    key = chip.astype(np.int64) * (1 << 20) + queue.astype(np.int64)
    by_queue = np.lexsort((np.arange(n), key))  # positions of each queue, in array order
    timed = np.lexsort((np.arange(n), cycles, key))  # each queue's instructions by cycle
    order = np.empty(n, np.int64)
    order[by_queue] = timed
    k, t = key[timed], cycles[timed]
    delay = np.diff(t, prepend=0)
    first = np.r_[True, k[1:] != k[:-1]]
    delay[first] = t[first]
    delays = np.empty(n, np.int64)
    delays[by_queue] = delay
    return order, delays


def cycles_of(program) -> np.ndarray:
    """Each instruction's dispatch cycle as the queues derive it (raising on a queue problem),
    with the compiled ICU; for listings and analyses, which need no prediction check."""
    program = program.expand()  # bodies written out on their chips
    from sim.engine.icu import dispatch_cycles  # the engine builds on this module

    cycles, problem = dispatch_cycles(program.hw, program.instrs)
    raise_problem(program, problem)
    return cycles


def moved(program, cycles: dict[int, int]):
    """`program` with instruction i dispatched at cycle c for each i: c in `cycles` (every other
    where its queue dispatched it), each queue re-encoded in cycle order at its own array
    positions; the prediction moves along, so only the executors' own checks can catch what the
    move breaks (fault injection)."""
    program = program.expand()  # bodies written out on their chips
    from dataclasses import replace

    timing = cycles_of(program).copy()
    for i, c in cycles.items():
        timing[i] = c
    instrs, timing = encode(program.instrs, timing)
    return replace(program, instrs=instrs, predicted=timing)
