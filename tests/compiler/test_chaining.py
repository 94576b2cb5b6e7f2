"""Stream chaining: a consumer takes a unit's results straight from the stream they flow on. The
results are bit for bit the same as through SRAM, in fewer cycles and instructions."""

import jax
import numpy as np
import pytest

from compiler import compile
from lpusim.api import decode_inputs
from models import get_config, init_cache, init_params
from sim import simulate
from sim.isa import Op


@pytest.mark.parametrize("model,hw", [("tiny-llama", "teaching"), ("tiny-gpt2", "groq-tsp-v1")])
def test_chaining_saves_cycles_and_changes_no_bit(model, hw):
    cfg = get_config(model)
    chained = compile(model, hw, context=6, pos=4)
    through_sram = compile(model, hw, context=6, pos=4, chaining=False)
    writes = [int((p.instrs["op"] == Op.WRITE).sum()) for p in (chained, through_sram)]
    assert chained.predicted_cycles < through_sram.predicted_cycles
    assert writes[0] < writes[1] and len(chained.instrs) < len(through_sram.instrs)
    rng = np.random.default_rng(3)
    cache = jax.tree.map(lambda c: rng.normal(size=c.shape).astype(c.dtype), init_cache(cfg, 6))
    x = rng.normal(size=(1, cfg.d_model)).astype(np.float32)
    inputs = decode_inputs(init_params(cfg, 3), x, cache)
    a = simulate(chained, inputs)
    b = simulate(through_sram, inputs)
    assert a.cycles == chained.predicted_cycles and b.cycles == through_sram.predicted_cycles
    for name, value in b.outputs.items():
        np.testing.assert_array_equal(a.outputs[name], value, err_msg=name)
