"""Layout of a model's SRAM across its blocks, so that one layer's schedule serves every layer.

Per slice, from address 0 up:

    shared   the residual stream x, every block's constants, the head's weights
    bands    layer l's weights and KV cache at band_lo + l * band_words (the same slices and
             offsets in every band: layer 0's placement, shifted), levelled so that band_words
             is close to their words over the slices (compiler/passes/balance.py)
    dynamic  computed vectors, from `floor` up, reused by every block (they run one at a time)

The layer's outputs are written in place: its output x over its input x, and the KV-cache rows it
updates over the rows they replace (`pins`), so the next layer finds its input where the previous
one left it and the cache stays in its band.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from compiler.ir.vector import VProgram
from compiler.passes.balance import balance_band
from compiler.passes.place import ModelTooLarge, Placement, Segment, place_static
from sim.hardware import HardwareConfig


def _locate(segments: list[Segment], vids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group, address) of static vectors."""
    segments = sorted(segments, key=lambda s: s.v0)
    starts = np.array([s.v0 for s in segments], np.int64)
    k = np.searchsorted(starts, vids, side="right") - 1
    n = np.array([s.n for s in segments], np.int64)
    assert (k >= 0).all() and (vids < starts[k] + n[k]).all(), "vector is not placed"
    group = np.array([s.group for s in segments], np.int64)[k]
    addr = np.array([s.addr for s in segments], np.int64)[k] + vids - starts[k]
    return group, addr


def _runs(out_vids, group, addr) -> list[tuple[int, int, int, int]]:
    """Per-vector pins merged into runs (v0, n, group, addr)."""
    order = np.argsort(out_vids, kind="stable")
    runs: list[list[int]] = []
    for k in order.tolist():
        v, g, a = int(out_vids[k]), int(group[k]), int(addr[k])
        if runs:
            r = runs[-1]
            if v == r[0] + r[1] and g == r[2] and a == r[3] + r[1]:
                r[1] += 1
                continue
        runs.append([v, 1, g, a])
    return [tuple(r) for r in runs]


@dataclass
class Layout:
    hw: HardwareConfig
    vp_layer: VProgram
    vp_head: VProgram | None
    layers: int
    shared: list[Segment]  # x and the layer's constants (layer vids)
    head_static: list[Segment]  # the head's weights, constants and x (head vids)
    band: list[Segment]  # layer 0's weights and cache (layer vids)
    band_lo: int
    band_words: int
    floor: np.ndarray  # (slices,) first dynamic address

    def layer_placement(self, shift: int) -> Placement:
        band = [dataclasses.replace(s, addr=s.addr + shift) for s in self.band]
        return Placement(self.shared + band, self.floor)

    def head_placement(self) -> Placement:
        return Placement(self.head_static, self.floor)

    def layer_pins(self, shift: int) -> list[tuple[int, int, int, int]]:
        """Layer outputs written over the inputs they replace: x entirely, the cache's new rows."""
        pins = []
        placement = self.layer_placement(shift).segments
        for sym in self.vp_layer.symbols:
            if sym.kind != "output":
                continue
            src = self.vp_layer.symbol(sym.name, "input")
            new = sym.vids != src.vids
            if not new.any():
                continue
            group, addr = _locate(placement, src.vids[new])
            pins += _runs(sym.vids[new], group, addr)
        return pins

    def words(self) -> int:
        return int(self.floor.max())


def _top(hw: HardwareConfig, layers: int, band_lo: int, band_words: int, what: str) -> int:
    """The first word above the bands of `layers` layers, or ModelTooLarge saying how far it
    is past a slice."""
    top = band_lo + layers * band_words
    if top > hw.words_per_slice:
        need = top * hw.lanes * hw.mem_slices
        raise ModelTooLarge(
            f"{layers} layers need {band_words} words per slice each for {what}, above "
            f"{band_lo} shared words: {top} words of the {hw.words_per_slice} per slice of "
            f"{hw.name} (about {need:,} bytes of {hw.sram_bytes:,}); it needs at least "
            f"{-(-top // hw.words_per_slice)} times the chips (a larger pp or tp)"
        )
    return top


