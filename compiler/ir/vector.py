"""The vector IR: what the tile pass produces and the scheduler places in time and space.

    vprogram := vectors, vops, tables, symbols
    vector   := vid -> element type            (one `lanes`-wide vector of the machine)
    vop      := VXM op ins -> out [imm]        elementwise on whole vectors
              | SXM op in -> out [count|table] lane reduction or permutation
              | MXM rows (install, maybe transposed) ; ins (streamed through) -> outs [count]

A vop reads its operands from SRAM and writes its results to SRAM; the scheduler decides the
cycles, slices and streams, the allocator the addresses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.isa import DType, Op, Unit


@dataclass(frozen=True)
class VOp:
    id: int
    unit: Unit
    op: Op
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    dtype: DType  # element type of the outputs
    src: int  # graph node id it came from
    imm: float | None = None  # scalar second operand of a binary VXM op
    count: int = 0  # valid lanes (SXM reduce) or contraction length (MXM)
    table: int = -1  # SXM permute table
    rows: tuple[int, ...] = ()  # MXM: the weight vectors installed, in row order
    transposed: bool = False  # MXM: rows are installed as columns


@dataclass(frozen=True)
class VSymbol:
    name: str
    kind: str  # "param" | "input" | "const" | "output"
    shape: tuple[int, ...]
    dtype: str
    vids: np.ndarray  # (vectors,) int64 in the tensor layout of sim/program.py
    value: np.ndarray | None = None  # consts only


@dataclass
class VProgram:
    dtypes: list[DType] = field(default_factory=list)  # vid -> element type
    ops: list[VOp] = field(default_factory=list)
    tables: list[np.ndarray] = field(default_factory=list)
    symbols: list[VSymbol] = field(default_factory=list)
    sources: dict[int, str] = field(default_factory=dict)  # graph node id -> description

    def new_vids(self, n: int, dtype: DType) -> np.ndarray:
        start = len(self.dtypes)
        self.dtypes.extend([dtype] * n)
        return np.arange(start, start + n, dtype=np.int64)
