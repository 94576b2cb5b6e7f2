"""The checker knows what a unit holds and what it can run: fault injection on compiled programs.

A dropped, duplicated or misplaced INSTALL leaves a plane with the wrong rows of a tile, which
only wrong logits would show; an op on a queue whose unit cannot run it would not run at all.
Each mutation below must be a ScheduleViolation in timing mode (and functional mode) in both
executors, with the same chip, unit, cycle, instruction and wording.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from compiler import compile
from sim import Program, ProgramFormatError, ScheduleViolation, simulate
from sim.icu import encode
from sim.isa import (
    FLAG_TRANSPOSED,
    OP_UNIT,
    Op,
    Unit,
    disassemble_one,
    issue_width,
    n_queues,
    queue_mxm,
    queue_sxm,
    queue_vxm,
)
from sim.program import FORMAT_VERSION
from tests.programs import softmax_matmul_args, softmax_matmul_program


def _matmul(x, w):
    return jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def _scores(x, y):  # (b, m, d) x (b, n, d) -> (b, m, n): y installed as columns
    return jnp.einsum("bmd,bnd->bmn", x, y)


def _normal(rng, shape, dtype=np.float32):
    return rng.normal(size=shape).astype(dtype)


@functools.cache
def _compiled(name: str) -> tuple[Program, dict]:
    """Programs on the teaching chip (16 lanes) whose tiles come in several INSTALL pieces."""
    if name == "softmax_matmul":
        return softmax_matmul_program("teaching", 3, 20, 37), softmax_matmul_args(3, 20, 37)
    rng = np.random.default_rng(0)
    if name == "matmul":  # m > 1, three row tiles by two column tiles
        fn, args = _matmul, {"x": _normal(rng, (4, 40)), "w": _normal(rng, (40, 20), np.float16)}
    else:  # "scores": transposed tiles
        fn, args = _scores, {"x": _normal(rng, (2, 3, 20)), "y": _normal(rng, (2, 5, 20))}
    return compile(fn, "teaching", args=args, params=("w",) if "w" in args else ()), args


NAMES = ["softmax_matmul", "matmul", "scores"]


def _with(prog: Program, instrs: np.ndarray) -> Program:
    return dataclasses.replace(prog, instrs=instrs)


def _set(prog: Program, i: int, **fields) -> Program:
    """Fields of instruction i changed, none that moves an instruction in time."""
    instrs = prog.instrs.copy()
    for name, value in fields.items():
        instrs[name][i] = value
    return _with(prog, instrs)


def _timed(prog: Program, instrs: np.ndarray, cycles: np.ndarray) -> Program:
    """`instrs` dispatched at `cycles` (the queues re-encoded, sim.icu.encode), which is also the
    prediction: only the executors' own checks can catch what a mutation breaks."""
    instrs, cycles = encode(instrs, cycles)
    return dataclasses.replace(prog, instrs=instrs, predicted=cycles)


def _dropped(prog: Program, i: int) -> Program:
    """Instruction i gone, every other at its cycle."""
    return _timed(prog, np.delete(prog.instrs, i), np.delete(prog.predicted, i))


def _duplicated(prog: Program, i: int, delta: int) -> Program:
    """A copy of instruction i, delta cycles after it (at index i + 1 where delta is 0)."""
    instrs = np.insert(prog.instrs, i + 1, prog.instrs[i : i + 1])
    return _timed(prog, instrs, np.insert(prog.predicted, i + 1, prog.predicted[i] + delta))


def _position(instrs: np.ndarray, cycles: np.ndarray, i: int) -> int:
    """Where `encode` puts instruction i: its queue keeps its array positions, filled in cycle
    order (ties in array order)."""
    key = instrs["chip"].astype(np.int64) * (1 << 20) + instrs["queue"].astype(np.int64)
    mine = np.flatnonzero(key == key[i])
    by_cycle = mine[np.lexsort((mine, cycles[mine]))]
    return int(mine[np.flatnonzero(by_cycle == i)[0]])


