"""Link: scheduled blocks -> one Program, replaying a block once per identical layer.

A model's decode step is a sequence of blocks run back to back: its decoder layers (one block,
scheduled once) and the head. Every layer's weights and KV cache sit in a *band* of SRAM
addresses, the same slices at an offset of `band_words` per layer, so layer l is layer 0's
instructions with

    cycle  + the cycles of the blocks before it (the scheduled cycles; the Program's delays are
             written once the blocks are joined)
    addr   + l * band_words        (READ/WRITE inside the band: that layer's weights and cache)
    vid    -> layer l's vectors    (a lookup table; the layer input is the previous layer's output)
    aux    + l * vops              (a fresh MXM tile id per layer)

Everything else (the residual stream x, constants, the head's weights) sits below the band and
computed vectors above every band, at the same addresses in every layer. The residual stream is
updated in place: a layer writes its output x over its input x.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from compiler.codegen.emit import allocate, finish, instructions, symbols, words_used
from compiler.ir.vector import VProgram
from compiler.schedule.listsched import Schedule
from sim.engine.segments import stream_extent
from sim.hardware import HardwareConfig
from sim.isa import Op
from sim.program import Program, Symbol


@dataclass
class Block:
    """A scheduled and allocated piece of a program, in its own vid space."""

    name: str
    vp: VProgram
    instrs: np.ndarray
    timing: np.ndarray  # (instructions,) the cycle of each, from the block's start
    symbols: list[Symbol]
    consts: dict
    cycles: int
    words: int
    diag_lo: np.ndarray  # (2 * streams,) first and last diagonal each stream carries, relative
    diag_hi: np.ndarray  # to the block's first cycle (lo > hi where unused)
    free: int = 0  # cycles until every unit is free again (>= cycles)
    sources: tuple[str, ...] = ()  # a block with no vector program (vp None): its sources


def make_block(name: str, vp: VProgram, sched: Schedule, hw: HardwareConfig, floor) -> Block:
    allocate(vp, sched, hw, floor)
    syms, consts = symbols(vp, sched, hw.lanes)
    instrs, timing = instructions(sched.records)
    lo, hi = stream_extent(hw, instrs, timing)
    return Block(
        name, vp, instrs, timing, syms, consts, int(sched.cycles), words_used(sched), lo, hi,
        int(sched.free),
    )  # fmt: skip


@dataclass
class Instance:
    """One appearance of a block in the program."""

    block: Block
    lut: np.ndarray  # (block vectors,) block vid -> program vid
    shift: int  # words added to band addresses
    band: tuple[int, int]  # [lo, hi) addresses that shift
    label: str
    rename: dict[tuple, str]  # (name, kind) -> program name; symbols absent here are dropped
    table_base: int = 0
    src_base: int = 0
    aux_base: int = 0


def _remap(instrs: np.ndarray, inst: Instance) -> np.ndarray:
    out = instrs.copy()
    for f in ("vid", "in0", "in1", "in2"):
        v = out[f]
        live = v >= 0
        v[live] = inst.lut[v[live]]
    mem = np.isin(out["op"], (int(Op.READ), int(Op.WRITE)))
    lo, hi = inst.band
    inband = mem & (out["addr"] >= lo) & (out["addr"] < hi)
    out["addr"][inband] += inst.shift
    tile = np.isin(out["op"], (int(Op.INSTALL), int(Op.MATMUL)))  # aux: the tile id
    out["aux"][tile] += inst.aux_base
    permute = out["op"] == int(Op.PERMUTE)  # table: a permutation (TOPK's is a register)
    out["table"][permute] += inst.table_base
    out["src"][out["src"] >= 0] += inst.src_base
    return out


def _symbol(sym: Symbol, inst: Instance, name: str) -> Symbol:
    lo, hi = inst.band
    addrs = sym.addrs.astype(np.int64)
    addrs = np.where((addrs >= lo) & (addrs < hi), addrs + inst.shift, addrs).astype(np.int32)
    return replace(sym, name=name, addrs=addrs, vids=inst.lut[sym.vids])


def link(
    hw: HardwareConfig, instances: list[Instance], meta: dict, words: int, fetch: bool = True
) -> Program:
    """The instances back to back; `words` is the highest address in use, plus one. fetch=False:
    without instruction fetches, for a pipeline that plans them (codegen/emit.py finish)."""
    parts, timing, syms, consts, tables, sources, seen = [], [], [], {}, [], [], {}
    cycle = end = free = 0
    busy_hi = np.full(2 * hw.streams_per_direction, -(2**40))
    blocks_meta = []
    for inst in instances:
        b = inst.block
        key = id(b) if b.vp is None else id(b.vp)
        if key not in seen:  # tables and sources once per vector program
            seen[key] = (sum(len(t) for t in tables), len(sources))
            if b.vp is not None:
                tables.append(b.vp.table_array(hw.lanes))
            sources += b.vp.source_list() if b.vp is not None else list(b.sources)
        inst.table_base, inst.src_base = seen[key]
        # Start when the previous block is done and its vectors have left every stream it shares.
        used = b.diag_lo <= b.diag_hi
        clash = busy_hi[used] - b.diag_lo[used] + 1
        cycle = max(end, free, int(clash.max()) if len(clash) else end)
        busy_hi[used] = np.maximum(busy_hi[used], b.diag_hi[used] + cycle)
        parts.append(_remap(b.instrs, inst))
        timing.append(b.timing + cycle)
        for sym in b.symbols:
            name = inst.rename.get((sym.name, sym.kind))
            if name is None:
                continue
            syms.append(_symbol(sym, inst, name))
            if sym.kind == "const":
                consts[name] = b.consts[sym.name]
        blocks_meta.append(
            {
                "name": inst.label,
                "block": b.name,
                "first_cycle": cycle,
                "cycles": b.cycles,
                "instructions": len(b.instrs),
                "addr_shift_words": inst.shift,
            }
        )
        end, free = cycle + b.cycles, cycle + b.free
    instrs, predicted, offset, words, sources = finish(
        hw, np.concatenate(parts), np.concatenate(timing), int(words), sources, fetch
    )
    for b in blocks_meta:
        b["first_cycle"] += offset
    return Program(
        hw=hw,
        instrs=instrs,
        predicted=predicted,
        tables=np.concatenate(tables),
        symbols=tuple(syms),
        consts=consts,
        sources=tuple(sources),
        predicted_cycles=end + offset,
        words_used=int(words),
        meta={**meta, "blocks": blocks_meta},
    )


def model_instances(
    lay, layer_blocks: list[Block], head: Block | None, replay: bool
) -> list[Instance]:
    """Layer 0..L-1 (block 0 replayed, or each layer's own block) then the head (if any; else the
    last layer's x is the output), with the lookup tables that chain x from block to block."""
    instances, lut, V, tile_span = [], None, 0, 0
    if layer_blocks:
        vp = layer_blocks[0].vp
        V, tile_span = len(vp.dtypes), vp.tile_span()
        x_in, x_out = vp.symbol("x", "input").vids, vp.symbol("x", "output").vids
        consts = np.concatenate(
            [s.vids for s in vp.symbols if s.kind == "const"] + [np.zeros(0, int)]
        )
        band = (lay.band_lo, lay.band_lo + lay.band_words)
    for l in range(lay.layers):
        block = layer_blocks[0] if replay else layer_blocks[l]
        new = np.arange(V, dtype=np.int64) + l * V
        if lut is not None:
            new[consts] = consts
            new[x_in] = lut[x_out]
        lut = new
        rename = {}
        first_in, last_out = l == 0, head is None and l == lay.layers - 1
        for s in vp.symbols:
            key = (s.name, s.kind)
            if s.name.startswith("params/layers/0/"):
                rename[key] = f"params/layers/{l}/" + s.name[len("params/layers/0/") :]
            elif s.name.startswith("cache/"):
                rename[key] = s.name[: -len("/0")] + f"/{l}"
            elif l == 0 and s.kind == "const":
                rename[key] = f"layer/{s.name}"
            elif s.name == "x" and (first_in if s.kind == "input" else last_out):
                rename[key] = "x"  # the program's input x, and its output when there is no head
        shift = l * lay.band_words if replay else 0
        label = f"layer {l}" + (" (replay of layer 0)" if replay and l else "")
        instances.append(Instance(block, lut, shift, band, label, rename, aux_base=l * tile_span))
    if head is None:
        return instances
    hvp = head.vp
    hlut = np.arange(len(hvp.dtypes), dtype=np.int64) + lay.layers * V
    if lut is not None:  # the last layer's x; with no layer, the program's own input x
        hlut[hvp.symbol("x", "input").vids] = lut[x_out]
    rename = {}
    for s in hvp.symbols:
        if s.kind == "const":
            rename[(s.name, s.kind)] = f"head/{s.name}"
        elif s.name != "x" or (lut is None and s.kind == "input"):
            rename[(s.name, s.kind)] = s.name
    instances.append(
        Instance(head, hlut, 0, (0, 0), "head", rename, aux_base=lay.layers * tile_span)
    )
    return instances
