"""Frontend: a JAX function -> the graph IR.

`jax.make_jaxpr` traces the function on abstract arguments; each equation becomes graph nodes
through the LOWERINGS table (one row per primitive). Equations whose operands are all constants
are evaluated at compile time (rotary tables for a static position, masks, iota...). Call-like
primitives (pjit, custom_jvp_call, ...) are inlined. Every pure data-movement primitive becomes one
RELAYOUT node whose index map is computed by running the primitive itself on index arrays.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np

from compiler.ir.graph import Graph, Kind
from sim.errors import LpuError


class UnsupportedPrimitive(LpuError, NotImplementedError):
    """A JAX primitive this compiler cannot lower: names it, its shapes and the source line."""


@dataclass(frozen=True)
class Selector:
    """Integers chosen at run time by a TOPK node (e.g. expert ids), known here only as *which*
    of its k choices each element is (`lanes`, shaped like the value), plus a constant offset.
    They may select a unit of a stacked parameter (dynamic_slice) and nothing else."""

    topk: int  # graph node id of the TOPK
    lanes: np.ndarray  # (value shape) int: which choice
    units: int  # choices lie in [0, units)
    offset: int = 0


Value = int | np.ndarray | Selector  # a graph node id, a compile-time constant, or a choice


def _source(eqn) -> str:
    """The user's source line of an equation, as `file.py:line:col (function)`."""
    try:
        from jax._src import source_info_util

        where = source_info_util.summarize(eqn.source_info)
    except (ImportError, AttributeError):
        return "?"
    return os.path.basename(where)


def _aval(v):
    return v.aval


class _Builder:
    def __init__(self):
        self.graph = Graph()
        self.src = ""

    # -- helpers used by the lowering rows -------------------------------------------------------

    def node(self, v: Value, shape, dtype) -> int:
        """A node for a value of `shape`: constants become CONST nodes, and operands with size-1
        axes (elementwise primitives broadcast them implicitly) get a broadcasting RELAYOUT."""
        shape = tuple(shape)
        if isinstance(v, np.ndarray):
            arr = np.broadcast_to(v, shape).astype(dtype)
            return self.graph.add(Kind.CONST, (), shape, arr.dtype.name, {"value": arr}, self.src)
        have = self.graph.nodes[v].shape
        if have != shape:
            index = np.broadcast_to(np.arange(int(np.prod(have))).reshape(have), shape)
            return self.relayout([v], np.ascontiguousarray(index), self.graph.nodes[v].dtype)
        return v

    def shape(self, v: Value):
        return tuple(v.shape) if isinstance(v, np.ndarray) else self.graph.nodes[v].shape

    def unary(self, kind: Kind, x: int, dtype=None, attrs=None) -> int:
        n = self.graph.nodes[x]
        return self.graph.add(kind, (x,), n.shape, dtype or n.dtype, attrs or {}, self.src)

    def binary(self, kind: Kind, a: Value, b: Value, shape, dtype) -> int:
        g = self.graph
        if isinstance(a, np.ndarray) and kind in (Kind.ADD, Kind.MUL, Kind.MAX, Kind.MIN):
            a, b = b, a
        if isinstance(b, np.ndarray) and not isinstance(a, np.ndarray):
            flat = np.asarray(b, np.float64).ravel()
            if flat.size and np.all(flat == flat[0]) and np.isfinite(flat[0]):
                c = float(flat[0])
                if kind == Kind.DIV:
                    kind, c = Kind.MUL, 1.0 / c
                if kind == Kind.SUB:
                    kind, c = Kind.ADD, -c
                a = self.node(a, shape, dtype)
                return g.add(kind, (a,), shape, dtype, {"imm": c}, self.src)
        if isinstance(a, np.ndarray) and kind == Kind.SUB:  # c - x = (-x) + c
            return self.binary(
                Kind.ADD, self.unary(Kind.NEG, self.node(b, shape, dtype)), a, shape, dtype
            )
        a, b = self.node(a, shape, dtype), self.node(b, shape, dtype)
        return g.add(kind, (a, b), shape, dtype, {}, self.src)

    def relayout(self, data: list[Value], index: np.ndarray, dtype) -> int:
        nodes = [v if isinstance(v, int) else self.node(v, v.shape, dtype) for v in data]
        return self.graph.add(
            Kind.RELAYOUT, nodes, index.shape, dtype, {"index": index.astype(np.int64)}, self.src
        )


