"""Pipeline parallelism: a decode step's layers in stages on consecutive chips.

Stage s runs on chip s: its layers (and, on the last, the head) as one single-chip Program,
compiled once for every stage of the same shape. Its output x goes to the next stage over the
system's C2C links as scheduled transfers:

    chip s      READ x[k] -> stream, SEND on a link to the next chip on the path   (after its step)
    relay chip  RECV -> stream -> SEND on the next link, one cycle later
    chip s + 1  RECV -> stream -> WRITE into its x[k]                    (before its step starts)

Vector k goes on link k mod (links between the two chips) of each hop, on a stream of its own
per link, one SEND a cycle per chip and a link's vectors `c2c` cycles apart (sim/isa.py SEND).
A chip is idle while it forwards or receives (the step is one token: stage s + 1 waits for stage
s), so only the transfers themselves can meet, and they are placed around each other here. Stage
s + 1 starts when its last x vector has landed; the chips run in lockstep from cycle 0, and the
simulator checks every transfer (link occupancy, arrival before RECV, receive slots) as it does
every other resource.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import numpy as np

from compiler.codegen.fetch import (
    SHAPE_FIELDS,
    fetch_and_encode,
    plan_body,
    plan_placed,
    shape_of,
)
from compiler.codegen.tensor import WEIGHT_NAME
from compiler.passes.wiring import Wiring, group_wiring
from sim.engine.prepare import latency_lut
from sim.engine.segments import stream_extent
from sim.hardware import HardwareConfig
from sim.isa import (
    DTYPE_BY_NAME,
    DTYPE_BYTES,
    INSTR_DTYPE,
    Op,
    link_cycles,
    make_instrs,
    n_queues,
    periods,
    queue_c2c,
)
from sim.program import PLACE_DTYPE, Body, Program, Symbol
from sim.system import System

LAYER_NAME = re.compile(r"^(params/layers/|cache/[kv]/)(\d+)(.*)$")


def pipeline(
    system: System,
    stages: list[Program],
    first_layers: list[int],
    meta: dict,
    groups: list[list[int]] | None = None,
    wirings: list[Wiring] | None = None,
):
    """One Program for stage s's Program on chips groups[s] (default s*T..s*T+T-1; its layers
    numbered from first_layers[s]), T its chips: 1, or a tensor-parallel group's, each chip's
    role links (compiler/passes/wiring.py) the system's links of its wirings[s] (default: the
    group's wiring on the system). Each stage Program is a body (sim/program.py) placed on each
    of its chips, its SENDs and RECVs on role links; the transfers of x each chip's own."""
    hw = system.hw
    tp = stages[0].chips
    if groups is None:
        groups = [list(range(s * tp, (s + 1) * tp)) for s in range(len(stages))]
    if wirings is None and tp > 1:
        wirings = [group_wiring(system, g) for g in groups]
    paths = [
        [system.path(groups[s][r], groups[s + 1][r]) for r in range(tp)]
        for s in range(len(stages) - 1)
    ]
    N = [w.block for w in wirings] if wirings else [1] * len(groups)
    spread = [
        system.path(groups[s][r], groups[s + 1][b * N[s + 1] + r % N[s + 1]])
        for s in range(len(groups) - 1)
        for r in range(tp)
        for b in range(tp // N[s + 1])
    ]  # fmt: skip  (to each block of the next stage)
    chips = max([max(g) + 1 for g in groups] + [max(p) + 1 for p in (*sum(paths, []), *spread)])
    links = _links(system, chips)
    by_pair: dict[tuple[int, int], list[int]] = {}
    for i, (a, b) in enumerate(links.tolist()):
        by_pair.setdefault((min(a, b), max(a, b)), []).append(i)
    book = _Book(hw)
    parts, cycles, syms, consts, tables, sources = [], [], [], {}, [], []
    # A stage Program's rank-0 instructions (no IFETCH: they are planned again), once, as a
    # body whose SENDs and RECVs name roles; each chip's links of the roles, its placement's.
    seen: dict[int, int] = {}
    bodies = []
    roles = wirings[0].role_link.shape[1] if wirings else 0
    placements = []  # (chip, body, shift, the system's link for each of the body's)
    start = end = 0
    stage_meta = []
    extents: dict[int, tuple] = {}  # a stage Program's body's stream extent
    for s, prog in enumerate(stages):
        if id(prog) not in seen:
            seen[id(prog)] = len(bodies)
            ins = prog.instrs
            c2c = (ins["op"] == int(Op.SEND)) | (ins["op"] == int(Op.RECV))
            keep = ins["op"] != int(Op.IFETCH)
            rank0 = keep & (ins["chip"] == 0)
            body = np.compress(rank0, ins)  # a copy (faster than indexing records)
            body["table"][body["op"] == int(Op.PERMUTE)] += sum(len(t) for t in tables)
            body["src"][body["src"] >= 0] += len(sources)
            if tp > 1:  # rank r runs rank 0's instructions (compiler/codegen/tensor.py replicate)
                body["table"][c2c[rank0]] = prog.meta["c2c_roles"]
            bodies.append((body, prog.predicted[rank0]))
            tables.append(prog.tables)
            sources += prog.sources
        k = seen[id(prog)]
        glob = wirings[s].system_links(by_pair) if tp > 1 else np.zeros((1, 0), np.int64)
        for r in range(tp):
            placements.append((groups[s][r], k, start, glob[r].tolist()))
        for sym in prog.symbols:
            named = _global_symbol(
                sym, groups[s][sym.chip], first_layers[s], first=s == 0, last=s == len(stages) - 1
            )
            if named is None:
                continue
            syms.append(named)
            if sym.kind == "const":
                consts[named.name] = prog.consts[sym.name]
                w = WEIGHT_NAME.match(sym.name)
                if w is not None:  # this stage's wiring's weights
                    i, r = int(w.group(1)), int(w.group(2))
                    consts[named.name] = np.full_like(consts[named.name], wirings[s].weights[r, i])
        end = start + prog.predicted_cycles
        stage_meta.append(
            {"chip": groups[s][0], "chips": tp, "first_cycle": start, "cycles": prog.predicted_cycles,
             "allreduce_cycles": prog.meta.get("allreduce_cycles", 0)}
        )  # fmt: skip
        if s + 1 < len(stages):
            src, dst = _x(prog, "output"), _x(stages[s + 1], "input")
            landed, recs = end, []  # (the boundary's transfers' records, made at once)
            # Rank r's share of x (vectors k = r mod tp; all of it for tp = 1) to rank r of the
            # next stage (and to the rank at its place in each other block of chips linked
            # pairwise, compiler/passes/wiring.py), then, there, each share to every other rank
            # of the block: x crosses between the stages once a block, not once a rank, over the
            # few links between two groups.
            mine = [np.arange(r, len(src.vids), tp) for r in range(tp)]
            out, into = [_part(src, m) for m in mine], [_part(dst, m) for m in mine]
            nxt = groups[s + 1]
            arrived, n = {}, N[s + 1]
            # A share read twice (for two blocks) may put two READs on a queue the body fetches
            # on, whose tail delivers one place: leave room for an IFETCH ahead of the first.
            t0 = end + (hw.mem_read_latency_cycles + hw.width_positions + 2) * (tp > n)
            for r, path in enumerate(paths[s]):
                for t in [r] + [b * n + r % n for b in range(tp // n) if b != r // n]:
                    at = _send(book, path if t == r else system.path(groups[s][r], nxt[t]),
                               by_pair, out[r], into[r], t0, recs)  # fmt: skip
                    arrived[(r, t)] = at
                    landed = max(landed, at)
            for (r, t), at in arrived.items():
                for q in range(tp if tp > 1 else 0):
                    if q != t and q // n == t // n:  # (linked: one hop)
                        at_q = _send(book, system.path(nxt[t], nxt[q]), by_pair, into[r],
                                     into[r], at, recs)  # fmt: skip
                        landed = max(landed, at_q)
            nprog = stages[s + 1]
            if id(nprog) not in extents:  # (stages of one shape share a Program)
                body = (nprog.instrs["chip"] == 0) & (nprog.instrs["op"] != int(Op.IFETCH))
                extents[id(nprog)] = stream_extent(hw, nprog.instrs[body], nprog.predicted[body])
            lo = extents[id(nprog)][0]
            parts.append(make_instrs(recs))
            cycles.append(np.array([r["cycle"] for r in recs], np.int64))
            start = max(landed, _clear(hw, nxt, parts[-1], cycles[-1], lo))
    own = np.concatenate(parts) if parts else np.zeros(0, INSTR_DTYPE)
    own_cycles = np.concatenate(cycles) if cycles else np.zeros(0, np.int64)
    parts.clear()
    data_words = max(_data_words(p) for p in stages)
    src = _fetch_source(stages[0])
    planned = [plan_body(hw, ins, pred, data_words, src) for ins, pred in bodies]
    placed = _place(hw, planned, placements, own, own_cycles, chips, data_words, src)
    ins, cyc, words, rows = placed
    n_links = roles
    pl = np.zeros(len(rows), PLACE_DTYPE)
    pl["chip"], pl["body"], pl["shift"] = ([r[0] for r in rows], [r[1] for r in rows],
                                           [r[2] for r in rows])  # fmt: skip
    end = max(end, _last_effect(hw, ins, cyc))  # (a queue's closing NOTIFY)
    return Program(
        hw=hw,
        instrs=ins,
        predicted=cyc,
        tables=np.concatenate(tables) if tables else np.zeros((0, hw.lanes), np.int32),
        symbols=tuple(syms),
        consts=consts,
        sources=tuple(sources),
        predicted_cycles=int(end),
        words_used=max([words] + [b.top or 0 for b in planned]),
        chips=chips,
        links=links,
        meta={
            **{k: v for k, v in meta.items() if k != "c2c_roles"},
            "stages": stage_meta,
            "topology": system.describe(),
        },  # fmt: skip
        bodies=tuple(Body(b.instrs, b.cycles, n_links) for b in planned),
        placements=pl,
        place_links=np.array([r[3] for r in rows], np.int32).reshape(len(rows), n_links),
        place_at=np.array([r[4] for r in rows], np.int32).reshape(len(rows), n_queues(hw)),
        place_heads=np.array([r[5] for r in rows], np.int64).reshape(len(rows), n_queues(hw)),
    )


def _place(hw, planned, placements, own, own_cycles, chips, words, src):
    """Each chip's own instructions planned around its body (plan_placed), or, where the body
    cannot be placed on a chip (or it has none), all its instructions planned as one chip's:
    (instructions, cycles, words used, placement rows (chip, body, shift, links, at, heads))."""
    chip_of = own["chip"].astype(np.int64)
    by_chip = np.argsort(chip_of, kind="stable")
    bounds = np.searchsorted(chip_of[by_chip], np.arange(chips + 1))
    body_of = {c: (k, shift, glob) for c, k, shift, glob in placements}
    out, out_cycles, rows, alone, alone_cycles = [], [], [], [], []
    words_used = words
    # A chip whose own instructions are another's around the same body, shifted alike, takes
    # that chip's plan shifted (the plan is relative to the body's shift, but for a queue's
    # first delay, counted from cycle 0, and a body's head on a queue with none of its own
    # before it), unless that plan fetched on a queue of its own alone (searched from cycle 0).
    plans: dict[bytes, tuple] = {}
    fields = [np.ascontiguousarray(own[f]) for f in SHAPE_FIELDS]
    for chip in range(chips):
        idx = by_chip[bounds[chip] : bounds[chip + 1]]
        mine, t = np.take(own, idx), own_cycles[idx]
        if chip in body_of:
            k, shift, glob = body_of[chip]
            key = shape_of([f[idx] for f in fields] + [np.array([k])], t - shift)
            if key in plans:
                done = _shifted(plans[key], mine, shift, planned[k], chip)
            else:
                done = plan_placed(hw, planned[k], shift, mine, t, chip, words, src)
                if done is not None and not _fetched_alone(done[0], planned[k]):
                    plans[key] = (*done, shift)
            if done is not None:
                ins, cyc, at, heads, top, _ = done
                out.append(ins)
                out_cycles.append(cyc)
                rows.append((chip, k, shift, glob, at, heads))
                words_used = max(words_used, top or 0)
                continue
            body = planned[k].plain.copy()  # its own instructions after all
            body["chip"] = chip
            c2c = (body["op"] == int(Op.SEND)) | (body["op"] == int(Op.RECV))
            body["table"][c2c] = np.asarray(glob, np.int64)[body["table"][c2c].astype(np.int64)]
            mine, t = (
                np.concatenate([mine, body]),
                np.concatenate([t, planned[k].plain_cycles + shift]),
            )
        alone.append(mine)
        alone_cycles.append(t)
    if alone:
        ins, cyc, top = fetch_and_encode(
            hw, np.concatenate(alone), np.concatenate(alone_cycles), words, src
        )
        out.append(ins)
        out_cycles.append(cyc)
        words_used = max(words_used, top)
    ins = np.concatenate(out) if out else np.zeros(0, INSTR_DTYPE)
    return (
        ins,
        np.concatenate(out_cycles) if out_cycles else np.zeros(0, np.int64),
        words_used,
        rows,
    )


def _shifted(plan: tuple, mine: np.ndarray, shift: int, body, chip: int) -> tuple:
    """Another chip's plan around `body` (plan_placed's, placed at plan[-1]) for `chip`'s own
    instructions `mine` (each the one at its place in the other's), placed at `shift`."""
    ins, cycles, at, heads, top, source, shift0 = plan
    delta = shift - shift0
    delay = ins["delay"].copy()
    ins = ins.copy()
    ins[source >= 0] = mine[source[source >= 0]]
    ins["delay"] = delay
    ins["chip"] = chip  # (the fetches and closing NOTIFYs too, with or without own instructions)
    q = ins["queue"].astype(np.int64)
    first = np.unique(q, return_index=True)[1]  # each queue's first
    fq = q[first]
    counted = (at[fq] > 0) | (body.size[fq] == 0)  # ... counted from cycle 0 (not the body's end)
    ins["delay"][first[counted]] += delta
    heads = heads + np.where((at == 0) & (body.size > 0), delta, 0)
    return ins, cycles + delta, at, heads, top, source


def _fetched_alone(ins: np.ndarray, body) -> bool:
    """Whether a chip's plan fetches on a queue the body does not use."""
    fetch = ins["op"] == int(Op.IFETCH)
    return bool((body.size[ins["queue"][fetch].astype(np.int64)] == 0).any())


def _clear(hw: HardwareConfig, chips: list[int], ins, cyc, lo: np.ndarray) -> int:
    """The first cycle a stage's body (whose lowest diagonal on each stream is `lo`) may start
    on `chips` after their own instructions among `ins` (dispatched at `cyc`): their last has
    taken effect, and their vectors have left every stream diagonal the body's use."""
    out = 0
    for chip in chips:
        mine = ins["chip"] == chip
        if not mine.any():
            continue
        _, hi = stream_extent(hw, ins[mine], cyc[mine])
        both = (hi > np.iinfo(np.int64).min) & (lo < np.iinfo(np.int64).max)
        need = int((hi[both] - lo[both] + 1).max()) if both.any() else 0
        out = max(out, need, _last_effect(hw, ins[mine], cyc[mine]))
    return out


def _last_effect(hw: HardwareConfig, ins: np.ndarray, cycles: np.ndarray) -> int:
    """The cycle the last of `ins` (dispatched at `cycles`) has taken effect."""
    if not len(ins):
        return 0
    lat = latency_lut(hw)[ins["op"]]
    reps = np.maximum(ins["repeat"].astype(np.int64), 1)
    return int((cycles + (reps - 1) * periods(ins) + lat).max())


def _send(book, path, by_pair, src: Symbol, dst: Symbol, t0: int, recs: list) -> int:
    """src's vectors on path[0] into dst's on path[-1] from t0 (the book places them), their
    instructions' records (each with its cycle) appended to recs; the cycle the last has
    landed."""
    hops = [by_pair[(min(u, v), max(u, v))] for u, v in zip(path, path[1:], strict=False)]
    mine, landed = book.transfer(path, hops, src, dst, t0)
    recs += mine
    return landed


def _part(sym: Symbol, vectors: np.ndarray) -> Symbol:
    return sym.but(slices=sym.slices[vectors], addrs=sym.addrs[vectors], vids=sym.vids[vectors])


def _x(prog: Program, kind: str) -> Symbol:
    """x on the stage's first chip (a tensor-parallel group's ranks hold it at the same place)."""
    return next(s for s in prog.symbols if s.name == "x" and s.kind == kind and s.chip == 0)


def _links(system: System, chips: int) -> np.ndarray:
    """(links, 2): every physical link among chips 0..chips-1 as (chip a, chip b), a < b, parallel
    links one row each."""
    rows = []
    for a, b, data in sorted(system.graph.edges(data=True)):
        if max(a, b) < chips:
            rows += [(min(a, b), max(a, b))] * int(data.get("links", 1))
    return np.array(rows, np.int32).reshape(-1, 2)


def _global_symbol(
    sym: Symbol, chip: int, first_layer: int, first: bool, last: bool
) -> Symbol | None:
    """A stage's symbol on its chip, its layers numbered from `first_layer`; None for what only
    the chip itself handles: an x that a transfer brings in or takes out between stages."""
    if sym.name == "x" and (sym.kind == "input" and not first or sym.kind == "output" and not last):
        return None
    name = sym.name
    m = LAYER_NAME.match(name)
    if m is not None:
        name = f"{m.group(1)}{int(m.group(2)) + first_layer}{m.group(3)}"
    if sym.kind == "const":
        name = f"chip{chip}/{name}"
    return sym.but(name=name, chip=chip)


def _data_words(prog: Program) -> int:
    """Words below a stage's instruction image (where its IFETCHes read), or all it uses."""
    fetch = prog.instrs["op"] == int(Op.IFETCH)
    return int(prog.instrs["addr"][fetch].min()) if fetch.any() else prog.words_used


def _fetch_source(prog: Program) -> int:
    """The source index the compiler gives instruction fetches (the last of a stage's)."""
    return len(prog.sources) - 1


class _Book:
    """What the transfers hold, by absolute cycle: dispatch slots of each (chip, queue), SRAM
    ports of each (chip, slice, kind), the stream diagonals through each chip's C2C unit (chip,
    "diag", stream: a vector passing there that cycle, going out to a SEND or in from a RECV;
    a relay's RECV and SEND pass one vector), each link direction's next free cycle, receive
    slots."""

    def __init__(self, hw: HardwareConfig) -> None:
        self.hw = hw
        self.used: defaultdict = defaultdict(Counter)  # resource -> cycle -> uses
        self.free: dict[tuple[int, int], int] = {}  # (link, from chip) -> next free cycle
        self.slot: Counter = Counter()  # (link, to chip) -> vectors sent so far

    def claim(self, t: int, needs: list[tuple[tuple, int, int]]) -> int:
        """The first t' >= t at which every (resource, offset, capacity) of `needs` has room at
        t' + offset; they are taken there."""
        held = [(self.used[key], off, cap) for key, off, cap in needs]
        while any(uses[t + off] >= cap for uses, off, cap in held):
            t += 1
        for uses, off, _ in held:
            uses[t + off] += 1
        return t

    def mem(self, chip: int, g: int, kind: str, width: int, off: int) -> list:
        """A READ's or WRITE's needs on slice group g at `off`: its queue's slot, its ports."""
        ports = (
            self.hw.mem_read_ports_per_slice if kind == "rd" else self.hw.mem_write_ports_per_slice
        )
        return [((chip, g), off, 1)] + [((chip, kind, g + m), off, ports) for m in range(width)]

    def transfer(self, path, hops, src: Symbol, dst: Symbol, t0: int):
        """Records moving src's vectors (on chip path[0]) into dst's (on path[-1]) from t0, and
        the cycle the last has landed."""
        hw = self.hw
        c2c, q, S = hw.c2c_position, queue_c2c(hw), hw.streams_per_direction
        rl, wl = hw.mem_read_latency_cycles, hw.mem_write_latency_cycles
        width = DTYPE_BYTES[DTYPE_BY_NAME[src.dtype]]
        dtype = int(DTYPE_BY_NAME[src.dtype])
        c = link_cycles(hw, width)  # cycles a vector holds a link direction
        recs, landed = [], t0
        for k in range(len(src.vids)):
            lanes = [hop[k % len(hop)] for hop in hops]
            # chip path[0]: READ, then SEND when the vector passes the C2C unit
            g, a = int(src.slices[k]), int(src.addrs[k])
            p = hw.slice_position(g)
            on = (0 if c2c >= p else 1) * S + (k % len(hops[0])) * width % S
            lead = -rl - abs(p - c2c)  # the READ, relative to the SEND
            earliest = max(t0 - lead, self.free.get((lanes[0], path[0]), 0))
            t = self.claim(
                earliest,
                [((path[0], q), 0, 1), ((path[0], "diag", on), 0, 1),
                 *self.mem(path[0], g, "rd", width, lead)],
            )  # fmt: skip
            recs.append(dict(op=Op.READ, chip=path[0], queue=g, slice=g, addr=a, sd=on,
                             vid=int(src.vids[k]), dtype=dtype, cycle=t + lead))  # fmt: skip
            vid, got = int(dst.vids[k]), int(src.vids[k])
            for h, (u, v) in enumerate(zip(path, path[1:], strict=False)):
                link = lanes[h]
                slot = self.slot[(link, v)] % hw.c2c_buffer_vectors
                self.slot[(link, v)] += 1
                recs.append(dict(op=Op.SEND, chip=u, queue=q, table=link, s0=on, in0=got,
                                 vid=vid, addr=slot, dtype=dtype, cycle=t))  # fmt: skip
                self.free[(link, u)] = t + c
                arrive = t + hw.c2c_latency_cycles + c
                on = (k % len(hops[h])) * width % S
                if v != path[-1]:  # a relay: RECV, and SEND on the next link where it passes
                    tr = max(arrive, self.free.get((lanes[h + 1], v), 0) - 1)
                    tr = self.claim(tr, [((v, q), 0, 1), ((v, q), 1, 1), ((v, "diag", on), 1, 1)])
                    recs.append(dict(op=Op.RECV, chip=v, queue=q, table=link, addr=slot, sd=on,
                                     vid=vid, dtype=dtype, cycle=tr))  # fmt: skip
                    t, got = tr + 1, vid
                    continue
                gd, ad = int(dst.slices[k]), int(dst.addrs[k])
                pd = hw.slice_position(gd)
                on += (0 if pd >= c2c else 1) * S
                back = 1 + abs(pd - c2c)  # from the RECV to the WRITE where the vector passes
                tr = self.claim(
                    arrive,
                    [((v, q), 0, 1), ((v, "diag", on), 1, 1), *self.mem(v, gd, "wr", width, back)],
                )
                recs.append(dict(op=Op.RECV, chip=v, queue=q, table=link, addr=slot, sd=on,
                                 vid=vid, dtype=dtype, cycle=tr))  # fmt: skip
                recs.append(dict(op=Op.WRITE, chip=v, queue=gd, slice=gd, addr=ad, s0=on,
                                 vid=vid, dtype=dtype, cycle=tr + back))  # fmt: skip
                landed = max(landed, tr + back + wl)
        return recs, landed
