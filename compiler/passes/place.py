"""Place what lives in SRAM for the whole program (parameters, inputs, constants) and check that
the model fits the chip before any work is spent on it.

Vectors go in segments round-robin over the slice groups of their width, so the rows of one tile
sit in different slices and can be read in the same cycle. The rows one MXM vop installs (a tile,
or a chain of K tiles accumulating in one plane) go whole to one hemisphere, the next vop's to the
other, so that they reach an MXM plane on their own side without crossing the chip (the scheduler
installs them on their side's planes where it can), from the slices next to the MXM inwards
(the first tile of an install-bound vop on each track from the nearest, both read ports of each);
anything else alternates hemispheres segment by segment, from the VXM outwards, so that both
stream directions into the VXM carry it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from compiler.ir.graph import Graph, Kind
from compiler.ir.vector import VProgram
from sim.errors import LpuError
from sim.hardware import HardwareConfig
from sim.isa import DTYPE_BY_NAME, DTYPE_BYTES, matmul_period
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


@dataclass(frozen=True)
class Segment:
    """A run of vectors vids v0..v0+n-1 at addresses addr..addr+n-1 of one slice group."""

    v0: int
    n: int
    group: int  # base slice of the group
    addr: int
    unit_words: int = 0  # a stacked parameter's unit 0: words to the next unit's copy of it


@dataclass
class Placement:
    """Homes of the vectors that live in SRAM for the whole program (parameters, inputs,
    constants), as segments, and the first free address of every slice above them."""

    segments: list[Segment]
    next_addr: np.ndarray  # (slices,) int64


def slice_groups(hw: HardwareConfig, width: int) -> list[int]:
    """Base slices of the aligned groups of `width`, alternating west and east."""
    h = hw.half_slices
    west = list(range(0, h, width))
    east = list(range(h, hw.mem_slices, width))
    return [s for pair in zip(west, east, strict=True) for s in pair]


def hemisphere_groups(hw: HardwareConfig, width: int) -> tuple[list[int], list[int]]:
    """Base slices of the aligned groups of `width` in the west and in the east hemisphere, each
    from the VXM outwards."""
    h = hw.half_slices
    return list(range(0, h, width)), list(range(h, hw.mem_slices, width))


def chunk_vectors(hw: HardwareConfig) -> int:
    """Vectors per stored segment: a weight tile's rows come from lanes / chunk slice groups at
    once, as many as the MXM installs per cycle (REFERENCE.md "MXM": < 40 cycles for a tile)."""
    return max(1, -(-hw.lanes // hw.mxm_install_vectors_per_cycle))


def place_static(
    vp: VProgram,
    hw: HardwareConfig,
    names=None,
    next_addr: np.ndarray | None = None,
    cursor: dict | None = None,
) -> Placement:
    """Place the non-output symbols (those in `names`, if given) column by column in segments of
    `chunk_vectors`, round-robin over the slice groups of their width (so the rows of a weight tile
    sit in different slices and stream out together), from `next_addr` up."""
    next_addr = np.zeros(hw.mem_slices, np.int64) if next_addr is None else next_addr
    cursor = {} if cursor is None else cursor
    placed: set[int] = set()
    segments = []
    tracks = hw.mxm_planes // 2  # planes on each side
    installer = np.full(len(vp.dtypes), -1, np.int64)  # the MXM vop that installs each vector
    for op in vp.ops:
        if op.rows is not None:
            installer[op.rows] = op.id
    for sym in vp.symbols:
        if sym.kind == "output" or (names is not None and sym.name not in names):
            continue
        width = DTYPE_BYTES[DTYPE_BY_NAME[sym.dtype]]
        groups = hemisphere_groups(hw, width)
        rows, tiles, _ = tensor_layout(sym.shape, hw.lanes)
        cols = sym.vids.reshape(rows, tiles).T  # (tiles, rows): each column is one run
        # Every tensor in short segments spread round-robin: weights stream out of several slices
        # at once at the MXM's install rate, and anything else in short independent pieces that
        # pack between other work (on groq-tsp-v1 the streaming copy and FP16 matmuls ran
        # faster so than with 256-vector runs when this was chosen, an earlier scheduler).
        units = vp.units.get(sym.name, 1)
        per_unit = rows // units
        if units > 1:  # every unit at the same slices, `stride` words above the one before
            next_addr[:] = base = int(next_addr.max())
        first = len(segments)
        for col in cols:
            if int(col[0]) in placed:
                continue
            placed.add(int(col[0]))
            for r0, n in _chunks(per_unit, hw):
                vop = int(installer[int(col[r0])])
                if vop < 0:  # segment by segment, alternating hemispheres, from the VXM outwards
                    side = cursor[(width, "side")] = 1 - cursor.get((width, "side"), 1)
                    k = cursor.get((width, side), 0)
                    cursor[(width, side)] = k + 1
                    g = groups[side][k % len(groups[side])]
                else:  # a vop's rows on one track, each segment in its least filled group
                    if vop != cursor.get((width, "vop")):
                        cursor[(width, "vop")] = vop
                        cursor[(width, "track")] = _track(groups, tracks, width, next_addr, cursor)
                    own = _track_groups(groups, tracks, *cursor[(width, "track")])
                    fill = _fill(next_addr, own, width)
                    if r0 % hw.lanes == 0:  # a tile's first segment
                        nearest = not fill.any() and installs_bind(vp.ops[vop], vp, hw)
                        cursor[(width, "first")] = _first_tile_groups(own, hw) if nearest else []
                    first = cursor[(width, "first")]
                    g = first.pop(0) if first else own[int(np.argmin(fill))]
                a = int(next_addr[g : g + width].max())
                _check_room(a + n, g, hw)
                next_addr[g : g + width] = a + n
                segments.append(Segment(int(col[r0]), n, g, a))
        if units > 1:
            stride = int(next_addr.max()) - base
            if stride > UNIT_WORDS_LIMIT:
                raise ModelTooLarge(
                    f"one unit of {sym.name} {list(sym.shape)} takes {stride} words per slice; an "
                    f"indirect READ reaches units at most {UNIT_WORDS_LIMIT} words apart"
                )
            unit0 = [dataclasses.replace(s, unit_words=stride) for s in segments[first:]]
            segments[first:] = unit0
            for u in range(1, units):
                segments += [
                    Segment(s.v0 + u * per_unit, s.n, s.group, s.addr + u * stride) for s in unit0
                ]
            next_addr[:] = base + units * stride
            _check_room(int(next_addr.max()), groups[0][0], hw)
    return Placement(segments, next_addr)


def _chunks(rows: int, hw: HardwareConfig) -> list[tuple[int, int]]:
    """(first row, rows) of each segment of a column: each tile of `lanes` rows cut evenly over
    the install ports (`chunk_vectors` rows for a whole tile), so a short last tile (K or N not
    a multiple of the lanes) still streams from every port at once and they finish together."""
    out = []
    for t0 in range(0, rows, hw.lanes):
        n = min(hw.lanes, rows - t0)
        c = -(-n // hw.mxm_install_vectors_per_cycle)
        out += [(r0, min(c, t0 + n - r0)) for r0 in range(t0, t0 + n, c)]
    return out


def installs_bind(op, vp: VProgram, hw: HardwareConfig) -> bool:
    """Whether an MXM vop's MATMULs take less time than a tile's install: then installs set
    its pace (the scheduler places such MATMULs after the installs around them)."""
    return op.n * matmul_period(hw, DTYPE_BYTES[vp.dtypes[op.ins[0]]]) < chunk_vectors(hw)


def _first_tile_groups(own: list[int], hw: HardwareConfig) -> list[int]:
    """Groups of the segments of the first tile on an empty track: the nearest the MXM, each
    as many times as a slice has read ports. A plane's install ports start when their first
    segments arrive, and that spread of start times lasts to its last tile, so the first tile
    comes from as near as the read ports allow (on groq-tsp-v1 the 8 segments from 4 groups,
    12 positions apart at most instead of 28)."""
    reads = hw.mem_read_ports_per_slice
    segments = hw.mxm_install_vectors_per_cycle  # a whole tile's (`_chunks`)
    return [g for g in own[: -(-segments // reads)] for _ in range(reads)]


def _track_groups(groups, tracks: int, side: int, track: int) -> list[int]:
    """The slice groups of one track: every `tracks`-th group of the side from the MXM's edge
    inwards (so the first rows of every plane's first tile are near it)."""
    return groups[side][::-1][track::tracks]


def _track(groups, tracks: int, width: int, next_addr: np.ndarray, cursor: dict):
    """(side, track) for the next MXM vop's rows: the least filled, ties in turn (west track 0,
    east track 0, west track 1, ...), so consecutive vops alternate sides and, on a side, the
    planes that take them in turn."""
    turn = cursor.get((width, "turn"), 0)
    cursor[(width, "turn")] = turn + 1
    order = [(side, track) for track in range(tracks) for side in (0, 1)]
    order = order[turn % len(order) :] + order[: turn % len(order)]

    def filled(st):
        return float(_fill(next_addr, _track_groups(groups, tracks, *st), width).mean())

    return min(order, key=filled)


def _fill(next_addr: np.ndarray, groups: list[int], width: int) -> np.ndarray:
    """The first free address of each slice group (the highest of its slices')."""
    return next_addr[np.asarray(groups)[:, None] + np.arange(width)].max(axis=1)


# An indirect READ's distance between units is an int16 field (sim/isa.py).
UNIT_WORDS_LIMIT = np.iinfo(np.int16).max


def _check_room(top: int, g: int, hw: HardwareConfig) -> None:
    if top > hw.words_per_slice:
        raise ModelTooLarge(
            f"parameters, inputs and constants overflow slice {g} of {hw.name} "
            f"({hw.words_per_slice} words of {hw.lanes} bytes); "
            f"the chip has {hw.sram_bytes:,} bytes of SRAM"
        )
