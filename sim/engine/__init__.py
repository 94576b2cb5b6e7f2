"""The Numba cycle-level engine: the reference interpreter's semantics (sim/reference.py), fast.

    run_engine(program, inputs=None, *, functional=True, trace=False, share=True) -> RawResult

Same cycles, counts, bytes, trace, outputs (bit for bit), and the same ScheduleViolation (chip,
unit, cycle, instruction index, wording) as `sim.reference.run_reference`. In three steps:

    prepare  Program -> geometry, lookup tables, events in (cycle, instruction, repetition)
             order, the memory image before cycle 0                        prepare.py
    kernel   the event loop (Numba), stopping at the first violation with an error code and a
             few integers; `functional=False` compiles it without any arithmetic  kernel.py
    report   outputs, counts, trace; or the exception, worded as the reference does  violations.py

A timing run of several chips simulates each group of identical chips once (share.py; the
result's `chip_groups` names them), unless `share=False`. With the compile flags in flags.py,
the array layouts in schema.py, and rounding to the element types (float16, bfloat16, int8,
float8_e4m3fn) by bit manipulation in rounding.py.

Where the reference would crash or misbehave rather than report, the engine refuses up front with
a ValueError: an instruction whose op or dtype is no valid code, a symbol with a negative slice or
address.
"""

from __future__ import annotations

import numpy as np

from sim.engine import schema as c
from sim.engine.icu import dispatch_cycles
from sim.engine.kernel import make_kernel
from sim.engine.prepare import Prepared, preload, prepare_program, scan
from sim.engine.segments import run_placed
from sim.engine.share import run_shared
from sim.engine.violations import leftover_partial, missing_output, raise_failure
from sim.icu import check_predicted, raise_problem
from sim.isa import periods
from sim.program import Program, unpack_tensor
from sim.reference import COUNT_KEYS, RawResult

__all__ = ["run_engine"]


def run_engine(
    program: Program,
    inputs: dict[str, np.ndarray] | None = None,
    *,
    functional: bool = True,
    trace: bool = False,
    share: bool = True,
) -> RawResult:
    """Execute `program`; functional mode computes every vector (all inputs required) and returns
    the outputs, timing mode only times and checks the schedule (with `share`, each group of
    identical chips once)."""
    lanes = program.hw.lanes
    cycles = None
    if program.placed and share and not functional and not trace:
        placed = run_placed(program, inputs)  # each body once for the chips alike
        if placed is not None:
            return placed
    program = program.expand()  # bodies written out on their chips
    if share and not functional and not trace and program.chips > 1:
        cycles, problem = dispatch_cycles(program.hw, program.instrs)
        raise_problem(program, problem)
        check_predicted(program, cycles)
        stats = scan(program, cycles)
        for _ in program.resident(inputs or {}, functional):  # the host's inputs, checked
            pass
        shared = run_shared(program, cycles, stats)
        if shared is not None:
            return shared
    prep = prepare_program(program, cycles)
    while True:  # once, unless a diagonal carries more vectors than the ring has ways for
        mem_vid, mem_val = preload(program, prep, inputs or {}, functional)
        out, installed, accum = _run(program, prep, mem_vid, mem_val, functional)
        if out[c.O_CODE] != c.E_WAYS:
            break
        prep.g[c.G_WAYS] *= 2
    if out[c.O_CODE] != c.OK:
        raise_failure(program, prep, out, installed)
    left = np.flatnonzero(accum >= 0)
    if len(left):
        raise leftover_partial(program, prep, int(left[0]), int(accum[left[0]]))

    outputs = _outputs(program, prep, mem_vid, mem_val, functional)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts.update(prep.counts, stream_hops=int(out[c.O_HOPS]))
    events = []
    if trace:
        j = (prep.ev_t - prep.dispatch[prep.ev_i]) // periods(program.instrs)[prep.ev_i]
        events = list(zip(prep.ev_t.tolist(), prep.ev_i.tolist(), j.tolist(), strict=True))
    return RawResult(
        cycles=prep.cycles,
        outputs=outputs,
        counts=counts,
        bytes_read=counts["mem_read"] * lanes,
        bytes_written=counts["mem_write"] * lanes,
        instructions=len(program.instrs),
        events=len(prep.ev_t),
        trace=events,
        link_bytes=prep.link_bytes.copy(),
    )


