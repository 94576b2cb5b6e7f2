"""The resource-constrained list scheduler.

Vops are taken from a ready list in priority order (longest path to the end first; ties by id, so
the schedule is deterministic). Each is placed at the earliest cycle at which *every* resource it
needs is free, over the same resource model the simulator checks (sim/reference.py):

- a READ of each operand from its home slice group, timed so that the vector passes the unit
  exactly when the unit consumes it (one position per cycle on a free stream group);
- the unit itself (VXM ALUs, an SXM unit, an MXM plane's install port and compute port);
- a WRITE of each result into a slice group with a free write port (nearest first), on a free
  stream group, at exactly the cycle the result passes it.

The output is a list of instruction records (addresses still symbolic: the vector id), the home
slice of each computed vector, and the predicted cycle count, which the simulator must measure too.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass

from compiler.ir.vector import VOp, VProgram
from compiler.passes.place import Placement, slice_groups
from sim.hardware import HardwareConfig
from sim.isa import (
    DTYPE_BYTES,
    FLAG_TRANSPOSED,
    DType,
    Op,
    Unit,
    diagonal,
    direction,
    latency,
    queue_mxm,
    queue_sxm,
    queue_vxm,
)


@dataclass
class Schedule:
    """A copy of a vector is (vid, base slice of its group): most vectors have one copy."""

    records: list[dict]  # instruction records; READ/WRITE "addr" is filled by the allocator
    home: dict[int, list[int]]  # vid -> its copies' groups, the first being where it was made
    write_cycle: dict[tuple[int, int], int]  # computed copy -> cycle of its WRITE
    last_read: dict[tuple[int, int], int]  # copy -> cycle of its last READ
    cycles: int  # predicted: the last event's completion


# A vop that finds no free slot within this many cycles of its earliest start means a bug.
LIMIT_CYCLES = 1_000_000


class _Resources:
    """Committed uses per (resource, cycle) plus the tentative claims of the vop being placed."""

    def __init__(self, hw: HardwareConfig):
        self.hw = hw
        self.busy: dict[tuple, int] = defaultdict(int)
        self.cap = {
            "rd": 1,
            "wr": 1,
            "st": 1,
            "vxm": hw.vxm_alus,
            "sxm": hw.sxm_units_per_hemisphere,
            "mxi": hw.mxm_install_vectors_per_cycle,
            "mxc": 1,
        }
        self.pending: dict[tuple, int] = defaultdict(int)
        self.log: list[tuple] = []  # tentative claims in order, so they can be undone

    def free(self, key: tuple, t: int) -> bool:
        k = (*key, t)
        return self.busy[k] + self.pending[k] < self.cap[key[0]]

    def take(self, key: tuple, t: int) -> None:
        k = (*key, t)
        self.pending[k] += 1
        self.log.append(k)

    def mark(self) -> int:
        return len(self.log)

    def undo(self, mark: int) -> None:
        """Forget the tentative claims made since `mark`."""
        while len(self.log) > mark:
            self.pending[self.log.pop()] -= 1

    def rollback(self) -> None:
        self.pending.clear()
        self.log.clear()

    def commit(self) -> None:
        for k, v in self.pending.items():
            self.busy[k] += v
        self.rollback()


class _Scheduler:
    def __init__(self, vp: VProgram, hw: HardwareConfig, placement: Placement):
        self.vp, self.hw = vp, hw
        self.res = _Resources(hw)
        self.home: dict[int, list[int]] = {v: [g] for v, g in placement.slice.items()}
        self.ready: dict[tuple[int, int], int] = {(v, g): 0 for v, g in placement.slice.items()}
        self.write_cycle: dict[tuple[int, int], int] = {}
        self.last_read: dict[tuple[int, int], int] = {}
        self.records: list[dict] = []
        self.end = 0
        self.plane_free = [0] * hw.mxm_planes
        self.groups = {w: slice_groups(hw, w) for w in (1, 2, 4)}
        self.rl, self.wl = hw.mem_read_latency_cycles, hw.mem_write_latency_cycles
        self.S = hw.streams_per_direction
        self._nearest: dict[tuple, list[int]] = {}

    def width(self, vid: int) -> int:
        return DTYPE_BYTES[self.vp.dtypes[vid]]

    # --- moving one vector ------------------------------------------------------------------

    def stream(self, d: int, width: int, diag: int) -> int | None:
        for s in range(0, self.S, width):
            if all(self.res.free(("st", d, s + m), diag) for m in range(width)):
                for m in range(width):
                    self.res.take(("st", d, s + m), diag)
                return d * self.S + s
        return None

    def ports(self, kind: str, g: int, width: int, t: int) -> bool:
        """Claim the `kind` ("rd"/"wr") ports of slices g..g+width-1 at cycle t, if all free."""
        if not all(self.res.free((kind, g + m), t) for m in range(width)):
            return False
        for m in range(width):
            self.res.take((kind, g + m), t)
        return True

    def mem_record(self, op: Op, t: int, g: int, vid: int, src: int, **streams) -> dict:
        record = dict(
            op=op, cycle=t, queue=g, slice=g, dtype=self.vp.dtypes[vid], vid=vid, src=src, **streams
        )
        if op == Op.WRITE:
            record["_home"] = g  # becomes a copy of `vid` when committed
        return record

    def read(self, vid: int, t: int, pos: int, src: int, pend: list, busy=()) -> bool:
        """Claim a READ of `vid`, from any of its copies whose slices are not in `busy`, so that
        it passes position `pos` at cycle `t`."""
        hw, w = self.hw, self.width(vid)
        for g in self.home[vid]:
            if busy and any(g + m in busy for m in range(w)):
                continue
            p0 = hw.slice_position(g)
            t0 = t - abs(pos - p0)  # enters the stream
            tr = t0 - self.rl  # READ issue
            if tr < self.ready[(vid, g)]:
                continue
            mark = self.res.mark()
            d = direction(p0, pos)
            st = self.stream(d, w, diagonal(d, t0, p0))
            if st is None or not self.ports("rd", g, w, tr):
                self.res.undo(mark)
                continue
            pend.append(self.mem_record(Op.READ, tr, g, vid, src, sd=st))
            return True
        return False

    def write(self, vid: int, t0: int, pos: int, src: int, pend: list, avoid=()) -> bool:
        """Claim a WRITE of `vid`, which enters a stream at position `pos` at cycle `t0`, into the
        nearest slice group (none of whose slices is in `avoid`) that is free when it passes."""
        hw, w = self.hw, self.width(vid)
        for g in self.nearest(w, pos):
            if avoid and any(g + m in avoid for m in range(w)):
                continue
            p = hw.slice_position(g)
            mark = self.res.mark()
            d = direction(pos, p)
            st = self.stream(d, w, diagonal(d, t0, pos))
            if st is None or not self.ports("wr", g, w, t0 + abs(p - pos)):
                self.res.undo(mark)
                continue
            pend.append(self.mem_record(Op.WRITE, t0 + abs(p - pos), g, vid, src, s0=st))
            return True
        return False

    def nearest(self, width: int, pos: int) -> list[int]:
        key = (width, pos)
        if key not in self._nearest:
            p = self.hw.slice_position
            self._nearest[key] = sorted(self.groups[width], key=lambda g: (abs(p(g) - pos), g))
        return self._nearest[key]

    def earliest(self, vid: int, pos: int) -> int:
        """First cycle `vid` can pass position `pos` after being read from one of its copies."""
        p = self.hw.slice_position
        return min(self.ready[(vid, g)] + self.rl + abs(p(g) - pos) for g in self.home[vid])

    def slices_of(self, vid: int) -> set[int]:
        return {g + m for g in self.home[vid] for m in range(self.width(vid))}

    def separate(self, ins, src: int) -> None:
        """Operands consumed in one cycle must come from different slices (one read port each):
        copy an operand whose every copy shares slices with another operand's copies."""
        distinct = list(dict.fromkeys(ins))
        for k, v in enumerate(distinct):
            others = set().union(*(self.slices_of(u) for u in distinct[:k]))
            w = self.width(v)
            if any(all(g + m not in others for m in range(w)) for g in self.home[v]):
                continue
            self.copy(v, others, src)

    def copy(self, vid: int, avoid: set[int], src: int) -> None:
        """MEM -> MEM move of `vid` into a slice group none of whose slices is in `avoid` (nor
        holds a copy already): a READ and a WRITE on one stream."""
        hw, w = self.hw, self.width(vid)
        avoid = avoid | self.slices_of(vid)
        g0 = self.home[vid][0]
        p0 = hw.slice_position(g0)
        t = self.ready[(vid, g0)] + self.rl  # when it can enter a stream at p0
        while True:
            for g in self.nearest(w, p0):
                if any(g + m in avoid for m in range(w)):
                    continue
                ta = t + abs(hw.slice_position(g) - p0)  # passes g's position
                pend: list = []
                if self.ports("wr", g, w, ta) and self.read(
                    vid, ta, hw.slice_position(g), src, pend
                ):
                    pend.append(self.mem_record(Op.WRITE, ta, g, vid, src, s0=pend[0]["sd"]))
                    self.commit(pend)
                    return
                self.res.rollback()
            t += 1

    # --- placing one vop ------------------------------------------------------------------------

    def read_operands(self, ins, t: int, pos: int, src: int, pend: list) -> list[int] | None:
        """READs of a vop's operands (one per distinct vector); their streams in operand order."""
        streams: dict[int, int] = {}
        busy: set[int] = set()
        for v in ins:
            if v not in streams:
                if not self.read(v, t, pos, src, pend, busy):
                    return None
                streams[v] = pend[-1]["sd"]
                busy.update(pend[-1]["slice"] + m for m in range(self.width(v)))
        return [streams[v] for v in ins]

    def place_simple(self, op: VOp) -> None:
        hw = self.hw
        lat = latency(hw, op.op)
        self.separate(op.ins, op.src)
        if op.unit == Unit.VXM:
            options = [(queue_vxm(hw), hw.vxm_position, ("vxm",))]
        else:
            near = hw.slice_hemisphere(self.home[op.ins[0]][0])
            hemis = sorted((0, 1), key=lambda h: h != near)
            options = [(queue_sxm(hw, h), hw.sxm_position(h), ("sxm", h)) for h in hemis]
        best = None
        for q, pos, unit_key in options:
            t = start = max(self.earliest(v, pos) for v in op.ins)
            while not self.try_simple(op, t, pos, unit_key, lat, []):
                self.res.rollback()
                t += 1
                assert t - start < LIMIT_CYCLES, f"cannot place vop {op.id}: scheduler bug"
            self.res.rollback()
            if best is None or t < best[0]:
                best = (t, q, pos, unit_key)
        t, q, pos, unit_key = best
        pend: list = []
        streams = self.try_simple(op, t, pos, unit_key, lat, pend)
        rec = dict(
            op=op.op,
            cycle=t,
            queue=q,
            dtype=op.dtype,
            vid=op.outs[0],
            src=op.src,
            sd=pend[-1]["s0"],
            count=op.count,
            table=op.table,
        )
        for k, (st, v) in enumerate(zip(streams, op.ins, strict=True)):
            rec[f"s{k}"], rec[f"in{k}"] = st, v
        if op.imm is not None:
            rec["imm"] = op.imm
        self.commit(pend + [rec])

    def try_simple(self, op: VOp, t: int, pos: int, unit_key, lat: int, pend: list):
        if not self.res.free(unit_key, t):
            return None
        self.res.take(unit_key, t)
        streams = self.read_operands(op.ins, t, pos, op.src, pend)
        if streams is None or not self.write(op.outs[0], t + lat, pos, op.src, pend):
            return None
        return streams

    def place_mxm(self, op: VOp) -> None:
        hw = self.hw
        best = None
        for plane in range(hw.mxm_planes):
            plan = self.plan_tile(op, plane)
            self.res.rollback()
            if best is None or plan[0] < best[0]:
                best = (plan[0], plane)
        end, pend = self.plan_tile(op, best[1])
        self.plane_free[best[1]] = end + 1
        self.commit(pend)

    def plan_tile(self, op: VOp, plane: int) -> tuple[int, list]:
        """Install the tile's rows, then stream the inputs: earliest free cycle for each."""
        hw = self.hw
        pos = hw.mxm_position(plane)
        q = queue_mxm(hw, plane)
        il, ml = hw.mxm_install_latency_cycles, hw.mxm_latency_cycles
        pend: list = []
        t = self.plane_free[plane]
        ready = t
        for k, v in enumerate(op.rows):
            c = max(t, self.earliest(v, pos))
            while True:
                assert c - t < LIMIT_CYCLES, f"cannot place vop {op.id}: scheduler bug"
                mark, res_mark = len(pend), self.res.mark()
                if self.res.free(("mxi", plane), c) and self.read(v, c, pos, op.src, pend):
                    self.res.take(("mxi", plane), c)
                    break
                del pend[mark:]
                self.res.undo(res_mark)
                c += 1
            flags = FLAG_TRANSPOSED if op.transposed else 0
            pend.append(
                dict(
                    op=Op.INSTALL,
                    cycle=c,
                    queue=q,
                    plane=plane,
                    s0=pend[-1]["sd"],
                    in0=v,
                    row=k,
                    flags=flags,
                    aux=op.id,
                    dtype=self.vp.dtypes[v],
                    vid=v,
                    src=op.src,
                )
            )
            ready = max(ready, c + il)
        c = ready
        for x, y in zip(op.ins, op.outs, strict=True):
            c = max(c, self.earliest(x, pos))
            while True:
                mark, res_mark = len(pend), self.res.mark()
                if (
                    self.res.free(("mxc", plane), c)
                    and self.read(x, c, pos, op.src, pend)
                    and self.write(y, c + ml, pos, op.src, pend)
                ):
                    self.res.take(("mxc", plane), c)
                    break
                del pend[mark:]
                self.res.undo(res_mark)
                c += 1
            pend.append(
                dict(
                    op=Op.MATMUL,
                    cycle=c,
                    queue=q,
                    plane=plane,
                    s0=pend[-2]["sd"],
                    in0=x,
                    sd=pend[-1]["s0"],
                    count=op.count,
                    aux=op.id,
                    dtype=DType.FLOAT32,
                    vid=y,
                    src=op.src,
                )
            )
            c += 1
        return c - 1, pend

    def commit(self, records: list[dict]) -> None:
        self.res.commit()
        hw = self.hw
        for r in records:
            r.setdefault("chip", 0)
            lat = latency(hw, Op(r["op"]))
            self.end = max(self.end, r["cycle"] + lat)
            if r["op"] == Op.WRITE:
                key = (r["vid"], r.pop("_home"))
                self.home.setdefault(key[0], []).append(key[1])
                self.write_cycle[key] = r["cycle"]
                self.ready[key] = r["cycle"] + self.wl
            elif r["op"] == Op.READ:
                key = (r["vid"], r["slice"])
                self.last_read[key] = max(self.last_read.get(key, -1), r["cycle"])
            self.records.append(r)


