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
    periods,
    queue_name,
    repetitions,
)


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
        shape = _shape([f[index] for f in fields], cycles[index] - first)
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


def _shape(fields: list[np.ndarray], cycles: np.ndarray) -> bytes:
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
    cap, most, rl = hw.icu_queue_instructions, fetch_width(hw), hw.mem_read_latency_cycles
    ports_per_slice = hw.mem_read_ports_per_slice
    queue = ins["queue"].astype(np.int64)
    qkeys, sizes = np.unique(queue, return_counts=True)
    order = np.lexsort((np.arange(len(ins)), cycles, queue))
    starts = np.searchsorted(queue[order], qkeys)
    busy = image = None
    # The ports from the chip's first cycle: with words of two or more instructions, a queue has
    # no room for one before its first dispatch, so no IFETCH comes earlier.
    base = int(cycles.min()) if most > 1 else 0
    records = []
    for q, lo, n in zip(qkeys.tolist(), starts.tolist(), sizes.tolist(), strict=True):
        if n <= cap:
            continue
        if busy is None:
            busy = _read_ports(hw, ins, cycles, base)
            image = np.full(hw.mem_slices, words, np.int64)  # the next free word of each slice
        c = cycles[order[lo : lo + n]]
        width = issue_width(hw, q)
        used = Counter(c.tolist())
        loaded, fetches, pos = cap, 0, 0  # positions delivered, IFETCHes placed, entries placed
        landed = ([0], [cap])  # arrivals, and positions delivered up to with each
        prev = -1
        for r in range(n):
            d = int(c[r])
            t = max(prev, 0)
            while loaded - fetches < n and t <= d:  # some of its instructions are still out
                # (an IFETCH takes a place in the buffer too, so it brings one more than were out)
                count = min(most, n - (loaded - fetches - 1))
                if loaded + count - (pos + 1) > cap:
                    break  # no room for a word yet
                first = loaded - fetches - 1  # the first real instruction this one delivers
                latest = min(d - 1, int(c[first]) - rl) if first < n else d - 1
                t = _free_cycle(busy, base, ports_per_slice, used, width, t, latest, landed, pos)
                if t < 0:
                    break
                full = busy[:, t - base] >= ports_per_slice
                s = int(np.argmin(np.where(full, np.iinfo(np.int64).max, image)))
                busy[s, t - base] += 1
                used[t] += 1
                records.append(
                    dict(op=Op.IFETCH, chip=chip, queue=q, slice=s, addr=int(image[s]),
                         count=count, cycle=t, src=src)
                )  # fmt: skip
                image[s] += 1
                fetches, pos, loaded = fetches + 1, pos + 1, loaded + count
                landed[0].append(t + rl)
                landed[1].append(loaded)
            if not _there(landed, pos, d):
                raise ScheduleError(
                    f"instruction fetch cannot keep queue {queue_name(hw, q)} (chip {chip}) fed: "
                    f"its instruction {r} at cycle {d} has not arrived; raise "
                    f"icu_queue_instructions ({cap}) or lower icu_instruction_bytes "
                    f"({hw.icu_instruction_bytes})"
                )
            pos, prev = pos + 1, d
    extra = make_instrs(records) if records else np.zeros(0, INSTR_DTYPE)
    extra_cycles = np.array([rec["cycle"] for rec in records], np.int64)
    return extra, extra_cycles, int(image.max()) if image is not None else None


def _there(landed: tuple[list, list], pos: int, t: int) -> bool:
    """Whether position `pos` of the queue has landed by cycle t."""
    k = bisect_right(landed[1], pos)
    return k < len(landed[1]) and landed[0][k] <= t


def _free_cycle(
    busy, base: int, ports: int, used: Counter, width: int, t: int, latest: int, landed, pos: int
) -> int:
    """The first cycle in [t, latest] at which the queue has a dispatch slot, its entry `pos`
    has landed, and some slice has a read port idle (busy[:, t - base]); -1 if none."""
    while t <= latest:
        free = used[t] < width and _there(landed, pos, t)
        if free and t - base < busy.shape[1] and (busy[:, t - base] < ports).any():
            return t
        t += 1
    return -1