# --- lowering rows --------------------------------------------------------------------------------

ELEMENTWISE = {
    "add": Kind.ADD,
    "sub": Kind.SUB,
    "mul": Kind.MUL,
    "div": Kind.DIV,
    "max": Kind.MAX,
    "min": Kind.MIN,
}
UNARY = {
    "neg": Kind.NEG,
    "exp": Kind.EXP,
    "rsqrt": Kind.RSQRT,
    "logistic": Kind.LOGISTIC,
    "tanh": Kind.TANH,
}
# Pure data movement: how many leading operands are data (None: all); the rest must be constants.
MOVEMENT = {
    "broadcast_in_dim": 1,
    "reshape": 1,
    "transpose": 1,
    "squeeze": 1,
    "expand_dims": 1,
    "slice": 1,
    "rev": 1,
    "copy": 1,
    "copy_p": 1,
    "concatenate": None,
    "dynamic_slice": 1,
    "dynamic_update_slice": 2,
    "pad": 1,
    "gather": 1,
}
INLINE = {
    "pjit": "jaxpr",
    "jit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
}


def _lower_movement(b: _Builder, eqn, vals):
    n_data = MOVEMENT[eqn.primitive.name]
    n_data = len(vals) if n_data is None else n_data
    data, rest = vals[:n_data], vals[n_data:]
    if not all(isinstance(v, np.ndarray) for v in rest):
        raise _unsupported(eqn, b.src, "its index operands are computed at run time")
    if eqn.primitive.name == "pad" and float(np.asarray(rest[0])) != 0.0:
        raise _unsupported(eqn, b.src, "only zero padding is supported")
    idx, offset = [], 0
    for v in data:
        size = int(np.prod(b.shape(v)))
        idx.append(np.arange(offset, offset + size, dtype=np.int32).reshape(b.shape(v)))
        offset += size
    if eqn.primitive.name == "pad":
        rest = [np.int32(-1)]
    index = _moved(eqn.primitive.name, idx, eqn.params)
    if index is not None:
        index = np.array(index)  # (a view of idx, perhaps read-only: a copy of its own)
    else:  # the primitive itself says where each element goes
        moved = eqn.primitive.bind(*map(jnp.asarray, idx), *map(jnp.asarray, rest), **eqn.params)
        index = np.asarray(moved)
    dtype = np.dtype(_aval(eqn.outvars[0]).dtype).name
    if all(isinstance(v, np.ndarray) for v in data):  # everything constant
        flat = np.concatenate([np.asarray(v).ravel() for v in data])
        return [np.where(index >= 0, flat[np.maximum(index, 0)], 0).astype(dtype)]
    return [b.relayout(data, index, dtype)]


def _moved(name: str, idx: list[np.ndarray], params) -> np.ndarray | None:
    """The index arrays as the plainest movements move them, in NumPy (as jax.lax defines them,
    without compiling a program for each shape); None for the others."""
    if name == "reshape" and params.get("dimensions") is None:
        return idx[0].reshape(params["new_sizes"])
    if name == "broadcast_in_dim":
        shape, dims = tuple(params["shape"]), tuple(params["broadcast_dimensions"])
        kept = [idx[0].shape[dims.index(d)] if d in dims else 1 for d in range(len(shape))]
        return np.broadcast_to(idx[0].reshape(kept), shape)
    if name == "squeeze":
        return np.squeeze(idx[0], axis=tuple(params["dimensions"]))
    if name == "slice":
        strides = params["strides"] or (1,) * idx[0].ndim
        return idx[0][tuple(map(slice, params["start_indices"], params["limit_indices"], strides))]
    if name == "concatenate":
        return np.concatenate(idx, axis=params["dimension"])
    return None


def _transpose_to(b: _Builder, x: int, perm: list[int]) -> int:
    if perm == sorted(perm):
        return x
    shape = b.shape(x)
    index = np.arange(int(np.prod(shape))).reshape(shape).transpose(perm)
    return b.relayout([x], index, b.graph.nodes[x].dtype)


