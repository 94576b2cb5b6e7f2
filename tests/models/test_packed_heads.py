"""layer_step_packed (the KV cache with heads side by side, as the compiler stores it) against
layer_step, and the host's pack_heads/unpack_heads (sim.program) against each other."""

import dataclasses

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import get_config, init_params, layer_step, layer_step_packed
from sim.program import pack_heads, unpack_heads


def _packed_shape(shape, width):
    return (-(-shape[0] * shape[-1] // width), *shape[1:-1], width)


@settings(max_examples=40, deadline=None)
@given(
    a=st.integers(1, 7),
    mid=st.lists(st.integers(1, 3), max_size=2),
    b=st.integers(1, 5),
    width=st.integers(1, 24),
)
def test_pack_heads_round_trip(a, mid, b, width):
    shape = (a, *mid, b)
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1
    packed = pack_heads(x, _packed_shape(shape, width))
    # Element (h, ..., e) sits in row (h*b + e) // width at (h*b + e) % width; the tail is zero.
    for h in range(a):
        for e in range(b):
            r, at = divmod(h * b + e, width)
            np.testing.assert_array_equal(packed[r, ..., at], x[h, ..., e])
    assert packed.sum() == x.sum()
    np.testing.assert_array_equal(unpack_heads(packed, shape), x)


# Four KV heads so that 3 to a row leaves a padded head; tiny-gpt2 has no rotary tables.
MODELS = [
    dataclasses.replace(get_config("tiny-llama-f32"), name="tiny-llama-kv4", n_kv_heads=4),
    get_config("tiny-llama"),
    get_config("tiny-gpt2"),
]


# (model, row width): whole heads a row (3 of 10 and a padded row; 2 of 16), and heads
# straddling rows (rows of 16 for heads of 10; of 24 for heads of 16).
@pytest.mark.parametrize(
    "cfg,width",
    [(MODELS[0], 30), (MODELS[1], 16), (MODELS[2], 32), (MODELS[2], 24)],
    ids=lambda c: getattr(c, "name", c),
)
def test_layer_step_packed_equals_layer_step(cfg, width):
    rng = np.random.default_rng(5)
    context, pos = 6, 4
    params = init_params(cfg, 2)["layers"][0]
    shape = (cfg.n_kv_heads, context, cfg.head_dim)
    k = rng.normal(size=shape).astype(cfg.np_dtype)
    v = rng.normal(size=shape).astype(cfg.np_dtype)
    x = rng.normal(size=(1, cfg.d_model)).astype(np.float32)
    want = jax.jit(lambda *a: layer_step(*a, cfg=cfg, pos=pos))(params, x, k, v)
    kp, vp = (pack_heads(c, _packed_shape(shape, width)) for c in (k, v))
    got = jax.jit(lambda *a: layer_step_packed(*a, cfg=cfg, pos=pos, row_width=width))(
        params, x, kp, vp
    )
    # The same products; the other heads' places add exact zeros, so only the order the sums are
    # taken in may differ, and a straddling head's score is two partial sums added (measured:
    # 6.0e-7 at most, in the float32 model; 0 in the float16 ones).
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), rtol=1e-6, atol=1e-6)
    for g, w in zip(got[1:], want[1:], strict=True):
        np.testing.assert_array_equal(unpack_heads(np.asarray(g), shape), np.asarray(w))


def test_layer_step_packed_rejects_a_wrong_layout():
    cfg = get_config("tiny-llama")
    params = init_params(cfg, 2)["layers"][0]
    kv = np.zeros((cfg.n_kv_heads, 4, cfg.head_dim), cfg.np_dtype)
    with pytest.raises(ValueError, match=r"2 heads of 10 in rows of 16 need \(2, S, 16\)"):
        layer_step_packed(
            params, np.zeros((1, cfg.d_model), np.float32), kv, kv, cfg=cfg, pos=1, row_width=16
        )
