"""Chip-to-chip transfers: SEND and RECV on a program's links, in both executors.

A vector read on one chip is sent over a link, received on the other and written there; the two
executors must agree on values, cycles, counts and link bytes, and word every violation (a busy
channel, a RECV before arrival, a moved SEND, a slot overwritten before its RECV, a wrong vector, a
link that does not exist or does not end at the chip) identically, naming the link and both chips.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import preset, simulate
from sim.bounds import bounds
from sim.errors import ProgramFormatError
from sim.icu import cycles_of, encode, moved
from sim.isa import (
    DTYPE_BYTES,
    DTYPE_NUMPY,
    DType,
    Op,
    disassemble_one,
    latency,
    link_cycles,
    make_instrs,
    queue_c2c,
    queue_name,
    queue_vxm,
)
from sim.program import Program, Symbol
from sim.trace import perfetto_trace, schedule_table
from tests.sim.test_engine import assert_agree

HW = preset("teaching")  # c2c: 4 bytes/cycle, 20 cycles latency, 8 receive slots
C2C = queue_c2c(HW)
SRC_SLICE, DST_SLICE = 0, 8  # west slice 0 (position 9) and east slice 0 (position 11)
# The READ at cycle 0 puts its vector on stream E0 at slice 0; it passes the C2C ports then.
PASS = HW.mem_read_latency_cycles + HW.c2c_position - HW.slice_position(SRC_SLICE)


def _symbol(name, kind, dtype, slice_, addrs, vids, chip):
    n = len(vids)
    return Symbol(
        name, kind, (n, HW.lanes), DTYPE_NUMPY[dtype].name, np.full(n, slice_, np.int32),
        np.asarray(addrs, np.int32), np.asarray(vids, np.int64), chip=chip,
    )  # fmt: skip


def transfer(
    n: int = 1,
    dtype: DType = DType.INT8,
    *,
    period: int | None = None,
    recv_delay: int = 0,
    slot: int = 0,
    slot_stride: int = 1,
    link: int = 0,
    send_chip: int = 0,
    recv_chip: int = 1,
    links=((0, 1),),
    chips: int = 2,
    recv_vid: int = 100,
) -> tuple[Program, dict]:
    """n vectors read on `send_chip`, sent over `link` one every `period` cycles (the link's rate
    by default), received `recv_delay` cycles after each lands, and written on `recv_chip`."""
    w = DTYPE_BYTES[dtype]
    cost = link_cycles(HW, w)
    period = cost if period is None else period
    arrive = PASS + HW.c2c_latency_cycles + cost  # the first vector lands in its slot
    recv = arrive + recv_delay
    write = recv + latency(HW, Op.RECV) + HW.slice_position(DST_SLICE) - HW.c2c_position
    common = dict(dtype=dtype, repeat=n, period=period)
    records = [
        dict(op=Op.READ, chip=send_chip, queue=SRC_SLICE, slice=SRC_SLICE, addr=0, stride=1,
             sd=0, vid=0, cycle=0, **common),
        dict(op=Op.SEND, chip=send_chip, queue=C2C, table=link, addr=slot, stride=slot_stride,
             s0=0, in0=0, vid=100, cycle=PASS, **common),
        dict(op=Op.RECV, chip=recv_chip, queue=C2C, table=link, addr=slot, stride=slot_stride,
             sd=0, vid=recv_vid, cycle=recv, **common),
        dict(op=Op.WRITE, chip=recv_chip, queue=DST_SLICE, slice=DST_SLICE, addr=0, stride=1,
             s0=0, vid=100, cycle=write, **common),
    ]  # fmt: skip
    x = _symbol("x", "input", dtype, SRC_SLICE, range(n), range(n), send_chip)
    y = _symbol("y", "output", dtype, DST_SLICE, range(n), range(100, 100 + n), recv_chip)
    prog = Program(
        hw=HW, instrs=make_instrs(records), tables=np.zeros((0, HW.lanes), np.int32),
        symbols=(x, y), consts={}, sources=("hand-built",), predicted_cycles=0, words_used=n,
        chips=chips, links=np.asarray(links, np.int32).reshape(-1, 2),
    )  # fmt: skip
    rng = np.random.default_rng(n)
    values = rng.normal(size=(n, HW.lanes)) * 50
    return prog, {"x": values.astype(DTYPE_NUMPY[dtype])}


def _index(prog: Program, op: Op) -> int:
    return int(np.flatnonzero(prog.instrs["op"] == op)[0])


def _violation(prog: Program, inputs: dict, functional: bool = False) -> str:
    """Both executors' identical ScheduleViolation text."""
    result = assert_agree(prog, inputs, functional)
    assert isinstance(result, str) and result.startswith("ScheduleViolation"), result
    return result


