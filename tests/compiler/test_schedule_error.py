"""What the scheduler cannot place is a one-line ScheduleError naming the resources, never an
assertion."""

import numpy as np
import pytest

import compiler.schedule.listsched as listsched
from compiler import compile
from sim.errors import LpuError, ScheduleError


def test_a_piece_that_finds_no_slot_is_a_schedule_error(monkeypatch):
    monkeypatch.setattr(listsched, "LIMIT_ATTEMPTS", 1)  # as if the chip had no room at all
    x = np.ones((4, 40), np.float32)
    with pytest.raises(ScheduleError) as e:
        compile(lambda x: x * x + x, "teaching", args={"x": x})
    text = str(e.value)
    assert "\n" not in text and "no cycle found" in text and "streams_per_direction" in text


@pytest.mark.parametrize("chips", [True, 1.0, "1", 0])
def test_compile_refuses_chip_counts_that_are_not_whole_numbers(chips):
    with pytest.raises(LpuError, match="whole number of chips"):
        compile("tiny-llama", "teaching", chips=chips)
