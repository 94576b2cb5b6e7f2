"""Frontend for the models/ registry: a model name or config -> the function and abstract
arguments of one decode step, without materialising any weights (so a 70B model's fit can be
checked in a second)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from models import ModelConfig, decode_step, get_config
from sim.errors import LpuError


def param_specs(cfg: ModelConfig) -> dict:
    """Shapes and dtypes of `models.init_params(cfg)`, as ShapeDtypeStructs."""
    dt, d, hd, ff = cfg.np_dtype, cfg.d_model, cfg.head_dim, cfg.d_ff

    def s(*shape):
        return jax.ShapeDtypeStruct(shape, dt)

    layer = {
        "attn_norm": s(d),
        "wq": s(d, cfg.n_heads * hd),
        "wk": s(d, cfg.n_kv_heads * hd),
        "wv": s(d, cfg.n_kv_heads * hd),
        "wo": s(cfg.n_heads * hd, d),
        "mlp_norm": s(d),
        "w_gate": s(d, ff),
        "w_up": s(d, ff),
        "w_down": s(ff, d),
    }
    return {
        "embed": s(cfg.vocab_size, d),
        "layers": [dict(layer) for _ in range(cfg.n_layers)],
        "final_norm": s(d),
        "lm_head": s(d, cfg.vocab_size),
    }


def cache_specs(cfg: ModelConfig, context: int) -> dict:
    spec = jax.ShapeDtypeStruct((cfg.n_kv_heads, context, cfg.head_dim), cfg.np_dtype)
    return {"k": [spec] * cfg.n_layers, "v": [spec] * cfg.n_layers}


def resolve_model(model) -> ModelConfig:
    return model if isinstance(model, ModelConfig) else get_config(model)


def decode_target(model, *, pos: int | None = None, context: int | None = None):
    """(fn, args, meta) for one decode step of `model` at position `pos` of a `context` cache."""
    cfg = resolve_model(model)
    if cfg.family != "llama":
        raise LpuError(
            f"model {cfg.name!r} is family {cfg.family!r}; only the llama family compiles yet"
        )
    context = cfg.max_seq_len if context is None else int(context)
    if context < 1:
        raise LpuError(f"context={context} must be >= 1")
    pos = context - 1 if pos is None else int(pos)
    if not 0 <= pos < context:
        raise LpuError(f"pos={pos} must be in [0, {context}), the KV cache length (context)")

    def step(params, x, cache):
        logits, new_cache = decode_step(params, x, cache, cfg=cfg, pos=pos)
        return {"logits": logits, "cache": new_cache}

    step.__name__ = f"{cfg.name}_decode"
    params = param_specs(cfg)
    args = {
        "params": {k: v for k, v in params.items() if k != "embed"},  # the host embeds tokens
        "x": jax.ShapeDtypeStruct((1, cfg.d_model), jnp.float32),
        "cache": cache_specs(cfg, context),
    }
    meta = {"model": cfg.name, "phase": "decode", "pos": pos, "context": context}
    return step, args, meta
