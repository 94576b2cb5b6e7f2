"""The resource-constrained list scheduler, on streams of vectors.

Vops are taken from a ready list in priority order (longest path to the end first; ties by id, so
the schedule is deterministic). A vop on a run of n vectors becomes *pieces*, one per stretch of
its operands that is stored contiguously in one slice group; each piece is one group of streamed
instructions that repeat n times, one vector per cycle, as the TSP's Repeat does:

- a READ of each operand from one of its copies, timed so that vector j passes the unit exactly
  when the unit consumes it (one position per cycle on a free stream group);
- the unit itself (a VXM ALU, an SXM unit, an MXM plane's install port or compute pipeline);
- a WRITE of the results into the nearest slice group whose write port is free when they pass
  (or the slice group an output is pinned to).

An MXM vop installs its weight tile as parallel INSTALL pieces (one per stored segment of rows, up
to the plane's install width at once) and then streams its inputs through it; where installs bind,
its MATMULs are placed later, when the tile's buffer is wanted again (`_Scheduler.place_mxm`).

Every resource is a capacity-one timeline of busy intervals (`Busy`): a port or unit by cycle, a
queue's dispatch slots by cycle (an instruction holds one for the cycle it dispatches: the ICU
dispatches at most icu_issue_width a cycle per queue), a stream by diagonal (sim.isa.diagonal) in
each *zone* of positions its vectors cross, so a piece's claims are intervals of length n at fixed
offsets from its issue cycle. The earliest cycle at which all of them are free is found by jumping
from one busy interval's end to the next (a bisection each), never cycle by cycle.

Streams: a vector flows on until a unit downstream puts another on its diagonal (sim/reference.py),
so one diagonal of a stream carries several vectors over disjoint stretches of the chip. The
scheduler cuts the positions into zones (each hemisphere into ZONES_PER_HEMISPHERE, the VXM alone)
and claims a vector's diagonal in every zone from where it enters to where its last consumer
takes it: vectors whose zones differ never meet.

Stream chaining: a consumer downstream of a unit may take its results straight from the stream
at the one cycle they pass (a `Flow`), with no WRITE and READ between, claiming the zones from
where the results were written on to it; a result every consumer took so is then not written.

The output: instruction records (READ/WRITE addresses still relative to a `Copy`, which the
allocator places), every copy of every stored run, and the predicted cycle count, which the
simulator must measure too.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from compiler.ir.vector import Selection, VOp, VProgram
from compiler.passes.place import Placement, chunk_vectors, installs_bind, slice_groups
from sim.errors import ScheduleError
from sim.hardware import HardwareConfig
from sim.isa import (
    DTYPE_BYTES,
    FLAG_ACC_IN,
    FLAG_ACC_OUT,
    FLAG_BUFFER,
    FLAG_INDIRECT,
    FLAG_TRANSPOSED,
    DType,
    Op,
    Unit,
    issue_width,
    latency,
    matmul_period,
    queue_mxm,
    queue_sxm,
    queue_vxm,
)


@dataclass(eq=False)
class Seg:
    """A run of vectors v0..v0+n-1 stored contiguously; every copy holds all of it."""

    v0: int
    n: int
    copies: list[Copy] = field(default_factory=list)


# Results go to the least written of the nearest SPREAD slice groups.
SPREAD = 2
# ... or, when those are busy, one of the nearest WRITE_REACH.
WRITE_REACH = 8

# The widths of stream groups: a vector of b bytes per lane takes an aligned group of b streams.
STREAM_GROUPS = (1, 2, 4)

# Zones of stream positions per hemisphere: more lets more vectors share a diagonal, at the cost
# of a claim per zone a vector crosses.
ZONES_PER_HEMISPHERE = 2

# A spaced run (an FP16 MATMUL's inputs and sums) of up to this many vectors claims each one's
# cycle alone; a longer one its whole span.
SPACED_CLAIMS = 32

# ... and a VXM op takes a spaced run straight from its stream, at its pace, when it is at most
# this long (a longer one waits for it in SRAM: trying both paces costs compile time).
PACED_VECTORS = 8

# A piece that finds no common free slot after this many attempts means a scheduler bug.
LIMIT_ATTEMPTS = 10_000


class Busy:
    """The busy cycles (or diagonals) of one capacity-one resource: sorted, disjoint, merged
    half-open intervals [lo[i], hi[i])."""

    __slots__ = ("lo", "hi")

    def __init__(self) -> None:
        self.lo: list[int] = []
        self.hi: list[int] = []

    def earliest(self, t: int, n: int) -> int:
        """The first s >= t with [s, s + n) free."""
        lo, hi = self.lo, self.hi
        if not lo or t >= hi[-1]:  # past everything (the common case at the frontier)
            return t
        i = bisect_right(lo, t) - 1
        if i >= 0 and hi[i] > t:
            t = hi[i]
        i += 1
        while i < len(lo) and lo[i] < t + n:
            t = hi[i]
            i += 1
        return t

    def add_union(self, t: int, n: int) -> None:
        """Make [t, t + n) busy, merging with whatever it overlaps or touches."""
        lo, hi = self.lo, self.hi
        if not lo or t > hi[-1]:  # past everything (the common case at the frontier)
            lo.append(t)
            hi.append(t + n)
            return
        if t >= lo[-1]:  # overlaps or extends the last interval alone
            hi[-1] = max(hi[-1], t + n)
            return
        i = bisect_right(hi, t - 1)  # the first interval ending at or after t
        if i == len(lo) or lo[i] > t + n:  # overlaps and touches nothing: a plain insert
            self.add(t, n)
            return
        j = bisect_right(lo, t + n) - 1  # the last interval starting at or before t + n
        lo[i], hi[i] = min(lo[i], t), max(hi[j], t + n)
        del lo[i + 1 : j + 1], hi[i + 1 : j + 1]

    def add(self, t: int, n: int) -> None:
        lo, hi = self.lo, self.hi
        i = bisect_right(lo, t)
        if i > 0 and hi[i - 1] == t:  # extends the interval before it
            hi[i - 1] = t + n
            if i < len(lo) and lo[i] == t + n:
                hi[i - 1] = hi[i]
                del lo[i], hi[i]
        elif i < len(lo) and lo[i] == t + n:
            lo[i] = t
        else:
            lo.insert(i, t)
            hi.insert(i, t + n)


@dataclass(eq=False)
class Copy:
    """One stored copy of a segment: in slice group `group`, readable from cycle `ready`."""

    seg: Seg = field(repr=False)
    group: int
    ready: int
    write: int = -1  # cycle of its first WRITE, -1 if placed before the program starts
    addr: int = -1  # fixed address (static or pinned), or -1 until the allocator places it
    last_read: int = -1
    index: int = 0  # position in Schedule.copies
    unit_words: int = 0  # unit 0 of a stacked parameter: read through a select register
    selection: Selection | None = None  # a copy of the unit some choice picked
    dead: bool = False  # written, but every consumer took the vectors from the stream
    period: int = 1  # cycles between its vectors' WRITEs


@dataclass(eq=False)
class Flow:
    """A unit's results on a stream: vector v0 + j enters stream group `stream` at position
    `pos` at cycle t + j*period; its diagonals are claimed up to position `reach` (where they are
    written), and any unit downstream may take them that claims the zones beyond."""

    v0: int
    n: int
    stream: int
    t: int
    pos: int
    period: int
    reach: int


@dataclass(frozen=True)
class _Pending:
    """An installed tile whose MATMULs are still to be placed (`place_mxm`)."""

    op: VOp
    plane: int
    buffer: int
    x: np.ndarray  # the input vids streamed through it
    tile: tuple  # (extent, count, tile id, accumulator flags, K tile index): matmuls' `tile`
    ready: int  # the cycle the tile is installed


@dataclass
class Schedule:
    records: list[dict]  # instruction records; READ/WRITE carry `_copy` and `_off` until placed
    segs: list[Seg]  # every stored run, sorted by v0
    copies: list[Copy]
    cycles: int  # predicted: the last event's completion
    free: int = 0  # when every unit is free again (a MATMUL holds its plane `period` a vector)


class _Store:
    """vid -> the segment that holds it (segments never overlap)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.by_start: dict[int, Seg] = {}

    def add(self, seg: Seg) -> None:
        i = bisect_right(self.starts, seg.v0)
        self.starts.insert(i, seg.v0)
        self.by_start[seg.v0] = seg

    def find(self, v: int) -> Seg | None:
        i = bisect_right(self.starts, v) - 1
        if i < 0:
            return None
        seg = self.by_start[self.starts[i]]
        return seg if v < seg.v0 + seg.n else None

    def get(self, v: int) -> Seg:
        seg = self.find(v)
        assert seg is not None, f"vector {v} is read before anything writes it: scheduler bug"
        return seg


