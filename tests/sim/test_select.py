"""Data-dependent selection with static timing: SXM TOPK and indirect READs (sim/isa.py).

TOPK against jax.lax.top_k (values with ties, signed zeros, infinities and NaNs of both signs);
a mixture-of-experts step that routes with TOPK and INDIRECT-READs the chosen experts' weight tiles
into an MXM plane, against x @ W[e] in NumPy, with the same cycles whatever the router says; and
the select-register checks (read too early, bad register, bad TOPK fields). Every program runs in
both executors, which must agree bit for bit (tests/sim/test_engine.py's `assert_agree`); test
names say `select`, so the NUMBA_DISABLE_JIT=1 CI run (`-k "engine or select"`) covers them.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import run_engine
from sim.isa import (
    FLAG_INDIRECT,
    SELECT_REGISTERS,
    DType,
    Op,
    disassemble_one,
    latency,
    queue_sxm,
)
from sim.reference import run_reference
from tests.sim.test_engine import HW, Asm, Vec, _assert_same_violation, assert_agree

WEST_F32, WEST_F32_B, EAST_I8, EAST_F32_B = 0, 4, 8, 12  # slice groups
TOPK_LATENCY = latency(HW, Op.TOPK)

# Values that tie and that order in surprising ways: signed zeros, infinities, NaNs of both signs
# (jax.lax.top_k orders by IEEE 754 totalOrder: -NaN < -inf < ... < -0.0 < +0.0 < ... < +inf < +NaN).
POOL = np.array(
    [0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e-40, 3e38, np.inf, -np.inf, np.nan, -np.nan],
    np.float32,
)


def topk(asm: Asm, v: Vec, k: float, count: int, out_slice: int, table: int = 0,
         at: int | None = None, result_group: int = 4) -> Vec:  # fmt: skip
    """TOPK of v's vectors at the west SXM (v and the result in west slices); the result on
    eastward stream group `result_group`."""
    t = asm.t if at is None else at
    pos = HW.sxm_position(0)
    s_in, sd = asm._stream(False, 0), asm._stream(True, result_group)
    asm._read(v, s_in, pos, t, v.n)
    out = asm._write("float32", sd, pos, t + TOPK_LATENCY, v.n, out_slice)
    asm._emit(cycle=t, queue=queue_sxm(HW, 0), op=Op.TOPK, dtype=DType.FLOAT32, repeat=v.n,
              s0=s_in, sd=sd, count=count, imm=k, table=table, vid=out.vid, in0=v.vid)  # fmt: skip
    asm.t = t + asm.WINDOW + v.n
    return out


def expert_matmul(asm: Asm, experts: Vec, rows: int, register: int, x: Vec, tile: int) -> Vec:
    """x @ (the expert tile select register `register` names) on the east MXM plane: the tiles
    are `rows` vectors each, one after another in `experts`."""
    first = len(asm.records)
    unit0 = Vec(experts.slice, experts.addr, experts.vid, rows, experts.dtype)
    out = asm.matmul(unit0, x, EAST_F32_B, rows, False, tile=tile, plane=1)
    read = asm.records[first]  # the READ of the tile: make it relative to the selected unit
    assert read["op"] == Op.READ and read["vid"] == experts.vid
    read.update(flags=FLAG_INDIRECT, row=register, count=rows, aux=rows)
    return out


def _stored(values: np.ndarray) -> np.ndarray:
    """float32 values as SRAM holds them (preloading quiets signalling NaNs)."""
    with np.errstate(invalid="ignore"):
        return values.astype(np.float64).astype(np.float32)


def _top_k(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    values, indices = jax.lax.top_k(x, k)
    return np.asarray(indices), np.asarray(values)


# --- TOPK ------------------------------------------------------------------------------------------


def _check_topk(values: np.ndarray, dtype: str, k: int, count: int, table: int) -> None:
    """TOPK of each row of `values` (n, lanes) in both executors == jax.lax.top_k, bit for bit."""
    n = len(values)
    asm = Asm()
    v = asm.data(values, dtype, WEST_F32)
    out = topk(asm, v, k, count, WEST_F32_B, table)
    asm.output(out)
    prog = asm.program()
    ref = assert_agree(prog, asm.inputs)
    assert not isinstance(ref, str), ref
    assert ref.counts["sxm"] == n
    got = ref.outputs[f"out{len(asm.symbols) - 1}"]
    for row, x in zip(got, _stored(asm.inputs["in0"].astype(np.float32)), strict=True):
        indices, top = _top_k(x[:count], k)
        np.testing.assert_array_equal(row[:k], indices.astype(np.float32))
        np.testing.assert_array_equal(row[k : 2 * k].view(np.uint32), top.view(np.uint32))
        np.testing.assert_array_equal(row[2 * k :], 0.0)
    assert_agree(prog, asm.inputs, functional=False)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 2),
    count=st.integers(1, HW.lanes),
    dtype=st.sampled_from(["float32", "float16"]),
)
def test_select_topk_matches_jax(data, n, count, dtype):
    pick = st.integers(0, len(POOL) - 1)
    picks = data.draw(st.lists(pick, min_size=HW.lanes * n, max_size=HW.lanes * n))
    k = data.draw(st.integers(1, min(count, HW.lanes // 2, SELECT_REGISTERS)))
    table = data.draw(st.integers(0, SELECT_REGISTERS - k))
    _check_topk(POOL[np.array(picks)].reshape(n, HW.lanes), dtype, k, count, table)


def test_select_topk_orders_specials_like_jax():
    """Every lane a NaN, infinity or zero of either sign, many ties, the largest k."""
    values = np.stack([POOL[np.arange(HW.lanes) % len(POOL)], POOL[-np.arange(HW.lanes) % 5]])
    _check_topk(values, "float32", HW.lanes // 2, HW.lanes, SELECT_REGISTERS - HW.lanes // 2)


@pytest.mark.parametrize(
    "k, count, table",
    [(0, 4, 0), (5, 4, 0), (2.5, 4, 0), (np.nan, 4, 0), (9, 16, 0), (2, 17, 0), (2, 4, 15),
     (2, 4, -1)],
)  # fmt: skip
def test_select_malformed_topk_is_a_violation(k, count, table):
    asm = Asm()
    v = asm.data(np.arange(HW.lanes, dtype=np.float32)[None], "float32", WEST_F32)
    asm.output(topk(asm, v, k, count, WEST_F32_B, table))
    for functional in (True, False):
        e = _assert_same_violation(asm.program(), asm.inputs, functional)
        assert e.conflict.startswith(f"TOPK k={float(k):g} of count={count}"), e.conflict


# --- routing to experts ----------------------------------------------------------------------------

EXPERTS, ROWS = 4, HW.lanes


def _moe(router_at: int | None = None, register: int = 0) -> tuple[Asm, dict]:
    """TOPK (k=2) of a router over 4 experts into sel0, sel1; then x @ W[sel0] and x @ W[sel1]
    (int8 expert tiles, integer x: every sum is exact)."""
    rng = np.random.default_rng(0)
    asm = Asm()
    router = asm.data(np.zeros((1, HW.lanes), np.float32), "float32", WEST_F32)
    weights = rng.integers(-128, 128, (EXPERTS * ROWS, HW.lanes))
    experts = asm.data(weights.astype(np.float32), "int8", EAST_I8)
    x = asm.data(rng.integers(-8, 9, (2, HW.lanes)).astype(np.float32), "float32", EAST_F32_B)
    t = asm.t  # the experts' steps keep their cycles wherever the router's TOPK goes
    asm.output(topk(asm, router, 2, EXPERTS, WEST_F32_B, table=0, at=router_at))
    asm.t = t + asm.WINDOW + 1
    asm.output(expert_matmul(asm, experts, ROWS, register, x, tile=1))
    asm.output(expert_matmul(asm, experts, ROWS, register + 1, x, tile=2))
    return asm, {"router": router, "x": x}


def _with_router(asm: Asm, scores) -> dict:
    inputs = dict(asm.inputs)
    router = np.zeros((1, HW.lanes), np.float32)
    router[0, :EXPERTS] = scores
    router[0, EXPERTS:] = 100.0  # beyond `count`: never selected
    inputs["in0"] = router
    return inputs


@pytest.mark.parametrize(
    "scores", [[0.1, 0.9, -0.5, 0.3], [2.0, -1.0, 0.0, 2.0], [-3.0, -2.0, -1.0, -4.0]]
)
def test_select_routes_to_the_top_experts(scores):
    asm, _ = _moe()
    prog = asm.program()
    inputs = _with_router(asm, scores)
    ref = assert_agree(prog, inputs)
    assert not isinstance(ref, str), ref
    chosen, _ = _top_k(np.array(scores, np.float32), 2)
    w = inputs["in1"].astype(np.float64).reshape(EXPERTS, ROWS, HW.lanes)
    x = inputs["in2"].astype(np.float64)
    topk_out, first, second = (ref.outputs[f"out{k}"] for k in (3, 4, 5))
    np.testing.assert_array_equal(topk_out[0, :2], chosen)
    np.testing.assert_array_equal(first, (x @ w[chosen[0]]).astype(np.float32))
    np.testing.assert_array_equal(second, (x @ w[chosen[1]]).astype(np.float32))
    # Static timing: the schedule does not depend on the router; timing mode reads unit 0.
    timing = assert_agree(prog, None, functional=False)
    assert timing.cycles == ref.cycles and timing.counts == ref.counts


def test_select_router_changes_the_expert_not_the_cycles():
    asm, _ = _moe()
    prog = asm.program()
    runs = [run_engine(prog, _with_router(asm, s)) for s in ([1, 0, 0, 0], [0, 0, 0, 1])]
    assert runs[0].cycles == runs[1].cycles == run_reference(prog, None, functional=False).cycles
    assert not np.array_equal(runs[0].outputs["out4"], runs[1].outputs["out4"])


def test_select_disassembly():
    asm, _ = _moe()
    ins = asm.program().instrs
    listing = [disassemble_one(HW, r) for r in ins if r["op"] in (Op.TOPK, Op.READ)]
    assert any(s.startswith("TOPK.f32 W0[:4] k=2 -> E4 sel0 vid=") for s in listing), listing
    indirect = [s for s in listing if "sel1" in s and s.startswith("READ")]
    assert indirect == ["READ.i8 x16 MEME0[0 + sel1*16] -> E0 stride 1 vid=1 + sel1*16"], listing


# --- select-register checks ------------------------------------------------------------------------


def _first_indirect_read(asm: Asm) -> int:
    return next(r["cycle"] for r in asm.records if r.get("flags", 0) & FLAG_INDIRECT)


@pytest.mark.parametrize("late", [0, 1, 5])
def test_select_read_before_topk_is_a_violation(late):
    """The TOPK's write lands `late` cycles after the first indirect READ of its register."""
    base, _ = _moe()
    read = _first_indirect_read(base)
    asm, _ = _moe(router_at=read - TOPK_LATENCY + late)
    inputs = _with_router(asm, [0.0, 1.0, 0.0, 0.0])
    for functional in (True, False):
        if late == 0:  # exactly when it lands: fine
            assert not isinstance(assert_agree(asm.program(), inputs, functional), str)
            continue
        e = _assert_same_violation(asm.program(), inputs if functional else None, functional)
        assert e.conflict == f"reads select register 0 before TOPK writes it at cycle {read + late}"
        assert e.cycle == read and e.instr.startswith("READ.i8 x16 MEME0[0 + sel0*16]")


