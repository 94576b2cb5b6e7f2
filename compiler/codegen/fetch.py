"""Instruction fetch: the IFETCHes that keep every queue's instruction buffer fed.

A queue holds icu_queue_instructions instructions (sim/icu.py): its first ones are loaded before
the program starts, and each later one must be brought by an IFETCH of that same queue, which
reads one SRAM word of up to `fetch_width` instructions through a slice's read port. This pass
runs on the finished schedule (cycles fixed) and, per queue, walks its instructions in order:

- before each instruction, in the cycles since the queue's previous dispatch where the queue has
  a dispatch slot left and some slice's read port is idle, it places IFETCHes as early as the
  buffer has room for a whole word (counting the IFETCHes themselves, which are instructions);
- every instruction must have landed (mem_read_latency after its IFETCH) by its own cycle, or the
  queue would stall: that is a ScheduleError naming the queue and the config fields to change.

So fetching costs what it costs on the chip: read-port cycles (idle ones, taken from the data's
leftovers), dispatch slots, and SRAM words for the instruction image, allocated above everything
else. The scheduler's cycles of the program's own instructions do not move. Then each queue is
encoded as NOP delays (sim.icu.encode).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass

import numpy as np

from compiler.passes.place import ModelTooLarge
from sim.errors import ScheduleError
from sim.hardware import HardwareConfig
from sim.icu import encoding, fetch_width
from sim.isa import (
    DTYPE_WIDTHS,
    INSTR_DTYPE,
    Op,
    issue_width,
    make_instrs,
    n_queues,
    periods,
    queue_name,
    repetitions,
)
from sim.program import CLOSING_BARRIER


def _read_ports(hw: HardwareConfig, ins: np.ndarray, cycles: np.ndarray, base: int) -> np.ndarray:
    """(slices, cycles) int: the read ports one chip's READs (`ins`, dispatched at `cycles`) hold,
    each repetition, from cycle `base` (none earlier) to the chip's last instruction (beyond it
    every port is idle)."""
    end = int(cycles.max()) + 2 if len(cycles) else 2
    sel = ins["op"] == int(Op.READ)
    r, t0 = ins[sel], cycles[sel]
    i, j = repetitions(r)
    t = t0[i] + j * periods(r)[i] - base
    span = max(end - base, int(t.max()) + 2 if len(t) else 0)
    width = DTYPE_WIDTHS[r["dtype"]][i]
    cell = r["slice"].astype(np.int64)[i] * span + t
    cells = np.concatenate([cell[m < width] + m * span for m in range(4)])
    busy = np.bincount(cells, minlength=hw.mem_slices * span)[: hw.mem_slices * span]
    return busy.astype(np.int16).reshape(hw.mem_slices, span)


def fetch_and_encode(
    hw: HardwareConfig, ins: np.ndarray, cycles: np.ndarray, words: int, src: int = -1
) -> tuple[np.ndarray, np.ndarray, int]:
    """(instrs, cycles, words used): `ins` with the IFETCHes every queue needs added after them
    (source `src`, chip by chip), and every queue encoded in cycle order (sim.icu.encode).

    Both work one chip at a time, and a chip whose queues, READs and cycles are another's shifted
    in time (a pipeline's stages of one shape) takes that chip's fetches and order shifted alike,
    when they fetch nothing before the chip's first instruction (the one place where the search
    is not relative to the chip's own cycles): the same arrays as planning and encoding each."""
    n = len(ins)
    chip = ins["chip"].astype(np.int64)
    by_chip = np.argsort(chip, kind="stable")
    chips, starts = np.unique(chip[by_chip], return_index=True)
    bounds = np.r_[starts, n].tolist()
    fields = [np.ascontiguousarray(ins[f]) for f in SHAPE_FIELDS]
    shapes = {}  # shape -> (first chip's fetches, their cycles, its first cycle, image top)
    parts, top = [], None
    for k, ch in enumerate(chips.tolist()):
        index = by_chip[bounds[k] : bounds[k + 1]]
        first = int(cycles[index].min())
        shape = shape_of([f[index] for f in fields], cycles[index] - first)
        if shape in shapes:
            extra, extra_cycles, first0, image_top = shapes[shape]
            extra = extra.copy()
            extra["chip"] = ch
            extra_cycles = extra_cycles + (first - first0)
        else:
            extra, extra_cycles, image_top = _plan_chip(
                hw, np.take(ins, index), cycles[index], ch, words, src
            )
            if not len(extra_cycles) or extra_cycles.min() >= first:
                shapes[shape] = extra, extra_cycles, first, image_top
            else:
                shape = None  # its plan is its own
        if image_top is not None:
            top = max(words if top is None else top, image_top)
        parts.append((index, shape, first, extra, extra_cycles))
    if top is not None and top > hw.words_per_slice:
        raise ModelTooLarge(
            f"the instruction image needs {top - words} more words per slice above "
            f"the {words} in use; a slice of {hw.name} has {hw.words_per_slice}"
        )
    size = n + sum(len(p[3]) for p in parts)
    out, out_cycles = np.empty(size, INSTR_DTYPE), np.empty(size, np.int64)
    encodings = {}  # shape -> its first chip's encoding (order, delays), queue heads, first cycle
    at = n  # the IFETCHes follow every instruction, chip by chip
    for index, shape, first, extra, extra_cycles in parts:
        where = np.concatenate([index, np.arange(at, at + len(extra))])
        at += len(extra)
        timing = np.concatenate([cycles[index], extra_cycles])
        if shape in encodings:
            order, delays, heads, first0 = encodings[shape]
            delays = delays.copy()
            delays[heads] += first - first0  # a queue's first delay is its cycle
        else:
            queue = np.concatenate([ins["queue"][index], extra["queue"]])
            order, delays = encoding(np.zeros(len(queue), np.int64), queue, timing)
            if shape is not None:
                heads = np.unique(queue, return_index=True)[1]  # each queue's first place
                encodings[shape] = order, delays, heads, first
        own = order < len(index)  # the chip's instructions, then its IFETCHes
        # (take and put: NumPy's indexing of records is many times slower)
        np.put(out, where[own], np.take(ins, index[order[own]]))
        np.put(out, where[~own], np.take(extra, order[~own] - len(index)))
        out["delay"][where] = delays
        out_cycles[where] = timing[order]
    return out, out_cycles, words if top is None else max(words, top)


# What a chip's fetches and encoding depend on: each instruction's queue, op, and a READ's slices
# and repetitions (with its cycle, relative to the chip's first).
SHAPE_FIELDS = ("queue", "op", "slice", "dtype", "repeat", "period")


def shape_of(fields: list[np.ndarray], cycles: np.ndarray) -> bytes:
    """A digest of a chip's instruction fields and cycles (what its fetches depend on)."""
    h = hashlib.sha256()
    for f in fields:
        h.update(f)  # (fresh arrays: their buffers, no copies)
    h.update(np.ascontiguousarray(cycles, np.int64).tobytes())
    return h.digest()


def _plan_chip(
    hw: HardwareConfig, ins: np.ndarray, cycles: np.ndarray, chip: int, words: int, src: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """One chip's IFETCHes (instrs, cycles) and the top of its instruction image (None: no queue
    of the chip needs any)."""
    cap, most = hw.icu_queue_instructions, fetch_width(hw)
    ports_per_slice = hw.mem_read_ports_per_slice
    queue = ins["queue"].astype(np.int64)
    qkeys, sizes = np.unique(queue, return_counts=True)
    order = np.lexsort((np.arange(len(ins)), cycles, queue))
    starts = np.searchsorted(queue[order], qkeys)
    busy = image = None
    # The ports from the chip's first cycle: with words of two or more instructions, a queue has
    # no room for one before its first dispatch, so no IFETCH comes earlier.
    base = int(cycles.min()) if most > 1 else 0

    def free(t: int) -> int:
        """A slice with a read port idle at t (the lowest image first), or -1."""
        if t - base >= busy.shape[1] or not (busy[:, t - base] < ports_per_slice).any():
            return -1
        full = busy[:, t - base] >= ports_per_slice
        return int(np.argmin(np.where(full, np.iinfo(np.int64).max, image)))

    def fetch(q: int, t: int, count: int, records: list, used: Counter) -> None:
        s = free(t)
        busy[s, t - base] += 1
        used[t] += 1
        records.append(dict(op=Op.IFETCH, chip=chip, queue=q, slice=s, addr=int(image[s]),
                            count=count, cycle=t, src=src))  # fmt: skip
        image[s] += 1

    records = []
    for q, lo, n in zip(qkeys.tolist(), starts.tolist(), sizes.tolist(), strict=True):
        if n <= cap:
            continue
        if busy is None:
            busy = _read_ports(hw, ins, cycles, base)
            image = np.full(hw.mem_slices, words, np.int64)  # the next free word of each slice
        c = cycles[order[lo : lo + n]]
        used = Counter(c.tolist())
        r = _fetch_run(hw, c, 0, cap, 0, -1, issue_width(hw, q), q, records, used, fetch, free)
        if r >= 0:
            raise ScheduleError(
                f"instruction fetch cannot keep queue {queue_name(hw, q)} (chip {chip}) fed: "
                f"its instruction {r} at cycle {int(c[r])} has not arrived; raise "
                f"icu_queue_instructions ({cap}) or lower icu_instruction_bytes "
                f"({hw.icu_instruction_bytes})"
            )
    extra = make_instrs(records) if records else np.zeros(0, INSTR_DTYPE)
    extra_cycles = np.array([rec["cycle"] for rec in records], np.int64)
    return extra, extra_cycles, int(image.max()) if image is not None else None


def _there(landed: tuple[list, list], pos: int, t: int) -> bool:
    """Whether position `pos` of the queue has landed by cycle t."""
    k = bisect_right(landed[1], pos)
    return k < len(landed[1]) and landed[0][k] <= t


# --- bodies placed on many chips (compiler/codegen/pipeline.py) ---------------------------------
#
# A body (sim/program.py) is planned once, as a chip of its own from cycle 0; a chip that runs it
# `shift` cycles later has its own instructions before and after it on some queues. The body's
# fetches must then find each queue as they would alone, so each chip's own plan:
#
# - before the body (on a queue where it has own instructions first): *bridges*, IFETCHes after
#   its own that bring the body's instructions the preload no longer reaches (the own ones took
#   their places), so that at the body's first instruction the queue holds exactly what it
#   would alone;
# - after the body: a body queue that fetches delivers one place past its end (its last IFETCH
#   brings the chip's next instruction: a tail), and the chip's instructions there are fetched
#   on from that; a chip with none there ends the queue with a NOTIFY of a barrier no SYNC
#   waits on, which the tail brings.


@dataclass
class PlannedBody:
    """A body's instructions with their fetches, encoded from cycle 0, and what a chip's plan
    around it needs: per queue its first and last dispatch cycle and size, whether it fetches
    (and delivers a tail, landing at tail_at), and the read ports it holds."""

    instrs: np.ndarray
    cycles: np.ndarray
    top: int | None  # the top of its instruction image (None: it fetches nothing)
    first: np.ndarray
    last: np.ndarray
    size: np.ndarray
    fetches: np.ndarray
    tail_at: np.ndarray
    at_last: np.ndarray  # its instructions dispatched at its last cycle, per queue
    busy: np.ndarray  # (slices, cycles) read ports its READs and IFETCHes hold
    plain: np.ndarray  # its own instructions without fetches, and their cycles (a chip that
    plain_cycles: np.ndarray  # cannot place it plans them anew)


def plan_body(
    hw: HardwareConfig, ins: np.ndarray, cycles: np.ndarray, words: int, src: int
) -> PlannedBody:
    """Fetches and delays for a body (chip 0's instructions, dispatched at `cycles`)."""
    queues, cap = n_queues(hw), hw.icu_queue_instructions
    q = ins["queue"].astype(np.int64)
    size = np.bincount(q, minlength=queues)[:queues]
    last = np.full(queues, -1, np.int64)
    np.maximum.at(last, q, cycles)
    tails = np.flatnonzero(size >= cap)  # these fetch: one more place, for the tail
    virtual = make_instrs(
        [dict(op=Op.NOTIFY, queue=int(t), table=CLOSING_BARRIER + int(t)) for t in tails]
    )
    extra, extra_cycles, top = _plan_chip(
        hw, np.concatenate([ins, virtual]), np.concatenate([cycles, last[tails] + 1]), 0, words,
        src,
    )  # fmt: skip
    every = np.concatenate([ins, extra])
    timing = np.concatenate([cycles, extra_cycles])
    order, delays = encoding(np.zeros(len(every), np.int64), every["queue"], timing)
    body = np.take(every, order)
    body["delay"] = delays
    timing = timing[order]
    q = body["queue"].astype(np.int64)
    first = np.full(queues, np.iinfo(np.int64).max)
    np.minimum.at(first, q, timing)
    last[:] = -1
    np.maximum.at(last, q, timing)
    fetch = body["op"] == int(Op.IFETCH)
    fetches = np.zeros(queues, bool)
    fetches[q[fetch]] = True
    tail_at = np.full(queues, -1, np.int64)
    np.maximum.at(tail_at, q[fetch], timing[fetch] + hw.mem_read_latency_cycles)
    at_last = np.bincount(q[timing == last[q]], minlength=queues)[:queues]
    busy = _read_ports(hw, body, timing, 0).astype(np.int32)
    np.add.at(busy, (body["slice"][fetch].astype(np.int64), timing[fetch]), 1)
    return PlannedBody(
        body, timing, top, first, last, np.bincount(q, minlength=queues)[:queues], fetches,
        tail_at, at_last, busy, ins, cycles,
    )  # fmt: skip


def plan_placed(
    hw: HardwareConfig,
    body: PlannedBody,
    shift: int,
    own: np.ndarray,
    cycles: np.ndarray,
    chip: int,
    words: int,
    src: int,
):
    """A chip's own instructions (`own` at `cycles`) around `body` placed `shift` cycles later:
    (its instructions in queue order with their delays, their cycles, place_at, place_heads,
    the top of its instruction image, the index in `own` of each or -1 for those it adds), or
    None where the body cannot be placed so (an own instruction among the body's on a queue, or
    no cycle for a fetch it needs)."""
    queues, cap, most = n_queues(hw), hw.icu_queue_instructions, fetch_width(hw)
    rl, ports = hw.mem_read_latency_cycles, hw.mem_read_ports_per_slice
    span = body.busy.shape[1]
    own_busy: dict[int, np.ndarray] = {}  # cycle -> read ports the chip's own hold per slice
    r = own[own["op"] == int(Op.READ)]
    i, j = repetitions(r)
    t_read = cycles[own["op"] == int(Op.READ)][i] + j * periods(r)[i]
    for k, t in zip(i.tolist(), t_read.tolist(), strict=True):
        held = own_busy.setdefault(t, np.zeros(hw.mem_slices, np.int64))
        g = int(r["slice"][k])
        held[g : g + int(DTYPE_WIDTHS[r["dtype"][k]])] += 1
    image = np.full(hw.mem_slices, words if body.top is None else body.top, np.int64)
    top = None

    def free_slice(t: int) -> int:
        """A slice with a read port idle at t (the lowest image first), or -1."""
        held = own_busy.get(t, np.zeros(hw.mem_slices, np.int64))
        if 0 <= t - shift < span:
            held = held + body.busy[:, t - shift]
        free = held < ports
        if not free.any():
            return -1
        return int(np.argmin(np.where(free, image, np.iinfo(np.int64).max)))

    def fetch(q: int, t: int, count: int, records: list, used: Counter) -> None:
        nonlocal top
        s = free_slice(t)
        own_busy.setdefault(t, np.zeros(hw.mem_slices, np.int64))[s] += 1
        used[t] += 1
        records.append(dict(op=Op.IFETCH, chip=chip, queue=q, slice=s, addr=int(image[s]),
                            count=count, cycle=t, src=src))  # fmt: skip
        image[s] += 1
        top = int(image.max())

    at = np.zeros(queues, np.int32)
    heads = np.zeros(queues, np.int64)
    q_own = own["queue"].astype(np.int64)
    mine = np.unique(q_own)
    # queues of the body's alone: it starts on them at its own cycles, and a queue it fetches
    # on ends with the closing NOTIFY its tail brings
    only = np.setdiff1d(np.flatnonzero(body.size), mine)
    heads[only] = shift + body.first[only]
    closing = only[body.fetches[only]]
    close = np.zeros(len(closing), INSTR_DTYPE)
    close["op"], close["chip"], close["queue"], close["src"] = int(Op.NOTIFY), chip, closing, src
    close["table"], close["delay"] = CLOSING_BARRIER + closing, 1
    close_cycles = shift + body.last[closing] + 1
    records: list[dict] = []  # IFETCHes and closing NOTIFYs of the queues with own instructions
    rows, row_cycles, row_delays = [], [], []  # into [own, records]: each queue in order

    def put(part: list, since: int) -> None:
        """A run of a queue's instructions, (row, cycle) in order, each's delay counted from the
        one before (the first's from `since`)."""
        prev = since
        for row, t in part:
            rows.append(row)
            row_cycles.append(t)
            row_delays.append(t - prev)
            prev = t

    def timed(sel: np.ndarray, first: int, last: int) -> list:
        """(row, cycle) of own[sel] and records[first:last], in cycle order (own first)."""
        items = [(int(i), int(cycles[i]), 0) for i in sel.tolist()]
        items += [(len(own) + k, records[k]["cycle"], 1) for k in range(first, last)]
        items.sort(key=lambda x: (x[1], x[2], x[0]))
        return [(row, t) for row, t, _ in items]

    for q in mine.tolist():
        sel = np.flatnonzero(q_own == q)
        sel = sel[np.lexsort((sel, cycles[sel]))]
        width = issue_width(hw, q)
        used = Counter(cycles[sel].tolist())
        n = int(body.size[q])
        if not n:  # a queue of the chip's own alone
            k0 = len(records)
            if len(sel) > cap and _fetch_run(
                hw, cycles[sel], 0, cap, 0, -1, width, q, records, used, fetch, free_slice
            ) >= 0:  # fmt: skip
                return None
            put(timed(sel, k0, len(records)), 0)
            continue
        b0, b1 = shift + int(body.first[q]), shift + int(body.last[q])
        used[b1] += int(body.at_last[q])  # (the body's last dispatches)
        t_own = cycles[sel]
        before, after = sel[t_own < b0], sel[t_own > b1]
        if len(before) + len(after) != len(sel):
            return None  # an own instruction among the body's
        p = len(before)
        # bridges: at the body's first instruction, the places it would hold alone delivered
        k0 = len(records)
        closes = bool(body.fetches[q] and not len(after))
        s_count = len(after) + closes
        if p and (body.fetches[q] or p + n + s_count > cap):
            want = cap if body.fetches[q] else n + (1 if s_count else 0)
            counts = _bridge_counts(p, want, cap, most)
            if counts is None:
                return None
            t = int(t_own[t_own < b0].max())
            for count in counts:
                while t <= b0 - rl and (used[t] >= width or free_slice(t) < 0):
                    t += 1
                if t > b0 - rl:
                    return None
                fetch(q, t, count, records, used)
        k1 = len(records)
        b = k1 - k0
        # after the body: from the tail (or what the bridges or the preload brought)
        if closes:
            records.append(dict(op=Op.NOTIFY, chip=chip, queue=q, table=CLOSING_BARRIER + q,
                                cycle=b1 + 1, src=src))  # fmt: skip
            used[b1 + 1] += 1
        if s_count:
            o = p + b + n
            total = o + s_count
            if body.fetches[q]:
                delivered, land = o + 1, shift + int(body.tail_at[q])
            elif b:
                delivered, land = max(cap, o + 1), records[k1 - 1]["cycle"] + rl
            else:
                delivered, land = min(total, cap) if total > cap else total, 0
            c_after = np.concatenate([t_own[t_own > b1], [b1 + 1] * closes]).astype(np.int64)
            if _fetch_run(
                hw, c_after, o, delivered, land, b1, width, q, records, used, fetch, free_slice
            ) >= 0:  # fmt: skip
                return None
        first_part = timed(before, k0, k1)
        at[q] = len(first_part)
        heads[q] = b0 - (first_part[-1][1] if first_part else 0)
        put(first_part, 0)
        put(timed(after, k1, len(records)), b1)
    extra = make_instrs(records) if records else np.zeros(0, INSTR_DTYPE)
    rows = np.array(rows, np.int64)
    ins = np.take(np.concatenate([own, extra]), rows)
    ins["delay"] = np.array(row_delays, np.int64)
    source = np.concatenate([np.where(rows < len(own), rows, -1), np.full(len(close), -1)])
    cycles_out = np.concatenate([np.array(row_cycles, np.int64), close_cycles])
    return np.concatenate([ins, close]), cycles_out, at, heads, top, source


def _bridge_counts(p: int, want: int, cap: int, most: int) -> list[int] | None:
    """The counts of the fewest IFETCHes, after p instructions at a queue's head, that deliver
    the places up to p + (their number) + want, each landing into room, or None."""
    for b in range(0, cap - p):
        need = max(0, want - (cap - p - b))
        counts, got = [], 0
        for i in range(b):
            c = min(most, p + i + 1 - got, need - got)
            if c < 1:
                break
            counts.append(c)
            got += c
        if got == need and len(counts) == b:
            return counts
    return None


def _fetch_run(hw, c, o, delivered, land, prev, width, q, records, used, fetch, free) -> int:
    """IFETCHes for a run of a queue's instructions at cycles `c`, the first at place o of the
    queue, `delivered` places delivered before it (the last of them landing at `land`), the
    queue's previous dispatch at `prev`: as early as the buffer has room for a word, in a cycle
    with a dispatch slot and a `free` read port (`fetch` places one). The first instruction that
    would not have arrived by its cycle, or -1."""
    cap, most, rl = hw.icu_queue_instructions, fetch_width(hw), hw.mem_read_latency_cycles
    n = len(c)
    loaded, fetches, pos = delivered - o, 0, 0  # places of the run delivered, IFETCHes, placed
    landed = ([land], [loaded])
    for r in range(n):
        d = int(c[r])
        t = max(prev, 0)
        while loaded - fetches < n and t <= d:
            count = min(most, n - (loaded - fetches - 1))
            if loaded + count - (pos + 1) > cap:
                break  # no room for a word yet
            first = loaded - fetches - 1
            latest = min(d - 1, int(c[first]) - rl) if first < n else d - 1
            while t <= latest and not (used[t] < width and _there(landed, pos, t) and free(t) >= 0):
                t += 1
            if t > latest:
                break
            fetch(q, t, count, records, used)
            fetches, pos, loaded = fetches + 1, pos + 1, loaded + count
            landed[0].append(t + rl)
            landed[1].append(loaded)
        if not _there(landed, pos, d):
            return r
        pos, prev = pos + 1, d
    return -1
