"""The instruction queues (sim/icu.py, the specification; sim/engine/icu.py, the compiled copy):
each queue dispatches in order, `delay` cycles after its previous instruction, SYNC waits for its
barrier's NOTIFY, at most `issue_width` instructions a queue a cycle.

(a) On compiled programs of several kinds the cycles both derive are exactly the scheduler's
    `program.predicted`, and every program starts with the start barrier.
(b) One NOP count (`delay`) off by one is caught by both executors, naming the prediction.
(c) SYNC/NOTIFY and the queue problems (deadlock, a barrier notified twice, too many in a cycle,
    a negative delay) on hand-built queues, in both derivations and both executors.
(d) Random small queue programs: both derivations agree, and what they derive obeys the rules.
(e) A saved Program keeps `predicted`, and its content hash covers it.

Everything is small, so the file also runs whole under NUMBA_DISABLE_JIT=1.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import compile
from sim import Program, ProgramFormatError, ScheduleViolation, simulate
from sim.engine import run_engine
from sim.engine.icu import dispatch_cycles
from sim.hardware import preset
from sim.icu import (
    DEADLOCK,
    NEGATIVE_DELAY,
    NOTIFIED_TWICE,
    OK,
    TOO_MANY,
    cycles_of,
    dispatch,
    encode,
    moved,
)
from sim.isa import Op, issue_width, make_instrs, queue_mxm, queue_sxm, queue_vxm
from sim.reference import run_reference
from tests.programs import softmax_matmul_program
from tests.sim.test_engine import FUNCTIONS
from tests.sim.test_engine import _compiled as _compiled_function

HW = preset("teaching")
VXM, SXM, MXM = queue_vxm(HW), queue_sxm(HW, 0), queue_mxm(HW, 0)


def _derive(hw, instrs) -> tuple[np.ndarray, tuple]:
    """Both derivations, which must agree: the cycles, and the problem (only its code where
    there is none: the rest is then unspecified)."""
    ref_cycles, ref_problem = dispatch(hw, instrs)
    eng_cycles, eng_problem = dispatch_cycles(hw, instrs)
    np.testing.assert_array_equal(eng_cycles, ref_cycles)
    if ref_problem[0] == OK:
        assert eng_problem[0] == OK, eng_problem
    else:
        assert eng_problem == ref_problem
    return ref_cycles, ref_problem


# --- (a) compiled programs -------------------------------------------------------------------------


@functools.cache
def _tiny_llama(queue_instructions: int | None = None) -> Program:
    """tiny-llama's decode step; with a small instruction buffer, one that needs IFETCHes."""
    hw = HW
    if queue_instructions is not None:
        hw = dataclasses.replace(HW, icu_queue_instructions=queue_instructions)
    return compile("tiny-llama", hw, context=4)


COMPILED = [*sorted(FUNCTIONS), "softmax_matmul_tsp", "tiny-llama"]


def _program(name: str) -> Program:
    if name == "softmax_matmul_tsp":
        return softmax_matmul_program("groq-tsp-v1", 2, 40, 30)
    if name == "tiny-llama":
        return _tiny_llama()
    return _compiled_function(name, 2, 9, 7)


@pytest.mark.parametrize("name", COMPILED)
def test_icu_derives_the_predicted_cycles(name):
    prog = _program(name)
    hw, ins = prog.hw, prog.instrs
    assert prog.predicted is not None and prog.predicted.shape == (len(ins),)
    cycles, problem = _derive(hw, ins)
    assert problem[0] == OK
    np.testing.assert_array_equal(cycles, prog.predicted)
    np.testing.assert_array_equal(cycles_of(prog), prog.predicted)
    # The start barrier: the VXM's queue NOTIFYs barrier 0 at cycle 0, every other queue in use
    # starts with SYNC 0, released icu_sync_latency_cycles later; the program proper follows.
    sync = hw.icu_sync_latency_cycles
    for chip, q in sorted(set(zip(ins["chip"].tolist(), ins["queue"].tolist(), strict=True))):
        first = int(np.flatnonzero((ins["chip"] == chip) & (ins["queue"] == q))[0])
        op, barrier = Op(int(ins["op"][first])), int(ins["table"][first])
        if q == queue_vxm(hw):
            assert (op, barrier, int(cycles[first])) == (Op.NOTIFY, 0, 0)
        else:
            assert (op, barrier, int(cycles[first])) == (Op.SYNC, 0, sync)
    barrier_ops = np.isin(ins["op"], [int(Op.SYNC), int(Op.NOTIFY)])
    assert int(barrier_ops.sum()) == len(set(zip(ins["chip"], ins["queue"], strict=True)))
    assert cycles[~barrier_ops].min() >= sync + 1
    r = simulate(prog, mode="timing", engine="numba")
    assert r.cycles == prog.predicted_cycles