def _requeued(prog: Program, i: int, **fields) -> tuple[Program, int, bool]:
    """Instruction i on another queue (`fields`: queue, plane), every instruction at its cycle;
    with i's index in it, and whether its new queue now dispatches more in i's cycle than it
    may."""
    instrs = prog.instrs.copy()
    for name, value in fields.items():
        instrs[name][i] = value
    cycles, q = prog.predicted, int(instrs["queue"][i])
    same = (instrs["chip"] == instrs["chip"][i]) & (instrs["queue"] == q)
    shared = int((same & (cycles == cycles[i])).sum()) > issue_width(prog.hw, q)
    return _timed(prog, instrs, cycles), _position(instrs, cycles, i), shared


def _wide(prog: Program) -> Program:
    """`prog` on an ICU that dispatches two instructions a queue a cycle: where a mutation puts two
    on one queue in one cycle, the ICU refuses the second (an earlier, still correct violation)
    before the unit sees it; this lets the unit's own check see it too."""
    return dataclasses.replace(prog, hw=dataclasses.replace(prog.hw, icu_issue_width=2))


ONE_A_CYCLE = "dispatches at most 1 a cycle (icu_issue_width)"


def _caught(prog: Program, args: dict, what: str) -> ScheduleViolation:
    """The violation both executors raise, the same in timing and functional mode."""
    caught = []
    for mode in ("timing", "functional"):
        for engine in ("reference", "numba"):
            try:
                simulate(prog, args if mode == "functional" else None, mode=mode, engine=engine)
            except ScheduleViolation as e:
                caught.append(e)
            else:
                pytest.fail(f"{what}: {engine} runs it in {mode} mode")
    first = caught[0]
    for e in caught[1:]:
        assert str(e) == str(first), what
        assert (e.chip, e.unit, e.cycle, e.index) == (
            first.chip,
            first.unit,
            first.cycle,
            first.index,
        )
    return first


def _installs(prog: Program) -> np.ndarray:
    return np.nonzero(prog.instrs["op"] == Op.INSTALL)[0]


def _pieces(prog: Program, i: int) -> np.ndarray:
    """The INSTALLs of instruction i's tile (on its plane)."""
    ins = prog.instrs
    return np.nonzero(
        (ins["op"] == Op.INSTALL) & (ins["aux"] == ins["aux"][i]) & (ins["chip"] == ins["chip"][i])
    )[0]


def _what(prog: Program, i: int) -> str:
    return f"#{i} {disassemble_one(prog.hw, prog.instrs[i])}"


def test_compiled_programs_hold_exactly_their_tiles():
    """The unmutated programs pass, and each MATMUL's extent is the rows its tile's INSTALLs
    cover (0..extent-1, once each)."""
    for name in NAMES:
        prog, args = _compiled(name)
        ins = prog.instrs
        for m in np.nonzero(ins["op"] == Op.MATMUL)[0]:
            pieces = _pieces(prog, m)
            rows = np.concatenate([ins["row"][i] + np.arange(ins["repeat"][i]) for i in pieces])
            assert sorted(rows) == list(range(ins["row"][m])), _what(prog, m)
        for engine in ("reference", "numba"):
            simulate(prog, mode="timing", engine=engine)
            simulate(prog, args, engine=engine)


