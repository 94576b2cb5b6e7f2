"""Weight formats: how a model's parameters are stored, and converting between them.

Formats (the `weights=` argument of init_params and param_specs):

    native   every array in cfg.dtype, as init_params builds it
    fp16     every array in float16
    bf16     every array in bfloat16
    int8     projection matrices as int8 with a float32 scale per output channel
    fp8      projection matrices as float8_e4m3fn with a float32 scale per output channel

In int8 and fp8 only the projection matrices (the keys in PROJECTIONS: attention and MLP
projections, each MoE expert's, and the LM head, which for tied embeddings is also the token
table) are quantised; norms, biases, the MoE router, the embedding table and the KV cache stay in
cfg.dtype. A quantised matrix W (..., K, N) becomes the dict

    {"q": (..., K, N) int8 or float8_e4m3fn, "scale": (..., N) float32}

with scale[..., n] = max_k |W[..., k, n]| / QMAX (1 for an all-zero column; never below float32's
smallest normal number), so that
W ~= q * scale[..., None, :]: per output channel, and per expert for an expert stack (E, K, N).
int8: q = clip(rint(W / scale), -127, 127), an error of at most scale / 2. fp8: q = W / scale
rounded to e4m3 (3 mantissa bits), a relative error of at most 2**-4 for |q| >= 2**-6.
"""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np

from models.ops import is_quantized

FORMATS = ("native", "fp16", "bf16", "int8", "fp8")
# Formats that store every array in one floating-point dtype.
CAST = {"fp16": np.dtype(np.float16), "bf16": np.dtype(ml_dtypes.bfloat16)}
# Quantised formats: the storage dtype of q, and QMAX, the largest |q| a scale maps to.
QUANTIZED = {
    "int8": (np.dtype(np.int8), 127.0),
    "fp8": (np.dtype(ml_dtypes.float8_e4m3fn), 448.0),  # e4m3's largest finite value
}
# Parameter names of projection matrices: what int8 and fp8 quantise, wherever they appear.
PROJECTIONS = frozenset({"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down", "lm_head"})


def check_format(weights: str) -> None:
    if weights not in FORMATS:
        raise ValueError(f"weights={weights!r} is not one of {FORMATS}")


def quantize_matrix(w: np.ndarray, weights: str) -> dict:
    """{"q", "scale"} of w (..., K, N), per output channel (the last axis) and leading index."""
    qdtype, qmax = QUANTIZED[weights]
    wf = np.asarray(w, dtype=np.float32)
    amax = np.max(np.abs(wf), axis=-2)  # (..., N)
    # At least float32's smallest normal number, so that a column of subnormal weights cannot
    # underflow its scale to zero (or lose its precision); such a column then uses less of q's
    # range.
    scale = np.maximum(amax / np.float32(qmax), np.finfo(np.float32).tiny)
    scale = np.where(amax > 0, scale, np.float32(1.0)).astype(np.float32)
    scaled = wf / scale[..., None, :]
    if weights == "int8":
        q = np.clip(np.rint(scaled), -qmax, qmax).astype(qdtype)
    else:
        # |scaled| <= 448 up to one float32 rounding; the clip keeps that rounding from overflowing.
        q = np.clip(scaled, -qmax, qmax).astype(qdtype)
    return {"q": q, "scale": scale}


def dequantize_matrix(w: dict, dtype=np.float32) -> np.ndarray:
    """q * scale per output channel, computed in float64 and rounded once to `dtype`."""
    q = np.asarray(w["q"], dtype=np.float64)
    return (q * np.asarray(w["scale"], dtype=np.float64)[..., None, :]).astype(dtype)


def map_params(tree, leaf_fn, name: str = ""):
    """tree (dicts and lists of parameters) with each leaf replaced by leaf_fn(its dict key, leaf).

    A quantised matrix {"q", "scale"} is one leaf. Dicts are walked in insertion order, not in
    jax.tree's sorted order, so init_params draws its arrays in the order they are laid out.
    """
    if isinstance(tree, dict) and not is_quantized(tree):
        return {k: map_params(v, leaf_fn, k) for k, v in tree.items()}
    if isinstance(tree, list):
        return [map_params(v, leaf_fn, name) for v in tree]
    return leaf_fn(name, tree)


def quantize(params: dict, weights: str) -> dict:
    """Native parameters (as init_params(cfg) builds them) stored in format `weights`."""
    check_format(weights)

    def leaf(name, a):
        if weights in CAST:
            return np.asarray(a).astype(CAST[weights])
        if weights in QUANTIZED and name in PROJECTIONS:
            return quantize_matrix(a, weights)
        return a

    return map_params(params, leaf)


def quantize_specs(specs: dict, weights: str) -> dict:
    """What quantize() does to arrays, done to their jax.ShapeDtypeStructs."""
    check_format(weights)

    def leaf(name, s):
        if weights in CAST:
            return jax.ShapeDtypeStruct(s.shape, CAST[weights])
        if weights in QUANTIZED and name in PROJECTIONS:
            scale_shape = s.shape[:-2] + s.shape[-1:]
            return {
                "q": jax.ShapeDtypeStruct(s.shape, QUANTIZED[weights][0]),
                "scale": jax.ShapeDtypeStruct(scale_shape, np.float32),
            }
        return s

    return map_params(specs, leaf)


def dequantize(params: dict, dtype=np.float32) -> dict:
    """Parameters with every quantised matrix replaced by q * scale as a plain `dtype` array.

    Running the model on these gives the quantised model's weights without the 8-bit storage, the
    "unquantised" side of a quantisation-error comparison. Other arrays are returned unchanged.
    """
    return map_params(params, lambda _, a: dequantize_matrix(a, dtype) if is_quantized(a) else a)
