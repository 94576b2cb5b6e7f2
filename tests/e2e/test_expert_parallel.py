"""Expert parallelism: a mixture-of-experts model over ep groups of tp chips, each chip holding
1/(tp x ep) of the experts (compiler/frontend/shard.py). Every chip routes as JAX does, runs the
chosen experts it holds (models.decoder.experts_part) and the group's all-reduce sums the
partials (compiler/codegen/tensor.py). The tokens must be JAX's, each chip's experts JAX's
choice, every cycle the scheduler's, both executors must agree, and every transfer is checked."""

from __future__ import annotations

import dataclasses

import jax
import networkx as nx
import numpy as np
import pytest

import lpusim
from compiler import compile
from compiler.frontend.jaxpr import flatten_named
from compiler.frontend.shard import shard_inputs
from lpusim.cli import main
from models import get_config, init_params, mlp, route
from models.decoder import _swiglu, experts_part
from sim import ScheduleViolation, preset, simulate
from sim.errors import LpuError
from sim.icu import moved
from sim.isa import Op, link_cycles
from sim.system import System
from tests.e2e.test_tensor_parallel import _without_links
from tests.programs import random_inputs
from tests.sim.test_engine import assert_agree

HW, TSP = preset("teaching"), preset("groq-tsp-v1")
MIX = get_config("tiny-mixtral")  # 4 experts, top 2; two chips of the teaching chip's SRAM
E = MIX.n_experts


def _nodes_in_a_line(groups: int, size: int) -> System:
    """Teaching chips (4 links each) in fully connected groups, each linked to the next by one
    link: a pipeline of groups, as Groq's nodes in a rack."""
    g = nx.Graph()
    for s in range(groups):
        g.add_edges_from((s * size + a, s * size + b) for a in range(size) for b in range(a))
        if s:
            g.add_edge(s * size - 1, s * size)
    return System(HW, g)


@pytest.mark.parametrize(
    ("hw", "chips", "mapping", "system"),
    [
        (TSP, 2, "ep=2", None),
        (HW, 4, "tp=2,ep=2", None),
        (HW, 4, "ep=2,pp=2", None),
        (HW, 2, "tp=2", None),  # ep=1: every chip holds every expert's FFN columns
        (HW, 12, "tp=2,ep=2,pp=3", _nodes_in_a_line(3, 4)),  # the last stage: the head alone
    ],
)
def test_expert_parallel_tokens_are_jaxs(hw, chips, mapping, system):
    # Three tokens each: one KV cache length, so XLA compiles JAX's decode steps once.
    v = lpusim.validate(MIX, hw, tokens=3, chips=chips, mapping=mapping, topology=system)
    assert v.tokens_match and v.within_tolerance, str(v)
    assert v.predicted_cycles == v.simulated_cycles


# --- each chip's experts: JAX's choice, those it holds ------------------------------------------


def _chip_layer(layer: dict, e: int, ep: int) -> dict:
    """What chip e of ep holds of a layer's MoE: the router, its experts, its slot table."""
    n = E // ep
    return {
        "w_router": layer["w_router"],
        "experts": {k: v[e * n : (e + 1) * n] for k, v in layer["experts"].items()},
        "expert_slots": np.eye(E, dtype=MIX.np_dtype)[:, e * n : (e + 1) * n],
    }


def _part(layer, h):
    return {"y": experts_part(layer, h, cfg=MIX)}


@pytest.fixture(scope="module", params=[2, 4], ids=["ep2-k-of-n", "ep4-each-expert"])
def part_program(request):
    """One chip's MoE (n = 2 experts of a group of 2: the top_k of each choice's slot; n = 1 of
    4: its one expert under its gate) and the layer it is a share of."""
    ep = request.param
    layer = init_params(MIX, 0)["layers"][0]
    args = {"layer": _chip_layer(layer, 0, ep), "h": np.zeros((1, MIX.d_model), np.float32)}
    return compile(_part, TSP, args=args, params=("layer",)), layer, ep


