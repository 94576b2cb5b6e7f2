"""Every dense family and weight format, end to end: greedy tokens on the simulated chip equal
JAX's, token by token."""

import pytest

import lpusim


def test_gpt2_tokens_match_jax():
    v = lpusim.validate("tiny-gpt2", "teaching", tokens=8)
    assert v.tokens_match, (v.tokens_lpu, v.tokens_jax)
    assert v.within_tolerance and v.predicted_cycles == v.simulated_cycles


@pytest.mark.parametrize("model,weights", [("tiny-llama", "int8"), ("tiny-gpt2", "fp8")])
def test_quantised_model_tokens_match_the_quantised_jax_model(model, weights):
    v = lpusim.validate(model, "teaching", tokens=4, weights=weights)
    assert v.weights == weights
    assert v.tokens_match and v.within_tolerance, (v.tokens_lpu, v.tokens_jax, v.max_abs_error)
    # The unquantised model differs by the quantisation error, which is far above the chip's own.
    assert v.max_abs_error_unquantised > 10 * v.max_abs_error
    assert len(v.tokens_unquantised) == 4


def test_estimate_reports_format_and_layers():
    e = lpusim.estimate("tiny-gpt2", "teaching", weights="int8", layers=1)
    assert e.weights == "int8" and e.layers == "first 1 of 2 (no head)"
    full = lpusim.estimate("tiny-gpt2", "teaching", weights="int8")
    assert full.cycles_per_token > e.cycles_per_token
    assert e.vector_instructions > e.instructions


def test_mixtral_top2_routing_tokens_match_jax():
    """Experts chosen on the chip by TOPK, their weights read through select registers."""
    v = lpusim.validate("tiny-mixtral", "groq-tsp-v1", tokens=5)
    assert v.tokens_match and v.within_tolerance, (v.tokens_lpu, v.tokens_jax, v.max_abs_error)
    assert v.predicted_cycles == v.simulated_cycles