# --- transfers that work ---------------------------------------------------------------------------


@pytest.mark.parametrize("send_chip", [0, 1])
def test_a_vector_crosses_the_link_intact(send_chip):
    prog, inputs = transfer(send_chip=send_chip, recv_chip=1 - send_chip)
    for functional in (True, False):
        result = assert_agree(prog, inputs, functional)
        assert not isinstance(result, str), result
        assert result.counts["c2c_send"] == 1
        want = np.zeros((1, 2), np.int64)
        want[0, send_chip] = HW.lanes  # link 0 joins chip 0 (a) and chip 1 (b)
        np.testing.assert_array_equal(result.link_bytes, want)
    write = PASS + HW.c2c_latency_cycles + link_cycles(HW, 1) + 1 + 1
    assert result.cycles == write + HW.mem_write_latency_cycles
    out = simulate(prog, inputs, engine="reference").outputs["y"]
    np.testing.assert_array_equal(out, inputs["x"].astype(np.float32))


@pytest.mark.parametrize("dtype", [DType.INT8, DType.FLOAT16, DType.FLOAT32])
def test_a_run_of_vectors_at_the_link_rate(dtype):
    prog, inputs = transfer(6, dtype)
    for functional in (True, False):
        result = assert_agree(prog, inputs, functional)
        assert not isinstance(result, str), result
        assert result.counts["c2c_send"] == 6
        assert result.link_bytes.tolist() == [[6 * DTYPE_BYTES[dtype] * HW.lanes, 0]]
    r = simulate(prog, inputs)
    np.testing.assert_array_equal(r.outputs["y"], inputs["x"].astype(np.float32))
    assert r.busy["c2c_send"] == 6
    assert 0 < r.utilisation["c2c_send"] < 1
    assert r.summary()["link_bytes"] == r.link_bytes.tolist()


def test_a_slot_is_reused_once_received():
    """Every vector into slot 3: each is received the cycle it lands, before the next one lands."""
    prog, inputs = transfer(5, slot=3, slot_stride=0)
    result = assert_agree(prog, inputs)
    assert not isinstance(result, str), result


@pytest.mark.parametrize("dtype", [DType.INT8, DType.FLOAT32])
def test_a_long_run_through_one_slot(dtype):
    """More vectors than the engine keeps in flight per FIFO at once: its ring wraps."""
    prog, inputs = transfer(40, dtype, slot=7, slot_stride=0)
    result = assert_agree(prog, inputs)
    assert not isinstance(result, str), result
    np.testing.assert_array_equal(result.outputs["y"], inputs["x"].astype(np.float32))


def test_a_vector_nobody_receives_is_no_violation():
    prog, inputs = transfer(2)
    recv = _index(prog, Op.RECV)
    ins = prog.instrs.copy()
    ins["repeat"][recv] = ins["repeat"][recv + 1] = 1  # vector 101 stays in its slot
    y = prog.symbols[1]
    y = dataclasses.replace(y, shape=(1, HW.lanes), slices=y.slices[:1], addrs=y.addrs[:1],
                            vids=y.vids[:1])  # fmt: skip
    prog = dataclasses.replace(prog, instrs=ins, symbols=(prog.symbols[0], y))
    result = assert_agree(prog, inputs)
    assert not isinstance(result, str), result


# --- violations ----------------------------------------------------------------------------------


def test_two_sends_on_one_channel_in_overlapping_cycles():
    prog, inputs = transfer(2, period=1)  # a vector takes link_cycles(1) = 4 cycles
    busy = PASS + link_cycles(HW, 1)
    assert f"cycle {PASS + 1}: " in _violation(prog, inputs)
    for functional in (True, False):
        text = _violation(prog, inputs, functional)
        assert f"link 0 (chip 0 -> chip 1): the link is busy until cycle {busy}" in text, text


