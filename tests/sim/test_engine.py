"""The Numba engine against the reference interpreter: same cycles, counts, bytes, trace, the same
output bits, and the same ScheduleViolation (chip, unit, cycle, instruction) on broken schedules.

Programs come from the compiler (hypothesis over small shapes) and from a small assembler below
that places vectors by hand (repeat/stride, PERMUTE tables, SELECT, CONVERT to float16/bfloat16,
transposed INSTALL, both stream directions). Everything is small, so the file also runs, slowly
but completely, under NUMBA_DISABLE_JIT=1 (CI runs `pytest tests/sim -k engine` that way).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from compiler import compile
from sim import ScheduleViolation, simulate
from sim.engine import run_engine
from sim.engine.prepare import ring_size
from sim.engine.rounding import (
    f16_bits_to_f32_bits,
    f32_bits_to_bf16_bits,
    f32_bits_to_f16_bits,
    quiet_nans,
    round_vector,
)
from sim.hardware import preset
from sim.icu import encode, moved
from sim.isa import (
    DTYPE_BY_NAME,
    DTYPE_BYTES,
    FLAG_TRANSPOSED,
    VXM_ARITY,
    DType,
    Op,
    issue_width,
    latency,
    make_instrs,
    matmul_period,
    queue_mxm,
    queue_sxm,
    queue_vxm,
)
from sim.program import Program, Symbol
from sim.reference import RawResult, run_reference
from tests.programs import softmax_matmul, softmax_matmul_args, softmax_matmul_program

HW = preset("teaching")  # 16 lanes, 16 slices, 8 streams per direction


# --- comparing the executors -----------------------------------------------------------------------


def assert_same(ref: RawResult, eng: RawResult, nan_payloads: bool = True) -> None:
    """Equal in everything, outputs bit for bit. With nan_payloads=False a NaN only has to be a
    NaN: IEEE 754 leaves open which payload an operation on two NaNs returns, and which one
    NumPy's SIMD loops, CPython or a maths library's exp return differs between machines."""
    assert eng.cycles == ref.cycles
    assert eng.counts == ref.counts
    assert (eng.bytes_read, eng.bytes_written) == (ref.bytes_read, ref.bytes_written)
    assert (eng.instructions, eng.events) == (ref.instructions, ref.events)
    assert eng.trace == ref.trace
    np.testing.assert_array_equal(eng.link_bytes, ref.link_bytes)
    assert eng.outputs.keys() == ref.outputs.keys()
    for name, want in ref.outputs.items():
        got = eng.outputs[name]
        assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
        if not nan_payloads:
            both = np.isnan(got) & np.isnan(want)
            got, want = np.where(both, np.nan, got), np.where(both, np.nan, want)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=name)


def outcome(executor, program, inputs, functional):
    """What an executor does with a program: its result, or the error it raises (as a string)."""
    try:
        with np.errstate(all="ignore"):  # the reference warns about NaN and inf casts
            return executor(program, inputs, functional=functional, trace=True)
    except (ScheduleViolation, ValueError, IndexError) as e:
        return f"{type(e).__name__}: {e}"


def assert_agree(program, inputs, functional=True, nan_payloads=True) -> RawResult | str:
    ref = outcome(run_reference, program, inputs, functional)
    eng = outcome(run_engine, program, inputs, functional)
    if isinstance(ref, str) or isinstance(eng, str):
        assert eng == ref
    else:
        assert_same(ref, eng, nan_payloads)
    return ref


# --- compiled programs -----------------------------------------------------------------------------


def _normal(seed, shape, dtype=np.float32, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(dtype)


def _matmul(x, w):
    return jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def _chain(x, y):
    z = jnp.maximum(x * y + 0.5, -x) - y
    return jnp.exp(-z * z) * jax.lax.rsqrt(1.0 + y * y) / (2.0 + x * x) + jax.nn.sigmoid(x)


def _rmsnorm(x, y):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-5) * y[0]


def _reductions(x, y):
    return jnp.sum(x * y, axis=-1), jnp.max(x, axis=-1), jnp.sum(x, axis=0)


def _movement(x, y):  # SXM permutes: rotations, transposes
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[:, half:], x[:, :half]], axis=-1), y.T


def _scores(x, y):  # (m, d) x (n, d) -> (m, n): the right operand installed as columns
    return jnp.einsum("md,nd->mn", x, y)


FUNCTIONS = {
    "softmax_matmul": (softmax_matmul, "f16"),
    "matmul_f32": (_matmul, "f32"),
    "matmul_f16": (_matmul, "f16"),
    "chain": (_chain, "same"),
    "rmsnorm": (_rmsnorm, "same"),
    "reductions": (_reductions, "same"),
    "movement": (_movement, "same"),
    "scores": (_scores, "rows"),
}


def _args(kind: str, m: int, k: int, n: int, seed: int) -> dict:
    x = _normal(seed, (m, k), scale=2.0)
    if kind in ("f16", "f32"):
        dtype = np.float16 if kind == "f16" else np.float32
        return {"x": x, "w": _normal(seed + 1, (k, n), dtype, 1 / np.sqrt(k))}
    if kind == "rows":
        return {"x": x, "y": _normal(seed + 1, (n, k))}
    return {"x": x, "y": _normal(seed + 1, (m, k))}


@functools.cache
def _compiled(name: str, m: int, k: int, n: int) -> Program:
    fn, kind = FUNCTIONS[name]
    args = _args(kind, m, k, n, 0)
    return compile(fn, "teaching", args=args, params=("w",) if "w" in args else ())


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(sorted(FUNCTIONS)),
    m=st.integers(1, 3),
    k=st.integers(1, 20),
    n=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
@example(name="softmax_matmul", m=3, k=20, n=37, seed=0)
def test_engine_matches_reference_on_compiled_programs(name, m, k, n, seed):
    prog = _compiled(name, m, k, n)
    args = _args(FUNCTIONS[name][1], m, k, n, seed)
    ref = assert_agree(prog, args, functional=True)
    assert not isinstance(ref, str), ref
    assert_agree(prog, args, functional=False)
    assert_agree(prog, None, functional=False)  # timing mode needs no inputs


def test_engine_simulate_api_and_timing_mode():
    prog = softmax_matmul_program()
    args = softmax_matmul_args()
    ref = simulate(prog, args, engine="reference", trace=True)
    eng = simulate(prog, args, engine="numba", trace=True)
    assert (eng.cycles, eng.busy, eng.vector_ops, eng.trace) == (
        ref.cycles,
        ref.busy,
        ref.vector_ops,
        ref.trace,
    )
    np.testing.assert_array_equal(
        eng.outputs["out"].view(np.uint32), ref.outputs["out"].view(np.uint32)
    )
    timing = simulate(prog, engine="numba", mode="timing")
    assert timing.outputs == {} and timing.cycles == ref.cycles and timing.trace == []


def test_engine_is_deterministic():
    prog = _compiled("softmax_matmul", 3, 20, 37)
    args = _args("f16", 3, 20, 37, 5)
    a = run_engine(prog, args, trace=True)
    b = run_engine(prog, args, trace=True)
    assert_same(a, b)


def test_engine_input_errors_match_reference():
    prog = softmax_matmul_program()
    args = softmax_matmul_args()
    for bad in ({"x": args["x"]}, {"x": args["x"][:, :3], "w": args["w"]}):
        with pytest.raises(ValueError) as ref:
            run_reference(prog, bad)
        with pytest.raises(ValueError) as eng:
            run_engine(prog, bad)
        assert str(eng.value) == str(ref.value)


# --- fault injection -------------------------------------------------------------------------------


def _mutated(prog: Program, i: int, **fields) -> Program:
    instrs = prog.instrs.copy()
    for name, value in fields.items():
        instrs[name][i] = value
    return dataclasses.replace(prog, instrs=instrs)


def _assert_same_violation(prog: Program, inputs, functional: bool) -> ScheduleViolation:
    with pytest.raises(ScheduleViolation) as ref:
        run_reference(prog, inputs, functional=functional)
    with pytest.raises(ScheduleViolation) as eng:
        run_engine(prog, inputs, functional=functional)
    r, e = ref.value, eng.value
    assert (e.chip, e.unit, e.cycle, e.index) == (r.chip, r.unit, r.cycle, r.index)
    assert (e.instr, e.source, e.conflict) == (r.instr, r.source, r.conflict)
    return e


@settings(max_examples=15, deadline=None)
@given(pick=st.integers(0, 10**6), functional=st.booleans())
def test_engine_violation_instruction_one_cycle_early(pick, functional):
    """Instruction i dispatched one cycle early (its queue re-encoded, the prediction moved along,
    so the executors' own checks must catch it)."""
    prog = _compiled("softmax_matmul", 2, 16, 16)
    i = pick % len(prog.instrs)
    bad = moved(prog, {i: int(prog.predicted[i]) - 1})
    _assert_same_violation(bad, _args("f16", 2, 16, 16, 0), functional)


@pytest.mark.parametrize("op", [Op.READ, Op.WRITE, Op.MATMUL, Op.INSTALL, Op.EXP])
def test_engine_violation_two_instructions_on_one_resource(op):
    """Move an instruction onto the cycle of the previous one on the same unit."""
    prog = _compiled("softmax_matmul", 3, 20, 37)
    ins, cycle = prog.instrs, prog.predicted
    idx = np.nonzero(ins["op"] == op)[0]
    a, b = next(  # not always neighbours in the listing: units of one kind may take turns
        (a, b)
        for a, b in itertools.combinations(idx, 2)
        if ins["queue"][a] == ins["queue"][b] and cycle[a] != cycle[b]
    )
    bad = moved(prog, {b: int(cycle[a])})
    args = _args("f16", 3, 20, 37, 0)
    e = _assert_same_violation(bad, args, functional=False)
    if issue_width(prog.hw, int(ins["queue"][a])) == 1:
        # One queue dispatching two instructions in one cycle: the ICU refuses that before any
        # unit sees them (an earlier, still correct violation) ...
        assert e.conflict.endswith("dispatches at most 1 a cycle (icu_issue_width)"), e
        # ... so on an ICU that dispatches two a cycle, the unit's own resource check must.
        wide = dataclasses.replace(prog.hw, icu_issue_width=2)
        e = _assert_same_violation(dataclasses.replace(bad, hw=wide), args, functional=False)
    assert "icu_issue_width" not in e.conflict, e


FIELDS = ["delay", "queue", "slice", "addr", "s0", "s1", "s2", "sd", "vid", "in0", "in1"]
FIELDS += ["aux", "row", "count", "plane", "repeat", "stride", "dtype", "flags", "table", "chip"]


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["softmax_matmul", "movement", "scores"]),
    pick=st.integers(0, 10**6),
    field=st.sampled_from(FIELDS),
    delta=st.sampled_from([-2, -1, 1, 2]),
    functional=st.booleans(),
)
def test_engine_agrees_on_any_corrupted_field(name, pick, field, delta, functional):
    """Whatever one corrupted field does (a violation, an out-of-range index, nothing at all),
    both executors do the same."""
    prog = _compiled(name, 2, 9, 7)
    i = pick % len(prog.instrs)
    value = int(prog.instrs[field][i]) + delta
    if field in ("dtype", "flags", "repeat", "chip"):
        value %= {"dtype": len(DType), "flags": 2, "repeat": 4, "chip": 2}[field]
    assert_agree(
        _mutated(prog, i, **{field: value}), _args(FUNCTIONS[name][1], 2, 9, 7, 1), functional
    )