def test_select_unwritten_register_reads_zero_and_bad_register_fails():
    asm, _ = _moe(register=5)  # no TOPK writes sel5, sel6: both read unit 0
    inputs = _with_router(asm, [0.0, 0.0, 0.0, 1.0])
    ref = assert_agree(asm.program(), inputs)
    x, w = inputs["in2"].astype(np.float64), inputs["in1"].astype(np.float64)[:ROWS]
    np.testing.assert_array_equal(ref.outputs["out4"], (x @ w).astype(np.float32))
    asm, _ = _moe(register=SELECT_REGISTERS - 1)  # the second READ names register 16
    e = _assert_same_violation(asm.program(), inputs, True)
    assert e.conflict == f"select register {SELECT_REGISTERS} is outside 0..{SELECT_REGISTERS - 1}"


@pytest.mark.parametrize("unit_words, expected", [(200, "holds nothing yet"), (600, "outside")])
def test_select_unit_beyond_the_data(unit_words, expected):
    """A selected unit past the stored ones: an empty word, or past the slice (1024 words)."""
    asm, _ = _moe()
    for r in asm.records:
        if r.get("flags", 0) & FLAG_INDIRECT:
            r["count"] = unit_words
    inputs = _with_router(asm, [0.0, 0.0, 1.0, 3.0])  # units 3 and 2
    result = assert_agree(asm.program(), inputs)
    assert isinstance(result, str) and expected in result, result
    assert not isinstance(assert_agree(asm.program(), None, functional=False), str)


