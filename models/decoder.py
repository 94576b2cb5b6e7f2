"""Reference decoders of every family in jax.numpy: weights, prefill, KV-cached decode, generation.

The compiler traces a decode step one block at a time: `layer_step` (one layer) for each of
params["layers"], then `head` (final norm and LM head) on head_params(params). The host embeds
tokens (`embed`). `decode_step` is those blocks in sequence. Every block is written with a small set
of primitives (models.ops): static slices of the KV cache, a `dynamic_update_slice` at a constant
index, rotary tables from constants only. Numerics: activations float32, matmuls in the storage
dtype with float32 accumulation (models.ops.mm), KV cache in cfg.dtype.

Parameters (init_params; param_specs gives the same tree as ShapeDtypeStructs). Every family has
the top-level keys "embed" (what only the host's embedding lookup reads), "layers" (a list of
n_layers dicts of one structure) and the head's keys; head_params(params) is everything but "embed"
and "layers". Shapes: d = d_model, V = vocab, S = max_seq_len, H, KV = query and KV heads,
hd = head_dim, ff = d_ff, E = experts.

    llama (Llama 2/3, Mistral)           mixtral                        gpt2 (tied embeddings)
    embed        (V, d) token table      as llama                       {"wpe": (S, d)} positions
    layers[i]    attn_norm (d,)          attn_norm, wq, wk, wv, wo,     attn_norm, attn_norm_bias,
                 wq (d, H*hd)            mlp_norm as llama;             wq, bq, wk, bk, wv, bv,
                 wk, wv (d, KV*hd)       w_router (d, E);               wo, bo (H*hd, d), (d,);
                 wo (H*hd, d)            experts {w_gate (E, d, ff),    mlp_norm, mlp_norm_bias;
                 mlp_norm (d,)                    w_up (E, d, ff),      w_up (d, ff), b_up (ff,),
                 w_gate, w_up (d, ff)             w_down (E, ff, d)}    w_down (ff, d), b_down (d,)
                 w_down (ff, d)
    head         final_norm (d,)         as llama                       final_norm, final_norm_bias
                 lm_head (d, V)                                         lm_head (d, V) = wte.T

Matrices are (in, out), so x @ w. GPT-2's token table wte (V, d) is stored once, transposed, as the
LM head: the host embeds token t as column t of lm_head plus row pos of wpe. With weights="int8" or
"fp8" each projection (and lm_head) is the dict {"q", "scale"} of models.quantize.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models.configs import ROTARY_FAMILIES, ModelConfig
from models.ops import (
    F32,
    gelu_tanh,
    is_quantized,
    layernorm,
    mm,
    rmsnorm,
    rope_tables,
    rotate,
    silu,
    softmax,
)
from models.quantize import check_format, map_params, quantize, quantize_specs

# --- parameter layout -----------------------------------------------------------------------------


class _Leaf(NamedTuple):
    init: str  # a key of _INIT: how init_params draws the array
    shape: tuple[int, ...]


def _matrix(rng: np.random.Generator, shape) -> np.ndarray:
    # N(0, 1/fan_in), fan_in = shape[-2], so every projection keeps activations O(1); the logits
    # are then roughly N(0, 1) over the vocabulary, so greedy choices are rarely near-ties
    # (tiny-llama, seed 0, measured on the prefill logits of 8 random 64-token sequences: 96% of
    # the 512 rows have top-two logits more than 1e-2 apart, median gap 0.26).
    return rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[-2])


# Random init by kind. Norm weights are 1 + 0.1 N(0, 1), not all ones, and biases 0.1 N(0, 1), not
# zeros, so that a norm or bias applied in the wrong place changes results.
_INIT = {
    "matrix": _matrix,
    # A lookup reads one row, so embeddings are N(0, 1) to start the residual stream at O(1).
    "table": lambda rng, shape: rng.standard_normal(shape, dtype=np.float32),
    "norm": lambda rng, shape: 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32),
    "small": lambda rng, shape: 0.1 * rng.standard_normal(shape, dtype=np.float32),
}


def _attention_layout(cfg: ModelConfig) -> dict:
    d, q_width, kv_width = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    return {
        "attn_norm": _Leaf("norm", (d,)),
        "wq": _Leaf("matrix", (d, q_width)),
        "wk": _Leaf("matrix", (d, kv_width)),
        "wv": _Leaf("matrix", (d, kv_width)),
        "wo": _Leaf("matrix", (q_width, d)),
        "mlp_norm": _Leaf("norm", (d,)),
    }


def _llama_layer(cfg: ModelConfig) -> dict:
    d, ff = cfg.d_model, cfg.d_ff
    return {
        **_attention_layout(cfg),
        "w_gate": _Leaf("matrix", (d, ff)),
        "w_up": _Leaf("matrix", (d, ff)),
        "w_down": _Leaf("matrix", (ff, d)),
    }


def _mixtral_layer(cfg: ModelConfig) -> dict:
    d, ff, e = cfg.d_model, cfg.d_ff, cfg.n_experts
    return {
        **_attention_layout(cfg),
        "w_router": _Leaf("matrix", (d, e)),  # not a projection: never quantised
        "experts": {
            "w_gate": _Leaf("matrix", (e, d, ff)),
            "w_up": _Leaf("matrix", (e, d, ff)),
            "w_down": _Leaf("matrix", (e, ff, d)),
        },
    }


def _gpt2_layer(cfg: ModelConfig) -> dict:
    # The llama attention layout and GPT-2's fc (w_up) and proj (w_down), each weight followed by
    # its bias, named as _norm and _linear look them up: "<norm>_bias" for a norm gain, "b..." of
    # a matrix "w..."; a bias is as wide as its weight's output.
    d, ff = cfg.d_model, cfg.d_ff
    weights = {
        **_attention_layout(cfg),
        "w_up": _Leaf("matrix", (d, ff)),
        "w_down": _Leaf("matrix", (ff, d)),
    }
    layer = {}
    for name, leaf in weights.items():
        layer[name] = leaf
        bias = name + "_bias" if leaf.init == "norm" else "b" + name[1:]
        layer[bias] = _Leaf("small", leaf.shape[-1:])
    return layer


_LAYER_LAYOUTS = {"llama": _llama_layer, "mixtral": _mixtral_layer, "gpt2": _gpt2_layer}


def _layout(cfg: ModelConfig) -> dict:
    """The parameter tree with _Leaf leaves, in the order init_params draws them."""
    tied = cfg.family == "gpt2"
    if cfg.tie_embeddings != tied:
        raise ValueError(
            f"model {cfg.name!r}: tie_embeddings={cfg.tie_embeddings} is not modelled for family "
            f"{cfg.family!r} (gpt2 ties its embeddings, llama and mixtral do not)"
        )
    d, v = cfg.d_model, cfg.vocab_size
    layer = _LAYER_LAYOUTS[cfg.family](cfg)
    if tied:
        # Positions drawn like biases: token columns are N(0, 1/d), so both are ~0.1 for d ~ 64.
        embed = {"wpe": _Leaf("small", (cfg.max_seq_len, d))}
    else:
        embed = _Leaf("table", (v, d))
    tree = {"embed": embed, "layers": [layer] * cfg.n_layers, "final_norm": _Leaf("norm", (d,))}
    if cfg.family == "gpt2":
        tree["final_norm_bias"] = _Leaf("small", (d,))
    tree["lm_head"] = _Leaf("matrix", (d, v))
    return tree


def init_params(cfg: ModelConfig, seed: int = 0, weights: str = "native") -> dict:
    """Deterministic random weights as NumPy arrays in the layout of the module docstring.

    Drawn in cfg.dtype from a seeded generator, then stored in format `weights` (models.quantize:
    "native" keeps cfg.dtype; "fp16"/"bf16" cast; "int8"/"fp8" quantise the projections).
    """
    check_format(weights)
    rng = np.random.default_rng(seed)
    dt = cfg.np_dtype
    params = map_params(_layout(cfg), lambda _, leaf: _INIT[leaf.init](rng, leaf.shape).astype(dt))
    return quantize(params, weights)


def param_specs(cfg: ModelConfig, weights: str = "native") -> dict:
    """init_params(cfg, weights=weights) as jax.ShapeDtypeStructs, without building any array."""
    dt = cfg.np_dtype
    specs = map_params(_layout(cfg), lambda _, leaf: jax.ShapeDtypeStruct(leaf.shape, dt))
    return quantize_specs(specs, weights)


def head_params(params: dict) -> dict:
    """The head's parameters (final norm and LM head): params without "embed" and "layers"."""
    return {k: v for k, v in params.items() if k not in ("embed", "layers")}