def test_engine_output_never_written():
    prog = softmax_matmul_program()
    out = prog.symbol("out")
    symbols = tuple(
        dataclasses.replace(s, vids=s.vids + 1000) if s.name == "out" else s for s in prog.symbols
    )
    bad = dataclasses.replace(prog, symbols=symbols)
    e = _assert_same_violation(bad, softmax_matmul_args(), functional=True)
    assert e.index == -1 and e.instr == "output out[0]" and len(out.vids)


# --- hand-built programs ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Vec:
    """n vectors `stride` addresses apart in one slice group, with consecutive ids."""

    slice: int
    addr: int
    vid: int
    n: int
    dtype: str
    stride: int = 1

    @property
    def width(self) -> int:
        return DTYPE_BYTES[DTYPE_BY_NAME[self.dtype]]


class Asm:
    """Places vectors by hand on the teaching chip. Each step owns a window of cycles, and within
    a step operands use distinct slice groups and stream groups, so a step is valid by
    construction; `at` shifts a step so that it collides with the previous one on purpose."""

    WINDOW = 40

    def __init__(self):
        self.records: list[dict] = []
        self.symbols: list[Symbol] = []
        self.inputs: dict[str, np.ndarray] = {}
        self.tables: list[np.ndarray] = []
        self.free = np.zeros(HW.mem_slices, int)  # next free address per slice
        self.vid = 0
        self.t = 20

    def _alloc(self, slice_: int, n: int, dtype: str, addresses: int | None = None):
        """(first free address of `addresses` in slice group slice_, first of n new vector ids)"""
        w = DTYPE_BYTES[DTYPE_BY_NAME[dtype]]
        addr = int(self.free[slice_ : slice_ + w].max())
        self.free[slice_ : slice_ + w] = addr + (n if addresses is None else addresses)
        self.vid += n
        return addr, self.vid - n

    def data(self, values: np.ndarray, dtype: str, slice_: int, stride: int = 1) -> Vec:
        """An input of n vectors (values: (n, lanes)) in slice group `slice_`, `stride` addresses
        apart (the vector ids stay consecutive, as a strided READ expects)."""
        n = len(values)
        addr, vid = self._alloc(slice_, n, dtype, addresses=n * stride)
        name = f"in{len(self.symbols)}"
        vec = Vec(slice_, addr, vid, n, dtype, stride)
        self.symbols.append(self._symbol(name, "input", vec))
        with np.errstate(over="ignore"):  # huge values become inf in float16, on purpose
            self.inputs[name] = values.astype(np.dtype(dtype))
        return vec

    def output(self, vec: Vec) -> None:
        self.symbols.append(self._symbol(f"out{len(self.symbols)}", "output", vec))

    @staticmethod
    def _symbol(name: str, kind: str, v: Vec) -> Symbol:
        return Symbol(
            name,
            kind,
            (v.n, HW.lanes),
            v.dtype,
            np.full(v.n, v.slice, np.int32),
            np.arange(v.n, dtype=np.int32) * v.stride + v.addr,
            np.arange(v.vid, v.vid + v.n, dtype=np.int64),
        )

    def _emit(self, **record) -> None:
        self.records.append(record)

    def _read(self, v: Vec, stream: int, pos: int, t: int, n: int, period: int = 1) -> None:
        """READ n vectors of v so that repetition j passes position `pos` at cycle t + j*period."""
        distance = abs(pos - HW.slice_position(v.slice))
        self._emit(cycle=t - distance - HW.mem_read_latency_cycles, queue=v.slice, op=Op.READ,
                   dtype=DTYPE_BY_NAME[v.dtype], slice=v.slice, addr=v.addr, stride=v.stride,
                   repeat=n, period=period, sd=stream, vid=v.vid)  # fmt: skip

    def _write(self, dtype: str, stream: int, pos: int, t0: int, n: int, slice_: int,
               period: int = 1) -> Vec:  # fmt: skip
        """WRITE the n vectors entering `stream` at position `pos` from cycle t0 (one every
        `period` cycles) to slice_."""
        addr, vid = self._alloc(slice_, n, dtype)
        distance = abs(HW.slice_position(slice_) - pos)
        self._emit(cycle=t0 + distance, queue=slice_, op=Op.WRITE, dtype=DTYPE_BY_NAME[dtype],
                   slice=slice_, addr=addr, stride=1, repeat=n, period=period, s0=stream,
                   vid=vid)  # fmt: skip
        return Vec(slice_, addr, vid, n, dtype)

    @staticmethod
    def _stream(towards_east: bool, group: int) -> int:
        return (0 if towards_east else HW.streams_per_direction) + group

    def vxm(self, op: Op, operands: list[Vec], dtype: str, out_slice: int, imm: float | None = None,
            at: int | None = None) -> Vec:  # fmt: skip
        """op on the operands (all with the same n; imm replaces the second one) at the VXM."""
        t = self.t if at is None else at
        pos, n = HW.vxm_position, operands[0].n
        groups = {True: 0, False: 0}  # next free stream per direction
        streams = []
        for v in operands:
            east = HW.slice_position(v.slice) < pos
            s = -(-groups[east] // v.width) * v.width
            groups[east] = s + v.width
            assert groups[east] <= HW.streams_per_direction, "no stream group left"
            streams.append(self._stream(east, s))
            self._read(v, streams[-1], pos, t, n)
        out_east = HW.slice_position(out_slice) > pos
        width = DTYPE_BYTES[DTYPE_BY_NAME[dtype]]
        s_out = -(-groups[out_east] // width) * width
        assert s_out + width <= HW.streams_per_direction, "no stream group left for the result"
        sd = self._stream(out_east, s_out)
        s = streams + [-1] * (3 - len(streams))
        ins = [v.vid for v in operands] + [-1] * (3 - len(operands))
        if imm is not None:  # the immediate takes the second operand's place
            s = [s[0], -1, s[1]]
            ins = [ins[0], -1, ins[1]]
        lat = latency(HW, op)
        out = self._write(dtype, sd, pos, t + lat, n, out_slice)
        self._emit(cycle=t, queue=queue_vxm(HW), op=op, dtype=DTYPE_BY_NAME[dtype], repeat=n,
                   s0=s[0], s1=s[1], s2=s[2], sd=sd, imm=0.0 if imm is None else imm,
                   vid=out.vid, in0=ins[0], in1=ins[1], in2=ins[2])  # fmt: skip
        self.t = t + self.WINDOW + n
        return out

    def sxm(self, op: Op, v: Vec, out_slice: int, count: int = 0, table=None, dtype=None) -> Vec:
        """A reduction or permute at the west SXM; operand and result in west slices."""
        t, pos, n = self.t, HW.sxm_position(0), v.n
        dtype = dtype or v.dtype
        self._read(v, self._stream(False, 0), pos, t, n)
        table_index = -1
        if table is not None:
            table_index = len(self.tables)
            self.tables.append(np.asarray(table, np.int32))
        out = self._write(dtype, self._stream(True, 0), pos, t + latency(HW, op), n, out_slice)
        self._emit(cycle=t, queue=queue_sxm(HW, 0), op=op, dtype=DTYPE_BY_NAME[dtype], repeat=n,
                   s0=self._stream(False, 0), sd=self._stream(True, 0), count=count,
                   table=table_index, vid=out.vid, in0=v.vid)  # fmt: skip
        self.t = t + self.WINDOW + n
        return out

    def matmul(self, w: Vec, x: Vec, out_slice: int, count: int, transposed: bool, tile: int,
               plane: int = 0) -> Vec:  # fmt: skip
        """Install w's vectors as rows (or columns) of a tile of MXM `plane`, then x @ tile."""
        pos = HW.mxm_position(plane)
        east = pos > HW.vxm_position  # operands flow towards the plane, results away from it
        t = self.t
        self._read(w, self._stream(east, 0), pos, t, w.n)
        self._emit(cycle=t, queue=queue_mxm(HW, plane), op=Op.INSTALL, dtype=DTYPE_BY_NAME[w.dtype],
                   flags=FLAG_TRANSPOSED if transposed else 0, repeat=w.n, s0=self._stream(east, 0),
                   plane=plane, row=0, aux=tile, in0=w.vid)  # fmt: skip
        tm = t + w.n + latency(HW, Op.INSTALL)
        per = matmul_period(HW, x.width)  # the plane's pace for inputs of x's width
        self._read(x, self._stream(east, 4), pos, tm, x.n, per)
        out = self._write("float32", self._stream(not east, 0), pos, tm + latency(HW, Op.MATMUL),
                          x.n, out_slice, per)  # fmt: skip
        self._emit(cycle=tm, queue=queue_mxm(HW, plane), op=Op.MATMUL, dtype=DType.FLOAT32,
                   repeat=x.n, period=per, s0=self._stream(east, 4), sd=self._stream(not east, 0),
                   plane=plane, count=count, row=w.n, aux=tile, vid=out.vid,
                   in0=x.vid)  # fmt: skip
        self.t = tm + self.WINDOW + x.n * per
        return out

    def program(self) -> Program:
        """The records as queues: each queue's instructions in cycle order (a step shifted onto
        the previous one may put a queue's records out of order), with the delays that dispatch
        each at its cycle, and those cycles as the prediction the executors check."""
        tables = np.stack(self.tables) if self.tables else np.zeros((0, HW.lanes), np.int32)
        cycles = np.array([r["cycle"] for r in self.records], np.int64)
        instrs, cycles = encode(make_instrs([_untimed(r) for r in self.records]), cycles)
        return Program(
            hw=HW,
            instrs=instrs,
            tables=tables,
            symbols=tuple(self.symbols),
            consts={},
            sources=("hand-built",),
            predicted_cycles=0,
            words_used=int(self.free.max()),
            predicted=cycles,
        )


def _untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "cycle"}


SPECIALS = np.concatenate(
    [
        np.array(
            [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-40, -3e-39, 65504.0, 65520.0,
             65519.99, 1e38, -1e38, 2.0**-24, 2.0**-25, 3 * 2.0**-25, 1 + 2.0**-11,
             1 + 3 * 2.0**-11, 1 + 2.0**-8, 3e38],
            np.float32,
        ),
        np.array([0x7F800001, 0xFFA00000], np.uint32).view(np.float32),  # signalling NaNs
    ]
)  # fmt: skip


def _values(seed: int, n: int, specials: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = (rng.normal(size=(n, HW.lanes)) * rng.choice([0.5, 4.0, 300.0])).astype(np.float32)
    if specials:
        mask = rng.random(v.shape) < 0.3
        v[mask] = rng.choice(SPECIALS, size=int(mask.sum()))
    return v


WEST_F32, WEST_F32_B, EAST_F32, EAST_F32_B = 0, 4, 8, 12  # slice groups (west ones nearest VXM)
WEST_F16 = 6
VXM_OPS = [Op.ADD, Op.SUB, Op.MUL, Op.MAX, Op.MIN, Op.NEG, Op.EXP, Op.RSQRT, Op.CONVERT, Op.SELECT]
OUT_DTYPES = ["float32", "float16", "bfloat16", "bool"]


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(VXM_OPS), st.sampled_from(OUT_DTYPES), st.booleans()),
        min_size=1,
        max_size=3,
    ),
    n=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    specials=st.booleans(),
)
def test_engine_vxm_ops_bit_identical(ops, n, seed, specials):
    """Every VXM op and result type, operands from both sides of the chip, immediates, and each
    float32 result fed back as the first operand of the next op."""
    asm = Asm()
    a = asm.data(_values(seed, n, specials), "float32", WEST_F32)
    b = asm.data(_values(seed + 1, n, specials), "float32", EAST_F32)
    c = asm.data(_values(seed + 2, n, specials), "float16", WEST_F16)
    for op, dtype, use_imm in ops:
        operands = [a, b, c][: VXM_ARITY[op]]
        imm = None
        if use_imm and VXM_ARITY[op] >= 2:
            imm = float(SPECIALS[seed % len(SPECIALS)]) if specials else 0.75
            operands = [operands[0]] + operands[2:]
        out = asm.vxm(op, operands, dtype, WEST_F32, imm)  # slice 0's write port is free
        asm.output(out)
        if out.dtype == "float32":
            a = out
    # NaN payloads are open for two-NaN arithmetic, and exp's depends on the maths library.
    strict = not {Op.ADD, Op.SUB, Op.MUL, Op.EXP} & {op for op, _, _ in ops}
    assert not isinstance(assert_agree(asm.program(), asm.inputs, nan_payloads=strict), str)


