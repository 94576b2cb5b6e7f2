"""Tensor-parallel groups larger than a node (compiler/passes/wiring.py): the all-reduce within
each block of chips linked pairwise, the blocks' sums exchanged over the links between them,
weighed, and all-reduced again. Tokens must be JAX's, cycles the scheduler's, and the wiring's
weights must count every other block's sum exactly once."""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np
import pytest

import lpusim
from compiler import compile
from compiler.passes.partition import Mapping
from compiler.passes.wiring import group_wiring, place_groups, stage_groups
from models import get_config
from sim import preset, simulate
from sim.engine import segments
from sim.errors import ArgumentError
from sim.system import System, groq_system

HW = preset("teaching")  # 4 C2C links a chip
GROQ = preset("groq-tsp-v1")
TINY = get_config("tiny-llama")
WIDE = dataclasses.replace(TINY, name="tiny-llama-kv4", n_kv_heads=4)
H8 = dataclasses.replace(TINY, name="tiny-llama-h8", d_model=48, n_heads=8, n_kv_heads=8)
MIX = get_config("tiny-mixtral")


def nodes(count: int, size: int, between: list[tuple[int, int]]) -> System:
    """`count` nodes of `size` chips linked pairwise, and the links `between` them."""
    g = nx.Graph()
    g.add_nodes_from(range(count * size))
    for k in range(count):
        g.add_edges_from((k * size + a, k * size + b) for a in range(size) for b in range(a))
    g.add_edges_from(between)
    return System(HW, g)


TWO_OF_TWO = nodes(2, 2, [(0, 2), (1, 3)])  # every chip a gateway
TWO_OF_FOUR = nodes(2, 4, [(0, 4), (1, 5)])  # chips 2, 3 and 6, 7 pair up as dummies
FOUR_OF_TWO = nodes(
    4, 2, [(a + i, b + i) for a in (0, 2, 4, 6) for b in (0, 2, 4, 6) if a < b for i in (0, 1)]
)  # fmt: skip  (three exchange roles)


@pytest.mark.parametrize(
    ("model", "mapping", "system", "shape"),
    [
        (WIDE, "tp=4", TWO_OF_TWO, (2, 1)),
        (H8, "tp=8", TWO_OF_FOUR, (4, 1)),
        (H8, "tp=8", FOUR_OF_TWO, (2, 3)),
        # expert parallel: the attention's all-reduce in a node, the experts' across both
        (MIX, "tp=2,ep=2", System(HW, nx.Graph([(0, 1), (0, 2), (1, 3), (2, 3), (1, 2)])), (2, 1)),
    ],
)
def test_groups_across_nodes_give_jaxs_tokens(model, mapping, system, shape):
    prog = compile(model, HW, chips=system.chips, mapping=mapping, system=system, context=8)
    assert (prog.meta["wiring"]["block"], prog.meta["wiring"]["exchanges"]) == shape
    v = lpusim.validate(model, HW, tokens=2, chips=system.chips, mapping=mapping, topology=system)
    assert v.tokens_match and v.within_tolerance, str(v)
    assert v.predicted_cycles == v.simulated_cycles


@pytest.mark.parametrize(
    ("model", "mapping", "system"),
    [
        (WIDE, "tp=4,pp=2", nodes(4, 2, [(0, 2), (1, 3), (4, 6), (5, 7), (3, 4)])),
        # dummy pairs: chips 2, 3 (6, 7, ...) exchange on a link their block's all-reduce uses
        (H8, "tp=8,pp=2", nodes(4, 4, [(0, 4), (1, 5), (8, 12), (9, 13), (6, 10)])),
    ],
)
def test_a_pipeline_of_cross_node_groups_runs_its_bodies_once(model, mapping, system):
    """Two stages of two nodes, a link between the stages: every figure of the placed run equals
    every chip's own run, and equals the scheduler's cycles."""
    prog = compile(model, HW, chips=system.chips, mapping=mapping, system=system, context=8)
    shared = simulate(prog, mode="timing")
    assert segments.gave_up is None
    alone = simulate(prog.expand(), mode="timing", share=False)
    assert shared.cycles == alone.cycles == prog.predicted_cycles
    assert shared.link_bytes.tolist() == alone.link_bytes.tolist()
    assert shared.busy == alone.busy
    assert len(shared.chip_groups) < len(prog.placements)


def _partners(w, g: int, role: int) -> int:
    a, b = (int(x) for x in w.links[w.role_link[g, role]])
    return b if a == g else a


@pytest.mark.parametrize(
    ("chips", "size", "stages"), [(16, 16, 1), (72, 16, 4), (648, 16, 36), (72, 32, 2), (72, 64, 1)]
)
def test_groq_wirings_count_every_blocks_sum_once(chips, size, stages):
    system = groq_system(chips, GROQ)
    groups = place_groups(system, size, stages)
    assert groups is not None and len(groups) == stages
    assert len({c for g in groups for c in g}) == size * stages  # no chip in two groups
    for group in groups:
        w = group_wiring(system, group)
        N, G = w.block, w.size
        assert N == 8 and w.blocks == size // 8 and w.exchanges >= 1
        assert all(group[a] // 72 == group[0] // 72 for a in range(G))  # one rack
        for role in range(w.role_link.shape[1]):
            for g in range(G):
                p = _partners(w, g, role)
                assert _partners(w, p, role) == g  # both ends send on the link in that role
                assert w.role_link[p, role] == w.role_link[g, role]
                assert system.links_between(group[g], group[p])
                if role < N - 1:
                    assert p == g ^ (role + 1)
        got = np.zeros((w.blocks, w.blocks))  # block A's weighed receipts of block B's sum
        for g in range(G):
            for i in range(w.exchanges):
                got[g // N, _partners(w, g, N - 1 + i) // N] += w.weights[g, i]
        assert np.array_equal(got, 1 - np.eye(w.blocks))  # exactly once, never its own


def test_stages_of_two_nodes_skip_a_racks_ninth_node():
    system, groups = stage_groups(Mapping(tp=16, pp=36), groq_system(576, GROQ), given=False)
    assert system.chips == 648  # 4 groups a rack of 9 nodes: 9 racks
    assert [g[0] for g in groups[:6]] == [0, 16, 32, 48, 72, 88]


def test_a_group_whose_nodes_no_link_joins_is_refused():
    one = nodes(2, 2, [(1, 2)])  # connected, but by one link between the nodes
    with pytest.raises(ArgumentError, match="fewer than two links join them"):
        compile(WIDE, HW, chips=4, mapping="tp=4", system=one, context=8)
    ring = System(HW, nx.cycle_graph(8))  # blocks of two; the first and the third not linked
    with pytest.raises(ArgumentError, match="chips 0..1 and 4..5 in one 8-chip group, but no"):
        compile(H8, HW, chips=8, mapping="tp=8", system=ring, context=8)
    with pytest.raises(ArgumentError, match="has room for"):
        stage_groups(Mapping(tp=4, pp=2), TWO_OF_TWO, given=True)
