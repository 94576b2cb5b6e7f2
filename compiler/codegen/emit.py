"""Codegen: a schedule -> a Program.

First the SRAM allocator gives every computed vector an address in its slice group, reusing an
address once its previous vector has been read for the last time (liveness over the schedule's
cycles; lowest free address first). Then the records become the instruction array, sorted by
(cycle, queue), and the symbol table records where every input and output vector lives.
"""

from __future__ import annotations

import numpy as np

from compiler.ir.vector import VProgram
from compiler.passes.place import ModelTooLarge, Placement
from compiler.schedule.listsched import Schedule
from sim.hardware import HardwareConfig
from sim.isa import DTYPE_BY_NAME, DTYPE_BYTES, DTYPE_NUMPY, Op, make_instrs
from sim.program import Program, Symbol, pack_tensor

NEVER = np.iinfo(np.int64).max


def allocate(vp: VProgram, sched: Schedule, hw: HardwareConfig, placement: Placement) -> dict:
    """Address of every copy (vid, slice): static ones from the placement, computed ones by
    liveness."""
    addr = {(vid, placement.slice[vid]): a for vid, a in placement.addr.items()}
    # free_from[s, a]: the cycle after which address a of slice s may be written again.
    free_from = np.full((hw.mem_slices, hw.words_per_slice), -1, np.int64)
    for vid, a in placement.addr.items():
        s, w = placement.slice[vid], DTYPE_BYTES[vp.dtypes[vid]]
        free_from[s : s + w, a] = NEVER
    outputs = {int(v) for sym in vp.symbols if sym.kind == "output" for v in sym.vids}
    for key in sorted(sched.write_cycle, key=lambda k: (sched.write_cycle[k], k)):
        vid, s = key
        w = DTYPE_BYTES[vp.dtypes[vid]]
        tw = sched.write_cycle[key]
        ok = np.all(free_from[s : s + w] < tw, axis=0)
        if not ok.any():
            raise ModelTooLarge(
                f"live vectors overflow slices {s}..{s + w - 1} of {hw.name} at cycle {tw} "
                f"({hw.words_per_slice} words each); the chip has {hw.sram_bytes:,} bytes of SRAM"
            )
        a = int(np.argmax(ok))
        addr[key] = a
        first = sched.home[vid][0] == s
        end = NEVER if first and vid in outputs else sched.last_read.get(key, tw)
        free_from[s : s + w, a] = end
    return addr


def emit(
    vp: VProgram, sched: Schedule, hw: HardwareConfig, placement: Placement, meta: dict
) -> Program:
    addr = allocate(vp, sched, hw, placement)
    records = sched.records
    for r in records:
        if r["op"] in (Op.READ, Op.WRITE):
            r["addr"] = addr[(r["vid"], r["slice"])]
    instrs = make_instrs(records)
    instrs = instrs[np.lexsort((instrs["queue"], instrs["cycle"], instrs["chip"]))]
    lanes = hw.lanes
    tables = (np.stack(vp.tables) if vp.tables else np.zeros((0, lanes), np.int32)).astype(np.int32)
    symbols, consts = [], {}
    for sym in vp.symbols:
        vids = sym.vids.astype(np.int64)
        slices = np.array([sched.home[int(v)][0] for v in vids], np.int32)
        addrs = np.array(
            [addr[(int(v), int(s))] for v, s in zip(vids, slices, strict=True)], np.int32
        )
        symbols.append(Symbol(sym.name, sym.kind, tuple(sym.shape), sym.dtype, slices, addrs, vids))
        if sym.kind == "const":
            consts[sym.name] = np.asarray(sym.value, DTYPE_NUMPY[DTYPE_BY_NAME[sym.dtype]])
            assert pack_tensor(consts[sym.name], lanes).shape[0] == len(vids)
    sources = [vp.sources.get(i, "?") for i in range(max(vp.sources, default=-1) + 1)]
    used = [a + 1 for a in addr.values()]  # highest address in use, plus one
    return Program(
        hw=hw,
        instrs=instrs,
        tables=tables,
        symbols=tuple(symbols),
        consts=consts,
        sources=tuple(sources),
        predicted_cycles=int(sched.cycles),
        words_used=max(used, default=0),
        meta=meta,
    )