def test_select_later_topk_replaces_the_selection():
    """Two routers in turn write sel0; each expert matmul uses the latest selection."""
    rng = np.random.default_rng(1)
    asm = Asm()
    routers = asm.data(np.zeros((2, HW.lanes), np.float32), "float32", WEST_F32)
    weights = rng.integers(-128, 128, (EXPERTS * ROWS, HW.lanes)).astype(np.float32)
    experts = asm.data(weights, "int8", EAST_I8)
    x = asm.data(rng.integers(-8, 9, (1, HW.lanes)).astype(np.float32), "float32", EAST_F32_B)
    for k in range(2):
        router = Vec(routers.slice, routers.addr + k, routers.vid + k, 1, "float32")
        topk(asm, router, 1, EXPERTS, WEST_F32_B)
        asm.output(expert_matmul(asm, experts, ROWS, 0, x, tile=k))
    inputs = dict(asm.inputs)
    inputs["in0"] = np.zeros((2, HW.lanes), np.float32)
    inputs["in0"][0, 2] = inputs["in0"][1, 1] = 1.0
    ref = assert_agree(asm.program(), inputs)
    w = weights.astype(np.float64).reshape(EXPERTS, ROWS, HW.lanes)
    for out, e in (("out3", 2), ("out4", 1)):
        np.testing.assert_array_equal(ref.outputs[out], (inputs["in2"] @ w[e]).astype(np.float32))
