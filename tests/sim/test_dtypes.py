"""The 1-byte weight types INT8 and FP8E4M3 (float8_e4m3fn) in both executors.

Rounding to them (engine bits, reference NumPy) against independent definitions: Python's
round-half-even with saturation for int8, ml_dtypes' cast for fp8. Then hand-built programs
(tests/sim/test_engine.py's assembler) that READ int8/fp8 weight tiles, INSTALL them into an MXM
plane and MATMUL float16 vectors through them, that CONVERT (or compute) on the VXM and reduce on
the SXM to both types, and that preload float32 host values into both: the executors agree bit for
bit and with NumPy. Test names say `engine` where the engine runs, so the
NUMBA_DISABLE_JIT=1 CI run (`-k engine`) covers them.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sim.engine.rounding import (
    f8e4m3_bits_to_f32_bits,
    f32_bits_to_f8e4m3_bits,
    round_vector,
)
from sim.isa import (
    DTYPE_BY_NAME,
    DTYPE_BYTES,
    DType,
    Op,
    disassemble_one,
    latency,
    make_instrs,
    matmul_period,
    queue_mxm,
)
from sim.reference import _round
from tests.sim.test_engine import HW, SPECIALS, Asm, assert_agree

F8 = ml_dtypes.float8_e4m3fn

# float32 bits at the edges of both types: fp8's largest (448), the NaN threshold (464 is a tie
# that rounds down to 448), half its smallest subnormal (2**-10) and a tie between subnormals
# (3 * 2**-10), infinities, quiet and signalling NaNs; int8's ties and saturation bounds.
EDGE_BITS = [
    0x43E00000, 0x43E80000, 0x43E80001, 0x43E7FFFF, 0xC3E80000, 0xC3E80001, 0x43F00000, 0x7F800000,
    0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FA00000, 0x3A800000, 0x3A800001, 0x3A7FFFFF,
    0xBA800000, 0x3B400000, 0x3C700000, 0x3C780000, 0x3F880000, 0x3F980000, 0x00000000, 0x80000000,
    0x00000001, 0x807FFFFF, 0x3F000000, 0xBF000000, 0x3FC00000, 0x40200000, 0x42FD0000, 0x42FF0000,
    0xC3008000, 0xC3010000, 0x42FEFFFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x4F000000,
]  # fmt: skip


def _int8(v: float) -> float:
    """The rule in sim/isa.py in plain Python: round() is half-to-even (and fails on inf)."""
    if math.isnan(v):
        return 0.0
    if math.isinf(v):
        return 127.0 if v > 0 else -128.0
    return float(max(-128, min(127, round(v))))


def _int8_oracle(x: np.ndarray) -> np.ndarray:
    return np.array([_int8(v) for v in x.ravel().tolist()], np.float32).reshape(x.shape)


def _check_rounding(f32: np.ndarray) -> None:
    with np.errstate(all="ignore"):
        f8 = f32.astype(F8)
        wants = {DType.INT8: _int8_oracle(f32), DType.FP8E4M3: f8.astype(np.float32)}
        for code, want in wants.items():
            engine = f32.copy()
            round_vector(engine, int(code))
            reference = _round(f32.astype(np.float64), code)
            np.testing.assert_array_equal(engine.view(np.uint32), want.view(np.uint32), code.name)
            np.testing.assert_array_equal(reference.view(np.uint32), want.view(np.uint32))
    for b, want in zip(f32.view(np.uint32).tolist(), f8.view(np.uint8).tolist(), strict=True):
        assert f32_bits_to_f8e4m3_bits(b) == want, hex(b)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(width=32), min_size=1, max_size=64))
@example([float(x) for x in SPECIALS])
def test_engine_int8_fp8_rounding_of_floats(values):
    """Any float32 (hypothesis favours NaN, inf, subnormals, huge values and small integers)."""
    _check_rounding(np.array(values, np.float32))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
@example(EDGE_BITS)
def test_engine_int8_fp8_rounding_of_bits(bits):
    """Any float32 bit pattern, NaN payloads included."""
    _check_rounding(np.array(bits, np.uint32).view(np.float32))


def test_engine_fp8_ties_and_every_value():
    """Every fp8 value, every midpoint between neighbours (ties go to even), one ulp either side
    of it, and every fp8 -> float32 widening."""
    every = np.arange(256, dtype=np.uint8).view(F8).astype(np.float32)
    finite = np.unique(every[np.isfinite(every)].astype(np.float64))
    mid = (finite[:-1] + finite[1:]) / 2  # exact in float32: fp8 has 4 significant bits
    mid = np.concatenate([mid, [464.0, -464.0]]).astype(np.float32)
    near = [np.nextafter(mid, np.float32(-np.inf)), np.nextafter(mid, np.float32(np.inf))]
    _check_rounding(np.concatenate([every, mid, *near]))
    for b in range(256):
        want = int(np.uint8(b).view(F8).astype(np.float32).view(np.uint32))
        assert f8e4m3_bits_to_f32_bits(b) == want, hex(b)


def test_engine_int8_ties_and_saturation():
    halves = np.arange(-131, 131, dtype=np.float32) + np.float32(0.5)
    near = [np.nextafter(halves, np.float32(-np.inf)), np.nextafter(halves, np.float32(np.inf))]
    _check_rounding(np.concatenate([halves, *near, np.float32([-0.0, -0.25, 1e30, -1e30])]))


# --- programs ----------------------------------------------------------------------------------------

WEIGHT_TYPES = ["int8", "float8_e4m3fn"]
W_SLICE, X_SLICE, OUT_WEST, OUT_EAST = 1, 4, 0, 8  # an odd slice: a 1-byte group needs no alignment


def _weights(seed: int, rows: int, dtype: str) -> np.ndarray:
    """(rows, lanes) values of `dtype`, spanning its range (fp8 up to its largest, 448)."""
    rng = np.random.default_rng(seed)
    if dtype == "int8":
        return rng.integers(-128, 128, (rows, HW.lanes)).astype(np.int8)
    scale = rng.choice([0.01, 1.0, 100.0])
    return np.clip(rng.normal(size=(rows, HW.lanes)) * scale, -448, 448).astype(F8)


def _x(seed: int, n: int) -> np.ndarray:
    # |x| < 32 keeps every product and sum exact in float64, so any summation order (NumPy's
    # BLAS, the executors' sequential loop) gives the same x @ W.
    v = np.random.default_rng(seed).normal(size=(n, HW.lanes)) * 4
    return np.clip(v, -31, 31).astype(np.float16)


def _expected(x: np.ndarray, tile: np.ndarray, count: int) -> np.ndarray:
    """x[:, :count] @ W[:count, :] in float64, rounded to float32."""
    x64, w64 = x.astype(np.float64), tile.astype(np.float64)
    return (x64[:, :count] @ w64[:count, :]).astype(np.float32)


def _run_both(asm: Asm):
    ref = assert_agree(asm.program(), asm.inputs)
    assert not isinstance(ref, str), ref
    assert_agree(asm.program(), asm.inputs, functional=False)
    return ref


@settings(max_examples=30, deadline=None)
@given(
    wdtype=st.sampled_from(WEIGHT_TYPES),
    rows=st.integers(1, 16),
    count=st.integers(0, 16),
    n=st.integers(1, 3),
    transposed=st.booleans(),
    plane=st.integers(0, 1),
    seed=st.integers(0, 2**16),
)
def test_engine_matmul_through_1_byte_tile(wdtype, rows, count, n, transposed, plane, seed):
    """READ int8/fp8 vectors, INSTALL them (one repeated instruction) as rows or columns, MATMUL
    float16 vectors: both executors give x @ W bit for bit."""
    count = count if transposed else min(count, rows)
    asm = Asm()
    w = asm.data(_weights(seed, rows, wdtype), wdtype, W_SLICE if plane == 0 else W_SLICE + 8)
    x = asm.data(_x(seed + 1, n), "float16", X_SLICE if plane == 0 else X_SLICE + 8)
    asm.output(asm.matmul(w, x, OUT_EAST if plane == 0 else OUT_WEST, count, transposed, tile=3,
                          plane=plane))  # fmt: skip
    ref = _run_both(asm)
    tile = np.zeros((HW.lanes, HW.lanes))
    if transposed:
        tile[:, :rows] = asm.inputs["in0"].astype(np.float64).T
    else:
        tile[:rows] = asm.inputs["in0"].astype(np.float64)
    want = _expected(asm.inputs["in1"], tile, count)
    np.testing.assert_array_equal(ref.outputs["out2"].view(np.uint32), want.view(np.uint32))


def test_engine_install_int8_and_fp8_rows_into_one_tile():
    """Two repeated INSTALLs fill one tile: int8 vectors as rows 0..2 (vid + j -> row j), fp8
    vectors as rows 3..6 (row field 3); a MATMUL uses all seven rows."""
    asm = Asm()
    wi = asm.data(_weights(1, 3, "int8"), "int8", W_SLICE)
    wf = asm.data(_weights(2, 4, "float8_e4m3fn"), "float8_e4m3fn", W_SLICE + 2)
    x = asm.data(_x(3, 2), "float16", X_SLICE)
    t, pos, queue = asm.t, HW.mxm_position(0), queue_mxm(HW, 0)
    east = pos > HW.vxm_position  # operands flow towards the plane, results away from it
    for first, w, group in ((0, wi, 0), (3, wf, 1)):
        stream = asm._stream(east, group)
        asm._read(w, stream, pos, t, w.n)
        asm._emit(cycle=t, queue=queue, op=Op.INSTALL, dtype=DTYPE_BY_NAME[w.dtype], repeat=w.n,
                  s0=stream, plane=0, row=first, aux=5, in0=w.vid)  # fmt: skip
        t += w.n
    tm = t + latency(HW, Op.INSTALL)
    s0, sd = asm._stream(east, 4), asm._stream(not east, 0)
    per = matmul_period(HW, x.width)  # float16 inputs: the plane's FP16 pace
    asm._read(x, s0, pos, tm, x.n, per)
    out = asm._write("float32", sd, pos, tm + latency(HW, Op.MATMUL), x.n, OUT_WEST, per)
    asm._emit(cycle=tm, queue=queue, op=Op.MATMUL, dtype=DType.FLOAT32, repeat=x.n, period=per,
              s0=s0, sd=sd, plane=0, count=7, row=7, aux=5, vid=out.vid, in0=x.vid)  # fmt: skip
    asm.output(out)
    ref = _run_both(asm)
    tile = np.zeros((HW.lanes, HW.lanes))
    tile[:3] = asm.inputs["in0"].astype(np.float64)
    tile[3:7] = asm.inputs["in1"].astype(np.float64)
    want = _expected(asm.inputs["in2"], tile, 7)
    np.testing.assert_array_equal(ref.outputs["out3"].view(np.uint32), want.view(np.uint32))


@settings(max_examples=30, deadline=None)
@given(
    dtype=st.sampled_from(WEIGHT_TYPES),
    op=st.sampled_from([Op.CONVERT, Op.MUL, Op.ADD]),
    n=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_engine_vxm_results_in_1_byte_types(dtype, op, n, seed):
    """A VXM op whose dtype is int8/fp8 rounds its float32 result so, in both executors, and
    writes a 1-word vector; its values are NumPy's (ml_dtypes') rounding of the float32 result."""
    rng = np.random.default_rng(seed)
    v = (rng.normal(size=(n, HW.lanes)) * rng.choice([0.3, 40.0, 600.0])).astype(np.float32)
    mask = rng.random(v.shape) < 0.2
    v[mask] = rng.choice(SPECIALS, size=int(mask.sum()))
    asm = Asm()
    a = asm.data(v, "float32", 0)
    imm = None if op == Op.CONVERT else 1.5
    asm.output(asm.vxm(op, [a], dtype, OUT_EAST + 1, imm=imm))
    ref = _run_both(asm)
    with np.errstate(all="ignore"):
        f32 = {Op.CONVERT: v, Op.MUL: v * np.float32(1.5), Op.ADD: v + np.float32(1.5)}[op]
        want = _int8_oracle(f32) if dtype == "int8" else f32.astype(F8).astype(np.float32)
    np.testing.assert_array_equal(ref.outputs["out1"].view(np.uint32), want.view(np.uint32))


@settings(max_examples=20, deadline=None)
@given(
    dtype=st.sampled_from(WEIGHT_TYPES),
    op=st.sampled_from([Op.REDUCE_SUM, Op.REDUCE_MAX]),
    count=st.integers(1, 16),
    seed=st.integers(0, 2**16),
)
def test_engine_sxm_reductions_in_1_byte_types(dtype, op, count, seed):
    """An SXM reduction whose dtype is int8/fp8 rounds the float32 sum (max) so."""
    v = (np.random.default_rng(seed).normal(size=(2, HW.lanes)) * 60).astype(np.float32)
    asm = Asm()
    asm.output(asm.sxm(op, asm.data(v, "float32", X_SLICE), W_SLICE, count=count, dtype=dtype))
    ref = _run_both(asm)
    v64 = v[:, :count].astype(np.float64)
    # Sums in lane order, as the executors (cumsum is sequential; np.sum is pairwise).
    reduced64 = np.cumsum(v64, axis=1)[:, -1] if op == Op.REDUCE_SUM else v64.max(axis=1)
    reduced = reduced64.astype(np.float32)
    want = _int8_oracle(reduced) if dtype == "int8" else reduced.astype(F8).astype(np.float32)
    want = np.repeat(want[:, None], HW.lanes, axis=1)
    np.testing.assert_array_equal(ref.outputs["out1"].view(np.uint32), want.view(np.uint32))


def test_engine_preload_rounds_to_the_symbol_type():
    """float32 host values for int8/fp8 symbols are rounded on preload, as any VXM result."""
    rng = np.random.default_rng(0)
    v = (rng.normal(size=(2, HW.lanes)) * 300).astype(np.float32)
    v[0, :8] = SPECIALS[:8]
    with np.errstate(all="ignore"):
        wants = {"int8": _int8_oracle(v), "float8_e4m3fn": v.astype(F8).astype(np.float32)}
    for dtype, want in wants.items():
        asm = Asm()
        a = asm.data(np.zeros_like(v), dtype, W_SLICE)
        asm.inputs["in0"] = v  # the host hands float32, not the symbol's type
        asm.output(asm.vxm(Op.CONVERT, [a], "float32", OUT_EAST))
        ref = _run_both(asm)
        np.testing.assert_array_equal(ref.outputs["out1"].view(np.uint32), want.view(np.uint32))


def test_1_byte_types_in_the_isa_tables_and_listing():
    assert DTYPE_BY_NAME["int8"] == DType.INT8 and DTYPE_BY_NAME["float8_e4m3fn"] == DType.FP8E4M3
    assert DTYPE_BYTES[DType.INT8] == DTYPE_BYTES[DType.FP8E4M3] == 1
    ins = make_instrs(
        [
            dict(op=Op.INSTALL, dtype=DType.INT8, queue=queue_mxm(HW, 0), s0=0, plane=0, aux=1),
            dict(op=Op.READ, dtype=DType.FP8E4M3, queue=W_SLICE, slice=W_SLICE, sd=0, vid=4),
        ]
    )
    assert [disassemble_one(HW, i).split()[0] for i in ins] == ["INSTALL.i8", "READ.f8e4m3"]