def test_sends_in_opposite_directions_share_no_channel():
    """Chip 1 sends back over link 0 in the same cycles: the other channel, no conflict."""
    fwd, inputs = transfer()
    back, _ = transfer(send_chip=1, recv_chip=0)
    y1 = dataclasses.replace(back.symbols[1], name="y1")
    x1 = dataclasses.replace(back.symbols[0], name="x1")
    ins, cycles = encode(
        np.concatenate([fwd.instrs, back.instrs]), np.r_[cycles_of(fwd), cycles_of(back)]
    )
    both = dataclasses.replace(fwd, instrs=ins, symbols=(*fwd.symbols, x1, y1))
    result = assert_agree(both, {**inputs, "x1": inputs["x"] * 2})
    assert not isinstance(result, str), result
    assert result.link_bytes.tolist() == [[HW.lanes, HW.lanes]]


def test_a_recv_before_arrival():
    prog, inputs = transfer(recv_delay=-1)
    arrive = PASS + HW.c2c_latency_cycles + link_cycles(HW, 1)
    for functional in (True, False):
        text = _violation(prog, inputs, functional)
        assert (
            f"chip 1, unit C2C, cycle {arrive - 1}: " in text
            and "link 0 (chip 0 -> chip 1): expects vector 100 in slot 0 but nothing has landed "
            f"there yet (vector 100 lands at cycle {arrive})"
            in text
        ), text


def test_a_moved_send():
    """Only the SEND later: its vector has passed. The SEND with its READ: the RECV is early."""
    prog, inputs = transfer()
    send, read = _index(prog, Op.SEND), _index(prog, Op.READ)
    text = _violation(moved(prog, {send: PASS + 3}), inputs)
    assert "chip 0, unit C2C" in text and "link 0 (chip 0 -> chip 1): reads stream E0" in text
    later = moved(prog, {send: PASS + 3, read: 3})
    text = _violation(later, inputs)
    assert "link 0 (chip 0 -> chip 1): expects vector 100 in slot 0 but nothing has landed" in text


def test_a_slot_overwritten_before_its_recv():
    """Two vectors into one slot, each received a link's time late: the second lands first."""
    cost = link_cycles(HW, 1)
    prog, inputs = transfer(2, slot=5, slot_stride=0, recv_delay=cost)
    land = PASS + cost + HW.c2c_latency_cycles + cost
    for functional in (True, False):
        text = _violation(prog, inputs, functional)
        assert f"chip 0, unit C2C, cycle {PASS + cost}: " in text, text  # the second SEND
        assert (
            f"link 0 (chip 0 -> chip 1): vector 101 lands in slot 5 at cycle {land} and "
            "overwrites vector 100 not yet received" in text
        ), text


def test_a_recv_expecting_another_vector():
    prog, inputs = transfer(recv_vid=7)
    text = _violation(prog, inputs, True)
    assert "link 0 (chip 0 -> chip 1): expects vector 7 in slot 0 but it holds vector 100" in text


def test_a_recv_that_nothing_fills():
    prog, inputs = transfer()
    keep = prog.instrs["op"] != Op.SEND
    text = _violation(dataclasses.replace(prog, instrs=prog.instrs[keep]), inputs)
    assert "link 0 (chip 0 -> chip 1): expects vector 100 in slot 0 but it holds nothing" in text


def test_a_send_on_a_link_its_chip_is_not_on():
    prog, inputs = transfer(links=((1, 2), (0, 1)), chips=3, link=0)
    text = _violation(prog, inputs)
    assert "chip 0, unit C2C" in text and "link 0 joins chip 1 and chip 2, not chip 0" in text


@pytest.mark.parametrize(("link", "links", "why"), [
    (5, ((0, 1),), "link 5 does not exist (the program's links are 0..0)"),
    (-1, ((0, 1),), "link -1 does not exist"),
    (0, (), "link 0 does not exist (the program has no links)"),
])  # fmt: skip
def test_a_bad_link_id(link, links, why):
    prog, inputs = transfer(link=link, links=links)
    assert why in _violation(prog, inputs)


def test_a_slot_outside_the_buffer():
    prog, inputs = transfer(2, slot=HW.c2c_buffer_vectors - 1)
    text = _violation(prog, inputs)
    assert f"link 0 (chip 0 -> chip 1): slot {HW.c2c_buffer_vectors} is outside 0..7" in text