# --- tile state ------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(NAMES), pick=st.integers(0, 10**6))
def test_dropped_install_is_caught(name, pick):
    prog, args = _compiled(name)
    installs = _installs(prog)
    i = int(installs[pick % len(installs)])
    e = _caught(_dropped(prog, i), args, f"dropping {_what(prog, i)}")
    assert e.instr.startswith("MATMUL")
    if len(_pieces(prog, i)) > 1:  # the tile's other pieces are there, and its id
        assert "not installed" in e.conflict, e
    else:
        assert "never installed" in e.conflict, e


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(NAMES), pick=st.integers(0, 10**6), delta=st.integers(0, 2))
def test_duplicated_install_is_caught(name, pick, delta):
    """A copy of an INSTALL delta cycles later. At the same cycle it takes the very vectors the
    original takes (the plane has two install ports), so only the tile's row flags see it."""
    prog, args = _compiled(name)
    installs = _installs(prog)
    i = int(installs[pick % len(installs)])
    bad = _duplicated(prog, i, delta)
    e = _caught(bad, args, f"a copy {delta:+d} cycles after {_what(prog, i)}")
    if delta == 0:
        assert e.conflict.endswith(ONE_A_CYCLE), e  # the plane's queue: one INSTALL a cycle
        e = _caught(_wide(bad), args, f"a copy of {_what(prog, i)} on a wider ICU")
        assert "twice" in e.conflict or "already in use" in e.conflict, e


def test_duplicate_at_the_same_cycle_names_the_row():
    prog, args = _compiled("softmax_matmul")
    ins = prog.instrs
    for i in _installs(prog):
        bad = _duplicated(prog, i, 0)
        e = _caught(bad, args, _what(prog, i))
        assert e.index == i + 1 and e.conflict.endswith(ONE_A_CYCLE), e
        e = _caught(_wide(bad), args, _what(prog, i))  # as if the plane's queue took both
        if "twice" in e.conflict:
            row, tile = int(ins["row"][i]), int(ins["aux"][i])
            assert e.index == i + 1 and e.cycle == int(prog.predicted[i])
            assert e.conflict == f"installs row {row} of tile {tile} twice"
            return
    pytest.fail("every INSTALL shares its cycles with another: no free port for a copy")


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(NAMES), pick=st.integers(0, 10**6), to=st.integers(0, 10**6))
def test_install_into_another_row_is_caught(name, pick, to):
    """An INSTALL's row changed to another row of its tile: some row is then installed twice,
    or missing, or outside the lanes, whatever the other pieces of the tile install."""
    prog, args = _compiled(name)
    installs = _installs(prog)
    i = int(installs[pick % len(installs)])
    ins = prog.instrs
    extent = max(int(ins["row"][k] + ins["repeat"][k]) for k in _pieces(prog, i))
    rows = [r for r in range(extent) if r != ins["row"][i]]
    if not rows:
        return  # a one-row tile: no other row
    row = rows[to % len(rows)]
    e = _caught(_set(prog, i, row=row), args, f"{_what(prog, i)} into row {row}")
    assert any(w in e.conflict for w in ("twice", "not installed", "outside", "beyond")), e


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(NAMES), pick=st.integers(0, 10**6))
def test_install_one_vector_short_is_caught(name, pick):
    prog, args = _compiled(name)
    installs = _installs(prog)
    i = int(installs[pick % len(installs)])
    n = int(prog.instrs["repeat"][i])
    e = _caught(_set(prog, i, repeat=n - 1), args, f"{_what(prog, i)} repeated {n - 1} times")
    assert e.instr.startswith("MATMUL")
    if n > 1:  # the last row of the piece is missing
        row = int(prog.instrs["row"][i]) + n - 1
        what = "column" if prog.instrs["flags"][i] & FLAG_TRANSPOSED else "row"
        assert f"but {what} {row} is not installed" in e.conflict, e


def test_missing_rows_are_listed_as_runs():
    """Dropping the first piece of a tile of two: the MATMUL names every row it lacks."""
    prog, args = _compiled("softmax_matmul")
    ins = prog.instrs
    i = next(int(i) for i in _installs(prog) if len(_pieces(prog, i)) > 1 and ins["row"][i] == 0)
    n, tile = int(ins["repeat"][i]), int(ins["aux"][i])
    e = _caught(_dropped(prog, i), args, _what(prog, i))
    extent = max(int(ins["row"][k] + ins["repeat"][k]) for k in _pieces(prog, i))
    assert e.conflict == (
        f"uses tile {tile} but rows 0..{n - 1} are not installed (its extent is {extent})"
    )


