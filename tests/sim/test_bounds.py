"""Lower bounds (sim/bounds.py): never above what the simulator measures, and each term what the
machine's resources allow for the Program's work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import compile
from sim import preset, simulate
from sim.bounds import bounds, dependency_bound, resource_bounds
from sim.isa import Op


def mm(x, w):
    return jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 8), st.integers(1, 60), st.integers(1, 60))
def test_bounds_never_exceed_the_simulated_cycles(m, k, n):
    args = {
        "x": jax.ShapeDtypeStruct((m, k), jnp.float32),
        "w": jax.ShapeDtypeStruct((k, n), jnp.float16),
    }
    prog = compile(mm, "teaching", args=args, params=("w",))
    cycles = simulate(prog, mode="timing").cycles
    b = bounds(prog)
    assert 0 < b.cycles <= cycles and b.terms[b.binding] == b.cycles
    assert all(v <= cycles for v in b.terms.values())


@pytest.mark.parametrize("model,hw", [("tiny-llama", "teaching"), ("tiny-gpt2", "groq-tsp-v1")])
def test_model_bounds(model, hw):
    prog = compile(model, hw, context=8)
    cycles = simulate(prog, mode="timing").cycles
    b = bounds(prog)
    assert b.cycles <= cycles and 0 < b.fraction(cycles) <= 1


def test_resource_terms_count_the_work():
    hw = preset("teaching")
    args = {
        "x": jax.ShapeDtypeStruct((3, 40), jnp.float32),
        "w": jax.ShapeDtypeStruct((40, 33), jnp.float16),
    }
    prog = compile(mm, hw, args=args, params=("w",))
    ins = prog.instrs
    installs = int(ins["repeat"][ins["op"] == Op.INSTALL].sum())
    matmuls = int(ins["repeat"][ins["op"] == Op.MATMUL].sum())
    assert installs == 40 * 3  # every row of every (K tile, N tile) pair, once
    t = resource_bounds(prog)
    per_cycle = hw.mxm_planes * hw.mxm_install_vectors_per_cycle
    assert t["mxm_install"] == -(-installs // per_cycle)
    # FP16 inputs (x is cast to w's float16): the pipeline takes each for several cycles
    assert t["mxm_compute"] == -(-matmuls * hw.mxm_fp16_cycles_per_vector // hw.mxm_planes)


def test_dependency_bound_of_a_chain_is_its_latencies():
    """x -> exp -> exp -> exp on one vector: no resource ever conflicts, so the dependency bound
    is the schedule itself."""

    def f(x):
        return jnp.exp(jnp.exp(jnp.exp(x)))

    x = np.zeros((1, 8), np.float32)
    prog = compile(f, "teaching", args={"x": x})
    assert dependency_bound(prog) == simulate(prog, mode="timing").cycles
