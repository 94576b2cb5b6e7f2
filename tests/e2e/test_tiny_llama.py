"""The whole spine on tiny-llama: JAX -> compiler -> Program -> functional simulation."""

import numpy as np
import pytest

import lpusim
from compiler import ModelTooLarge, compile
from sim import simulate


def test_sixteen_greedy_tokens_match_jax():
    v = lpusim.validate("tiny-llama", "teaching", tokens=16)
    assert len(v.tokens_lpu) == 16
    assert v.tokens_match, (v.tokens_lpu, v.tokens_jax)
    assert v.within_tolerance and v.max_abs_error <= v.tolerance_abs == 1e-2
    assert v.predicted_cycles == v.simulated_cycles


def test_float32_model_matches_to_float32_rounding():
    v = lpusim.validate("tiny-llama-f32", "teaching", tokens=3, engine="reference")
    assert v.tokens_match and v.max_abs_error <= 1e-5


def test_deterministic_compile_and_simulation():
    a = compile("tiny-llama", "teaching", context=6)
    b = compile("tiny-llama", "teaching", context=6)
    assert a.content_hash == b.content_hash
    ra = simulate(a, mode="timing", engine="reference")
    rb = simulate(b, mode="timing", engine="reference")
    assert ra.cycles == rb.cycles == a.predicted_cycles
    assert ra.busy == rb.busy


def test_model_that_does_not_fit_says_how_much_it_needs():
    with pytest.raises(ModelTooLarge) as info:
        compile("llama2-7b", "groq-tsp-v1", context=128)
    msg = str(info.value)
    assert "bytes of SRAM" in msg and "230,686,720 bytes" in msg and "needs at least" in msg


def test_estimate_fields():
    e = lpusim.estimate("tiny-llama", "teaching", context=8, engine="reference")
    d = e.to_dict()
    assert d["cycles_per_token"] == d["predicted_cycles"]
    assert np.isclose(d["tokens_per_s"] * d["seconds_per_token"], 1.0)
    assert 0 < d["unit_utilisation"]["mxm_install"] <= 1
    assert "tokens/s" in str(e)
