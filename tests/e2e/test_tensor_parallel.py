"""Tensor parallelism: each chip of a group holds a slice of every layer's heads and FFN columns
(compiler/frontend/shard.py), and the partial outputs are summed by an all-reduce of SEND/RECV
transfers and VXM adds (compiler/codegen/tensor.py). The tokens must be JAX's, every cycle the
scheduler's, both executors must agree, and every transfer is checked."""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np
import pytest

import lpusim
from compiler import compile
from compiler.frontend.shard import gather_outputs, shard_inputs
from lpusim.api import decode_inputs
from models import decode_step, embed, get_config, init_cache, init_params
from sim import ScheduleViolation, preset, simulate
from sim.errors import LpuError
from sim.icu import moved
from sim.isa import DTYPE_BYTES, DType, Op
from sim.system import System
from tests.programs import random_inputs
from tests.sim.test_engine import assert_agree

HW = preset("teaching")
TINY = get_config("tiny-llama")  # 4 heads, 2 KV heads: tp = 2
WIDE = dataclasses.replace(TINY, name="tiny-llama-kv4", n_kv_heads=4)  # tp = 4 divides all
TINY8 = dataclasses.replace(TINY, name="tiny-llama-8", n_layers=8)
# Eight heads and KV heads for tp = 8 (the all-reduce's tree three pairs deep), on a teaching
# chip with a link to each of 7 others, so that 8 chips are fully connected.
H8 = dataclasses.replace(TINY, name="tiny-llama-h8", d_model=48, n_heads=8, n_kv_heads=8)
HW8 = dataclasses.replace(HW, c2c_links=8, name="teaching-8-links")


@pytest.mark.parametrize(
    ("model", "hw", "chips", "mapping"),
    [
        (TINY, HW, 2, "tp=2"),
        (TINY, HW, 4, "tp=2,pp=2"),
        (TINY, HW, 6, "tp=2,pp=3"),  # the last stage holds the head alone
        (WIDE, HW, 4, "tp=4"),
        (TINY8, HW, 8, "tp=2,pp=4"),
        (H8, HW8, 8, "tp=8"),
        # more ranks than KV heads: each KV head (its cache, its wk and wv columns) on two ranks
        (TINY, HW, 4, "tp=4"),
        (dataclasses.replace(H8, name="tiny-llama-h8-kv2", n_kv_heads=2), HW8, 8, "tp=8"),
    ],
)
def test_tensor_parallel_tokens_are_jaxs(model, hw, chips, mapping):
    v = lpusim.validate(model, hw, tokens=2, chips=chips, mapping=mapping)
    assert v.tokens_match and v.within_tolerance, str(v)
    assert v.predicted_cycles == v.simulated_cycles


def test_a_lone_groups_chips_close_their_own_queues():
    """One stage of two chips whose VXM queue outgrows its buffer: each chip's closing NOTIFY
    (the tail its last IFETCH brings) is its own (chip 1 took chip 0's plan, and its NOTIFY
    stayed on chip 0: two there, the second never fetched)."""
    prog = compile(TINY8, HW, chips=2, mapping="tp=2", context=16)
    ins = prog.expand().instrs
    notify = ins[ins["op"] == int(Op.NOTIFY)]
    assert len(notify) and np.array_equal(*(np.sort(notify["queue"][notify["chip"] == c])
                                            for c in (0, 1)))  # fmt: skip
    assert simulate(prog, mode="timing").cycles == prog.predicted_cycles


@pytest.fixture(scope="module")
def tp2pp2():
    return compile(TINY, HW, chips=4, mapping="tp=2,pp=2", context=8)


def test_executors_agree_on_a_tensor_parallel_program(tp2pp2):
    prog = tp2pp2
    assert prog.chips == 4 and prog.meta["tp"] == 2
    for functional in (True, False):
        result = assert_agree(prog, random_inputs(prog), functional)
        assert not isinstance(result, str), result


