"""Fold data movement: compose chains of RELAYOUTs into one, and drop the identities.

A RELAYOUT whose operand is itself a RELAYOUT reads through it: the composed index map sends each
output element straight to the original element. A RELAYOUT that is the identity on a same-shaped
single operand is that operand. After this pass a reshape that keeps the last axis, a broadcast of
a splat, or `reduce(keepdims)` followed by its broadcast costs nothing.
"""

from __future__ import annotations

import numpy as np

from compiler.ir.graph import Graph, Kind, Node, rewrite


def fold_relayouts(graph: Graph) -> Graph:
    return rewrite(graph, _rule)


def _rule(g: Graph, n: Node, inputs: tuple[int, ...]) -> int | None:
    if n.kind != Kind.RELAYOUT:
        return None
    index = n.attrs["index"]
    new_inputs: list[int] = []
    # For each operand: where its elements start in the old concatenation and the new one.
    old_off, parts = 0, []
    for i in inputs:
        src = g.nodes[i]
        size = int(np.prod(src.shape))
        if src.kind == Kind.RELAYOUT:
            parts.append((old_off, size, src.attrs["index"].ravel(), len(new_inputs), src.inputs))
            new_inputs.extend(src.inputs)
        else:
            parts.append((old_off, size, None, len(new_inputs), (i,)))
            new_inputs.append(i)
        old_off += size
    new_starts = np.cumsum([0] + [int(np.prod(g.nodes[i].shape)) for i in new_inputs])
    flat = index.ravel()
    out = np.full(flat.shape, -1, np.int64)
    for start, size, inner, first, _ in parts:
        sel = (flat >= start) & (flat < start + size)
        local = flat[sel] - start
        if inner is None:
            out[sel] = local + new_starts[first]
        else:
            through = inner[local]
            out[sel] = np.where(through >= 0, through + new_starts[first], -1)
    # Drop operands no element reads, renumbering the rest.
    used = [
        k
        for k in range(len(new_inputs))
        if np.any((out >= new_starts[k]) & (out < new_starts[k + 1]))
    ]
    final = np.full(out.shape, -1, np.int64)
    offset = 0
    for k in used:
        sel = (out >= new_starts[k]) & (out < new_starts[k + 1])
        final[sel] = out[sel] - new_starts[k] + offset
        offset += new_starts[k + 1] - new_starts[k]
    kept = tuple(new_inputs[k] for k in used)
    final = final.reshape(n.shape)
    same_shape = len(kept) == 1 and g.nodes[kept[0]].shape == n.shape
    if same_shape and np.array_equal(final.ravel(), np.arange(final.size)):
        return kept[0]
    return g.add(Kind.RELAYOUT, kept, n.shape, n.dtype, {"index": final}, n.src)
