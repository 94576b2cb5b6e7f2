"""Compiler speed: compile wall time, timing-only simulation wall time, instruction counts (after
and before the ICU's Repeat folds vectors into streamed instructions), simulated and predicted
cycles, and the peak RSS of the process, for models and large FP16 matmuls.

    python benchmarks/compile_speed.py                 # the full table and its targets
    python benchmarks/compile_speed.py --small         # what CI runs: small cases, one repeat
                                                       # (gpt2 is skipped if it takes over 15 s)
    python benchmarks/compile_speed.py --case NAME     # one case, in this process
    python benchmarks/compile_speed.py --json          # one JSON object instead of the table

Every case runs in a fresh process (this script with --case), so its peak RSS
(getrusage's ru_maxrss) is its own. Before timing, the process compiles and simulates a tiny
matmul: JAX's first trace and the Numba engine's JIT (or cache load) are not counted. Times are the
best of --repeats runs. The llama2-7b cases use a hypothetical chip, groq-tsp-v1 with 8x the SRAM
per slice ("groq-tsp-v1-8xsram"), because 4 of its layers do not fit one groq-tsp-v1: they measure
how compilation scales with layers, not a real chip. The matmul cases with a functional check also
simulate random x, w and compare the output with NumPy's float64 x.astype(f16) @ w.

Exits non-zero when a case fails (an error row) or a check does (simulated != predicted cycles,
functional output != NumPy's); a missed target is reported, not fatal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from compiler import compile
from models import get_config
from sim import Program, preset, simulate

GIB = 1 << 30
MET = {True: "met", False: "MISSED", None: "n/a"}
SMALL_GPT2_LIMIT_S = 15.0  # --small skips gpt2 when its process takes longer than this


def matmul(x, w):
    return jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def matmul_args(m: int, k: int, n: int, seed: int | None = None) -> dict:
    """ShapeDtypeStructs (seed None, enough to compile) or random arrays: x (m, k) float32 and
    w (k, n) float16, scaled so that the outputs are O(1)."""
    if seed is None:
        return {
            "x": jax.ShapeDtypeStruct((m, k), jnp.float32),
            "w": jax.ShapeDtypeStruct((k, n), jnp.float16),
        }
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, k)).astype(np.float32)
    w = (rng.normal(size=(k, n)) / np.sqrt(k)).astype(np.float16)
    return {"x": x, "w": w}


def sram8x():
    base = preset("groq-tsp-v1")
    return base.replace(name="groq-tsp-v1-8xsram", mem_slice_bytes=8 * base.mem_slice_bytes)


def llama_d1024_l4():
    """A synthetic Llama (RMSNorm, RoPE, SwiGLU): d_model 1024, 16 heads of 64, 4 layers."""
    return dataclasses.replace(
        get_config("tiny-llama"),
        name="llama-d1024-l4",
        vocab_size=32000,
        d_model=1024,
        n_layers=4,
        n_heads=16,
        n_kv_heads=16,
        d_ff=3 * 1024,
        max_seq_len=64,
        dtype="float16",
        published_params=0,
        source="synthetic benchmark model (benchmarks/compile_speed.py)",
    )


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    note: str  # what is compiled, for which chip
    build: Callable[[], Program]
    functional: tuple[int, int, int] | None = None  # (m, k, n): check a matmul against NumPy


def _matmul_case(m: int, k: int, n: int, functional: bool) -> Case:
    return Case(
        f"matmul-{m}x{k}x{n}",
        f"fp16 matmul x f32 ({m},{k}) @ w f16 ({k},{n}), groq-tsp-v1",
        lambda: compile(matmul, "groq-tsp-v1", args=matmul_args(m, k, n), params=("w",)),
        (m, k, n) if functional else None,
    )


_CASES = (
    Case(
        "gpt2-int8",
        "gpt2, int8 weights, context 64, groq-tsp-v1",
        lambda: compile("gpt2", "groq-tsp-v1", weights="int8"),
    ),
    Case(
        "llama2-7b-l1-int8",
        "llama2-7b, 1 layer, int8, context 64, groq-tsp-v1-8xsram (hypothetical)",
        lambda: compile("llama2-7b", sram8x(), weights="int8", layers=1),
    ),
    Case(
        "llama2-7b-l4-int8",
        "llama2-7b, 4 layers, int8, context 64, groq-tsp-v1-8xsram (hypothetical)",
        lambda: compile("llama2-7b", sram8x(), weights="int8", layers=4),
    ),
    Case(
        "llama-d1024-l4-fp16",
        "llama d_model 1024, 4 layers + head, fp16, context 64, groq-tsp-v1",
        lambda: compile(llama_d1024_l4(), "groq-tsp-v1", context=64),
    ),
    _matmul_case(1024, 1024, 1024, functional=True),
    _matmul_case(2048, 2048, 2048, functional=True),
    _matmul_case(1, 4096, 11008, functional=False),
    Case(
        "tiny-llama-fp16",
        "tiny-llama, fp16, context 64, teaching",
        lambda: compile("tiny-llama", "teaching"),
    ),
    _matmul_case(256, 256, 256, functional=True),
)
CASES = {c.name: c for c in _CASES}
FULL = [c.name for c in _CASES[:7]]
SMALL = ["tiny-llama-fp16", "matmul-256x256x256", "gpt2-int8"]


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(best wall time, the last result) of `repeats` calls."""
    best, result = float("inf"), None
    for _ in range(repeats):
        result = None  # let the previous result go before the next call (peak RSS)
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def warm_up(functional: bool) -> None:
    args = matmul_args(2, 16, 16, seed=0)
    prog = compile(matmul, "teaching", args=args, params=("w",))
    simulate(prog, mode="timing")
    if functional:
        simulate(prog, args)


