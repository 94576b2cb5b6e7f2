"""Chips simulated alone, and identical chips simulated once (timing mode).

    run_shared(program, cycles, stats) -> RawResult, or None: run the whole program together

Chips run in lockstep, but a chip's state (memory, streams, units, its receive slots) changes
only through its own instructions and the vectors other chips SEND it, and when and where a
SEND lands, and which vector it carries, follow from its instruction and dispatch cycle alone
(sim/isa.py: SEND). So each chip can be simulated by itself with the vectors sent to it given
up front (schema.FIFO_EXTERNAL), and two chips run identically when they are identical up to a
shift in time and the numbering of their links:

- the same instruction records but for `chip`, `delay` and the link a SEND/RECV names, which
  is numbered by its first use on the chip (and whether the chip is its end a or b);
- the same dispatch cycles, less the chip's first;
- the same vectors sent to it (arrival less the chip's first cycle, link, slot, vector id);
- the same memory before cycle 0 (each resident symbol's slices, addresses, vector ids).

A group of such chips is simulated once, by its first chip: every check the kernel makes is a
check of one chip's state, relative in time, so a violation on any chip of the group would be
one on its first. The counts are the pre-pass's over the whole program (sim/engine/prepare.py
`scan`) and the stream hops each group's run counts times its chips. Whenever a chip's run
finds anything wrong (a violation, a partial sum left, an output not where its symbol says),
or the program names chips or links it does not have, this gives up (None) and the whole
program runs together: the violation reported is then exactly the unshared run's.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np

from sim.engine import schema as c
from sim.engine.prepare import WIDTH_LUT, counts_of, link_bytes, preload, prepare_program
from sim.isa import Op, link_cycles, periods, repetitions
from sim.program import Program
from sim.reference import COUNT_KEYS, RawResult

SEND, RECV = int(Op.SEND), int(Op.RECV)


def run_shared(program: Program, cycles: np.ndarray, stats: np.ndarray) -> RawResult | None:
    """The timing run of `program` (dispatched at `cycles`, pre-pass `stats`) with each group of
    identical chips simulated once; None where it cannot or must not share."""
    from sim.engine import _run  # the package's event loop over fresh state (it imports this)

    parts = _parts(program, cycles)
    if parts is None:
        return None
    groups: dict[bytes, list[int]] = {}
    for part in parts:
        groups.setdefault(part.key, []).append(part.chip)
    if len(groups) == len(parts):
        return None  # nothing to share
    outputs: dict[int, list] = {}
    for sym in program.symbols_of("output"):
        outputs.setdefault(sym.chip, []).append(sym)
    hops, ways = 0, None
    for members in groups.values():
        part = parts[members[0]]
        sub = part.program(program)
        prep = prepare_program(sub, cycles[part.index], part.external)
        if ways is not None:  # the ways the chips so far needed (only the ring's capacity)
            prep.g[c.G_WAYS] = ways
        while True:  # as run_engine: more ways when a diagonal needs them
            mem_vid, mem_val = preload(sub, prep, {}, False)
            out, _, accum = _run(sub, prep, mem_vid, mem_val, False)
            if out[c.O_CODE] != c.E_WAYS:
                break
            prep.g[c.G_WAYS] *= 2
        ways = int(prep.g[c.G_WAYS])
        if out[c.O_CODE] != c.OK or (accum >= 0).any():
            return None
        for sym in (s for chip in members for s in outputs.get(chip, ())):
            # each chip's outputs where its symbols say, in its group's first chip's memory
            cell = prep.cell(0, sym.slices.astype(np.int64), sym.addrs.astype(np.int64))
            if (mem_vid[cell] != sym.vids).any():
                return None
        hops += int(out[c.O_HOPS]) * len(members)
    hw, ins = program.hw, program.instrs
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts.update(counts_of(stats), stream_hops=hops)
    links = program.links.astype(np.int64)
    return RawResult(
        cycles=max(0, int(stats[c.S_END])),
        outputs={},
        counts=counts,
        bytes_read=counts["mem_read"] * hw.lanes,
        bytes_written=counts["mem_write"] * hw.lanes,
        instructions=len(ins),
        events=int(stats[c.S_EVENTS]),
        link_bytes=link_bytes(hw, ins, links) if stats[c.S_C2C_SEND] else np.zeros_like(links),
        chip_groups=tuple(tuple(m) for m in sorted(groups.values())),
    )


def _local(program: Program, index: np.ndarray, links_used: np.ndarray) -> np.ndarray:
    """A chip's instructions as chip 0's, each SEND/RECV naming its link's local number."""
    ins = np.take(program.instrs, index)  # NumPy indexes records much faster by take
    ins["chip"] = 0
    c2c = (ins["op"] == SEND) | (ins["op"] == RECV)
    ins["table"][c2c] = _numbers(links_used, ins["table"][c2c])
    return ins