def layout_blocks(
    vp_layer: VProgram, vp_head: VProgram | None, hw: HardwareConfig, layers: int
) -> Layout:
    next_addr = np.zeros(hw.mem_slices, np.int64)
    cursor: dict = {}
    consts = {s.name for s in vp_layer.symbols if s.kind == "const"}
    shared = place_static(vp_layer, hw, {"x"} | consts, next_addr, cursor).segments
    head_static = []
    if vp_head is not None:
        head_names = {s.name for s in vp_head.symbols if s.kind != "output"} - {"x"}
        head_static = place_static(vp_head, hw, head_names, next_addr, cursor).segments
        # The head's x is the layer's x: same shape, both numbered column-major from one base.
        x_layer, x_head = vp_layer.symbol("x", "input"), vp_head.symbol("x", "input")
        delta = int(x_head.vids.min()) - int(x_layer.vids.min())
        assert np.array_equal(x_head.vids - delta, x_layer.vids)
        lo, hi = int(x_layer.vids.min()), int(x_layer.vids.max())
        head_static += [
            Segment(s.v0 + delta, s.n, s.group, s.addr) for s in shared if lo <= s.v0 <= hi
        ]
    band_lo = int(next_addr.max())
    next_addr[:] = band_lo
    band_names = {
        s.name for s in vp_layer.symbols if s.kind in ("param", "input") and s.name != "x"
    }
    band = []  # no layer (a pipeline stage of the head alone): no band
    if layers:
        band = place_static(vp_layer, hw, band_names, next_addr, cursor).segments
        (band,) = balance_band([(vp_layer, band)], hw, band_lo, next_addr)  # level its top
    band_words = int(next_addr.max()) - band_lo
    top = _top(hw, layers, band_lo, band_words, "weights and KV cache")
    floor = np.full(hw.mem_slices, top, np.int64)
    return Layout(
        hw, vp_layer, vp_head, layers, shared, head_static, band, band_lo, band_words, floor
    )


# --- a tensor-parallel rank's blocks (compiler/codegen/tensor.py) --------------------------------

TP_BLOCKS = ("attention", "mlp", "reduce", "reduce-attention", "head")


@dataclass
class TensorLayout:
    """SRAM of one chip of a tp (or tp x ep) group, as Layout for a layer of four blocks:

        shared   x, the all-reduce's slots (parts/0 is this rank's partial, parts/j rank r^j's),
                 every block's constants
        bands    layer l's attention weights and KV cache, then its MLP weights
        head     the head's weights, above the bands of the stage that has it
        dynamic  from `floor` up (above every stage's bands and the head)

    The attention and the MLP write their partial y into parts/0, the reduce its x over x. With
    ep groups the attention's reduce ("reduce-attention") sums the first tp of the G slots the
    MoE's reduce sums: the same addresses."""

    hw: HardwareConfig
    vps: dict[str, VProgram]  # TP_BLOCKS -> the block (no "head" without one, no
    # "reduce-attention" without ep groups)
    layers: int
    static: dict[str, list[Segment]]  # block -> its shared segments (its vids)
    band: dict[str, list[Segment]]  # "attention", "mlp" -> layer 0's band segments
    x_at: tuple[np.ndarray, np.ndarray]  # (group, address) of x's vectors
    parts_at: list[tuple[np.ndarray, np.ndarray]]  # of each slot's vectors
    band_lo: int
    band_words: int
    floor: np.ndarray
    # a group of several blocks (compiler/passes/wiring.py): its block's sum S, and the slots
    # q/i of what the exchange between blocks brings in each role
    sum_at: tuple[np.ndarray, np.ndarray] | None = None
    q_at: list[tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)

    def placement(self, block: str, shift: int = 0) -> Placement:
        band = [dataclasses.replace(s, addr=s.addr + shift) for s in self.band.get(block, [])]
        return Placement(self.static[block] + band, self.floor)

    def pins(self, block: str, shift: int = 0) -> list[tuple[int, int, int, int]]:
        """Outputs written where the next block reads them: y over parts/0, x over x, the KV
        cache's new rows over the rows they replace."""
        vp = self.vps[block]
        pins = []
        for sym in vp.symbols:
            if sym.kind != "output":
                continue
            if sym.name == "y":
                pins += _runs(sym.vids, *self.parts_at[0])
            elif sym.name == "x":
                pins += _runs(sym.vids, *self.x_at)
            elif sym.name == "S":
                pins += _runs(sym.vids, *self.sum_at)
            elif sym.name.startswith("cache/"):
                src = vp.symbol(sym.name, "input")
                new = sym.vids != src.vids
                group, addr = _locate(self.placement(block, shift).segments, src.vids[new])
                pins += _runs(sym.vids[new], group, addr)
        return pins

    def words(self) -> int:
        return int(self.floor.max())