def functional_check(program: Program, m: int, k: int, n: int) -> tuple[bool, float]:
    """(output equals NumPy's float64 product of the float16-rounded operands, max |error|)"""
    args = matmul_args(m, k, n, seed=1)
    (out,) = simulate(program, args).outputs.values()
    want = args["x"].astype(np.float16).astype(np.float64) @ args["w"].astype(np.float64)
    err = float(np.abs(out.astype(np.float64) - want).max())
    try:
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    except AssertionError:
        return False, err
    return True, err


def run_case(name: str, repeats: int) -> dict:
    """Measure one case in this process; an exception becomes the row's error."""
    case = CASES[name]
    row = {"case": name, "note": case.note}
    stage = "warm-up"
    try:
        warm_up(case.functional is not None)
        stage = "compile"
        compile_s, program = best_of(case.build, repeats)
        stage = "timing simulation"
        sim_s, result = best_of(lambda: simulate(program, mode="timing"), repeats)
        row.update(
            compile_s=compile_s,
            sim_s=sim_s,
            instrs=len(program.instrs),
            vector_instrs=program.vector_instruction_count(),
            cycles=int(result.cycles),
            predicted=int(program.predicted_cycles),
        )
        if case.functional is not None:
            stage = "functional simulation"
            row["functional"], row["max_abs_error"] = functional_check(program, *case.functional)
    except Exception as e:  # reported as an error row, never hidden
        row["error"] = f"{stage}: {type(e).__name__}: {e}"
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return row