def _numbers(links_used: np.ndarray, link: np.ndarray) -> np.ndarray:
    """The local number of each of `link` (each one of links_used): its index there."""
    sorter = np.argsort(links_used, kind="stable")
    return sorter[np.searchsorted(links_used, link, sorter=sorter)]


def _first_uses(link: np.ndarray) -> np.ndarray:
    """The distinct links of `link`, in order of first use."""
    distinct, first = np.unique(link, return_index=True)
    return distinct[np.argsort(first, kind="stable")]


class _Part:
    """One chip of a program: its instructions (indices, in program order), the links it uses
    (local number k: the program's link links_used[k]) and at which end, the vectors sent to
    it (absolute cycles, local channels), and its key: equal keys run identically."""

    def __init__(self, chip, index, links_used, ends_a, external, key):
        self.chip = chip
        self.index = index
        self.links_used = links_used
        self.ends_a = ends_a
        self.external = external
        self.key = key

    def program(self, program: Program) -> Program:
        """The chip alone, as chip 0; local link k joins it and chip 1 (every other chip, whose
        SENDs arrive through `external`), the chip at the same end as in the program."""
        mine = [s for s in program.symbols if s.chip == self.chip and s.kind != "output"]
        links = np.array([(0, 1) if a else (1, 0) for a in self.ends_a], np.int32)
        return Program(
            hw=program.hw,
            instrs=_local(program, self.index, self.links_used),
            tables=program.tables,
            symbols=tuple(replace(s, chip=0) for s in mine),
            consts={s.name: program.consts[s.name] for s in mine if s.kind == "const"},
            sources=program.sources,
            predicted_cycles=0,
            words_used=program.words_used,
            chips=2 if len(links) else 1,
            links=links.reshape(-1, 2),
        )


