"""Several chips: a decode step's layers in pipeline stages, one a chip, the residual stream x
passed between them by SEND/RECV over the system's links (compiler/codegen/pipeline.py). The
tokens must be JAX's, every cycle the scheduler's, and every transfer checked."""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np
import pytest

import lpusim
from compiler import compile
from models import get_config
from sim import ScheduleViolation, preset, simulate
from sim.icu import moved
from sim.isa import Op, queue_c2c
from sim.system import System
from tests.programs import random_inputs
from tests.sim.test_engine import assert_agree

HW = preset("teaching")
TINY8 = dataclasses.replace(get_config("tiny-llama"), name="tiny-llama-8", n_layers=8)


@pytest.mark.parametrize(("model", "chips"), [("tiny-llama", 2), (TINY8, 4), (TINY8, 8)])
def test_pipelined_tokens_are_jaxs(model, chips):
    v = lpusim.validate(model, "teaching", tokens=2, chips=chips)
    assert v.tokens_match and v.within_tolerance, str(v)
    assert v.predicted_cycles == v.simulated_cycles


@pytest.fixture(scope="module")
def four_chips():
    return compile(TINY8, HW, chips=4, context=8)


def test_executors_agree_on_a_pipelined_program(four_chips):
    prog = four_chips
    assert prog.chips == 4 and len(prog.links) == 6  # fully connected: each chip 3 of its 4 links
    for functional in (True, False):
        result = assert_agree(prog, random_inputs(prog), functional)
        assert not isinstance(result, str), result
    r = simulate(prog, mode="timing")
    sent = int(r.link_bytes.sum())
    x = next(s for s in prog.symbols if s.name == "x")
    assert sent == 3 * len(x.vids) * HW.lanes * np.dtype(x.dtype).itemsize  # three hops of x


def test_stages_of_one_shape_share_one_program(four_chips):
    assert four_chips.meta["stage_layers"] == [2, 2, 2, 2]
    assert four_chips.meta["shared_programs"] == 2  # three stages alike, and the one with the head
    ins = four_chips.expand().instrs  # (its stages are bodies placed on their chips)
    per_chip = [np.sort(ins[ins["chip"] == c]["op"]) for c in (1, 2)]
    assert np.array_equal(*per_chip)  # the middle stages: the same instructions


def test_a_stage_waits_for_its_input_and_the_step_is_the_sum_of_stages(four_chips):
    stages = four_chips.meta["stages"]
    for a, b in zip(stages, stages[1:], strict=False):
        assert b["first_cycle"] > a["first_cycle"] + a["cycles"] + HW.c2c_latency_cycles
    assert four_chips.predicted_cycles == stages[-1]["first_cycle"] + stages[-1]["cycles"]


def test_a_relay_chip_forwards_when_stages_are_not_neighbours():
    """Chips 0 and 1 joined only through chip 2: chip 2 RECVs and SENDs every x vector."""
    graph = nx.Graph([(0, 2), (2, 1)])
    prog = compile("tiny-llama", HW, chips=2, system=System(HW, graph), context=8)
    assert prog.chips == 3
    relay = prog.instrs[prog.instrs["chip"] == 2]
    ops = relay["op"][relay["queue"] == queue_c2c(HW)]
    assert (ops == Op.RECV).sum() == (ops == Op.SEND).sum() > 0
    for functional in (True, False):
        result = assert_agree(prog, random_inputs(prog), functional)
        assert not isinstance(result, str), result


def _first(prog, op):
    return int(np.flatnonzero(prog.instrs["op"] == op)[0])


def test_transfers_are_checked(four_chips):
    prog = four_chips.expand()  # instructions picked out of every chip's, bodies written out
    cycles = prog.predicted
    recv, send = _first(prog, Op.RECV), _first(prog, Op.SEND)
    # a RECV before its vector lands
    with pytest.raises(ScheduleViolation, match="has landed there yet"):
        simulate(moved(prog, {recv: int(cycles[recv]) - 1}), mode="timing")
    # a SEND a cycle late: its vector has passed the C2C unit
    with pytest.raises(ScheduleViolation, match=r"link \d+ \(chip 0 -> chip 1\)"):
        simulate(moved(prog, {send: int(cycles[send]) + 1}), mode="timing")
    # two SENDs on one link in one cycle (an ICU that dispatches both): the link is busy
    sends = np.flatnonzero((prog.instrs["op"] == Op.SEND) & (prog.instrs["chip"] == 0))
    same = [int(i) for i in sends if prog.instrs["table"][i] == prog.instrs["table"][sends[0]]]
    assert len(same) >= 2
    wide = dataclasses.replace(prog, hw=dataclasses.replace(HW, icu_issue_width=2))
    with pytest.raises(ScheduleViolation, match="the link is busy until cycle"):
        simulate(moved(wide, {same[1]: int(cycles[same[0]])}), mode="timing")


def test_one_chip_and_one_stage_agree():
    """pp=1 on one chip is the single-chip compile."""
    one = compile("tiny-llama", HW, context=8)
    assert simulate(one, mode="timing").cycles == one.predicted_cycles
