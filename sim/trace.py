"""Static-schedule views of a Program: a per-repetition table, a Gantt chart, a Perfetto trace.

Every view is computed from the Program alone (the schedule is static, so what the compiler wrote
is what the chip does): no simulation is needed. One *repetition* of an instruction with
`repeat = n` is one row/bar/event, issued at cycle + j and busy until issue + latency(op).

    schedule_table(program)        -> pandas.DataFrame, one row per repetition
    gantt(program, ax, cycles=, units=) -> matplotlib Axes, one row per used queue
    perfetto_trace(program)        -> Chrome/Perfetto trace-event dict (ui.perfetto.dev)
    write_perfetto(program, path)

Pipelined units (an MXM plane starting a matmul every cycle, a VXM running several ALUs) have
operations that overlap in time on one queue. Perfetto drops "X" events that overlap without
nesting on one thread, so such a queue's overflow goes to extra tracks named after it (see
`perfetto_trace`); the Gantt chart splits the queue's row into sub-rows the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sim.icu import cycles_of
from sim.isa import (
    OP_UNIT,
    VXM_LARGE,
    Op,
    Unit,
    disassemble_one,
    latency,
    n_queues,
    periods,
    queue_name,
    repetitions,
)
from sim.program import Program

# Opcode family of each op: the Gantt chart's colours and the Perfetto events' category.
FAMILY = {
    Op.READ: "MEM read",
    Op.WRITE: "MEM write",
    **{
        op: "VXM exp/rsqrt" if op in VXM_LARGE else "VXM arith"
        for op in OP_UNIT
        if OP_UNIT[op] == Unit.VXM
    },
    Op.REDUCE_SUM: "SXM reduce",
    Op.REDUCE_MAX: "SXM reduce",
    Op.PERMUTE: "SXM permute",
    Op.TOPK: "SXM select",
    Op.INSTALL: "MXM install",
    Op.MATMUL: "MXM matmul",
    Op.SYNC: "ICU sync",
    Op.NOTIFY: "ICU sync",
    Op.IFETCH: "ICU fetch",
    Op.SEND: "C2C send",
    Op.RECV: "C2C recv",
}
# One fixed colour per family (tab10), so charts of different programs read the same.
FAMILY_COLOR = {
    "MEM read": "#1f77b4",
    "MEM write": "#aec7e8",
    "VXM arith": "#2ca02c",
    "VXM exp/rsqrt": "#98df8a",
    "SXM reduce": "#9467bd",
    "SXM permute": "#c5b0d5",
    "SXM select": "#8c564b",
    "MXM install": "#ff7f0e",
    "MXM matmul": "#d62728",
    "ICU sync": "#7f7f7f",
    "ICU fetch": "#bcbd22",
    "C2C send": "#17becf",
    "C2C recv": "#9edae5",
}

COLUMNS = ("chip", "unit", "kind", "op", "start", "end", "vid", "source", "queue", "instr", "rep")


def schedule_table(program: Program) -> pd.DataFrame:
    """One row per instruction repetition, sorted by issue cycle, then chip and queue order.

    Columns: chip, unit (queue name), kind (MEM/VXM/SXM/MXM), op, start (issue cycle), end
    (issue + latency), vid (the logical vector it writes or expects), source (the graph op it came
    from), queue (queue index), instr (index into `program.instrs`), rep (repetition j).
    """
    program = program.expand()  # bodies written out on their chips
    hw, ins = program.hw, program.instrs
    instr, rep = repetitions(ins)  # (events,)
    op = ins["op"][instr].astype(np.int64)
    lat_of = np.zeros(max(Op) + 1, np.int64)
    for o in Op:
        lat_of[o] = latency(hw, o)
    start = cycles_of(program)[instr] + rep * periods(ins)[instr]
    vid = ins["vid"][instr]
    vid = np.where(vid >= 0, vid + rep, vid)  # -1 (no vector) stays -1
    queue = ins["queue"][instr].astype(np.int64)
    chip = ins["chip"][instr].astype(np.int64)
    order = np.lexsort((rep, instr, queue, chip, start))  # last key is the primary one

    def names(codes: np.ndarray, name_of) -> np.ndarray:
        uniq, inv = np.unique(codes, return_inverse=True)
        return np.array([name_of(int(u)) for u in uniq], dtype=object)[inv]

    return (
        pd.DataFrame(
            {
                "chip": chip,
                "unit": names(queue, lambda q: queue_name(hw, q)),
                "kind": names(op, lambda o: OP_UNIT[Op(o)].name),
                "op": names(op, lambda o: Op(o).name),
                "start": start,
                "end": start + lat_of[op],
                "vid": vid,
                "source": names(ins["src"][instr].astype(np.int64), program.source),
                "queue": queue,
                "instr": instr,
                "rep": rep,
            },
            columns=list(COLUMNS),
        )
        .iloc[order]
        .reset_index(drop=True)
    )


def _pack_lanes(table: pd.DataFrame) -> np.ndarray:
    """Per row of `table` (sorted by start), the lowest sub-track of its (chip, queue) whose
    previous occupant ended by the row's start: overlapping repetitions go to different lanes."""
    lane = np.zeros(len(table), np.int64)
    free_at: dict[tuple[int, int], list[int]] = {}  # (chip, queue) -> end cycle of each lane
    keys = zip(table["chip"].to_numpy(), table["queue"].to_numpy(), strict=True)
    spans = zip(table["start"].to_numpy(), table["end"].to_numpy(), strict=True)
    for i, (key, (start, end)) in enumerate(zip(keys, spans, strict=True)):
        ends = free_at.setdefault(key, [])
        for k, e in enumerate(ends):
            if e <= start:
                ends[k], lane[i] = end, k
                break
        else:
            lane[i] = len(ends)
            ends.append(end)
    return lane


