"""Schedule views: the per-repetition table, the Gantt chart and the Perfetto trace, checked
against the Program's own instruction arrays."""

import dataclasses
import json

import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")  # before pyplot: no display on CI

import matplotlib.pyplot as plt  # noqa: E402

from compiler import compile  # noqa: E402
from sim.isa import OP_UNIT, Op, Unit, latency, n_queues, queue_name  # noqa: E402
from sim.trace import (  # noqa: E402
    COLUMNS,
    gantt,
    perfetto_trace,
    schedule_table,
    write_perfetto,
)


def matmul_softmax(x, w):
    # x: (2, 24) float32, w: (24, 20) float16 -> (2, 20) float32 rows summing to 1.
    s = jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def program():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 24)).astype(np.float32)
    w = (rng.standard_normal((24, 20)) / 5).astype(np.float16)
    return compile(matmul_softmax, "teaching", args={"x": x, "w": w}, params=("w",))


def _unit_ops(program):
    """Indices of the instructions that run on a unit (not the ICU's SYNC/NOTIFY/IFETCH)."""
    units = np.array([OP_UNIT[Op(int(op))] for op in program.instrs["op"]])
    return np.flatnonzero(units != Unit.ICU)


@pytest.fixture(scope="module")
def turned(program):
    """The two instructions the `repeated` fixture turns into Repeats: the first and the sixth
    that run on a unit (SYNC and NOTIFY, which the program starts with, must not repeat)."""
    ops = _unit_ops(program)
    return int(ops[0]), int(ops[5])


@pytest.fixture(scope="module")
def repeated(program, turned):
    """The program with two instructions turned into Repeats (timing is not re-checked here)."""
    a, b = turned
    instrs = program.instrs.copy()
    instrs["repeat"][a] = 3
    instrs["stride"][a] = 1
    instrs["repeat"][b] = 2
    return dataclasses.replace(program, instrs=instrs)


def used_queues(program):
    ins = program.instrs
    return sorted(set(zip(ins["chip"].tolist(), ins["queue"].tolist(), strict=True)))


# --- schedule_table ---------------------------------------------------------------------------


def test_table_has_one_row_per_repetition(program, repeated, turned):
    for p in (program, repeated):
        table = schedule_table(p)
        assert list(table.columns) == list(COLUMNS)
        assert len(table) == int(p.instrs["repeat"].sum())
    replaced = int(program.instrs["repeat"][list(turned)].sum())  # the fixture: 3 and 2
    assert len(schedule_table(repeated)) == int(program.instrs["repeat"].sum()) - replaced + 5


def test_table_repetitions_step_cycle_and_vid(repeated, turned):
    table = schedule_table(repeated)
    a = turned[0]
    ins = repeated.instrs[a]
    rows = table[table["instr"] == a].sort_values("rep")
    assert rows["rep"].tolist() == [0, 1, 2]
    assert rows["start"].tolist() == [int(repeated.predicted[a]) + j for j in range(3)]
    assert rows["vid"].tolist() == [int(ins["vid"]) + j for j in range(3)]


def test_table_ends_are_start_plus_latency(program):
    table = schedule_table(program)
    hw = program.hw
    want = table["start"] + table["op"].map(lambda o: latency(hw, Op[o]))
    assert (table["end"] == want).all()
    # Every unit's op takes a cycle at least; SYNC and NOTIFY act in the ICU at their dispatch.
    sync = table["op"].isin(["SYNC", "NOTIFY"]).to_numpy()
    assert (table["end"] > table["start"])[~sync].all()
    assert (table["end"] == table["start"])[sync].all() and sync.any()


def test_table_names_units_kinds_and_sources(program):
    table = schedule_table(program)
    hw, ins = program.hw, program.instrs
    for r in table.sample(n=50, random_state=0).itertuples():
        i = ins[r.instr]
        assert r.unit == queue_name(hw, int(i["queue"]))
        assert r.op == Op(int(i["op"])).name
        assert r.source == program.source(int(i["src"]))
    # matmul + softmax uses all four units; the start barrier's SYNC/NOTIFY are the ICU's.
    assert set(table["kind"]) == {"MEM", "VXM", "SXM", "MXM", "ICU"}


def test_table_is_sorted_by_start_then_unit(program):
    table = schedule_table(program)
    key = list(zip(table["start"], table["chip"], table["queue"], strict=True))
    assert key == sorted(key)


# --- gantt ------------------------------------------------------------------------------------


def test_gantt_has_one_row_per_used_queue(program):
    ax = gantt(program)
    try:
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == [queue_name(program.hw, q) for _, q in used_queues(program)]
        assert ax.get_xlabel() == "cycle"
        assert ax.get_legend() is not None
        assert len(ax.collections) >= 4  # one collection per opcode family drawn
        ax.figure.canvas.draw()
    finally:
        plt.close(ax.figure)


def test_gantt_window_and_unit_filter(program):
    fig, ax = plt.subplots()
    try:
        out = gantt(program, ax, cycles=(10, 60), units=["VXM", "MEMW0"])
        assert out is ax
        assert ax.get_xlim() == (10, 60)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["MEMW0", "VXM"]
        fig.canvas.draw()
    finally:
        plt.close(fig)


def test_gantt_rejects_unknown_unit_and_empty_window(program):
    with pytest.raises(ValueError, match="unknown unit 'TPU'"):
        gantt(program, units=["TPU"])
    with pytest.raises(ValueError, match="window"):
        gantt(program, cycles=(50, 50))
    plt.close("all")


# --- perfetto ---------------------------------------------------------------------------------


def test_perfetto_round_trips_with_one_event_per_repetition(program, repeated, tmp_path):
    for p in (program, repeated):
        trace = json.loads(json.dumps(perfetto_trace(p)))
        events = trace["traceEvents"]
        complete = [e for e in events if e["ph"] == "X"]
        meta = [e for e in events if e["ph"] == "M"]
        assert len(complete) == int(p.instrs["repeat"].sum())
        assert len(complete) + len(meta) == len(events)
    path = write_perfetto(program, tmp_path / "trace.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(perfetto_trace(program)))


def test_perfetto_times_are_microseconds_at_the_clock(program):
    hw = program.hw
    table = schedule_table(program)
    complete = [e for e in perfetto_trace(program)["traceEvents"] if e["ph"] == "X"]
    for e, r in zip(complete, table.itertuples(), strict=True):
        assert e["pid"] == r.chip and e["name"] == r.op and e["args"]["cycle"] == r.start
        assert e["tid"] % n_queues(hw) == r.queue
        assert e["ts"] == pytest.approx(r.start / hw.clock_hz * 1e6, abs=1e-3)
        assert e["dur"] == pytest.approx((r.end - r.start) / hw.clock_hz * 1e6, abs=1e-3)


def test_perfetto_names_every_queue_and_never_overlaps_on_a_track(program):
    events = perfetto_trace(program)["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    for chip, q in used_queues(program):
        assert names[(chip, q)] == queue_name(program.hw, q)
    # Perfetto drops X events that overlap without nesting on one thread; ours never overlap.
    by_track = {}
    for e in events:
        if e["ph"] == "X":
            by_track.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    assert set(by_track) <= set(names)
    for spans in by_track.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans[:-1], spans[1:], strict=True):
            assert end <= start + 1e-9
