"""Identical chips simulated once (sim/engine/share.py): a pipeline's middle stages are one
program shifted in time, so a timing run simulates one of them for all. Sharing must change
nothing but the work: the same cycles, counts, link bytes and violations as every chip's own run,
and a chip that differs from the others in anything is simulated on its own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from compiler import compile
from models import get_config
from sim import ScheduleViolation, preset, simulate
from sim.icu import moved
from sim.isa import Op

HW = preset("teaching")
TINY8 = dataclasses.replace(get_config("tiny-llama"), name="tiny-llama-8", n_layers=8)


@pytest.fixture(scope="module")
def eight_chips():
    return compile(TINY8, HW, chips=8, context=8).expand()  # (share.py: one array)


def _figures(r) -> tuple:
    return (
        r.cycles, r.busy, r.link_bytes.tolist(), r.vector_ops, r.instructions, r.bytes_read,
        r.bytes_written,
    )  # fmt: skip


def _shared_chip(prog) -> int:
    """A chip of a group of several that is not the group's first (the one simulated)."""
    groups = simulate(prog, mode="timing").chip_groups
    return max(groups, key=len)[1]


def test_identical_chips_run_once_with_every_figure_unchanged(eight_chips):
    prog = eight_chips
    shared = simulate(prog, mode="timing")
    alone = simulate(prog, mode="timing", share=False)
    assert _figures(shared) == _figures(alone)
    assert alone.chip_groups == () and alone.chips_simulated is None
    assert sorted(c for g in shared.chip_groups for c in g) == list(range(prog.chips))
    assert shared.chips_simulated == len(shared.chip_groups) < prog.chips
    assert max(len(g) for g in shared.chip_groups) >= 4  # the middle stages
    assert shared.summary()["chips_simulated"] == shared.chips_simulated
    # deterministic: the same groups and figures again
    again = simulate(prog, mode="timing")
    assert _figures(again) == _figures(shared) and again.chip_groups == shared.chip_groups
    # a traced or functional run simulates every chip
    assert simulate(prog, mode="timing", trace=True).chip_groups == ()


def test_a_chip_that_differs_is_simulated_on_its_own(eight_chips):
    prog = eight_chips
    chip = _shared_chip(prog)
    ins = prog.instrs.copy()
    i = int(np.flatnonzero(ins["chip"] == chip)[0])
    ins["src"][i] = -1 if ins["src"][i] != -1 else 0  # only the source tag differs
    other = dataclasses.replace(prog, instrs=ins)
    shared = simulate(other, mode="timing")
    assert (chip,) in shared.chip_groups
    assert _figures(shared) == _figures(simulate(other, mode="timing", share=False))


def _violation(prog, share: bool) -> str:
    with pytest.raises(ScheduleViolation) as e:
        simulate(prog, mode="timing", share=share)
    return str(e.value)


def test_a_fault_on_one_chip_of_a_shared_group_is_caught_as_without_sharing(eight_chips):
    prog = eight_chips
    chip = _shared_chip(prog)
    on = prog.instrs["chip"] == chip
    # a RECV a cycle before its vector lands
    recv = int(np.flatnonzero(on & (prog.instrs["op"] == Op.RECV))[0])
    early = moved(prog, {recv: int(prog.predicted[recv]) - 1})
    message = _violation(early, share=True)
    assert message == _violation(early, share=False)
    assert f"chip {chip}" in message and "has landed there yet" in message
    # a READ of an address that holds another vector
    ins = prog.instrs.copy()
    read = int(np.flatnonzero(on & (ins["op"] == Op.READ))[-1])
    ins["addr"][read] += 1
    wrong = dataclasses.replace(prog, instrs=ins)
    message = _violation(wrong, share=True)
    assert message == _violation(wrong, share=False)
    assert f"chip {chip}" in message