def test_icu_derives_the_predicted_cycles_with_fetches():
    """tiny-llama with 64-instruction buffers: IFETCHes refill the queues, and the derivation
    (stalls included) is still exactly the prediction."""
    prog = _tiny_llama(64)
    assert (prog.instrs["op"] == Op.IFETCH).any()
    cycles, problem = _derive(prog.hw, prog.instrs)
    assert problem[0] == OK
    np.testing.assert_array_equal(cycles, prog.predicted)
    assert simulate(prog, mode="timing", engine="numba").cycles == prog.predicted_cycles


def test_icu_moved_keeps_every_other_cycle():
    """sim.icu.moved: the instruction at its new cycle, the others where they were, the queues'
    delays re-encoded so that the derivation says so, the prediction along with it."""
    prog = _program("softmax_matmul")
    i = int(np.flatnonzero(prog.instrs["op"] == Op.EXP)[0])
    bad = moved(prog, {i: int(prog.predicted[i]) + 3})
    cycles, problem = _derive(bad.hw, bad.instrs)
    assert problem[0] == OK
    np.testing.assert_array_equal(cycles, bad.predicted)
    assert sorted(bad.predicted.tolist()) == sorted(
        (prog.predicted + 3 * (np.arange(len(prog.instrs)) == i)).tolist()
    )


# --- (b) a NOP count off by one ----------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["softmax_matmul", "movement", "rmsnorm"]),
    pick=st.integers(0, 10**6),
    delta=st.sampled_from([-1, 1]),
)
def test_icu_one_nop_more_or_fewer_is_caught(name, pick, delta):
    prog = _program(name)
    _check_nop_off_by_one(prog, pick % len(prog.instrs), delta)


def test_icu_every_nop_off_by_one_of_a_small_program():
    prog = _program("rmsnorm")
    for i in range(len(prog.instrs)):
        for delta in (-1, 1):
            _check_nop_off_by_one(prog, i, delta)


def _check_nop_off_by_one(prog: Program, i: int, delta: int) -> None:
    """Instruction i's delay changed by delta: both executors raise the same violation at i,
    which compares the queues' cycle with the prediction, unless the ICU finds a queue problem
    first, or the change is legitimately harmless."""
    ins, predicted, hw = prog.instrs, prog.predicted, prog.hw
    bad_instrs = ins.copy()
    bad_instrs["delay"][i] += delta
    bad = dataclasses.replace(prog, instrs=bad_instrs)
    op, q, delay = Op(int(ins["op"][i])), int(ins["queue"][i]), int(ins["delay"][i])
    same_queue = (ins["chip"] == ins["chip"][i]) & (ins["queue"] == q)
    sharing = int((same_queue[:i] & (predicted[:i] == predicted[i] - 1)).sum())
    if delta < 0 and op == Op.SYNC and predicted[i] == hw.icu_sync_latency_cycles:
        # A SYNC of the start barrier dispatches at the release; one NOP fewer before it changes
        # nothing, since it would wait for the release anyway.
        cycles, problem = _derive(hw, bad_instrs)
        assert problem[0] == OK and (cycles == predicted).all()
        for engine in ("reference", "numba"):
            assert simulate(bad, mode="timing", engine=engine).cycles == prog.predicted_cycles
        return
    if delta < 0 and delay == 0:
        expected = "has a negative delay (-1)"
    elif delta < 0 and sharing + 1 > issue_width(hw, q):
        # One cycle earlier, it would be one more than its queue dispatches in that cycle: the
        # ICU says so before comparing with the prediction.
        expected = "(icu_issue_width)"
    else:
        expected = f"but the scheduler predicted cycle {int(predicted[i])}"
    caught = []
    for engine in ("reference", "numba"):
        with pytest.raises(ScheduleViolation) as info:
            simulate(bad, mode="timing", engine=engine)
        caught.append(info.value)
    r, e = caught
    assert str(e) == str(r) and (e.index, e.cycle) == (r.index, r.cycle)
    assert e.index == i and expected in e.conflict, e
    if "predicted" in expected:
        assert e.cycle == predicted[i] + delta
        assert e.conflict.startswith(f"dispatches at cycle {int(predicted[i]) + delta} by its")