def _lower_dot(b: _Builder, eqn, vals):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs_aval, rhs_aval = _aval(eqn.invars[0]), _aval(eqn.invars[1])
    if len(lc) != 1:
        raise _unsupported(eqn, b.src, f"{len(lc)} contracting dimensions (1 is supported)")
    lhs = b.node(vals[0], lhs_aval.shape, lhs_aval.dtype)
    rhs = b.node(vals[1], rhs_aval.shape, rhs_aval.dtype)
    lfree = [d for d in range(len(lhs_aval.shape)) if d not in lc and d not in lb]
    rfree = [d for d in range(len(rhs_aval.shape)) if d not in rc and d not in rb]
    if not rfree:
        raise _unsupported(eqn, b.src, "a right operand with no free dimension")
    lhs = _transpose_to(b, lhs, [*lb, *lfree, *lc])
    outer, n = rfree[:-1], rfree[-1]
    if [*rb, *outer, n, *rc] == list(range(len(rhs_aval.shape))):
        transposed = True
    else:
        transposed = False
        rhs = _transpose_to(b, rhs, [*rb, *outer, *rc, n])
    out_aval = _aval(eqn.outvars[0])
    out = b.graph.add(
        Kind.DOT,
        (lhs, rhs),
        out_aval.shape,
        "float32",
        {"n_batch": len(lb), "n_outer": len(outer), "rhs_transposed": transposed},
        b.src,
    )
    if np.dtype(out_aval.dtype).name != "float32":
        out = b.unary(Kind.CONVERT, out, np.dtype(out_aval.dtype).name)
    return [out]


def _lower_reduce(kind: Kind):
    def lower(b: _Builder, eqn, vals):
        x = b.node(vals[0], _aval(eqn.invars[0]).shape, _aval(eqn.invars[0]).dtype)
        axes = tuple(sorted(int(a) for a in eqn.params["axes"]))
        if not axes:
            return [x]
        out = _aval(eqn.outvars[0])
        return [b.graph.add(kind, (x,), out.shape, b.graph.nodes[x].dtype, {"axes": axes}, b.src)]

    return lower


def _lower_convert(b: _Builder, eqn, vals):
    new = np.dtype(eqn.params["new_dtype"]).name
    x = vals[0]
    if b.graph.nodes[x].dtype == new:
        return [x]
    return [b.unary(Kind.CONVERT, x, new)]


def _lower_integer_pow(b: _Builder, eqn, vals):
    y = int(eqn.params["y"])
    if y not in (1, 2, 3, 4):
        raise _unsupported(eqn, b.src, f"integer_pow with y={y} (1..4 are supported)")
    x = out = vals[0]
    shape, dtype = b.shape(x), b.graph.nodes[x].dtype
    for _ in range(y - 1):
        out = b.binary(Kind.MUL, out, x, shape, dtype)
    return [out]


def _lower_select(b: _Builder, eqn, vals):
    pred, *cases = vals
    if len(cases) != 2:
        raise _unsupported(eqn, b.src, f"select_n with {len(cases)} cases (2 are supported)")
    out = _aval(eqn.outvars[0])
    if isinstance(pred, np.ndarray) and np.all(pred == pred.ravel()[0]):
        return [cases[int(bool(pred.ravel()[0]))]]
    p = b.node(pred, out.shape, "bool")
    on_false, on_true = (b.node(c, out.shape, out.dtype) for c in cases)
    return [b.graph.add(Kind.SELECT, (p, on_true, on_false), out.shape, out.dtype, {}, b.src)]


def _lower_elementwise(kind: Kind):
    def lower(b: _Builder, eqn, vals):
        out = _aval(eqn.outvars[0])
        return [b.binary(kind, vals[0], vals[1], out.shape, np.dtype(out.dtype).name)]

    return lower


def _lower_unary(kind: Kind):
    def lower(b: _Builder, eqn, vals):
        return [b.unary(kind, vals[0])]

    return lower


LOWERINGS: dict[str, Callable] = {
    **{p: _lower_elementwise(k) for p, k in ELEMENTWISE.items()},
    **{p: _lower_unary(k) for p, k in UNARY.items()},
    **dict.fromkeys(MOVEMENT, _lower_movement),
    "square": lambda b, eqn, v: [
        b.binary(Kind.MUL, v[0], v[0], b.shape(v[0]), b.graph.nodes[v[0]].dtype)
    ],
    "integer_pow": _lower_integer_pow,
    "convert_element_type": _lower_convert,
    "dot_general": _lower_dot,
    "reduce_sum": _lower_reduce(Kind.REDUCE_SUM),
    "reduce_max": _lower_reduce(Kind.REDUCE_MAX),
    "select_n": _lower_select,
}


