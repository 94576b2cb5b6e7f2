"""Fault injection: a mutated schedule must raise ScheduleViolation naming where and why."""

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sim import ScheduleViolation, simulate
from sim.icu import moved
from sim.isa import OP_UNIT, Op, Unit, issue_width, n_queues, queue_name
from tests.programs import softmax_matmul_args, softmax_matmul_program

PROGRAMS = [(3, 20, 37), (2, 16, 16), (1, 9, 5)]


def _mutated(prog, **changes):
    instrs = prog.instrs.copy()
    for field, (i, value) in changes.items():
        instrs[field][i] = value
    return dataclasses.replace(prog, instrs=instrs)


def _check_named(exc: ScheduleViolation, prog):
    assert exc.chip == 0
    assert exc.unit in {queue_name(prog.hw, q) for q in range(n_queues(prog.hw))} | {
        queue_name(prog.hw, s) for s in range(prog.hw.mem_slices)
    }
    assert 0 <= exc.index < len(prog.instrs)
    # The ICU instructions the compiler adds itself (the start barrier's SYNC/NOTIFY, IFETCHes)
    # come from no graph op: their source is "?" (reported as a gap in the compiler's tags).
    by_compiler = OP_UNIT[Op(int(prog.instrs["op"][exc.index]))] == Unit.ICU
    assert exc.source in prog.sources or (by_compiler and exc.source == "?")
    assert exc.instr and exc.conflict
    assert f"cycle {exc.cycle}" in str(exc) and exc.source in str(exc)


@given(shape=st.sampled_from(PROGRAMS), pick=st.integers(0, 10**6), delta=st.integers(1, 3))
@example(shape=PROGRAMS[0], pick=0, delta=1)  # the start barrier's NOTIFY, then a SYNC
@example(shape=PROGRAMS[0], pick=1, delta=1)
@example(shape=PROGRAMS[2], pick=8, delta=3)  # a READ x8 passing its queue's SYNC and a READ
def test_any_instruction_moved_earlier_is_caught(shape, pick, delta):
    prog = softmax_matmul_program("teaching", *shape)
    i = pick % len(prog.instrs)
    bad = moved(prog, {i: int(prog.predicted[i]) - delta})
    args = softmax_matmul_args(*shape)
    try:
        result = simulate(bad, args, engine="reference")
    except ScheduleViolation as e:
        exc = e
    else:
        # Uncaught only where the moved instruction still meets the very vector it expects
        # (checked by id at every take and READ): a vector flows on past every slice downstream
        # of its source, so a WRITE moved earlier can take it there before another READ puts
        # the same vector on the same stream again. Then the program is right, bit for bit.
        ins = prog.instrs[i]
        assert ins["op"] == Op.WRITE, f"moving {ins} earlier went unnoticed"
        want = simulate(prog, args, engine="reference").outputs
        for name, value in want.items():
            np.testing.assert_array_equal(result.outputs[name], value)
        return
    _check_named(exc, bad)
    # Caught at the moved instruction, at a vector it now collides with, or at the instruction
    # its result was meant for (a moved consumer may still meet an identical copy of its operand
    # that another READ put on the stream for a different consumer, and compute the right value
    # at the wrong time). j: the moved instruction's index in `bad` (it changes only where it
    # passes others of its queue).
    cycle = int(prog.predicted[i]) - delta
    j = _index_after_move(prog, i, cycle)
    ins, reporter = prog.instrs[i], bad.instrs[exc.index]
    linked = ins["sd"] >= 0 and ins["sd"] in (reporter["s0"], reporter["s1"], reporter["s2"])
    # Or at an instruction of its kind of unit whose port it now holds in that cycle: of two
    # claims on a port in one cycle the one later in the array is refused, and a move that
    # passes others of its queue puts the moved instruction first.
    held = cycle + np.arange(int(ins["repeat"])) * max(int(ins["period"]), 1)
    same_unit = OP_UNIT[Op(int(reporter["op"]))] == OP_UNIT[Op(int(ins["op"]))]
    port = "already in use" in exc.conflict and exc.cycle in held and same_unit and j < exc.index
    assert exc.index == j or f"instruction #{j})" in exc.conflict or linked or port


