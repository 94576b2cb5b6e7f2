"""GPU baselines: the spec table, the calibrated time model, its fit, and its properties."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lpusim.compare import model_dims
from models import get_config
from sim.baselines import (
    FIT_ERRORS,
    FITTED,
    GPUS,
    DoesNotFit,
    Efficiency,
    ModelDims,
    UnknownGPU,
    UnsupportedFormat,
    calibration,
    decode_time,
    get_gpu,
    memory_per_device,
    min_devices,
    prefill_time,
    valid_tp,
)
from sim.baselines.fit import evaluate, fit
from sim.baselines.measurements import CALIBRATION_GPU, CALIBRATION_POINTS
from sim.baselines.model import decode_demand
from sim.baselines.specs import GB, TB, TFLOP, display_row
from sim.errors import LpuError

ROOT = Path(__file__).resolve().parents[2]


def dims_of(name: str) -> ModelDims:
    return model_dims(get_config(name))


# --- the spec table -------------------------------------------------------------------------------


def test_every_gpu_of_the_issue_is_in_the_table():
    assert set(GPUS) == {
        "a100-40gb",
        "a100-80gb",
        "h100-sxm",
        "h100-pcie",
        "h200",
        "b200",
        "l4",
        "l40s",
        "mi300x",
    }


@pytest.mark.parametrize("name", list(GPUS))
def test_spec_units_and_sources(name):
    g = GPUS[name]
    # Units: bytes, bytes/s, FLOP/s, seconds; plausible ranges catch a GB/GiB or TB/GB slip.
    assert 16 * GB <= g.memory_bytes <= 200 * GB
    assert 0.2 * TB <= g.bandwidth_bytes_per_s <= 10 * TB
    assert 0.75 * g.bandwidth_bytes_per_s <= g.achievable_bandwidth_bytes_per_s
    assert g.achievable_bandwidth_bytes_per_s <= g.bandwidth_bytes_per_s
    assert 100 * TFLOP <= g.flops_per_s["bf16"] <= 3000 * TFLOP
    if "fp8" in g.flops_per_s:  # FP8 about doubles BF16 on every GPU of the table
        assert g.flops_per_s["fp8"] == pytest.approx(2 * g.flops_per_s["bf16"], rel=0.02)
    assert 1e-6 <= g.allreduce_latency_s <= 1e-4
    assert 10 * GB <= g.allreduce_bus_bytes_per_s <= g.link_bytes_per_s
    assert "REFERENCE.md" in g.source and "BabelStream" in g.source
    row = display_row(g)
    assert row["memory_gb"] == pytest.approx(g.memory_bytes / 1e9)
    assert row["source"] == g.source


def test_figures_match_the_reference_table():
    # shared/REFERENCE.md, GPUs table and NCCL line.
    h100, a100 = GPUS["h100-sxm"], GPUS["a100-80gb"]

    def figures(g, *names):
        return pytest.approx([getattr(g, n) for n in names], rel=1e-12)

    names = ("memory_bytes", "bandwidth_bytes_per_s", "allreduce_bus_bytes_per_s")
    names += ("allreduce_latency_s",)
    assert figures(h100, *names) == [80e9, 3.35e12, 479e9, 26e-6]
    assert h100.flops_per_s == {"bf16": 989e12, "fp8": 1979e12}
    assert figures(a100, *names) == [80e9, 2.039e12, 231e9, 45e-6]
    assert a100.flops_per_s == {"bf16": 312e12}  # no FP8 tensor cores
    assert GPUS["mi300x"].memory_bytes == 192e9
    # BabelStream midpoints: A100 1.61-1.75 TB/s, H100 2.90-3.18, H200 4.01-4.48.
    assert 1.61e12 <= a100.achievable_bandwidth_bytes_per_s <= 1.75e12
    assert 2.90e12 <= h100.achievable_bandwidth_bytes_per_s <= 3.18e12
    assert 4.01e12 <= GPUS["h200"].achievable_bandwidth_bytes_per_s <= 4.48e12
    # Every unmeasured figure says how it was derived.
    for g in GPUS.values():
        if g.name not in ("a100-80gb", "h100-sxm"):
            assert g.derived


def test_unknown_gpu_names_the_known_ones():
    with pytest.raises(UnknownGPU, match="unknown GPU 'h100'.*h100-sxm"):
        get_gpu("h100")


def test_calibration_device_is_the_power_capped_a100():
    assert CALIBRATION_GPU.achievable_bandwidth_bytes_per_s == 1.7e12  # gpt-fast's 1.7 TB/s
    assert CALIBRATION_GPU.bandwidth_bytes_per_s == GPUS["a100-80gb"].bandwidth_bytes_per_s


# --- calibration ----------------------------------------------------------------------------------


def test_calibration_points_transcribed():
    assert len(CALIBRATION_POINTS) == 16 == len(FIT_ERRORS)
    by = {(p.model, p.tp, p.weights): p.tokens_per_s for p in CALIBRATION_POINTS}
    assert by[("llama2-7b", 1, "bf16")] == 104.9
    assert by[("llama2-70b", 8, "bf16")] == 62.5
    assert by[("mixtral-8x7b", 4, "bf16")] == 155.4
    assert all("|" in p.row for p in CALIBRATION_POINTS)


def test_model_reproduces_every_point_within_its_reported_error():
    rows = evaluate(FITTED, CALIBRATION_POINTS, dims_of)
    for r, (model, setup, measured, predicted, err) in zip(rows, FIT_ERRORS, strict=True):
        assert (r["model"], r["setup"], r["measured_tokens_per_s"]) == (model, setup, measured)
        # The stored error is rounded to 4 decimals.
        assert abs(r["rel_error"]) <= abs(err) + 5e-5, (model, setup)
        assert r["predicted_tokens_per_s"] == pytest.approx(predicted, abs=0.05)
    errors = [abs(e[-1]) for e in FIT_ERRORS]
    assert max(errors) == pytest.approx(calibration.FIT_MAX_ERROR, abs=1e-4)
    assert max(errors) < 0.10  # the model explains every point within 10%


def test_stored_values_are_what_the_fit_gives():
    result = fit(CALIBRATION_POINTS, dims_of)
    assert result.efficiency == FITTED
    assert result.max_abs_rel_error == pytest.approx(calibration.FIT_MAX_ERROR, abs=1e-4)
    assert all(r["bound"] != "compute" for r in result.rows)


def test_fit_recovers_parameters_from_synthetic_points():
    truth = Efficiency(0.8, 30e-6, 0.9, 0.7, 0.3)
    rows = evaluate(truth, CALIBRATION_POINTS, dims_of)
    synthetic = [
        dataclasses.replace(p, tokens_per_s=r["predicted_tokens_per_s"])
        for p, r in zip(CALIBRATION_POINTS, rows, strict=True)
    ]
    result = fit(synthetic, dims_of)
    for name in ("bandwidth_efficiency", "layer_overhead_s", "int8_efficiency"):
        assert getattr(result.efficiency, name) == pytest.approx(getattr(truth, name), rel=1e-3)
    assert result.max_abs_rel_error < 1e-3


def test_fit_refuses_points_that_do_not_determine_every_parameter():
    bf16_only = [p for p in CALIBRATION_POINTS if p.weights == "bf16"]
    with pytest.raises(LpuError, match="int8"):
        fit(bf16_only, dims_of)


def test_calibration_script_runs_and_finds_the_stored_values_current():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "calibrate_gpu.py"), "--small"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "up to date" in out.stdout and "llama2-70b" in out.stdout


# --- mechanisms -----------------------------------------------------------------------------------


def test_memory_wall_arithmetic():
    # Llama-2-70B in 16 bits is ~138 GB; at 3.35 TB/s no step is faster than 138 GB / 3.35 TB/s.
    dims = dims_of("llama2-70b")
    t = decode_time("h100-sxm", dims, weights="fp16", tp=2, batch=1, context=1024)
    assert t.bound == "memory bandwidth"
    assert 2 * dims.params / 3.35e12 == pytest.approx(1 / 24.3, rel=0.01)  # ~24 tokens/s
    assert t.step_s > t.bytes_per_device / GPUS["h100-sxm"].bandwidth_bytes_per_s
    assert 0.5 < t.bandwidth_utilisation < 1


def test_mixtral_reads_only_the_routed_experts_at_batch_1():
    dims = dims_of("mixtral-8x7b")
    d = decode_demand(dims, weights="bf16", tp=1, batch=1, context=1)
    active = 12.9e9  # Mistral AI: 12.9B active parameters per token (the registry's source)
    assert d.weight_bytes == pytest.approx(2 * active, rel=0.02)
    assert dims.experts_touched(1) == 2
    assert dims.experts_touched(64) == pytest.approx(8, rel=0.01)  # a big batch reads them all


def test_prefill_is_compute_bound_and_decode_memory_bound():
    dims = dims_of("llama2-7b")
    p = prefill_time("h100-sxm", dims, weights="bf16", prompt=2048)
    d = decode_time("h100-sxm", dims, weights="bf16", context=2048)
    assert (p.bound, d.bound) == ("compute", "memory bandwidth")
    # Past the crossover batch (~ peak FLOP/s / bandwidth, REFERENCE.md "Formulas") decode too.
    big = decode_time("a100-80gb", dims, weights="bf16", batch=1024, context=1)
    assert big.bound == "compute" and big.compute_s > big.memory_s


def test_quantised_weights_read_fewer_bytes_but_lose_efficiency():
    dims = dims_of("llama2-7b")
    times = {w: decode_time("a100-80gb", dims, weights=w, context=128) for w in ("bf16", "int8")}
    ratio = times["int8"].bytes_per_device / times["bf16"].bytes_per_device
    assert ratio == pytest.approx(0.5, abs=0.01)
    assert times["int8"].memory_s > ratio * times["bf16"].memory_s  # dequantisation costs


def test_a_model_that_does_not_fit_asks_for_more_devices():
    dims = dims_of("llama2-70b")
    with pytest.raises(DoesNotFit, match=r"needs 13\d\.\d GB .* at least 2 devices \(tp=2\)"):
        decode_time("a100-80gb", dims, weights="fp16", tp=1, context=1024)
    assert min_devices("a100-80gb", dims, weights="fp16", batch=1, context=1024) == 2
    assert min_devices("l4", dims, weights="fp16", batch=1, context=1024) == 8
    with pytest.raises(DoesNotFit, match="does not fit l4 even split 64 ways"):
        min_devices("l4", dims, weights="fp16", batch=4096, context=4096)
    with pytest.raises(DoesNotFit, match="at least"):
        prefill_time("a100-80gb", dims, weights="fp16", tp=1, prompt=512)


def test_bad_inputs_name_what_is_valid():
    dims = dims_of("llama2-7b")
    with pytest.raises(UnsupportedFormat, match="a100-80gb has no FP8.*fp16, bf16, int8, int4"):
        decode_time("a100-80gb", dims, weights="fp8")
    with pytest.raises(UnsupportedFormat, match="unknown weight format 'int3'"):
        decode_time("h100-sxm", dims, weights="int3")
    with pytest.raises(LpuError, match="tp=3 must divide n_heads=32.*1, 2, 4, 8"):
        decode_time("h100-sxm", dims, tp=3)
    with pytest.raises(LpuError, match="batch=0"):
        decode_time("h100-sxm", dims, batch=0)
    with pytest.raises(LpuError, match="layer_overhead_s=-1"):
        Efficiency(0.9, -1, 0.9, 0.8, 0.2)
    with pytest.raises(LpuError, match="n_heads=30 is not a multiple of n_kv_heads=4"):
        ModelDims("x", 2, 240, 30, 4, 8, 64, 100)


# --- properties -----------------------------------------------------------------------------------

BIG = dataclasses.replace(GPUS["h100-sxm"], name="big", memory_bytes=1e15)  # never full


@st.composite
def model_dims_st(draw):
    kv = draw(st.sampled_from([1, 2, 4, 8]))
    heads = kv * draw(st.sampled_from([1, 2, 4, 8]))
    hd = draw(st.sampled_from([32, 64, 128]))
    experts = draw(st.sampled_from([0, 0, 4, 8]))
    return ModelDims(
        name="h",
        n_layers=draw(st.integers(1, 96)),
        d_model=heads * hd,
        n_heads=heads,
        n_kv_heads=kv,
        head_dim=hd,
        d_ff=draw(st.integers(1, 4)) * heads * hd,
        vocab_size=draw(st.integers(100, 150_000)),
        n_experts=experts,
        experts_per_token=min(2, experts),
        other_params=draw(st.integers(0, 10**6)),
    )


weights_st = st.sampled_from(["fp16", "bf16", "fp8", "int8", "int4"])


@settings(max_examples=60)
@given(
    dims=model_dims_st(),
    weights=weights_st,
    batch=st.integers(1, 512),
    context=st.integers(1, 32768),
    scale=st.floats(1.0, 8.0),
    tp_index=st.integers(0, 5),
)
def test_more_bandwidth_is_never_slower(dims, weights, batch, context, scale, tp_index):
    tp = valid_tp(dims)[tp_index % len(valid_tp(dims))]
    faster = dataclasses.replace(
        BIG,
        bandwidth_bytes_per_s=BIG.bandwidth_bytes_per_s * scale,
        achievable_bandwidth_bytes_per_s=BIG.achievable_bandwidth_bytes_per_s * scale,
    )
    kw = dict(weights=weights, tp=tp, batch=batch)
    assert (
        decode_time(faster, dims, context=context, **kw).step_s
        <= decode_time(BIG, dims, context=context, **kw).step_s
    )
    prompt = min(context, 4096)
    assert (
        prefill_time(faster, dims, prompt=prompt, **kw).step_s
        <= prefill_time(BIG, dims, prompt=prompt, **kw).step_s
    )


@settings(max_examples=60)
@given(
    dims=model_dims_st(),
    weights=weights_st,
    batch=st.integers(1, 256),
    more=st.integers(1, 256),
    context=st.integers(1, 32768),
    tp_index=st.integers(0, 5),
    gpu=st.sampled_from(["a100-80gb", "h100-sxm", "l4", "b200", "mi300x"]),
)
def test_a_larger_batch_never_gives_fewer_aggregate_tokens(
    dims, weights, batch, more, context, tp_index, gpu
):
    spec = dataclasses.replace(get_gpu(gpu), memory_bytes=1e15)
    if "fp8" not in spec.flops_per_s and weights == "fp8":
        weights = "bf16"
    tp = valid_tp(dims)[tp_index % len(valid_tp(dims))]

    def aggregate(b):
        return b / decode_time(spec, dims, weights=weights, tp=tp, batch=b, context=context).step_s

    assert aggregate(batch + more) >= aggregate(batch) * (1 - 1e-12)


@settings(max_examples=60)
@given(
    dims=model_dims_st(),
    weights=weights_st,
    batch=st.integers(1, 256),
    context=st.integers(1, 32768),
    i=st.integers(0, 5),
    j=st.integers(0, 5),
)
def test_more_tensor_parallelism_never_needs_more_memory_per_device(
    dims, weights, batch, context, i, j
):
    tps = valid_tp(dims)
    lo, hi = sorted((tps[i % len(tps)], tps[j % len(tps)]))
    kw = dict(weights=weights, batch=batch, context=context)
    assert memory_per_device(dims, tp=hi, **kw) <= memory_per_device(dims, tp=lo, **kw)


@settings(max_examples=40)
@given(dims=model_dims_st(), weights=weights_st, batch=st.integers(1, 64))
def test_min_devices_is_the_fewest_that_fit(dims, weights, batch):
    gpu = GPUS["l4"]
    try:
        n = min_devices(gpu, dims, weights=weights, batch=batch, context=2048)
    except DoesNotFit:
        return
    kw = dict(weights=weights, batch=batch, context=2048)
    assert memory_per_device(dims, tp=n, **kw) <= gpu.memory_bytes
    for smaller in (t for t in valid_tp(dims) if t < n):
        assert memory_per_device(dims, tp=smaller, **kw) > gpu.memory_bytes
        with pytest.raises(DoesNotFit, match=f"at least {n} devices"):
            decode_time(gpu, dims, tp=smaller, **kw)