# --- run-time choices (top_k) ---------------------------------------------------------------------


def _lower_top_k(b: _Builder, eqn, vals):
    x = vals[0]
    shape = b.shape(x)
    k = int(eqn.params["k"])
    if int(np.prod(shape[:-1])) != 1:
        raise _unsupported(
            eqn, b.src, f"top_k over {list(shape)}: one row (one token) is supported"
        )
    if eqn.params.get("axis", len(shape) - 1) not in (-1, len(shape) - 1):
        raise _unsupported(eqn, b.src, "top_k over an axis other than the last")
    both = (*shape[:-1], 2 * k)
    x = b.node(x, shape, _aval(eqn.invars[0]).dtype)
    t = b.graph.add(Kind.TOPK, (x,), both, "float32", {"k": k}, b.src)
    out_shape = (*shape[:-1], k)
    values = b.relayout([t], np.arange(k, 2 * k).reshape(out_shape), "float32")
    dtype = np.dtype(_aval(eqn.outvars[0]).dtype).name
    if dtype != "float32":
        values = b.unary(Kind.CONVERT, values, dtype)
    return [values, Selector(t, np.arange(k).reshape(out_shape), int(shape[-1]))]


def _selector_movement(b: _Builder, eqn, vals):
    """Data movement of choices: move the choice numbers (as constants are moved)."""
    sel = next(v for v in vals if isinstance(v, Selector))
    lanes = [jnp.asarray(v.lanes) if isinstance(v, Selector) else jnp.asarray(v) for v in vals]
    out = eqn.primitive.bind(*lanes, **eqn.params)
    return [replace(sel, lanes=np.asarray(out))]


def _selector_lt(b: _Builder, eqn, vals):
    """choice < c: known at compile time, as choices lie in [0, units) (JAX's index wrapping)."""
    a, c = vals
    if not isinstance(a, Selector) or not isinstance(c, np.ndarray):
        raise _unsupported(eqn, b.src, "a comparison of run-time choices")
    lo, hi = a.offset, a.offset + a.units - 1
    if np.all(c <= lo):
        return [np.zeros(a.lanes.shape, bool)]
    if np.all(c > hi):
        return [np.ones(a.lanes.shape, bool)]
    raise _unsupported(eqn, b.src, "a comparison whose result depends on the run-time choice")


def _selector_add(b: _Builder, eqn, vals):
    a, c = vals if isinstance(vals[0], Selector) else vals[::-1]
    if not isinstance(c, np.ndarray) or not np.all(c == c.ravel()[0]):
        raise _unsupported(eqn, b.src, "arithmetic on run-time choices")
    return [replace(a, offset=a.offset + int(c.ravel()[0]))]


def _selector_convert(b: _Builder, eqn, vals):
    return [vals[0]]


def _selector_dynamic_slice(b: _Builder, eqn, vals):
    """One unit of a parameter stacked along its first axis, picked by a run-time choice."""
    operand, *index = vals
    sizes = tuple(eqn.params["slice_sizes"])
    shape = b.shape(operand)
    sel = index[0]
    ok = (
        isinstance(operand, int)
        and b.graph.nodes[operand].kind == Kind.INPUT
        and b.graph.nodes[operand].attrs["kind"] == "param"
        and isinstance(sel, Selector)
        and sel.lanes.size == 1
        and sel.offset == 0
        and sel.units == shape[0]
        and all(isinstance(i, np.ndarray) and int(i) == 0 for i in index[1:])
        and sizes == (1, *shape[1:])
    )
    if not ok:
        raise _unsupported(
            eqn, b.src, "only a whole unit of a stacked parameter, picked by a top_k id"
        )
    n = b.graph.nodes[operand]
    attrs = {"lane": int(sel.lanes.ravel()[0]), "units": int(shape[0])}
    return [b.graph.add(Kind.SELECT_UNIT, (operand, sel.topk), sizes, n.dtype, attrs, b.src)]


def _selector_select(b: _Builder, eqn, vals):
    pred = vals[0]
    if not isinstance(pred, np.ndarray) or not np.all(pred == pred.ravel()[0]):
        raise _unsupported(eqn, b.src, "a choice between run-time choices")
    return _lower_select(b, eqn, vals)


