"""Streams a unit overwrites part-way, SRAM ports per slice, and the SRAM microbenchmark.

A vector flows on its stream until a unit downstream puts another on the same diagonal; a take
sees the vector put nearest upstream of it (sim/reference.py, "Streams"). Both executors must
agree on every case, in both modes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sim import preset, simulate
from sim.bounds import bounds
from sim.isa import DType, Op, make_instrs, queue_vxm
from sim.microbench import sram_stream_program
from sim.program import Program, Symbol
from tests.sim.test_engine import assert_agree

HW = preset("teaching")  # east slices 8, 9, 10, 11 sit at positions 11, 12, 13, 14


def _symbol(name, kind, slices, addrs, vids):
    n = len(vids)
    return Symbol(
        name, kind, (n, HW.lanes), "int8", np.asarray(slices, np.int32),
        np.asarray(addrs, np.int32), np.asarray(vids, np.int64),
    )  # fmt: skip


def _relay(second_write_slice: int | None = 11) -> tuple[Program, dict]:
    """Vector 0 read at slice 8 and written one position on at slice 9; vector 1 read at slice 10
    onto the same stream and diagonal (two positions and two cycles later) and written at slice
    `second_write_slice`."""
    assert HW.slice_position(8) + 2 == HW.slice_position(10)
    common = dict(dtype=DType.INT8, repeat=1)
    records = [
        dict(op=Op.READ, queue=8, slice=8, addr=0, sd=0, vid=0, cycle=0, **common),
        dict(op=Op.WRITE, queue=9, slice=9, addr=1, s0=0, vid=0, cycle=2, **common),
        dict(op=Op.READ, queue=10, slice=10, addr=0, sd=0, vid=1, cycle=2, **common),
    ]
    outputs = [((9,), (1,), (0,))]
    if second_write_slice is not None:
        s = second_write_slice
        at = 2 + HW.mem_read_latency_cycles + HW.slice_position(s) - HW.slice_position(10)
        records.append(dict(op=Op.WRITE, queue=s, slice=s, addr=1, s0=0, vid=1, cycle=at, **common))
        outputs.append(((s,), (1,), (1,)))
    records.sort(key=lambda r: (r["queue"], r["cycle"]))
    x = _symbol("x", "input", [8, 10], [0, 0], [0, 1])
    ys = tuple(_symbol(f"y{k}", "output", *o) for k, o in enumerate(outputs))
    prog = Program(
        hw=HW, instrs=make_instrs(records), tables=np.zeros((0, HW.lanes), np.int32),
        symbols=(x, *ys), consts={}, sources=("hand-built",), predicted_cycles=0, words_used=2,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    return prog, {"x": rng.integers(-100, 100, size=(2, HW.lanes)).astype(np.int8)}


def test_two_vectors_share_a_diagonal_on_disjoint_stretches():
    prog, inputs = _relay()
    diagonal = {0 - HW.slice_position(8) + 1, 2 - HW.slice_position(10) + 1}
    assert len(diagonal) == 1  # the same stream slot, at two positions
    for functional in (True, False):
        result = assert_agree(prog, inputs, functional)
        assert not isinstance(result, str), result
    out = simulate(prog, inputs, engine="reference").outputs
    np.testing.assert_array_equal(out["y0"][0], inputs["x"][0])
    np.testing.assert_array_equal(out["y1"][0], inputs["x"][1])


def test_a_vector_replaced_before_its_consumer_is_a_violation():
    """Vector 0's WRITE moved past slice 10, where vector 1 replaces it: the WRITE sees 1."""
    prog, inputs = _relay(second_write_slice=None)
    r = prog.instrs
    k = int(np.flatnonzero(r["op"] == Op.WRITE)[0])
    moved = r.copy()
    moved["queue"][k] = moved["slice"][k] = 11
    moved["delay"][k] = HW.mem_read_latency_cycles + HW.slice_position(11) - HW.slice_position(8)
    bad = dataclasses.replace(prog, instrs=moved, symbols=(prog.symbols[0],))
    for functional in (True, False):
        result = assert_agree(bad, inputs, functional)
        assert "stream carries vector 1, not 0" in result, result


