"""Tensor parallelism: a stage's layers split over a group of T chips that run one program.

Each rank holds 1/T of every layer's heads, KV heads and FFN columns (compiler/frontend/shard.py)
and runs, per layer,

    attention   its heads' part y of the output projection, written into parts/0
    all-reduce  y to every other rank of the group, into its slot parts/(r XOR j)
    reduce      x += the sum of parts/0..T-1 (every rank: the same sums, the same bits)
    mlp         its FFN columns' part y of the MLP's output, into parts/0
    all-reduce, reduce

then the head on its ceil(V/T) vocabulary columns (logits#tpR; the host joins them). Every
block is scheduled once for rank 0 and replayed per layer (compiler/codegen/link.py); the ranks'
programs are rank 0's, the same instructions at the same cycles and addresses, with each SEND and
RECV on the link to the rank it names.

Expert parallelism makes the group G = T x ep chips, chip g = e * T + r (rank r of ep group e;
its experts differ, its instructions do not): the attention's all-reduce and reduce
("reduce-attention") run over the T chips of its ep group (partners g XOR j, j < T), the MoE's
over all G (j < G), each on the same slots parts/j.

The all-reduce is direct: rank r sends each of y's vectors to each of the T - 1 others on its
own link to it, one SEND a cycle on the C2C queue, a link's vectors link_cycles apart, and RECVs
each vector that lands into its slot. All ranks send alike at the same cycles, so rank r's RECV
of rank r^j's vector k is at the cycle its own vector k to rank r^j lands: one rank's schedule,
placed here against its own queues, ports and streams, holds for all. On a fully connected
group a vector crosses one hop, so an all-reduce of n vectors takes about

    direct                       n * max(link_cycles, T - 1 + (T - 1) RECVs) + latency
    ring (reduce-scatter, then all-gather): 2 (T - 1) steps of n / T vectors, each a latency:
                                 2 (T - 1) * (n / T * link_cycles + latency)

(groq-tsp-v1, llama2-70b: n = 26 float32 vectors, link_cycles 90, latency 216, T = 8: direct
about 26 * 90 + 216 = 2,556 cycles, the ring about 14 * (4 * 90 + 216) = 8,064): a decode step's
x is small, so the hop latency, paid once here and 2 (T - 1) times on a ring, decides. Faster
still, not built: a direct reduce-scatter then all-gather (each rank sums the n / T vectors it
owns from every other, then sends its sums to all), 2 * (n / T * link_cycles + latency) plus a
reduce, about 1,152 + adds there; its ranks own different vectors, so their programs differ.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from compiler.codegen.link import Block, Instance, stream_extent
from compiler.frontend.shard import rank_name
from compiler.passes.layout import TensorLayout
from sim.hardware import HardwareConfig
from sim.isa import DTYPE_BY_NAME, DTYPE_BYTES, Op, link_cycles, make_instrs, queue_c2c
from sim.program import Program

ALLREDUCE = "all-reduce"
ALLREDUCE_ATTENTION = "all-reduce-attention"  # with ep groups: the attention's, over tp chips


def allreduce_block(hw: HardwareConfig, tp: int, lay: TensorLayout) -> Block:
    """Rank 0's part of one all-reduce, from cycle 0: its vids are y's vectors 0..n-1 (parts/0),
    then parts/j's as j * n + k; a SEND's and RECV's `table` is j - 1, the link to rank 0 XOR j
    (`replicate` puts each rank's own)."""
    g_y, a_y = lay.parts_at[0]
    n = len(g_y)
    dtype = DTYPE_BY_NAME["float32"]
    width, S = DTYPE_BYTES[dtype], hw.streams_per_direction
    c2c, q = hw.c2c_position, queue_c2c(hw)
    rl, wl, lat = hw.mem_read_latency_cycles, hw.mem_write_latency_cycles, hw.c2c_latency_cycles
    c, slots = link_cycles(hw, width), hw.c2c_buffer_vectors
    rs = width if 2 * width <= S else 0  # RECVs on streams of their own where there are enough
    used: Counter = Counter()

    def claim(t: int, needs: list[tuple[tuple, int, int]]) -> int:
        while any(used[(*key, t + off)] >= cap for key, off, cap in needs):
            t += 1
        for key, off, _ in needs:
            used[(*key, t + off)] += 1
        return t

    def mem(g: int, kind: str, off: int) -> list:
        ports = hw.mem_read_ports_per_slice if kind == "rd" else hw.mem_write_ports_per_slice
        return [(("queue", g), off, 1)] + [((kind, g + m), off, ports) for m in range(width)]

    free = dict.fromkeys(range(1, tp), 0)  # partner -> the cycle its link's channel is free
    recv: dict[tuple[int, int], int] = {}
    recs, end = [], 0
    for k in range(n):
        for j in range(1, tp):
            g, a = int(g_y[k]), int(a_y[k])
            p = hw.slice_position(g)
            side = 0 if c2c >= p else 1
            lead = -rl - abs(p - c2c)  # the READ, relative to the SEND
            earliest = max(-lead, free[j])
            if k >= slots:  # its slot's previous vector taken before this one lands
                earliest = max(earliest, recv[(k - slots, j)] + 1 - lat - c)
            t = claim(earliest, [(("queue", q), 0, 1), (("diag", side, 0), 0, 1),
                                 *mem(g, "rd", lead)])  # fmt: skip
            vid = j * n + k  # where it lands: rank 0 XOR j's slot j
            recs.append(dict(op=Op.READ, queue=g, slice=g, addr=a, sd=side * S, vid=k,
                             dtype=int(dtype), cycle=t + lead))  # fmt: skip
            recs.append(dict(op=Op.SEND, queue=q, table=j - 1, s0=side * S, in0=k, vid=vid,
                             addr=k % slots, dtype=int(dtype), cycle=t))  # fmt: skip
            free[j] = t + c
            # rank j's vector k, sent at t as this one: into parts/j
            gd, ad = (int(x[k]) for x in lay.parts_at[j])
            pd = hw.slice_position(gd)
            on = (0 if pd >= c2c else 1) * S + rs
            back = 1 + abs(pd - c2c)  # from the RECV to the WRITE where the vector passes
            tr = claim(t + lat + c, [(("queue", q), 0, 1), (("diag", on // S, rs), 1, 1),
                                     *mem(gd, "wr", back)])  # fmt: skip
            recv[(k, j)] = tr
            recs.append(dict(op=Op.RECV, queue=q, table=j - 1, addr=k % slots, sd=on, vid=vid,
                             dtype=int(dtype), cycle=tr))  # fmt: skip
            recs.append(dict(op=Op.WRITE, queue=gd, slice=gd, addr=ad, s0=on, vid=vid,
                             dtype=int(dtype), cycle=tr + back))  # fmt: skip
            end = max(end, tr + back + wl)
    recs.sort(key=lambda r: r["cycle"])
    instrs = make_instrs(recs)
    timing = np.array([r["cycle"] for r in recs], np.int64)
    puts = instrs["op"] != int(Op.SEND)  # a SEND takes its vector off the stream
    lo, hi = stream_extent(hw, instrs[puts], timing[puts])
    sources = (f"{ALLREDUCE}: y to the {tp - 1} other ranks, theirs into parts/1..{tp - 1}",)
    instrs["src"] = 0
    return Block(ALLREDUCE, None, instrs, timing, [], {}, end, 0, lo, hi, end, sources)


def tensor_instances(
    lay: TensorLayout, blocks: dict[str, Block], layers: int, head: bool
) -> list[Instance]:
    """Each of `layers` layers' attention, all-reduce, reduce, MLP, all-reduce, reduce, then the
    head, with the lookup tables that chain x and the partials from block to block."""
    vps = lay.vps
    instances: list[Instance] = []
    base = aux = 0
    x_now = None
    first_lut: dict[str, np.ndarray] = {}
    band = (lay.band_lo, lay.band_lo + lay.band_words)

    def add(name, label, links=(), shift=0, rename=None):
        nonlocal base, aux
        b = blocks[name]
        size = len(vps[name].dtypes) if name in vps else int(b.instrs["vid"].max()) + 1
        lut = np.arange(size, dtype=np.int64) + base
        base += size
        if name in vps:
            vp = vps[name]
            consts = [s.vids for s in vp.symbols if s.kind == "const"]
            if name in first_lut and consts:
                c = np.concatenate(consts)
                lut[c] = first_lut[name][c]
            first_lut.setdefault(name, lut)
        for vids, values in links:
            lut[vids] = values
        in_band = band if name in ("attention", "mlp") else (0, 0)  # weights and KV cache
        inst = Instance(b, lut, shift, in_band, label, rename or {}, aux_base=aux)
        aux += vps[name].tile_span() if name in vps else 0
        instances.append(inst)
        return lut

    def renames(name, layer, first):
        out = {}
        for s in vps[name].symbols:
            key = (s.name, s.kind)
            if s.name.startswith("params/layers/0/"):
                out[key] = f"params/layers/{layer}/" + s.name[len("params/layers/0/") :]
            elif s.name.startswith("cache/"):
                out[key] = s.name[: -len("/0")] + f"/{layer}"
            elif s.kind == "const" and first:
                out[key] = f"{name}/{s.name}"
            elif s.name == "x" and s.kind == "input" and x_now is None:
                out[key] = "x"
        return out

    def sym(name, kind, sname):
        return vps[name].symbol(sname, kind).vids

    n = len(lay.parts_at[0][0])
    # Each partial's all-reduce and reduce: the attention's over its ep group's tp chips where
    # there are ep groups (an all-reduce block only for more than one chip).
    steps = dict.fromkeys(("attention", "mlp"), (ALLREDUCE, "reduce"))
    if "reduce-attention" in vps:
        steps["attention"] = (ALLREDUCE_ATTENTION, "reduce-attention")
    used = set()
    for l in range(layers):
        for part in ("attention", "mlp"):
            links = [] if x_now is None else [(sym(part, "input", "x"), x_now)]
            lut = add(part, f"layer {l} {part}", links, l * lay.band_words,
                      renames(part, l, l == 0))  # fmt: skip
            y = lut[sym(part, "output", "y")]
            x_now = lut[sym(part, "input", "x")] if x_now is None else x_now
            allreduce, red = steps[part]
            parts = [(sym(red, "input", "parts/0"), y)]
            if allreduce in blocks:
                lut_x = add(allreduce, f"layer {l} {part} {ALLREDUCE}", [(np.arange(n), y)])
                count = sum(s.name.startswith("parts/") for s in vps[red].symbols)
                parts += [
                    (sym(red, "input", f"parts/{j}"), lut_x[j * n + np.arange(n)])
                    for j in range(1, count)
                ]
            last = not head and l == layers - 1 and part == "mlp"
            rename = renames(red, l, red not in used)
            used.add(red)
            if last:
                rename[("x", "output")] = "x"
            lut = add(red, f"layer {l} {part} reduce", [(sym(red, "input", "x"), x_now),
                      *parts], rename=rename)  # fmt: skip
            x_now = lut[sym(red, "output", "x")]
    if head:
        rename = {}
        for s in vps["head"].symbols:
            if s.kind == "const":
                rename[(s.name, s.kind)] = f"head/{s.name}"
            elif s.name != "x" or (x_now is None and s.kind == "input"):
                rename[(s.name, s.kind)] = s.name
        links = [] if x_now is None else [(sym("head", "input", "x"), x_now)]
        add("head", "head", links, rename=rename)
    return instances


def replicate(local: Program, tp: int, meta: dict, ep: int = 1) -> Program:
    """The group's Program: chip r of the G = tp * ep runs chip 0's instructions, its SENDs and
    RECVs on the links to the chips r XOR j (local links: every pair a < b of the group, in
    order), its slices of the sharded tensors named as shard.rank_name names them ("name#tpR",
    "name#epE#tpR"). Outputs: a slice from the chips of ep group 0, a whole tensor from chip 0."""
    group = tp * ep
    pairs = [(a, b) for a in range(group) for b in range(a + 1, group)]
    index = {p: i for i, p in enumerate(pairs)}
    c2c = np.isin(local.instrs["op"], (int(Op.SEND), int(Op.RECV)))
    parts, syms = [], []
    for r in range(group):
        ins = local.instrs.copy()
        ins["chip"] = r
        partner = r ^ (ins["table"][c2c].astype(np.int64) + 1)
        ins["table"][c2c] = [index[(min(r, o), max(r, o))] for o in partner.tolist()]
        parts.append(ins)
        for s in local.symbols:
            name = None if s.kind == "const" else rank_name(s.name, r, tp, ep)
            if name is not None:
                if s.kind != "output" or r < tp:
                    syms.append(replace(s, name=name, chip=r))
            elif r == 0 or s.kind != "output":
                syms.append(replace(s, chip=r))
    # An all-reduce's time: from the end of the block whose partial it sums to the reduce's
    # start (the transfers, and any wait for streams the reduce shares with them).
    blocks = local.meta["blocks"]
    waits = [
        after["first_cycle"] - before["first_cycle"] - before["cycles"]
        for before, x, after in zip(blocks, blocks[1:], blocks[2:], strict=False)
        if x["block"] == ALLREDUCE
    ]
    meta = {**local.meta, **meta, "tp": tp, "allreduce_cycles": sum(waits)}
    if ep > 1:
        meta["ep"] = ep
    return replace(
        local,
        instrs=np.concatenate(parts),
        predicted=np.tile(local.predicted, group),
        symbols=tuple(syms),
        chips=group,
        links=np.array(pairs, np.int32).reshape(-1, 2),
        meta=meta,
    )
