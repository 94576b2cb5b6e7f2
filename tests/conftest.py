"""Shared test settings: hypothesis profiles sized for a 2-core CI machine, and one JAX
compilation cache on disk for the whole run (the two pytest workers and each notebook's kernel
compile the same reference decode steps; a cached executable is the compiled one, bit for bit)."""

import os
from pathlib import Path

# Before jax is imported anywhere (it reads these once); the kernels the notebook tests start
# inherit them. A developer's own settings win.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".jax_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

import sim.execute  # noqa: E402
from sim.result import SimResult  # noqa: E402

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
