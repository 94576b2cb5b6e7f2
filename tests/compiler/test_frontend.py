import jax.numpy as jnp
import numpy as np
import pytest

from compiler import UnsupportedPrimitive, compile, lower
from compiler.ir.graph import Kind, verify
from compiler.passes.tile import tile
from sim.isa import Op


def test_unsupported_primitive_names_it_its_shapes_and_the_line():
    def f(x):
        return jnp.sin(x) * 2.0  # sin of a run-time value has no lowering

    x = np.ones((2, 5), np.float32)
    with pytest.raises(UnsupportedPrimitive) as info:
        compile(f, "teaching", args={"x": x})
    msg = str(info.value)
    assert "'sin'" in msg and "float32[2, 5]" in msg and "test_frontend.py:" in msg
    assert "Supported:" in msg and "dot_general" in msg


def test_runtime_index_is_unsupported():
    def f(x, i):
        return x[i]

    with pytest.raises(UnsupportedPrimitive, match="run time|no lowering"):
        compile(f, "teaching", args={"x": np.ones((4, 3), np.float32), "i": np.int32(1)})


def test_constants_are_folded_and_movement_is_free():
    def f(x):
        t = jnp.cos(jnp.arange(6.0) * 0.5)  # folded at compile time
        y = (x * t).reshape(2, 3, 6).reshape(6, 6)  # keeps the last axis: no data movement
        return y + jnp.sum(y, axis=-1, keepdims=True)

    g = lower(f, {"x": np.ones((6, 6), np.float32)})
    verify(g)
    kinds = [n.kind for n in g.nodes.values()]
    assert Kind.CONST in kinds and Kind.LANE_SUM in kinds
    # The reshapes folded away; broadcasting the splat sum along lanes aliases its vectors.
    assert kinds.count(Kind.RELAYOUT) == 1
    vp = tile(g, 16)
    assert not [op for op in vp.ops if op.op == Op.PERMUTE]
    assert "lambda" in str(g) and "LANE_SUM" in str(g)


def test_decompose_removes_ops_without_instructions():
    def f(x, y):
        return x / y, 1.0 / (1.0 + jnp.exp(-x))

    g = lower(f, {"x": np.ones((2, 3), np.float32), "y": np.ones((2, 3), np.float32)})
    assert not {Kind.DIV, Kind.LOGISTIC, Kind.REDUCE_SUM} & {n.kind for n in g.nodes.values()}
