"""The graph IR: tensor ops in a dependency graph, one definition for every pass.

Grammar (printed form, like a jaxpr):

    graph  := "{ lambda" inputs ";" node* "in" outputs "}"
    node   := "%" id ":" dtype "[" shape "]" "=" kind "[" attrs "]" operands
    kind   := INPUT | CONST | unary | binary | SELECT | REDUCE_SUM | REDUCE_MAX
            | LANE_SUM | LANE_MAX | DOT | RELAYOUT | TOPK | SELECT_UNIT
    unary  := NEG | EXP | RSQRT | LOGISTIC | TANH | CONVERT
    binary := ADD | SUB | MUL | DIV | MAX | MIN       (attr imm: a scalar second operand)

RELAYOUT is every pure data movement (reshape, broadcast, slice, concatenate, transpose, cache
update): its attr `index` has the output's shape and holds, per output element, the flat index of
the element it copies from the concatenation of its operands, or -1 for zero.
DOT is canonical: lhs [batch..., M..., K]; rhs [batch..., F..., K, N] (or [..., N, K] if
`rhs_transposed`); out [batch..., M..., F..., N].
LANE_SUM / LANE_MAX reduce the last axis to size 1 (the splat layout; see sim/program.py).
TOPK [k] x: x (1, n) -> (1, 2k) float32: the lane numbers of x's k largest values, largest first,
then those values; the numbers also go to select registers (a run-time choice, e.g. of experts).
SELECT_UNIT [lane, units] param topk: unit `sel` of a parameter stacked along its first axis
(units, ...) -> (1, ...), where sel is lane `lane` of the TOPK's choice: read by address, at a
time that does not depend on the choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import networkx as nx
import numpy as np


class Kind(Enum):
    INPUT = "input"
    CONST = "const"
    NEG = "neg"
    EXP = "exp"
    RSQRT = "rsqrt"
    LOGISTIC = "logistic"
    TANH = "tanh"
    CONVERT = "convert"
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    MAX = "max"
    MIN = "min"
    SELECT = "select"
    REDUCE_SUM = "reduce_sum"
    REDUCE_MAX = "reduce_max"
    LANE_SUM = "lane_sum"
    LANE_MAX = "lane_max"
    DOT = "dot"
    RELAYOUT = "relayout"
    TOPK = "topk"
    SELECT_UNIT = "select_unit"


UNARY = frozenset({Kind.NEG, Kind.EXP, Kind.RSQRT, Kind.LOGISTIC, Kind.TANH, Kind.CONVERT})
BINARY = frozenset({Kind.ADD, Kind.SUB, Kind.MUL, Kind.DIV, Kind.MAX, Kind.MIN})
ELEMENTWISE = UNARY | BINARY | {Kind.SELECT}


@dataclass(frozen=True, eq=False)
class Node:
    id: int
    kind: Kind
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    dtype: str  # NumPy dtype name
    attrs: dict = field(default_factory=dict)  # never mutated after construction
    src: str = ""  # the user's source line this op came from

    def __str__(self) -> str:
        shown = []
        for k, v in self.attrs.items():
            if isinstance(v, np.ndarray):
                shown.append(f"{k}=<{v.dtype}{list(v.shape)}>")
            else:
                shown.append(f"{k}={v}")
        a = f"[{', '.join(shown)}]" if shown else ""
        ops = " ".join(f"%{i}" for i in self.inputs)
        return f"%{self.id}:{self.dtype}{list(self.shape)} = {self.kind.name}{a} {ops}".rstrip()


@dataclass
class Graph:
    """Nodes by id (ids increase in a valid topological order), inputs and named outputs."""

    nodes: dict[int, Node] = field(default_factory=dict)
    outputs: list[tuple[str, int]] = field(default_factory=list)
    next_id: int = 0

    def add(self, kind: Kind, inputs, shape, dtype, attrs=None, src="") -> int:
        nid = self.next_id
        self.next_id += 1
        node = Node(
            nid, kind, tuple(inputs), tuple(int(d) for d in shape), str(dtype), attrs or {}, src
        )
        self.nodes[nid] = node
        return nid

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == Kind.INPUT]

    def to_networkx(self) -> nx.DiGraph:
        g = nx.DiGraph()
        for n in self.nodes.values():
            g.add_node(n.id, node=n)
            for i in n.inputs:
                g.add_edge(i, n.id)
        return g

    def topo(self) -> list[Node]:
        return [self.nodes[i] for i in sorted(self.nodes)]

    def __str__(self) -> str:
        ins = ", ".join(f"%{n.id}:{n.attrs['name']}" for n in self.inputs)
        body = [f"    {n}" for n in self.topo() if n.kind != Kind.INPUT]
        outs = ", ".join(f"{name}=%{i}" for name, i in self.outputs)
        return "{ lambda " + ins + " ;\n" + "\n".join(body) + f"\n  in {outs} }}"


def verify(graph: Graph) -> None:
    """Structural invariants every pass must keep; raises AssertionError naming the node."""
    for n in graph.nodes.values():
        for i in n.inputs:
            assert i in graph.nodes, f"%{n.id} uses %{i}, which does not exist"
            assert i < n.id, f"%{n.id} uses %{i}, which comes after it"
        if n.kind in BINARY and "imm" not in n.attrs:
            a, b = (graph.nodes[i] for i in n.inputs)
            assert a.shape == b.shape == n.shape, f"%{n.id}: operand shapes differ: {n}"
        if n.kind == Kind.RELAYOUT:
            assert n.attrs["index"].shape == n.shape, f"%{n.id}: index shape {n}"
    for name, i in graph.outputs:
        assert i in graph.nodes, f"output {name} is %{i}, which does not exist"
    assert nx.is_directed_acyclic_graph(graph.to_networkx())


def rewrite(graph: Graph, rule) -> Graph:
    """A pass's skeleton: rebuild `graph` in order; `rule(new, node, inputs)` returns the new id
    for `node` (whose operands are already `inputs` in `new`), or None to copy it unchanged."""
    new = Graph()
    remap: dict[int, int] = {}
    for n in graph.topo():
        inputs = tuple(remap[i] for i in n.inputs)
        out = rule(new, n, inputs)
        if out is None:
            out = new.add(n.kind, inputs, n.shape, n.dtype, n.attrs, n.src)
        remap[n.id] = out
    new.outputs = [(name, remap[i]) for name, i in graph.outputs]
    return new


def prune(graph: Graph) -> Graph:
    """Drop nodes no output depends on (inputs stay: they are the program's signature)."""
    live = {i for _, i in graph.outputs}
    for n in reversed(graph.topo()):
        if n.id in live:
            live.update(n.inputs)
    keep = {i for i, n in graph.nodes.items() if i in live or n.kind == Kind.INPUT}
    return Graph({i: graph.nodes[i] for i in sorted(keep)}, list(graph.outputs), graph.next_id)
