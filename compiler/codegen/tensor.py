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

import re
from collections import Counter
from dataclasses import replace

import numpy as np

from compiler.codegen.link import Block, Instance, stream_extent
from compiler.frontend.shard import rank_name, weigh_role
from compiler.passes.layout import TensorLayout
from compiler.passes.wiring import Wiring
from sim.hardware import HardwareConfig
from sim.isa import DTYPE_BY_NAME, DTYPE_BYTES, Op, link_cycles, make_instrs, queue_c2c
from sim.program import Program

ALLREDUCE = "all-reduce"
ALLREDUCE_ATTENTION = "all-reduce-attention"  # with ep groups: the attention's, over tp chips
EXCHANGE = "exchange"  # several blocks: S over the links between them


def allreduce_block(
    hw: HardwareConfig,
    src: tuple[np.ndarray, np.ndarray],
    dsts: list[tuple[np.ndarray, np.ndarray]],
    role0: int = 0,
    name: str = ALLREDUCE,
) -> Block:
    """Rank 0's part of one exchange, from cycle 0: src's vectors (at (slice, address)) to the
    chip at the other end of each role's link, and that chip's into dsts[j - 1] (j = 1, 2, ...):
    its vids are src's vectors 0..n-1, then dsts[j - 1]'s as j * n + k; a SEND's and RECV's
    `table` is the role, role0 + j - 1 (`replicate` puts each rank's own link). The direct
    all-reduce of a block: src = parts/0, dsts = parts/1.., role j - 1 the link to rank XOR j."""
    g_y, a_y = src
    n = len(g_y)
    tp = len(dsts) + 1
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
            vid = j * n + k  # where it lands: the partner's slot j
            recs.append(dict(op=Op.READ, queue=g, slice=g, addr=a, sd=side * S, vid=k,
                             dtype=int(dtype), cycle=t + lead))  # fmt: skip
            recs.append(dict(op=Op.SEND, queue=q, table=role0 + j - 1, s0=side * S, in0=k,
                             vid=vid, addr=k % slots, dtype=int(dtype), cycle=t))  # fmt: skip
            free[j] = t + c
            # the partner's vector k, sent at t as this one: into dsts[j - 1]
            gd, ad = (int(x[k]) for x in dsts[j - 1])
            pd = hw.slice_position(gd)
            on = (0 if pd >= c2c else 1) * S + rs
            back = 1 + abs(pd - c2c)  # from the RECV to the WRITE where the vector passes
            tr = claim(t + lat + c, [(("queue", q), 0, 1), (("diag", on // S, rs), 1, 1),
                                     *mem(gd, "wr", back)])  # fmt: skip
            recv[(k, j)] = tr
            recs.append(dict(op=Op.RECV, queue=q, table=role0 + j - 1, addr=k % slots, sd=on,
                             vid=vid, dtype=int(dtype), cycle=tr))  # fmt: skip
            recs.append(dict(op=Op.WRITE, queue=gd, slice=gd, addr=ad, s0=on, vid=vid,
                             dtype=int(dtype), cycle=tr + back))  # fmt: skip
            end = max(end, tr + back + wl)
    recs.sort(key=lambda r: r["cycle"])
    instrs = make_instrs(recs)
    timing = np.array([r["cycle"] for r in recs], np.int64)
    puts = instrs["op"] != int(Op.SEND)  # a SEND takes its vector off the stream
    lo, hi = stream_extent(hw, instrs[puts], timing[puts])
    if name == EXCHANGE:
        what = f"{EXCHANGE}: S to the other end of each of {tp - 1} links, theirs into q/0.."
    else:
        what = f"{name}: y to the {tp - 1} other ranks, theirs into parts/1..{tp - 1}"
    instrs["src"] = 0
    return Block(name, None, instrs, timing, [], {}, end, 0, lo, hi, end, (what,))


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

    def block_allreduce(allreduce, count, y, label):
        """y (parts/0) and, after the block's all-reduce, parts/1..count-1."""
        if allreduce not in blocks:
            return [y]
        lut_x = add(allreduce, label, [(np.arange(n), y)])
        return [y] + [lut_x[j * n + np.arange(n)] for j in range(1, count)]

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
            count = sum(s.name.startswith("parts/") for s in vps[red].symbols)
            got = block_allreduce(allreduce, count, y, f"layer {l} {part} {ALLREDUCE}")
            extra = []
            if red == "reduce" and "sum" in vps:  # the group's blocks: sum, exchange, weigh
                lut_s = add(
                    "sum",
                    f"layer {l} {part} block sum",
                    [(sym("sum", "input", f"parts/{j}"), got[j]) for j in range(count)],
                )
                s_sum = lut_s[sym("sum", "output", "S")]
                lut_e = add(EXCHANGE, f"layer {l} {part} {EXCHANGE}", [(np.arange(n), s_sum)])
                qs = [(sym("weigh", "input", f"q/{i}"), lut_e[(i + 1) * n + np.arange(n)])
                      for i in range(len(lay.q_at))]  # fmt: skip
                lut_w = add("weigh", f"layer {l} {part} weigh", qs,
                            rename=renames("weigh", l, "weigh" not in used))  # fmt: skip
                used.add("weigh")
                got = block_allreduce(allreduce, count, lut_w[sym("weigh", "output", "y")],
                                      f"layer {l} {part} {ALLREDUCE} again")  # fmt: skip
                extra = [(sym(red, "input", "S"), s_sum)]
            parts = [(sym(red, "input", f"parts/{j}"), got[j]) for j in range(count)] + extra
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


WEIGHT_NAME = re.compile(r"^weigh/w(\d+)#g(\d+)$")  # a chip's weights of an exchange role


def replicate(
    local: Program,
    tp: int,
    meta: dict,
    ep: int = 1,
    wiring: Wiring | None = None,
    written: bool = True,
) -> Program:
    """The group's Program: chip r of the G = tp * ep runs chip 0's instructions, its SENDs and
    RECVs on its link of each role: without a wiring, the links to the chips r XOR j (local
    links: every pair a < b of the group, in order); with one (a group of several blocks,
    compiler/passes/wiring.py), the wiring's links and each chip's weights of the exchange roles
    ("weigh/w{i}#g{r}"). Its slices of the sharded tensors are named as shard.rank_name names
    them ("name#tpR", "name#epE#tpR"). Outputs: a slice from the chips of ep group 0, a whole
    tensor from chip 0. meta["c2c_roles"]: the role of each of a chip's SENDs and RECVs.
    written=False: chip 0's instructions alone, as a pipeline takes the group's Program (it
    places them on every chip as a body, compiler/codegen/pipeline.py), every chip's symbols:
    not the G - 1 copies it would not read."""
    group = tp * ep
    c2c = np.isin(local.instrs["op"], (int(Op.SEND), int(Op.RECV)))
    roles = local.instrs["table"][c2c].astype(np.int64)
    if wiring is None:
        pairs = [(a, b) for a in range(group) for b in range(a + 1, group)]
        index = {p: i for i, p in enumerate(pairs)}
        role_link = np.array(
            [
                [index[(min(r, r ^ j), max(r, r ^ j))] for j in range(1, group)]
                for r in range(group)
            ],
            np.int64,
        ).reshape(group, group - 1)
        links = np.array(pairs, np.int32).reshape(-1, 2)
    else:
        role_link, links = wiring.role_link, wiring.links.astype(np.int32)
    parts, syms, consts, outs = [], [], dict(local.consts), set()
    kv = meta.get("kv_slices")
    for r in range(group):
        if written or r == 0:
            ins = local.instrs.copy()
            ins["chip"] = r
            ins["table"][c2c] = role_link[r][roles]
            parts.append(ins)
        for s in local.symbols:
            if s.kind == "const" and s.name.startswith("weigh/"):
                i = weigh_role(local.consts[s.name])
                name = f"weigh/w{i}#g{r}"
                consts[name] = np.full_like(local.consts[s.name], wiring.weights[r, i])
                syms.append(replace(s, name=name, chip=r))
                continue
            name = None if s.kind == "const" else rank_name(s.name, r, tp, ep, kv)
            if name is not None:
                if s.kind != "output" or r < tp and name not in outs:  # (a copied KV head's once)
                    syms.append(replace(s, name=name, chip=r))
                    if s.kind == "output":
                        outs.add(name)
            elif r == 0 or s.kind != "output":
                syms.append(replace(s, chip=r))
    for s in local.symbols:
        if s.kind == "const" and s.name.startswith("weigh/"):
            del consts[s.name]
    # An all-reduce's time: from the end of the block whose partial it sums to the reduce's
    # start (the transfers, any wait for streams the reduce shares with them, and between
    # blocks the exchange and the sums around it).
    waits, before, sent = [], None, False
    for b in local.meta["blocks"]:
        if b["block"] in ("attention", "mlp"):
            before, sent = b, False
        elif b["block"] in (ALLREDUCE, EXCHANGE):
            sent = True
        elif b["block"] in ("reduce", "reduce-attention") and before is not None and sent:
            waits.append(b["first_cycle"] - before["first_cycle"] - before["cycles"])
            before = None
    meta = {**local.meta, **meta, "tp": tp, "allreduce_cycles": sum(waits)}
    meta["c2c_roles"] = roles.tolist()
    if ep > 1:
        meta["ep"] = ep
    if wiring is not None:
        meta["wiring"] = {"block": wiring.block, "exchanges": wiring.exchanges}
    return replace(
        local,
        instrs=np.concatenate(parts),
        predicted=np.tile(local.predicted, len(parts)),
        symbols=tuple(syms),
        consts=consts,
        chips=group,
        links=links,
        meta=meta,
    )
