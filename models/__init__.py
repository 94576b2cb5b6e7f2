"""Transformer definitions: configs of published models and reference forward passes in JAX."""

from models.configs import (
    MODELS,
    ModelConfig,
    UnknownModelError,
    get_config,
    list_models,
    param_count,
)
from models.decoder import (
    decode_step,
    embed,
    generate,
    head,
    head_params,
    init_cache,
    init_params,
    layer_step,
    layer_step_packed,
    mlp,
    param_specs,
    prefill,
    route,
)
from models.ops import mm
from models.quantize import FORMATS, dequantize, quantize

__all__ = [
    "FORMATS",
    "MODELS",
    "ModelConfig",
    "UnknownModelError",
    "decode_step",
    "dequantize",
    "embed",
    "generate",
    "get_config",
    "head",
    "head_params",
    "init_cache",
    "init_params",
    "layer_step",
    "layer_step_packed",
    "list_models",
    "mlp",
    "mm",
    "param_count",
    "param_specs",
    "prefill",
    "quantize",
    "route",
]
