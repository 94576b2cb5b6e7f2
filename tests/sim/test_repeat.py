"""Streamed instructions (the ICU's Repeat: one instruction acts on `repeat` vectors at
consecutive cycles, `stride` addresses apart) in both executors.

(a) Hand-assembled READ -> VXM op -> WRITE chains with random repeats and strides run identically
    (bit for bit, cycles, counts) in the reference interpreter and the Numba engine, and compute
    what NumPy computes.
(b) In compiled programs (whose instructions stream many vectors each), moving one streamed
    instruction by 1..3 cycles, dropping it or duplicating it at a later cycle is a
    ScheduleViolation in timing mode, the same in both engines; the few mutations that are
    legitimately harmless (`harmless` names them) must then give the same output bits.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import compile
from sim import Program, ScheduleViolation, simulate
from sim.icu import encode
from sim.isa import DTYPE_BY_NAME, Op, disassemble_one, latency, periods
from tests.programs import softmax_matmul, softmax_matmul_args
from tests.sim.test_engine import EAST_F32, HW, WEST_F32, WEST_F32_B, Asm, Vec, assert_agree

# --- (a) hand-assembled chains ---------------------------------------------------------------------


class StridedAsm(Asm):
    """Asm whose WRITEs store their vectors `write_stride` addresses apart."""

    write_stride = 1

    def _write(self, dtype: str, stream: int, pos: int, t0: int, n: int, slice_: int) -> Vec:
        stride = self.write_stride
        addr, vid = self._alloc(slice_, n, dtype, addresses=(n - 1) * stride + 1)
        distance = abs(HW.slice_position(slice_) - pos)
        self._emit(cycle=t0 + distance, queue=slice_, op=Op.WRITE, dtype=DTYPE_BY_NAME[dtype],
                   slice=slice_, addr=addr, stride=stride, repeat=n, s0=stream, vid=vid)  # fmt: skip
        return Vec(slice_, addr, vid, n, dtype, stride)


# What each op computes, in float64 (the executors round the result to float32, then to its type).
NUMPY_OPS = {
    Op.ADD: np.add,
    Op.SUB: np.subtract,
    Op.MUL: np.multiply,
    Op.MAX: np.maximum,
    Op.MIN: np.minimum,
    Op.NEG: np.negative,
    Op.CONVERT: np.positive,
}
UNARY = {Op.NEG, Op.CONVERT}


def _rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.astype(np.float32).astype(np.dtype(dtype)).astype(np.float32)


@settings(max_examples=50, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(sorted(NUMPY_OPS)),
            st.sampled_from(["float32", "float16"]),
            st.booleans(),  # an immediate in place of the second operand
            st.integers(1, 3),  # the WRITE's stride
        ),
        min_size=1,
        max_size=3,
    ),
    n=st.integers(1, 6),
    strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    seed=st.integers(0, 2**16),
)
def test_strided_chains_run_identically(steps, n, strides, seed):
    """READ (repeat n, stride) -> VXM op (repeat n) -> WRITE (repeat n, stride), each result read
    back (strided) as the next op's first operand."""
    rng = np.random.default_rng(seed)
    asm = StridedAsm()
    values = [(rng.normal(size=(n, HW.lanes)) * 2).astype(np.float32) for _ in range(2)]
    a = asm.data(values[0], "float32", WEST_F32, stride=strides[0])
    b = asm.data(values[1], "float32", EAST_F32, stride=strides[1])
    want, expected = values[0].astype(np.float64), []
    for op, dtype, use_imm, write_stride in steps:
        asm.write_stride = write_stride
        if op in UNARY:
            a = asm.vxm(op, [a], dtype, WEST_F32_B)
            want = _rounded(NUMPY_OPS[op](want), dtype)
        elif use_imm:
            a = asm.vxm(op, [a], dtype, WEST_F32_B, imm=0.75)
            want = _rounded(NUMPY_OPS[op](want, 0.75), dtype)
        else:
            a = asm.vxm(op, [a, b], dtype, WEST_F32_B)
            want = _rounded(NUMPY_OPS[op](want, values[1].astype(np.float64)), dtype)
        asm.output(a)
        expected.append(want)
        want = want.astype(np.float64)
    prog = asm.program()
    assert (prog.instrs["repeat"] == n).all()
    ref = assert_agree(prog, asm.inputs)
    assert not isinstance(ref, str), ref
    assert not isinstance(assert_agree(prog, asm.inputs, functional=False), str)
    outputs = [v for k, v in ref.outputs.items() if k.startswith("out")]
    for got, want in zip(outputs, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_spaced_run_meets_the_wrong_vector():
    """A WRITE repeating every 2 cycles under a READ of 3 vectors a cycle apart: its repetition 1
    meets vector 2 where it expects vector 1, and both executors say so (repetition j of a spaced
    run is (t - cycle) / period, not t - cycle)."""
    asm = Asm()
    v = asm.data(np.ones((3, HW.lanes), np.float32), "float32", WEST_F32)
    stream, pos, t = 0, HW.vxm_position, 40
    asm._read(v, stream, pos, t, 3)
    asm._write("float32", stream, pos, t, 2, EAST_F32, period=2)
    asm.records[-1]["vid"] = v.vid  # the WRITE stores the READ's vectors 0 and 1
    for functional in (True, False):
        got = assert_agree(asm.program(), asm.inputs, functional=functional)
        assert isinstance(got, str) and got.endswith(f"carries vector {v.vid + 2}, not {v.vid + 1}")


# --- (b) mutated compiled programs -----------------------------------------------------------------


def _elementwise(x, y):  # (rows, 40): every instruction streams `rows` vectors
    return x * y + 1.0


def _matmul(x, w):
    return jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def _scores(x, y):  # (m, d) x (n, d) -> (m, n): the right operand installed as columns
    return jnp.einsum("md,nd->mn", x, y)


def _normal(rng, shape, dtype=np.float32):
    return rng.normal(size=shape).astype(dtype)


# name -> (function, args, params); every one on the teaching chip, with repeats > 1.
PROGRAMS = {
    "elementwise": (_elementwise, lambda r: {"x": _normal(r, (5, 40)), "y": _normal(r, (5, 40))}),
    "matmul": (
        _matmul,
        lambda r: {"x": _normal(r, (4, 20)), "w": _normal(r, (20, 37), np.float16)},
    ),
    "scores": (_scores, lambda r: {"x": _normal(r, (3, 20)), "y": _normal(r, (5, 20))}),
    "softmax_matmul": (softmax_matmul, lambda r: softmax_matmul_args(3, 20, 37)),
}
ENGINES = ("reference", "numba")


@functools.cache
def _compiled(name: str) -> tuple[Program, dict]:
    fn, make_args = PROGRAMS[name]
    args = make_args(np.random.default_rng(0))
    prog = compile(fn, "teaching", args=args, params=("w",) if "w" in args else ())
    assert (prog.instrs["repeat"] > 1).any(), f"{name}: no streamed instruction to mutate"
    return prog, args


def _end_cycle(instrs: np.ndarray, cycles: np.ndarray) -> int:
    """The cycle the executors end at: the last repetition's issue plus its op's latency."""
    lat = np.array([latency(HW, Op(int(op))) for op in instrs["op"]], np.int64)
    return int((cycles + (instrs["repeat"] - 1) * periods(instrs) + lat).max())


def _mutant(prog: Program, i: int, kind: str, delta: int) -> Program:
    """Instruction i moved by delta cycles, dropped, or copied delta cycles after it; every other
    instruction keeps its cycle (the queues re-encoded, sim.icu.encode), and the prediction
    follows the mutation, so only the executors' own checks can catch it."""
    ins, cycles = prog.instrs, prog.predicted
    if kind == "move":
        new, timing = ins, cycles.copy()
        timing[i] += delta
    elif kind == "drop":
        new, timing = np.delete(ins, i), np.delete(cycles, i)
    else:  # "dup": a copy of instruction i, delta cycles after it
        new = np.insert(ins, i + 1, ins[i : i + 1])
        timing = np.insert(cycles, i + 1, cycles[i] + delta)
    new, timing = encode(new, timing)
    # The mutant's own end: a mutant that runs must still take the cycles predicted for it (the
    # autouse fixture checks), and a later copy may end later than the original.
    return dataclasses.replace(
        prog, instrs=new, predicted=timing, predicted_cycles=_end_cycle(new, timing)
    )


def _stream_passes(ins: np.ndarray, stream: int, vid: int) -> int:
    """How many instructions put vector `vid` onto `stream`."""
    producers = (ins["op"] != Op.WRITE) & (ins["op"] != Op.INSTALL) & (ins["sd"] == stream)
    return int(((ins["vid"] <= vid) & (vid < ins["vid"] + ins["repeat"]) & producers).sum())


def harmless(prog: Program, i: int, kind: str, delta: int) -> str | None:
    """Why mutating instruction i may legitimately go unnoticed, or None. In each case the
    mutated instruction still meets exactly the vectors it expects, checked by id."""
    r = prog.instrs[i]
    op, n, vid = Op(int(r["op"])), int(r["repeat"]), int(r["vid"])
    period = max(int(r["period"]), 1)
    if kind == "dup" and op == Op.READ and (delta % period or delta >= n * period):
        # The copy reads the same vectors (their ids checked at the same addresses) onto stream
        # slots the original program leaves empty (a taken slot is a conflict): past the
        # original's last repetition, or between its repetitions when they are `period` > 1
        # cycles apart. Any consumer of such a slot would have met no vector in the original,
        # so nothing takes the copies.
        return "a later copy of a READ that nothing takes"
    if kind in ("move", "dup") and op == Op.WRITE:
        passes = [_stream_passes(prog.instrs, int(r["s0"]), vid + j) for j in range(n)]
        if min(passes) >= 2:
            # A vector flows on past every slice downstream of where it entered, and the compiler
            # may put one vector on one stream twice (computed, stored, then READ again from its
            # first home to store it elsewhere): the WRITE meets the same ids at other cycles
            # too, and stores the same bits.
            return "every vector it stores passes its slice twice"
    return None


def _check_mutant(prog: Program, args: dict, i: int, kind: str, delta: int) -> None:
    """Both engines raise the same ScheduleViolation in timing mode, or the mutation is harmless
    and both compute the original's output bits."""
    bad = _mutant(prog, i, kind, delta)
    caught = {}
    for engine in ENGINES:
        try:
            simulate(bad, mode="timing", engine=engine)
        except ScheduleViolation as e:
            caught[engine] = e
    what = f"{kind} {delta:+d} of #{i} {disassemble_one(prog.hw, prog.instrs[i])}"
    assert caught.keys() in (set(), set(ENGINES)), f"{what}: only {list(caught)} raise"
    if caught:
        r, e = caught["reference"], caught["numba"]
        assert (e.unit, e.cycle, e.index, e.conflict) == (r.unit, r.cycle, r.index, r.conflict)
        return
    assert harmless(prog, i, kind, delta), f"{what} went unnoticed"
    want = simulate(prog, args, engine="reference").outputs
    for engine in ENGINES:
        got = simulate(bad, args, engine=engine).outputs
        assert got.keys() == want.keys()
        for name, value in want.items():
            np.testing.assert_array_equal(got[name].view(np.uint32), value.view(np.uint32))


@settings(max_examples=80, deadline=None)
@given(
    name=st.sampled_from(sorted(PROGRAMS)),
    pick=st.integers(0, 10**6),
    kind=st.sampled_from(["move", "drop", "dup"]),
    shift=st.integers(1, 3),
    earlier=st.booleans(),
    past_end=st.booleans(),  # a copy after the original's last repetition
)
def test_mutated_streamed_instruction_is_caught(name, pick, kind, shift, earlier, past_end):
    prog, args = _compiled(name)
    assert _end_cycle(prog.instrs, prog.predicted) == prog.predicted_cycles
    streamed = np.nonzero(prog.instrs["repeat"] > 1)[0]
    i = int(streamed[pick % len(streamed)])
    n = int(prog.instrs["repeat"][i])
    delta = {
        "move": -shift if earlier else shift,
        "drop": 0,
        "dup": shift + (n if past_end else 0),
    }[kind]
    _check_mutant(prog, args, i, kind, delta)


def test_every_mutation_of_a_small_program():
    """Every streamed instruction of one program, every mutation: the listing is small enough."""
    prog, args = _compiled("elementwise")
    for i in np.nonzero(prog.instrs["repeat"] > 1)[0]:
        n = int(prog.instrs["repeat"][i])
        mutations = [("move", d) for d in (-3, -2, -1, 1, 2, 3)] + [("drop", 0)]
        mutations += [("dup", d) for d in (1, 2, 3, n, n + 1, n + 3)]
        for kind, delta in mutations:
            _check_mutant(prog, args, int(i), kind, delta)