def test_reads_beyond_one_port_per_slice_need_a_second_port():
    """The microbenchmark reads twice per slice and cycle: a two-port chip runs it, a one-port
    chip refuses it in both executors."""
    two = dataclasses.replace(HW, mem_read_ports_per_slice=2, mem_write_ports_per_slice=2)
    prog = sram_stream_program(two, 16)
    result = assert_agree(prog, {}, functional=False)
    assert not isinstance(result, str), result
    one = dataclasses.replace(prog, hw=dataclasses.replace(two, mem_read_ports_per_slice=1))
    result = assert_agree(one, {}, functional=False)
    assert "rd port is already in use" in result and "capacity 1" in result, result


def test_microbenchmark_values_arrive_and_executors_agree():
    """Every slice's runs land in its partner, in both executors (the engine's ring grows its
    ways: four puts share each diagonal here)."""
    prog = sram_stream_program(HW, 8)
    x = np.arange(len(prog.symbols[0].vids) * HW.lanes).reshape(-1, HW.lanes) % 251 - 125
    inputs = {"x": x.astype(np.int8)}
    result = assert_agree(prog, inputs)
    assert not isinstance(result, str), result


@pytest.mark.parametrize("name", ["teaching", "groq-tsp-v1", "lpu-next"])
def test_sram_microbenchmark_reaches_the_ports_bandwidth(name):
    """Within 1% of every read and write port busy every cycle, on every preset."""
    hw = preset(name)
    vectors = min(1024, hw.words_per_slice // 4)
    r = simulate(sram_stream_program(hw, vectors), mode="timing")
    moved = r.bytes_read + r.bytes_written
    assert moved == hw.sram_bytes_per_cycle * vectors
    assert moved / r.cycles >= 0.99 * hw.sram_bytes_per_cycle
    b = bounds(sram_stream_program(hw, vectors))
    assert b.terms["sram_read"] == b.terms["sram_write"] == vectors  # every port, every cycle
    assert b.terms["streams"] < vectors and b.cycles <= r.cycles  # one hop each: streams spare


def test_groq_preset_reaches_its_stated_sram_bandwidth():
    """REFERENCE.md "SRAM bandwidth": 80 TB/s on groq-tsp-v1; 150 TB/s stated for lpu-next."""
    for name, stated in (("groq-tsp-v1", 80e12), ("lpu-next", 150e12)):
        hw = preset(name)
        r = simulate(sram_stream_program(hw, 2048), mode="timing")
        achieved = (r.bytes_read + r.bytes_written) * hw.clock_hz / r.cycles
        assert achieved >= (1.0 if name == "groq-tsp-v1" else 0.998) * stated, (name, achieved)


def test_a_put_at_one_position_twice_is_a_conflict():
    """Two VXM results put on one stream at one position in one cycle: both executors refuse,
    naming the first."""
    at = HW.mem_read_latency_cycles + HW.vxm_position - HW.slice_position(0)  # READ to the VXM
    common = dict(dtype=DType.INT8, repeat=1)
    mul = dict(op=Op.MUL, queue=queue_vxm(HW), s0=0, in0=0, imm=2.0, sd=4, cycle=at, **common)
    records = [
        dict(op=Op.READ, queue=0, slice=0, addr=0, sd=0, vid=0, cycle=0, **common),
        dict(mul, vid=10),
        dict(mul, vid=11),
    ]
    prog = Program(
        hw=HW, instrs=make_instrs(records), tables=np.zeros((0, HW.lanes), np.int32),
        symbols=(_symbol("x", "input", [0], [0], [0]),), consts={}, sources=("hand-built",),
        predicted_cycles=0, words_used=1,
    )  # fmt: skip
    x = {"x": np.ones((1, HW.lanes), np.int8)}
    for functional in (True, False):
        result = assert_agree(prog, x, functional)
        assert "already carries vector 10" in result, result
        assert "put at this position on this diagonal" in result, result
