"""Model registry: published parameter counts, validation messages, unknown names."""

import dataclasses
import math

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import (
    MODELS,
    ModelConfig,
    UnknownModelError,
    get_config,
    init_params,
    list_models,
    param_count,
    param_specs,
)
from tests.models.strategies import decoder_configs

TINY = get_config("tiny-llama")
PUBLISHED = [name for name, cfg in MODELS.items() if cfg.published_params]


def test_registry_has_the_published_architectures():
    expected = {
        "tiny-llama",
        "tiny-llama-f32",
        "tiny-gpt2",
        "tiny-mixtral",
        "gpt2",
        "gpt2-medium",
        "gpt2-large",
        "gpt2-xl",
        "llama2-7b",
        "llama2-13b",
        "llama2-70b",
        "llama3-8b",
        "llama3-70b",
        "llama3.1-8b",
        "llama3.1-70b",
        "llama3.1-405b",
        "mistral-7b",
        "mixtral-8x7b",
    }
    assert set(list_models()) == expected
    assert set(PUBLISHED) == {name for name in expected if not name.startswith("tiny-")}
    for name in list_models():
        cfg = get_config(name)
        assert cfg.name == name
        assert cfg.source


@pytest.mark.parametrize("name", PUBLISHED)
def test_param_count_matches_published(name):
    cfg = get_config(name)
    assert abs(param_count(cfg) - cfg.published_params) <= 0.005 * cfg.published_params
    assert f"{cfg.published_params:,}" in cfg.source


def test_tiny_llama_dims():
    # Not multiples of 16 lanes, so the compiler's tiling has remainders to handle.
    assert (TINY.d_model, TINY.head_dim, TINY.d_ff, TINY.vocab_size) == (40, 10, 72, 96)
    assert TINY.n_heads // TINY.n_kv_heads == 2
    assert get_config("tiny-llama-f32") == dataclasses.replace(
        TINY, name="tiny-llama-f32", dtype="float32"
    )


@given(decoder_configs())
def test_param_count_equals_initialised_weights(cfg):
    # An independent count: the elements of the arrays init_params actually builds.
    arrays = jax.tree.leaves(init_params(cfg))
    assert sum(a.size for a in arrays) == param_count(cfg)
    assert {a.dtype for a in arrays} == {cfg.np_dtype}


@pytest.mark.parametrize("name", list(MODELS))
def test_param_specs_count_every_parameter(name):
    # The compiler's view of every registered model, 405B included, without building weights.
    cfg = get_config(name)
    leaves = jax.tree.leaves(param_specs(cfg))
    assert sum(math.prod(s.shape) for s in leaves) == param_count(cfg)
    assert {s.dtype for s in leaves} == {cfg.np_dtype}


def test_tiny_gpt2_and_mixtral_dims():
    gpt2, moe = get_config("tiny-gpt2"), get_config("tiny-mixtral")
    assert (gpt2.family, gpt2.d_model, gpt2.n_layers, gpt2.n_heads, gpt2.d_ff) == (
        "gpt2",
        64,
        2,
        4,
        256,
    )
    assert gpt2.tie_embeddings and gpt2.dtype == "float16" and gpt2.max_seq_len == 64
    assert (moe.family, moe.d_model, moe.n_heads, moe.n_kv_heads, moe.d_ff) == (
        "mixtral",
        64,
        4,
        2,
        128,
    )
    assert (moe.n_experts, moe.experts_per_token, moe.dtype) == (4, 2, "float16")


def test_param_count_gqa_ties_and_experts():
    d, hd, v, ff = 40, 10, 96, 72
    dense = param_count(TINY)
    mha = param_count(dataclasses.replace(TINY, n_kv_heads=4))
    assert mha - dense == TINY.n_layers * 2 * d * 2 * hd  # two more k and v heads per layer
    assert dense - param_count(dataclasses.replace(TINY, tie_embeddings=True)) == v * d
    moe = dataclasses.replace(TINY, family="mixtral", n_experts=4, experts_per_token=2)
    assert param_count(moe) - dense == TINY.n_layers * (d * 4 + 3 * 3 * d * ff)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"family": "bert"}, ["family='bert'", "llama", "gpt2", "mixtral"]),
        ({"vocab_size": 0}, ["vocab_size=0", "positive int"]),
        ({"d_model": 40.0}, ["d_model=40.0", "positive int"]),
        ({"n_layers": True}, ["n_layers=True"]),
        ({"n_heads": 3}, ["d_model=40", "n_heads=3"]),
        ({"n_kv_heads": 3}, ["n_heads=4", "n_kv_heads=3"]),
        ({"d_model": 36}, ["head_dim=9", "even"]),
        ({"rope_theta": 0.0}, ["rope_theta=0.0", "> 0"]),
        ({"norm_eps": -1e-5}, ["norm_eps=-1e-05"]),
        ({"dtype": "int8"}, ["dtype='int8'", "float32", "float16", "bfloat16"]),
        ({"n_experts": 8}, ["n_experts=8", "dense family 'llama'"]),
        ({"tie_embeddings": 1}, ["tie_embeddings=1", "bool"]),
        ({"published_params": -1}, ["published_params=-1"]),
        ({"family": "mixtral"}, ["n_experts=0", "mixtral"]),
        (
            {"family": "mixtral", "n_experts": 8, "experts_per_token": 9},
            ["experts_per_token=9", "[1, n_experts=8]"],
        ),
        ({"family": "gpt2", "n_kv_heads": 4}, ["rope_theta=10000.0", "0.0"]),
        ({"family": "gpt2", "rope_theta": 0.0}, ["n_kv_heads=2", "n_heads=4"]),
        ({"name": ""}, ["name", "non-empty"]),
    ],
)
def test_invalid_config_names_the_value(changes, named):
    with pytest.raises(ValueError) as info:
        dataclasses.replace(TINY, **changes)
    for text in named:
        assert text in str(info.value)


@given(st.integers(1, 64), st.integers(1, 16), st.integers(1, 16))
def test_head_divisibility_is_validated_exactly(d_model, n_heads, n_kv_heads):
    valid = d_model % n_heads == 0 and n_heads % n_kv_heads == 0 and (d_model // n_heads) % 2 == 0
    fields = {"d_model": d_model, "n_heads": n_heads, "n_kv_heads": n_kv_heads}
    if valid:
        assert dataclasses.replace(TINY, **fields).head_dim == d_model // n_heads
    else:
        with pytest.raises(ValueError, match=r"d_model=|n_heads=|head_dim="):
            dataclasses.replace(TINY, **fields)


def test_numpy_integers_are_accepted():
    cfg = dataclasses.replace(TINY, vocab_size=np.int64(96))
    assert cfg.vocab_size == 96


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as info:
        get_config("llama-9b")
    message = str(info.value)
    assert "'llama-9b'" in message
    for name in MODELS:
        assert name in message
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, ValueError)


def test_configs_are_frozen_and_hashable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TINY.d_model = 64  # type: ignore[misc]
    assert {TINY: 1}[get_config("tiny-llama")] == 1
    assert isinstance(TINY, ModelConfig)