@settings(max_examples=30, deadline=None)
@given(
    op=st.sampled_from([Op.REDUCE_SUM, Op.REDUCE_MAX, Op.PERMUTE]),
    count=st.integers(-20, 20),
    dtype=st.sampled_from(["float32", "float16"]),
    n=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    specials=st.booleans(),
)
def test_engine_sxm_ops_bit_identical(op, count, dtype, n, seed, specials):
    asm = Asm()
    v = asm.data(_values(seed, n, specials), dtype, WEST_F32)
    rng = np.random.default_rng(seed)
    table = rng.integers(-3, HW.lanes, HW.lanes) if op == Op.PERMUTE else None
    out_dtype = "bfloat16" if op == Op.REDUCE_SUM and seed % 3 == 0 else dtype
    asm.output(asm.sxm(op, v, WEST_F32_B, count=count, table=table, dtype=out_dtype))
    strict = op != Op.REDUCE_SUM  # a sum of two NaNs has an open payload (see assert_same)
    assert not isinstance(assert_agree(asm.program(), asm.inputs, nan_payloads=strict), str)


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 16),
    count=st.integers(0, 16),
    n=st.integers(1, 3),
    transposed=st.booleans(),
    plane=st.integers(0, 1),
    wdtype=st.sampled_from(["float16", "float32"]),
    seed=st.integers(0, 2**16),
)
def test_engine_matmul_bit_identical(rows, count, n, transposed, plane, wdtype, seed):
    """Installs as rows or columns on either plane, any count (too many rows is a violation)."""
    asm = Asm()
    wslice, xslice = (WEST_F32, WEST_F32_B) if plane == 0 else (EAST_F32, EAST_F32_B)
    w = asm.data(_values(seed, rows, False), wdtype, wslice)
    x = asm.data(_values(seed + 1, n, False), "float32", xslice)
    out_slice = EAST_F32 if plane == 0 else WEST_F32
    asm.output(asm.matmul(w, x, out_slice, count, transposed, tile=7, plane=plane))
    result = assert_agree(asm.program(), asm.inputs)
    assert isinstance(result, str) == (not transposed and count > rows), result


