"""Numeric building blocks every model family shares: matmul, norms, activations, softmax, RoPE.

They are what the compiler traces, so each is written with a small set of primitives (explicit
softmax, SiLU and GELU formulas; rotary tables from constants only).

Numerics follow the LPU's matrix unit: activations are float32, every matmul casts its input to the
weight's storage dtype and accumulates in float32. Norm weights and biases are stored in the storage
dtype and applied in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

F32 = jnp.float32


def is_quantized(w) -> bool:
    """A quantised matrix is the dict {"q": int8 or float8 values, "scale": float32}."""
    return isinstance(w, dict) and set(w) == {"q", "scale"}


def mm(x: jax.Array, w, dtype=None) -> jax.Array:
    """x @ w with float32 accumulation (the MXM: 16-bit or 8-bit in, float32 out).

    A plain matrix w (K, N): x is cast to w's dtype. A quantised matrix {"q": (K, N) int8 or
    float8_e4m3fn, "scale": (N,) float32}: x is cast to `dtype`, the activations' storage dtype
    (cfg.np_dtype), and so is q, whose values are exact in float16, bfloat16 and float32; the
    float32 product is then scaled per output channel: (x @ q) * scale, as an MXM that installs the
    8-bit tile would compute it, followed by one elementwise multiply.
    """
    if not is_quantized(w):
        return jnp.dot(x.astype(w.dtype), w, preferred_element_type=F32)
    if dtype is None:
        raise ValueError(
            "mm of a quantised matrix needs dtype, the activations' storage dtype (cfg.np_dtype)"
        )
    q = w["q"].astype(dtype)
    return jnp.dot(x.astype(dtype), q, preferred_element_type=F32) * w["scale"]


def rmsnorm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    # x: (..., d) float32; w: (d,) in the storage dtype, applied in float32.
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * w.astype(F32)


def layernorm(x: jax.Array, w: jax.Array, b: jax.Array, eps: float) -> jax.Array:
    # x: (..., d) float32; gain w and bias b: (d,) in the storage dtype, applied in float32.
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(var + eps) * w.astype(F32) + b.astype(F32)


def silu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(x)


# sqrt(2 / pi), the constant of GPT-2's tanh approximation of GELU.
_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_tanh(x: jax.Array) -> jax.Array:
    """GELU as GPT-2 computes it: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + jnp.tanh(_GELU_C * (x + 0.044715 * (x * x * x))))


def softmax(s: jax.Array) -> jax.Array:
    # Over the last axis; subtracting the max keeps exp() finite.
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def rope_tables(head_dim: int, theta: float, positions) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotary angles pos * theta**(-2i/hd): positions.shape + (hd/2,) float32.

    `positions` is a Python int or a static array, so under tracing these are constants.
    """
    exponents = -2.0 * jnp.arange(head_dim // 2, dtype=F32) / head_dim
    inv_freq = jnp.power(F32(theta), exponents)  # (hd/2,) radians per position
    angles = jnp.asarray(positions, dtype=F32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half convention (as Hugging Face Llama): pairs are (i, i + hd/2). x: (..., heads, hd),
    cos and sin broadcastable to x[..., :hd/2].

    [x1 cos - x2 sin, x1 sin + x2 cos] computed over every head at once, as x c + swap(x) s with
    c = [cos, cos], s = [-sin, sin] and swap exchanging each head's halves: the same products and
    sums (x2 (-sin) is -(x2 sin) exactly), in the projection's own layout, so that a chip rotates a
    vector of several heads with one lane permutation and two multiplies."""
    *lead, heads, hd = x.shape
    flat = (*lead, heads * hd)
    half = hd // 2
    swapped = jnp.concatenate([x[..., half:], x[..., :half]], axis=-1).reshape(flat)
    c = jnp.broadcast_to(jnp.concatenate([cos, cos], axis=-1), x.shape)
    s = jnp.broadcast_to(jnp.concatenate([-sin, sin], axis=-1), x.shape)
    return (x.reshape(flat) * c.reshape(flat) + swapped * s.reshape(flat)).reshape(x.shape)
