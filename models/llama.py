"""Reference Llama-style decoder in jax.numpy: random init, prefill, KV-cached decode, generation.

`decode_step` is what the compiler traces (jax.make_jaxpr with a static `pos`), so it is written
with a small set of primitives: explicit softmax and SiLU formulas, static slices of the KV cache,
a `dynamic_update_slice` at a constant index, and rotary tables computed from constants only.

Numerics follow the LPU's matrix unit: activations are float32, every matmul casts its inputs to
the storage dtype (`cfg.dtype`) and accumulates in float32. The KV cache is stored in that dtype.

Shapes: d = d_model, H = n_heads, KV = n_kv_heads, G = H // KV (query heads per KV head),
hd = head_dim, ff = d_ff, T = tokens, S = cache length (context).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from models.configs import ModelConfig


def _require_llama(cfg: ModelConfig) -> None:
    if cfg.family != "llama":
        raise ValueError(
            f"models.llama implements family 'llama'; model {cfg.name!r} is family {cfg.family!r}"
        )


def init_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Deterministic random weights as NumPy arrays in cfg.dtype, in checkpoint layouts.

    Matrices are N(0, 1/fan_in) so every projection keeps activations O(1); the logits are then
    roughly N(0, 1) over the vocabulary, so greedy choices are rarely near-ties (tiny-llama, seed 0:
    97% of greedy steps have top-two logits more than 1e-2 apart, median gap 0.29). Scaling the
    logits up would not help: it scales rounding errors equally. Norm weights are
    1 + 0.1 * N(0, 1), not all ones, so that a norm applied with the wrong weight changes results.
    """
    _require_llama(cfg)
    rng = np.random.default_rng(seed)
    dt = cfg.np_dtype
    d, hd, ff = cfg.d_model, cfg.head_dim, cfg.d_ff

    def matrix(fan_in: int, fan_out: int) -> np.ndarray:
        w = rng.standard_normal((fan_in, fan_out), dtype=np.float32) / np.sqrt(fan_in)
        return w.astype(dt)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(d, dtype=np.float32)).astype(dt)

    # A lookup reads one row, so embeddings are N(0, 1) to start the residual stream at O(1).
    embed_table = rng.standard_normal((cfg.vocab_size, d), dtype=np.float32).astype(dt)
    layers = [
        {
            "attn_norm": norm(),
            "wq": matrix(d, cfg.n_heads * hd),
            "wk": matrix(d, cfg.n_kv_heads * hd),
            "wv": matrix(d, cfg.n_kv_heads * hd),
            "wo": matrix(cfg.n_heads * hd, d),
            "mlp_norm": norm(),
            "w_gate": matrix(d, ff),
            "w_up": matrix(d, ff),
            "w_down": matrix(ff, d),
        }
        for _ in range(cfg.n_layers)
    ]
    return {
        "embed": embed_table,  # (vocab, d)
        "layers": layers,
        "final_norm": norm(),  # (d,)
        "lm_head": matrix(d, cfg.vocab_size),  # (d, vocab)
    }


def mm(x: jax.Array, w: jax.Array) -> jax.Array:
    """x @ w with x cast to w's dtype and float32 accumulation (the MXM: fp16 in, fp32 out)."""
    return jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def embed(params: dict, token: int) -> np.ndarray:
    """Host-side embedding lookup: (1, d) float32."""
    table = params["embed"]
    if not 0 <= token < table.shape[0]:
        raise ValueError(f"token {token} is outside the vocabulary [0, {table.shape[0]})")
    return np.asarray(table[token], dtype=np.float32)[None, :]


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


def _rmsnorm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    # x: (..., d) float32; w: (d,) in the storage dtype, applied in float32.
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * w.astype(jnp.float32)