def _index_after_move(prog, i: int, cycle: int) -> int:
    """Where `sim.icu.moved(prog, {i: cycle})` puts instruction i: its queue keeps its array
    positions, filled in cycle order (ties in the old order)."""
    ins, cycles = prog.instrs, prog.predicted.copy()
    cycles[i] = cycle
    mine = np.flatnonzero((ins["chip"] == ins["chip"][i]) & (ins["queue"] == ins["queue"][i]))
    by_cycle = mine[np.lexsort((mine, cycles[mine]))]
    return int(mine[np.flatnonzero(by_cycle == i)[0]])


def _one_queue_one_cycle(bad, **run) -> ScheduleViolation:
    """`bad` has two instructions of one queue at one cycle: the ICU refuses the second before
    any unit sees it (an earlier, still correct violation than the unit's resource check, which
    this then exercises on an ICU that dispatches two instructions a cycle). The violation of
    the latter."""
    with pytest.raises(ScheduleViolation) as info:
        simulate(bad, **run)
    assert info.value.conflict.endswith("dispatches at most 1 a cycle (icu_issue_width)")
    _check_named(info.value, bad)
    wide = dataclasses.replace(bad, hw=dataclasses.replace(bad.hw, icu_issue_width=2))
    with pytest.raises(ScheduleViolation) as info:
        simulate(wide, **run)
    assert "icu_issue_width" not in info.value.conflict
    _check_named(info.value, wide)
    return info.value


@given(shape=st.sampled_from(PROGRAMS), pick=st.integers(0, 10**6))
def test_instruction_moved_onto_a_busy_port_is_caught(shape, pick):
    """Two READs of one slice in one cycle, or two matmuls on one plane."""
    prog = softmax_matmul_program("teaching", *shape)
    ins, cycle = prog.instrs, prog.predicted
    assert issue_width(prog.hw, int(ins["queue"][ins["op"] == Op.READ][0])) == 1
    for op in (Op.READ, Op.MATMUL):
        idx = np.nonzero(ins["op"] == op)[0]
        pairs = [
            (a, b)
            for a, b in zip(idx, idx[1:], strict=False)
            if ins["queue"][a] == ins["queue"][b] and cycle[a] != cycle[b]
        ]
        if op == Op.MATMUL and not pairs:  # a single matmul: nothing to collide with
            continue
        a, b = pairs[pick % len(pairs)]
        bad = moved(prog, {b: int(cycle[a])})
        _one_queue_one_cycle(
            bad, inputs=softmax_matmul_args(*shape), engine="reference", mode="timing"
        )


def test_busy_port_message():
    prog = softmax_matmul_program()
    ins = prog.instrs
    first = ins["queue"][ins["op"] == Op.READ][0]  # the first READ's slice
    reads = np.nonzero((ins["op"] == Op.READ) & (ins["queue"] == first))[0]
    a, b = reads[0], reads[1]
    # Same cycle, same slice, and a different stream so nothing else collides first.
    bad = moved(prog, {b: int(prog.predicted[a])})
    e = _one_queue_one_cycle(bad, mode="timing", engine="reference")
    assert re.search("already in use|already carries|no vector", e.conflict), e


def test_overwritten_before_last_reader():
    """Point a WRITE at the address a pending READ still needs."""
    prog = softmax_matmul_program()
    ins = prog.instrs
    writes = np.nonzero(ins["op"] == Op.WRITE)[0]
    for w in writes:
        later = np.nonzero(
            (ins["op"] == Op.READ)
            & (ins["queue"] == ins["queue"][w])
            & (prog.predicted > prog.predicted[w])
            & (ins["vid"] != ins["vid"][w])
        )[0]
        if len(later):
            r = later[0]
            bad = _mutated(prog, addr=(w, int(ins["addr"][r])))
            with pytest.raises(ScheduleViolation, match="overwritten|holds"):
                simulate(bad, mode="timing", engine="reference")
            return
    pytest.fail("no WRITE followed by a READ of another vector in the same slice")


def test_unmutated_programs_pass():
    for shape in PROGRAMS:
        prog = softmax_matmul_program("teaching", *shape)
        r = simulate(prog, softmax_matmul_args(*shape), engine="reference")
        assert r.cycles == prog.predicted_cycles
