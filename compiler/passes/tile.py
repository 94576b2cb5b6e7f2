"""Tile: graph IR -> vector IR.

Every tensor becomes its vectors in the chip's layout (sim/program.py: rows of ceil(n/lanes)
vectors, splat when the last axis is 1). Then per op kind:

- elementwise: one VXM op per run of vectors whose operands are runs too (a column of tiles,
  or the whole tensor when every operand is numbered alike);
- LANE_SUM/LANE_MAX: an SXM reduction per vector (counting only valid lanes), VXM ops across a
  row's vectors;
- REDUCE over leading axes: VXM ops across the rows that meet;
- DOT: per (batch, outer, N tile, K tile) a weight tile installed in an MXM plane and the lhs rows
  streamed through it; partial sums over K tiles accumulated in the plane (chained vops, see
  Accumulators.worth_it), or else added on the VXM, a run of M vectors at a time;
- RELAYOUT: an output vector that is lane-for-lane an existing vector *is* that vector (free);
  otherwise one SXM permute per source vector, summed on the VXM;
- TOPK: one SXM TOPK, which also sets select registers;
- SELECT_UNIT: no op: unit 0's vectors, read at run time from the unit a select register picks
  (`VProgram.selected`); every vop reading them waits for the TOPK.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from compiler.ir.graph import Graph, Kind, Node
from compiler.ir.vector import VOp, VProgram, VSymbol
from sim.errors import LpuError
from sim.isa import DTYPE_BY_NAME, DTYPE_BYTES, DTYPE_NUMPY, DType, Op, Unit
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


@dataclass(frozen=True)
class Accumulators:
    """What the tiler needs of the MXM to chain K tiles: accumulator rows per plane, planes,
    cycles to install a tile, and compute cycles per input wider than a byte (sim.isa's
    matmul_period of such an input)."""

    rows: int
    planes: int
    install_cycles: int
    wide_cycles: int

    def worth_it(self, m: int, input_bytes: int) -> bool:
        """Chain when the m inputs' compute covers a tile's install: then the partial sums'
        SRAM round trips and VXM adds cost more than keeping each chain on one plane does."""
        period = 1 if input_bytes == 1 else self.wide_cycles
        return 0 < m <= self.rows and m * period >= self.install_cycles


class _Tiler:
    def __init__(self, lanes: int, acc: Accumulators | None = None):
        self.lanes = lanes
        self.acc = acc
        self.vp = VProgram()
        self.vecs: dict[int, np.ndarray] = {}  # node id -> its vids
        self.tables: dict[tuple, int] = {}
        self.src = -1
        self.registers = 0  # select registers handed out so far
        self.register_of: dict[int, int] = {}  # a TOPK's result vid -> its first register

    def op(self, unit, op, ins, dtype, n=1, out0: int | None = None, **kw) -> np.ndarray:
        """A vop on runs of n vectors (MXM: n = len(ins)) writing fresh vids, or the run from
        `out0` already numbered; returns its n output vids."""
        outs = self.vp.new_vids(n, dtype) if out0 is None else out0 + np.arange(n)
        if self.vp.selected:  # a vop reading a run-time choice of unit waits for its TOPK
            reads = list(ins) if unit != Unit.MXM else list(ins) + list(kw.get("rows", ()))
            after = {s.after for v in reads if (s := self.vp.selection(int(v))) is not None}
            if after:
                kw["after"] = tuple(sorted(after))
        vop = VOp(
            len(self.vp.ops),
            unit,
            op,
            tuple(int(i) for i in ins),
            (int(outs[0]),),
            dtype,
            self.src,
            n=n,
            **kw,
        )
        self.vp.ops.append(vop)
        return outs

    def combine(self, op: Op, vids: list[int], dtype: DType, n: int = 1) -> int:
        """Fold runs of n vectors with a binary VXM op as a balanced tree (shorter dependency
        chains); `vids` and the result are the runs' first vids."""
        vids = list(vids)
        while len(vids) > 1:
            nxt = [
                int(self.op(Unit.VXM, op, vids[i : i + 2], dtype, n)[0])
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


def tile(graph: Graph, lanes: int, acc: Accumulators | None = None) -> VProgram:
    """`acc`: the MXM's accumulators, to chain K tiles where worth it (None: the VXM adds every
    partial sum)."""
    t = _Tiler(lanes, acc)
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


def _fresh(t: _Tiler, n: Node) -> np.ndarray:
    rows, tiles, _ = tensor_layout(n.shape, t.lanes)
    return t.vp.tensor_vids(rows, tiles, _code(n))


def _input(t: _Tiler, g: Graph, n: Node) -> np.ndarray:
    vids = _fresh(t, n)
    t.vp.symbols.append(VSymbol(n.attrs["name"], n.attrs["kind"], n.shape, n.dtype, vids))
    return vids


def _const(t: _Tiler, g: Graph, n: Node) -> np.ndarray:
    vids = _fresh(t, n)
    name = f"const%{n.id}"
    t.vp.symbols.append(VSymbol(name, "const", n.shape, n.dtype, vids, n.attrs["value"]))
    return vids


# Conversions that change no value: every value of the source type is exact in the target. On a
# parameter they cost nothing, since the MXM installs the stored (e.g. INT8) weights as they are.
EXACT_WIDENING = {
    ("int8", "float16"),
    ("int8", "bfloat16"),
    ("int8", "float32"),
    ("float8_e4m3fn", "float16"),
    ("float8_e4m3fn", "bfloat16"),
    ("float8_e4m3fn", "float32"),
    ("float16", "float32"),
    ("bfloat16", "float32"),
}


def _stored_param(t: _Tiler, g: Graph, x: Node) -> bool:
    """x's vectors are a parameter's as stored: the parameter, a chosen unit of one (a
    SELECT_UNIT), or a relayout that moves no lane of them (jax's squeeze of the unit
    dynamic_index_in_dim picks: its vectors are the unit's, `_relayout`)."""
    while x.kind == Kind.RELAYOUT and len(x.inputs) == 1:
        if not np.isin(t.vecs[x.id], t.vecs[x.inputs[0]]).all():
            return False  # it computed vectors of its own
        x = g.nodes[x.inputs[0]]
    if x.kind == Kind.SELECT_UNIT:  # a chosen expert's int8 weights: installed as stored
        x = g.nodes[x.inputs[0]]
    return x.kind == Kind.INPUT and x.attrs["kind"] == "param"


def _elementwise(t: _Tiler, g: Graph, n: Node) -> np.ndarray:
    operands = [t.vecs[i] for i in n.inputs]
    x = g.nodes[n.inputs[0]] if n.inputs else None
    if n.kind == Kind.CONVERT and (x.dtype, n.dtype) in EXACT_WIDENING and _stored_param(t, g, x):
        return operands[0]
    imm = n.attrs.get("imm")
    out = _fresh(t, n)
    rows, tiles, _ = tensor_layout(n.shape, t.lanes)
    order = np.arange(rows * tiles).reshape(rows, tiles).T.ravel()  # column-major: the runs
    cols = [out[order]] + [v[order] for v in operands]
    step = np.ones(max(len(order) - 1, 0), bool)
    for c in cols:
        step &= np.diff(c) == 1
    starts = np.concatenate([[0], np.flatnonzero(~step) + 1])
    ends = np.concatenate([starts[1:], [len(order)]])
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        ins = [int(c[a]) for c in cols[1:]]
        t.op(Unit.VXM, VXM_OF[n.kind], ins, _code(n), b - a, int(cols[0][a]), imm=imm)
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
    in_bytes = DTYPE_BYTES[_code(lhs)]
    # Rows in blocks the plane's accumulator holds (re-installing the tiles per block), when
    # accumulating K tiles in the plane is worth it; else one block, its sums added on the VXM.
    use = KT > 1 and t.acc is not None
    blocks = -(-M // t.acc.rows) if use else 1
    chained = use and t.acc.worth_it(-(-M // blocks), in_bytes)
    blocks = blocks if chained else 1
    # A chain runs on one plane: to load the planes evenly, each is cut into `split` chains
    # (whose sums the VXM adds), the fewest that make the chains a multiple of the planes.
    chains = B * F * NT * blocks
    split = min(KT, t.acc.planes // math.gcd(chains, t.acc.planes)) if chained else KT
    cuts = np.linspace(0, KT, split + 1).astype(int)
    rows_at = np.linspace(0, M, blocks + 1).astype(int)
    for b in range(B):
        for f in range(F):
            for j in range(NT):
                tiles = []
                for kt in range(KT):
                    count = 1 if K == 1 else t.valid_lanes(K, kt)
                    if tr:
                        rows = R[b, f, j * lanes : j * lanes + t.valid_lanes(N, j), kt]
                    else:
                        rows = R[b, f, kt * lanes : kt * lanes + count, j]
                    tiles.append((np.array(rows, np.int64), count))
                for m0, m1 in zip(rows_at[:-1], rows_at[1:], strict=True):
                    m = m1 - m0
                    partials = []
                    for a, z in zip(cuts[:-1], cuts[1:], strict=True):  # a chain of K tiles
                        part = tiles[a:z]
                        sums = t.vp.new_vids((z - a - 1) * m, DType.FLOAT32)  # names, checked
                        partials.append(
                            t.op(
                                Unit.MXM, Op.MATMUL, L[b, m0:m1, a:z].T.ravel(), DType.FLOAT32,
                                m, count=part[-1][1], rows=np.concatenate([r for r, _ in part]),
                                transposed=tr,
                                chain=tuple((len(r), c) for r, c in part) if z - a > 1 else (),
                                partials=int(sums[0]) if len(sums) else -1,
                            )[0]
                        )  # fmt: skip
                    v = t.combine(Op.ADD, [int(p) for p in partials], DType.FLOAT32, m)
                    if N == 1 and tr:  # only lane 0 holds the value: splat it
                        tab = t.table(np.zeros(lanes, np.int64))
                        v = int(t.op(Unit.SXM, Op.PERMUTE, [v], DType.FLOAT32, m, table=tab)[0])
                    out[b, m0:m1, f, j] = v + np.arange(m)
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


def _topk(t: _Tiler, g: Graph, n: Node) -> np.ndarray:
    from sim.isa import SELECT_REGISTERS

    x = g.nodes[n.inputs[0]]
    count, k = x.shape[-1], n.attrs["k"]
    if count > t.lanes or 2 * k > t.lanes:
        raise LpuError(
            f"top_k of {count} values (k={k}) at {n.src}: the chip chooses among at most "
            f"{t.lanes} lanes, with 2k <= {t.lanes}"
        )
    register = t.registers % SELECT_REGISTERS
    if register + k > SELECT_REGISTERS:
        register = 0
    t.registers = register + k
    (v,) = t.vecs[x.id]
    out = t.op(Unit.SXM, Op.TOPK, [v], DType.FLOAT32, count=count, imm=float(k), table=register)
    t.register_of[int(out[0])] = register
    return out


def _select_unit(t: _Tiler, g: Graph, n: Node) -> np.ndarray:
    """Fresh virtual vids (each choice of a unit is its own vectors) standing for unit 0's."""
    from compiler.ir.vector import Selection

    param, topk = (g.nodes[i] for i in n.inputs)
    units = n.attrs["units"]
    rows, tiles, _ = tensor_layout(param.shape, t.lanes)
    per_unit = rows // units  # vid(row, tile) = base + tile * rows + row
    real = t.vecs[param.id].reshape(rows, tiles)[:per_unit]  # (per_unit, tiles)
    virtual = t.vp.tensor_vids(per_unit, tiles, _code(param)).reshape(per_unit, tiles)
    (topk_vid,) = t.vecs[topk.id]
    register = t.register_of[int(topk_vid)] + n.attrs["lane"]
    name = param.attrs["name"]
    if t.vp.units.setdefault(name, units) != units:
        raise LpuError(f"parameter {name} is split into units two ways")
    for j in range(tiles):
        lo = int(virtual[0, j])
        sel = Selection(register, per_unit, int(topk_vid), int(real[0, j]) - lo)
        t.vp.selected.append((lo, lo + per_unit, sel))
    t.vp.selected.sort(key=lambda r: r[0])
    return virtual.ravel()


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
    Kind.TOPK: _topk,
    Kind.SELECT_UNIT: _select_unit,
}


def _dead_code(vp: VProgram) -> None:
    """Drop vops whose results nobody reads (e.g. vectors a relayout turned out not to need)."""
    live = np.zeros(len(vp.dtypes), bool)
    for s in vp.symbols:
        if s.kind == "output":
            live[s.vids] = True
    keep = []
    for op in reversed(vp.ops):
        o = op.outs[0]
        if live[o : o + op.n].any():
            keep.append(op)
            live[op.in_vids()] = True
    vp.ops = [dataclasses.replace(op, id=k) for k, op in enumerate(reversed(keep))]
