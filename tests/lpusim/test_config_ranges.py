"""The ends of every hardware field's valid range (sim.hardware.FIELD_RANGES) are configs the
compiler schedules and the simulator runs: a config the validator accepts never reaches a
scheduler assertion."""

import pytest

from compiler import compile
from sim import simulate
from sim.hardware import FIELD_RANGES, preset

# The extremes the scheduler and the engine are sensitive to (the rest scale a capacity only).
EXTREMES = [
    {"streams_per_direction": FIELD_RANGES["streams_per_direction"][0]},
    {"mem_slices": FIELD_RANGES["mem_slices"][0]},
    {"mxm_fp16_cycles_per_vector": FIELD_RANGES["mxm_fp16_cycles_per_vector"][1]},
    {"mxm_latency_cycles": FIELD_RANGES["mxm_latency_cycles"][1]},
    {"mem_write_latency_cycles": FIELD_RANGES["mem_write_latency_cycles"][1]},
    {"vxm_large_latency_cycles": FIELD_RANGES["vxm_large_latency_cycles"][1]},
    {"sxm_latency_cycles": FIELD_RANGES["sxm_latency_cycles"][1]},
    {"vxm_alus": 1, "sxm_units_per_hemisphere": 1, "mxm_install_vectors_per_cycle": 1},
    {"clock_hz": FIELD_RANGES["clock_hz"][0]},
    {"icu_sync_latency_cycles": FIELD_RANGES["icu_sync_latency_cycles"][1]},
    {"mxm_accumulator_vectors": FIELD_RANGES["mxm_accumulator_vectors"][0]},
    {"icu_issue_width": FIELD_RANGES["icu_issue_width"][1]},
]


@pytest.mark.parametrize("changes", EXTREMES, ids=lambda c: ",".join(c))
def test_configs_at_the_ends_of_the_ranges_compile_and_run(changes):
    hw = preset("teaching").replace(name="edge", **changes)
    program = compile("tiny-llama", hw)  # context 64
    result = simulate(program, mode="timing", engine="reference")
    assert result.cycles == program.predicted_cycles > 0
