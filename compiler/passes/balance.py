"""Level a band: the weights and KV cache of one layer, which every layer repeats at its own
offset (compiler/passes/layout.py), so that the band is as high as its words over the slices.

place_static puts each segment in the least filled group of its track as it goes, in the order of
the program's symbols: its last segments (40 rows each on groq-tsp-v1) decide the top, a track
takes an MXM vop's rows whole so that tracks differ by up to a vop's rows over their slices, and a
group of wide slices starts at its fullest slice's top (the words below on the others are lost).
A band is placed once and repeated every layer, so its fullest slice's words above the even share
are lost once a layer: 31 of 1,063 words on a llama2-7b int8 layer at tp=8, 57 of 7,406 on one
chip.

Here, with the whole band known, a width at a time, widest first (a group of narrow slices lies
inside one of wide slices, so each group starts level):
1. vops move between tracks (or two swap) while that lowers the fullest track's mean;
2. whole segments (a whole tile's, `chunk_vectors` rows) stay where place_static put them, and
   the rest (short last tiles', moved vops') go to the least filled group of their track, the
   largest first;
3. two groups of a track exchange segments (one for none, one or two) while that brings them
   closer, at most as many segments of a tile in a group as a slice has read ports (as
   place._first_tile_groups), so that a tile still streams from all its segments at once;
then the addresses follow, widest first, each group's segments in the order placed. Rows no MXM
installs (norms, scales, a cache the VXM reads) stay where place_static put them, from the VXM
outwards. A band holding a stacked parameter (units a select register picks) stays as placed.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter

import numpy as np

from compiler.ir.vector import VProgram
from compiler.passes.place import Segment, hemisphere_groups
from sim.hardware import HardwareConfig
from sim.isa import DTYPE_BYTES


@dataclasses.dataclass(eq=False)
class _Row:
    """A segment: its place in `parts`, rows, width, the key of its vop and track (None: rows no
    MXM installs), its tile (a row no MXM installs is a tile of its own), and its group."""

    part: int
    index: int
    n: int
    width: int
    key: tuple | None
    tile: tuple
    group: int


def balance_band(
    parts: list[tuple[VProgram, list[Segment]]],
    hw: HardwareConfig,
    lo: int,
    next_addr: np.ndarray,
) -> list[list[Segment]]:
    """The segments of a band placed from address `lo` on every slice, `parts` of several blocks
    (a block's program and its segments, in the order placed), regrouped and readdressed;
    `next_addr` (slices,) becomes the first free address of every slice above them."""
    if any(vp.units for vp, _ in parts):
        return [segs for _, segs in parts]
    rows = _rows(parts, hw)
    level = np.zeros(hw.mem_slices, np.int64)  # words on each slice of the widths done
    for width in sorted({r.width for r in rows}, reverse=True):
        _level_width([r for r in rows if r.width == width], width, hw, level)
    where = {(r.part, r.index): r.group for r in rows}
    regrouped = [
        [dataclasses.replace(s, group=where[(p, i)]) for i, s in enumerate(segs)]
        for p, (_, segs) in enumerate(parts)
    ]
    return _readdress(parts, regrouped, lo, next_addr)


def _rows(parts, hw: HardwareConfig) -> list[_Row]:
    tracks = hw.mxm_planes // 2
    rows = []
    for p, (vp, segs) in enumerate(parts):
        installer = np.full(len(vp.dtypes), -1, np.int64)  # the MXM vop that installs a vector
        tile = np.zeros(len(vp.dtypes), np.int64)  # the tile of its rows it is in
        for op in vp.ops:
            if op.rows is not None:
                installer[op.rows] = op.id
                tile[op.rows] = np.arange(len(op.rows)) // hw.lanes
        for i, s in enumerate(segs):
            width = DTYPE_BYTES[vp.dtypes[s.v0]]
            side = int(s.group >= hw.half_slices)
            vop = int(installer[s.v0])
            key, tile_key = None, (p, -1, i)
            if vop >= 0:  # place._track_groups: every tracks-th group from the MXM's edge
                edge = hemisphere_groups(hw, width)[side][-1]
                key = (p, vop, side, (edge - s.group) // width % tracks)
                tile_key = (p, vop, int(tile[s.v0]))
            rows.append(_Row(p, i, s.n, width, key, tile_key, s.group))
    return rows


def _level_width(rows: list[_Row], width: int, hw: HardwareConfig, level: np.ndarray) -> None:
    """Regroup the segments of one width above `level`, then raise it by them."""
    tracks = hw.mxm_planes // 2
    sides = [hemisphere_groups(hw, width)[side][::-1] for side in (0, 1)]  # from the MXM's edge
    members = {(side, t): sides[side][t::tracks] for side in (0, 1) for t in range(tracks)}
    fill = {g: int(level[g]) for side in sides for g in side}
    keys = {r.key: r.key[2:] for r in rows if r.key is not None}  # -> (side, track)
    _even_tracks(rows, keys, members, fill)
    reads = hw.mem_read_ports_per_slice
    held: dict[tuple, int] = {}  # (tile, group) -> segments
    # Whole segments stay where place_static put them, unless their vop changed track; the
    # short ones (a short last tile's) fill the gaps, the largest first.
    full = max((r.n for r in rows if r.key is not None), default=0)
    stay = [r for r in rows if r.key is None or (keys[r.key] == r.key[2:] and r.n == full)]
    ids = {id(r) for r in stay}
    for r in stay:
        fill[r.group] += r.n
        held[(r.tile, r.group)] = held.get((r.tile, r.group), 0) + 1
    for r in sorted((r for r in rows if id(r) not in ids), key=lambda r: -r.n):
        own = members[keys[r.key]]
        free = [g for g in own if held.get((r.tile, g), 0) < reads] or own
        r.group = min(free, key=lambda g: fill[g])  # the nearest the MXM among equals
        fill[r.group] += r.n
        held[(r.tile, r.group)] = held.get((r.tile, r.group), 0) + 1
    for track, own in members.items():
        _pair_up([r for r in rows if r.key is not None and keys[r.key] == track], own, fill, held,
                 reads)  # fmt: skip
    for g, f in fill.items():
        level[g : g + width] = f


def _even_tracks(rows: list[_Row], keys: dict, members: dict, fill: dict) -> None:
    """Move a vop, or swap two, from the fullest track (mean words a group) to the emptiest while
    that lowers the fullest; `keys` takes the new tracks."""
    sizes: dict[tuple, int] = {}
    for r in rows:
        if r.key is not None:
            sizes[r.key] = sizes.get(r.key, 0) + r.n
    for _ in range(4 * len(sizes) + 1):
        load = {t: float(sum(fill[g] for g in m)) for t, m in members.items()}
        for key, n in sizes.items():
            load[keys[key]] += n
        mean = {t: load[t] / len(m) for t, m in members.items()}
        hi, lo = max(mean, key=mean.get), min(mean, key=mean.get)
        on_hi = [k for k in sizes if keys[k] == hi]
        on_lo = [None] + [k for k in sizes if keys[k] == lo]
        if hi == lo or not on_hi:
            return
        d = np.array([sizes[k] for k in on_hi], np.float64)[:, None] - np.array(
            [0] + [sizes[k] for k in on_lo[1:]], np.float64
        )  # words that leave the fullest track
        after = np.maximum((load[hi] - d) / len(members[hi]), (load[lo] + d) / len(members[lo]))
        after[d <= 0] = np.inf
        if after.min() >= mean[hi] - 1e-9:
            return
        i, j = np.unravel_index(int(np.argmin(after)), after.shape)
        keys[on_hi[i]] = lo
        if on_lo[j] is not None:
            keys[on_lo[j]] = hi


def _pair_up(rows: list[_Row], groups: list[int], fill: dict, held: dict, reads: int) -> None:
    """Bring pairs of groups closer by exchanges of `rows` (_best_swap) until no pair can: each
    lowers the sum of the squared fills, so it ends."""
    at: dict[int, list[_Row]] = {g: [] for g in groups}
    for r in rows:
        at[r.group].append(r)
    changed = True
    while changed:
        changed = False
        for g, h in itertools.combinations(groups, 2):
            if fill[g] < fill[h]:
                g, h = h, g
            gap = fill[g] - fill[h]
            if gap > 1 and _best_swap(at, g, h, gap, held, reads, fill):
                changed = True


def _best_swap(at, g: int, h: int, gap: int, held: dict, reads: int, fill: dict) -> bool:
    """Move a row of g to h, and none, one or two of h's back, leaving them the closest; False:
    no move brings them closer (two back: a 40-row segment for two of 16 moves 8 words)."""
    count = Counter(r.n for r in at[h])
    backs = [(), *((b,) for b in count)] + [
        (b, c)
        for b, c in itertools.combinations_with_replacement(sorted(count), 2)
        if b != c or count[b] > 1
    ]
    options = sorted(
        (abs(gap - 2 * (a - sum(bs))), a, bs)
        for a in {r.n for r in at[g]}
        for bs in backs
        if 0 < a - sum(bs) < gap
    )
    for _, a, bs in options:
        back = [x for x in at[h] if x.n == bs[0]][: len(bs)] if bs else []
        if len(bs) == 2 and bs[1] != bs[0]:
            back = back[:1] + [x for x in at[h] if x.n == bs[1]][:1]
        for r in (r for r in at[g] if r.n == a):
            if _apply([(r, g, h)] + [(x, h, g) for x in back], at, held, fill, reads):
                return True
    return False


def _apply(moves, at, held: dict, fill: dict, reads: int) -> bool:
    """Make the moves (row, from, to) unless they leave more than `reads` segments of a tile in a
    group; whether they were made."""
    for x, src, dst in moves:
        held[(x.tile, src)] -= 1
        held[(x.tile, dst)] = held.get((x.tile, dst), 0) + 1
    if any(held[(x.tile, dst)] > reads for x, _, dst in moves):
        for x, src, dst in moves:
            held[(x.tile, src)] += 1
            held[(x.tile, dst)] -= 1
        return False
    for x, src, dst in moves:
        at[src].remove(x)
        at[dst].append(x)
        fill[src] -= x.n
        fill[dst] += x.n
        x.group = dst
    return True


def _readdress(parts, regrouped, lo: int, next_addr: np.ndarray) -> list[list[Segment]]:
    """Addresses from `lo` up, widest element type first, each group's in the order placed."""
    order = [(DTYPE_BYTES[vp.dtypes[s.v0]], p, i) for p, (vp, _) in enumerate(parts)
             for i, s in enumerate(regrouped[p])]  # fmt: skip
    order.sort(key=lambda o: (-o[0], o[1], o[2]))
    next_addr[:] = lo
    out = [list(segs) for segs in regrouped]
    for width, p, i in order:
        s = out[p][i]
        a = int(next_addr[s.group : s.group + width].max())
        next_addr[s.group : s.group + width] = a + s.n
        out[p][i] = dataclasses.replace(s, addr=a)
    return out