def _tied(layer: dict, h: np.ndarray) -> dict:
    """The layer with the router's column of the lowest expert not chosen for h made equal to
    that of the second chosen: their logits tie, and JAX's top_k takes the lower id."""
    ids = np.asarray(route(layer, h, MIX)[0])
    w = np.array(layer["w_router"])
    w[:, min(set(range(E)) - set(ids.tolist()))] = w[:, ids[1]]
    return {**layer, "w_router": w}


@pytest.mark.parametrize("case", [0, 1, 2, "tie"])
def test_each_chip_runs_the_experts_jax_chose_that_it_holds(part_program, case):
    prog, layer, ep = part_program
    h = np.random.default_rng(0 if case == "tie" else case).normal(size=(1, MIX.d_model))
    h = h.astype(np.float32)
    if case == "tie":
        layer = _tied(layer, h)
    ids, gates = (np.asarray(a) for a in route(layer, h, MIX))
    n, total = E // ep, 0
    for e in range(ep):
        inputs = flatten_named({"layer": _chip_layer(layer, e, ep), "h": h})
        r = simulate(prog, {k: np.asarray(v) for k, v in inputs.items()})
        assert r.cycles == prog.predicted_cycles  # static timing: whatever the choice
        mine = [j for j in range(len(ids)) if e * n <= ids[j] < (e + 1) * n]
        want = np.zeros((1, MIX.d_model), np.float32)
        for j in mine:  # what the chosen experts it holds compute, each alone, gated
            expert = jax.tree.map(lambda a, i=ids[j]: a[i], layer["experts"])
            want = want + gates[j] * np.asarray(_swiglu(h, expert, MIX))
        np.testing.assert_allclose(r.outputs["y"], want, rtol=1e-3, atol=1e-4)
        total = total + r.outputs["y"]
    np.testing.assert_allclose(total, np.asarray(mlp(layer, h, cfg=MIX)), atol=1e-4)


# --- the group's program ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tp2ep2():
    return compile(MIX, HW, chips=4, mapping="tp=2,ep=2", context=8)


def test_executors_agree_on_an_expert_parallel_program(tp2ep2):
    assert tp2ep2.chips == 4 and (tp2ep2.meta["tp"], tp2ep2.meta["ep"]) == (2, 2)
    result = assert_agree(tp2ep2, random_inputs(tp2ep2), functional=True)
    assert not isinstance(result, str), result