# --- host side: embedding and cache ---------------------------------------------------------------


def embed(params: dict, token: int, pos: int = 0, cfg: ModelConfig | None = None) -> np.ndarray:
    """Host-side embedding of `token` at position `pos`: (1, d) float32.

    llama and mixtral: row `token` of the token table (rotary positions are applied in the layers,
    so pos is not used). gpt2: column `token` of the tied LM head (dequantised if quantised) plus
    row `pos` of the learned positions. With cfg, pos is also checked against cfg.max_seq_len.
    """
    table = params["embed"]
    learned = isinstance(table, dict)  # gpt2: {"wpe"}; the token table is the LM head
    vocab = _width(params["lm_head"]) if learned else table.shape[0]
    if not 0 <= token < vocab:
        raise ValueError(f"token {token} is outside the vocabulary [0, {vocab})")
    if learned:
        limit = table["wpe"].shape[0]
    else:
        limit = None if cfg is None else cfg.max_seq_len
    if limit is not None and not 0 <= pos < limit:
        raise ValueError(f"pos={pos} must be in [0, max_seq_len={limit})")
    if not learned:
        return np.asarray(table[token], dtype=np.float32)[None, :]
    lm_head = params["lm_head"]  # (d, V), or {"q": (d, V), "scale": (V,)}
    if is_quantized(lm_head):
        q, scale = lm_head["q"][:, token], lm_head["scale"][token]
        column = np.asarray(q, np.float32) * np.float32(scale)
    else:
        column = np.asarray(lm_head[:, token], dtype=np.float32)
    return (column + np.asarray(table["wpe"][pos], dtype=np.float32))[None, :]