@pytest.mark.parametrize("name", NAMES)
def test_matmul_extent_must_match_the_tile(name):
    """A MATMUL whose extent is one short sees a row beyond it; one more, a row missing; 0 (or
    more than the lanes) is malformed. All in both modes, both executors."""
    prog, args = _compiled(name)
    m = int(np.nonzero(prog.instrs["op"] == Op.MATMUL)[0][0])
    extent, tile = int(prog.instrs["row"][m]), int(prog.instrs["aux"][m])
    what = "column" if prog.instrs["flags"][_pieces(prog, m)[0]] & FLAG_TRANSPOSED else "row"
    lanes = prog.hw.lanes
    if extent > 1:
        e = _caught(_set(prog, m, row=extent - 1), args, "extent one short")
        assert e.conflict == (
            f"uses tile {tile} of extent {extent - 1} but it holds {what}s {extent - 1} beyond it"
        )
    if extent < lanes:
        e = _caught(_set(prog, m, row=extent + 1), args, "extent one more")
        assert e.conflict == (
            f"uses tile {tile} but {what} {extent} is not installed (its extent is {extent + 1})"
        )
    for bad in (0, -1, lanes + 1):
        e = _caught(_set(prog, m, row=bad), args, f"extent {bad}")
        assert e.index == m and e.cycle == int(prog.predicted[m])
        assert e.conflict == f"MATMUL extent (row field) {bad} is outside 1..{lanes}"


def test_install_row_outside_the_lanes_and_mixed_orientation():
    prog, args = _compiled("softmax_matmul")
    ins = prog.instrs
    tiles = [_pieces(prog, i) for i in _installs(prog)]
    # The last piece to start of a tile of rows in several pieces.
    i = int(max(next(p for p in tiles if len(p) > 1), key=lambda k: (prog.predicted[k], k)))
    tile, lanes = int(ins["aux"][i]), prog.hw.lanes
    for row in (-1, lanes, 1000):
        e = _caught(_set(prog, i, row=row), args, f"row {row}")
        assert e.index == i and e.cycle == int(prog.predicted[i])
        assert e.conflict == f"installs row {row} of tile {tile}, outside 0..{lanes - 1}"
    # Only the orientation changes (the piece keeps its weight buffer).
    e = _caught(_set(prog, i, flags=int(ins["flags"][i]) | FLAG_TRANSPOSED), args, "a column")
    assert e.index == i and e.conflict == f"installs a column of tile {tile}, which holds rows"


# --- unit validity ---------------------------------------------------------------------------------


def _ops_of(prog: Program, unit: Unit) -> np.ndarray:
    units = np.array([OP_UNIT[Op(int(op))] for op in prog.instrs["op"]])
    return np.nonzero(units == unit)[0]


def _moves(prog: Program, i: int) -> list[tuple[int, int]]:
    """(queue, plane) placements of instruction i that its unit cannot run."""
    hw, r = prog.hw, prog.instrs[i]
    unit, plane = OP_UNIT[Op(int(r["op"]))], int(r["plane"])
    mxm = [queue_mxm(hw, p) for p in range(hw.mxm_planes)]
    if unit == Unit.ICU:  # SYNC/NOTIFY run on any queue: only on none at all
        return [(n_queues(hw), plane), (99, plane)]
    if unit == Unit.VXM:
        return [(q, plane) for q in [*mxm, queue_sxm(hw, 0), 0]]
    if unit == Unit.SXM:
        return [(q, plane) for q in [queue_vxm(hw), *mxm]]
    if unit == Unit.MEM:
        return [(q, plane) for q in [queue_vxm(hw), queue_sxm(hw, 1), mxm[-1]]]
    others = [p for p in range(hw.mxm_planes) if p != plane]
    # Another plane's queue; this queue with another plane; the VXM's queue; no queue at all.
    return [(queue_mxm(hw, p), plane) for p in others] + [
        (int(r["queue"]), others[0]),
        (queue_vxm(hw), plane),
        (queue_mxm(hw, hw.mxm_planes), hw.mxm_planes),
    ]


