"""Codegen: a schedule -> a Program (or a block of one, for the linker).

First the SRAM allocator gives every computed copy of a run n consecutive addresses in its slice
group, reusing addresses once their previous run has been read for the last time (liveness over
the schedule's cycles; lowest free address first, from `floor` up). Then the records become the
instruction array, sorted by (cycle, queue), and the symbol table records where every input and
output vector lives.
"""

from __future__ import annotations

import numpy as np

from compiler.ir.vector import VProgram
from compiler.passes.place import ModelTooLarge
from compiler.schedule.listsched import Schedule
from sim.hardware import HardwareConfig
from sim.isa import DTYPE_BY_NAME, DTYPE_BYTES, DTYPE_NUMPY, INSTR_DEFAULTS, INSTR_DTYPE
from sim.program import Program, Symbol, pack_tensor

NEVER = np.iinfo(np.int64).max


def allocate(vp: VProgram, sched: Schedule, hw: HardwareConfig, floor: np.ndarray) -> None:
    """Address of every computed copy (sets `Copy.addr`), in slice s at or above floor[s]."""
    outputs = vp.output_mask()
    # free_from[s, a]: the cycle after which address a of slice s may be written again.
    free_from = np.full((hw.mem_slices, hw.words_per_slice), -1, np.int64)
    free_from[np.arange(hw.words_per_slice)[None, :] < np.asarray(floor)[:, None]] = NEVER
    pending = [c for c in sched.copies if c.write >= 0 and c.addr < 0 and not c.dead]
    for c in sorted(pending, key=lambda c: (c.write, c.index)):
        seg = c.seg
        g, n, w = c.group, seg.n, DTYPE_BYTES[vp.dtypes[seg.v0]]
        ok = np.all(free_from[g : g + w] < c.write, axis=0)
        free = np.flatnonzero(ok)
        if n == 1:
            a = int(free[0]) if len(free) else -1
        else:
            runs = np.flatnonzero(free[n - 1 :] - free[: len(free) - n + 1] == n - 1)
            a = int(free[runs[0]]) if len(runs) else -1
        if a < 0:
            raise ModelTooLarge(
                f"live vectors overflow slices {g}..{g + w - 1} of {hw.name} at cycle {c.write} "
                f"({hw.words_per_slice} words each); the chip has {hw.sram_bytes:,} bytes of SRAM"
            )
        c.addr = a
        first = seg.copies[0] is c
        keep = first and outputs[seg.v0 : seg.v0 + n].any()
        last_write = c.write + (n - 1) * c.period
        free_from[g : g + w, a : a + n] = NEVER if keep else max(c.last_read, last_write)


def instructions(records: list[dict]) -> np.ndarray:
    """Records (READ/WRITE addresses relative to their copy) -> the instruction array, sorted by
    (chip, cycle, queue)."""
    out = np.zeros(len(records), dtype=INSTR_DTYPE)
    for r in records:
        if "_copy" in r:
            r["addr"] = r["_copy"].addr + r["_off"]
    for name, default in INSTR_DEFAULTS.items():
        out[name] = [r.get(name, default) for r in records]
    return out[np.lexsort((out["queue"], out["cycle"], out["chip"]))]


def locate(sched: Schedule, vids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slice, address) of the first copy of each vector."""
    starts = np.array([seg.v0 for seg in sched.segs], np.int64)
    ends = np.array([seg.v0 + seg.n for seg in sched.segs], np.int64)
    group = np.array([seg.copies[0].group for seg in sched.segs], np.int32)
    base = np.array([seg.copies[0].addr for seg in sched.segs], np.int64)
    k = np.searchsorted(starts, vids, side="right") - 1
    assert (k >= 0).all() and (vids < ends[k]).all(), "a symbol's vector is not in SRAM"
    return group[k], (base[k] + vids - starts[k]).astype(np.int32)


def symbols(vp: VProgram, sched: Schedule, lanes: int) -> tuple[list[Symbol], dict]:
    syms, consts = [], {}
    for sym in vp.symbols:
        vids = sym.vids.astype(np.int64)
        slices, addrs = locate(sched, vids)
        syms.append(Symbol(sym.name, sym.kind, tuple(sym.shape), sym.dtype, slices, addrs, vids))
        if sym.kind == "const":
            consts[sym.name] = np.asarray(sym.value, DTYPE_NUMPY[DTYPE_BY_NAME[sym.dtype]])
            assert pack_tensor(consts[sym.name], lanes).shape[0] == len(vids)
    return syms, consts


def emit(
    vp: VProgram, sched: Schedule, hw: HardwareConfig, meta: dict, floor: np.ndarray
) -> Program:
    allocate(vp, sched, hw, floor)
    instrs = instructions(sched.records)
    syms, consts = symbols(vp, sched, hw.lanes)
    return Program(
        hw=hw,
        instrs=instrs,
        tables=vp.table_array(hw.lanes),
        symbols=tuple(syms),
        consts=consts,
        sources=tuple(vp.source_list()),
        predicted_cycles=int(sched.cycles),
        words_used=words_used(sched),
        meta=meta,
    )


def words_used(sched: Schedule) -> int:
    """Highest address in use in any slice, plus one."""
    return max((c.addr + seg.n for seg in sched.segs for c in seg.copies if not c.dead), default=0)