def _alias(vids: np.ndarray, at: tuple[np.ndarray, np.ndarray]) -> list[Segment]:
    """Segments putting `vids` at the addresses `at` (another block's vectors of one tensor)."""
    return [Segment(int(v), 1, int(g), int(a)) for v, g, a in zip(vids, *at, strict=True)]


def layout_tensor(
    vps: dict[str, VProgram], hw: HardwareConfig, layers: int, head_layers: int = 0
) -> TensorLayout:
    """The rank's SRAM for stages of up to `layers` layers, the one with the head having
    `head_layers`: the head's weights sit above that stage's bands (where the stages without the
    head have further bands), so every stage's blocks see the same addresses and are scheduled
    once."""
    next_addr = np.zeros(hw.mem_slices, np.int64)
    cursor: dict = {}
    red = vps["reduce"]
    parts = sorted(
        {s.name for s in red.symbols if s.name.startswith("parts/")},
        key=lambda n: int(n.split("/")[1]),
    )
    consts = {b: {s.name for s in vp.symbols if s.kind == "const"} for b, vp in vps.items()}
    blocks = "sum" in vps  # a group of several blocks: the reduce adds its block's sum S
    static = {"reduce": place_static(red, hw, {"x", *parts, *(["S"] * blocks)} | consts["reduce"],
              next_addr, cursor).segments}  # fmt: skip
    x_at = _locate(static["reduce"], red.symbol("x", "input").vids)
    parts_at = [_locate(static["reduce"], red.symbol(p, "input").vids) for p in parts]
    sum_at = _locate(static["reduce"], red.symbol("S", "input").vids) if blocks else None
    q_at = []
    for b in ("attention", "mlp", "reduce-attention", "sum", "weigh", "head"):
        if b not in vps:
            continue
        qs = sorted((s.name for s in vps[b].symbols if s.name.startswith("q/")),
                    key=lambda n: int(n.split("/")[1]))  # fmt: skip
        placed = place_static(vps[b], hw, consts[b] | set(qs), next_addr, cursor).segments
        static[b] = placed
        q_at = q_at or [_locate(placed, vps[b].symbol(q, "input").vids) for q in qs]
        if any(s.name == "x" for s in vps[b].symbols):
            static[b] += _alias(vps[b].symbol("x", "input").vids, x_at)
        for j, p in enumerate(parts):  # the attention's slots: the first tp of the group's
            if b in ("reduce-attention", "sum") and any(s.name == p for s in vps[b].symbols):
                static[b] += _alias(vps[b].symbol(p, "input").vids, parts_at[j])
    band_lo = int(next_addr.max())
    next_addr[:] = band_lo
    band = {}
    for b in ("attention", "mlp") if layers else ():
        names = {s.name for s in vps[b].symbols if s.kind in ("param", "input") and s.name != "x"}
        band[b] = place_static(vps[b], hw, names, next_addr, cursor).segments
    if band:  # both blocks' rows levelled together
        parts = [(vps[b], band[b]) for b in band]
        band = dict(zip(band, balance_band(parts, hw, band_lo, next_addr), strict=True))
    band_words = int(next_addr.max()) - band_lo
    top = _top(hw, layers, band_lo, band_words, "a tensor-parallel rank's weights and KV cache")
    if "head" in vps:
        top_head = _top(hw, head_layers, band_lo, band_words, "the head's stage's layers")
        next_addr[:] = top_head
        names = {s.name for s in vps["head"].symbols if s.kind == "param"}
        static["head"] += place_static(vps["head"], hw, names, next_addr, cursor).segments
        head_top = int(next_addr.max())
        if head_top > hw.words_per_slice:
            raise ModelTooLarge(
                f"the head's weights need {head_top - top_head} words per slice above the "
                f"{top_head} of its stage's {head_layers} layers: {head_top} words of the "
                f"{hw.words_per_slice} per slice of {hw.name}; give the head's stage fewer layers "
                "(a larger pp) or a larger tp"
            )
        top = max(top, head_top)
    floor = np.full(hw.mem_slices, top, np.int64)
    return TensorLayout(
        hw, vps, layers, static, band, x_at, parts_at, band_lo, band_words, floor, sum_at, q_at
    )
