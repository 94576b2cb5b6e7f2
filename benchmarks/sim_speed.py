"""Simulator speed: instructions and vector operations per wall second, in timing-only and
functional modes, and the functional simulation's wall time relative to JAX's jitted CPU decode
step.

    python benchmarks/sim_speed.py            # tiny-llama, context 64, on the teaching chip
    python benchmarks/sim_speed.py --small    # what CI runs: a short context, one repeat
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from compiler import compile
from lpusim.api import decode_inputs
from models import decode_step, embed, get_config, init_cache, init_params
from sim import simulate


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--hw", default="teaching")
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--small", action="store_true", help="CI size: context 8, 1 repeat")
    args = ap.parse_args()
    if args.small:
        args.context, args.repeats = 8, 1

    cfg = get_config(args.model)
    t = time.perf_counter()
    program = compile(cfg, args.hw, context=args.context)
    compile_s = time.perf_counter() - t
    params = init_params(cfg, 0)
    cache = init_cache(cfg, args.context)
    x = embed(params, 1)
    inputs = decode_inputs(params, x, cache)
    pos = args.context - 1

    # Warm up the Numba engine and JAX's jit once, outside the timings.
    simulate(program, inputs)
    step = jax.jit(decode_step, static_argnames=("cfg", "pos"))
    jax.block_until_ready(step(params, x, cache, cfg=cfg, pos=pos))

    res = simulate(program, mode="timing")
    n_instr, n_ops = res.instructions, res.vector_ops
    timing_s = best_of(lambda: simulate(program, mode="timing"), args.repeats)
    functional_s = best_of(lambda: simulate(program, inputs), args.repeats)
    jax_s = best_of(
        lambda: jax.block_until_ready(step(params, x, cache, cfg=cfg, pos=pos)), args.repeats
    )
    out = simulate(program, inputs).outputs["logits"]
    ref = np.asarray(step(params, x, cache, cfg=cfg, pos=pos)[0])

    print(f"model {cfg.name}, hw {args.hw}, context {args.context}, decode step at pos {pos}")
    print(f"compile                    {compile_s:10.3f} s")
    print(f"instructions               {n_instr:10d}")
    print(f"vector operations          {n_ops:10d}")
    print(f"simulated cycles           {res.cycles:10d}  (predicted {program.predicted_cycles})")
    print(f"timing-only     wall       {timing_s * 1e3:10.3f} ms")
    print(f"  instructions / s         {n_instr / timing_s:10.3e}")
    print(f"  vector ops / s           {n_ops / timing_s:10.3e}")
    print(f"functional      wall       {functional_s * 1e3:10.3f} ms")
    print(f"  instructions / s         {n_instr / functional_s:10.3e}")
    print(f"  vector ops / s           {n_ops / functional_s:10.3e}")
    print(f"JAX jit (CPU)   wall       {jax_s * 1e3:10.3f} ms")
    print(f"functional sim / JAX       {functional_s / jax_s:10.1f} x")
    print(f"max |logit - JAX|          {np.abs(out - ref).max():10.2e}")


if __name__ == "__main__":
    main()