def _width(w) -> int:
    # Output channels of a plain or quantised matrix (..., K, N).
    return (w["q"] if is_quantized(w) else w).shape[-1]


def init_cache(cfg: ModelConfig, context: int) -> dict:
    """Empty KV cache for `context` positions: {"k", "v"}: per layer (KV, context, hd) zeros."""
    if not 1 <= context <= cfg.max_seq_len:
        raise ValueError(
            f"context={context} must be in [1, max_seq_len={cfg.max_seq_len}] for {cfg.name!r}"
        )
    shape = (cfg.n_kv_heads, context, cfg.head_dim)
    return {
        "k": [np.zeros(shape, cfg.np_dtype) for _ in range(cfg.n_layers)],
        "v": [np.zeros(shape, cfg.np_dtype) for _ in range(cfg.n_layers)],
    }


# --- blocks ---------------------------------------------------------------------------------------


def _norm(x: jax.Array, p: dict, name: str, cfg: ModelConfig) -> jax.Array:
    # LayerNorm (gain and bias) for gpt2, RMSNorm (gain) otherwise.
    if cfg.family == "gpt2":
        return layernorm(x, p[name], p[name + "_bias"], cfg.norm_eps)
    return rmsnorm(x, p[name], cfg.norm_eps)


def _linear(h: jax.Array, p: dict, name: str, cfg: ModelConfig) -> jax.Array:
    # h @ p[name], plus the bias "b..." of weight "w..." where the family has one (gpt2).
    y = mm(h, p[name], cfg.np_dtype)
    bias = "b" + name[1:]
    return y + p[bias].astype(F32) if bias in p else y


def _swiglu(h: jax.Array, p: dict, cfg: ModelConfig) -> jax.Array:
    # (T, d) -> (T, d): w_down(silu(w_gate h) * w_up h).
    gate = mm(h, p["w_gate"], cfg.np_dtype)  # (T, ff)
    return mm(silu(gate) * mm(h, p["w_up"], cfg.np_dtype), p["w_down"], cfg.np_dtype)


