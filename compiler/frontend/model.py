"""Frontend for the models/ registry: a model name or config -> the blocks of one decode step (a
decoder layer and the head, each a function with abstract arguments), without materialising any
weights, so that a 70B model's fit is checked in well under a second."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from models import (
    ModelConfig,
    get_config,
    head,
    head_params,
    layer_step,
    layer_step_packed,
    param_specs,
)
from models.quantize import FORMATS
from sim.errors import LpuError


def resolve_model(model) -> ModelConfig:
    return model if isinstance(model, ModelConfig) else get_config(model)


def check_weights(weights: str) -> None:
    if weights not in FORMATS:
        raise LpuError(f"weights={weights!r}; valid weight formats: {', '.join(FORMATS)}")


def cache_row_width(cfg: ModelConfig, lanes: int | None, kv: int | None = None) -> int:
    """Elements of a row of the KV cache on a chip of `lanes` lanes: the heads of a position one
    after another in rows of this width (models.decoder.layer_step_packed), the fewest rows a
    position takes: whole heads, as many as fit a vector, or else the vector's lanes, with heads
    straddling rows (a head of 128 in 320 lanes: 13 rows for 32 heads, not 16). head_dim itself
    (the model's own layout) where a head fills a vector, or where `lanes` is None (the host).
    `kv`: the cache's heads where not the model's (a tensor-parallel shard's)."""
    hd, kv = cfg.head_dim, kv or cfg.n_kv_heads
    if lanes is None or hd >= lanes:
        return hd
    whole = min(kv, lanes // hd)  # heads a row holds whole
    if -(-kv * hd // lanes) < -(-kv // whole):
        return lanes
    return whole * hd


def cache_shape(
    cfg: ModelConfig, context: int, lanes: int | None, kv: int | None = None
) -> tuple[int, int, int]:
    """The shape a layer's K (or V) cache of `kv` heads (default: the model's) has on a chip of
    `lanes` lanes."""
    kv = kv or cfg.n_kv_heads
    width = cache_row_width(cfg, lanes, kv)
    return (-(-kv * cfg.head_dim // width), context, width)


def decode_specs(
    cfg: ModelConfig,
    *,
    context: int,
    weights: str,
    layers: int,
    head: bool = True,
    lanes: int | None = None,
) -> dict:
    """The arguments of a decode step of the first `layers` layers (and the head): {"params"
    (without the host's embedding table), "x", "cache"} as ShapeDtypeStructs; the cache as a chip
    of `lanes` lanes stores it (None: the model's own (KV, context, head_dim))."""
    params = param_specs(cfg, weights)
    params = {**(head_params(params) if head else {}), "layers": params["layers"][:layers]}
    kv = jax.ShapeDtypeStruct(cache_shape(cfg, context, lanes), cfg.np_dtype)
    return {
        "params": params,
        "x": jax.ShapeDtypeStruct((1, cfg.d_model), jnp.float32),
        "cache": {"k": [kv] * layers, "v": [kv] * layers},
    }


# KV-cache length of a decode step when none is given (capped at the model's max_seq_len): short,
# so that a layer of a 7B model fits one chip; the weights, not the cache, set decode speed there.
DEFAULT_CONTEXT = 64


def resolve_step(cfg: ModelConfig, *, pos, context, layers) -> tuple[int, int, int]:
    """(pos, context, layers) with defaults filled in and checked."""
    context = min(cfg.max_seq_len, DEFAULT_CONTEXT) if context is None else int(context)
    if not 1 <= context <= cfg.max_seq_len:
        raise LpuError(f"context={context} must be in [1, {cfg.max_seq_len}] for {cfg.name!r}")
    pos = context - 1 if pos is None else int(pos)
    if not 0 <= pos < context:
        raise LpuError(f"pos={pos} must be in [0, {context}), the KV cache length (context)")
    layers = cfg.n_layers if layers is None else int(layers)
    if not 1 <= layers <= cfg.n_layers:
        raise LpuError(f"layers={layers} must be in [1, {cfg.n_layers}] for {cfg.name!r}")
    return pos, context, layers


def layer_target(cfg: ModelConfig, *, pos: int, context: int, weights: str, lanes=None):
    """(fn, args) of one decoder layer: params/layers/0/*, x, cache/{k,v}/0 -> x, cache; the
    cache in rows of cache_row_width(cfg, lanes)."""
    specs = decode_specs(cfg, context=context, weights=weights, layers=1, lanes=lanes)
    args = {
        "params": {"layers": specs["params"]["layers"]},
        "x": specs["x"],
        "cache": specs["cache"],
    }
    width = cache_row_width(cfg, lanes)

    def layer(params, x, cache):
        layer_params, k, v = params["layers"][0], cache["k"][0], cache["v"][0]
        if width != cfg.head_dim:
            x, k, v = layer_step_packed(layer_params, x, k, v, cfg=cfg, pos=pos, row_width=width)
        else:
            x, k, v = layer_step(layer_params, x, k, v, cfg=cfg, pos=pos)
        return {"x": x, "cache": {"k": [k], "v": [v]}}

    layer.__name__ = f"{cfg.name}_layer"
    return layer, args


def head_target(cfg: ModelConfig, *, weights: str):
    """(fn, args) of the head: params/* (final norm, LM head), x -> logits."""
    specs = decode_specs(cfg, context=1, weights=weights, layers=1)
    args = {"params": head_params(specs["params"]), "x": specs["x"]}

    def head_fn(params, x):
        return {"logits": head(params, x, cfg=cfg)}

    head_fn.__name__ = f"{cfg.name}_head"
    return head_fn, args