def _softmax(s: jax.Array) -> jax.Array:
    # Over the last axis; subtracting the max keeps exp() finite.
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _rope_tables(cfg: ModelConfig, positions) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotary angles pos * theta**(-2i/hd): positions.shape + (hd/2,) float32.

    `positions` is a Python int or a static array, so under tracing these are constants.
    """
    hd = cfg.head_dim
    exponents = -2.0 * jnp.arange(hd // 2, dtype=jnp.float32) / hd
    inv_freq = jnp.power(jnp.float32(cfg.rope_theta), exponents)  # (hd/2,) radians per position
    angles = jnp.asarray(positions, dtype=jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    # Rotate-half convention (as Hugging Face Llama): pairs are (i, i + hd/2). x: (..., heads, hd).
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def _qkv(x: jax.Array, layer: dict, cfg: ModelConfig, cos: jax.Array, sin: jax.Array):
    """Normed, projected and rotated q (T, H, hd), k (T, KV, hd) and v (T, KV, hd) of x (T, d)."""
    t, hd = x.shape[0], cfg.head_dim
    h = _rmsnorm(x, layer["attn_norm"], cfg.norm_eps)
    q = mm(h, layer["wq"]).reshape(t, cfg.n_heads, hd)
    k = mm(h, layer["wk"]).reshape(t, cfg.n_kv_heads, hd)
    v = mm(h, layer["wv"]).reshape(t, cfg.n_kv_heads, hd)
    return _rotate(q, cos, sin), _rotate(k, cos, sin), v


def _finish_layer(x: jax.Array, o: jax.Array, layer: dict, cfg: ModelConfig) -> jax.Array:
    """Attention output projection and SwiGLU MLP, each added to the residual x (T, d)."""
    x = x + mm(o, layer["wo"])
    h = _rmsnorm(x, layer["mlp_norm"], cfg.norm_eps)
    gate = mm(h, layer["w_gate"])  # (T, ff)
    silu = gate * jax.nn.sigmoid(gate)
    return x + mm(silu * mm(h, layer["w_up"]), layer["w_down"])


def _logits(x: jax.Array, params: dict, cfg: ModelConfig) -> jax.Array:
    return mm(_rmsnorm(x, params["final_norm"], cfg.norm_eps), params["lm_head"])  # (T, vocab)


def decode_step(
    params: dict, x: jax.Array, cache: dict, *, cfg: ModelConfig, pos: int
) -> tuple[jax.Array, dict]:
    """One decode step: the token embedded as x (1, d) float32 at position `pos` (0-based).

    Writes this token's k and v at `pos` of the cache (which must be longer than `pos`) and
    attends over positions 0..pos. Returns logits (1, vocab) float32 and the updated cache.
    """
    _require_llama(cfg)
    context = cache["k"][0].shape[1]
    if not 0 <= pos < context:
        raise ValueError(f"pos={pos} must be in [0, {context}), the KV cache length")
    kv, hd = cfg.n_kv_heads, cfg.head_dim
    group = cfg.n_heads // kv
    scale = 1.0 / math.sqrt(hd)
    cos, sin = _rope_tables(cfg, pos)  # (hd/2,) constants for this static position
    new_k, new_v = [], []
    for layer, k_cache, v_cache in zip(params["layers"], cache["k"], cache["v"], strict=True):
        q, k, v = _qkv(x, layer, cfg, cos, sin)  # (1, H, hd), (1, KV, hd), (1, KV, hd)
        # (KV, 1, hd) written at (0, pos, 0) of (KV, S, hd).
        k_cache = jax.lax.dynamic_update_slice(
            k_cache, k[0, :, None, :].astype(k_cache.dtype), (0, pos, 0)
        )
        v_cache = jax.lax.dynamic_update_slice(
            v_cache, v[0, :, None, :].astype(v_cache.dtype), (0, pos, 0)
        )
        new_k.append(k_cache)
        new_v.append(v_cache)
        kk, vv = k_cache[:, : pos + 1, :], v_cache[:, : pos + 1, :]  # (KV, pos+1, hd)
        qg = q.reshape(kv, group, hd).astype(kk.dtype)  # head h uses KV head h // G
        scores = jnp.einsum("kgd,ktd->kgt", qg, kk, preferred_element_type=jnp.float32) * scale
        p = _softmax(scores)  # (KV, G, pos+1)
        o = jnp.einsum("kgt,ktd->kgd", p.astype(vv.dtype), vv, preferred_element_type=jnp.float32)
        x = _finish_layer(x, o.reshape(1, cfg.n_heads * hd), layer, cfg)
    return _logits(x, params, cfg), {"k": new_k, "v": new_v}


def prefill(params: dict, tokens, *, cfg: ModelConfig) -> jax.Array:
    """Causal forward over a whole prompt without a cache: logits (T, vocab) float32.

    Same math as decode_step (k, v and attention probabilities rounded to the storage dtype as the
    cache would hold them), so decoding the prompt token by token reproduces these logits.
    """
    _require_llama(cfg)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not 1 <= len(tokens) <= cfg.max_seq_len:
        raise ValueError(
            f"tokens must be a 1-D sequence of 1..{cfg.max_seq_len} ids, got shape {tokens.shape}"
        )
    x = np.concatenate([embed(params, int(tok)) for tok in tokens])  # (T, d) float32
    return _prefill_jit(params, x, cfg=cfg)


def _prefill_forward(params: dict, x: jax.Array, *, cfg: ModelConfig) -> jax.Array:
    # x: (T, d) float32 embedded prompt -> logits (T, vocab) float32.
    t = x.shape[0]
    kv, hd = cfg.n_kv_heads, cfg.head_dim
    group = cfg.n_heads // kv
    dt = cfg.np_dtype
    cos, sin = _rope_tables(cfg, np.arange(t))  # (T, hd/2)
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    causal = np.tril(np.ones((t, t), dtype=bool))  # (query t, key s): s <= t
    for layer in params["layers"]:
        q, k, v = _qkv(x, layer, cfg, cos, sin)
        qg = q.reshape(t, kv, group, hd).astype(dt)
        scores = jnp.einsum("tkgd,skd->kgts", qg, k.astype(dt), preferred_element_type=jnp.float32)
        p = _softmax(jnp.where(causal, scores * (1.0 / math.sqrt(hd)), -jnp.inf))  # (KV,G,T,T)
        o = jnp.einsum(
            "kgts,skd->tkgd", p.astype(dt), v.astype(dt), preferred_element_type=jnp.float32
        )
        x = _finish_layer(x, o.reshape(t, cfg.n_heads * hd), layer, cfg)
    return _logits(x, params, cfg)


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
        step_logits, cache = _decode_jit(
            params, embed(params, inputs[pos]), cache, cfg=cfg, pos=pos
        )
        if pos >= len(prompt) - 1:
            row = np.asarray(step_logits[0])  # (vocab,)
            logits.append(row)
            inputs.append(int(np.argmax(row)))
    return {"tokens": inputs[len(prompt) :], "logits": logits}
