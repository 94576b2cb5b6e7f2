"""The KV cache with heads packed side by side (compiler.frontend.model.heads_per_row): the
chip stores ceil(KV/P) rows of P heads where it stored KV rows of one, the host still gives and
gets the model's (KV, context, head_dim), results equal JAX's and the unpacked program's, and
the packed step takes fewer cycles and fewer bytes."""

import dataclasses

import jax
import numpy as np
import pytest

import compiler.frontend.model as fm
from compiler import compile
from lpusim.api import decode_inputs, validate
from models import get_config, init_cache, init_params, layer_step
from sim import simulate
from sim.program import Program

# head_dim 6 on the teaching chip's 16 lanes: 2 heads a row, 3 KV heads -> 2 rows (one padded),
# two query heads per KV head.
PACKED = dataclasses.replace(
    get_config("tiny-llama"), name="tiny-llama-hd6", d_model=36, n_heads=6, n_kv_heads=3, d_ff=40
)
CONTEXT, POS = 7, 5


def _inputs(cfg, seed=0):
    rng = np.random.default_rng(seed)
    params = init_params(cfg, 3)
    cache = jax.tree.map(
        lambda c: rng.normal(size=c.shape).astype(c.dtype), init_cache(cfg, CONTEXT)
    )
    x = rng.normal(size=(1, cfg.d_model)).astype(np.float32)
    return params, cache, x


def _unpacked(monkeypatch):
    monkeypatch.setattr(fm, "heads_per_row", lambda cfg, lanes: 1)


def test_cache_symbols_are_packed_and_the_host_layout_is_the_models():
    prog = compile(PACKED, "teaching", context=CONTEXT, pos=POS)
    assert fm.heads_per_row(PACKED, prog.hw.lanes) == 2
    caches = [s for s in prog.symbols if s.name.startswith("cache/")]
    assert len(caches) == 4 * PACKED.n_layers  # k and v, input and output, per layer
    for s in caches:
        assert s.shape == (2, CONTEXT, 12) and s.host == (3, CONTEXT, 6)
        assert len(s.vids) == 2 * CONTEXT  # one vector a row: 2 rows, not 3
    # The host shape survives a save and a load.
    path = "/tmp/lpusim-dense-layout.lpu"
    prog.save(path)
    assert Program.load(path).symbol("cache/k/0").host == (3, CONTEXT, 6)


def test_layers_equal_jax_with_the_cache_in_the_models_layout():
    cfg = PACKED
    prog = compile(cfg, "teaching", context=CONTEXT, pos=POS, layers=2)
    params, cache, x = _inputs(cfg)
    params = {"layers": params["layers"]}
    a = simulate(prog, decode_inputs(params, x, cache))
    b = simulate(prog, decode_inputs(params, x, cache), engine="reference")
    assert a.cycles == b.cycles == prog.predicted_cycles
    for name, value in a.outputs.items():
        np.testing.assert_array_equal(value, b.outputs[name], err_msg=name)
    want = x
    for i in range(2):
        want, k, v = layer_step(
            params["layers"][i], want, cache["k"][i], cache["v"][i], cfg=cfg, pos=POS
        )
        # The cache rows are stored and read back exactly (float16 in, float16 out).
        np.testing.assert_array_equal(a.outputs[f"cache/k/{i}"], np.asarray(k, np.float32))
        np.testing.assert_array_equal(a.outputs[f"cache/v/{i}"], np.asarray(v, np.float32))
    np.testing.assert_allclose(a.outputs["x"], np.asarray(want), rtol=1e-2, atol=1e-2)


def test_packed_tokens_equal_jax():
    v = validate(PACKED, "teaching", tokens=3)
    assert v.passed and v.predicted_cycles == v.simulated_cycles


def test_packing_takes_fewer_cycles_and_bytes_with_the_same_results(monkeypatch):
    """The optimisation's own test: against the same model with one head a row."""
    cfg = PACKED
    params, cache, x = _inputs(cfg, seed=2)
    kw = dict(context=CONTEXT, pos=POS)
    packed = compile(cfg, "teaching", **kw)
    with monkeypatch.context() as m:
        _unpacked(m)
        plain = compile(cfg, "teaching", **kw)
    assert plain.symbol("cache/k/0").host_shape is None
    a = simulate(packed, decode_inputs(params, x, cache))
    b = simulate(plain, decode_inputs(params, x, cache))
    assert a.cycles < b.cycles, (a.cycles, b.cycles)
    assert packed.sram_bytes_used() < plain.sram_bytes_used()
    for name in b.outputs:  # the same sums: the other heads add exact zeros
        np.testing.assert_allclose(a.outputs[name], b.outputs[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "model,hw,rows", [("gpt2", "groq-tsp-v1", 3), ("llama2-7b", "groq-tsp-v1", 16)]
)
def test_real_models_cache_bytes(model, hw, rows):
    """head_dim 64 packs 5 to a 320-lane row (gpt2: 12 heads in 3 rows), 128 packs 2."""
    from compiler.passes.partition import Mapping, fit
    from sim import preset

    cfg, hw = get_config(model), preset(hw)
    assert fm.cache_shape(cfg, 1024, hw.lanes) == (
        rows,
        1024,
        hw.lanes // cfg.head_dim * cfg.head_dim,
    )
    kv = fit(Mapping(pp=cfg.n_layers + 1), cfg, hw, 1024, "int8").stages[0]
    dtype_bytes = np.dtype(cfg.np_dtype).itemsize
    assert kv.kv_bytes == 2 * rows * 1024 * hw.lanes * dtype_bytes
