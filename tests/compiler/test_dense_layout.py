"""The KV cache with heads packed side by side (compiler.frontend.model.cache_row_width): the
chip stores a position's heads one after another in rows of whole heads or of a vector's lanes
where it stored a row a head, the host still gives and gets the model's (KV, context, head_dim),
results equal JAX's and the unpacked program's, and the packed step takes fewer cycles and fewer
bytes."""

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
# head_dim 6, 5 KV heads: whole heads would take 3 rows of 2, so the heads straddle 2 rows of 16.
STRADDLE = dataclasses.replace(
    get_config("tiny-llama"), name="tiny-llama-kv5", d_model=30, n_heads=5, n_kv_heads=5, d_ff=40
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
    monkeypatch.setattr(fm, "cache_row_width", lambda cfg, lanes, kv=None: cfg.head_dim)


def test_cache_symbols_are_packed_and_the_host_layout_is_the_models(tmp_path):
    prog = compile(PACKED, "teaching", context=CONTEXT, pos=POS)
    assert fm.cache_row_width(PACKED, prog.hw.lanes) == 12
    caches = [s for s in prog.symbols if s.name.startswith("cache/")]
    assert len(caches) == 4 * PACKED.n_layers  # k and v, input and output, per layer
    for s in caches:
        assert s.shape == (2, CONTEXT, 12) and s.host == (3, CONTEXT, 6)
        assert len(s.vids) == 2 * CONTEXT  # one vector a row: 2 rows, not 3
    # The host shape survives a save and a load.
    path = tmp_path / "dense-layout.lpu"
    prog.save(path)
    assert Program.load(path).symbol("cache/k/0").host == (3, CONTEXT, 6)


@pytest.mark.parametrize("cfg", [PACKED, STRADDLE], ids=lambda c: c.name)
def test_layers_equal_jax_with_the_cache_in_the_models_layout(cfg):
    assert fm.cache_row_width(cfg, 16) == (12 if cfg is PACKED else 16)
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
    v = validate(STRADDLE, "teaching", tokens=3)
    assert v.passed and v.predicted_cycles == v.simulated_cycles


# Whole heads a row save installs (a K/V row serves every head in it) and bytes. Straddling rows
# save more bytes, but a straddling head's scores are two partial sums added, and on a model this
# small that latency outweighs the installs saved (measured at context 64 on the teaching chip:
# 1,510 cycles against 1,482 one head a row and 1,412 whole heads a row); on a llama2-7b int8 layer
# (benchmarks/roofline.py) it saves both: 20,938 cycles against 21,080 with whole heads a row.
@pytest.mark.parametrize(
    "cfg,faster", [(PACKED, True), (STRADDLE, False)], ids=["whole", "straddle"]
)
def test_packing_takes_fewer_bytes_with_the_same_results(monkeypatch, cfg, faster):
    """The optimisation's own test: against the same model with one head a row."""
    params, cache, x = _inputs(cfg, seed=2)
    kw = dict(context=CONTEXT, pos=POS)
    packed = compile(cfg, "teaching", **kw)
    with monkeypatch.context() as m:
        _unpacked(m)
        plain = compile(cfg, "teaching", **kw)
    assert plain.symbol("cache/k/0").host_shape is None
    a = simulate(packed, decode_inputs(params, x, cache))
    b = simulate(plain, decode_inputs(params, x, cache))
    assert (a.cycles < b.cycles) == faster, (a.cycles, b.cycles)
    assert packed.sram_bytes_used() < plain.sram_bytes_used()
    for name in b.outputs:  # the same sums: the other heads add exact zeros
        np.testing.assert_allclose(a.outputs[name], b.outputs[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "model,shape",
    [
        ("gpt2", (3, 1024, 320)),  # 12 heads of 64: 5 whole heads a row
        ("llama2-7b", (13, 1024, 320)),  # 32 of 128: straddling, 13 rows (whole heads: 16)
        ("llama3-8b", (4, 1024, 256)),  # 8 of 128: 4 rows either way, so whole heads
    ],
)
def test_real_models_cache_bytes(model, shape):
    from compiler.passes.partition import Mapping, fit
    from sim import preset

    cfg, hw = get_config(model), preset("groq-tsp-v1")
    assert fm.cache_shape(cfg, 1024, hw.lanes) == shape
    kv = fit(Mapping(pp=cfg.n_layers + 1), cfg, hw, 1024, "int8").stages[0]
    dtype_bytes = np.dtype(cfg.np_dtype).itemsize
    assert kv.kv_bytes == 2 * shape[0] * 1024 * hw.lanes * dtype_bytes