def test_a_send_on_another_queue():
    prog, inputs = transfer()
    ins = prog.instrs.copy()
    ins["queue"][_index(prog, Op.SEND)] = queue_vxm(HW)
    text = _violation(dataclasses.replace(prog, instrs=ins), inputs)
    assert "link 0 (chip 0 -> chip 1): C2C op SEND issued on queue VXM" in text


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(-6, 6),
    n=st.integers(1, 3),
    dtype=st.sampled_from([DType.INT8, DType.FLOAT16, DType.FLOAT32]),
    slot=st.integers(0, 5),
)
def test_a_recv_passes_from_arrival_on(k, n, dtype, slot):
    prog, inputs = transfer(n, dtype, recv_delay=k, slot=slot)
    result = assert_agree(prog, inputs, functional=False)
    if k >= 0:
        assert not isinstance(result, str), result
        arrive = PASS + HW.c2c_latency_cycles + link_cycles(HW, DTYPE_BYTES[dtype])
        assert result.cycles == arrive + k + (n - 1) * link_cycles(HW, DTYPE_BYTES[dtype]) + 3
    else:
        assert "nothing has landed there yet" in result, result


# --- the program, its listing and views ----------------------------------------------------------


def test_listing_names_links_and_slots():
    prog, _ = transfer(dtype=DType.FLOAT16)
    send, recv = prog.instrs[_index(prog, Op.SEND)], prog.instrs[_index(prog, Op.RECV)]
    assert disassemble_one(HW, send) == "SEND.f16 E0 -> link0[0] vid=100"
    assert disassemble_one(HW, recv) == "RECV.f16 link0[0] -> E0 vid=100"
    assert queue_name(HW, C2C) == "C2C"
    text = prog.disassemble()
    assert "; link 0: chip 0 <-> chip 1" in text and "chip1.C2C:" in text
    assert "output y float16[1, 16] 1 vectors on chip 1" in text


def test_program_round_trip_keeps_links_and_chips(tmp_path):
    prog, inputs = transfer(3, DType.FLOAT16)
    prog.save(tmp_path / "p.lpu")
    back = Program.load(tmp_path / "p.lpu")
    np.testing.assert_array_equal(back.links, prog.links)
    assert [s.chip for s in back.symbols] == [0, 1]
    assert back.content_hash == prog.content_hash
    moved_y = dataclasses.replace(prog.symbols[1], chip=0)
    assert dataclasses.replace(prog, symbols=(prog.symbols[0], moved_y)).content_hash != (
        prog.content_hash
    )
    a = simulate(prog, inputs).outputs["y"]
    np.testing.assert_array_equal(simulate(back, inputs).outputs["y"], a)


@pytest.mark.parametrize(("links", "chips", "why"), [
    (((0, 0),), 2, "link 0 joins chip 0 and chip 0"),
    (((0, 1), (1, 2)), 2, "link 1 joins chip 1 and chip 2"),
    (((0, -1),), 2, "link 0 joins chip 0 and chip -1"),
])  # fmt: skip
def test_malformed_links_are_refused(links, chips, why):
    with pytest.raises(ValueError, match=why):
        transfer(links=links, chips=chips)


def test_a_symbol_on_a_chip_the_program_lacks():
    with pytest.raises(ValueError, match="symbol 'x' is on chip 2"):
        transfer(send_chip=2)


def test_a_program_file_with_malformed_links_is_refused(tmp_path):
    import io
    import json

    from sim.program import _file_digest

    prog, _ = transfer()
    prog.save(tmp_path / "p.lpu")
    with np.load(tmp_path / "p.lpu") as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays.pop("header").tobytes().decode())
    arrays["links"] = np.array([[0, 0]], np.int32)
    header["digest"] = _file_digest(header, arrays)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    (tmp_path / "bad.lpu").write_bytes(buf.getvalue())
    with pytest.raises(ProgramFormatError, match="malformed: ValueError: link 0 joins chip 0"):
        Program.load(tmp_path / "bad.lpu")


def test_trace_and_bounds_take_transfers():
    prog, _ = transfer(3)
    table = schedule_table(prog)
    assert set(table["op"]) == {"READ", "SEND", "RECV", "WRITE"}
    assert {e.get("cat") for e in perfetto_trace(prog)["traceEvents"]} >= {"C2C send", "C2C recv"}
    r = simulate(prog, mode="timing")
    assert bounds(prog, cycles_of(prog)).cycles <= r.cycles
