"""Tile: graph IR -> vector IR.

Every tensor becomes its vectors in the chip's layout (sim/program.py: rows of ceil(n/lanes)
vectors, splat when the last axis is 1). Then per op kind:

- elementwise: one VXM op per output vector;
- LANE_SUM/LANE_MAX: an SXM reduction per vector (counting only valid lanes), VXM ops across a
  row's vectors;
- REDUCE over leading axes: VXM ops across the rows that meet;
- DOT: per (batch, outer, N tile, K tile) a weight tile installed in an MXM plane and the lhs rows
  streamed through it; partial sums over K tiles added on the VXM;
- RELAYOUT: an output vector that is lane-for-lane an existing vector *is* that vector (free);
  otherwise one SXM permute per source vector, summed on the VXM.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from compiler.ir.graph import Graph, Kind, Node
from compiler.ir.vector import VOp, VProgram, VSymbol
from sim.errors import LpuError
from sim.isa import DTYPE_BY_NAME, DTYPE_NUMPY, DType, Op, Unit
from sim.program import tensor_layout

VXM_OF = {
    Kind.ADD: Op.ADD,
    Kind.SUB: Op.SUB,
    Kind.MUL: Op.MUL,
    Kind.MAX: Op.MAX,
    Kind.MIN: Op.MIN,
    Kind.NEG: Op.NEG,
    Kind.EXP: Op.EXP,
    Kind.RSQRT: Op.RSQRT,
    Kind.CONVERT: Op.CONVERT,
    Kind.SELECT: Op.SELECT,
}


class _Tiler:
    def __init__(self, lanes: int):
        self.lanes = lanes
        self.vp = VProgram()
        self.vecs: dict[int, np.ndarray] = {}  # node id -> its vids
        self.tables: dict[tuple, int] = {}
        self.src = -1

    def op(self, unit, op, ins, dtype, n_out=1, **kw) -> np.ndarray:
        outs = self.vp.new_vids(n_out, dtype)
        vop = VOp(
            len(self.vp.ops),
            unit,
            op,
            tuple(int(i) for i in ins),
            tuple(int(o) for o in outs),
            dtype,
            self.src,
            **kw,
        )
        self.vp.ops.append(vop)
        return outs

    def combine(self, op: Op, vids: list[int], dtype: DType) -> int:
        """Fold vectors with a binary VXM op as a balanced tree (shorter dependency chains)."""
        vids = list(vids)
        while len(vids) > 1:
            nxt = [
                int(self.op(Unit.VXM, op, vids[i : i + 2], dtype)[0])
                for i in range(0, len(vids) - 1, 2)
            ]
            if len(vids) % 2:
                nxt.append(vids[-1])
            vids = nxt
        return vids[0]

    def table(self, lanes_from: np.ndarray) -> int:
        key = tuple(int(x) for x in lanes_from)
        if key not in self.tables:
            self.tables[key] = len(self.vp.tables)
            self.vp.tables.append(np.asarray(key, np.int32))
        return self.tables[key]

    def zero_vector(self, code: DType) -> int:
        name = f"zeros.{code.name.lower()}"
        for s in self.vp.symbols:
            if s.name == name:
                return int(s.vids[0])
        vids = self.vp.new_vids(1, code)
        value = np.zeros(self.lanes, DTYPE_NUMPY[code])
        self.vp.symbols.append(VSymbol(name, "const", (self.lanes,), value.dtype.name, vids, value))
        return int(vids[0])

    def valid_lanes(self, n: int, tile: int) -> int:
        return min(self.lanes, n - tile * self.lanes)


def tile(graph: Graph, lanes: int) -> VProgram:
    t = _Tiler(lanes)
    for n in graph.topo():
        t.src = n.id
        t.vp.sources[n.id] = f"%{n.id} {n.kind.name.lower()}" + (f" ({n.src})" if n.src else "")
        t.vecs[n.id] = LOWER[n.kind](t, graph, n)
    for name, nid in graph.outputs:
        n = graph.nodes[nid]
        t.vp.symbols.append(VSymbol(name, "output", n.shape, n.dtype, t.vecs[nid]))
    _dead_code(t.vp)
    return t.vp


def _code(n: Node) -> DType:
    if n.dtype not in DTYPE_BY_NAME:
        raise LpuError(
            f"{n.dtype}{list(n.shape)} values ({n.src or n.attrs.get('name', '?')}) cannot live "
            f"on the chip; element types it holds: {', '.join(DTYPE_BY_NAME)}"
        )
    return DTYPE_BY_NAME[n.dtype]


def _n_vectors(t: _Tiler, n: Node) -> int:
    rows, tiles, _ = tensor_layout(n.shape, t.lanes)
    return rows * tiles


def _input(t: _Tiler, g: Graph, n: Node) -> np.ndarray:
    vids = t.vp.new_vids(_n_vectors(t, n), _code(n))
    t.vp.symbols.append(VSymbol(n.attrs["name"], n.attrs["kind"], n.shape, n.dtype, vids))
    return vids


def _const(t: _Tiler, g: Graph, n: Node) -> np.ndarray:
    vids = t.vp.new_vids(_n_vectors(t, n), _code(n))
    name = f"const%{n.id}"
    t.vp.symbols.append(VSymbol(name, "const", n.shape, n.dtype, vids, n.attrs["value"]))
    return vids


def _elementwise(t: _Tiler, g: Graph, n: Node) -> np.ndarray:
    operands = [t.vecs[i] for i in n.inputs]
    imm = n.attrs.get("imm")
    out = np.empty(_n_vectors(t, n), np.int64)
    for k in range(len(out)):
        ins = [int(v[k]) for v in operands]
        out[k] = t.op(Unit.VXM, VXM_OF[n.kind], ins, _code(n), imm=imm)[0]
    return out


def _lane_reduce(t: _Tiler, g: Graph, n: Node) -> np.ndarray:
    x = g.nodes[n.inputs[0]]
    rows, tiles, splat = tensor_layout(x.shape, t.lanes)
    src = t.vecs[x.id].reshape(rows, tiles)
    sxm_op, vxm_op = (Op.REDUCE_SUM, Op.ADD) if n.kind == Kind.LANE_SUM else (Op.REDUCE_MAX, Op.MAX)
    out = np.empty(rows, np.int64)
    for r in range(rows):
        if splat and sxm_op == Op.REDUCE_MAX:  # max of one element is itself
            out[r] = src[r, 0]
            continue
        count = 1 if splat else None
        parts = [
            int(
                t.op(
                    Unit.SXM,
                    sxm_op,
                    [src[r, j]],
                    _code(n),
                    count=count or t.valid_lanes(x.shape[-1], j),
                )[0]
            )
            for j in range(tiles)
        ]
        out[r] = t.combine(vxm_op, parts, _code(n))
    return out


def _reduce_rows(t: _Tiler, g: Graph, n: Node) -> np.ndarray:
    x = g.nodes[n.inputs[0]]
    rows, tiles, _ = tensor_layout(x.shape, t.lanes)
    src = t.vecs[x.id].reshape(rows, tiles)
    axes = n.attrs["axes"]
    lead = x.shape[:-1]
    kept = [d for d in range(len(lead)) if d not in axes]
    coords = np.unravel_index(np.arange(rows), lead)
    out_rows = (
        np.ravel_multi_index([coords[d] for d in kept], [lead[d] for d in kept])
        if kept
        else np.zeros(rows, np.int64)
    )
    n_out = int(out_rows.max()) + 1 if rows else 0
    op = Op.ADD if n.kind == Kind.REDUCE_SUM else Op.MAX
    out = np.empty((n_out, tiles), np.int64)
    for ro in range(n_out):
        members = np.nonzero(out_rows == ro)[0]
        for j in range(tiles):
            out[ro, j] = t.combine(op, [int(src[r, j]) for r in members], _code(n))
    return out.ravel()


def _dot(t: _Tiler, g: Graph, n: Node) -> np.ndarray:
    lhs, rhs = (g.nodes[i] for i in n.inputs)
    nb, no, tr = n.attrs["n_batch"], n.attrs["n_outer"], n.attrs["rhs_transposed"]
    B = int(np.prod(lhs.shape[:nb]))
    K = lhs.shape[-1]
    M = int(np.prod(lhs.shape[nb:-1]))
    F = int(np.prod(rhs.shape[nb : nb + no]))
    N = rhs.shape[-2] if tr else rhs.shape[-1]
    lanes = t.lanes
    KT = tensor_layout(lhs.shape, lanes)[1]
    NT = tensor_layout(n.shape, lanes)[1]
    L = t.vecs[lhs.id].reshape(B, M, KT)
    if tr:  # rhs rows are (b, f, n), each KT vectors
        R = t.vecs[rhs.id].reshape(B, F, N, KT)
    else:  # rhs rows are (b, f, k), each NT vectors
        R = t.vecs[rhs.id].reshape(B, F, K, tensor_layout(rhs.shape, lanes)[1])
    out = np.empty((B, M, F, NT), np.int64)
    for b in range(B):
        for f in range(F):
            for j in range(NT):
                partials = []
                for kt in range(KT):
                    count = 1 if K == 1 else t.valid_lanes(K, kt)
                    if tr:
                        rows = R[b, f, j * lanes : j * lanes + t.valid_lanes(N, j), kt]
                    else:
                        rows = R[b, f, kt * lanes : kt * lanes + count, j]
                    partials.append(
                        t.op(
                            Unit.MXM,
                            Op.MATMUL,
                            L[b, :, kt],
                            DType.FLOAT32,
                            n_out=M,
                            count=count,
                            rows=tuple(int(r) for r in rows),
                            transposed=tr,
                        )
                    )
                for m in range(M):
                    v = t.combine(Op.ADD, [int(p[m]) for p in partials], DType.FLOAT32)
                    if N == 1 and tr:  # only lane 0 holds the value: splat it
                        tab = t.table(np.zeros(lanes, np.int64))
                        v = int(t.op(Unit.SXM, Op.PERMUTE, [v], DType.FLOAT32, table=tab)[0])
                    out[b, m, f, j] = v
    return out.ravel()


def _relayout(t: _Tiler, g: Graph, n: Node) -> np.ndarray:
    lanes = t.lanes
    # Per element of the operands' concatenation: its vector and lane (-1 lane: splat, any lane).
    src_vid, src_lane = [], []
    for i in n.inputs:
        x = g.nodes[i]
        rows, tiles, splat = tensor_layout(x.shape, lanes)
        ncol = x.shape[-1] if x.shape else 1
        flat = np.arange(rows * ncol)
        r, c = flat // ncol, flat % ncol
        vids = t.vecs[i]
        if splat:
            src_vid.append(vids[r])
            src_lane.append(np.full(flat.shape, -1))
        else:
            src_vid.append(vids[r * tiles + c // lanes])
            src_lane.append(c % lanes)
    src_vid = np.concatenate(src_vid) if src_vid else np.zeros(0, np.int64)
    src_lane = np.concatenate(src_lane) if src_lane else np.zeros(0, np.int64)
    index = n.attrs["index"]
    rows, tiles, splat = tensor_layout(n.shape, lanes)
    ncol = n.shape[-1] if n.shape else 1
    idx = index.reshape(rows, ncol)
    code = _code(n)
    out = np.empty(rows * tiles, np.int64)
    for r in range(rows):
        for j in range(tiles):
            if splat:
                e = np.full(lanes, idx[r, 0])
                want = np.arange(lanes)
            else:
                width = t.valid_lanes(ncol, j)
                e = idx[r, j * lanes : j * lanes + width]
                want = np.arange(width)
            out[r * tiles + j] = _gather_vector(t, e, want, src_vid, src_lane, code)
    return out


def _gather_vector(t, e, want, src_vid, src_lane, code) -> int:
    """One output vector whose lane `want[i]` is element `e[i]` of the sources (-1: zero)."""
    lanes = t.lanes
    live = e >= 0
    vids = src_vid[np.maximum(e, 0)]
    from_lane = np.where(src_lane[np.maximum(e, 0)] < 0, want, src_lane[np.maximum(e, 0)])
    if live.all() and len(set(vids.tolist())) == 1 and np.array_equal(from_lane, want):
        return int(vids[0])  # lane for lane an existing vector: free
    parts = []
    for v in sorted(set(vids[live].tolist())):
        table = np.full(lanes, -1, np.int64)
        sel = live & (vids == v)
        table[want[sel]] = from_lane[sel]
        parts.append(int(t.op(Unit.SXM, Op.PERMUTE, [v], code, table=t.table(table))[0]))
    if not parts:  # nothing but zeros (padding): a constant zero vector
        return t.zero_vector(code)
    return t.combine(Op.ADD, parts, code)


LOWER = {
    Kind.INPUT: _input,
    Kind.CONST: _const,
    **dict.fromkeys(VXM_OF, _elementwise),
    Kind.LANE_SUM: _lane_reduce,
    Kind.LANE_MAX: _lane_reduce,
    Kind.REDUCE_SUM: _reduce_rows,
    Kind.REDUCE_MAX: _reduce_rows,
    Kind.DOT: _dot,
    Kind.RELAYOUT: _relayout,
}


def _dead_code(vp: VProgram) -> None:
    """Drop vops whose results nobody reads (e.g. vectors a relayout turned out not to need)."""
    live = set()
    for s in vp.symbols:
        if s.kind == "output":
            live.update(int(v) for v in s.vids)
    keep = []
    for op in reversed(vp.ops):
        if any(o in live for o in op.outs):
            keep.append(op)
            live.update(op.ins)
            live.update(op.rows)
    vp.ops = [dataclasses.replace(op, id=k) for k, op in enumerate(reversed(keep))]
