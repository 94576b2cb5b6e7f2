"""Layers scheduled once and replayed: the same Program as scheduling every layer, the same
functional results, and a layer-only program equal to JAX's layers."""

import jax
import numpy as np
import pytest

from compiler import ModelTooLarge, compile
from lpusim.api import decode_inputs
from models import get_config, init_cache, init_params, layer_step
from sim import simulate


@pytest.mark.parametrize(
    "model,weights", [("tiny-llama", "native"), ("tiny-gpt2", "int8"), ("tiny-llama", "fp8")]
)
def test_replay_is_scheduling_every_layer(model, weights):
    kw = dict(context=6, pos=4, weights=weights)
    replayed = compile(model, "teaching", **kw)
    each = compile(model, "teaching", replay=False, **kw)
    assert replayed.meta["replay"] and not each.meta["replay"]
    np.testing.assert_array_equal(replayed.instrs, each.instrs)
    assert replayed.predicted_cycles == each.predicted_cycles
    cfg = get_config(model)
    params, cache = init_params(cfg, 1, weights), init_cache(cfg, 6)
    rng = np.random.default_rng(0)
    cache = jax.tree.map(lambda c: rng.normal(size=c.shape).astype(c.dtype), cache)
    x = rng.normal(size=(1, cfg.d_model)).astype(np.float32)
    inputs = decode_inputs(params, x, cache)
    a = simulate(replayed, inputs)
    b = simulate(each, inputs, engine="reference")
    assert a.cycles == b.cycles == replayed.predicted_cycles
    for name, value in a.outputs.items():
        np.testing.assert_array_equal(value, b.outputs[name], err_msg=name)


def test_listing_shows_the_replay():
    prog = compile("tiny-llama", "teaching", context=4)
    text = prog.disassemble(limit=0)
    # The first layer starts once the start barrier (SYNC 0 on every queue) has released.
    start = prog.hw.icu_sync_latency_cycles + 1
    assert f"; block layer 0: cycles {start}.." in text
    assert "; block layer 1 (replay of layer 0)" in text and "; block head" in text
    blocks = prog.meta["blocks"]
    assert blocks[0]["first_cycle"] == start
    assert blocks[1]["first_cycle"] >= blocks[0]["first_cycle"] + blocks[0]["cycles"]
    assert (
        blocks[1]["addr_shift_words"] > 0 and blocks[1]["instructions"] == blocks[0]["instructions"]
    )


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_first_layers_alone_equal_jax(model):
    cfg = get_config(model)
    pos, context = 3, 5
    prog = compile(model, "teaching", context=context, pos=pos, layers=2)
    assert not prog.meta["head"] and "logits" not in {s.name for s in prog.symbols}
    params = init_params(cfg, 2)
    rng = np.random.default_rng(1)
    cache = jax.tree.map(
        lambda c: rng.normal(size=c.shape).astype(c.dtype), init_cache(cfg, context)
    )
    x = rng.normal(size=(1, cfg.d_model)).astype(np.float32)
    params = {"layers": params["layers"][:2]}
    cache = {kv: cache[kv][:2] for kv in cache}
    out = simulate(prog, decode_inputs(params, x, cache)).outputs
    want = x
    for i in range(2):
        want, k, v = layer_step(
            params["layers"][i], want, cache["k"][i], cache["v"][i], cfg=cfg, pos=pos
        )
        np.testing.assert_allclose(out[f"cache/k/{i}"], np.asarray(k, np.float32), atol=1e-2)
        np.testing.assert_allclose(out[f"cache/v/{i}"], np.asarray(v, np.float32), atol=1e-2)
    np.testing.assert_allclose(out["x"], np.asarray(want), rtol=1e-2, atol=1e-2)


def test_fit_is_checked_before_any_tracing():
    import time

    t = time.perf_counter()
    with pytest.raises(ModelTooLarge, match="needs at least"):
        compile("llama2-70b", "groq-tsp-v1", weights="int8")
    with pytest.raises(ModelTooLarge, match="needs at least"):
        compile("mixtral-8x7b", "groq-tsp-v1", layers=1, weights="fp8")
    assert time.perf_counter() - t < 1.0


def test_bad_weight_format_and_layer_count_are_named():
    from sim.errors import LpuError

    with pytest.raises(LpuError, match="weights='fp4'.*int8"):
        compile("tiny-llama", "teaching", weights="fp4")
    with pytest.raises(LpuError, match=r"layers=3 must be in \[1, 2\]"):
        compile("tiny-llama", "teaching", layers=3)