def test_engine_repeat_stride_and_tile_reuse():
    """Strided repeated READs feeding a repeated op, and two tiles in turn on one plane."""
    asm = Asm()
    x = asm.data(_values(1, 3, False), "float32", WEST_F32_B, stride=2)
    w = asm.data(_values(2, 6, False), "float16", WEST_F32)
    asm.output(asm.matmul(w, x, EAST_F32, 6, False, tile=1))
    asm.output(asm.matmul(w, x, EAST_F32, 3, True, tile=2))  # a new tile on the same plane
    t = asm.t
    asm._read(x, asm._stream(True, 0), HW.vxm_position, t, 3)
    out = asm._write("float32", asm._stream(True, 4), HW.vxm_position, t + 1, 3, EAST_F32_B)
    asm._emit(cycle=t, queue=queue_vxm(HW), op=Op.MUL, repeat=3, s0=0, sd=4, imm=3.0,
              vid=out.vid, in0=x.vid)  # fmt: skip
    asm.output(out)
    prog = asm.program()
    ref = assert_agree(prog, asm.inputs)
    assert not isinstance(ref, str), ref
    tripled = (asm.inputs["in0"].astype(np.float64) * 3.0).astype(np.float32)
    np.testing.assert_array_equal(ref.outputs["out4"], tripled)
    assert_agree(prog, asm.inputs, functional=False)