def _parts(program: Program, cycles: np.ndarray) -> list[_Part] | None:
    """Every chip's part, or None when an instruction or symbol is on no chip of the program, a
    SEND/RECV names no link of its chip, or a SEND a receive slot the channel does not have
    (the whole program's run reports these)."""
    ins, links, n_chips = program.instrs, program.links.astype(np.int64), program.chips
    chip = ins["chip"].astype(np.int64)
    if len(ins) and (chip.min() < 0 or chip.max() >= n_chips):
        return None
    if any((s.slices < 0).any() or (s.addrs < 0).any() for s in program.symbols):
        return None
    c2c = (ins["op"] == SEND) | (ins["op"] == RECV)
    link = ins["table"][c2c].astype(np.int64)
    if len(link) and (link.min() < 0 or link.max() >= len(links)):
        return None
    if ((links[link, 0] != chip[c2c]) & (links[link, 1] != chip[c2c])).any():
        return None
    sent = _sent(program, cycles, links)
    if sent is None:
        return None
    to, at, via, backward, slot, vid = sent
    by_chip = np.argsort(chip, kind="stable")
    bounds = np.searchsorted(chip[by_chip], np.arange(n_chips + 1))
    by_to = np.argsort(to, kind="stable")  # arrival order within each chip (see _sent)
    to_bounds = np.searchsorted(to[by_to], np.arange(n_chips + 1))
    resident: dict[int, list] = {}
    for s in program.symbols:
        if s.kind != "output":
            resident.setdefault(s.chip, []).append(s)
    slots = program.hw.c2c_buffer_vectors
    parts = []
    for ch in range(n_chips):
        index = by_chip[bounds[ch] : bounds[ch + 1]]
        into = by_to[to_bounds[ch] : to_bounds[ch + 1]]
        own = ins["table"][index][c2c[index]].astype(np.int64)
        links_used = _first_uses(np.concatenate([own, via[into]]))
        ends_a = links[links_used, 0] == ch
        external = np.empty((len(into), c.N_ARRIVAL), np.int64)
        external[:, c.A_AT] = at[into]
        external[:, c.A_EVENT] = -1
        external[:, c.A_SLOT] = (2 * _numbers(links_used, via[into]) + backward[into]) * slots
        external[:, c.A_SLOT] += slot[into]
        external[:, c.A_VID] = vid[into]
        first = int(cycles[index].min()) if len(index) else 0
        h = hashlib.sha256()
        local = _local(program, index, links_used)
        local["delay"] = 0  # the dispatch cycles say when
        h.update(local)  # (its buffer: no copy)
        h.update((cycles[index] - first).tobytes())
        h.update(ends_a.tobytes())
        shifted = external.copy()
        shifted[:, c.A_AT] -= first
        h.update(shifted.tobytes())
        for s in resident.get(ch, ()):
            h.update(f"\0{s.kind}\0{s.dtype}\0{len(s.vids)}".encode())
            h.update(s.slices.tobytes() + s.addrs.tobytes() + s.vids.tobytes())
        parts.append(_Part(ch, index, links_used, ends_a, external, h.digest()))
    return parts


def link_costs(hw) -> np.ndarray:
    """Cycles a vector of each width (words: WIDTH_LUT's) holds a link direction."""
    cost = np.zeros(len(WIDTH_LUT), np.int64)
    for w in (1, 2, 4):
        cost[w] = link_cycles(hw, w)
    return cost


def _sent(program: Program, cycles: np.ndarray, links: np.ndarray):
    """`sent` of a whole program's instructions."""
    return sent(program.hw, program.instrs, cycles, links)


def sent(hw, ins: np.ndarray, cycles: np.ndarray, links: np.ndarray):
    """Every SEND repetition's landing, in the order the whole program's run lands them (cycle,
    then issue order): (receiving chip, cycle, link, 1 if sent from the link's end b, receive
    slot, vector id); None when a slot is outside the channel's."""
    sends = np.flatnonzero(ins["op"] == SEND)
    r = ins[sends]
    i, j = repetitions(r)
    t = cycles[sends][i] + j * periods(r)[i]
    at = t + hw.c2c_latency_cycles + link_costs(hw)[WIDTH_LUT[r["dtype"]][i]]
    via = r["table"][i].astype(np.int64)
    backward = (r["chip"][i] != links[via, 0]).astype(np.int64)
    to = np.where(backward == 1, links[via, 0], links[via, 1])
    slot = r["addr"][i].astype(np.int64) + j * r["stride"][i].astype(np.int64)
    if len(slot) and (slot.min() < 0 or slot.max() >= hw.c2c_buffer_vectors):
        return None
    vid = r["vid"][i] + j
    # events issue in (cycle, instruction) order: by landing, then sending cycle, then as listed
    # (sends[i] never decreases along the repetitions), in one stable sort of one key
    span = int(t.max() - t.min()) + 1 if len(t) else 1
    if len(t) and int(at.max() - at.min() + 1) * span < 2**62:
        order = np.argsort((at - at.min()) * span + (t - t.min()), kind="stable")
    else:
        order = np.lexsort((sends[i], t, at))
    return to[order], at[order], via[order], backward[order], slot[order], vid[order]