# --- (c) SYNC and NOTIFY on hand-built queues -------------------------------------------------------


def _queues(*records, hw=HW) -> Program:
    """A program of the given instructions alone (ICU ops and NOP-like VXM adds; nothing moves a
    vector, so only the queues can go wrong)."""
    return Program(
        hw=hw,
        instrs=make_instrs(list(records)),
        tables=np.zeros((0, hw.lanes), np.int32),
        symbols=(),
        consts={},
        sources=("hand-built",),
        predicted_cycles=0,
        words_used=0,
    )


def sync(queue, barrier, delay=0, chip=0):
    return dict(op=Op.SYNC, queue=queue, table=barrier, delay=delay, chip=chip)


def notify(queue, barrier, delay=0, chip=0):
    return dict(op=Op.NOTIFY, queue=queue, table=barrier, delay=delay, chip=chip)


def _violation(prog: Program) -> ScheduleViolation:
    """The violation both executors raise (the same), and that both derivations report."""
    caught = []
    for run in (run_reference, run_engine):
        with pytest.raises(ScheduleViolation) as info:
            run(prog, None, functional=False)
        caught.append(info.value)
    r, e = caught
    assert str(e) == str(r) and (e.chip, e.unit, e.cycle, e.index) == (
        r.chip,
        r.unit,
        r.cycle,
        r.index,
    )
    cycles, problem = _derive(prog.hw, prog.instrs)
    assert problem[0] != OK and problem[1] == e.index
    return e


@pytest.mark.parametrize("latency", [1, 4])
def test_icu_sync_waits_for_a_later_notify(latency):
    hw = dataclasses.replace(HW, icu_sync_latency_cycles=latency)
    prog = _queues(
        sync(0, 7),  # parked from cycle 0 until barrier 7's release
        notify(0, 8, delay=2),  # 2 cycles after the SYNC dispatches
        notify(VXM, 7, delay=10),
        sync(SXM, 8, delay=100),  # its delay ends after the release: the delay decides
        sync(MXM, 8, delay=1),  # its delay ends before: the release decides
        hw=hw,
    )
    cycles, problem = _derive(hw, prog.instrs)
    assert problem[0] == OK
    release7 = 10 + latency
    release8 = release7 + 2 + latency
    assert cycles.tolist() == [release7, release7 + 2, 10, 100, release8]
    np.testing.assert_array_equal(cycles_of(prog), cycles)
    for run in (run_reference, run_engine):  # and the executors run the queues the same way
        run(dataclasses.replace(prog, predicted=cycles), None, functional=False)


def test_icu_barriers_belong_to_a_chip():
    """A NOTIFY on chip 1 releases chip 1's SYNCs of that barrier, not chip 0's."""
    instrs = make_instrs([sync(0, 3, chip=0), notify(VXM, 3, delay=5, chip=1)])
    _, problem = _derive(HW, instrs)
    assert problem[:2] == (DEADLOCK, 0)
    instrs = make_instrs([sync(0, 3, chip=1), notify(VXM, 3, delay=5, chip=1)])
    cycles, problem = _derive(HW, instrs)
    assert problem[0] == OK and cycles.tolist() == [5 + HW.icu_sync_latency_cycles, 5]


def test_icu_sync_without_notify_deadlocks():
    e = _violation(_queues(notify(VXM, 1), sync(0, 2, delay=3)))
    assert e.index == 1 and "deadlock" in e.conflict and "barrier 2" in e.conflict
    # Two queues each waiting for the other's NOTIFY, which follows its own SYNC.
    e = _violation(_queues(sync(0, 1), notify(0, 2), sync(SXM, 2), notify(SXM, 1)))
    assert "deadlock" in e.conflict and e.index in (0, 2)


