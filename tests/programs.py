"""Small functions and their compiled Programs, shared by the tests."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from compiler import compile


def softmax_matmul(x, w):
    y = jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)
    e = jnp.exp(y - jnp.max(y, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def softmax_matmul_args(m=3, k=20, n=37, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, k)).astype(np.float32)
    w = (rng.normal(size=(k, n)) / np.sqrt(k)).astype(np.float16)
    return {"x": x, "w": w}


@functools.cache
def softmax_matmul_program(hw="teaching", m=3, k=20, n=37):
    return compile(softmax_matmul, hw, args=softmax_matmul_args(m, k, n), params=("w",))


def random_inputs(prog, seed=0) -> dict:
    """Uniform values in [-1, 1) for every parameter and input of a Program, in the host's
    shapes."""
    rng = np.random.default_rng(seed)
    return {
        s.name: rng.uniform(-1, 1, size=s.host).astype(s.dtype)
        for s in prog.symbols
        if s.kind in ("param", "input")
    }
