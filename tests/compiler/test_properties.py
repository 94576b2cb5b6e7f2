"""Random shapes compile, simulate and agree with JAX/NumPy; the schedule's predicted cycles equal
the simulator's."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import compile
from sim import simulate

HW = "teaching"  # 16 lanes, so small shapes already span several vectors and tiles
dims = st.integers(1, 40)


def run(fn, args, params=()):
    prog = compile(fn, HW, args=args, params=params)
    result = simulate(prog, args, engine="reference")
    assert result.cycles == prog.predicted_cycles
    return result.outputs, jax.tree.map(np.asarray, jax.jit(fn)(**args))


def arrays(draw, shape, dtype=np.float32, scale=1.0):
    seed = draw(st.integers(0, 2**31 - 1))
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(dtype)


@settings(max_examples=12)
@given(st.data(), dims, dims, dims, st.sampled_from([np.float32, np.float16]))
def test_matmul(data, m, k, n, wdtype):
    x = arrays(data.draw, (m, k))
    w = arrays(data.draw, (k, n), wdtype, 1 / np.sqrt(k))

    def f(x, w):
        return jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)

    out, ref = run(f, {"x": x, "w": w}, ("w",))
    np.testing.assert_allclose(out["out"], ref, rtol=1e-5, atol=1e-5)


@settings(max_examples=8)
@given(st.data(), st.integers(1, 3), dims, dims)
def test_batched_matmul_rhs_transposed(data, b, m, n):
    """(b, m, d) x (b, n, d) -> (b, m, n): the attention-score form (rhs installed as columns)."""
    d = data.draw(st.integers(1, 16))
    q = arrays(data.draw, (b, m, d))
    k = arrays(data.draw, (b, n, d))

    def f(q, k):
        return jnp.einsum("bmd,bnd->bmn", q, k)

    out, ref = run(f, {"q": q, "k": k})
    np.testing.assert_allclose(out["out"], ref, rtol=1e-5, atol=1e-5)


@settings(max_examples=10)
@given(st.data(), st.integers(1, 4), dims)
def test_elementwise_chain(data, m, n):
    x = arrays(data.draw, (m, n))
    y = arrays(data.draw, (m, n))

    def f(x, y):
        z = jnp.maximum(x * y + 0.5, -x) - y
        return jnp.exp(-z * z) * jax.lax.rsqrt(1.0 + y * y) / (2.0 + x * x) + jax.nn.sigmoid(x)

    out, ref = run(f, {"x": x, "y": y})
    np.testing.assert_allclose(out["out"], ref, rtol=2e-5, atol=2e-6)


@settings(max_examples=10)
@given(st.data(), st.integers(1, 4), dims)
def test_softmax(data, m, n):
    x = arrays(data.draw, (m, n), scale=3.0)

    def f(x):
        e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
        return e / jnp.sum(e, axis=-1, keepdims=True)

    out, ref = run(f, {"x": x})
    np.testing.assert_allclose(out["out"], ref, rtol=1e-5, atol=1e-6)


@settings(max_examples=10)
@given(st.data(), st.integers(1, 4), dims)
def test_rmsnorm(data, m, n):
    x = arrays(data.draw, (m, n))
    w = arrays(data.draw, (n,))

    def f(x, w):
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-5) * w

    out, ref = run(f, {"x": x, "w": w}, ("w",))
    np.testing.assert_allclose(out["out"], ref, rtol=1e-5, atol=1e-5)


@settings(max_examples=10)
@given(st.data(), st.lists(st.integers(1, 6), min_size=1, max_size=3), st.integers(0, 2))
def test_reductions(data, shape, axis):
    axis = axis % len(shape)
    x = arrays(data.draw, tuple(shape))

    def f(x):
        return jnp.sum(x, axis=axis), jnp.max(x, axis=-1), jnp.sum(x)

    out, ref = run(f, {"x": x})
    for k, r in zip(("0", "1", "2"), ref, strict=True):
        np.testing.assert_allclose(out[k], r, rtol=1e-5, atol=1e-5)


@settings(max_examples=8)
@given(st.data(), st.integers(1, 5), st.integers(2, 24))
def test_data_movement(data, m, n):
    """Slices, concatenation, transposes and cache-style updates (SXM permutes or free)."""
    x = arrays(data.draw, (m, n))
    c = arrays(data.draw, (3, m + 2, n))
    p = data.draw(st.integers(0, 2))

    def f(x, c):
        half = n // 2
        rot = jnp.concatenate([-x[:, half:], x[:, :half]], axis=-1)
        c = jax.lax.dynamic_update_slice(c, x[None], (p, 1, 0))
        return rot, x.T, c, c[:, : m + 1]

    out, ref = run(f, {"x": x, "c": c})
    for k, r in zip(("0", "1", "2", "3"), ref, strict=True):
        np.testing.assert_array_equal(out[k], r)
