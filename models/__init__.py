"""Transformer definitions: configs of published models and reference forward passes in JAX."""

from models.configs import (
    MODELS,
    ModelConfig,
    UnknownModelError,
    get_config,
    list_models,
    param_count,
)
from models.llama import decode_step, embed, generate, init_cache, init_params, mm, prefill

__all__ = [
    "MODELS",
    "ModelConfig",
    "UnknownModelError",
    "decode_step",
    "embed",
    "generate",
    "get_config",
    "init_cache",
    "init_params",
    "list_models",
    "mm",
    "param_count",
    "prefill",
]
