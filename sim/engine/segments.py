"""Placed bodies simulated once (timing mode): a Program's placements (sim/program.py).

    run_placed(program, inputs) -> RawResult, or None: run the program written out instead

A chip that runs a placed body is three runs in time: its own instructions before the body (the
transfers that bring its input, relays for others), the body, and its own instructions after it
(the transfers that take its output on). Nothing of one run is in flight when the next begins
(checked below), so each runs alone, as share.py runs a chip: on the memory the run before left
(the cells the next one touches), with the vectors other chips send it in that time given up
front. A body runs once for every chip it is placed on with the same ends of its links, the same
vectors sent to it (relative to its shift) and the same memory; own runs that are alike run once.

Checked here, because it spans runs:

- the queues: each chip's own instructions dispatch around its body as the written-out queues
  would (the body's head delays, the deliveries it finds, the tail its last IFETCH brings), and
  the body alone dispatches as the scheduler predicted;
- time: a run's last effect is no later than the next run's first unit operation, and no stream
  diagonal that one run uses is used by the next (`stream_extent`);
- links: every SEND of every chip against the others on its channel (busy for link_cycles);
- receive slots: each run's RECVs take exactly the vectors that arrive in its time.

Anything else wrong (a violation in a run, a partial sum left, an output not where its symbol
says, an own instruction inside a body's time) gives up: the written-out program then runs, and
reports exactly what it reports.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import replace

import numpy as np

from sim.bounds import put_words
from sim.engine import schema as c
from sim.engine.icu import dispatch_cycles
from sim.engine.prepare import (
    WIDTH_LUT,
    Prepared,
    counts_of,
    latency_lut,
    link_bytes,
    preload,
    prepare_program,
    scan,
)
from sim.engine.share import link_costs, sent
from sim.hardware import MAX_ELEMENT_BYTES, HardwareConfig
from sim.icu import fetch_width
from sim.isa import INSTR_DTYPE, Op, issue_width, n_queues, periods, queue_position, repetitions
from sim.program import CLOSING_BARRIER, Program
from sim.reference import COUNT_KEYS, RawResult

SEND, RECV, SYNC, NOTIFY, IFETCH = (int(o) for o in (Op.SEND, Op.RECV, Op.SYNC, Op.NOTIFY,
                                                     Op.IFETCH))  # fmt: skip
ICU_OPS = (SYNC, NOTIFY)
# Why the last run_placed gave up (the number of the check in run_placed), for diagnosis.
gave_up: int | None = None


def _give_up(check: int) -> None:
    global gave_up
    gave_up = check


def stream_extent(
    hw: HardwareConfig, instrs: np.ndarray, cycles: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per stream, the lowest and highest diagonal any vector of `instrs` occupies: a vector
    flows to the chip's edge, so what runs after must not put one on those diagonals."""
    S = hw.streams_per_direction
    lo = np.full(2 * S, np.iinfo(np.int64).max)
    hi = np.full(2 * S, np.iinfo(np.int64).min)
    op = instrs["op"].astype(np.int64)
    puts = (op != int(Op.WRITE)) & (op != int(Op.INSTALL)) & ~np.isin(op, ICU_OPS + (IFETCH,))
    r = instrs[puts]
    if not len(r):
        return lo, hi
    cycles = cycles[puts]
    lat = latency_lut(hw)
    pos = _positions(hw)
    t0 = cycles + lat[r["op"]]
    p = pos[r["queue"]]
    sd = r["sd"].astype(np.int64)
    d0 = np.where(sd // S == 0, t0 - p, t0 + p)
    d1 = d0 + (r["repeat"].astype(np.int64) - 1) * periods(r)
    width = put_words(r)
    for m in range(MAX_ELEMENT_BYTES):
        sel = (m < width) & (sd + m < 2 * S)
        np.minimum.at(lo, sd[sel] + m, d0[sel])
        np.maximum.at(hi, sd[sel] + m, d1[sel])
    return lo, hi


@functools.lru_cache(maxsize=8)
def _positions(hw: HardwareConfig) -> np.ndarray:
    """The floorplan position of each queue."""
    return np.array([queue_position(hw, q) for q in range(n_queues(hw))], np.int64)


# --- a body alone -------------------------------------------------------------------------------


class _Body:
    """A body run alone from cycle 0 (with a closing NOTIFY where its last IFETCH brings one
    place past its end): its cycles, per queue what a chip's queue must match, its counts."""

    def __init__(self, program: Program, k: int):
        hw = program.hw
        body = program.bodies[k]
        self.ins = body.instrs
        queues, cap, rl = n_queues(hw), hw.icu_queue_instructions, hw.mem_read_latency_cycles
        q = self.ins["queue"].astype(np.int64)
        self.size = np.bincount(q, minlength=queues)[:queues]
        fetch = self.ins["op"] == IFETCH
        brought = np.bincount(q[fetch], self.ins["count"][fetch], minlength=queues)[:queues]
        self.preload = np.minimum(self.size, cap)
        self.delivered = self.preload + brought.astype(np.int64)
        tails = np.flatnonzero(self.delivered > self.size)
        close = np.zeros(len(tails), INSTR_DTYPE)
        close["op"], close["queue"], close["delay"] = NOTIFY, tails, 1
        close["table"] = CLOSING_BARRIER + tails
        close["src"] = -1
        whole = np.concatenate([self.ins, close])
        cycles, problem = dispatch_cycles(hw, whole)
        self.ok = problem[0] == 0 and (body.predicted is None or np.array_equal(
            cycles[: len(self.ins)], body.predicted))  # fmt: skip
        self.cycles = cycles[: len(self.ins)]
        self.alone = whole  # what runs: the body and its closing NOTIFYs
        self.alone_cycles = cycles
        big = np.iinfo(np.int64).max
        self.first = np.full(queues, big)
        np.minimum.at(self.first, q, self.cycles)
        self.last = np.full(queues, -1, np.int64)
        np.maximum.at(self.last, q, self.cycles)
        self.at_last = np.bincount(q[self.cycles == self.last[q]], minlength=queues)[:queues]
        self.tail_at = np.full(queues, -1, np.int64)
        np.maximum.at(self.tail_at, q[fetch], self.cycles[fetch] + rl)
        self.by_queue = [np.sort(self.cycles[q == i]) for i in range(queues)]
        unit = ~np.isin(self.ins["op"], ICU_OPS)
        self.first_op = int(self.cycles[unit].min()) if unit.any() else 0
        part = Program(hw=hw, instrs=self.ins, tables=program.tables, symbols=(), consts={},
                       sources=(), predicted_cycles=0, words_used=program.words_used)  # fmt: skip
        self.stats = scan(part, self.cycles)
        self.end = int(self.stats[c.S_END])
        self.extent = stream_extent(hw, self.ins, self.cycles)
        sends = self.ins["op"] == SEND
        self.sends, self.send_cycles = self.ins[sends], self.cycles[sends]
        self.ports = np.sort(_port_keys(hw, self.ins, self.cycles))  # read ports it holds
        self.recv_links, self.recv_slots = _takes(self.ins[self.ins["op"] == RECV])
        self.shape = _shape(self.alone, self.alone_cycles)

    def ports_held(self, slices: np.ndarray, cycles: np.ndarray) -> np.ndarray:
        """Read ports the body holds on each slice at each cycle (its own time)."""
        key = cycles * (1 << 12) + slices
        return np.searchsorted(self.ports, key, "right") - np.searchsorted(self.ports, key)


def _port_keys(hw, ins: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """cycle * 4096 + slice of every read-port use: each READ repetition's words, each IFETCH."""
    slices, _, t = _read_words(ins, cycles)
    fetch = ins["op"] == IFETCH
    return np.concatenate([t * (1 << 12) + slices, cycles[fetch] * (1 << 12) + ins["slice"][fetch]])


def _read_words(ins: np.ndarray, cycles: np.ndarray | None = None):
    """(slice, address, cycle) of every word each READ repetition of `ins` reads (cycles, if
    `cycles`, else zeros)."""
    read = ins["op"] == int(Op.READ)
    r = ins[read]
    i, j = repetitions(r)
    addrs = r["addr"].astype(np.int64)[i] + j * r["stride"].astype(np.int64)[i]
    t = cycles[read][i] + j * periods(r)[i] if cycles is not None else np.zeros(len(i), np.int64)
    width = WIDTH_LUT[r["dtype"]][i]
    g = r["slice"].astype(np.int64)[i]
    words = [m < width for m in range(MAX_ELEMENT_BYTES)]
    return (np.concatenate([g[w] + m for m, w in enumerate(words)]),
            np.concatenate([addrs[w] for w in words]), np.concatenate([t[w] for w in words]))  # fmt: skip


# --- own instructions around the bodies: the queues --------------------------------------------


def _own_dispatch(program: Program, bodies: list[_Body]) -> np.ndarray | None:
    """Each own instruction's dispatch cycle, as the written-out queues dispatch it; None where
    they would not (or a body would not start as it does alone)."""
    hw, ins = program.hw, program.instrs
    queues = n_queues(hw)
    cycles = np.full(len(ins), -1, np.int64)
    place_of = {int(ch): p for p, ch in enumerate(program.placements["chip"].tolist())}
    chip = ins["chip"].astype(np.int64)
    alone = ~np.isin(chip, list(place_of))
    if alone.any():  # chips of their own instructions only
        sub, problem = dispatch_cycles(hw, ins[alone])
        if problem[0] != 0:
            return None
        cycles[alone] = sub
    # each barrier notified once on its chip: own NOTIFYs, and the bodies' on their chips
    notify = ins["op"] == NOTIFY
    barriers = [chip[notify] * (1 << 32) + ins["table"][notify]]
    pl = program.placements
    for ch, k in zip(pl["chip"].tolist(), pl["body"].tolist(), strict=True):
        b = bodies[k].ins
        barriers.append(ch * (1 << 32) + b["table"][b["op"] == NOTIFY].astype(np.int64))
    barriers = np.concatenate(barriers)
    if len(np.unique(barriers)) != len(barriers):
        return None
    key = chip * queues + ins["queue"].astype(np.int64)
    order = np.argsort(key, kind="stable")  # each queue's own instructions, in queue order
    starts = np.searchsorted(key[order], np.arange(program.chips * queues + 1))
    seen: dict[tuple, np.ndarray | None] = {}  # queues alike up to their shift
    for p, ch in enumerate(pl["chip"].tolist()):
        k, shift = int(pl["body"][p]), int(pl["shift"][p])
        body = bodies[k]
        lo, hi = (
            starts[ch * queues : ch * queues + queues],
            starts[ch * queues + 1 : ch * queues + queues + 1],
        )
        count = hi - lo
        at, head = program.place_at[p], program.place_heads[p]
        # a queue of the body's whose one own instruction is the NOTIFY that closes it, right
        # after it (brought by its tail): its cycle follows, with nothing to wait for
        single = (count == 1) & (body.size > 0) & (at == 0)
        one = order[lo[single]]
        q1 = np.flatnonzero(single)
        closing = (
            (ins["op"][one] == NOTIFY) & (ins["delay"][one] >= 1)
            & (head[q1] == shift + body.first[q1]) & (body.delivered[q1] > body.size[q1])
            & (body.tail_at[q1] <= body.last[q1] + ins["delay"][one])
        )  # fmt: skip
        cycles[one[closing]] = shift + body.last[q1[closing]] + ins["delay"][one[closing]]
        # a queue of the body's alone that fetches nothing: it starts there at its own cycle
        untouched = (count == 0) & (body.size > 0) & (body.delivered == body.size)
        untouched &= head == shift + np.where(body.size > 0, body.first, 0)
        rest = np.flatnonzero(
            ((count > 0) | (body.size > 0)) & ~untouched & ~np.isin(np.arange(queues), q1[closing])
        )
        for q in rest.tolist():
            idx = order[lo[q] : hi[q]]
            got = _queue_shifted(hw, ins, idx, q, k, body, shift, int(at[q]), int(head[q]), seen)
            if got is None:
                return None
            cycles[idx] = got
    return cycles


def _queue_shifted(hw, ins, idx, q, k, body, shift, at, head, seen: dict):
    """_queue, its result taken from a queue alike up to the shift where one was found (`seen`):
    a queue's dispatch is the same relative to its body's start but for its first wait, counted
    from cycle 0 (its first own instruction's delay, or the body's head where none comes
    first)."""
    delays = ins["delay"][idx].astype(np.int64)
    absolute_first = bool(len(idx)) and (at > 0 or body.size[q] == 0)
    if absolute_first:
        delays[0] -= shift
    if (absolute_first and delays[0] + shift < 0) or head < 0:
        return _queue(hw, ins, idx, q, body, shift, at, head)  # (refused: as it refuses it)
    rel_head = head - shift if at == 0 else head
    key = (k, q, at, rel_head, delays.tobytes(), ins["op"][idx].tobytes(),
           ins["count"][idx].tobytes())  # fmt: skip
    if key not in seen:
        got = _queue(hw, ins, idx, q, body, shift, at, head)
        seen[key] = None if got is None else np.asarray(got, np.int64) - shift
    got = seen[key]
    return None if got is None else got + shift


def _queue(hw, ins, idx, q, body: _Body, shift, at, head) -> list[int] | None:
    """The dispatch cycles of a placed chip's own instructions `idx` on queue q (`at` of them
    before the body's), following sim/icu.dispatch through the body."""
    cap, most, rl, width = (hw.icu_queue_instructions, fetch_width(hw), hw.mem_read_latency_cycles,
                            issue_width(hw, q))  # fmt: skip
    n = int(body.size[q])
    total = len(idx) + n
    pre = min(cap, total)
    delivered, fetched, out = pre, [], []  # fetched: (arrival, delivered up to)
    last = used = pos = 0

    def step(i: int) -> bool:
        nonlocal delivered, last, used, pos
        delay, op = int(ins["delay"][i]), int(ins["op"][i])
        t = last + delay
        if delay < 0 or op == SYNC:
            return False
        if pos >= pre:  # an IFETCH brought it
            got = [a for a, upto in fetched if upto > pos]
            if not got:
                return False
            t = max(t, got[0])
        u = used + 1 if pos and t == last else 1
        if u > width:
            return False
        if op == IFETCH:
            count = int(ins["count"][i])
            if not 1 <= count <= min(most, total - delivered):
                return False
            delivered += count
            fetched.append((t + rl, delivered))
        out.append(t)
        last, used, pos = t, u, pos + 1
        return True

    for j in range(min(at, len(idx))):
        if not step(int(idx[j])):
            return None
    if n:
        t = last + head
        if head < 0 or t != shift + int(body.first[q]) or (pos and t == last):
            return None
        if pos >= pre and not [a for a, upto in fetched if upto > pos and a <= t]:
            return None
        fetches = body.delivered[q] > body.preload[q]
        if (delivered - at != int(body.preload[q]) if fetches else delivered - at < n) or any(
            a > t for a, _ in fetched
        ):
            return None  # the body would not find its queue as it does alone
        last, used, pos = shift + int(body.last[q]), int(body.at_last[q]), at + n
        if fetches:  # its own IFETCHes, and the tail they bring
            delivered = at + int(body.delivered[q])
            fetched.append((shift + int(body.tail_at[q]), delivered))
    for j in range(at, len(idx)):
        if not step(int(idx[j])):
            return None
    # room for every own delivery when it lands
    mine = np.sort(np.array(out, np.int64))
    theirs = body.by_queue[q] + shift
    for arrival, upto in fetched:
        held = upto - int(np.searchsorted(mine, arrival) + np.searchsorted(theirs, arrival))
        if held > cap:
            return None
    return out


# --- the runs -----------------------------------------------------------------------------------


class _Run:
    """One chip's instructions over a span of time, run alone: as chip 0 of a program of its
    own, its links numbered locally, chip 0 the end a of each (chip 1 stands for every other
    chip: a link's two channels are then one chip's sending and receiving, whichever end it is
    in the program), the vectors others send it given up front, memory from symbols and the
    cells the run before left."""

    def __init__(self, program, ins, cycles, links, arrivals, symbols, carry, shape=None):
        """`shape`: a digest of `ins` and their cycles from the first (computed if None)."""
        self.source, self.ins, self.cycles = program, ins, cycles
        self.links, self.external, self.symbols = links, arrivals, symbols
        self.carry = carry  # (slices, addrs, vids) of cells to set before it runs
        first = int(cycles.min()) if len(cycles) else 0
        h = hashlib.sha256()
        h.update(_shape(ins, cycles) if shape is None else shape)
        h.update(b"%d" % links)
        shifted = arrivals.copy()
        shifted[:, c.A_AT] -= first
        h.update(shifted.tobytes())
        for a in carry:
            h.update(np.ascontiguousarray(a).tobytes())
        for s in symbols:  # (arrays shared by identity: the same tensors at the same places)
            h.update(f"{s.kind}{s.dtype}{id(s.slices)}.{id(s.addrs)}.{id(s.vids)}".encode())
        self.key = h.digest()

    @property
    def program(self) -> Program:
        """The chip as chip 0 of a program of its own (built for the run that runs)."""
        source, symbols = self.source, self.symbols
        ins = self.ins.copy()
        ins["chip"] = 0
        # Its memory: the words it names, its symbols' and the carried cells' (not every word
        # the whole program uses: a chip's transfers touch a few).
        carried = self.carry[1]
        words = int(carried.max()) + 1 if len(carried) else 0
        return Program(
            hw=source.hw, instrs=ins, tables=source.tables,
            symbols=tuple(replace(s, chip=0) for s in symbols),
            consts={s.name: source.consts[s.name] for s in symbols if s.kind == "const"},
            sources=source.sources, predicted_cycles=0, words_used=words,
            chips=2 if self.links else 1, links=np.tile([[0, 1]], (self.links, 1)).astype(np.int32),
        )  # fmt: skip

    def run(self, ways: int | None):
        """(status out, Prepared, final vector ids, accumulator rows, ways), status OK or not."""
        from sim.engine import _run

        program = self.program
        prep = prepare_program(program, self.cycles, self.external)
        if ways is not None:
            prep.g[c.G_WAYS] = max(ways, int(prep.g[c.G_WAYS]))
        while True:
            mem_vid, mem_val = preload(program, prep, {}, False)
            slices, addrs, vids = self.carry
            if len(vids):
                cell = prep.cell(0, slices, addrs)
                ok = (cell >= 0) & (cell < len(mem_vid))
                mem_vid[cell[ok]] = vids[ok]
            out, _, accum = _run(program, prep, mem_vid, mem_val, False)
            if out[c.O_CODE] != c.E_WAYS:
                break
            prep.g[c.G_WAYS] *= 2
        return out, prep, mem_vid, accum, int(prep.g[c.G_WAYS])


def _shape(ins: np.ndarray, cycles: np.ndarray) -> bytes:
    """A digest of instructions (but for their chip and delays: the cycles say when) and their
    cycles from the first."""
    h = hashlib.sha256()
    plain = ins.copy()
    plain["delay"] = plain["chip"] = 0
    h.update(plain.tobytes())
    h.update((cycles - (int(cycles.min()) if len(cycles) else 0)).tobytes())
    return h.digest()


def run_placed(program: Program, inputs: dict | None) -> RawResult | None:
    """The timing run of a placed program with each body run once for the chips alike; None
    where it cannot or must not share (the module's docstring)."""
    global gave_up
    gave_up = None
    hw = program.hw
    for _ in program.resident(inputs or {}, False):  # the host's inputs, checked
        pass
    bodies = [_Body(program, k) for k in range(len(program.bodies))]
    if not all(b.ok for b in bodies):
        return _give_up(1)
    own_cycles = _own_dispatch(program, bodies)
    if own_cycles is None:
        return _give_up(2)
    if program.predicted is not None and not np.array_equal(own_cycles, program.predicted):
        return _give_up(3)
    own, pl = program.instrs, program.placements
    links = program.links.astype(np.int64)
    # every SEND: each chip's own, each placement's body's on the program's links
    mine = own["op"] == SEND
    placed_bodies = [bodies[k] for k in pl["body"].tolist()]
    placed = np.concatenate([b.sends for b in placed_bodies] + [own[:0]])
    p = np.repeat(np.arange(len(pl)), [len(b.sends) for b in placed_bodies])
    placed["chip"] = pl["chip"][p]
    placed["table"] = program.place_links[p, placed["table"].astype(np.int64)]
    sends = np.concatenate([own[mine], placed])
    send_cycles = np.concatenate(
        [own_cycles[mine], *(b.send_cycles for b in placed_bodies), np.zeros(0, np.int64)]
    )
    send_cycles[mine.sum() :] += pl["shift"].astype(np.int64)[p]
    if not _links_free(hw, sends, send_cycles, links):
        return _give_up(4)
    arrived = sent(hw, sends, send_cycles, links)
    if arrived is None:
        return _give_up(5)
    to, at, via, backward, slot, vid = arrived
    resident: dict[int, list] = {}
    outputs: dict[int, list] = {}
    for sym in program.symbols:
        (outputs if sym.kind == "output" else resident).setdefault(sym.chip, []).append(sym)
    chip_of = own["chip"].astype(np.int64)
    icu = np.isin(own["op"], ICU_OPS)
    place_of = {int(ch): p for p, ch in enumerate(pl["chip"].tolist())}
    big = np.iinfo(np.int64).max
    runner = _Runner(program, to, at, via, backward, slot, vid)
    body_keys: dict[int, bytes] = {}
    for ch in range(program.chips):
        idx = np.flatnonzero(chip_of == ch)
        if ch not in place_of:  # a chip of its own instructions: one run over all its time
            key = runner.own(ch, idx, own_cycles, -big, big, resident.get(ch, []), _empty())
            got = runner.execute(key)
            if got is None or not _outputs_there(outputs.get(ch, ()), got):
                return _give_up(6)
            continue
        p = place_of[ch]
        k, shift = int(pl["body"][p]), int(pl["shift"][p])
        body = bodies[k]
        w0, w1 = shift + body.first_op, shift + body.end
        t = own_cycles[idx]
        unit = ~icu[idx]
        before, after = idx[unit & (t < w0)], idx[unit & (t >= w1)]
        # within the body's time, only IFETCHes that bring what follows it, on ports it leaves
        during = idx[unit & (t >= w0) & (t < w1)]
        if not _fetches_fit(hw, own[during], own_cycles[during], body, shift):
            return _give_up(7)  # an own instruction among the body's
        # before the body: what it leaves in memory is where the body starts from
        key = runner.own(ch, before, own_cycles, -big, w0, [], _empty())
        got = runner.execute(key)
        if got is None:
            return _give_up(8)
        _, prep, mem = got
        if len(before):
            if int(prep.cycles) > w0 or not _apart(
                stream_extent(hw, own[before], own_cycles[before]), body.extent, shift
            ):  # fmt: skip
                return _give_up(9)  # still in effect, or on the streams, when the body starts
            carry = _written(prep, mem)
        else:
            carry = _empty()
        # the body, on the cells the run before wrote
        row = program.place_links[p][: program.bodies[k].links].astype(np.int64)
        key = runner.body(ch, body, shift, row, resident.get(ch, []), carry)
        got = runner.execute(key)
        if got is None or not _outputs_there(outputs.get(ch, ()), got):
            return _give_up(10)
        body_keys[ch] = key
        _, prep, mem = got
        # after it: on the cells it reads, as the body left them
        if len(after) and not _apart(body.extent, stream_extent(hw, own[after], own_cycles[after]),
                                     -shift):  # fmt: skip
            return _give_up(11)
        rs, ra, _ = _read_words(own[after])
        cell = prep.cell(0, rs, ra)
        ok = (cell >= 0) & (cell < len(mem))
        key = runner.own(ch, after, own_cycles, w1, big, [], (rs[ok], ra[ok], mem[cell[ok]]))
        if runner.execute(key) is None:
            return _give_up(12)
    if not runner.slots_match():
        return _give_up(13)
    # the counts: the own instructions', and each body's once per chip it is placed on
    stats = scan(program, own_cycles)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts.update(counts_of(stats))
    end, events = (int(stats[c.S_END]) if len(own) else 0), int(stats[c.S_EVENTS])
    for k, body in enumerate(bodies):
        on = pl["shift"][pl["body"] == k]
        for name, n in counts_of(body.stats).items():
            counts[name] += n * len(on)
        events += int(body.stats[c.S_EVENTS]) * len(on)
        if len(on):
            end = max(end, int(on.max()) + body.end)
    counts["stream_hops"] = runner.hops()
    groups: dict[bytes, list] = {}
    for ch, key in body_keys.items():
        groups.setdefault(key, []).append(ch)
    chip_groups = [tuple(g) for g in groups.values()]
    chip_groups += [(ch,) for ch in range(program.chips) if ch not in place_of]
    return RawResult(
        cycles=max(0, end),
        outputs={},
        counts=counts,
        bytes_read=counts["mem_read"] * hw.lanes,
        bytes_written=counts["mem_write"] * hw.lanes,
        instructions=program.instruction_count(),
        events=events,
        link_bytes=link_bytes(hw, sends, links) if len(sends) else np.zeros_like(links),
        chip_groups=tuple(sorted(chip_groups)),
    )


class _Runner:
    """The runs of a placed program: each built once per chip, run once per key, and what each
    run's RECVs must take (checked together, `slots_match`)."""

    def __init__(self, program, to, at, via, backward, slot, vid):
        self.program = program
        self.to, self.at, self.via, self.backward, self.slot, self.vid = (
            to, at, via, backward, slot, vid)  # fmt: skip
        by_chip = np.argsort(to, kind="stable")
        self.bounds = np.searchsorted(to[by_chip], np.arange(program.chips + 1))
        self.by_chip = by_chip
        self.runs: dict[bytes, tuple] = {}  # key -> (run, members)
        self.done: dict[bytes, tuple] = {}
        self.merged: dict[tuple, tuple] = {}  # (body, its links merged) -> (instructions, shape)
        self.via_top = int(via.max(initial=-1))
        # (link and slot of each RECV repetition, on the program's links; the arrivals they take)
        self.takes: list[tuple] = []
        self.ways = None

    def _arrivals(self, ch, lo, hi, numbers):
        """The vectors sent to chip ch landing in [lo, hi), on its local channels."""
        sel = self._into(ch, lo, hi)
        ext = np.empty((len(sel), c.N_ARRIVAL), np.int64)
        ext[:, c.A_AT] = self.at[sel]
        ext[:, c.A_EVENT] = -1
        channel = 2 * numbers(self.via[sel]) + 1  # (chip 0 is each local link's end a)
        ext[:, c.A_SLOT] = channel * self.program.hw.c2c_buffer_vectors + self.slot[sel]
        ext[:, c.A_VID] = self.vid[sel]
        return ext, sel

    def _into(self, ch, lo, hi) -> np.ndarray:
        """The vectors sent to chip ch landing in [lo, hi), in landing order."""
        mine = self.by_chip[self.bounds[ch] : self.bounds[ch + 1]]
        t = self.at[mine]
        return mine[(t >= lo) & (t < hi)]

    def _add(self, run, ch, takes, sel) -> bytes:
        self.runs.setdefault(run.key, (run, []))[1].append(ch)
        self.takes.append((*takes, sel))
        return run.key

    def own(self, ch, idx, cycles, lo, hi, symbols, carry) -> bytes:
        """A run of chip ch's own instructions `idx`, with the vectors landing in [lo, hi)."""
        program = self.program
        ins = np.take(program.instrs, idx)
        c2c = (ins["op"] == SEND) | (ins["op"] == RECV)
        used = np.concatenate(
            [ins["table"][c2c].astype(np.int64), self.via[self._into(ch, lo, hi)]]
        )
        distinct, first = np.unique(used, return_index=True)
        order = distinct[np.argsort(first, kind="stable")]
        numbers = _numbering(order, np.arange(len(order)), int(order.max(initial=-1)) + 1)

        ext, sel = self._arrivals(ch, lo, hi, numbers)
        mine = ins.copy()
        mine["table"][c2c] = numbers(ins["table"][c2c])
        run = _Run(program, mine, cycles[idx], len(order), ext, symbols, carry)
        return self._add(run, ch, _takes(ins[ins["op"] == RECV]), sel)

    def body(self, ch, body: _Body, shift, row, symbols, carry) -> bytes:
        """The body run of chip ch, its local link i being the program's row[i]."""
        program = self.program
        # (-1: a link none of the body's; two local links one of ch's: the first, _merged)
        distinct, first = np.unique(row, return_index=True)
        numbers = _numbering(distinct, first, max(int(row.max(initial=-1)), self.via_top) + 1)

        ext, sel = self._arrivals(ch, shift + body.first_op, shift + body.end, numbers)
        if (ext[:, c.A_SLOT] < 0).any():  # a vector on a link the body does not use
            ext = ext[:0]
            sel = np.concatenate([sel, [-1]])  # (cannot be taken: the check fails)
        alone, shape = self._merged(body, row)
        run = _Run(program, alone, body.alone_cycles + shift, len(row), ext, symbols, carry, shape)
        return self._add(run, ch, (row[body.recv_links], body.recv_slots), sel)

    def _merged(self, body: _Body, row: np.ndarray) -> tuple[np.ndarray, bytes]:
        """The body as chip ch runs it: where two of its local links are one link of ch's (a
        group's roles, compiler/passes/wiring.py), the first of them for both."""
        _, first, inverse = np.unique(row, return_index=True, return_inverse=True)
        canon = first[inverse]
        if np.array_equal(canon, np.arange(len(row))):
            return body.alone, body.shape
        key = (id(body), canon.tobytes())
        if key not in self.merged:
            alone = body.alone.copy()
            c2c = (alone["op"] == SEND) | (alone["op"] == RECV)
            alone["table"][c2c] = canon[alone["table"][c2c].astype(np.int64)]
            self.merged[key] = (alone, _shape(alone, body.alone_cycles))
        return self.merged[key]

    def execute(self, key):
        """(status, Prepared, final vector ids) of a run, run once; None if it failed."""
        if key not in self.done:
            run = self.runs[key][0]
            if not len(run.ins):
                self.done[key] = (np.zeros(c.N_OUT, np.int64), _Nothing(), np.zeros(0, np.int64))
                return self.done[key]
            out, prep, mem, accum, self.ways = run.run(self.ways)
            if out[c.O_CODE] != c.OK or (accum >= 0).any():
                return None
            self.done[key] = (out, _Kept(prep), mem.astype(np.int32))  # (what later runs ask)
        return self.done[key]

    def slots_match(self) -> bool:
        """Each run's RECVs take, link by link and slot by slot, exactly the vectors that land
        for it."""
        for links, slots, sel in self.takes:
            if (np.asarray(sel) < 0).any():
                return False
            mine = np.sort(links * (1 << 20) + slots)
            landed = np.sort(self.via[sel] * (1 << 20) + self.slot[sel])
            if not np.array_equal(mine, landed):
                return False
        return True

    def hops(self) -> int:
        return sum(
            int(self.done[key][0][c.O_HOPS]) * len(members)
            for key, (_, members) in self.runs.items()
            if key in self.done
        )


def _numbering(links: np.ndarray, local: np.ndarray, size: int):
    """The local number of each of a run's links (the program's link links[i] is local[i]):
    a function of an array of the program's links (below `size`), -1 for one not named."""
    lookup = np.full(size, -1, np.int64)
    lookup[links] = local
    return lambda link: lookup[np.asarray(link, np.int64)]


def _takes(recvs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(link, receive slot) of each repetition of `recvs`."""
    i, j = repetitions(recvs)
    slots = recvs["addr"].astype(np.int64)[i] + j * recvs["stride"].astype(np.int64)[i]
    return recvs["table"].astype(np.int64)[i], slots


class _Nothing:
    """The Prepared of a run of no instructions."""

    cycles = 0


def _fetches_fit(hw, ins: np.ndarray, cycles: np.ndarray, body: _Body, shift: int) -> bool:
    """Whether a chip's own instructions in its body's time are IFETCHes of words that exist,
    each on a read port the body and the others leave free (as the kernel claims them)."""
    if not len(ins):
        return True
    if (ins["op"] != IFETCH).any() or (ins["repeat"] != 1).any():
        return False
    s, a = ins["slice"].astype(np.int64), ins["addr"].astype(np.int64)
    if (s < 0).any() or (s >= hw.mem_slices).any() or (a < 0).any():
        return False
    if (a >= hw.words_per_slice).any():
        return False
    key = cycles * (1 << 12) + s
    distinct, mine = np.unique(key, return_counts=True)
    held = body.ports_held(distinct % (1 << 12), distinct // (1 << 12) - shift)
    return bool((held + mine <= hw.mem_read_ports_per_slice).all())


def _apart(first: tuple, then: tuple, shift: int) -> bool:
    """Whether every stream diagonal `first` uses is below every one `then` uses (`then`'s
    diagonals `shift` cycles later), on each stream both use."""
    lo = then[0].astype(np.float64) + shift
    both = (first[1] > np.iinfo(np.int64).min) & (then[0] < np.iinfo(np.int64).max)
    return bool((first[1][both] < lo[both]).all())


class _Kept:
    """What a finished run's Prepared answers later: its cycles and where a cell is (a run's
    Prepared holds every instruction's arrays; hundreds of runs kept whole fill gigabytes)."""

    def __init__(self, prep) -> None:
        self.g, self.cycles = prep.g.copy(), prep.cycles

    cell = Prepared.cell  # (it reads self.g alone)


def _outputs_there(symbols, got) -> bool:
    """Whether each output symbol's vectors are where it says, in a run's final memory."""
    _, prep, mem = got
    for sym in symbols:
        cell = prep.cell(0, sym.slices.astype(np.int64), sym.addrs.astype(np.int64))
        if ((cell < 0) | (cell >= len(mem))).any() or (mem[cell] != sym.vids).any():
            return False
    return True


def _written(prep, mem: np.ndarray) -> tuple:
    """(slices, addrs, vids) of the cells a run of no resident memory wrote."""
    cells = np.flatnonzero(mem != -1)
    per = int(prep.g[c.G_CELL_SLICES])
    slices = cells % per
    addrs = (cells // per) % int(prep.g[c.G_CELL_WORDS])
    return slices.astype(np.int64), addrs.astype(np.int64), mem[cells]


def _empty() -> tuple:
    return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))


def _links_free(hw, sends, cycles, links) -> bool:
    """No SEND repetition on a channel before the one before it has left (link_cycles)."""
    if not len(sends):
        return True
    i, j = repetitions(sends)
    t = cycles[i] + j * periods(sends)[i]
    link = sends["table"].astype(np.int64)[i]
    backward = (sends["chip"][i] != links[link, 0]).astype(np.int64)
    busy = link_costs(hw)[WIDTH_LUT[sends["dtype"]][i]]
    channel = 2 * link + backward
    order = np.lexsort((t, channel))
    ch, t, busy = channel[order], t[order], busy[order]
    same = ch[1:] == ch[:-1]
    return bool((t[1:][same] >= (t[:-1] + busy[:-1])[same]).all())
