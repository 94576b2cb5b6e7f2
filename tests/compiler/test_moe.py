"""Mixture of experts with static timing: the chip picks the experts JAX picks (a TOPK sets select
registers; the experts' weights are read through them), and the schedule reserves exactly k
experts' work whatever the choice."""

import jax
import numpy as np
import pytest

from compiler import compile, lower
from compiler.frontend import shard
from compiler.frontend.jaxpr import UnsupportedPrimitive, flatten_named
from compiler.passes.tile import tile
from models import get_config, init_params, mlp, route
from models.decoder import _swiglu
from sim import simulate
from sim.isa import FLAG_INDIRECT, DType, Op

CFG = get_config("tiny-mixtral")
HW = "groq-tsp-v1"


def moe(layer, h):
    _, gates = route(layer, h, CFG)
    return {"mlp": mlp(layer, h, cfg=CFG), "gates": gates}


@pytest.fixture(scope="module")
def program():
    layer = init_params(CFG, 0)["layers"][0]
    args = {"layer": layer, "h": np.zeros((1, CFG.d_model), np.float32)}
    return compile(moe, HW, args=args, params=("layer",)), layer


@pytest.mark.parametrize("seed", range(6))
def test_chip_picks_jaxs_experts(program, seed):
    prog, layer = program
    h = np.random.default_rng(seed).normal(size=(1, CFG.d_model)).astype(np.float32)
    inputs = {k: np.asarray(v) for k, v in flatten_named({"layer": layer, "h": h}).items()}
    ids, gates = (np.asarray(a) for a in route(layer, h, CFG))
    # what the chosen experts compute, each alone: the chip must match their gated sum
    terms = [
        np.asarray(_swiglu(h, jax.tree.map(lambda a, e=e: a[e], layer["experts"]), CFG))
        for e in ids
    ]
    want = sum(g * t for g, t in zip(gates, terms, strict=True))
    for engine in ("numba", "reference"):
        r = simulate(prog, inputs, engine=engine)
        np.testing.assert_allclose(r.outputs["gates"], gates, rtol=1e-6)
        np.testing.assert_allclose(r.outputs["mlp"], want, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(r.outputs["mlp"], np.asarray(mlp(layer, h, cfg=CFG)), atol=1e-3)
        assert r.cycles == prog.predicted_cycles  # static timing: the same for every choice


def test_k_experts_of_work_are_reserved(program):
    prog, _ = program  # (`moe` routes twice, once for its gates output: two TOPKs)
    ins = prog.instrs
    indirect = ins[(ins["op"] == Op.READ) & ((ins["flags"] & FLAG_INDIRECT) != 0)]
    # w_gate, w_up (d x ff) and w_down (ff x d) of one expert, in vectors, per chosen expert
    one_expert = 2 * CFG.d_model + CFG.d_ff  # rows of the three matrices (each one tile wide)
    assert indirect["repeat"].sum() == CFG.experts_per_token * one_expert
    assert len(set(indirect["row"].tolist())) == CFG.experts_per_token  # one register per choice
    assert (ins["op"] == Op.TOPK).sum() >= 1
    assert simulate(prog, mode="timing").cycles == prog.predicted_cycles


def test_an_index_computed_otherwise_is_refused():
    def f(w, x):
        i = jax.numpy.argmax(x[0]).astype(np.int32)
        return jax.lax.dynamic_index_in_dim(w, i, keepdims=False)

    args = {"w": np.zeros((4, 8, 16), np.float16), "x": np.zeros((1, 4), np.float32)}
    with pytest.raises(UnsupportedPrimitive):
        compile(f, "teaching", args=args, params=("w",))


def test_quantised_experts_wider_than_a_tile():
    """An int8 expert's per-channel scales multiply its products on the VXM; on the teaching
    chip (16 lanes) the chosen expert's row of w_gate's scales is 8 tile columns, each stored
    with the other experts' rows of its column, so the multiply reads each on its own."""
    layer = init_params(CFG, 0, "int8")["layers"][0]
    layer = {k: layer[k] for k in ("w_router", "experts")}

    def f(layer, h):
        return {"mlp": mlp(layer, h, cfg=CFG)}

    args = {"layer": layer, "h": np.zeros((1, CFG.d_model), np.float32)}
    prog = compile(f, "teaching", args=args, params=("layer",))
    h = np.random.default_rng(0).normal(size=(1, CFG.d_model)).astype(np.float32)
    inputs = {k: np.asarray(v) for k, v in flatten_named({"layer": layer, "h": h}).items()}
    r = simulate(prog, inputs)
    np.testing.assert_allclose(r.outputs["mlp"], np.asarray(mlp(layer, h, cfg=CFG)), atol=1e-5)
    assert r.cycles == prog.predicted_cycles


@pytest.mark.parametrize(("tp", "ep"), [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_quantised_experts_are_installed_as_stored(tp, ep):
    """A chosen expert's int8 matrices reach the MXM as stored, as a plain parameter's do: no VXM
    op converts them (dynamic_index_in_dim's squeeze is a relayout that moves no lane). Converted
    whole, two of mixtral-8x7b's experts sat in bf16 among a chip's computed vectors: 7,721 words
    a slice at tp=4,ep=2 on groq-tsp-v1 (of 8,192), 43 installed as stored."""
    fn, args = shard.mlp_target(CFG, tp, weights="int8", ep=ep)
    vp = tile(lower(fn, args, frozenset({"params"})), 320)
    converts = [op for op in vp.ops if op.op == Op.CONVERT]
    dtypes = np.asarray(vp.dtypes)
    assert all(dtypes[op.ins[0]] != DType.INT8 for op in converts)
    rows = np.concatenate([op.rows for op in vp.ops if op.rows is not None])
    assert (dtypes[rows] == DType.INT8).sum() >= 3 * CFG.d_model  # the experts' rows, as int8
