"""What the fit admits for a mixture-of-experts model compiles: a chip's stacked experts take more
than their bytes once placed a unit at a time (partition._unit_slack), and the chosen experts'
int8 weights are installed as stored, not converted into the working vectors."""

from __future__ import annotations

import pytest

import lpusim
from compiler import ModelTooLarge, compile
from compiler.passes.partition import Mapping, fit
from models import get_config
from sim import preset, simulate

MIX = get_config("tiny-mixtral")
HW = preset("teaching")


def test_tight_sram_compiles_and_the_fit_names_the_units():
    """Teaching chips of 6,144 bytes a slice hold tiny-mixtral int8 at tp=2,ep=2 with the
    chosen experts installed as stored (converted whole, their working vectors overflowed
    every size up to 7,168); below the least SRAM the fit admits, it names the units' bytes."""
    m = Mapping.parse("tp=2,ep=2")
    hw = HW.replace(mem_slice_bytes=6144)
    program = compile(MIX, hw, chips=m.chips, mapping=m, context=64, weights="int8")
    assert simulate(program, mode="timing").cycles == program.predicted_cycles
    sizes = range(1024, HW.mem_slice_bytes + 1, 256)
    least = next(s for s in sizes if fit(m, MIX, HW.replace(mem_slice_bytes=s), 64, "int8").fits)
    with pytest.raises(ModelTooLarge, match=r"experts placed as units [\d,]+\) of the"):
        compile(MIX, HW.replace(mem_slice_bytes=least - 256), chips=m.chips, mapping=m,
                context=64, weights="int8")  # fmt: skip


def test_quantised_expert_parallel_tokens_are_jaxs():
    """int8 experts installed as stored, on a tp x ep group (native ep=2,pp=2 and tp=2,ep=2:
    tests/e2e/test_expert_parallel.py)."""
    v = lpusim.validate(MIX, HW, tokens=2, chips=4, mapping="tp=2,ep=2", weights="int8")
    assert v.tokens_match and v.within_tolerance, str(v)
    assert v.predicted_cycles == v.simulated_cycles
