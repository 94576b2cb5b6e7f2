"""The queues' timing, compiled: sim/icu.py's `dispatch` (the specification), for large programs.

    dispatch_cycles(hw, instrs) -> (cycles, problem)     the same result as sim.icu.dispatch

Each queue runs until a SYNC finds its barrier not yet notified (or an instruction finds no
IFETCH that brings it); rounds over the queues (in
(chip, queue) order, as the reference) repeat until every queue is done or none moves (deadlock).
"""

from __future__ import annotations

import numpy as np

from sim.engine.flags import njit
from sim.hardware import HardwareConfig
from sim.icu import (
    BAD_FETCH,
    DEADLOCK,
    NEGATIVE_DELAY,
    NOT_FETCHED,
    NOTIFIED_TWICE,
    OK,
    OVERFLOW,
    TOO_MANY,
    fetch_width,
)
from sim.isa import Op, issue_width

SYNC, NOTIFY, IFETCH = int(Op.SYNC), int(Op.NOTIFY), int(Op.IFETCH)
UNSET = np.iinfo(np.int64).min


@njit
def _dispatch(order, starts, width, delay, op, barrier, count, g, cycles, out):
    """g: (sync latency, buffer size, fetch width, read latency)."""
    sync_latency, cap, most, read_latency = g[0], g[1], g[2], g[3]
    queues = len(starts) - 1
    pos = starts[:-1].copy()
    last = np.zeros(queues, np.int64)
    used = np.zeros(queues, np.int64)
    loaded = np.minimum(starts[1:] - starts[:-1], cap)  # instructions delivered, per queue
    preloaded = loaded.copy()
    fetch = starts[:-1].copy()  # per queue: where to look for the delivery in use
    arrival = np.zeros(len(order), np.int64)  # per position of an IFETCH: when it lands,
    upto = np.zeros(len(order), np.int64)  # and the instructions delivered with it
    release = np.full(max(barrier.max() + 1, 1), UNSET, np.int64)
    left = queues
    while left:
        progressed = False
        left = 0
        for q in range(queues):
            while pos[q] < starts[q + 1]:
                i = order[pos[q]]
                k = pos[q] - starts[q]  # position in the queue
                t = last[q] + delay[i]
                if delay[i] < 0:
                    out[0], out[1], out[2], out[3] = NEGATIVE_DELAY, i, last[q], delay[i]
                    return
                b = barrier[i]
                if op[i] == SYNC:
                    if release[b] == UNSET:
                        break
                    t = max(t, release[b])
                if k >= preloaded[q]:  # an IFETCH before it must have brought it
                    while fetch[q] < pos[q] and (
                        op[order[fetch[q]]] != IFETCH or upto[fetch[q]] <= k
                    ):
                        fetch[q] += 1
                    if fetch[q] == pos[q]:
                        out[0], out[1], out[2], out[3] = NOT_FETCHED, i, t, k
                        return
                    t = max(t, arrival[fetch[q]])
                n = used[q] + 1 if k and t == last[q] else 1
                if n > width[q]:
                    out[0], out[1], out[2], out[3] = TOO_MANY, i, t, n
                    return
                if op[i] == NOTIFY:
                    if release[b] != UNSET:
                        out[0], out[1], out[2], out[3] = NOTIFIED_TWICE, i, t, -1
                        return
                    release[b] = t + sync_latency
                if op[i] == IFETCH:
                    size = starts[q + 1] - starts[q]
                    if count[i] < 1 or count[i] > min(most, size - loaded[q]):
                        out[0], out[1], out[2], out[3] = BAD_FETCH, i, t, count[i]
                        return
                    loaded[q] += count[i]
                    arrival[pos[q]] = t + read_latency
                    upto[pos[q]] = loaded[q]
                cycles[i] = t
                last[q], used[q] = t, n
                pos[q] += 1
                progressed = True
            if pos[q] < starts[q + 1]:
                left += 1
        if left and not progressed:
            for q in range(queues):
                if pos[q] < starts[q + 1]:
                    out[0], out[1], out[2], out[3] = DEADLOCK, order[pos[q]], last[q], -1
                    return
    for q in range(queues):  # room for every delivery when it lands
        lo, hi = starts[q], starts[q + 1]
        dispatched = cycles[order[lo:hi]]
        for p in range(lo, hi):
            if op[order[p]] == IFETCH:
                held = upto[p] - np.searchsorted(dispatched, arrival[p])
                if held > cap:
                    out[0], out[1], out[2], out[3] = OVERFLOW, order[p], arrival[p], held
                    return
    out[0] = OK


def dispatch_cycles(hw: HardwareConfig, ins: np.ndarray) -> tuple[np.ndarray, tuple]:
    n = len(ins)
    cycles = np.full(n, -1, np.int64)
    if not n:
        return cycles, (OK, -1, 0, 0)
    key = ins["chip"].astype(np.int64) * (1 << 20) + ins["queue"].astype(np.int64)
    qkeys, qid = np.unique(key, return_inverse=True)
    order = np.argsort(qid, kind="stable")
    starts = np.searchsorted(qid[order], np.arange(len(qkeys) + 1))
    width = np.array([issue_width(hw, int(k - (k >> 20 << 20))) for k in qkeys], np.int64)
    op = ins["op"].astype(np.int64)
    icu = (op == SYNC) | (op == NOTIFY)
    barrier = np.zeros(n, np.int64)  # dense (chip, barrier) number of each SYNC/NOTIFY
    if icu.any():
        bkey = ins["chip"].astype(np.int64) * (1 << 32) + ins["table"].astype(np.int64)
        barrier[icu] = np.unique(bkey[icu], return_inverse=True)[1]
    g = np.array(
        [hw.icu_sync_latency_cycles, hw.icu_queue_instructions, fetch_width(hw),
         hw.mem_read_latency_cycles], np.int64,
    )  # fmt: skip
    out = np.zeros(4, np.int64)
    _dispatch(
        order, starts, width, ins["delay"].astype(np.int64), op, barrier,
        ins["count"].astype(np.int64), g, cycles, out,
    )  # fmt: skip
    code, i, t, a = (int(x) for x in out)
    if code == OK:
        return cycles, (OK, -1, 0, 0)
    if code in (NOTIFIED_TWICE, DEADLOCK):
        a = int(ins["table"][i])
    return cycles, (code, i, t, a)