def run_in_child(name: str, repeats: int, timeout_s: float | None) -> dict:
    """Run one case in a fresh process of this script; a crash or timeout becomes a row too."""
    cmd = [sys.executable, __file__, "--case", name, "--repeats", str(repeats), "--json"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"case": name, "note": CASES[name].note, "skipped": f"took over {timeout_s:g} s"}
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])["cases"][0]
    except (IndexError, json.JSONDecodeError, KeyError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {
            "case": name,
            "note": CASES[name].note,
            "error": f"process exited with {done.returncode}: {' | '.join(tail)}",
        }


def checks_pass(row: dict) -> bool:
    if "skipped" in row:
        return True
    if "error" in row:
        return False
    return row["cycles"] == row["predicted"] and row.get("functional", True)


# (target, the cases it needs, its figure from their rows, the figure's unit, the limit).
TARGETS = (
    (
        "gpt2 int8: compile + timing simulation < 10 s",
        ("gpt2-int8",),
        lambda r: r[0]["compile_s"] + r[0]["sim_s"],
        "s",
        10.0,
    ),
    (
        "matmul 1024^3: compile < 2 s",
        ("matmul-1024x1024x1024",),
        lambda r: r[0]["compile_s"],
        "s",
        2.0,
    ),
    (
        "matmul 2048^3: compile < 10 s",
        ("matmul-2048x2048x2048",),
        lambda r: r[0]["compile_s"],
        "s",
        10.0,
    ),
    (
        "llama2-7b int8: compile(4 layers) < 1.2 x compile(1 layer)",
        ("llama2-7b-l1-int8", "llama2-7b-l4-int8"),
        lambda r: r[1]["compile_s"] / r[0]["compile_s"],
        "x",
        1.2,
    ),
)


def targets(rows: list[dict]) -> list[dict]:
    """Every target whose cases ran: what, the figure, met (None where a case failed)."""
    by = {r["case"]: r for r in rows}
    out = []
    for target, names, figure, unit, limit in TARGETS:
        if not all(n in by for n in names):
            continue
        needed = [by[n] for n in names]
        if any("compile_s" not in r for r in needed):
            out.append(
                {"target": target, "figure": "n/a: a case failed or was skipped", "met": None}
            )
            continue
        value = figure(needed)
        text = f"{value:.3f} x" if unit == "x" else f"{value:.2f} {unit}"
        out.append({"target": target, "figure": text, "met": value < limit})
    measured = [r for r in rows if "peak_rss_bytes" in r]
    if measured:
        worst = max(measured, key=lambda r: r["peak_rss_bytes"])
        out.append(
            {
                "target": "peak RSS < 2 GiB, every case",
                "figure": f"{worst['peak_rss_bytes'] / GIB:.2f} GiB ({worst['case']})",
                "met": worst["peak_rss_bytes"] < 2 * GIB,
            }
        )
    return out


def print_table(rows: list[dict], tgts: list[dict], mode: str) -> None:
    head = (
        f"{'case':<22}{'compile s':>10}{'sim s':>8}{'instrs':>9}{'vec instrs':>11}"
        f"{'cycles':>9}{'predicted':>10}{'RSS MiB':>9}  functional = NumPy"
    )
    print(f"compile speed ({mode}); sim = timing-only simulation (numba engine); best of repeats")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r or "skipped" in r:
            what = f"ERROR  {r['error']}" if "error" in r else f"skipped ({r['skipped']})"
            print(f"{r['case']:<22}  {what}")
            continue
        func = ""
        if "functional" in r:
            func = f"{'yes' if r['functional'] else 'no'} (max |err| {r['max_abs_error']:.1e})"
        flag = "" if r["cycles"] == r["predicted"] else "  <- cycles differ"
        print(
            f"{r['case']:<22}{r['compile_s']:>10.2f}{r['sim_s']:>8.2f}{r['instrs']:>9,}"
            f"{r['vector_instrs']:>11,}{r['cycles']:>9,}{r['predicted']:>10,}"
            f"{r['peak_rss_bytes'] / 2**20:>9,.0f}  {func}{flag}"
        )
    print("\nnotes:")
    for r in rows:
        print(f"  {r['case']:<22}{r['note']}")
    if any("8xsram" in r["note"] for r in rows):
        print(
            "  groq-tsp-v1-8xsram is hypothetical (8x the SRAM per slice): it measures compile\n"
            "  scaling with layers, not a real chip."
        )
    print("  instrs: instructions after Repeat; vec instrs: before it (one per vector).")
    if tgts:
        print("\ntargets:")
        for t in tgts:
            print(f"  {t['target']:<60}{t['figure']:>30}  {MET[t['met']]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="CI size: small cases, one repeat")
    ap.add_argument("--case", choices=sorted(CASES), help="run one case, in this process")
    ap.add_argument("--repeats", type=int, default=None, help="best of (default 3; --small 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.small else 3)
    mode = "small" if args.small else "full"

    if args.case:
        rows = [run_case(args.case, repeats)]
    else:
        rows = []
        for name in SMALL if args.small else FULL:
            limit = SMALL_GPT2_LIMIT_S if args.small and name == "gpt2-int8" else None
            rows.append(run_in_child(name, repeats, limit))
    tgts = targets(rows)
    ok = all(checks_pass(r) for r in rows)
    if args.json:
        print(
            json.dumps({"mode": mode, "repeats": repeats, "cases": rows, "targets": tgts, "ok": ok})
        )
    else:
        print_table(rows, tgts, mode)
        print(
            f"\nchecks (predicted == simulated cycles, functional = NumPy): {'pass' if ok else 'FAIL'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