def _gelu_mlp(h: jax.Array, p: dict, cfg: ModelConfig) -> jax.Array:
    # (T, d) -> (T, d): GPT-2's fc (w_up) and proj (w_down), with biases.
    return _linear(gelu_tanh(_linear(h, p, "w_up", cfg)), p, "w_down", cfg)


def _route(layer: dict, h: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    # h (T, d) -> expert ids (T, k) int32, by descending router logit (ties: lower id first, as
    # jax.lax.top_k orders them), and gate weights (T, k) float32: softmax of the k logits.
    logits = mm(h, layer["w_router"], cfg.np_dtype)  # (T, E)
    top, ids = jax.lax.top_k(logits, cfg.experts_per_token)
    return ids, softmax(top)


def route(layer_params: dict, h: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """Mixtral's expert choice for one token's normed hidden state h (1, d): expert ids (k,) int32
    (highest router logit first) and their gate weights (k,) float32, summing to 1."""
    ids, gates = _route(layer_params, h, cfg)
    return ids[0], gates[0]


def _mix_experts(experts: dict, h: jax.Array, ids: jax.Array, gates: jax.Array, cfg) -> jax.Array:
    # One token h (1, d): sum over its k experts of gate * SwiGLU_expert(h) (1, d). Each chosen
    # expert's matrices (and scales) are read by index, so only k of the E experts are computed.
    out = None
    for j in range(cfg.experts_per_token):
        expert = jax.tree.map(
            lambda a, i=ids[j]: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), experts
        )
        term = gates[j] * _swiglu(h, expert, cfg)
        out = term if out is None else out + term
    return out


def _moe(h: jax.Array, layer: dict, cfg: ModelConfig) -> jax.Array:
    # (T, d) -> (T, d): each token through its own top-k experts. A decode step's single token is
    # traced as is; a prefill's tokens are vectorised (vmap), which compiles far faster than a loop
    # over tokens (tiny-mixtral, jitted prefill of 64 tokens, measured: 1.7 s against 35 s).
    ids, gates = _route(layer, h, cfg)  # (T, k) each
    if h.shape[0] == 1:
        return _mix_experts(layer["experts"], h, ids[0], gates[0], cfg)

    def token(h_t, ids_t, gates_t):
        return _mix_experts(layer["experts"], h_t[None], ids_t, gates_t, cfg)[0]

    return jax.vmap(token)(h, ids, gates)


def experts_part(layer_params: dict, h: jax.Array, *, cfg: ModelConfig) -> jax.Array:
    """The part of Mixtral's MoE output that the experts of one chip of an expert-parallel group
    give: h (1, d) normed -> (1, d) float32; the parts of the group's chips sum to `mlp`.

    layer_params: w_router (d, E) whole; experts {w_gate (n, d, ff'), w_up, w_down (n, ff', d)},
    the chip's n experts (all of their FFN columns, or a tensor-parallel rank's ff' of them);
    expert_slots (E, n): row g one-hot at the slot of expert g on this chip, zeros where another
    chip holds it (columns e*n.. of the identity on chip e). The router and its top_k are the
    model's own, so every chip chooses JAX's experts; the slot table turns a choice into a slot
    with no arithmetic on the id (the chip reads its row by the id, as it reads an expert).

    With n < k the chip runs each of its n experts under its gate (the chosen ones' gate, else
    0); with n >= k, for each of the k choices, the slot the choice has here (a top_k of its row:
    slot 0 where the row is zeros) under gate * (the row's sum: 1 here, 0 elsewhere). Either way
    min(n, k) experts of work, whatever the choice (the second way is the faster for n = k:
    measured on tiny-mixtral at n = k = 2 on groq-tsp-v1, 429 cycles against 468)."""
    ids, gates = route(layer_params, h, cfg)  # (k,) each
    experts, slots = layer_params["experts"], layer_params["expert_slots"]
    n, k = slots.shape[1], cfg.experts_per_token
    rows = [
        jax.lax.dynamic_index_in_dim(slots, ids[j], keepdims=False).astype(F32) for j in range(k)
    ]  # (n,) each
    out = None
    if n < k:
        held = functools.reduce(jnp.add, [gates[j] * rows[j] for j in range(k)])  # (n,)
        for i in range(n):
            term = held[i] * _swiglu(h, jax.tree.map(lambda a, i=i: a[i], experts), cfg)
            out = term if out is None else out + term
        return out
    for j in range(k):
        _, slot = jax.lax.top_k(rows[j], 1)
        expert = jax.tree.map(
            lambda a, s=slot[0]: jax.lax.dynamic_index_in_dim(a, s, keepdims=False), experts
        )
        term = (gates[j] * jnp.sum(rows[j])) * _swiglu(h, expert, cfg)
        out = term if out is None else out + term
    return out


_MLPS = {"llama": _swiglu, "mixtral": _moe, "gpt2": _gelu_mlp}


def mlp(layer_params: dict, h: jax.Array, *, cfg: ModelConfig) -> jax.Array:
    """The layer's MLP on its normed input h (T, d) -> (T, d) float32, before the residual add:
    SwiGLU (llama), GELU with biases (gpt2), or each token's top-k SwiGLU experts (mixtral)."""
    return _MLPS[cfg.family](h, layer_params, cfg)


def _qkv(x: jax.Array, layer: dict, cfg: ModelConfig, rope):
    """Normed and projected q (T, H, hd), k (T, KV, hd), v (T, KV, hd) of x (T, d); q and k rotated
    by rope = (cos, sin) for rotary families (rope is None for gpt2)."""
    t, hd = x.shape[0], cfg.head_dim
    h = _norm(x, layer, "attn_norm", cfg)
    # Heads from the weights' widths, so a tensor-parallel shard (a run of heads) runs this too.
    q = _linear(h, layer, "wq", cfg).reshape(t, -1, hd)
    k = _linear(h, layer, "wk", cfg).reshape(t, -1, hd)
    v = _linear(h, layer, "wv", cfg).reshape(t, -1, hd)
    if rope is None:
        return q, k, v
    return rotate(q, *rope), rotate(k, *rope), v


def _finish_layer(x: jax.Array, o: jax.Array, layer: dict, cfg: ModelConfig) -> jax.Array:
    """Attention output projection and the MLP, each added to the residual x (T, d)."""
    x = x + _linear(o, layer, "wo", cfg)
    h = _norm(x, layer, "mlp_norm", cfg)
    return x + mlp(layer, h, cfg=cfg)


def _check_pos(pos: int, context: int) -> None:
    if not 0 <= pos < context:
        raise ValueError(f"pos={pos} must be in [0, {context}), the KV cache length")


def layer_step(
    layer_params: dict,
    x: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    *,
    cfg: ModelConfig,
    pos: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One decoder layer of one decode step at position `pos` (static, 0-based).

    x (1, d) float32; k_cache, v_cache (KV, S, hd) in cfg.dtype, S > pos. Writes this token's k and
    v at `pos` and attends over positions 0..pos. Returns (x, k_cache, v_cache) updated.
    """
    _check_pos(pos, k_cache.shape[1])
    return _layer_step(layer_params, x, k_cache, v_cache, cfg, pos, _rope(cfg, pos))


def _rope(cfg: ModelConfig, pos: int):
    # (cos, sin) (hd/2,) constants for this static position; None for learned positions (gpt2).
    if cfg.family not in ROTARY_FAMILIES:
        return None
    return rope_tables(cfg.head_dim, cfg.rope_theta, pos)


def _layer_step(layer_params, x, k_cache, v_cache, cfg: ModelConfig, pos: int, rope):
    # layer_step with the rotary tables given, so decode_step computes them once for all layers.
    o, k_cache, v_cache = attend(layer_params, x, k_cache, v_cache, cfg, pos, rope)
    x = _finish_layer(x, o, layer_params, cfg)
    return x, k_cache, v_cache


def attend(layer_params, x, k_cache, v_cache, cfg: ModelConfig, pos: int, rope):
    """A decode step's attention before its output projection: x (1, d) -> o (1, KV*G*hd)
    float32, and the caches with this token's k and v written at `pos`. KV is the caches' head
    count, so a tensor-parallel shard (its KV heads, their query heads, their weights' columns)
    attends with this same code; rope as _rope(cfg, pos) gives it."""
    kv, hd = k_cache.shape[0], cfg.head_dim
    group = cfg.n_heads // cfg.n_kv_heads
    q, k, v = _qkv(x, layer_params, cfg, rope)  # (1, H, hd), (1, KV, hd), (1, KV, hd)
    # (KV, 1, hd) written at (0, pos, 0) of (KV, S, hd).
    k_cache = jax.lax.dynamic_update_slice(
        k_cache, k[0, :, None, :].astype(k_cache.dtype), (0, pos, 0)
    )
    v_cache = jax.lax.dynamic_update_slice(
        v_cache, v[0, :, None, :].astype(v_cache.dtype), (0, pos, 0)
    )
    kk, vv = k_cache[:, : pos + 1, :], v_cache[:, : pos + 1, :]  # (KV, pos+1, hd)
    qg = q.reshape(kv, group, hd).astype(kk.dtype)  # head h uses KV head h // G
    scores = jnp.einsum("kgd,ktd->kgt", qg, kk, preferred_element_type=F32) * (1.0 / math.sqrt(hd))
    p = softmax(scores)  # (KV, G, pos+1)
    o = jnp.einsum("kgt,ktd->kgd", p.astype(vv.dtype), vv, preferred_element_type=F32)
    return o.reshape(1, kv * group * hd), k_cache, v_cache


# --- the KV cache with heads packed side by side --------------------------------------------------
# A chip's vector holds `lanes` elements; a head of head_dim hd < lanes alone in one would leave the
# rest empty. The compiler therefore stores a position's heads one after another in rows of W
# elements: (KV, S, hd) -> (ceil(KV*hd/W), S, W), element e of head h at flat index h*hd + e, that
# is row (h*hd + e) // W, element (h*hd + e) % W; the tail of the last row is zero
# (sim.program.pack_heads is the host's side of this). W = P*hd keeps P whole heads a row; W = the
# lanes packs densely, a head may then straddle two rows. layer_step_packed is layer_step over that
# layout: each query head meets the rows its head lies in, with zeros in the other heads' places,
# so its score is the same products summed (in two parts where it straddles), and a K/V row is
# installed once for all the heads it holds (tests/models/test_packed_heads.py).


def _pieces(kv: int, hd: int, width: int) -> list[list[tuple[int, int, int, int]]]:
    """Per row: (head, first, end, at) for each head with elements [first, end) in the row, from
    element `at` of it."""
    rows = -(-kv * hd // width)
    out: list[list[tuple[int, int, int, int]]] = [[] for _ in range(rows)]
    for h in range(kv):
        e = 0
        while e < hd:
            flat = h * hd + e
            r, at = divmod(flat, width)
            end = min(hd, e + width - at)
            out[r].append((h, e, end, at))
            e = end
    return out


def layer_step_packed(
    layer_params: dict,
    x: jax.Array,
    k_packed: jax.Array,
    v_packed: jax.Array,
    *,
    cfg: ModelConfig,
    pos: int,
    row_width: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """layer_step with k_packed, v_packed (ceil(KV*hd/W), S, W), W = row_width."""
    _check_pos(pos, k_packed.shape[1])
    o, k_packed, v_packed = attend_packed(
        layer_params, x, k_packed, v_packed, cfg, pos, _rope(cfg, pos), row_width, cfg.n_kv_heads
    )
    return _finish_layer(x, o, layer_params, cfg), k_packed, v_packed


def attend_packed(layer_params, x, k_packed, v_packed, cfg, pos, rope, row_width, kv):
    """`attend` over caches of `kv` heads in rows of row_width (a tensor-parallel shard's heads,
    or all of them): x (1, d) -> o (1, kv*G*hd) float32, and the caches with this token's k and v
    written at `pos`."""
    hd, width = cfg.head_dim, row_width
    rows = -(-kv * hd // width)
    if k_packed.shape[0] != rows or k_packed.shape[2] != width:
        raise ValueError(
            f"packed cache {tuple(k_packed.shape)}: {kv} heads of {hd} in rows of {width} need "
            f"({rows}, S, {width})"
        )
    group = cfg.n_heads // cfg.n_kv_heads
    q, k, v = _qkv(x, layer_params, cfg, rope)  # (1, kv*G, hd), (1, kv, hd), (1, kv, hd)

    def packed_row(t: jax.Array) -> jax.Array:  # (1, kv, hd) -> (rows, 1, W)
        t = jnp.pad(t.reshape(kv * hd), (0, rows * width - kv * hd))
        return t.reshape(rows, 1, width).astype(k_packed.dtype)

    k_packed = jax.lax.dynamic_update_slice(k_packed, packed_row(k), (0, pos, 0))
    v_packed = jax.lax.dynamic_update_slice(v_packed, packed_row(v), (0, pos, 0))
    kk, vv = k_packed[:, : pos + 1, :], v_packed[:, : pos + 1, :]  # (rows, pos+1, W)
    qg = q.reshape(kv, group, hd)
    pieces = _pieces(kv, hd, width)
    # Per row: each of its heads' query rows, that head's elements in place, zeros elsewhere
    # (placed first, converted after: one lane permutation from q's layout).
    partial: dict[int, list[jax.Array]] = {h: [] for h in range(kv)}
    for r, row in enumerate(pieces):
        qm = jnp.concatenate(
            [jnp.pad(qg[h, :, a:b], ((0, 0), (at, width - at - (b - a)))) for h, a, b, at in row]
        ).astype(kk.dtype)  # (heads in the row * G, W)
        s = jnp.einsum("mw,tw->mt", qm, kk[r], preferred_element_type=F32)
        for i, (h, _, _, _) in enumerate(row):
            partial[h].append(s[i * group : (i + 1) * group])
    scores = jnp.concatenate([functools.reduce(jnp.add, partial[h])[None] for h in range(kv)]) * (
        1.0 / math.sqrt(hd)
    )  # (kv, G, pos+1)
    probs = softmax(scores).astype(vv.dtype)
    # Per row: its heads' probabilities against the row's V; each head keeps its own elements.
    parts: dict[int, list[jax.Array]] = {h: [] for h in range(kv)}
    for r, row in enumerate(pieces):
        pm = jnp.concatenate([probs[h] for h, _, _, _ in row])  # (heads in the row * G, pos+1)
        o = jnp.einsum("mt,tw->mw", pm, vv[r], preferred_element_type=F32)
        for i, (h, a, b, at) in enumerate(row):
            parts[h].append(o[i * group : (i + 1) * group, at : at + b - a])
    o = jnp.concatenate([jnp.concatenate(parts[h], axis=1)[None] for h in range(kv)])
    return o.reshape(1, kv * group * hd), k_packed, v_packed


def head(head_params: dict, x: jax.Array, *, cfg: ModelConfig) -> jax.Array:
    """Final norm and LM head: x (T, d) float32 -> logits (T, vocab) float32."""
    return mm(_norm(x, head_params, "final_norm", cfg), head_params["lm_head"], cfg.np_dtype)


def decode_step(
    params: dict, x: jax.Array, cache: dict, *, cfg: ModelConfig, pos: int
) -> tuple[jax.Array, dict]:
    """One decode step: the token embedded as x (1, d) float32 at position `pos` (0-based).

    Every layer_step in turn (each writes its k and v at `pos` of its cache, which must be longer
    than `pos`), then the head. params may omit "embed". Returns logits (1, vocab) float32 and the
    updated cache.
    """
    _check_pos(pos, cache["k"][0].shape[1])
    rope = _rope(cfg, pos)
    new_k, new_v = [], []
    for layer, k_cache, v_cache in zip(params["layers"], cache["k"], cache["v"], strict=True):
        x, k_cache, v_cache = _layer_step(layer, x, k_cache, v_cache, cfg, pos, rope)
        new_k.append(k_cache)
        new_v.append(v_cache)
    return head(head_params(params), x, cfg=cfg), {"k": new_k, "v": new_v}


# --- whole sequences ------------------------------------------------------------------------------


def prefill(params: dict, tokens, *, cfg: ModelConfig) -> jax.Array:
    """Causal forward over a whole prompt without a cache: logits (T, vocab) float32.

    Same math as decode_step (k, v and attention probabilities rounded to the storage dtype as the
    cache would hold them), so decoding the prompt token by token reproduces these logits.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not 1 <= len(tokens) <= cfg.max_seq_len:
        raise ValueError(
            f"tokens must be a 1-D sequence of 1..{cfg.max_seq_len} ids, got shape {tokens.shape}"
        )
    x = np.concatenate([embed(params, int(tok), pos, cfg) for pos, tok in enumerate(tokens)])
    return _prefill_jit(params, x, cfg=cfg)  # x: (T, d) float32


def _prefill_forward(params: dict, x: jax.Array, *, cfg: ModelConfig) -> jax.Array:
    # x: (T, d) float32 embedded prompt -> logits (T, vocab) float32.
    t = x.shape[0]
    kv, hd = cfg.n_kv_heads, cfg.head_dim
    group = cfg.n_heads // kv
    dt = cfg.np_dtype
    rope = None
    if cfg.family in ROTARY_FAMILIES:
        cos, sin = rope_tables(hd, cfg.rope_theta, np.arange(t))  # (T, hd/2)
        rope = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    causal = np.tril(np.ones((t, t), dtype=bool))  # (query t, key s): s <= t
    for layer in params["layers"]:
        q, k, v = _qkv(x, layer, cfg, rope)
        qg = q.reshape(t, kv, group, hd).astype(dt)
        scores = jnp.einsum("tkgd,skd->kgts", qg, k.astype(dt), preferred_element_type=F32)
        p = softmax(jnp.where(causal, scores * (1.0 / math.sqrt(hd)), -jnp.inf))  # (KV,G,T,T)
        o = jnp.einsum("kgts,skd->tkgd", p.astype(dt), v.astype(dt), preferred_element_type=F32)
        x = _finish_layer(x, o.reshape(t, cfg.n_heads * hd), layer, cfg)
    return head(head_params(params), x, cfg=cfg)


# Compiled once per (cfg, T): run op by op, a prefill dispatches hundreds of tiny kernels.
_prefill_jit = jax.jit(_prefill_forward, static_argnames=("cfg",))


# Module-level so repeated generate() calls reuse compilations (one per cfg, cache length and pos).
_decode_jit = jax.jit(decode_step, static_argnames=("cfg", "pos"))


def generate(
    params: dict, cfg: ModelConfig, prompt: list[int], n_new: int, *, context: int | None = None
) -> dict:
    """Greedy generation of n_new tokens after prompt, one decode_step per token.

    The prompt is fed token by token through the KV cache; each generated token is the argmax
    (lowest id on an exact tie) of the logits after the previous token. `context` is the KV cache
    length, by default just enough: len(prompt) + n_new - 1.

    Returns {"tokens": the n_new generated ids, "logits": n_new (vocab,) float32 arrays, the
    logits each generated token was chosen from}.
    """
    if not prompt:
        raise ValueError("prompt must hold at least one token")
    if n_new < 1:
        raise ValueError(f"n_new={n_new} must be >= 1")
    outside = [tok for tok in prompt if not 0 <= tok < cfg.vocab_size]
    if outside:
        raise ValueError(
            f"prompt tokens {outside} are outside the vocabulary [0, {cfg.vocab_size})"
        )
    steps = len(prompt) + n_new - 1  # the last generated token is never fed back
    if context is None:
        context = steps
    if context < steps:
        raise ValueError(
            f"context={context} is too short: a {len(prompt)}-token prompt plus {n_new} new "
            f"tokens needs {steps} cache positions"
        )
    cache = init_cache(cfg, context)
    inputs = list(prompt)
    logits = []
    for pos in range(steps):
        x = embed(params, inputs[pos], pos, cfg)
        step_logits, cache = _decode_jit(params, x, cache, cfg=cfg, pos=pos)
        if pos >= len(prompt) - 1:
            row = np.asarray(step_logits[0])  # (vocab,)
            logits.append(row)
            inputs.append(int(np.argmax(row)))
    return {"tokens": inputs[len(prompt) :], "logits": logits}
