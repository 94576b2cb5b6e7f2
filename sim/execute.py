"""`simulate`: run a Program on one of the two executors and collect a SimResult."""

from __future__ import annotations

import numpy as np

from sim.program import Program
from sim.reference import run_reference
from sim.result import SimResult

MODES = ("functional", "timing")
ENGINES = ("numba", "reference")


def simulate(
    program: Program,
    inputs: dict[str, np.ndarray] | None = None,
    *,
    mode: str = "functional",
    engine: str = "numba",
    trace: bool = False,
    share: bool = True,
) -> SimResult:
    """Execute `program`. Functional mode computes every vector (all inputs required) and
    returns the outputs; timing mode only times and checks the schedule. On the numba engine,
    a timing run of several chips simulates identical chips once (`share=False`: each on its
    own); the result's `chip_groups` says which it shared."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; valid modes: {', '.join(MODES)}")
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}; valid engines: {', '.join(ENGINES)}")
    functional = mode == "functional"
    if engine == "reference":
        program = program.expand()  # bodies written out on their chips
    if engine == "reference":
        raw = run_reference(program, inputs, functional=functional, trace=trace)
    else:
        from sim.engine import run_engine

        raw = run_engine(program, inputs, functional=functional, trace=trace, share=share)
    return SimResult(
        hw=program.hw,
        cycles=raw.cycles,
        predicted_cycles=program.predicted_cycles,
        mode=mode,
        engine=engine,
        outputs=raw.outputs,
        busy=raw.counts,
        bytes_read=raw.bytes_read,
        bytes_written=raw.bytes_written,
        instructions=raw.instructions,
        vector_ops=raw.events,
        trace=raw.trace,
        link_bytes=raw.link_bytes,
        chips=program.chips,
        chip_groups=raw.chip_groups,
    )
