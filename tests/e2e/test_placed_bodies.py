"""Bodies placed on chips (sim/program.py) and run once (sim/engine/segments.py).

A pipeline's stage Program is a body placed on each of its chips, the transfers of x each chip's
own. The written-out Program (`expand`) is what it means; the timing engine runs each body once
for the chips alike, and each chip's own instructions around it. That must change nothing but
the work: the same cycles, counts, link bytes and violations as every chip's own run."""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np
import pytest

from compiler import compile
from models import get_config
from sim import ScheduleViolation, preset, simulate
from sim.engine import segments
from sim.isa import Op
from sim.program import Program
from sim.system import System

HW = preset("teaching")
TINY = get_config("tiny-llama")
TINY8 = dataclasses.replace(TINY, name="tiny-llama-8", n_layers=8)
CASES = {
    "pp=8": lambda: compile(TINY8, HW, chips=8, context=8),
    "tp=2,pp=4": lambda: compile(TINY8, HW, chips=8, mapping="tp=2,pp=4", context=8),
    "tp=2,pp=3": lambda: compile(TINY, HW, chips=6, mapping="tp=2,pp=3", context=8),
    "ep=2,pp=2": lambda: compile("tiny-mixtral", HW, chips=4, mapping="ep=2,pp=2", context=8),
    "relay": lambda: compile(
        TINY, HW, chips=2, system=System(HW, nx.Graph([(0, 2), (2, 1)])), context=8
    ),  # fmt: skip
}


def _figures(r) -> tuple:
    return (
        r.cycles, r.busy, r.link_bytes.tolist(), r.vector_ops, r.instructions, r.bytes_read,
        r.bytes_written,
    )  # fmt: skip


@pytest.fixture(scope="module", params=sorted(CASES))
def placed(request):
    return request.param, CASES[request.param]()


def test_bodies_run_once_with_every_figure_unchanged(placed):
    name, prog = placed
    whole = prog.expand()
    assert prog.placed and prog.instruction_count() == len(whole.instrs)
    assert prog.vector_instruction_count() == int(whole.instrs["repeat"].sum())
    assert prog.sram_bytes_used() == whole.sram_bytes_used()
    shared = simulate(prog, mode="timing")
    assert segments.gave_up is None, f"{name}: the placed run gave up at check {segments.gave_up}"
    alone = simulate(prog.expand(), mode="timing", share=False)
    assert _figures(shared) == _figures(alone)
    assert shared.cycles == prog.predicted_cycles
    assert sorted(c for g in shared.chip_groups for c in g) == list(range(prog.chips))
    if name != "relay":  # stages alike, and a tensor-parallel group's ranks, run their body once
        assert len(shared.chip_groups) < len(prog.placements)
    assert _figures(simulate(prog, mode="timing")) == _figures(shared)  # deterministic


def test_a_placed_program_saves_and_loads(placed, tmp_path):
    _, prog = placed
    path = tmp_path / "placed.lpuprog"
    prog.save(path)
    back = Program.load(path, prog.hw)
    assert back.content_hash == prog.content_hash
    for a, b in ((back.expand(), prog.expand()),):
        assert np.array_equal(a.instrs, b.instrs) and np.array_equal(a.predicted, b.predicted)
    assert simulate(back, mode="timing").cycles == prog.predicted_cycles


def _violation(prog) -> str:
    with pytest.raises(ScheduleViolation) as e:
        simulate(prog, mode="timing")
    return str(e.value)


def test_a_fault_in_a_chips_own_instructions_is_caught_as_written_out():
    """A RECV of x one cycle early (its prediction moved alike): the chip's own run fails, and
    the written-out program reports exactly its violation."""
    prog = CASES["tp=2,pp=4"]()
    ins, pred = prog.instrs.copy(), prog.predicted.copy()
    i = int(np.flatnonzero((ins["op"] == Op.RECV) & (ins["chip"] == 3))[0])
    after = np.flatnonzero((ins["chip"] == ins["chip"][i]) & (ins["queue"] == ins["queue"][i]))
    after = after[after > i]
    ins["delay"][i] -= 1
    if len(after):
        ins["delay"][after[0]] += 1
    pred[i] -= 1
    early = dataclasses.replace(prog, instrs=ins, predicted=pred)
    message = _violation(early)
    assert segments.gave_up is not None
    assert message == _violation(early.expand())
    assert "chip 3" in message and "has landed there yet" in message


def test_a_fault_in_a_body_is_caught_as_written_out():
    """A READ of the wrong address in a body: every chip it is placed on would fail; the
    written-out program reports the first."""
    prog = CASES["pp=8"]()
    body = prog.bodies[0]
    ins = body.instrs.copy()
    read = int(np.flatnonzero(ins["op"] == Op.READ)[-1])
    ins["addr"][read] += 1
    wrong = dataclasses.replace(prog, bodies=(dataclasses.replace(body, instrs=ins),
                                              *prog.bodies[1:]))  # fmt: skip
    message = _violation(wrong)
    assert message == _violation(wrong.expand())
