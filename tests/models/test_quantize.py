"""Weight formats: int8/fp8 round-trip error bounds, the quantised matmul against float64 NumPy,
which arrays each format converts, and dequantize."""

import jax
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from models import FORMATS, dequantize, get_config, init_params, mm, quantize
from models.ops import is_quantized
from models.quantize import dequantize_matrix, quantize_matrix
from tests.models.numpy_reference import dense

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
BF16 = np.dtype(ml_dtypes.bfloat16)


@st.composite
def weight_matrices(draw):
    """(E?, K, N) float32 weights of a drawn magnitude, some output columns all zero."""
    shape = draw(st.sampled_from([(), (3,)])) + (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    w = draw(hnp.arrays(np.float32, shape, elements=st.floats(-1, 1, width=32)))
    w = w * np.float32(10.0 ** draw(st.integers(-4, 3)))
    zero = draw(hnp.arrays(bool, shape[-1:]))
    return np.where(zero, np.float32(0), w).astype(np.float32)


@given(weight_matrices())
def test_int8_round_trip_is_within_half_a_step(w):
    qw = quantize_matrix(w, "int8")
    q, scale = qw["q"], qw["scale"]
    assert q.dtype == np.int8 and q.shape == w.shape and np.abs(q.astype(int)).max() <= 127
    assert scale.dtype == np.float32 and scale.shape == w.shape[:-2] + w.shape[-1:]
    amax = np.abs(w).max(axis=-2)
    tiny = np.finfo(np.float32).tiny  # the scale's floor, for columns of subnormal weights
    np.testing.assert_array_equal(scale, np.where(amax > 0, np.maximum(amax / 127, tiny), 1))
    assert (np.abs(q).max(axis=-2)[amax / 127 >= tiny] == 127).all()  # q's range used to its end
    assert (q.max(axis=-2)[amax == 0] == 0).all()
    err = np.abs(w.astype(np.float64) - dequantize_matrix(qw, np.float64))
    # Half a step, plus the float32 rounding of w / scale (relative 2^-24, so up to 127 * 2^-24
    # steps): a weight at a tie (w = 63.5 steps) may round either way (hypothesis found one).
    assert (err <= scale[..., None, :].astype(np.float64) * (0.5 + 128 * 2.0**-24)).all()


@given(weight_matrices())
def test_fp8_round_trip_has_three_mantissa_bits(w):
    qw = quantize_matrix(w, "fp8")
    q, scale = qw["q"], qw["scale"]
    assert q.dtype == E4M3 and np.isfinite(q.astype(np.float32)).all()
    assert (np.abs(q.astype(np.float32)) <= 448).all()
    # e4m3 rounds to 3 mantissa bits (relative 2**-4) for |q| >= 2**-6 and to steps of 2**-9 below.
    w64, s = w.astype(np.float64), scale[..., None, :].astype(np.float64)
    err = np.abs(w64 - dequantize_matrix(qw, np.float64))
    bound = np.maximum(2.0**-4 * np.abs(w64), 2.0**-10 * s) * (1 + 1e-6)
    assert (err <= bound).all()


@settings(max_examples=30)
@given(
    weight_matrices().filter(lambda w: w.ndim == 2),
    st.integers(1, 4),
    st.sampled_from(["int8", "fp8"]),
    st.sampled_from([np.float16, BF16, np.float32]),
    st.integers(0, 2**32 - 1),
)
def test_quantised_mm_is_the_dequantised_product_to_float32_rounding(w, t, weights, act, seed):
    qw = quantize_matrix(w, weights)
    k = w.shape[0]
    x = np.random.default_rng(seed).standard_normal((t, k)).astype(np.float32)
    out = np.asarray(mm(x, qw, np.dtype(act)))
    assert out.dtype == np.float32 and out.shape == (t, w.shape[1])
    xa = x.astype(act).astype(np.float64)  # activations rounded to their storage dtype
    expected = xa @ dense(qw)
    # Products of 16-bit x and 8-bit q are exact in float32 (float32 x may round once each); a
    # K-term float32 sum rounds K - 1 times; the scale multiply once more.
    bound = (k + 2) * 2.0**-24 * (np.abs(xa) @ np.abs(dense(qw)))
    assert (np.abs(out - expected) <= bound + 1e-30).all()


def test_formats_convert_the_documented_arrays():
    cfg = get_config("tiny-mixtral")
    native = init_params(cfg, seed=0)
    for weights in ("fp16", "bf16"):
        dtypes = {a.dtype for a in jax.tree.leaves(init_params(cfg, weights=weights))}
        assert dtypes == {np.dtype(np.float16) if weights == "fp16" else BF16}
    q = init_params(cfg, seed=0, weights="int8")
    layer, native_layer = q["layers"][0], native["layers"][0]
    for name in ("wq", "wk", "wv", "wo"):
        assert set(layer[name]) == {"q", "scale"} and layer[name]["q"].dtype == np.int8
    experts = layer["experts"]["w_gate"]
    assert experts["q"].shape == (4, 64, 128) and experts["scale"].shape == (4, 128)
    kept = [(layer[n], native_layer[n]) for n in ("attn_norm", "mlp_norm", "w_router")]
    kept += [(q["embed"], native["embed"]), (q["final_norm"], native["final_norm"])]
    for a, b in kept:  # norms, the router and the embedding table stay as they are
        assert a.dtype == np.float16 and a.tobytes() == b.tobytes()
    assert q["lm_head"]["scale"].shape == (cfg.vocab_size,)


def test_gpt2_tied_table_is_quantised_per_vocabulary_row():
    cfg = get_config("tiny-gpt2")
    native = init_params(cfg, seed=0)
    q = init_params(cfg, seed=0, weights="fp8")
    wte = native["lm_head"].T.astype(np.float32)  # (V, d): the checkpoint's token table
    np.testing.assert_array_equal(q["lm_head"]["scale"], np.abs(wte).max(axis=1) / np.float32(448))
    layer = q["layers"][0]
    for name in ("bq", "bo", "b_up", "attn_norm_bias"):
        assert layer[name].dtype == np.float16
    assert q["embed"]["wpe"].dtype == np.float16


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-mixtral"])
@pytest.mark.parametrize("weights", ["int8", "fp8"])
def test_dequantize_restores_the_native_structure(name, weights):
    cfg = get_config(name)
    native = init_params(cfg, seed=0)
    quantised = init_params(cfg, seed=0, weights=weights)
    restored = dequantize(quantised)
    assert jax.tree.structure(restored) == jax.tree.structure(native)
    stored = jax.tree.leaves(quantised, is_leaf=is_quantized)
    for r, n, s in zip(jax.tree.leaves(restored), jax.tree.leaves(native), stored, strict=True):
        if not is_quantized(s):
            assert r.dtype == n.dtype and r.tobytes() == n.tobytes()
            continue
        assert r.dtype == np.float32 and r.shape == n.shape
        n64, scale = n.astype(np.float64), s["scale"][..., None, :].astype(np.float64)
        if weights == "int8":
            bound = 0.5 * scale
        else:
            bound = np.maximum(2.0**-4 * np.abs(n64), 2.0**-10 * scale)
        assert (np.abs(r - n64) <= bound * (1 + 1e-6) + 2.0**-24 * np.abs(n64)).all()


def test_quantize_native_is_the_identity_and_unknown_formats_fail():
    params = init_params(get_config("tiny-llama"), seed=0)
    same = quantize(params, "native")
    assert all(a is b for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params), strict=True))
    assert FORMATS == ("native", "fp16", "bf16", "int8", "fp8")
    with pytest.raises(ValueError, match=r"weights='int4' is not one of"):
        quantize(params, "int4")