def test_icu_barrier_notified_twice():
    e = _violation(_queues(notify(VXM, 4), sync(0, 4), notify(SXM, 4, delay=3)))
    assert e.index == 2 and e.unit == "SXMW"
    assert e.conflict == "notifies barrier 4, which an earlier NOTIFY already released"
    _, problem = _derive(HW, _queues(notify(VXM, 4), sync(0, 4), notify(SXM, 4, delay=3)).instrs)
    assert problem[0] == NOTIFIED_TWICE


def test_icu_too_many_in_a_cycle():
    """A MEM queue dispatches one instruction a cycle, the VXM's vxm_alus; twice as many each
    with icu_issue_width = 2."""
    e = _violation(_queues(notify(0, 1, delay=2), notify(0, 2)))
    assert e.index == 1 and e.cycle == 2
    assert e.conflict.endswith("dispatches at most 1 a cycle (icu_issue_width)")
    alus = HW.vxm_alus
    vxm = [notify(VXM, b) for b in range(alus)]
    cycles, problem = _derive(HW, _queues(*vxm).instrs)
    assert problem[0] == OK and (cycles == 0).all()
    e = _violation(_queues(*vxm, notify(VXM, alus)))
    assert e.index == alus and f"dispatches at most {alus} a cycle (icu_issue_width)" in e.conflict
    wide = dataclasses.replace(HW, icu_issue_width=2)
    cycles, problem = _derive(wide, _queues(notify(0, 1), notify(0, 2), hw=wide).instrs)
    assert problem[0] == OK and cycles.tolist() == [0, 0]
    e = _violation(_queues(notify(0, 1), notify(0, 2), notify(0, 3), hw=wide))
    assert e.index == 2 and "dispatches at most 2 a cycle (icu_issue_width)" in e.conflict
    _, problem = _derive(HW, _queues(notify(0, 1), notify(0, 2)).instrs)
    assert problem == (TOO_MANY, 1, 0, 2)


def test_icu_negative_delay():
    e = _violation(_queues(notify(VXM, 1, delay=5), notify(VXM, 2, delay=-1)))
    assert e.index == 1 and e.cycle == 5
    assert e.conflict == "has a negative delay (-1): a queue dispatches in order"
    _, problem = _derive(HW, _queues(notify(0, 1, delay=-3)).instrs)
    assert problem == (NEGATIVE_DELAY, 0, 0, -3)


# --- (d) random queue programs ---------------------------------------------------------------------

QUEUES = [0, 1, 5, VXM, SXM, queue_sxm(HW, 1), MXM]


@st.composite
def queue_programs(draw):
    """Up to ~30 instructions on a few queues of up to two chips: ops with no effect on timing,
    small delays, and SYNC/NOTIFY pairs of a few barriers placed anywhere (so a SYNC may come
    before or after its NOTIFY, on another queue or its own). Now and then one fault: a
    negative delay, a SYNC nothing notifies, a barrier notified twice; and now and then small
    instruction buffers with IFETCHes among the instructions."""
    fetches = draw(st.integers(0, 4)) == 0
    hw = dataclasses.replace(
        HW,
        icu_issue_width=draw(st.integers(1, 2)),
        icu_sync_latency_cycles=draw(st.integers(1, 4)),
        icu_queue_instructions=7 if fetches else HW.icu_queue_instructions,
    )
    chip, delay = st.integers(0, 1), st.integers(0, 3)
    # With small buffers, long queues: a few queues, more instructions, on one chip.
    queue = st.sampled_from(QUEUES[:2] if fetches else QUEUES)
    if fetches:
        chip = st.just(0)
    records = [
        dict(op=Op.ADD, chip=draw(chip), queue=draw(queue), delay=draw(delay))
        for _ in range(draw(st.integers(8, 24) if fetches else st.integers(0, 16)))
    ]

    def insert(record: dict) -> None:
        records.insert(draw(st.integers(0, len(records))), record)

    for barrier in range(draw(st.integers(0, 4))):
        c = draw(chip)
        insert(sync(draw(queue), barrier, draw(delay), c))
        insert(notify(draw(queue), barrier, draw(delay), c))
    fault = draw(st.sampled_from(["none"] * 4 + ["negative", "unpaired", "twice"]))
    if fault == "negative" and records:
        records[draw(st.integers(0, len(records) - 1))]["delay"] = -1
    elif fault == "unpaired":
        insert(sync(draw(queue), 9, draw(delay), draw(chip)))
    elif fault == "twice":
        insert(notify(draw(queue), 0, draw(delay), draw(chip)))
    if fetches:
        for _ in range(draw(st.integers(1, 8))):
            insert(dict(op=Op.IFETCH, queue=draw(queue), chip=0, delay=draw(delay),
                        count=draw(st.integers(1, 3)), slice=0))  # fmt: skip
    return hw, make_instrs(records)