def _row_label(program: Program, chip: int, queue: int) -> str:
    name = queue_name(program.hw, queue)
    return f"chip{chip}.{name}" if program.chips > 1 else name


def gantt(program: Program, ax=None, *, cycles: tuple[int, int] | None = None, units=None):
    """Gantt chart of the static schedule: one row per functional-unit queue that has
    instructions (in queue order, top to bottom), one bar per repetition from issue to
    issue + latency, coloured by opcode family. Repetitions that overlap on one queue (a
    pipelined unit) share its row as thin sub-rows.

    cycles: (first, last) window of cycles to show; units: queue names (e.g. "VXM", "MEMW0") or
    queue indices to keep. Returns the matplotlib Axes.
    """
    program = program.expand()  # bodies written out on their chips
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    table = schedule_table(program)
    if units is not None:
        names = {queue_name(program.hw, q): q for q in range(n_queues(program.hw))}
        wanted = set()
        for u in [units] if isinstance(units, (str, int)) else units:
            if isinstance(u, str) and u not in names:
                raise ValueError(f"unknown unit {u!r}; units: {', '.join(names)}")
            wanted.add(names[u] if isinstance(u, str) else int(u))
        table = table[table["queue"].isin(wanted)]
    table = table.reset_index(drop=True)
    lane = _pack_lanes(table)  # packed over the whole program, so zooming keeps positions
    rows = sorted(set(zip(table["chip"], table["queue"], strict=True)))
    row_of = {key: r for r, key in enumerate(rows)}
    row = np.array([row_of[k] for k in zip(table["chip"], table["queue"], strict=True)], np.int64)
    lanes_per_row = np.ones(len(rows), np.int64)
    np.maximum.at(lanes_per_row, row, lane + 1)

    if cycles is None:
        lo, hi = 0, max(program.predicted_cycles, int(table["end"].to_numpy().max(initial=0)))
    else:
        lo, hi = int(cycles[0]), int(cycles[1])
    if hi <= lo:
        raise ValueError(f"cycles={cycles!r}: the window's end must be after its start")
    shown = ((table["end"] > lo) & (table["start"] < hi)).to_numpy()

    if ax is None:
        _, ax = plt.subplots(figsize=(12, 1.0 + 0.28 * max(len(rows), 1)))
    # Row r spans y in [r - 0.4, r + 0.4]; a row with n lanes gives each a 0.8 / n slice.
    height = 0.8 / lanes_per_row[row]
    y0 = row - 0.4 + lane * height
    # White outlines separate back-to-back bars once a cycle is a few pixels wide.
    edge = "white" if hi - lo <= 400 else "none"
    families = table["op"].map(lambda o: FAMILY[Op[o]]).to_numpy()
    for family, color in FAMILY_COLOR.items():
        sel = shown & (families == family)
        if not sel.any():
            continue
        x0, x1 = table["start"].to_numpy()[sel], table["end"].to_numpy()[sel]
        b, t = y0[sel], y0[sel] + height[sel]
        corners = [(x0, b), (x1, b), (x1, t), (x0, t)]
        verts = np.stack([np.stack(c, axis=1) for c in corners], axis=1)  # (bars, 4 corners, xy)
        ax.add_collection(
            PolyCollection(verts, facecolors=color, edgecolors=edge, linewidths=0.4, label=family)
        )
    if lo <= program.predicted_cycles <= hi:
        ax.axvline(program.predicted_cycles, color="k", ls="--", lw=0.8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first queue at the top
    ax.set_yticks(range(len(rows)), [_row_label(program, c, q) for c, q in rows])
    ax.tick_params(axis="y", labelsize="small")
    ax.set_xlabel("cycle")
    ax.set_title(
        f"{program.hw.name}: {len(program.instrs)} instructions, "
        f"{program.predicted_cycles} cycles predicted"
    )
    present = [f for f in FAMILY_COLOR if (families[shown] == f).any()]
    ax.legend(
        handles=[Patch(color=FAMILY_COLOR[f], label=f) for f in present],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize="small",
    )
    return ax


def perfetto_trace(program: Program) -> dict:
    """The schedule as Chrome trace-event JSON (a dict) that ui.perfetto.dev loads.

    One "X" event per repetition: pid = chip, tid = queue index, ts and dur in microseconds at the
    chip's clock (cycles / clock_hz * 1e6, rounded to whole nanoseconds, Perfetto's resolution, so
    back-to-back events stay disjoint after its rounding). Where repetitions overlap on a queue,
    the overflow goes to tid = queue + k * n_queues (k = 1, 2, ...), named "<queue> +k" and sorted
    next to it. Metadata ("M") events name each chip (process) and track (thread).
    """
    program = program.expand()  # bodies written out on their chips
    hw = program.hw
    table = schedule_table(program)
    lane = _pack_lanes(table)
    nq = n_queues(hw)
    ns_per_cycle = 1e9 / hw.clock_hz

    def us(ns: np.ndarray) -> list[float]:
        return (ns / 1000).tolist()

    start_ns = np.rint(table["start"].to_numpy() * ns_per_cycle).astype(np.int64)
    end_ns = np.rint(table["end"].to_numpy() * ns_per_cycle).astype(np.int64)
    tid = table["queue"].to_numpy() + lane * nq
    text = {}  # instruction index -> disassembly, computed once per instruction
    events = []
    for r, ts, dur, t in zip(
        table.itertuples(index=False),
        us(start_ns),
        us(end_ns - start_ns),
        tid.tolist(),
        strict=True,
    ):
        if r.instr not in text:
            text[r.instr] = disassemble_one(hw, program.instrs[r.instr])
        events.append(
            {
                "name": r.op,
                "cat": FAMILY[Op[r.op]],
                "ph": "X",
                "pid": int(r.chip),
                "tid": int(t),
                "ts": ts,
                "dur": dur,
                "args": {
                    "instr": int(r.instr),
                    "rep": int(r.rep),
                    "text": text[r.instr],
                    "source": r.source,
                    "vid": int(r.vid),
                    "cycle": int(r.start),
                    "end_cycle": int(r.end),
                },
            }
        )

    def meta(kind: str, pid: int, tid: int, args: dict) -> dict:
        return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": args}

    metadata = []
    for chip in sorted(set(table["chip"].tolist())):
        metadata.append(meta("process_name", chip, 0, {"name": f"chip{chip} ({hw.name})"}))
        metadata.append(meta("process_sort_index", chip, 0, {"sort_index": chip}))
    tracks = sorted(set(zip(table["chip"].tolist(), tid.tolist(), strict=True)))
    per_queue = int(lane.max(initial=0)) + 1  # tracks per queue, for the sort order
    for chip, t in tracks:
        q, k = t % nq, t // nq
        name = queue_name(hw, q) + (f" +{k}" if k else "")  # "+k": overflow track k of queue q
        metadata.append(meta("thread_name", chip, t, {"name": name}))
        metadata.append(meta("thread_sort_index", chip, t, {"sort_index": q * per_queue + k}))
    return {
        "traceEvents": metadata + events,
        "otherData": {
            "hardware": hw.name,
            "hw_hash": hw.hash,
            "program": program.content_hash,
            "clock_hz": hw.clock_hz,
            "predicted_cycles": program.predicted_cycles,
        },
    }


def write_perfetto(program: Program, path: str | Path) -> Path:
    """Write `perfetto_trace(program)` as JSON to `path` (open it at ui.perfetto.dev)."""
    path = Path(path)
    path.write_text(json.dumps(perfetto_trace(program)))
    return path