def test_engine_collisions_in_hand_built_programs():
    """A step placed on top of the previous one collides on a stream, a port or a unit."""
    for shift in range(-3, 4):
        asm = Asm()
        a = asm.data(_values(1, 2, False), "float32", WEST_F32)
        b = asm.data(_values(2, 2, False), "float32", EAST_F32)
        first = asm.t
        asm.output(asm.vxm(Op.ADD, [a, b], "float32", EAST_F32_B))
        asm.output(asm.vxm(Op.MUL, [a, b], "float32", EAST_F32_B, at=first + shift))
        prog = asm.program()
        # An ICU that dispatches two instructions a queue a cycle: only the units' resources.
        wide = dataclasses.replace(prog, hw=dataclasses.replace(HW, icu_issue_width=2))
        for functional in (True, False):
            result = assert_agree(prog, asm.inputs, functional)
            assert isinstance(result, str) == (abs(shift) < 2), (shift, result)
            if shift == 0:
                # Both steps' READs of a slice share a cycle, on one queue: the ICU refuses the
                # second before the read port sees it (an earlier, still correct violation) ...
                assert "dispatches at most 1 a cycle (icu_issue_width)" in result, result
                # ... and where the queue may dispatch both, the read port refuses it.
                result = assert_agree(wide, asm.inputs, functional)
                assert "rd port is already in use" in result, result


