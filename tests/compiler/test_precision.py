"""MXM precision: a plane takes an INT8 input every cycle and an FP16 one every
`mxm_fp16_cycles_per_vector` (REFERENCE.md "peak": 750 TOPS INT8, 188 TFLOPS FP16). The
compiler streams FP16 inputs at that pace (Repeat n, d with d = 4); a faster one is caught."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compiler import compile
from sim import ScheduleViolation, preset, simulate
from sim.bounds import resource_bounds
from sim.isa import Op


def mm(x, w):
    return jnp.dot(x, w, preferred_element_type=jnp.float32)


def program(dtype, m=48, k=32, n=32):
    args = {
        "x": jax.ShapeDtypeStruct((m, k), dtype),
        "w": jax.ShapeDtypeStruct((k, n), dtype),
    }
    return compile(mm, "teaching", args=args, params=("w",))


def test_fp16_inputs_stream_at_a_quarter_of_the_int8_rate():
    hw = preset("teaching")
    i8, f16 = program(jnp.int8), program(jnp.float16)
    for p, period in ((i8, 1), (f16, hw.mxm_fp16_cycles_per_vector)):
        mm_ins = p.instrs[p.instrs["op"] == Op.MATMUL]
        assert (mm_ins["period"][mm_ins["repeat"] > 1] == period).all()
    b8, b16 = resource_bounds(i8), resource_bounds(f16)
    assert b16["mxm_compute"] == hw.mxm_fp16_cycles_per_vector * b8["mxm_compute"]
    c8 = simulate(i8, mode="timing").cycles
    c16 = simulate(f16, mode="timing").cycles
    assert c16 > 2 * c8  # compute-bound: the FP16 matmul is much slower


@pytest.mark.parametrize("engine", ["numba", "reference"])
def test_results_are_exact_at_either_rate(engine):
    rng = np.random.default_rng(0)
    x = rng.integers(-8, 8, size=(48, 32)).astype(np.int8)
    w = rng.integers(-8, 8, size=(32, 32)).astype(np.int8)
    want = x.astype(np.float64) @ w.astype(np.float64)
    for dtype in (np.int8, np.float16):
        args = {"x": x.astype(dtype), "w": w.astype(dtype)}
        p = compile(mm, "teaching", args=args, params=("w",))
        np.testing.assert_array_equal(simulate(p, args, engine=engine).outputs["out"], want)


@pytest.mark.parametrize("engine", ["numba", "reference"])
def test_fp16_inputs_faster_than_the_pipeline_are_caught(engine):
    p = program(jnp.float16)
    ins = p.instrs.copy()
    k = int(np.flatnonzero((ins["op"] == Op.MATMUL) & (ins["repeat"] > 1))[0])
    ins["period"][k] = 1
    with pytest.raises(ScheduleViolation, match="compute port"):
        simulate(dataclasses.replace(p, instrs=ins), mode="timing", engine=engine)
