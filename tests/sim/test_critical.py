"""The critical path's split of a token's cycles (sim/critical.py), against the simulation's cycle
count and the dependency bound sim.bounds computes on its own."""

import pytest

import lpusim
from compiler import compile
from sim import simulate
from sim.bounds import dependency_bound
from sim.critical import KINDS, critical_path
from tests.programs import softmax_matmul_program

ONE_CHIP = [
    ("tiny-llama", "teaching"),
    ("tiny-gpt2", "teaching"),
    ("tiny-llama", "groq-tsp-v1"),
    ("tiny-mixtral", "groq-tsp-v1"),
]


@pytest.mark.parametrize("model, hw", ONE_CHIP)
def test_one_chip_path_adds_up_and_is_a_dataflow_chain(model, hw):
    p = compile(model, hw, context=8)
    cycles = simulate(p, mode="timing").cycles
    c = critical_path(p, cycles)
    assert list(c) == list(KINDS) and min(c.values()) >= 0
    assert sum(c.values()) == cycles and c["chip to chip"] == 0
    assert c == critical_path(p, cycles)  # deterministic
    # The path's own work (no waits) is one chain of the dataflow: never longer than the
    # longest, which sim.bounds finds with every resource free; where the schedule runs at
    # that chain's pace (tiny-llama on groq-tsp-v1: 2,827 cycles, the chain 2,789), the walk
    # finds it.
    intrinsic = c["compute"] + c["data movement"]
    chain = dependency_bound(p, p.predicted)
    assert 0 < intrinsic <= chain
    if cycles <= 1.02 * chain:
        assert intrinsic >= 0.98 * chain, (intrinsic, chain)


def test_a_function_program_too():
    p = softmax_matmul_program()
    cycles = simulate(p, mode="timing").cycles
    c = critical_path(p, cycles)
    assert sum(c.values()) == cycles and c["compute"] > 0 and c["data movement"] > 0


@pytest.mark.parametrize("chips, mapping", [(2, "pp=2"), (4, "tp=2,pp=2")])
def test_many_chips_path_adds_up_and_crosses_the_links(chips, mapping):
    e = lpusim.estimate("tiny-llama", "teaching", chips=chips, mapping=mapping, context=8)
    c = e.critical_path
    assert sum(c.values()) == e.cycles_per_token
    stages = e.cycles_per_token - e.time_breakdown["on chip"]  # between stages and all-reduces
    between = e.time_breakdown["chip to chip"] - e.time_breakdown.get("all-reduce", 0)
    # x crossing between stages is chip to chip whatever the walk finds inside them; a tensor-
    # parallel stage's all-reduces add their link time
    assert c["chip to chip"] >= between > 0
    if "tp=" in mapping:
        assert c["chip to chip"] > between and stages > between


def test_an_expert_parallel_stage_walks_its_all_reduces():
    e = lpusim.estimate("tiny-mixtral", "teaching", chips=4, mapping="tp=2,ep=2", context=8)
    c = e.critical_path
    assert sum(c.values()) == e.cycles_per_token and c["chip to chip"] > 0
    assert set(e.to_dict()["critical_path"]) == set(KINDS)