def test_the_chips_run_one_program_on_their_own_experts(tp2ep2):
    """Chip g = e * tp + r runs chip 0's instructions on ep group e's experts (its FFN columns
    r of them) and tp rank r's heads; the attention's all-reduce stays in its ep group (one
    partner), the MoE's spans all four chips (three)."""
    ins = tp2ep2.instrs
    chip0 = _without_links(ins[ins["chip"] == 0])
    for g in range(1, 4):
        assert np.array_equal(_without_links(ins[ins["chip"] == g]), chip0)
    on = {(s.name, s.chip) for s in tp2ep2.symbols}
    for g in range(4):
        e, r = divmod(g, 2)
        assert (f"params/layers/1/experts/w_down#ep{e}#tp{r}", g) in on
        assert (f"params/layers/1/expert_slots#ep{e}", g) in on
        assert (f"params/layers/1/wq#tp{r}", g) in on and ("params/layers/1/w_router", g) in on
    assert {s.chip for s in tp2ep2.symbols if s.kind == "output"} == {0, 1}  # ep group 0's
    # The host's side: chip 3 (e = 1, r = 1) gets experts 2..3, FFN columns 64..127.
    full = np.arange(E * MIX.d_model * MIX.d_ff, dtype=np.float32).reshape(E, MIX.d_model, -1)
    name = "params/layers/0/experts/w_gate"
    got = shard_inputs(tp2ep2.symbols, {name: full})
    assert np.array_equal(got[f"{name}#ep1#tp1"], full[2:, :, 64:])
    assert np.array_equal(got["params/layers/0/expert_slots#ep1"], np.eye(E)[:, 2:])
    r = simulate(tp2ep2, mode="timing")
    assert r.cycles == tp2ep2.predicted_cycles
    bytes_per_x = -(-MIX.d_model // HW.lanes) * HW.lanes * 4  # float32
    per_layer = 4 * 1 + 4 * 3  # sends: every chip to 1 partner (attention), to 3 (MoE)
    assert int(r.link_bytes.sum()) == MIX.n_layers * per_layer * bytes_per_x


def test_the_group_wide_all_reduce_is_checked(tp2ep2):
    """Chip 0's RECV of chip 3's partial (the other ep group's) a cycle before it lands is a
    violation (on an ICU that dispatches two a cycle: the C2C queue is busy every cycle)."""
    whole = tp2ep2.expand()  # (instructions picked out of every chip's, bodies written out)
    prog = dataclasses.replace(whole, hw=dataclasses.replace(HW, icu_issue_width=2))
    ins, cycles = prog.instrs, prog.predicted
    link = int(np.flatnonzero((prog.links == (0, 3)).all(axis=1))[0])
    on = (ins["table"] == link) & (ins["vid"] == ins["vid"][(ins["op"] == Op.RECV)].max())
    recv = int(np.flatnonzero(on & (ins["op"] == Op.RECV) & (ins["chip"] == 0))[0])
    send = int(np.flatnonzero(on & (ins["op"] == Op.SEND) & (ins["chip"] == 3))[0])
    lands = int(cycles[send]) + HW.c2c_latency_cycles + link_cycles(HW, 4)
    assert int(cycles[recv]) >= lands
    with pytest.raises(ScheduleViolation, match="has landed there yet"):
        simulate(moved(prog, {recv: lands - 1}), mode="timing")


def test_estimate_shows_ep_and_the_all_reduce_time():
    e = lpusim.estimate(MIX, "teaching", chips=4, mapping="tp=2,ep=2", context=8)
    assert e.mapping == "tp=2,ep=2" and e.cycles_per_token == e.predicted_cycles
    t = e.time_breakdown
    assert 0 < t["all-reduce"] <= t["chip to chip"]


# --- bad mappings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "mapping", "system", "needle"),
    [
        (MIX, "ep=3", None, "has ep=3, which does not divide n_experts=4 of 'tiny-mixtral'; "
         "valid ep: 1, 2, 4"),
        (
            dataclasses.replace(MIX, name="six-experts", n_experts=6),
            "ep=3",
            None,
            "ep=3: a group of tp x ep = 3 chips; the all-reduce sums the same pairs on every chip "
            "only for a power of two; valid ep for 'six-experts' .*: 1, 2$",
        ),
        ("tiny-llama", "ep=2", None, "has ep=2, but 'tiny-llama' has no experts; use ep=1"),
        (
            MIX,
            "tp=2,ep=2",
            nx.Graph([(0, 1), (2, 3), (1, 2)]),  # (tests/e2e/test_cross_node.py: two links)
            "puts chips 0..1 and 2..3 in one 4-chip group, but fewer than two links join them",
        ),
    ],
)  # fmt: skip
def test_bad_expert_parallel_mappings_are_one_line_errors(model, mapping, system, needle):
    system = None if system is None else System(HW, system)
    chips = int(np.prod([int(p.split("=")[1]) for p in mapping.split(",")]))
    with pytest.raises(LpuError, match=needle) as e:
        compile(model, HW, chips=chips, mapping=mapping, system=system, context=8)
    assert "\n" not in str(e.value)


def test_mixtral_8x7b_at_tp8_ep8_says_how_many_chips_it_needs(capsys):
    """The 64 chips hold too little; the fewest that hold it put 16 chips in a group, two
    GroqNodes (tests/e2e/test_cross_node.py): one line, no traceback, the mapping to compile."""
    argv = ["estimate", "--model", "mixtral-8x7b", "--hw", "groq-tsp-v1", "--mapping",
            "tp=8,ep=8", "--context", "4096"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "but 64 chip(s) of groq-tsp-v1 have" in err and "it needs at least 411 chips" in err
    assert "; compile it with chips=" in err and "--mapping tp=8,pp=" in err
