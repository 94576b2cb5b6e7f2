"""Double-buffered MXM weights: the next tile installs into a plane's other buffer while the
current one computes. Fewer cycles, the same bits; a single-buffered chip refuses buffer 1."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from compiler import compile
from sim import ScheduleViolation, preset, simulate
from sim.isa import FLAG_BUFFER, Op


def mm(x, w):
    return jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def args(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(m, k)).astype(np.float32),
        "w": (rng.normal(size=(k, n)) / np.sqrt(k)).astype(np.float16),
    }


@pytest.mark.parametrize("m,k,n", [(1, 64, 80), (5, 40, 33)])
def test_two_buffers_save_cycles_and_change_no_bit(m, k, n):
    one = preset("teaching").replace(name="teaching-1buf", mxm_weight_buffers=1)
    two = preset("teaching")
    a = args(m, k, n)
    p1 = compile(mm, one, args=a, params=("w",))
    p2 = compile(mm, two, args=a, params=("w",))
    assert not (p1.instrs["flags"] & FLAG_BUFFER).any()
    assert (p2.instrs["flags"][p2.instrs["op"] == Op.INSTALL] & FLAG_BUFFER).any()
    assert p2.predicted_cycles < p1.predicted_cycles
    for engine in ("numba", "reference"):
        r1, r2 = simulate(p1, a, engine=engine), simulate(p2, a, engine=engine)
        assert (r1.cycles, r2.cycles) == (p1.predicted_cycles, p2.predicted_cycles)
        np.testing.assert_array_equal(r1.outputs["out"], r2.outputs["out"])


@pytest.mark.parametrize("engine", ["numba", "reference"])
def test_a_single_buffered_chip_refuses_the_second_buffer(engine):
    a = args(1, 64, 80)
    prog = compile(mm, "teaching", args=a, params=("w",))
    one = prog.hw.replace(name=prog.hw.name, mxm_weight_buffers=1)
    bad = dataclasses.replace(prog, hw=one)
    with pytest.raises(ScheduleViolation, match="weight buffer 1"):
        simulate(bad, mode="timing", engine=engine)


@pytest.mark.parametrize("engine", ["numba", "reference"])
def test_a_matmul_on_the_wrong_buffer_is_caught(engine):
    a = args(1, 64, 80)
    prog = compile(mm, "teaching", args=a, params=("w",))
    ins = prog.instrs.copy()
    k = int(np.flatnonzero(ins["op"] == Op.MATMUL)[-1])
    ins["flags"][k] ^= FLAG_BUFFER
    with pytest.raises(ScheduleViolation, match="tile"):
        simulate(dataclasses.replace(prog, instrs=ins), mode="timing", engine=engine)
