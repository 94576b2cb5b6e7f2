"""decode_step traces to a jaxpr the compiler's frontend can lower.

The frontend supports the primitives in SUPPORTED, inlines call wrappers, and constant-folds any
equation whose inputs are all constants (e.g. cos/sin of the rotary angles at a static position).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.extend.core import ClosedJaxpr, Jaxpr, Literal

from models import decode_step, embed, get_config, init_cache, init_params

SUPPORTED = frozenset(
    {
        "add",
        "sub",
        "mul",
        "div",
        "max",
        "min",
        "neg",
        "exp",
        "rsqrt",
        "logistic",
        "integer_pow",
        "convert_element_type",
        "reduce_sum",
        "reduce_max",
        "dot_general",
        "broadcast_in_dim",
        "reshape",
        "transpose",
        "squeeze",
        "expand_dims",
        "slice",
        "concatenate",
        "dynamic_update_slice",
        "select_n",
    }
)
# Calls the frontend inlines; JAX >= 0.7 names the pjit primitive "jit".
CALL_WRAPPERS = frozenset({"pjit", "jit"})


def lowering_problems(jaxpr: Jaxpr, constant_inputs: list[bool]) -> tuple[list[str], list[bool]]:
    """Equations the frontend could not lower, and which outputs of `jaxpr` are constants.

    constant_inputs says which of jaxpr.invars are compile-time constants.
    """
    constant = {v for v, c in zip(jaxpr.invars, constant_inputs, strict=True) if c}
    constant |= set(jaxpr.constvars)

    def is_constant(atom) -> bool:
        return isinstance(atom, Literal) or atom in constant

    problems = []
    for eqn in jaxpr.eqns:
        inputs_constant = [is_constant(a) for a in eqn.invars]
        name = eqn.primitive.name
        if name in CALL_WRAPPERS:
            inner: ClosedJaxpr = eqn.params["jaxpr"]
            inner_problems, outputs_constant = lowering_problems(inner.jaxpr, inputs_constant)
            problems += inner_problems
            constant |= {v for v, c in zip(eqn.outvars, outputs_constant, strict=True) if c}
        elif all(inputs_constant):
            constant |= set(eqn.outvars)  # folded at compile time, whatever the primitive
        elif name not in SUPPORTED:
            problems.append(f"unsupported primitive {name}: {eqn}")
        elif name == "dynamic_update_slice" and not all(inputs_constant[2:]):
            problems.append(f"dynamic_update_slice at a non-constant index: {eqn}")
    return problems, [is_constant(v) for v in jaxpr.outvars]


def decode_jaxpr(cfg, pos: int, context: int) -> ClosedJaxpr:
    params = init_params(cfg)
    step = functools.partial(decode_step, cfg=cfg, pos=pos)
    return jax.make_jaxpr(step)(params, embed(params, 1), init_cache(cfg, context))


def check(closed: ClosedJaxpr) -> list[str]:
    # Inputs (weights, activation, cache) are runtime values; closed-over consts are constants.
    problems, _ = lowering_problems(closed.jaxpr, [False] * len(closed.jaxpr.invars))
    return problems


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-f32"])
@pytest.mark.parametrize("pos", [0, 5])
def test_decode_step_uses_only_supported_primitives(name, pos):
    cfg = get_config(name)
    closed = decode_jaxpr(cfg, pos, context=8)
    assert check(closed) == []
    used = {eqn.primitive.name for eqn in closed.jaxpr.eqns}
    assert {"dot_general", "dynamic_update_slice", "rsqrt", "logistic", "reduce_max"} <= used
    logits, k_cache = closed.out_avals[0], closed.out_avals[1]
    assert logits.shape == (1, cfg.vocab_size) and logits.dtype == jnp.float32
    assert k_cache.shape == (cfg.n_kv_heads, 8, cfg.head_dim) and k_cache.dtype == cfg.np_dtype


@settings(max_examples=12, deadline=None)
@given(
    kv=st.integers(1, 3),
    group=st.integers(1, 3),
    half_head=st.integers(1, 5),
    n_layers=st.integers(1, 2),
    dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
    context=st.integers(1, 12),
    data=st.data(),
)
def test_decode_step_traces_for_drawn_shapes(kv, group, half_head, n_layers, dtype, context, data):
    heads = kv * group
    cfg = dataclasses.replace(
        get_config("tiny-llama"),
        name="drawn",
        d_model=heads * 2 * half_head,
        n_heads=heads,
        n_kv_heads=kv,
        n_layers=n_layers,
        dtype=dtype,
    )
    pos = data.draw(st.integers(0, context - 1), label="pos")
    assert check(decode_jaxpr(cfg, pos, context)) == []


def test_checker_flags_unsupported_and_folds_constants():
    def f(x):
        table = jnp.tanh(jnp.arange(4.0))  # constant: folded, any primitive is fine
        return jnp.tanh(x) + table  # tanh of a runtime value: not lowerable

    problems = check(jax.make_jaxpr(f)(jnp.ones(4)))
    assert len(problems) == 1 and "tanh" in problems[0]

    inner = jax.jit(lambda x: jnp.sin(x) * 2.0)
    problems = check(jax.make_jaxpr(lambda x: inner(x) + inner(jnp.ones(4)))(jnp.ones(4)))
    assert len(problems) == 1 and "sin" in problems[0]
