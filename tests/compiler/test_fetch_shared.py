"""Instruction fetch and encoding chip by chip (compiler/codegen/fetch.py).

A pipeline's stages are bodies placed on their chips (sim/program.py): a body's fetches are
planned once, and each chip plans only its own instructions around it (bridges before it, a tail
after it), so every chip of a stage shape runs the body's plan shifted. Chips planned as a whole
(fetch_and_encode) take the plan of a chip alike shifted: the very Program planning each gives."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

import compiler.codegen.fetch as fetch
from compiler import compile
from models import get_config
from sim import preset, simulate
from sim.isa import Op

# A queue of 32 instructions: the tiny model's queues need IFETCHes.
HW = dataclasses.replace(preset("teaching"), icu_queue_instructions=32)
TINY6 = dataclasses.replace(get_config("tiny-llama"), name="tiny-llama-6", n_layers=6)
TINY8_TP = dataclasses.replace(TINY6, name="tiny-llama-8", n_layers=8)


def test_a_body_is_fetched_alike_on_every_chip_it_is_placed_on():
    prog = compile(TINY6, HW, chips=6, context=8)
    pl = prog.placements
    assert len(pl) == 6 and len(prog.bodies) == prog.meta["shared_programs"] == 2
    assert all((b.instrs["op"] == Op.IFETCH).any() for b in prog.bodies)  # planned once each
    assert (prog.instrs["op"] == Op.IFETCH).any()  # the chips' own: bridges and tails
    assert pl["shift"].tolist() == [s["first_cycle"] for s in prog.meta["stages"]]
    whole = prog.expand()
    for c in (2, 3):  # the body's fetches on each chip it is placed on, shifted
        body = prog.bodies[int(pl["body"][c])]
        ifetch = (whole.instrs["chip"] == c) & (whole.instrs["op"] == Op.IFETCH)
        mine = set(whole.predicted[ifetch].tolist())
        wanted = body.predicted[body.instrs["op"] == Op.IFETCH] + int(pl["shift"][c])
        assert set(wanted.tolist()) <= mine
    for engine in ("numba", "reference"):
        assert simulate(prog, mode="timing", engine=engine).cycles == prog.predicted_cycles


def test_chips_planned_as_a_whole_share_a_plan_and_get_the_same_instructions(monkeypatch):
    whole = compile(TINY6, HW, chips=6, context=8).expand()
    keep = whole.instrs["op"] != Op.IFETCH
    ins, cycles = whole.instrs[keep], whole.predicted[keep]
    words = int(whole.instrs["addr"][~keep].min())
    chips, plan = [], fetch._plan_chip
    monkeypatch.setattr(fetch, "_plan_chip", lambda *a: chips.append(a[3]) or plan(*a))
    shared = fetch.fetch_and_encode(HW, ins, cycles, words)
    shared_plans = len(chips)
    unique = itertools.count()
    monkeypatch.setattr(fetch, "shape_of", lambda fields, cycles: next(unique))  # none alike
    chips.clear()
    alone = fetch.fetch_and_encode(HW, ins, cycles, words)
    assert shared_plans < len(chips) == 6
    for a, b in zip(shared, alone, strict=True):
        assert np.array_equal(a, b)


def test_chips_alike_around_a_body_take_one_plan_and_get_the_same_program(monkeypatch):
    """A chip whose own instructions are another's shifted takes that chip's plan around their
    body shifted: the very Program planning each on its own gives."""
    import compiler.codegen.pipeline as pipeline

    shared = compile(TINY8_TP, HW, chips=8, mapping="tp=2,pp=4", context=8)
    unique = itertools.count()
    monkeypatch.setattr(pipeline, "shape_of", lambda fields, cycles: next(unique))  # none alike
    alone = compile(TINY8_TP, HW, chips=8, mapping="tp=2,pp=4", context=8)
    assert alone.content_hash == shared.content_hash
    assert simulate(shared, mode="timing").cycles == shared.predicted_cycles
