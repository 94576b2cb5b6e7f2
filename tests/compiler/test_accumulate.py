"""Accumulation across K tiles inside the MXM: a chain of MATMULs keeps its partial sums in the
plane (FLAG_ACC_OUT / FLAG_ACC_IN) instead of sending each tile's through the VXM."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from compiler import compile
from sim.engine import run_engine
from sim.errors import ScheduleViolation
from sim.execute import simulate
from sim.isa import FLAG_ACC_IN, FLAG_ACC_OUT, Op
from sim.reference import run_reference


def _dot(x, w):
    return x @ w


def _args(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((m, k)).astype(np.float32),
        "w": rng.standard_normal((k, n)).astype(np.float32),
    }


def _run(prog, args, engine):
    return next(iter(simulate(prog, args, engine=engine).outputs.values()))


@pytest.mark.parametrize(
    ("hw", "shape"), [("teaching", (2, 48, 32)), ("groq-tsp-v1", (16, 1024, 640))]
)
def test_accumulating_chain_matches_numpy_in_both_executors(hw, shape):
    args = _args(*shape)
    prog = compile(_dot, hw, args=args)
    flags = prog.instrs["flags"][prog.instrs["op"] == Op.MATMUL]
    assert (flags & FLAG_ACC_OUT).any() and (flags & FLAG_ACC_IN).any()
    got = _run(prog, args, "numba")
    assert np.array_equal(got, _run(prog, args, "reference"))
    want = args["x"].astype(np.float64) @ args["w"].astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _dot16(x, w):
    return jnp.dot(x, w, preferred_element_type=jnp.float32)


@pytest.mark.parametrize("shape", [(64, 1024, 1280), (256, 1024, 1024)])
def test_accumulation_takes_fewer_cycles_and_less_vxm_and_sram(shape):
    """The pass's own figure on groq-tsp-v1 (FP16, rows enough to cover each tile's install,
    a column of tiles per plane), with and without it: fewer cycles, VXM adds and SRAM writes,
    and the same product. (With fewer columns than planes the chains are cut to keep every plane
    busy, and the cut chains' sums meet in the VXM: with two read and two write ports per slice
    that costs about what the SRAM round trips it saves do, 64 x 1024 x 640 taking 681 cycles
    against 683.)"""
    rng = np.random.default_rng(0)
    args = {
        "x": rng.standard_normal(shape[:2]).astype(np.float16),
        "w": rng.standard_normal(shape[1:]).astype(np.float16),
    }
    on = compile(_dot16, "groq-tsp-v1", args=args)
    off = compile(_dot16, "groq-tsp-v1", args=args, accumulate=False)
    r_on, r_off = simulate(on, mode="timing"), simulate(off, mode="timing")
    assert r_on.cycles < r_off.cycles
    assert r_on.busy["vxm"] < r_off.busy["vxm"]
    assert r_on.busy["mem_write"] < r_off.busy["mem_write"]
    if shape[0] <= 64:  # functional runs of the large one take a while
        a, b = _run(on, args, "numba"), _run(off, args, "numba")
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)  # one rounding fewer per tile


def test_no_chain_when_the_rows_are_too_few_to_cover_an_install():
    prog = compile(_dot, "teaching", args=_args(1, 48, 16))
    assert not (prog.instrs["flags"] & (FLAG_ACC_IN | FLAG_ACC_OUT)).any()


def test_rows_beyond_the_accumulator_go_in_blocks():
    """20 rows > the teaching plane's 16 accumulators: two blocks of 10, each a chain."""
    args = _args(20, 48, 16)
    prog = compile(_dot, "teaching", args=args)
    mm = prog.instrs[prog.instrs["op"] == Op.MATMUL]
    acc = mm[(mm["flags"] & (FLAG_ACC_IN | FLAG_ACC_OUT)) > 0]
    assert len(acc) and (acc["table"] + acc["repeat"]).max() <= 10
    got = _run(prog, args, "numba")
    assert np.array_equal(got, _run(prog, args, "reference"))
    want = args["x"].astype(np.float64) @ args["w"].astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("functional", [False, True])
@pytest.mark.parametrize(
    "fault", ["drop_acc_in", "drop_last_acc_in", "drop_first_acc_in", "wrong_row", "row_outside"]
)
def test_accumulator_faults_are_violations_in_both_executors(fault, functional):
    args = _args(2, 528, 64)  # 4 chains of 33 K tiles (of 16 lanes), 2 per teaching plane
    prog = compile(_dot, "teaching", args=args)
    ins = prog.instrs.copy()
    acc_in = (ins["op"] == Op.MATMUL) & (ins["flags"] & FLAG_ACC_IN > 0)
    middle = np.flatnonzero(acc_in & (ins["flags"] & FLAG_ACC_OUT > 0))
    last = np.flatnonzero(acc_in & (ins["flags"] & FLAG_ACC_OUT == 0))
    if fault == "drop_acc_in":  # a middle tile overwrites the sums it should have added to
        ins["flags"][middle[0]] ^= FLAG_ACC_IN
        needle = "still holds partial sum"
    elif fault == "drop_last_acc_in":  # the program's last chain forgets them: left at the end
        ins["flags"][last[np.argmax(prog.predicted[last])]] ^= FLAG_ACC_IN
        needle = "is left in the accumulator"
    elif fault == "drop_first_acc_in":  # the next chain on the plane finds them still there
        ins["flags"][last[np.argmin(prog.predicted[last])]] ^= FLAG_ACC_IN
        needle = "still holds partial sum"
    elif fault == "wrong_row":
        ins["table"][last[0]] += 1
        needle = "expects partial sum"
    else:
        ins["table"][middle[0]] = prog.hw.mxm_accumulator_vectors
        needle = "accumulator row"
    bad = dataclasses.replace(prog, instrs=ins)
    inputs = args if functional else None
    with pytest.raises(ScheduleViolation) as ref:
        run_reference(bad, inputs, functional=functional)
    with pytest.raises(ScheduleViolation) as eng:
        run_engine(bad, inputs, functional=functional)
    assert str(ref.value) == str(eng.value)
    assert needle in str(ref.value)