SELECTOR_RULES: dict[str, Callable] = {
    **dict.fromkeys(
        ("squeeze", "reshape", "slice", "broadcast_in_dim", "expand_dims", "copy", "copy_p"),
        _selector_movement,
    ),
    "lt": _selector_lt,
    "add": _selector_add,
    "convert_element_type": _selector_convert,
    "dynamic_slice": _selector_dynamic_slice,
    "select_n": _selector_select,
}
LOWERINGS["top_k"] = _lower_top_k  # its ids are a Selector, its values a node


def _unsupported(eqn, src: str, why: str | None = None) -> UnsupportedPrimitive:
    shapes = ", ".join(f"{np.dtype(_aval(v).dtype).name}{list(_aval(v).shape)}" for v in eqn.invars)
    reason = f" ({why})" if why else ""
    return UnsupportedPrimitive(
        f"JAX primitive '{eqn.primitive.name}'{reason} has no lowering to the LPU; operands "
        f"[{shapes}], at {src}. Supported: {', '.join(sorted(LOWERINGS))}"
    )


# --- the walk -------------------------------------------------------------------------------------


def _run_jaxpr(b: _Builder, jaxpr, consts, args: list[Value]) -> list[Value]:
    from jax.extend.core import Literal

    env: dict = {}
    for var, val in zip(jaxpr.constvars, consts, strict=True):
        env[var] = np.asarray(val)
    for var, val in zip(jaxpr.invars, args, strict=True):
        env[var] = val

    def read(v):
        return np.asarray(v.val) if isinstance(v, Literal) else env[v]

    for eqn in jaxpr.eqns:
        vals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        b.src = _source(eqn)
        if name in INLINE:
            closed = eqn.params[INLINE[name]]
            inner = getattr(closed, "jaxpr", closed)
            inner_consts = getattr(closed, "consts", [])
            outs = _run_jaxpr(b, inner, inner_consts, vals)
        elif any(isinstance(v, Selector) for v in vals):
            if name not in SELECTOR_RULES:
                raise _unsupported(eqn, b.src, "it computes with a run-time choice (top_k ids)")
            outs = SELECTOR_RULES[name](b, eqn, vals)
        elif all(isinstance(v, np.ndarray) for v in vals):
            res = eqn.primitive.bind(*[jnp.asarray(v) for v in vals], **eqn.params)
            outs = [np.asarray(r) for r in (res if eqn.primitive.multiple_results else [res])]
        elif name in LOWERINGS:
            outs = LOWERINGS[name](b, eqn, vals)
        else:
            raise _unsupported(eqn, b.src)
        for var, val in zip(eqn.outvars, outs, strict=True):
            env[var] = val
    return [read(v) for v in jaxpr.outvars]


def _path_name(prefix: str, path) -> str:
    parts = [prefix] if prefix else []
    for k in path:
        key = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
        parts.append(str(key))
    return "/".join(parts)


def flatten_named(tree, prefix: str = "") -> dict:
    """name -> leaf for a pytree, with the names `trace` gives inputs and outputs
    (e.g. "params/layers/0/wq")."""
    return {
        _path_name(prefix, path) or "out": leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def trace(fn: Callable, args: dict, param_args: frozenset = frozenset()) -> Graph:
    """Trace `fn(**args)` into a Graph. `args` maps argument names to pytrees of arrays or
    `jax.ShapeDtypeStruct`s; leaves under a name in `param_args` become parameters."""
    names, leaves = [], []
    flat, treedef = jax.tree_util.tree_flatten_with_path(args)
    for path, leaf in flat:
        names.append((_path_name("", path), path[0].key in param_args))
        leaves.append(jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype))

    def flat_fn(*flat):
        return fn(**jax.tree_util.tree_unflatten(treedef, list(flat)))

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*leaves)
    b = _Builder()
    inputs = []
    for (name, is_param), leaf in zip(names, leaves, strict=True):
        code = np.dtype(leaf.dtype).name
        kind = "param" if is_param else "input"
        inputs.append(b.graph.add(Kind.INPUT, (), leaf.shape, code, {"name": name, "kind": kind}))
    outs = _run_jaxpr(b, closed.jaxpr, closed.consts, inputs)
    out_paths = [
        _path_name("", p) or "out" for p, _ in jax.tree_util.tree_flatten_with_path(out_shape)[0]
    ]
    for name, val, spec in zip(out_paths, outs, jax.tree_util.tree_leaves(out_shape), strict=True):
        b.src = "output"
        b.graph.outputs.append((name, b.node(val, spec.shape, spec.dtype)))
    return b.graph
