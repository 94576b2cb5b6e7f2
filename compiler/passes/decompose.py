"""Decompose ops the chip has no instruction for into ones it has.

- DIV a/b     -> a * (b * rsqrt(b*b)^2)   (no divide instruction: REFERENCE.md, "VXM" row; the
                 b*b form keeps the sign of b)
- LOGISTIC x  -> rsqrt(1 + exp(-x))^2
- TANH x      -> 2 * logistic(2x) - 1, then as LOGISTIC (GPT-2's GELU)
- REDUCE over axes including the last -> REDUCE over the others, then LANE_SUM/LANE_MAX (an SXM
  lane reduction to the splat layout), then a RELAYOUT that drops the size-1 axis.
"""

from __future__ import annotations

import numpy as np

from compiler.ir.graph import Graph, Kind, Node, rewrite


def decompose(graph: Graph) -> Graph:
    return rewrite(graph, _rule)


def _rule(g: Graph, n: Node, inputs: tuple[int, ...]) -> int | None:
    shape, dtype, src = n.shape, n.dtype, n.src

    def op(kind, *ins, **attrs):
        return g.add(kind, ins, shape, dtype, attrs, src)

    if n.kind == Kind.DIV:
        a, b = inputs
        r = op(Kind.RSQRT, op(Kind.MUL, b, b))
        return op(Kind.MUL, a, op(Kind.MUL, b, op(Kind.MUL, r, r)))
    if n.kind in (Kind.LOGISTIC, Kind.TANH):
        (x,) = inputs
        if n.kind == Kind.TANH:
            x = op(Kind.MUL, x, imm=-2.0)
        else:
            x = op(Kind.NEG, x)
        r = op(Kind.RSQRT, op(Kind.ADD, op(Kind.EXP, x), imm=1.0))
        s = op(Kind.MUL, r, r)
        if n.kind == Kind.LOGISTIC:
            return s
        return op(Kind.ADD, op(Kind.MUL, s, imm=2.0), imm=-1.0)
    if n.kind in (Kind.REDUCE_SUM, Kind.REDUCE_MAX):
        (x,) = inputs
        in_shape = g.nodes[x].shape
        last = len(in_shape) - 1
        axes = n.attrs["axes"]
        if last not in axes:
            return None
        rest = tuple(a for a in axes if a != last)
        if rest:
            kept = tuple(d for i, d in enumerate(in_shape) if i not in rest)
            x = g.add(n.kind, (x,), kept, dtype, {"axes": rest}, src)
        lane_kind = Kind.LANE_SUM if n.kind == Kind.REDUCE_SUM else Kind.LANE_MAX
        keep = (*g.nodes[x].shape[:-1], 1)
        x = g.add(lane_kind, (x,), keep, dtype, {}, src)
        index = np.arange(int(np.prod(keep))).reshape(shape)
        return g.add(Kind.RELAYOUT, (x,), shape, dtype, {"index": index}, src)
    return None
