"""Shared test settings: hypothesis profiles sized for a 2-core CI machine."""

import pytest
from hypothesis import HealthCheck, settings

import sim.execute
from sim.result import SimResult

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("default")


@pytest.fixture(autouse=True)
def predicted_cycles_equal_simulated(monkeypatch):
    """Every program any test simulates to completion must take exactly the cycles its schedule
    predicted: a difference is a bug in the scheduler or in an executor."""

    class CheckedResult(SimResult):
        def __post_init__(self):
            assert self.cycles == self.predicted_cycles, (
                f"simulated {self.cycles} cycles, the schedule predicted {self.predicted_cycles}"
            )

    monkeypatch.setattr(sim.execute, "SimResult", CheckedResult)
