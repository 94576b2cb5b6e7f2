"""Fault injection: a mutated schedule must raise ScheduleViolation naming where and why."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim import ScheduleViolation, simulate
from sim.isa import Op, n_queues, queue_name
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
    assert exc.source in prog.sources
    assert exc.instr and exc.conflict
    assert f"cycle {exc.cycle}" in str(exc) and exc.source in str(exc)


@given(shape=st.sampled_from(PROGRAMS), pick=st.integers(0, 10**6), delta=st.integers(1, 3))
def test_any_instruction_moved_earlier_is_caught(shape, pick, delta):
    prog = softmax_matmul_program("teaching", *shape)
    i = pick % len(prog.instrs)
    bad = _mutated(prog, cycle=(i, int(prog.instrs["cycle"][i]) - delta))
    args = softmax_matmul_args(*shape)
    try:
        moved = simulate(bad, args, engine="reference")
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
            np.testing.assert_array_equal(moved.outputs[name], value)
        return
    _check_named(exc, prog)
    # Caught at the moved instruction, at a vector it now collides with, or at the instruction
    # its result was meant for (a moved consumer may still meet an identical copy of its operand
    # that another READ put on the stream for a different consumer, and compute the right value
    # at the wrong time).
    ins, reporter = prog.instrs[i], bad.instrs[exc.index]
    linked = ins["sd"] >= 0 and ins["sd"] in (reporter["s0"], reporter["s1"], reporter["s2"])
    assert exc.index == i or f"instruction #{i})" in exc.conflict or linked


@given(shape=st.sampled_from(PROGRAMS), pick=st.integers(0, 10**6))
def test_instruction_moved_onto_a_busy_port_is_caught(shape, pick):
    """Two READs of one slice in one cycle, or two matmuls on one plane."""
    prog = softmax_matmul_program("teaching", *shape)
    ins = prog.instrs
    for op in (Op.READ, Op.MATMUL):
        idx = np.nonzero(ins["op"] == op)[0]
        pairs = [
            (a, b)
            for a, b in zip(idx, idx[1:], strict=False)
            if ins["queue"][a] == ins["queue"][b] and ins["cycle"][a] != ins["cycle"][b]
        ]
        if op == Op.MATMUL and not pairs:  # a single matmul: nothing to collide with
            continue
        a, b = pairs[pick % len(pairs)]
        bad = _mutated(prog, cycle=(b, int(ins["cycle"][a])))
        with pytest.raises(ScheduleViolation) as info:
            simulate(bad, softmax_matmul_args(*shape), engine="reference", mode="timing")
        _check_named(info.value, prog)


def test_busy_port_message():
    prog = softmax_matmul_program()
    ins = prog.instrs
    reads = np.nonzero((ins["op"] == Op.READ) & (ins["queue"] == ins["queue"][0]))[0]
    a, b = reads[0], reads[1]
    # Same cycle, same slice, and a different stream so nothing else collides first.
    bad = _mutated(prog, cycle=(b, int(ins["cycle"][a])))
    with pytest.raises(ScheduleViolation, match="already in use|already carries|no vector"):
        simulate(bad, mode="timing", engine="reference")


def test_overwritten_before_last_reader():
    """Point a WRITE at the address a pending READ still needs."""
    prog = softmax_matmul_program()
    ins = prog.instrs
    writes = np.nonzero(ins["op"] == Op.WRITE)[0]
    for w in writes:
        later = np.nonzero(
            (ins["op"] == Op.READ)
            & (ins["queue"] == ins["queue"][w])
            & (ins["cycle"] > ins["cycle"][w])
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