def _dependencies(vp: VProgram) -> tuple[list[int], dict[int, list[int]]]:
    """How many vops each vop waits for, and the vops that use each vop's results."""
    producer = {o: op.id for op in vp.ops for o in op.outs}
    waiting = [0] * len(vp.ops)
    users: dict[int, list[int]] = defaultdict(list)
    for op in vp.ops:
        preds = {producer[v] for v in (*op.ins, *op.rows) if v in producer}
        waiting[op.id] = len(preds)
        for p in preds:
            users[p].append(op.id)
    return waiting, users


def _priorities(vp: VProgram, hw: HardwareConfig, users: dict[int, list[int]]) -> list[int]:
    """Longest path (estimated cycles) from each vop to the end of the program."""
    prio = [0] * len(vp.ops)
    overhead = hw.mem_read_latency_cycles + hw.mem_write_latency_cycles + hw.half_slices
    for op in reversed(vp.ops):
        own = latency(hw, op.op) + overhead
        if op.unit == Unit.MXM:
            own += len(op.rows) // hw.mxm_install_vectors_per_cycle + len(op.ins)
        prio[op.id] = own + max((prio[u] for u in users[op.id]), default=0)
    return prio


def schedule(vp: VProgram, hw: HardwareConfig, placement: Placement) -> Schedule:
    s = _Scheduler(vp, hw, placement)
    waiting, users = _dependencies(vp)
    prio = _priorities(vp, hw, users)
    heap = [(-prio[op.id], op.id) for op in vp.ops if waiting[op.id] == 0]
    heapq.heapify(heap)
    done = 0
    while heap:
        _, i = heapq.heappop(heap)
        op = vp.ops[i]
        if op.unit == Unit.MXM:
            s.place_mxm(op)
        else:
            s.place_simple(op)
        done += 1
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(heap, (-prio[u], u))
    assert done == len(vp.ops), "the vector program has a cycle"
    return Schedule(s.records, s.home, s.write_cycle, s.last_read, s.end)
