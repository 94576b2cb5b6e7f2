"""Instruction fetch and encoding chip by chip (compiler/codegen/fetch.py): a chip whose queues
and cycles are another's shifted in time takes that chip's plan shifted. That must give the
very Program planning every chip on its own gives."""

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


def _planned(monkeypatch) -> list:
    """The chips fetch_and_encode plans (the others take a plan shifted)."""
    chips, plan = [], fetch._plan_chip
    monkeypatch.setattr(fetch, "_plan_chip", lambda *a: chips.append(a[3]) or plan(*a))
    return chips


def test_chips_alike_share_their_fetch_plan_and_get_the_same_program(monkeypatch):
    planned = _planned(monkeypatch)
    shared = compile(TINY6, HW, chips=6, context=8)
    shared_plans = len(planned)
    ifetch = shared.instrs["op"] == Op.IFETCH
    assert ifetch.any()
    on = [np.flatnonzero(ifetch & (shared.instrs["chip"] == c)) for c in (2, 3)]
    shift = shared.meta["stages"][3]["first_cycle"] - shared.meta["stages"][2]["first_cycle"]
    assert np.array_equal(shared.predicted[on[1]], shared.predicted[on[0]] + shift)
    unique = itertools.count()
    monkeypatch.setattr(fetch, "_shape", lambda fields, cycles: next(unique))  # none alike
    planned.clear()
    alone = compile(TINY6, HW, chips=6, context=8)
    assert alone.content_hash == shared.content_hash
    assert shared_plans < len(planned)  # stage compiles, and the pipeline's six chips
    assert simulate(shared, mode="timing").cycles == shared.predicted_cycles