def _run(program: Program, prep: Prepared, mem_vid, mem_val, functional: bool):
    """The event loop over fresh unit state: (out, installed rows, accumulator rows)."""
    hw = program.hw
    lanes = hw.lanes
    slots = prep.ring_rows * int(prep.g[c.G_WAYS])
    ring = np.zeros((slots, c.N_RING), np.int64)
    ring[:, c.R_DIAG] = c.EMPTY
    busy = np.zeros((prep.resources, 2), np.int64)
    busy[:, 0] = np.iinfo(np.int64).min  # never claimed
    planes = np.zeros((2 * prep.planes, c.N_PLANE), np.int64)  # per (plane, weight buffer)
    planes[:, c.PL_TILE] = -1
    installed = np.zeros((2 * prep.planes, lanes), np.bool_)  # timing mode checks rows too
    pending = np.zeros((prep.pending, c.N_PENDING), np.int64)
    # Value arrays (float32, the storage format of every vector) are empty in timing mode.
    ring_val = np.zeros((slots if functional else 0, lanes), np.float32)
    weights = np.zeros((2 * prep.planes if functional else 0, lanes, lanes), np.float32)
    rows = prep.planes * hw.mxm_accumulator_vectors  # partial sums kept in each plane
    accum = np.full(rows, -1, np.int64)
    accum_val = np.zeros((rows if functional else 0, lanes), np.float32)
    pending_val = np.zeros((prep.pending if functional else 0, lanes), np.float32)
    # Select registers hold values, so only functional mode keeps them (timing mode reads 0s).
    sel = np.zeros(len(prep.sel_first) if functional else 0, np.int64)
    sel_pending = np.zeros((prep.sel_pending if functional else 0, c.N_SEL_PENDING), np.int64)
    slots = 2 * len(prep.links) * hw.c2c_buffer_vectors  # receive slots of every channel
    slot_vid = np.full(slots, c.EMPTY, np.int64)
    slot_val = np.zeros((slots if functional else 0, lanes), np.float32)
    arrivals = np.zeros((c.N_FIFOS * prep.arrivals, c.N_ARRIVAL), np.int64)  # schema: arrivals
    arrivals[c.FIFO_EXTERNAL * prep.arrivals :][: len(prep.external)] = prep.external
    arrival_val = np.zeros((c.N_FIFOS * prep.arrivals if functional else 0, lanes), np.float32)
    out = np.zeros(c.N_OUT, np.int64)

    kernel = make_kernel(bool(functional))
    with np.errstate(all="ignore"):  # NaN and inf are data here (this matters without the JIT)
        kernel(
            prep.ev_t, prep.ev_i, program.instrs, prep.dispatch, prep.g, prep.lat_lut, prep.pos_lut,
            prep.queue_lut, prep.hemi_map, prep.plane_map, prep.tables, prep.table_ok, mem_vid,
            mem_val, ring, ring_val, busy, planes, installed, weights, accum, accum_val, pending, pending_val,
            prep.sel_first, sel, sel_pending, prep.links, slot_vid, slot_val, arrivals, arrival_val,
            out,
        )  # fmt: skip
    return out, installed, accum


def _outputs(
    program: Program, prep: Prepared, mem_vid: np.ndarray, mem_val: np.ndarray, functional: bool
) -> dict[str, np.ndarray]:
    """Check every output vector is where the symbol table says (on its chip); read it back."""
    outputs = {}
    for sym in program.symbols_of("output"):
        cell = prep.cell(sym.chip, sym.slices.astype(np.int64), sym.addrs.astype(np.int64))
        held = mem_vid[cell]
        wrong = np.nonzero(held != sym.vids)[0]
        if len(wrong):
            k = int(wrong[0])
            raise missing_output(
                program, sym.chip, sym.name, k, int(sym.slices[k]), int(sym.addrs[k]), int(sym.vids[k]),
                int(held[k]), prep.cycles,
            )  # fmt: skip
        if functional:
            vectors = unpack_tensor(mem_val[cell], sym.shape, program.hw.lanes)
            outputs[sym.name] = sym.to_host(vectors)
    return outputs