# A claim: intervals of n at offsets from a piece's issue cycle t, on resource keys.
Items = list[tuple[tuple, int, int]]


class _Scheduler:
    def __init__(self, vp: VProgram, hw: HardwareConfig, placement: Placement, pins, chaining):
        self.vp, self.hw, self.chaining = vp, hw, chaining
        self.busy: dict[tuple, Busy] = {}
        self.store = _Store()
        self.copies: list[Copy] = []
        for s in placement.segments:
            seg = Seg(s.v0, s.n)
            self.add_copy(Copy(seg, s.group, 0, addr=s.addr, unit_words=s.unit_words))
            self.store.add(seg)
        self.reg_ready: dict[int, int] = {}  # select register -> cycle its TOPK value is readable
        self.flows = _Store()  # unit results on streams, which consumers downstream may take
        self.pins = _Store()  # output vids that must be written to a fixed (group, address)
        self.pin_at: dict[int, tuple[int, int]] = {}  # pin v0 -> (group, addr)
        for v0, n, g, a in pins:
            self.pins.add(Seg(v0, n))
            self.pin_at[v0] = (g, a)
        self.writes = [0] * hw.mem_slices  # words written into each group so far
        # A group that has taken this many more words than another yields to it.
        self.spill_words = max(1, hw.words_per_slice // 8)
        self.tier_version = 0
        self._targets: dict[tuple, list[int]] = {}
        self.stream_next = [0, 0]  # per direction: the stream after the last one claimed
        self._orders: dict[tuple, list[int]] = {}
        self.records: list[dict] = []
        # (plane, weight buffer) -> the cycle after the last MATMUL of the tile it holds
        self.plane_free = {
            (p, b): 0 for p in range(hw.mxm_planes) for b in range(hw.mxm_weight_buffers)
        }
        self.acc_free = [0] * hw.mxm_planes  # the cycle after a plane's last accumulating MATMUL
        self.pending: list[_Pending] = []  # installed tiles' MATMULs not yet placed (place_mxm)
        self.groups = {w: slice_groups(hw, w) for w in (1, 2, 4)}
        self.rl, self.wl = hw.mem_read_latency_cycles, hw.mem_write_latency_cycles
        self.S = hw.streams_per_direction
        self._nearest: dict[tuple, list[int]] = {}
        self.zone = stream_zones(hw, ZONES_PER_HEMISPHERE)
        self._covers: dict[tuple, tuple] = {}
        self.chunk = chunk_vectors(hw)  # cycles a plane takes to install a whole tile
        self.read_ports = hw.mem_read_ports_per_slice
        self.write_ports = hw.mem_write_ports_per_slice
        self.mem_units = self.read_ports + self.write_ports  # what a slice's queue feeds

    def add_copy(self, copy: Copy) -> Copy:
        copy.index = len(self.copies)
        self.copies.append(copy)
        copy.seg.copies.append(copy)
        return copy

    def slots(self, q: int, units: int) -> list[tuple]:
        """Dispatch-slot keys of queue q, whose unit runs `units` instructions a cycle: none
        when the queue dispatches at least that many (the unit's own claim suffices)."""
        w = issue_width(self.hw, q)
        return [] if w >= units else [("q", q, k) for k in range(w)]

    def slot_claims(self, q: int, units: int) -> list:
        """Queue q's dispatch slot as a claim of its own (none when the queue never binds): the
        slot and the unit are independent, so a busy slot fails one option, not every unit's."""
        slots = self.slots(q, units)
        return [lambda: iter([([(sl, 0, 1)], [], 0, None, None) for sl in slots])] if slots else []

    def unit_options(self, keys: list, q: int, n: int, units: int | None = None):
        """Options for n cycles of one of the units `keys`, dispatched from queue q (which feeds
        `units` units in all, by default those)."""
        slots = self.slots(q, len(keys) if units is None else units)
        if not slots:
            return [([(k, 0, n)], [], 0, None, None) for k in keys]
        return [([(k, 0, n), (sl, 0, 1)], [], 0, None, None) for k in keys for sl in slots]

    def width(self, vid: int) -> int:
        return DTYPE_BYTES[self.vp.dtypes[vid]]

    def write_targets(self, w: int, pos: int) -> list[int]:
        """Where results entering a stream at `pos` may go: the nearest groups that have not yet
        taken much more than the others (so bulk results spread over the chip instead of filling
        the slices next to a unit), the least written of the nearest few first (so that operands
        of one op rarely share a slice and need a copy)."""
        key = (w, pos, self.tier_version)
        if key not in self._targets:
            tier = {g: self.writes[g] // self.spill_words for g in self.groups[w]}
            near = sorted(self.nearest(w, pos), key=lambda g: tier[g])  # stable: by distance
            self._targets[key] = near[:WRITE_REACH]
        near = self._targets[key]
        return sorted(near[:SPREAD], key=lambda g: self.writes[g]) + near[SPREAD:]

    def nearest(self, width: int, pos: int) -> list[int]:
        key = (width, pos)
        if key not in self._nearest:
            p = self.hw.slice_position
            self._nearest[key] = sorted(self.groups[width], key=lambda g: (abs(p(g) - pos), g))
        return self._nearest[key]

    # --- finding the earliest common free slot ------------------------------------------------

    def _earliest(self, key: tuple, s: int, n: int, tent: dict) -> int:
        b = self.busy.get(key)
        while True:
            s2 = b.earliest(s, n) if b is not None else s
            for ts, tn in tent.get(key, ()):
                if ts < s2 + n and s2 < ts + tn:
                    s2 = ts + tn
            if s2 == s:
                return s
            s = s2

    def _conj(self, items: Items, t: int, tent: dict) -> int:
        """The first t' >= t at which every item is free."""
        while True:
            moved = False
            for key, off, n in items:
                s = self._earliest(key, t + off, n, tent)
                if s != t + off:
                    t, moved = s - off, True
            if not moved:
                return t

    def _solve(self, t: int, claims: list[Callable[[], Iterable]]) -> tuple[int, list]:
        """Earliest t at which one option of every claim fits. An option is (ports, streams,
        lower and upper bound on t (None: none), payload): the intervals it needs on ports or
        units, and on streams; options of one claim that share their `ports` list differ only in
        the stream they take. Options are tried in order, and the first that fits at t is
        taken."""
        blocked = set()  # kinds of resource that moved t
        for _ in range(LIMIT_ATTEMPTS):
            tent: dict[tuple, list] = {}
            chosen = []
            for claim in claims:
                best = self._first_fit(claim, t, tent)
                if best is None:  # none fits at t: the earliest any option can start
                    best = self._earliest_option(claim, t, tent)
                if best[0] > t:
                    t = best[0]
                    blocked.update(str(key[0]) for key, _, _ in best[1])
                    break
                chosen.append((best[1], best[2]))
                for key, off, n in best[1]:
                    for k in self.covers(key):
                        tent.setdefault(k, []).append((t + off, n))
            else:
                return t, chosen
        names = {"rd": "SRAM read ports", "wr": "SRAM write ports", "st": "streams",
                 "q": "queue dispatch slots", "vxm": "VXM ALUs", "sxm": "SXM units",
                 "mxi": "MXM install ports", "mxc": "MXM compute"}  # fmt: skip
        held = ", ".join(sorted(names.get(k, k) for k in blocked))
        raise ScheduleError(
            f"{self.hw.name}: no cycle found within {LIMIT_ATTEMPTS} tries where one piece's "
            f"{held} are all free at once; more streams (streams_per_direction), ports or units "
            "(mem_slices, vxm_alus, sxm_units_per_hemisphere) give the scheduler room"
        )

    def _first_fit(self, claim, t: int, tent: dict):
        busy_ports = {}  # ports lists already found busy at t, by identity (kept alive here)
        for ports, streams, lb, ub, payload in claim():
            if lb > t or (ub is not None and t > ub) or id(ports) in busy_ports:
                continue
            if not self._fits(ports, t, tent):
                busy_ports[id(ports)] = ports
                continue
            if self._fits(streams, t, tent):
                return t, ports + streams, payload
        return None

    def _earliest_option(self, claim, t: int, tent: dict):
        """The option that can start soonest: ports lists by when their ports alone are free,
        soonest first, and each one's streams only while it can still beat the best."""
        options = list(claim())
        bound: dict[int, int] = {}  # per ports list (alive in `options`): its ports' earliest
        for ports, _, lb, _, _ in options:
            if id(ports) not in bound:
                bound[id(ports)] = self._conj(ports, max(t, lb), tent)
        options.sort(key=lambda o: bound[id(o[0])])  # stable: the claim's order among equals
        best = None
        for ports, streams, _, ub, payload in options:
            b = bound[id(ports)]
            if best is not None and b >= best[0]:
                break  # no stream can make this one, or any after it, earlier than the best
            items = ports + streams
            tt = self._conj(items, b, tent)
            if ub is not None and tt > ub:
                continue  # an exact-time option (a forward) that cannot be met
            if best is None or tt < best[0]:
                best = (tt, items, payload)
        assert best is not None, "a claim with no option: scheduler bug"
        return best

    def _fits(self, items: Items, t: int, tent: dict) -> bool:
        for key, off, n in items:
            s = t + off
            b = self.busy.get(key)
            if b is not None and b.earliest(s, n) != s:
                return False
            for ts, tn in tent.get(key, ()):
                if ts < s + n and s < ts + tn:
                    return False
        return True

    def _commit(self, t: int, chosen: list) -> None:
        for items, _ in chosen:
            for key, off, n in items:
                for k in self.covers(key):
                    b = self.busy.get(k)
                    if b is None:
                        b = self.busy[k] = Busy()
                    b.add_union(t + off, n)

    def covers(self, key: tuple) -> tuple:
        """The keys a claim on `key` makes busy. A stream group (one stream, an aligned pair or
        an aligned four) is checked as one key that holds every claim on any of its streams, so a
        claim is added to each of its streams' keys, and to the pair's and the four's that hold
        them."""
        found = self._covers.get(key)
        if found is None:
            if key[0] != "st":
                found = (key,)
            else:
                _, d, w, s0, z = key
                words = range(s0, s0 + w)
                found = tuple(
                    dict.fromkeys(("st", d, v, m // v * v, z) for v in STREAM_GROUPS for m in words)
                )
            self._covers[key] = found
        return found

    # --- claim options --------------------------------------------------------------------------

    def stream_order(self, d: int, w: int) -> list[int]:
        """Stream groups of width w in direction d, from the one after the last taken: streams
        are claimed in turn, so the first tried is the one most likely free."""
        key = (d, w)
        order = self._orders.get(key)
        if order is None:
            groups = list(range(0, self.S, w))
            k = (self.stream_next[d] // w) % len(groups)
            order = self._orders[key] = groups[k:] + groups[:k]
        return order

    def took_stream(self, d: int, s: int) -> int:
        """Stream group s of direction d is taken: the next search starts after it."""
        self.stream_next[d] = s + 1
        self._orders.clear()
        return d * self.S + s

    def _stream_items(self, d: int, s: int, w: int, diag_off: int, run, a: int, b: int) -> Items:
        """The diagonals of a run (`spans`) of stream group s (w wide) of direction d from
        t + diag_off, in every zone from position a to position b: one key per zone, the group's
        (see `covers`)."""
        za, zb = sorted((self.zone[a], self.zone[b]))
        return [(("st", d, w, s, z), diag_off + o, k) for z in range(za, zb + 1) for o, k in run]

    def usable(self, seg: Seg, sel: Selection | None) -> list[Copy]:
        """The copies a read may use: for a chosen unit (`sel`), unit 0's home read through the
        select register or a copy made of that same choice; else the plain copies."""
        if sel is None:
            return [c for c in seg.copies if c.selection is None]
        return [c for c in seg.copies if c.unit_words or sel.same_choice(c.selection)]

    def read_options(
        self,
        seg: Seg,
        v0: int,
        w: int,
        pos: int,
        n: int,
        only: Copy | None = None,
        sel=None,
        period: int = 1,
    ):
        """Options for READing vectors v0..v0+n-1 of `seg` (from copy `only`, if given) so that
        vector v0+j passes `pos` at t+j*period: payload (copy, stream, direction). Ports and
        streams are claimed for each vector of a spaced run."""
        hw = self.hw
        run = spans(n, period)
        for c in self.usable(seg, sel) if only is None else [only]:
            ready = c.ready
            if c.write >= 0:  # its vectors land one every c.period cycles from its first WRITE
                k = v0 - seg.v0
                ready += k * c.period + (n - 1) * max(0, c.period - period)
            if sel is not None and c.unit_words:  # its address waits for the TOPK's choice
                ready = max(ready, self.reg_ready[sel.register])
            p0 = hw.slice_position(c.group)
            off_r = -abs(pos - p0) - self.rl  # READ issue relative to t
            d = 0 if pos >= p0 else 1
            diag_off = -pos if d == 0 else pos
            slots = [(sl, off_r, 1) for sl in self.slots(c.group, self.mem_units)]
            for k in range(self.read_ports):
                ports = [(("rd", c.group + m, k), off_r + o, L) for m in range(w) for o, L in run]
                ports += slots
                for s in self.stream_order(d, w):
                    yield (
                        ports,
                        self._stream_items(d, s, w, diag_off, run, p0, pos),
                        ready - off_r,
                        None,
                        (c, s, d),
                    )

    def forward_options(self, v0: int, pos: int, n: int, period: int = 1):
        """Taking vectors v0..v0+n-1 straight from the stream their unit put them on, where it
        passes `pos` (downstream of the unit): only at the one cycle they pass and at their pace
        (stream chaining, no SRAM round trip), with the flow's diagonals in the zones beyond its
        reach. Payload ("forward", stream, flow, pos)."""
        f = self.flows.find(v0) if self.chaining else None
        if f is None or v0 + n > f.v0 + f.n or (n > 1 and f.period != period):
            return
        d, s = divmod(f.stream, self.S)
        if (pos < f.pos) if d == 0 else (pos > f.pos):
            return
        t = f.t + (v0 - f.v0) * f.period + abs(pos - f.pos)
        items = []
        beyond = pos > f.reach if d == 0 else pos < f.reach
        if beyond and self.zone[pos] != self.zone[f.reach]:
            first = f.reach + 1 if d == 0 else f.reach - 1  # a position past the reach
            while self.zone[first] == self.zone[f.reach]:
                first += 1 if d == 0 else -1
            diag0 = f.t - f.pos if d == 0 else f.t + f.pos
            span = (f.n - 1) * f.period + 1  # every vector of the flow: one reach for all
            w = self.width(f.v0)
            items = self._stream_items(d, s, w, diag0 - t, [(0, span)], first, pos)
        yield [], items, t, t, ("forward", f.stream, f, pos)

    def add_flow(self, v0: int, n: int, stream: int, t: int, pos: int, period: int, reach: int):
        self.flows.add(Flow(v0, n, stream, t, pos, period, reach))

    def write_options(self, w: int, pos: int, joff: int, n: int, pin=None, period: int = 1):
        """Options for WRITing n results that enter a stream at `pos` at t+joff+j: payload
        (group, stream, direction)."""
        hw = self.hw
        if pin is not None:
            groups = [pin[0]]
        else:
            groups = self.write_targets(w, pos)
        for g in groups:
            p = hw.slice_position(g)
            d = 0 if p >= pos else 1
            diag_off = joff - pos if d == 0 else joff + pos
            run = spans(n, period)
            at = joff + abs(p - pos)
            slots = [(sl, at, 1) for sl in self.slots(g, self.mem_units)]
            for k in range(self.write_ports):
                ports = [(("wr", g + m, k), at + o, L) for m in range(w) for o, L in run]
                ports += slots
                for s in self.stream_order(d, w):
                    items = self._stream_items(d, s, w, diag_off, run, pos, p)
                    yield ports, items, 0, None, (g, s, d)

    # --- recording ------------------------------------------------------------------------------

    def record_read(self, t, items, payload, vid, n, src, sel=None, period=1) -> int:
        c, s, d = payload
        tr = t + items[0][1]
        seg = self.store.get(vid)
        c.last_read = max(c.last_read, tr + (n - 1) * period)
        st = self.took_stream(d, s)
        rec = self.mem_record(Op.READ, tr, c, vid, n, src, period, sd=st, _off=vid - seg.v0)
        if sel is not None and c.unit_words:
            rec.update(flags=FLAG_INDIRECT, row=sel.register, count=c.unit_words, aux=sel.unit_vids)
        return st

    def mem_record(self, op: Op, t: int, c: Copy, vid: int, n: int, src: int, period: int, **kw):
        """A READ or WRITE of n vectors of copy c (its address placed later by the allocator)."""
        rec = dict(
            op=op, cycle=t, queue=c.group, slice=c.group, dtype=self.vp.dtypes[vid], vid=vid,
            src=src, repeat=n, stride=1 if n > 1 else 0, period=period, _copy=c, **kw,
        )  # fmt: skip
        self.records.append(rec)
        return rec

    def take(self, t, items, payload, vid, n, src, sel=None, period=1) -> int:
        """The stream an operand arrives on: straight from its unit, or by a READ."""
        if payload[0] == "forward":
            _, st, f, pos = payload
            f.reach = max(f.reach, pos) if st < self.S else min(f.reach, pos)
            return st
        return self.record_read(t, items, payload, vid, n, src, sel, period)

    def record_write(self, t, items, payload, vid, n, src, period=1) -> int:
        g, s, d = payload
        tw = t + items[0][1]
        pin_seg = self.pins.find(vid)
        addr = -1
        if pin_seg is not None:
            pg, pa = self.pin_at[pin_seg.v0]
            assert pg == g
            addr = pa + vid - pin_seg.v0
        seg = Seg(vid, n)
        if (self.writes[g] + n) // self.spill_words != self.writes[g] // self.spill_words:
            self.tier_version += 1
        self.writes[g] += n
        c = self.add_copy(Copy(seg, g, tw + self.wl, write=tw, addr=addr, period=period))
        self.store.add(seg)
        st = self.took_stream(d, s)
        self.mem_record(Op.WRITE, tw, c, vid, n, src, period, s0=st, _off=0)
        return st

    # --- pieces ---------------------------------------------------------------------------------

    def boundaries(self, starts: list[int], n: int, out0: int | None) -> list[int]:
        """Cut points of a run of n so that each piece of each operand run (and of the output
        run, where pinned) lies in one segment."""
        cuts = {0, n}
        for v0 in starts:
            j = 0
            while j < n:
                seg = self.store.get(v0 + j)
                j = seg.v0 + seg.n - v0
                cuts.add(min(j, n))
        if out0 is not None:
            starts = self.pins.starts
            i = max(bisect_right(starts, out0) - 1, 0)
            while i < len(starts) and starts[i] < out0 + n:
                seg = self.pins.by_start[starts[i]]
                cuts.add(min(max(seg.v0 - out0, 0), n))
                cuts.add(min(max(seg.v0 + seg.n - out0, 0), n))
                i += 1
        return sorted(c for c in cuts if 0 <= c <= n)

    def pin_of(self, vid: int):
        seg = self.pins.find(vid)
        return None if seg is None else self.pin_at[seg.v0]

    def separate(self, operands: list[tuple[int, Selection | None]], src: int) -> list[Copy]:
        """Operands consumed in one cycle must come from different slices (one read port each):
        pick a copy of each operand (vid, choice) that shares no slice with the earlier operands'
        picks, and make one (a MEM -> MEM copy) where there is none (always so for two vectors of
        one segment)."""
        picked: list[Copy] = []
        taken: set[int] = set()
        for v, sel in operands:
            seg, w = self.store.get(v), self.width(v)
            free = [
                c for c in self.usable(seg, sel) if all(c.group + m not in taken for m in range(w))
            ]
            c = free[0] if free else self.copy(seg, taken, src, sel)
            picked.append(c)
            taken.update(range(c.group, c.group + w))
        return picked

    def copy(self, seg: Seg, avoid: set[int], src: int, sel: Selection | None = None) -> Copy:
        """MEM -> MEM move of a whole segment (of the unit `sel` chose, if given) into a slice
        group none of whose slices is in `avoid` nor holds it already: a READ and a WRITE on one
        stream."""
        hw, w, n = self.hw, self.width(seg.v0), seg.n
        avoid = avoid | {c.group + m for c in seg.copies for m in range(w)}
        p0 = hw.slice_position(self.usable(seg, sel)[0].group)
        best = None
        for g in [g for g in self.nearest(w, p0) if all(g + m not in avoid for m in range(w))][:4]:
            pos = hw.slice_position(g)

            def claims(g=g, pos=pos):
                def wr():
                    slots = [(sl, 0, 1) for sl in self.slots(g, self.mem_units)]
                    for k in range(self.write_ports):
                        yield [(("wr", g + m, k), 0, n) for m in range(w)] + slots, [], 0, None, g

                return [lambda: self.read_options(seg, seg.v0, w, pos, n, sel=sel), wr]

            t, chosen = self._solve(0, claims())
            if best is None or t < best[0]:
                best = (t, chosen)
        t, chosen = best
        self._commit(t, chosen)
        (r_items, r_pay), (_, g) = chosen
        st = self.record_read(t, r_items, r_pay, seg.v0, n, src, sel)
        c = self.add_copy(Copy(seg, g, t + self.wl, write=t, selection=sel))
        self.records[-1]["_feeds"] = c  # the READ goes if the copy is never read (a forward won)
        self.mem_record(Op.WRITE, t, c, seg.v0, n, src, 1, s0=st, _off=0)
        return c

    def real(self, v: int) -> tuple[int, Selection | None]:
        """A vid as stored: a virtual one (a run-time choice of unit) as unit 0's."""
        sel = self.vp.selection(v) if self.vp.selected else None
        return (v, None) if sel is None else (v + sel.offset, sel)

    def place_simple(self, op: VOp) -> None:
        ins = list(dict.fromkeys(op.ins))
        for a0, b0 in self.chosen_pieces(ins, op.n):
            real = {}  # each input as stored from vector a0 on: r + j for vector j of the piece
            for v in ins:
                r, sel = self.real(v + a0)
                real[v] = (r - a0, sel)
            starts = [r + a0 for r, _ in real.values()]
            cuts = self.boundaries(starts, b0 - a0, op.outs[0] + a0)
            for a, b in zip(cuts, cuts[1:], strict=False):
                self.place_piece(op, a0 + a, b - a, real)

    def chosen_pieces(self, ins: list[int], n: int) -> list[tuple[int, int]]:
        """Pieces [a, b) of a vop's run of n in which every input that is a chosen unit stays
        in one of its tile columns: a unit's columns are a run of virtual vids, but each is
        stored with the other units' rows of its column (an int8 expert converted whole)."""
        cuts = {0, n}
        for v in ins:
            j = 0
            while self.vp.selected and j < n and self.vp.selection(v + j) is not None:
                k = bisect_right(self.vp.selected, (v + j, float("inf"))) - 1
                j = self.vp.selected[k][1] - v
                cuts.add(min(j, n))
        cuts = sorted(cuts)
        return list(zip(cuts, cuts[1:], strict=False))

    def place_piece(self, op: VOp, j0: int, n: int, real: dict) -> None:
        hw = self.hw
        lat = latency(hw, op.op)
        operands = [(r + j0, sel) for r, sel in real.values()]
        picked = self.separate(operands, op.src)
        segs = [self.store.get(v) for v, _ in operands]
        out = op.outs[0] + j0
        w_out = self.width(out)
        pin = self.pin_of(out)
        if op.unit == Unit.VXM:
            units = [(queue_vxm(hw), hw.vxm_position, [("vxm", a) for a in range(hw.vxm_alus)])]
        else:
            near = hw.slice_hemisphere(picked[0].group)
            units = [
                (queue_sxm(hw, h), hw.sxm_position(h), [("sxm", h, u) for u in range(hw.sxm_units_per_hemisphere)])
                for h in sorted((0, 1), key=lambda h: h != near)
            ]  # fmt: skip
        # A VXM op may also run at the pace of an operand that flows from its unit at one vector
        # every few cycles (an FP16 MATMUL's sums), to take it straight from the stream.
        paces = {1}
        if op.unit == Unit.VXM and 1 < n <= PACED_VECTORS and self.chaining:
            for v, sel in operands:
                f = self.flows.find(v) if sel is None else None
                if f is not None and f.period > 1 and v + n <= f.v0 + f.n:
                    paces.add(f.period)
        best = None
        for (q, pos, keys), per in ((u, p) for u in units for p in sorted(paces)):
            span = (n - 1) * per + 1
            t0 = max(
                min(
                    [c.ready + self.rl + abs(hw.slice_position(c.group) - pos)]
                    + [lb for _, _, lb, _, _ in self.forward_options(v, pos, n, per)]
                )
                for (v, _), c in zip(operands, picked, strict=True)
            )

            def claims(pos=pos, keys=keys, q=q, per=per, span=span):
                out = [lambda: iter(self.unit_options(keys, q, span))]
                for s, (v, sel), c in zip(segs, operands, picked, strict=True):
                    out.append(
                        lambda s=s, v=v, c=c, sel=sel: chain(
                            self.forward_options(v, pos, n, per) if sel is None else (),
                            self.read_options(s, v, self.width(v), pos, n, c, sel, per),
                        )
                    )
                out.append(lambda: self.write_options(w_out, pos, lat, n, pin, per))
                return out

            t, chosen = self._solve(t0, claims())
            if best is None or t + span < best[0] + best[4]:
                best = (t, chosen, q, pos, span, per)
        t, chosen, q, pos, _, per = best
        self._commit(t, chosen)
        streams = {}
        for (items, pay), (v, sel) in zip(chosen[1:-1], operands, strict=True):
            streams[v] = self.take(t, items, pay, v, n, op.src, sel, per)
        sd = self.record_write(t, *chosen[-1], out, n, op.src, per)
        self.add_flow(out, n, sd, t + lat, pos, per, hw.slice_position(chosen[-1][1][0]))
        rec = dict(
            op=op.op, cycle=t, queue=q, dtype=op.dtype, vid=out, src=op.src, sd=sd,
            count=op.count, table=op.table, repeat=n, period=per,
        )  # fmt: skip
        for k, v in enumerate(op.ins):
            r = real[v][0] + j0
            rec[f"s{k}"], rec[f"in{k}"] = streams[r], r
        if op.imm is not None:
            rec["imm"] = op.imm
        if op.op == Op.TOPK:  # its choices are readable from t + latency
            for r in range(op.table, op.table + int(op.imm)):
                self.reg_ready[r] = t + lat
        self.records.append(rec)

    def row_pieces(self, vids: np.ndarray) -> list[tuple[int, int, int]]:
        """(first row, first vid, count) of each stretch of consecutive vids in one segment."""
        out = []
        breaks = np.flatnonzero(np.diff(vids) != 1) + 1
        for a, b in zip([0, *breaks.tolist()], [*breaks.tolist(), len(vids)], strict=True):
            k, v = a, int(vids[a])
            while k < b:
                seg = self.store.get(v)
                n = min(b - k, seg.v0 + seg.n - v)
                out.append((k, v, n))
                k, v = k + n, v + n
        return out

    def matmul_pieces(self, ins: np.ndarray, out0: int) -> list[tuple[int, int, int]]:
        """Input stretches (row_pieces), cut where the outputs' pinned segments begin or end."""
        out = []
        for j0, x0, n in self.row_pieces(ins):
            cuts = self.boundaries([], n, out0 + j0)
            out += [(j0 + a, x0 + a, b - a) for a, b in zip(cuts, cuts[1:], strict=False)]
        return out

    def place_mxm(self, op: VOp) -> list[VOp]:
        """An MXM vop: per K tile (one, or a chain accumulating in the plane), its rows
        installed into the next weight buffer, then the inputs streamed through; a chain's tiles
        keep their partial sums in the plane's accumulator, and only the last puts results out.
        Where installs bind (`installs_bind`), the last tile's MATMULs wait (`pending`) until
        its buffer is wanted again or nothing else is ready. Returns the vops now finished."""
        hw = self.hw
        _, sel = self.real(int(op.rows[0]))  # a tile's rows are one column of one choice, or none
        rows = op.rows + (sel.offset if sel is not None else 0)
        # The buffer free soonest (with two per plane, a tile installs while the other computes),
        # on the side where the tile's rows are stored unless the other side frees a tile's
        # install time sooner: rows from the far hemisphere cross the chip on every stream.
        home = hw.slice_hemisphere(self.store.get(int(rows[0])).copies[0].group)
        far = self.chunk

        def cost(pb):
            side = 0 if pb[0] < hw.mxm_planes // 2 else 1
            return (self.plane_free[pb] + (far if side != home else 0), pb[1], pb[0])

        plane, buffer = min(self.plane_free, key=cost)
        tiles = op.chain or ((len(op.rows), op.count),)
        # A chain's first MATMULs use the accumulator: every MATMUL before them goes first.
        done = self.flush(plane, buffer if len(tiles) == 1 else None)
        ins = np.asarray(op.ins, np.int64)
        assert self.real(int(ins[0]))[1] is None, "a chosen unit streamed through the MXM"
        r0 = 0
        for k, (extent, count) in enumerate(tiles):
            b = (buffer + k) % hw.mxm_weight_buffers
            aux = op.id + k * len(self.vp.ops)  # a tile id per K tile (VProgram.tile_span)
            ready = self.install(op, plane, b, rows[r0 : r0 + extent], aux, sel)
            acc = (FLAG_ACC_IN if k else 0) | (FLAG_ACC_OUT if k < len(tiles) - 1 else 0)
            x = ins[k * op.n : (k + 1) * op.n]
            job = _Pending(op, plane, b, x, (extent, count, aux, acc, k), ready)
            if k == len(tiles) - 1 and installs_bind(op, self.vp, hw):
                # Its few inputs take single diagonals of the streams that installs fill
                # end to end: placed after the installs around them, they take a diagonal where
                # one install ends instead of cutting into the runs of those not yet placed
                # (measured on groq-tsp-v1: a 2560 x 2560 FP16 matrix-vector product's planes
                # finish installing at 677 and 681 instead of 687 and 705).
                self.pending.append(job)
                span = op.n * matmul_period(hw, self.width(int(x[0])))
                start = max(ready, self.acc_free[plane])
                self.plane_free[(plane, b)] = start + span  # a guess, until they are placed
                return done
            self.run_matmuls(job)
            r0 += extent
        return done + [op]

    def run_matmuls(self, job: _Pending) -> None:
        op, plane, b = job.op, job.plane, job.buffer
        after = self.matmuls(op, plane, b, job.x, job.tile, max(job.ready, self.acc_free[plane]))
        self.plane_free[(plane, b)] = self.acc_free[plane] = after

    def flush(self, plane: int | None = None, buffer: int | None = None) -> list[VOp]:
        """Place pending MATMULs, each plane's in order: `plane`'s up to the one on `buffer`
        (none, if no pending one is on it) or all of them (`buffer` None); or every plane's
        (`plane` None), the soonest ready first. The vops they finish."""
        if buffer is not None and all(j.buffer != buffer for j in self.pending if j.plane == plane):
            return []
        done = []
        while True:
            heads: dict[int, _Pending] = {}
            for j in self.pending:
                if plane is None or j.plane == plane:
                    heads.setdefault(j.plane, j)
            if not heads:
                return done
            job = min(heads.values(), key=lambda j: (j.ready, j.plane))
            self.pending.remove(job)
            self.run_matmuls(job)
            done.append(job.op)
            if buffer is not None and job.buffer == buffer:
                return done

    def install(self, op: VOp, plane: int, buffer: int, rows, aux: int, sel) -> int:
        """INSTALL a tile's rows into (plane, buffer); the cycle it is ready."""
        hw = self.hw
        pos, q = hw.mxm_position(plane), queue_mxm(hw, plane)
        ports = [("mxi", plane, k) for k in range(hw.mxm_install_vectors_per_cycle)]
        # The plane's queue dispatches its INSTALLs and MATMULs: as many as its units run a cycle.
        units = hw.mxm_install_vectors_per_cycle + 1
        start = ready = self.plane_free[(plane, buffer)]
        flags = (FLAG_TRANSPOSED if op.transposed else 0) | (FLAG_BUFFER if buffer else 0)
        for row, v0, n in self.row_pieces(rows):
            seg, w = self.store.get(v0), self.width(v0)
            slot = self.slot_claims(q, units)  # first: a busy slot moves t before any read
            claims = [
                *slot,
                lambda n=n: iter([([(k, 0, n)], [], 0, None, None) for k in ports]),
                lambda seg=seg, v0=v0, w=w, n=n: chain(
                    self.forward_options(v0, pos, n) if sel is None else (),
                    self.read_options(seg, v0, w, pos, n, sel=sel),
                ),
            ]
            t, chosen = self._solve(start, claims)
            self._commit(t, chosen)
            st = self.take(t, *chosen[-1], v0, n, op.src, sel)
            self.records.append(
                dict(
                    op=Op.INSTALL, cycle=t, queue=q, plane=plane, s0=st, in0=v0, row=row,
                    flags=flags, aux=aux, dtype=self.vp.dtypes[v0], vid=v0, src=op.src,
                    repeat=n,
                )
            )  # fmt: skip
            ready = max(ready, t + n - 1 + hw.mxm_install_latency_cycles)
        return ready

    def matmuls(self, op, plane, buffer, ins, tile, ready) -> int:
        """Stream `ins` through K tile k of `op` (its extent, count, tile id and accumulator
        flags) in (plane, buffer) from `ready`; with ACC_OUT the sums stay in accumulator rows
        0..n-1 as partial sums (op.partials), else they are put out (and written where needed).
        The cycle after the last."""
        extent, count, aux, acc, k = tile
        hw = self.hw
        pos, q = hw.mxm_position(plane), queue_mxm(hw, plane)
        units, ml = hw.mxm_install_vectors_per_cycle + 1, hw.mxm_latency_cycles
        last = ready
        for j0, x0, n in self.matmul_pieces(ins, op.outs[0]):
            y0 = op.outs[0] + j0
            seg, w = self.store.get(x0), self.width(x0)
            per = matmul_period(hw, w)  # an INT8 input a cycle, an FP16 one every few
            pin = self.pin_of(y0)
            claims = [
                lambda n=n, per=per: iter(self.unit_options([("mxc", plane)], q, n * per, units)),
                lambda seg=seg, x0=x0, w=w, n=n, per=per: chain(
                    self.forward_options(x0, pos, n, per),
                    self.read_options(seg, x0, w, pos, n, period=per),
                ),
            ]
            if not acc & FLAG_ACC_OUT:
                claims.append(
                    lambda n=n, pin=pin, y0=y0, per=per: self.write_options(
                        self.width(y0), pos, ml, n, pin, period=per
                    )
                )
            t, chosen = self._solve(ready, claims)
            self._commit(t, chosen)
            st = self.take(t, *chosen[1], x0, n, op.src, period=per)
            rec = dict(
                op=Op.MATMUL, cycle=t, queue=q, plane=plane, s0=st, in0=x0, count=count,
                aux=aux, dtype=DType.FLOAT32, vid=y0, src=op.src, repeat=n, period=per,
                row=extent, flags=(FLAG_BUFFER if buffer else 0) | acc,  # row: tile's extent
            )  # fmt: skip
            if acc:  # accumulator rows j0..: tile k adds to tile k-1's partial sums
                partial = (
                    op.partials + j0 - op.n
                )  # + k * n: this tile's, + (k - 1) * n: its input's
                rec.update(table=j0, in1=partial + k * op.n if acc & FLAG_ACC_IN else -1)
                if acc & FLAG_ACC_OUT:
                    rec["vid"] = partial + (k + 1) * op.n
            if not acc & FLAG_ACC_OUT:
                rec["sd"] = self.record_write(t, *chosen[2], y0, n, op.src, period=per)
                reach = hw.slice_position(chosen[2][1][0])
                self.add_flow(y0, n, rec["sd"], t + ml, pos, per, reach)
            self.records.append(rec)
            last = max(last, t + (n - 1) * per)
        return last + 1


def spans(n: int, period: int) -> list[tuple[int, int]]:
    """(offset, length) of the cycles (or diagonals) a run of n vectors, one every `period`
    cycles, holds a port or stream: one interval when they are back to back; one per vector for
    a spaced run of at most SPACED_CLAIMS (its gaps stay free for other runs); the whole span for
    a longer one (fewer claims to check, and such runs are long MATMULs that bind anyway)."""
    if period <= 1:
        return [(0, n)]
    if n > SPACED_CLAIMS:
        return [(0, (n - 1) * period + 1)]
    return [(j * period, 1) for j in range(n)]


def stream_zones(hw: HardwareConfig, per_hemisphere: int) -> list[int]:
    """Zone of each position: each hemisphere's positions (from the MXM at its edge to the slice
    next to the VXM) in `per_hemisphere` runs of nearly equal length, and the VXM a zone of its
    own."""
    v, width = hw.vxm_position, hw.width_positions
    west = [k * per_hemisphere // v for k in range(v)]
    east = [
        per_hemisphere + 1 + k * per_hemisphere // (width - v - 1) for k in range(width - v - 1)
    ]
    return [*west, per_hemisphere, *east]


def _drop_unread_writes(vp: VProgram, s: _Scheduler) -> None:
    """A result every consumer took from the stream needs no SRAM copy: drop its WRITE (unless
    it is an output or written in place), and, for a MEM -> MEM copy, the READ that fed it."""
    outputs = vp.output_mask()
    for c in s.copies:
        seg = c.seg
        if (
            c.write >= 0
            and c.last_read < 0
            and c.addr < 0
            and not outputs[seg.v0 : seg.v0 + seg.n].any()
        ):
            c.dead = True
    s.records = [
        r
        for r in s.records
        if not (r["op"] == Op.WRITE and r["_copy"].dead)
        and not ("_feeds" in r and r["_feeds"].dead)
    ]


def _dependencies(vp: VProgram) -> tuple[list[int], list[list[int]]]:
    """How many vops each vop waits for, and the vops that use each vop's results."""
    producer = np.full(len(vp.dtypes), -1, np.int64)
    for op in vp.ops:
        producer[op.outs[0] : op.outs[0] + op.n] = op.id
    waiting = [0] * len(vp.ops)
    users: list[list[int]] = [[] for _ in vp.ops]
    for op in vp.ops:
        preds = np.unique(producer[op.in_vids()])
        preds = preds[preds >= 0].tolist()
        waiting[op.id] = len(preds)
        for p in preds:
            users[p].append(op.id)
    return waiting, users


def _priorities(vp: VProgram, hw: HardwareConfig, users: list[list[int]]) -> list[int]:
    """Longest path (estimated cycles) from each vop to the end of the program."""
    prio = [0] * len(vp.ops)
    overhead = hw.mem_read_latency_cycles + hw.mem_write_latency_cycles + hw.half_slices
    for op in reversed(vp.ops):
        own = latency(hw, op.op) + overhead + op.n
        if op.unit == Unit.MXM:
            own += len(op.rows) // hw.mxm_install_vectors_per_cycle
        prio[op.id] = own + max((prio[u] for u in users[op.id]), default=0)
    return prio


def schedule(
    vp: VProgram,
    hw: HardwareConfig,
    placement: Placement,
    pins=(),
    progress: Callable[[float], None] | None = None,
    chaining: bool = True,
) -> Schedule:
    """`pins`: (v0, n, group, addr) of output runs that must be written in place. `chaining`: a unit may take another unit's results
    straight from the stream they flow on (and a result nobody reads from SRAM is not written)."""
    s = _Scheduler(vp, hw, placement, pins, chaining)
    waiting, users = _dependencies(vp)
    prio = _priorities(vp, hw, users)
    heap = [(-prio[op.id], op.id) for op in vp.ops if waiting[op.id] == 0]
    heapq.heapify(heap)
    done = 0
    every = max(1, len(vp.ops) // 50)
    while heap or s.pending:
        if not heap:
            finished = s.flush()
        else:
            _, i = heapq.heappop(heap)
            op = vp.ops[i]
            if op.unit == Unit.MXM:
                finished = s.place_mxm(op)
            else:
                s.place_simple(op)
                finished = [op]
        for op in finished:
            done += 1
            if progress is not None and done % every == 0:
                progress(done / len(vp.ops))
            for u in users[op.id]:
                waiting[u] -= 1
                if waiting[u] == 0:
                    heapq.heappush(heap, (-prio[u], u))
    assert done == len(vp.ops), "the vector program has a cycle"
    _drop_unread_writes(vp, s)
    lat = {op: latency(hw, op) for op in Op}
    end = max(
        (r["cycle"] + (r["repeat"] - 1) * r.get("period", 1) + lat[r["op"]] for r in s.records),
        default=0,
    )
    free = max(
        [end] + [r["cycle"] + r["repeat"] * r["period"] for r in s.records if r["op"] == Op.MATMUL]
    )
    segs = [s.store.by_start[v] for v in s.store.starts]
    return Schedule(s.records, segs, s.copies, end, free)
