"""How close schedules come to the machine's bounds: for matrix-vector products in FP16 and INT8,
a streaming copy, one layer of Llama-2-7B and tiny-llama, the simulated cycles, the lower bound and
what sets it (sim/bounds.py), bound / simulated, and the SRAM bandwidth and MXM throughput the
schedule achieves.

    python benchmarks/roofline.py            # the table
    python benchmarks/roofline.py --small    # what CI runs: the small cases only
    python benchmarks/roofline.py --json

Achieved TB/s is SRAM bytes read per simulated second (the streaming copy passes every vector
through the VXM, so its 16 ALUs bind it, not SRAM); TFLOPS counts 2 x the MACs the MXM issues
(every streamed input times its tile's rows times the lanes), so it is an upper bound on useful
work. Peaks for comparison: REFERENCE.md "peak" (750 TOPS INT8, 188 TFLOPS FP16) and "SRAM
bandwidth" (80 TB/s) rows, next to what this preset's ports deliver.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp

from compiler import compile
from sim import preset, simulate
from sim.bounds import bounds
from sim.isa import Op

HW = "groq-tsp-v1"


def matvec(k: int, n: int, weights: str):
    """1 x k @ k x n: fp16 weights, or int8 weights installed as they are (scale not included)."""
    wdt = {"fp16": jnp.float16, "int8": jnp.int8}[weights]

    def f(x, w):
        return jnp.dot(
            x.astype(jnp.float16), w.astype(jnp.float16), preferred_element_type=jnp.float32
        )

    args = {"x": jax.ShapeDtypeStruct((1, k), jnp.float32), "w": jax.ShapeDtypeStruct((k, n), wdt)}
    return compile(f, HW, args=args, params=("w",))


def square_matmul(m: int, dtype: str):
    """m x m @ m x m with inputs and weights of one type: the MXM's compute rate at work."""
    dt = {"fp16": jnp.float16, "int8": jnp.int8}[dtype]

    def f(x, w):
        return jnp.dot(x, w, preferred_element_type=jnp.float32)

    args = {"x": jax.ShapeDtypeStruct((m, m), dt), "w": jax.ShapeDtypeStruct((m, m), dt)}
    return compile(f, HW, args=args, params=("w",))


def stream_copy(rows: int, cols: int):
    """y = x * 1: every vector read, passed through the VXM and written once."""

    def f(x):
        return x * 1.0

    return compile(f, HW, args={"x": jax.ShapeDtypeStruct((rows, cols), jnp.float16)})


CASES = {
    "matvec 4096x4096 fp16": lambda: matvec(4096, 4096, "fp16"),
    "matvec 4096x4096 int8": lambda: matvec(4096, 4096, "int8"),
    "matvec 2560x2560 fp16": lambda: matvec(2560, 2560, "fp16"),
    "matvec 2560x2560 int8": lambda: matvec(2560, 2560, "int8"),
    "matmul 1024^3 int8": lambda: square_matmul(1024, "int8"),
    "matmul 1024^3 fp16": lambda: square_matmul(1024, "fp16"),
    "streaming copy 16 MB": lambda: stream_copy(8192, 1024),
    "llama2-7b layer int8": lambda: compile("llama2-7b", HW, layers=1, weights="int8"),
    "tiny-llama": lambda: compile("tiny-llama", HW),
}
SMALL = ("matvec 2560x2560 int8", "streaming copy 16 MB", "tiny-llama")


def measure(name: str) -> dict:
    prog = CASES[name]()
    r = simulate(prog, mode="timing")
    assert r.cycles == prog.predicted_cycles, (name, r.cycles, prog.predicted_cycles)
    b = bounds(prog)
    ins = prog.instrs
    mm = ins[ins["op"] == Op.MATMUL]
    macs = int((mm["repeat"].astype(int) * mm["count"].astype(int)).sum()) * prog.hw.lanes
    seconds = r.cycles / prog.hw.clock_hz
    return {
        "case": name,
        "cycles": r.cycles,
        "bound": b.cycles,
        "binds": b.binding,
        "bound_fraction": b.fraction(r.cycles),
        "tb_per_s": r.bytes_read / seconds / 1e12,
        "tflops": 2 * macs / seconds / 1e12,
        "terms": b.terms,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="the small cases only (CI)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    hw = preset(HW)
    rows = [measure(n) for n in (SMALL if args.small else CASES)]
    ports_tb = hw.sram_bytes_per_cycle * hw.clock_hz / 1e12
    if args.json:
        print(json.dumps({"hw": HW, "rows": rows, "sram_ports_tb_per_s": ports_tb}))
        return 0
    print(
        f"{'case':<24}{'cycles':>9}{'bound':>9}  {'binds':<12}{'bound/sim':>10}{'TB/s':>8}{'TFLOPS':>8}"
    )
    for r in rows:
        print(
            f"{r['case']:<24}{r['cycles']:>9}{r['bound']:>9}  {r['binds']:<12}"
            f"{r['bound_fraction']:>10.2f}{r['tb_per_s']:>8.2f}{r['tflops']:>8.1f}"
        )
    print(
        f"\n{HW}: SRAM ports deliver {ports_tb:.1f} TB/s ({hw.mem_read_ports_per_slice} reads and "
        f"{hw.mem_write_ports_per_slice} writes of a {hw.lanes}-byte word per slice per cycle; "
        "benchmarks/sram_bandwidth.py measures it); REFERENCE.md states 80 TB/s. MXM: "
        f"{hw.mxm_planes} planes; REFERENCE.md peak 750 TOPS INT8, 188 TFLOPS FP16 (an FP16 input "
        f"every {hw.mxm_fp16_cycles_per_vector} cycles)."
    )
    by = {r["case"]: r for r in rows}
    if "matmul 1024^3 int8" in by and "matmul 1024^3 fp16" in by:
        ratio = by["matmul 1024^3 fp16"]["tflops"] / by["matmul 1024^3 int8"]["tflops"]
        chip = 1 / preset(HW).mxm_fp16_cycles_per_vector
        print(f"FP16 / INT8 matmul throughput: {ratio:.3f} (the chip's: {chip:.3f})")
    print("every lower bound (cycles):")
    for r in rows:
        print(f"  {r['case']:<24}", ", ".join(f"{k} {v}" for k, v in r["terms"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