@settings(max_examples=300, deadline=None)
@given(queue_programs())
def test_icu_both_derivations_agree_on_random_queues(case):
    hw, ins = case
    cycles, problem = _derive(hw, ins)
    if problem[0] != OK or (ins["op"] == Op.IFETCH).any():
        return
    # What an OK derivation must be, instruction by instruction, from the rules alone.
    notified = {}
    for i in np.flatnonzero(ins["op"] == Op.NOTIFY):
        notified[(int(ins["chip"][i]), int(ins["table"][i]))] = int(cycles[i])
    for chip, q in set(zip(ins["chip"].tolist(), ins["queue"].tolist(), strict=True)):
        last = 0
        for i in np.flatnonzero((ins["chip"] == chip) & (ins["queue"] == q)):
            want = last + int(ins["delay"][i])
            if ins["op"][i] == Op.SYNC:
                release = notified[(chip, int(ins["table"][i]))] + hw.icu_sync_latency_cycles
                want = max(want, release)
            assert cycles[i] == want
            last = want
        mine = cycles[(ins["chip"] == chip) & (ins["queue"] == q)]
        assert np.unique(mine, return_counts=True)[1].max() <= issue_width(hw, q)


def test_icu_encode_round_trips():
    """encode writes the delays that make the queues dispatch at the given cycles (each queue
    sorted by cycle at its own positions)."""
    rng = np.random.default_rng(0)
    queues = rng.choice([0, 1, VXM, SXM], 40)
    ins = make_instrs([dict(op=Op.ADD, queue=int(q)) for q in queues])
    cycles = rng.permutation(40) * 2  # one a cycle per queue at most
    encoded, timing = encode(ins, cycles)
    derived, problem = _derive(HW, encoded)
    assert problem[0] == OK
    np.testing.assert_array_equal(derived, timing)
    assert sorted(timing.tolist()) == sorted(cycles.tolist())
    np.testing.assert_array_equal(encoded["queue"], ins["queue"])  # each queue keeps its slots


# --- (e) saved programs ----------------------------------------------------------------------------


def test_icu_prediction_is_saved_and_hashed(tmp_path):
    prog = _program("softmax_matmul")
    path = tmp_path / "p.lpu"
    prog.save(path)
    back = Program.load(path)
    np.testing.assert_array_equal(back.predicted, prog.predicted)
    assert back.predicted.dtype == prog.predicted.dtype
    assert back.content_hash == prog.content_hash
    # The hash covers the prediction: another prediction, or none, is another program.
    other = prog.predicted.copy()
    other[-1] += 1
    assert dataclasses.replace(prog, predicted=other).content_hash != prog.content_hash
    assert dataclasses.replace(prog, predicted=None).content_hash != prog.content_hash
    # A file whose prediction was changed is refused as corrupt.
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert json.loads(arrays["header"].tobytes().decode())["content_hash"] == prog.content_hash
    arrays["predicted"] = other
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    (tmp_path / "bad.lpu").write_bytes(buf.getvalue())
    with pytest.raises(ProgramFormatError, match="digest does not match"):
        Program.load(tmp_path / "bad.lpu")
    # A program without a prediction saves and loads without one.
    bare = dataclasses.replace(prog, predicted=None)
    bare.save(tmp_path / "bare.lpu")
    assert Program.load(tmp_path / "bare.lpu").predicted is None
