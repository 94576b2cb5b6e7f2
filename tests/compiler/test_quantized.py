"""Quantised weights on the chip: INT8 and FP8 (e4m3) tiles installed as stored, per-output-channel
scales applied on the VXM, bit for bit what a NumPy model of the chip's arithmetic computes."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import compile
from models.quantize import quantize_matrix
from sim import simulate

LANES = 16  # the teaching chip


def qmm(x, q, scale):
    """models.ops.mm on a quantised matrix, with float16 activations."""
    y = jnp.dot(x.astype(jnp.float16), q.astype(jnp.float16), preferred_element_type=jnp.float32)
    return y * scale


def chip_qmm(x: np.ndarray, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The chip's arithmetic: per K tile of `LANES` rows, products summed in float64 in row order
    and rounded to float32 (the MXM); the tiles' partial sums added pairwise as a balanced tree,
    each sum rounded to float32 (the VXM); then times the scale, rounded to float32."""
    xs = x.astype(np.float16).astype(np.float64)
    w = q.astype(np.float64)
    parts = []
    for k0 in range(0, q.shape[0], LANES):
        acc = np.zeros((x.shape[0], q.shape[1]), np.float64)
        for k in range(k0, min(k0 + LANES, q.shape[0])):
            acc += xs[:, k : k + 1] * w[k]
        parts.append(acc.astype(np.float32))
    while len(parts) > 1:
        nxt = [
            (parts[i].astype(np.float64) + parts[i + 1]).astype(np.float32)
            for i in range(0, len(parts) - 1, 2)
        ]
        parts = nxt + ([parts[-1]] if len(parts) % 2 else [])
    return (parts[0].astype(np.float64) * scale.astype(np.float64)).astype(np.float32)


@settings(max_examples=15, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 40),
    st.integers(1, 40),
    st.sampled_from(["int8", "fp8"]),
    st.integers(0, 2**31 - 1),
)
def test_quantised_matmul_is_bit_exact(m, k, n, fmt, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, k)).astype(np.float32)
    w = quantize_matrix(rng.normal(size=(k, n)).astype(np.float32) / np.sqrt(k), fmt)
    args = {"x": x, "q": w["q"], "scale": w["scale"]}
    # Partial sums through the VXM, as chip_qmm models them (in-plane accumulation, which sums a
    # chain's tiles in one float64 run, has its own tests in test_accumulate.py).
    prog = compile(qmm, "teaching", args=args, params=("q", "scale"), accumulate=False)
    store = {"int8": np.int8, "fp8": ml_dtypes.float8_e4m3fn}[fmt]
    assert next(s for s in prog.symbols if s.name == "q").dtype == np.dtype(store).name
    want = chip_qmm(x, w["q"], w["scale"])
    for engine in ("numba", "reference"):
        r = simulate(prog, args, engine=engine)
        assert r.cycles == prog.predicted_cycles
        np.testing.assert_array_equal(r.outputs["out"], want)
    # and close to JAX, which sums in its own order
    np.testing.assert_allclose(want, np.asarray(qmm(**args)), rtol=1e-5, atol=1e-5)


def test_int8_weights_are_installed_without_conversion():
    """The INT8 -> FP16 conversion of a weight costs no instruction: the MXM installs int8 rows."""
    rng = np.random.default_rng(0)
    w = quantize_matrix(rng.normal(size=(32, 32)).astype(np.float32), "int8")
    args = {"x": rng.normal(size=(1, 32)).astype(np.float32), "q": w["q"], "scale": w["scale"]}
    prog = compile(qmm, "teaching", args=args, params=("q", "scale"))
    from sim.isa import DType, Op

    installs = prog.instrs[prog.instrs["op"] == Op.INSTALL]
    assert len(installs) and (installs["dtype"] == DType.INT8).all()
    converts = prog.instrs[prog.instrs["op"] == Op.CONVERT]
    assert converts["repeat"].sum() == 2  # the activation's two vectors to float16, no weight
