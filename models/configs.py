"""Configs of published transformer architectures, with their real dimensions.

A `ModelConfig` is all the compiler and the reference forward passes need to know about a model's
shape. The registry `MODELS` holds the published architectures (each with the parameter count its
publisher reports, so `param_count` can be checked against it) and tiny models for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

FAMILIES = ("llama", "gpt2", "mixtral")
# Families whose attention uses rotary position embeddings (GPT-2 learns a position table instead).
ROTARY_FAMILIES = ("llama", "mixtral")
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}

_POSITIVE_INT_FIELDS = (
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "d_ff",
    "max_seq_len",
)


def _is_int(value: object) -> bool:
    # NumPy integers pass (sweep tables hand them over); bools are ints to Python but not counts.
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


class UnknownModelError(KeyError, ValueError):
    """A model name that is not in the registry; the message lists the known names."""

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and wrap it in quotes.
        return str(self.args[0])


@dataclass(frozen=True)
class ModelConfig:
    name: str
    family: str  # one of FAMILIES: which block structure the weights follow
    vocab_size: int  # tokens
    d_model: int  # width of the residual stream, elements
    n_layers: int
    n_heads: int  # query heads
    n_kv_heads: int  # key/value heads; < n_heads is grouped-query attention (GQA)
    d_ff: int  # hidden width of the MLP (of each expert, for MoE), elements
    max_seq_len: int  # longest context (prompt + generated) the model supports, tokens
    norm_eps: float  # added to the mean square (RMSNorm) or variance (LayerNorm)
    rope_theta: float  # rotary base; 0.0 for families with learned position embeddings
    tie_embeddings: bool  # LM head shares the embedding matrix (no separate parameters)
    n_experts: int  # MLP experts per layer; 0 means a dense MLP
    experts_per_token: int  # experts each token is routed to (top-k); 0 when dense
    dtype: str  # storage dtype of weights and KV cache, a key of DTYPES
    published_params: int  # parameter count the publisher reports; 0 for synthetic models
    source: str  # where the dimensions and published_params come from

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ModelConfig.name must be a non-empty string, got {self.name!r}")
        where = f"ModelConfig {self.name!r}"
        if self.family not in FAMILIES:
            raise ValueError(f"{where}: family={self.family!r} is not one of {FAMILIES}")
        for field in _POSITIVE_INT_FIELDS:
            value = getattr(self, field)
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{where}: {field}={value!r} must be a positive int")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"{where}: d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "head_dim = d_model // n_heads must be exact"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"{where}: n_heads={self.n_heads} is not divisible by n_kv_heads="
                f"{self.n_kv_heads}; each KV head must serve a whole group of query heads"
            )
        if not self.norm_eps > 0:
            raise ValueError(f"{where}: norm_eps={self.norm_eps!r} must be > 0")
        if self.family in ROTARY_FAMILIES:
            if not self.rope_theta > 0:
                raise ValueError(
                    f"{where}: rope_theta={self.rope_theta!r} must be > 0 for family "
                    f"{self.family!r} (rotary position embeddings)"
                )
            if self.head_dim % 2:
                raise ValueError(
                    f"{where}: head_dim={self.head_dim} (d_model {self.d_model} / n_heads "
                    f"{self.n_heads}) must be even: rotary embeddings rotate pairs of elements"
                )
        elif self.rope_theta != 0.0:
            raise ValueError(
                f"{where}: rope_theta={self.rope_theta!r} must be 0.0 for family "
                f"{self.family!r}, which learns position embeddings instead of rotary ones"
            )
        if self.family == "gpt2" and self.n_kv_heads != self.n_heads:
            raise ValueError(
                f"{where}: n_kv_heads={self.n_kv_heads} must equal n_heads={self.n_heads} for "
                "family 'gpt2' (multi-head attention, no grouped-query attention)"
            )
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"{where}: tie_embeddings={self.tie_embeddings!r} must be a bool")
        self._check_experts(where)
        if self.dtype not in DTYPES:
            raise ValueError(f"{where}: dtype={self.dtype!r} is not one of {tuple(DTYPES)}")
        if not _is_int(self.published_params) or self.published_params < 0:
            raise ValueError(
                f"{where}: published_params={self.published_params!r} must be an int >= 0 "
                "(0 for synthetic models)"
            )

    def _check_experts(self, where: str) -> None:
        for field in ("n_experts", "experts_per_token"):
            value = getattr(self, field)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{where}: {field}={value!r} must be an int >= 0")
        if self.family == "mixtral":
            if self.n_experts < 1:
                raise ValueError(
                    f"{where}: n_experts={self.n_experts} must be >= 1 for family 'mixtral'"
                )
            if not 1 <= self.experts_per_token <= self.n_experts:
                raise ValueError(
                    f"{where}: experts_per_token={self.experts_per_token} must be in "
                    f"[1, n_experts={self.n_experts}]"
                )
        elif self.n_experts or self.experts_per_token:
            raise ValueError(
                f"{where}: n_experts={self.n_experts} and experts_per_token="
                f"{self.experts_per_token} must both be 0 for dense family {self.family!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def np_dtype(self) -> np.dtype:
        """NumPy dtype of stored weights and KV cache (ml_dtypes.bfloat16 for "bfloat16")."""
        return np.dtype(DTYPES[self.dtype])


def param_count(cfg: ModelConfig) -> int:
    """Number of parameters, computed from the dimensions alone (no weights are built)."""
    d, hd = cfg.d_model, cfg.head_dim
    q_width, kv_width = cfg.n_heads * hd, cfg.n_kv_heads * hd
    # q, k, v and output projections (k and v are narrower under GQA).
    attn = d * q_width + 2 * d * kv_width + q_width * d
    embed = cfg.vocab_size * d
    lm_head = 0 if cfg.tie_embeddings else cfg.vocab_size * d
    if cfg.family == "gpt2":
        attn += q_width + 2 * kv_width + d  # biases of q, k, v and output projections
        mlp = d * cfg.d_ff + cfg.d_ff + cfg.d_ff * d + d  # fc and proj, each with a bias
        layer_norms = 2 * 2 * d  # ln_1 and ln_2, weight and bias each
        positions = cfg.max_seq_len * d  # learned position embeddings
        final_norm = 2 * d
        per_layer = attn + mlp + layer_norms
        return embed + positions + cfg.n_layers * per_layer + final_norm + lm_head
    swiglu = 3 * d * cfg.d_ff  # gate, up and down projections, no biases
    if cfg.family == "mixtral":
        mlp = d * cfg.n_experts + cfg.n_experts * swiglu  # router + experts
    else:
        mlp = swiglu
    per_layer = attn + mlp + 2 * d  # two RMSNorm weights
    return embed + cfg.n_layers * per_layer + d + lm_head


def _hf(repo: str, params: int) -> str:
    return (
        f"dims: config.json of {repo} on the Hugging Face Hub; published_params: {params:,}, "
        "the safetensors parameter total the Hub reports for that repository"
    )


def _llama(name: str, **dims) -> ModelConfig:
    base = dict(
        family="llama",
        norm_eps=1e-5,
        tie_embeddings=False,
        n_experts=0,
        experts_per_token=0,
    )
    return ModelConfig(name=name, **{**base, **dims})


def _gpt2(
    name: str, repo: str, d_model: int, n_layers: int, n_heads: int, params: int
) -> ModelConfig:
    return ModelConfig(
        name=name,
        family="gpt2",
        vocab_size=50257,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        d_ff=4 * d_model,
        max_seq_len=1024,
        norm_eps=1e-5,
        rope_theta=0.0,
        tie_embeddings=True,
        n_experts=0,
        experts_per_token=0,
        dtype="float32",
        published_params=params,
        source=_hf(repo, params),
    )


_TINY_SOURCE = (
    "synthetic test model; dims deliberately not multiples of 16 (the teaching chip's lanes) so "
    "that tiling is exercised"
)
_TINY = dict(
    vocab_size=96,
    d_model=40,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,  # head_dim 10, two query heads per KV head
    d_ff=72,
    max_seq_len=64,
    rope_theta=10000.0,
    published_params=0,
    source=_TINY_SOURCE,
)
# Shared by tiny-gpt2 and tiny-mixtral: head_dim 16, two layers.
_TOY = dict(
    d_model=64,
    n_layers=2,
    n_heads=4,
    max_seq_len=64,
    norm_eps=1e-5,
    dtype="float16",
    published_params=0,
)
# Shared by Llama 2 7B/13B/70B.
_LLAMA2 = dict(vocab_size=32000, max_seq_len=4096, rope_theta=10000.0, dtype="float16")
# Shared by Llama 3 and 3.1 (128K-token vocabulary, 500K rotary base).
_LLAMA3 = dict(vocab_size=128256, rope_theta=500000.0, dtype="bfloat16")
_LLAMA3_8B = dict(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336)
_LLAMA3_70B = dict(d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, d_ff=28672)
# Llama 3.1 rescales the rotary frequencies for its 128K context (rope_scaling "llama3",
# factor 8); these configs keep the unscaled frequencies, which only matters for loaded weights.
_LLAMA31_NOTE = "; Llama 3.1 rope_scaling (factor 8) is not modelled"

_CONFIGS = (
    _llama("tiny-llama", dtype="float16", **_TINY),
    _llama("tiny-llama-f32", dtype="float32", **_TINY),
    ModelConfig(
        name="tiny-gpt2",
        family="gpt2",
        vocab_size=200,
        n_kv_heads=4,
        d_ff=256,
        rope_theta=0.0,
        tie_embeddings=True,
        n_experts=0,
        experts_per_token=0,
        source="synthetic test model: GPT-2's block structure (LayerNorm, GELU, biases, learned "
        "positions, tied embeddings) at toy size",
        **_TOY,
    ),
    ModelConfig(
        name="tiny-mixtral",
        family="mixtral",
        vocab_size=96,
        n_kv_heads=2,
        d_ff=128,
        rope_theta=10000.0,
        tie_embeddings=False,
        n_experts=4,
        experts_per_token=2,
        source="synthetic test model: Mixtral's block structure (GQA, 4 SwiGLU experts, top-2 "
        "routing) at toy size",
        **_TOY,
    ),
    _gpt2("gpt2", "openai-community/gpt2", 768, 12, 12, 124_439_808),
    _gpt2("gpt2-medium", "openai-community/gpt2-medium", 1024, 24, 16, 354_823_168),
    _gpt2("gpt2-large", "openai-community/gpt2-large", 1280, 36, 20, 774_030_080),
    _gpt2("gpt2-xl", "openai-community/gpt2-xl", 1600, 48, 25, 1_557_611_200),
    _llama(
        "llama2-7b",
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        d_ff=11008,
        published_params=6_738_415_616,
        source=_hf("meta-llama/Llama-2-7b-hf", 6_738_415_616),
        **_LLAMA2,
    ),
    _llama(
        "llama2-13b",
        d_model=5120,
        n_layers=40,
        n_heads=40,
        n_kv_heads=40,
        d_ff=13824,
        published_params=13_015_864_320,
        source=_hf("meta-llama/Llama-2-13b-hf", 13_015_864_320),
        **_LLAMA2,
    ),
    _llama(
        "llama2-70b",
        d_model=8192,
        n_layers=80,
        n_heads=64,
        n_kv_heads=8,
        d_ff=28672,
        published_params=68_976_648_192,
        source=_hf("meta-llama/Llama-2-70b-hf", 68_976_648_192),
        **_LLAMA2,
    ),
    _llama(
        "llama3-8b",
        max_seq_len=8192,
        published_params=8_030_261_248,
        source=_hf("meta-llama/Meta-Llama-3-8B", 8_030_261_248),
        **_LLAMA3,
        **_LLAMA3_8B,
    ),
    _llama(
        "llama3-70b",
        max_seq_len=8192,
        published_params=70_553_706_496,
        source=_hf("meta-llama/Meta-Llama-3-70B", 70_553_706_496),
        **_LLAMA3,
        **_LLAMA3_70B,
    ),
    _llama(
        "llama3.1-8b",
        max_seq_len=131072,
        published_params=8_030_261_248,
        source=_hf("meta-llama/Llama-3.1-8B", 8_030_261_248) + _LLAMA31_NOTE,
        **_LLAMA3,
        **_LLAMA3_8B,
    ),
    _llama(
        "llama3.1-70b",
        max_seq_len=131072,
        published_params=70_553_706_496,
        source=_hf("meta-llama/Llama-3.1-70B", 70_553_706_496) + _LLAMA31_NOTE,
        **_LLAMA3,
        **_LLAMA3_70B,
    ),
    _llama(
        "llama3.1-405b",
        d_model=16384,
        n_layers=126,
        n_heads=128,
        n_kv_heads=8,
        d_ff=53248,
        max_seq_len=131072,
        published_params=405_853_388_800,
        source=_hf("meta-llama/Llama-3.1-405B", 405_853_388_800) + _LLAMA31_NOTE,
        **_LLAMA3,
    ),
    # Mistral 7B v0.1 attends over a sliding window of 4096 tokens, which the llama family does not
    # model; capping the context at the window keeps full attention exact.
    _llama(
        "mistral-7b",
        vocab_size=32000,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        d_ff=14336,
        max_seq_len=4096,
        rope_theta=10000.0,
        dtype="bfloat16",
        published_params=7_241_732_096,
        source=_hf("mistralai/Mistral-7B-v0.1", 7_241_732_096)
        + "; max_seq_len is its 4096-token sliding window (its config allows 32768)",
    ),
    ModelConfig(
        name="mixtral-8x7b",
        family="mixtral",
        vocab_size=32000,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        d_ff=14336,
        max_seq_len=32768,
        norm_eps=1e-5,
        rope_theta=1e6,
        tie_embeddings=False,
        n_experts=8,
        experts_per_token=2,
        dtype="bfloat16",
        published_params=46_702_792_704,
        source=_hf("mistralai/Mixtral-8x7B-v0.1", 46_702_792_704)
        + " (Mistral AI's announcement: 46.7B total, 12.9B active per token)",
    ),
)

MODELS: dict[str, ModelConfig] = {cfg.name: cfg for cfg in _CONFIGS}


def list_models() -> list[str]:
    return list(MODELS)


def get_config(name: str) -> ModelConfig:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)}"
        ) from None