# --- rounding --------------------------------------------------------------------------------------

SPECIAL_BITS = [
    0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7F800001, 0x7FA00000, 0x7FC00000, 0xFFC00001,
    0x7FBFFFFF, 0x477FF000, 0x477FEFFF, 0x477FFFFF, 0x38800000, 0x387FFFFF, 0x33000000, 0x33000001,
    0x337FFFFF, 0x33800000, 0x00000001, 0x807FFFFF, 0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0x3F808000,
    0x3F818000, 0x3F801000, 0x3F803000, 0x00008000, 0x00018000,
]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
@example(SPECIAL_BITS)
def test_engine_rounding_matches_numpy_and_ml_dtypes(bits):
    """float16/bfloat16/bool rounding and NaN quieting by bits == NumPy and ml_dtypes casts."""
    f32 = np.array(bits, np.uint32).view(np.float32)
    with np.errstate(all="ignore"):
        half = f32.astype(np.float16)
        bf16 = f32.astype(ml_dtypes.bfloat16)
    for k, b in enumerate(bits):
        assert f32_bits_to_f16_bits(b) == half.view(np.uint16)[k], hex(b)
        assert f32_bits_to_bf16_bits(b) == bf16.view(np.uint16)[k], hex(b)
        h = int(half.view(np.uint16)[k])
        assert f16_bits_to_f32_bits(h) == half.astype(np.float32).view(np.uint32)[k], hex(h)
    for code, want in (
        (DType.FLOAT16, half.astype(np.float32)),
        (DType.BFLOAT16, bf16.astype(np.float32)),
        (DType.BOOL, (f32 != 0).astype(np.float32)),
        (DType.FLOAT32, f32),
    ):
        got = f32.copy()
        round_vector(got, int(code))
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    quieted = f32.copy()
    quiet_nans(quieted)
    with np.errstate(invalid="ignore"):
        via_f64 = f32.astype(np.float64).astype(np.float32)
    np.testing.assert_array_equal(quieted.view(np.uint32), via_f64.view(np.uint32))


def test_engine_every_half_roundtrips():
    halves = np.arange(2**16, dtype=np.uint16)
    f32 = halves.view(np.float16).astype(np.float32).view(np.uint32)
    assert all(
        f16_bits_to_f32_bits(int(h)) == f for h, f in zip(halves[::97], f32[::97], strict=True)
    )


def test_engine_ring_holds_every_live_diagonal():
    """The stream ring spans the diagonals one cycle can touch (see prepare.ring_size)."""
    for name in ("teaching", "groq-tsp-v1", "lpu-next"):
        hw = preset(name)
        largest = max(latency(hw, op) for op in Op)
        assert ring_size(hw, hw.width_positions - 1) >= 2 * (hw.width_positions - 1) + largest + 1
