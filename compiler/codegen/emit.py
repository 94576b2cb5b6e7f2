"""Codegen: a schedule -> a Program (or a block of one, for the linker).

First the SRAM allocator gives every computed copy of a run n consecutive addresses in its slice
group, reusing addresses once their previous run has been read for the last time (liveness over
the schedule's cycles; lowest free address first, from `floor` up). Then the records become the
instruction array, sorted by (cycle, queue), and the symbol table records where every input and
output vector lives.

A Program holds no cycles: `start_barrier` adds the SYNC/NOTIFY that starts every queue together,
and `sim.icu.encode` writes each queue's schedule down as NOP delays; the scheduler's cycles stay
beside the Program as its prediction, which the simulator checks against the queues' timing.
"""

from __future__ import annotations

import numpy as np

from compiler.codegen.fetch import fetch_and_encode
from compiler.ir.vector import VProgram
from compiler.passes.place import ModelTooLarge
from compiler.schedule.listsched import Schedule
from sim.hardware import HardwareConfig
from sim.icu import encoding
from sim.isa import (
    DTYPE_BY_NAME,
    DTYPE_BYTES,
    DTYPE_NUMPY,
    INSTR_DEFAULTS,
    INSTR_DTYPE,
    Op,
    make_instrs,
    queue_vxm,
)
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
        else:  # fewer than n free addresses: no run of n (and no slices to subtract)
            runs = np.flatnonzero(free[n - 1 :] - free[: max(len(free) - n + 1, 0)] == n - 1)
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


def instructions(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Records (READ/WRITE addresses relative to their copy, each with its scheduled `cycle`) ->
    (the instruction array, sorted by (chip, cycle, queue), and those cycles)."""
    out = np.zeros(len(records), dtype=INSTR_DTYPE)
    for r in records:
        if "_copy" in r:
            r["addr"] = r["_copy"].addr + r["_off"]
    for name, default in INSTR_DEFAULTS.items():
        out[name] = [r.get(name, default) for r in records]
    cycles = np.array([r["cycle"] for r in records], np.int64)
    order = np.lexsort((out["queue"], cycles, out["chip"]))
    return out[order], cycles[order]


def start_barrier(
    hw: HardwareConfig, instrs: np.ndarray, cycles: np.ndarray, src: int = -1
) -> tuple[np.ndarray, np.ndarray, int]:
    """(instrs, cycles, offset): every queue in use parks at SYNC 0 until the VXM's NOTIFY 0 at
    cycle 0 releases them, icu_sync_latency_cycles later; the schedule follows, `offset` cycles
    later than it was computed for."""
    offset = hw.icu_sync_latency_cycles + 1
    head = []
    for chip in np.unique(instrs["chip"]).tolist() or [0]:
        queues = np.unique(instrs["queue"][instrs["chip"] == chip]).tolist()
        head.append(dict(op=Op.NOTIFY, chip=chip, queue=queue_vxm(hw), table=0, cycle=0, src=src))
        for q in queues:
            if q != queue_vxm(hw):
                head.append(
                    dict(op=Op.SYNC, chip=chip, queue=q, table=0, cycle=offset - 1, src=src)
                )
    first = make_instrs(head)
    start = np.array([r["cycle"] for r in head], np.int64)
    return np.concatenate([first, instrs]), np.concatenate([start, cycles + offset]), offset


# Sources of the instructions the ICU needs (`finish` appends them to a program's sources).
ICU_SOURCES = ("program start: every queue waits at SYNC for the VXM's NOTIFY", "instruction fetch")


def finish(
    hw: HardwareConfig, instrs: np.ndarray, cycles: np.ndarray, words: int, sources, fetch=True
):
    """The start barrier, the instruction fetches, then the delays: (instrs, predicted cycles,
    offset, words in use with the instruction image, sources with ICU_SOURCES). fetch=False:
    no fetches (a pipeline's stage: compiler/codegen/pipeline.py plans them for its body)."""
    first = len(sources)
    instrs, cycles, offset = start_barrier(hw, instrs, cycles, first)
    if fetch:
        instrs, cycles, words = fetch_and_encode(hw, instrs, cycles, words, first + 1)
    else:
        order, delays = encoding(instrs["chip"], instrs["queue"], cycles)
        instrs, cycles = np.take(instrs, order), cycles[order]
        instrs["delay"] = delays
    return instrs, cycles, offset, words, (*sources, *ICU_SOURCES)


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
    instrs, predicted, offset, words, sources = finish(
        hw, *instructions(sched.records), words_used(sched), vp.source_list()
    )
    syms, consts = symbols(vp, sched, hw.lanes)
    return Program(
        hw=hw,
        instrs=instrs,
        predicted=predicted,
        tables=vp.table_array(hw.lanes),
        symbols=tuple(syms),
        consts=consts,
        sources=sources,
        predicted_cycles=int(sched.cycles) + offset,
        words_used=words,
        meta=meta,
    )


def words_used(sched: Schedule) -> int:
    """Highest address in use in any slice, plus one."""
    return max((c.addr + seg.n for seg in sched.segs for c in seg.copies if not c.dead), default=0)
