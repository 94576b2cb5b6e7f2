"""A layer's band (its weights and KV cache, repeated once a layer) is level across the slices, so
that the partition fit's bytes, which count a rank's tensors as stored, are what the compiler
needs (compiler/passes/balance.py, compiler/passes/partition.py).

Shapes only: the blocks are traced and tiled, never scheduled."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from compiler import _accumulators, lower
from compiler.frontend import model as fm
from compiler.frontend import shard
from compiler.passes import layout
from compiler.passes.partition import Mapping, fit
from compiler.passes.place import ModelTooLarge
from compiler.passes.tile import tile
from models import get_config
from sim import preset
from sim.isa import DTYPE_BYTES

TSP = preset("groq-tsp-v1")
LLAMA7 = get_config("llama2-7b")
CONTEXT = 64


def _tiled(targets: dict, hw) -> dict:
    acc = _accumulators(hw, True)
    return {b: tile(lower(fn, args, frozenset({"params"})), hw.lanes, acc)
            for b, (fn, args) in targets.items()}  # fmt: skip


def _tensor_blocks(cfg, tp: int, weights: str, hw=TSP) -> dict:
    """A rank's attention, MLP and reduce, as compile_tensor_stage traces them."""
    pos, context, _ = fm.resolve_step(cfg, pos=None, context=CONTEXT, layers=None)
    return _tiled({
        "attention": shard.attention_target(cfg, tp, pos=pos, context=context, weights=weights,
                                            lanes=hw.lanes),
        "mlp": shard.mlp_target(cfg, tp, weights=weights),
        "reduce": shard.reduce_target(cfg, tp),
    }, hw)  # fmt: skip


def _words(parts, hw) -> np.ndarray:
    """(slices,) words the band's segments take on each slice, checking that no two overlap."""
    words = np.zeros(hw.mem_slices, np.int64)
    taken: dict[int, list[tuple[int, int]]] = {}
    for vp, segments in parts:
        for s in segments:
            width = DTYPE_BYTES[vp.dtypes[s.v0]]
            words[s.group : s.group + width] += s.n
            for k in range(s.group, s.group + width):
                taken.setdefault(k, []).append((s.addr, s.addr + s.n))
    for runs in taken.values():
        runs.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(runs)), "two segments overlap"
    return words


def _assert_sound(parts, hw) -> None:
    """Every vector of the band once; an MXM vop's rows on one hemisphere; a tile's segments at
    most as many on a slice as it has read ports."""
    for vp, segments in parts:
        vids = np.concatenate([np.arange(s.v0, s.v0 + s.n) for s in segments])
        assert len(np.unique(vids)) == len(vids)
        vop = np.full(len(vp.dtypes), -1, np.int64)  # the MXM vop installing a vector, its tile
        tile_of = np.zeros(len(vp.dtypes), np.int64)
        for op in vp.ops:
            if op.rows is not None:
                vop[op.rows], tile_of[op.rows] = op.id, np.arange(len(op.rows)) // hw.lanes
        side, tiles = {}, {}
        for s in segments:
            if vop[s.v0] >= 0:
                side.setdefault(vop[s.v0], set()).add(s.group >= hw.half_slices)
                key = (vop[s.v0], tile_of[s.v0], s.group)
                tiles[key] = tiles.get(key, 0) + 1
        assert all(len(v) == 1 for v in side.values())
        assert max(tiles.values(), default=0) <= hw.mem_read_ports_per_slice


def _placed_as_is(monkeypatch):
    """place_static's band, not levelled (as before compiler/passes/balance.py)."""
    monkeypatch.setattr(layout, "balance_band", lambda parts, hw, lo, next_addr: [
        s for _, s in parts])  # fmt: skip


def test_a_tensor_parallel_band_is_level_and_the_fit_counts_it(monkeypatch):
    """llama2-7b int8 at tp=8: a rank's layer is 1,031.95 words a slice; placed as it came the
    band took 1,063 (31 words more every layer: 8 layers a chip ran out of words where the fit
    saw room), levelled it takes within 4 of the even share. The fit counts exactly the band's
    bytes (a rank's 512 query columns take 2 vectors a row: 10 of 8 ranks' 13)."""
    vps = _tensor_blocks(LLAMA7, 8, "int8")
    lay = layout.layout_tensor(vps, TSP, 1)
    parts = [(vps[b], lay.band[b]) for b in ("attention", "mlp")]
    _assert_sound(parts, TSP)
    words = _words(parts, TSP)
    even = words.sum() / TSP.mem_slices
    assert lay.band_words == words.max() <= math.ceil(even) + 4
    one = fit(Mapping(tp=8, pp=LLAMA7.n_layers + 1), LLAMA7, TSP, CONTEXT, "int8").stages[0]
    assert one.layers == range(1)
    assert one.total_bytes == words.sum() * TSP.lanes == round(even * TSP.lanes * TSP.mem_slices)
    # without levelling: the top of the band 31 words above the even share
    _placed_as_is(monkeypatch)
    assert layout.layout_tensor(vps, TSP, 1).band_words > even + 25


def test_a_layer_on_one_chip_is_level_and_the_fit_counts_it(monkeypatch):
    pos, context, _ = fm.resolve_step(LLAMA7, pos=None, context=CONTEXT, layers=None)
    fn, args = fm.layer_target(LLAMA7, pos=pos, context=context, weights="int8", lanes=TSP.lanes)
    vp = _tiled({"layer": (fn, args)}, TSP)["layer"]
    lay = layout.layout_blocks(vp, None, TSP, 1)
    _assert_sound([(vp, lay.band)], TSP)
    words = _words([(vp, lay.band)], TSP)
    assert lay.band_words == words.max() <= math.ceil(words.sum() / TSP.mem_slices) + 4
    stage = fit(Mapping(pp=LLAMA7.n_layers + 1), LLAMA7, TSP, CONTEXT, "int8").stages[0]
    assert stage.total_bytes == words.sum() * TSP.lanes
    _placed_as_is(monkeypatch)
    assert layout.layout_blocks(vp, None, TSP, 1).band_words > words.sum() / TSP.mem_slices + 50


@pytest.mark.parametrize(
    "model, tp, weights",
    [("tiny-llama", 2, "native"), ("tiny-llama", 2, "int8"), ("tiny-llama", 1, "fp8")],
)
def test_small_bands_stay_sound_and_no_higher(model, tp, weights, monkeypatch):
    """On the teaching chip (one track a side, one read port a slice), in every element type."""
    hw = preset("teaching")
    vps = _tensor_blocks(get_config(model), tp, weights, hw)
    lay = layout.layout_tensor(vps, hw, 2)
    parts = [(vps[b], lay.band[b]) for b in ("attention", "mlp")]
    _assert_sound(parts, hw)
    assert lay.band_words == _words(parts, hw).max()
    _placed_as_is(monkeypatch)
    assert lay.band_words <= layout.layout_tensor(vps, hw, 2).band_words


def test_a_band_too_high_for_its_layers_still_says_so():
    vps = _tensor_blocks(LLAMA7, 8, "int8")
    with pytest.raises(ModelTooLarge, match=r"8 layers need 10\d\d words per slice each"):
        layout.layout_tensor(vps, TSP, 8)