def _requeued_caught(prog: Program, args: dict, i: int, what: str, **fields):
    """The violation of instruction i on another queue (on a wider ICU where its new queue
    dispatches more in its cycle than it may, after checking the ICU's own refusal)."""
    bad, j, shared = _requeued(prog, i, **fields)
    e = _caught(bad, args, what)
    cycle = int(prog.predicted[i])
    if shared:
        # The ICU refuses whichever of the queue's instructions in that cycle comes later in
        # the queue: it or another.
        q = int(bad.instrs["queue"][j])
        most = f"dispatches at most {issue_width(prog.hw, q)} a cycle (icu_issue_width)"
        assert e.conflict.endswith(most) and e.cycle == cycle, e
        assert bad.instrs["queue"][e.index] == q
        e = _caught(_wide(bad), args, what)
    assert e.index == j and e.cycle == cycle
    return e


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    unit=st.sampled_from(list(Unit)),
    pick=st.integers(0, 10**6),
    where=st.integers(0, 10**6),
)
def test_op_on_a_queue_its_unit_cannot_run_is_caught(name, unit, pick, where):
    prog, args = _compiled(name)
    candidates = _ops_of(prog, unit)
    assume(len(candidates))
    i = int(candidates[pick % len(candidates)])
    moves = _moves(prog, i)
    q, plane = moves[where % len(moves)]
    what = f"{_what(prog, i)} on queue {q}, plane {plane}"
    # No instruction's cycle changed, so it is caught at its cycle, by the new check.
    e = _requeued_caught(prog, args, i, what, queue=q, plane=plane)
    op = Op(int(prog.instrs["op"][i])).name
    assert e.conflict.startswith(f"{unit.name} op {op}")
    assert e.conflict.endswith(("which cannot run it", "which does not exist"))


def test_unit_violation_wording():
    prog, args = _compiled("softmax_matmul")
    hw, ins = prog.hw, prog.instrs
    v = int(np.nonzero(ins["op"] == Op.EXP)[0][0])
    e = _requeued_caught(prog, args, v, "EXP on MXM1", queue=queue_mxm(hw, 1))
    assert e.unit == "MXM1" and e.conflict == "VXM op EXP issued on queue MXM1, which cannot run it"
    s = int(_ops_of(prog, Unit.SXM)[0])
    e = _requeued_caught(prog, args, s, "SXM op on the VXM", queue=queue_vxm(hw))
    op = Op(int(ins["op"][s])).name
    assert e.conflict == f"SXM op {op} issued on queue VXM, which cannot run it"
    m = int(np.nonzero(ins["op"] == Op.MATMUL)[0][0])
    plane = int(ins["plane"][m])
    other = queue_mxm(hw, 1 - plane)
    e = _requeued_caught(prog, args, m, "MATMUL on the other plane's queue", queue=other)
    assert e.unit == f"MXM{1 - plane}"
    assert e.conflict == (
        f"MXM op MATMUL for plane {plane} issued on queue MXM{1 - plane}, which cannot run it"
    )
    e = _requeued_caught(prog, args, m, "MATMUL on no queue", queue=99)
    assert e.conflict == f"MXM op MATMUL for plane {plane} issued on queue 99, which does not exist"


# --- saved programs --------------------------------------------------------------------------------


def test_program_files_of_the_previous_format_are_refused(tmp_path):
    """Version 1 files carry MATMULs without an extent, which the executors would refuse."""
    prog, _ = _compiled("matmul")
    path = tmp_path / "p.lpu"
    prog.save(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes().decode())
    header["version"] = FORMAT_VERSION - 1
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    old = tmp_path / "old.lpu"
    old.write_bytes(buf.getvalue())
    with pytest.raises(ProgramFormatError, match=f"version {FORMAT_VERSION - 1}; this lpusim"):
        Program.load(old)
    assert Program.load(path).content_hash == prog.content_hash