def test_the_ranks_run_one_program_and_sum_alike(tp2pp2):
    """Rank 1 runs rank 0's instructions (SEND/RECV on its own links); one Program per stage
    shape; each all-reduce moves every rank's partial to the other."""
    ins = tp2pp2.expand().instrs  # (its stages are bodies placed on their chips)
    for a, b in ((0, 1), (2, 3)):
        on_a, on_b = (_without_links(ins[ins["chip"] == c]) for c in (a, b))
        assert np.array_equal(on_a, on_b)
    assert tp2pp2.meta["shared_programs"] == 2  # a layer alone, a layer with the head
    r = simulate(tp2pp2, mode="timing")
    x_vectors = -(-TINY.d_model // HW.lanes)
    bytes_per_x = x_vectors * HW.lanes * 4  # float32
    allreduces = TINY.n_layers * 2  # attention and MLP of every layer
    between_stages = 2  # each rank's share of x to its rank of the next stage, then to all
    sent = allreduces * 2 * bytes_per_x + between_stages * bytes_per_x
    assert int(r.link_bytes.sum()) == sent


def test_every_stage_shape_runs_blocks_scheduled_once(monkeypatch):
    """The attention, MLP, reduce and head blocks are scheduled once for all stage shapes (here
    a layer alone, and the head alone): one SRAM layout serves them all."""
    import compiler

    calls = []
    schedule = compiler.list_schedule
    monkeypatch.setattr(compiler, "list_schedule", lambda vp, *a, **k: calls.append(vp) or
                        schedule(vp, *a, **k))  # fmt: skip
    prog = compile(TINY, HW, chips=6, mapping="tp=2,pp=3", context=8)
    assert prog.meta["stage_layers"] == [1, 1, 0] and prog.meta["shared_programs"] == 2
    assert len(calls) == 4


def _without_links(ins):
    """A chip's instructions as every rank has them: its stage's (not the transfers of x
    between stages, which carry each rank's share), no chip or delay (the queues interleave
    with those transfers), no link of a SEND or RECV."""
    ins = ins[(ins["op"] != int(Op.IFETCH)) & (ins["src"] >= 0)].copy()
    ins["chip"] = ins["delay"] = 0
    ins["table"][np.isin(ins["op"], (int(Op.SEND), int(Op.RECV)))] = 0
    return ins


def test_logits_and_cache_come_back_whole():
    """One step by hand: the host slices the weights and cache, the ranks' logits and cache
    join into JAX's."""
    prog = compile(WIDE, HW, chips=4, mapping="tp=4", context=8, pos=3)
    params = init_params(WIDE, 0)
    rng = np.random.default_rng(1)
    cache = {
        kv: [rng.standard_normal(c.shape).astype(c.dtype) for c in init_cache(WIDE, 8)[kv]]
        for kv in ("k", "v")
    }
    x = embed(params, 5, 3, WIDE)
    inputs = shard_inputs(prog.symbols, decode_inputs(params, x, cache))
    out = gather_outputs(simulate(prog, inputs).outputs, 4, {"logits": (1, WIDE.vocab_size)})
    logits, new = decode_step(params, x, cache, cfg=WIDE, pos=3)
    assert out["logits"].shape == (1, WIDE.vocab_size)
    assert np.abs(out["logits"] - np.asarray(logits)).max() < 1e-2
    for l in range(WIDE.n_layers):
        assert np.array_equal(out[f"cache/k/{l}"], np.asarray(new["k"][l], np.float32))


def test_estimate_shows_tp_and_the_all_reduce_time():
    e = lpusim.estimate(TINY, "teaching", chips=4, mapping="tp=2,pp=2", context=8)
    assert e.mapping == "tp=2,pp=2" and e.cycles_per_token == e.predicted_cycles
    t = e.time_breakdown
    assert 0 < t["all-reduce"] < t["chip to chip"]
    assert t["on chip"] + t["chip to chip"] == e.cycles_per_token


def test_estimate_link_utilisation_is_each_links_sends_over_its_bandwidth():
    """Counted again from the written-out program's SENDs: bytes a direction sends over what
    it could in the step."""
    e = lpusim.estimate(TINY, "teaching", chips=4, mapping="tp=2,pp=2", context=8)
    prog = compile(TINY, HW, chips=4, mapping="tp=2,pp=2", context=8).expand()
    sends = prog.instrs[prog.instrs["op"] == Op.SEND]
    sent: dict[tuple[int, int], int] = {}
    for r in sends:
        a, b = (int(x) for x in prog.links[int(r["table"])])
        to = b if int(r["chip"]) == a else a
        words = DTYPE_BYTES[DType(int(r["dtype"]))]
        sent[(int(r["chip"]), to)] = sent.get((int(r["chip"]), to), 0) + int(r["repeat"]) * words
    capacity = HW.c2c_bytes_per_cycle * e.cycles_per_token
    u = e.link_utilisation
    got = {}
    for a, b, ab, ba in u["links"]:
        got[(a, b)], got[(b, a)] = ab, ba
    want = {k: v * HW.lanes / capacity for k, v in sent.items()}
    assert set(k for k, v in got.items() if v > 0) == set(want)
    assert all(got[k] == pytest.approx(v, rel=1e-12) for k, v in want.items())
    assert u["busiest"] == pytest.approx(max(want.values()))
    assert want[tuple(u["busiest_link"])] == pytest.approx(max(want.values()))
    assert u["mean"] == pytest.approx(sum(want.values()) / len(want))


def _first(prog, op, chip):
    return int(np.flatnonzero((prog.instrs["op"] == op) & (prog.instrs["chip"] == chip))[0])


def test_all_reduce_transfers_are_checked():
    prog = compile(TINY, HW, chips=2, mapping="tp=2", context=8).expand()
    cycles = prog.predicted
    recv, send = _first(prog, Op.RECV, 1), _first(prog, Op.SEND, 0)
    # a RECV before its partial lands
    with pytest.raises(ScheduleViolation, match="has landed there yet"):
        simulate(moved(prog, {recv: int(cycles[recv]) - 1}), mode="timing")
    # a SEND a cycle late: the partial has passed the C2C unit
    with pytest.raises(ScheduleViolation, match=r"link \d+ \(chip 0 -> chip 1\)"):
        simulate(moved(prog, {send: int(cycles[send]) + 1}), mode="timing")
    # two SENDs on one link in one cycle (an ICU that dispatches both): the link is busy
    sends = np.flatnonzero((prog.instrs["op"] == Op.SEND) & (prog.instrs["chip"] == 0))
    wide = dataclasses.replace(prog, hw=dataclasses.replace(HW, icu_issue_width=2))
    with pytest.raises(ScheduleViolation, match="the link is busy until cycle"):
        simulate(moved(wide, {int(sends[1]): int(cycles[sends[0]])}), mode="timing")


@pytest.mark.parametrize(
    ("model", "mapping", "system", "needle"),
    [
        (TINY, "tp=8", None, "tp must divide n_heads=4, d_ff=72 and n_kv_heads=2"),
        (
            dataclasses.replace(TINY, name="six", d_model=48, n_heads=6, n_kv_heads=6),
            "tp=3",
            None,
            "tp=3: the all-reduce sums the same pairs on every chip only for tp a power of two",
        ),
        (
            "tiny-gpt2",
            "tp=2",
            None,
            "tp=2: tensor parallelism compiles the llama and mixtral families",
        ),
        (TINY, "tp=2", nx.Graph([(0, 2), (2, 1)]), "no link joins chips 0 and 1"),
    ],
)
def test_bad_tensor_parallel_mappings_are_one_line_errors(model, mapping, system, needle):
    system = None if system is None else System(HW, system)
    chips = int(mapping.split("=")[1])
    with pytest.raises(LpuError, match=needle) as e:
        compile(model, HW, chips=chips, mapping=mapping, system=system, context=8)
    assert "\n" not in str(e.value)
