"""The vector IR: what the tile pass produces and the scheduler places in time and space.

    vprogram := vectors, vops, tables, symbols
    vector   := vid -> element type            (one `lanes`-wide vector of the machine)
    vop      := VXM op ins -> out [imm] xn         elementwise on runs of n vectors
              | SXM op in -> out [count|table] xn  lane reduction or permutation of each vector
              | MXM rows (install, maybe transposed) ; ins (streamed through) -> outs [count]

A run is n vectors with consecutive ids: a VXM/SXM vop with `n > 1` reads vectors ins[k] + j and
writes outs[0] + j for j in 0..n-1, as one streamed instruction does on the chip. An MXM vop
installs the weight vectors `rows` (any ids, in row order) once and streams its n = len(ins)
inputs through them, producing the run outs[0]..outs[0] + n - 1.

Fresh tensors are numbered column-major by vector: vector (row r, tile j) of a (rows, tiles)
tensor gets id base + j * rows + r, so a column of tiles (what an MXM tile or an elementwise op
streams) is one run. `VProgram.vids` lists them in the tensor layout of sim/program.py.

A vop reads its operands from SRAM and writes its results to SRAM; the scheduler decides the
cycles, slices and streams, the allocator the addresses.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from sim.isa import DType, Op, Unit


@dataclass(frozen=True, eq=False)
class VOp:
    id: int
    unit: Unit
    op: Op
    ins: tuple[int, ...]  # VXM/SXM: first vid of each operand run; MXM: every input vid
    outs: tuple[int, ...]  # first vid of the output run
    dtype: DType  # element type of the outputs
    src: int  # graph node id it came from
    imm: float | None = None  # scalar second operand of a binary VXM op
    count: int = 0  # valid lanes (SXM reduce) or contraction length (MXM)
    table: int = -1  # SXM permute table
    rows: np.ndarray | None = None  # MXM: (rows,) int64 weight vids installed, in row order
    transposed: bool = False  # MXM: rows are installed as columns
    n: int = 1  # run length
    after: tuple[int, ...] = ()  # vids that must exist first (a TOPK's, for selected operands)
    # MXM accumulating over K tiles in the plane: per tile (its rows, its contraction count);
    # `rows` and `ins` are the tiles' rows and input runs of n, one after another. () : one tile.
    chain: tuple[tuple[int, int], ...] = ()
    partials: int = -1  # a chain's partial sums: tile k < last keeps run partials + k * n

    def out_range(self) -> range:
        return range(self.outs[0], self.outs[0] + self.n)

    def in_vids(self) -> np.ndarray:
        """Every vector this vop reads (operands and installed rows)."""
        after = np.asarray(self.after, np.int64)
        if self.unit == Unit.MXM:
            return np.concatenate([np.asarray(self.ins, np.int64), self.rows, after])
        runs = np.asarray(self.ins, np.int64)[:, None] + np.arange(self.n)
        return np.concatenate([runs.ravel(), after])


@dataclass(frozen=True)
class VSymbol:
    name: str
    kind: str  # "param" | "input" | "const" | "output"
    shape: tuple[int, ...]
    dtype: str
    vids: np.ndarray  # (vectors,) int64 in the tensor layout of sim/program.py
    value: np.ndarray | None = None  # consts only


@dataclass(frozen=True)
class Selection:
    """A run of *virtual* vids standing for the unit a select register picks at run time: vid v
    is read as the parameter's vector v + offset (unit 0) + choice * unit_vids."""

    register: int
    unit_vids: int  # vector ids between consecutive units
    after: int  # the TOPK result: the register holds the choice once it exists
    offset: int  # virtual vid -> unit 0's vid

    def same_choice(self, other: Selection | None) -> bool:
        return other is not None and (self.register, self.after) == (other.register, other.after)


@dataclass
class VProgram:
    dtypes: list[DType] = field(default_factory=list)  # vid -> element type
    ops: list[VOp] = field(default_factory=list)
    tables: list[np.ndarray] = field(default_factory=list)
    symbols: list[VSymbol] = field(default_factory=list)
    sources: dict[int, str] = field(default_factory=dict)  # graph node id -> description
    units: dict[str, int] = field(default_factory=dict)  # stacked param -> units (a choice picks)
    # Runs of virtual vids read through a select register: (first vid, end, Selection), sorted.
    selected: list[tuple[int, int, Selection]] = field(default_factory=list)

    def selection(self, vid: int) -> Selection | None:
        k = bisect_right(self.selected, (vid, float("inf"))) - 1
        if k >= 0 and self.selected[k][0] <= vid < self.selected[k][1]:
            return self.selected[k][2]
        return None

    def new_vids(self, n: int, dtype: DType) -> np.ndarray:
        start = len(self.dtypes)
        self.dtypes.extend([dtype] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def symbol(self, name: str, kind: str) -> VSymbol:
        for s in self.symbols:
            if s.name == name and s.kind == kind:
                return s
        raise KeyError(f"no {kind} symbol {name!r}")

    def output_mask(self) -> np.ndarray:
        """(vectors,) bool: the vectors some output symbol holds."""
        mask = np.zeros(len(self.dtypes), bool)
        for s in self.symbols:
            if s.kind == "output":
                mask[s.vids] = True
        return mask

    def table_array(self, lanes: int) -> np.ndarray:
        """(tables, lanes) int32: the SXM permute tables, as a Program holds them."""
        if not self.tables:
            return np.zeros((0, lanes), np.int32)
        return np.stack(self.tables).astype(np.int32)

    def source_list(self) -> list[str]:
        """Source descriptions indexed by graph node id ("?" where none)."""
        return [self.sources.get(i, "?") for i in range(max(self.sources, default=-1) + 1)]

    def tile_span(self) -> int:
        """MXM tile ids (Program field aux) this program's ops use: below this many."""
        return len(self.ops) * max([len(op.chain) for op in self.ops] + [1])

    def tensor_vids(self, rows: int, tiles: int, dtype: DType) -> np.ndarray:
        """Fresh vids of a (rows, tiles) tensor in layout order, numbered column-major."""
        base = self.new_vids(rows * tiles, dtype)[0] if rows * tiles else 0
        k = np.arange(rows * tiles, dtype=np.int64)
        return base + (k % tiles) * rows + k // tiles
