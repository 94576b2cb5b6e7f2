"""Place what lives in SRAM for the whole program (parameters, inputs, constants) and check that
the model fits the chip before any work is spent on it.

Vectors go round-robin over the slice groups of their width, alternating hemispheres, so the rows
of one weight tile sit in different slices and can be read in the same cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.ir.graph import Graph, Kind
from compiler.ir.vector import VProgram
from sim.errors import LpuError
from sim.hardware import HardwareConfig
from sim.isa import DTYPE_BY_NAME, DTYPE_BYTES
from sim.program import tensor_layout


class ModelTooLarge(LpuError, ValueError):
    """The model's SRAM needs exceed the chip: says how many bytes it needs and the chip has."""


def stored_bytes(shape, dtype_name: str, hw: HardwareConfig) -> int:
    """SRAM bytes of a tensor, padded to whole vectors as stored."""
    rows, tiles, _ = tensor_layout(tuple(shape), hw.lanes)
    code = DTYPE_BY_NAME.get(dtype_name)
    # An element type the chip cannot hold is refused when the graph is tiled; count its size.
    width = DTYPE_BYTES[code] if code is not None else np.dtype(dtype_name).itemsize
    return rows * tiles * hw.lanes * width


def static_bytes(graph: Graph, hw: HardwareConfig) -> dict[str, int]:
    """SRAM bytes of parameters, inputs and constants."""
    out = {"param": 0, "input": 0, "const": 0}
    for n in graph.nodes.values():
        if n.kind in (Kind.INPUT, Kind.CONST):
            kind = n.attrs["kind"] if n.kind == Kind.INPUT else "const"
            out[kind] += stored_bytes(n.shape, n.dtype, hw)
    return out


def check_fits(graph: Graph, hw: HardwareConfig, chips: int = 1) -> None:
    fits(static_bytes(graph, hw), hw, chips)


def check_args_fit(leaves: dict[str, tuple], hw: HardwareConfig, chips: int = 1) -> None:
    """The same check on the arguments alone (kind -> [(shape, dtype name)]), before tracing."""
    need = {"param": 0, "input": 0, "const": 0}
    for kind, specs in leaves.items():
        need[kind] += sum(stored_bytes(shape, dtype, hw) for shape, dtype in specs)
    fits(need, hw, chips)


def fits(need: dict[str, int], hw: HardwareConfig, chips: int) -> None:
    total = sum(need.values())
    have = hw.sram_bytes * chips
    if total > have:
        raise ModelTooLarge(
            f"the model needs {total:,} bytes of SRAM for weights, KV cache and constants "
            f"(parameters {need['param']:,}, inputs {need['input']:,}, constants {need['const']:,}) "
            f"but {chips} chip(s) of {hw.name} have {have:,} bytes "
            f"({hw.sram_bytes:,} per chip): it needs at least {-(-total // hw.sram_bytes)} chips"
        )


@dataclass
class Placement:
    """Home of every placed vector: base slice of its group and address."""

    slice: dict[int, int]
    addr: dict[int, int]
    next_addr: np.ndarray  # (slices,) first address above the static region


def slice_groups(hw: HardwareConfig, width: int) -> list[int]:
    """Base slices of the aligned groups of `width`, alternating west and east."""
    h = hw.half_slices
    west = list(range(0, h, width))
    east = list(range(h, hw.mem_slices, width))
    return [s for pair in zip(west, east, strict=True) for s in pair]


def place_static(vp: VProgram, hw: HardwareConfig) -> Placement:
    next_addr = np.zeros(hw.mem_slices, np.int64)
    cursor: dict[int, int] = {}
    home_s, home_a = {}, {}
    for sym in vp.symbols:
        if sym.kind == "output":
            continue
        width = DTYPE_BYTES[DTYPE_BY_NAME[sym.dtype]]
        groups = slice_groups(hw, width)
        for vid in sym.vids:
            vid = int(vid)
            if vid in home_s:
                continue
            k = cursor.get(width, 0)
            cursor[width] = k + 1
            s = groups[k % len(groups)]
            a = int(next_addr[s : s + width].max())
            if a >= hw.words_per_slice:
                raise ModelTooLarge(
                    f"parameters, inputs and constants overflow slice {s} of {hw.name} "
                    f"({hw.words_per_slice} words of {hw.lanes} bytes); "
                    f"the chip has {hw.sram_bytes:,} bytes of SRAM"
                )
            next_addr[s : s + width] = a + 1
            home_s[vid], home_a[vid] = s, a
    return Placement(home_s, home_a, next_addr)
