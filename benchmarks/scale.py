"""Real models on many chips: for each, the fewest chips that hold it (any mapping, and pipeline
stages alone, the one mapping that compiles today), then, where pipeline stages hold it, one
decode step compiled and simulated on every chip: wall times, peak memory, tokens/s per user and
where a token's time goes.

    python benchmarks/scale.py            # the models of issue 8 on groq-tsp-v1
    python benchmarks/scale.py --small    # what CI runs: an 8-layer tiny model on 8 teaching chips
    python benchmarks/scale.py --json

Each case runs in a fresh process, so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import resource
import sys
import time

CASES = [  # (model, weights, context)
    ("llama2-7b", "int8", 64),
    ("llama2-7b", "int8", 1024),
    ("llama3-8b", "int8", 64),
    ("llama2-70b", "int8", 1024),
    ("mixtral-8x7b", "int8", 1024),
    ("llama3.1-405b", "int8", 1024),
]


def _config(name: str):
    from models import get_config

    if name == "tiny-llama-8":
        return dataclasses.replace(get_config("tiny-llama"), name=name, n_layers=8)
    return get_config(name)


def _fewest_pipeline(cfg, hw, context: int, weights: str):
    """The fewest pipeline stages whose every chip holds its share, or None."""
    from compiler.passes.partition import Mapping, fit

    for pp in range(1, cfg.n_layers + 2):
        if fit(Mapping(pp=pp), cfg, hw, context, weights).fits:
            return pp
    return None


def measure(model: str, hw_name: str, weights: str, context: int, simulate_it: bool) -> dict:
    from compiler import compile
    from compiler.passes.partition import auto_mapping
    from sim import preset, simulate
    from sim.bounds import bounds

    hw, cfg = preset(hw_name), _config(model)
    row = {"model": model, "hw": hw_name, "weights": weights, "context": context}
    try:
        plan = auto_mapping(cfg, hw, context, weights)
        row.update(auto_chips=plan.mapping.chips, auto_mapping=str(plan.mapping), why=str(plan))
    except Exception as e:  # no mapping holds it: say why
        row.update(auto_chips=None, auto_mapping="-", why=str(e).split(";")[0])
    pp = _fewest_pipeline(cfg, hw, context, weights)
    row["pp_chips"] = pp
    if pp is None or not simulate_it:
        row["note"] = "no pipeline-only mapping holds it" if pp is None else "not simulated"
        return row
    t0 = time.perf_counter()
    program = compile(cfg, hw, chips=pp, context=context, weights=weights)
    t1 = time.perf_counter()
    r = simulate(program, mode="timing")
    t2 = time.perf_counter()
    stages = program.meta["stages"]
    on_chip = sum(s["cycles"] for s in stages)
    b = bounds(program, program.predicted)
    row.update(
        compile_s=t1 - t0,
        simulate_s=t2 - t1,
        rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        cycles=r.cycles,
        predicted_equal=r.cycles == program.predicted_cycles,
        tokens_per_s=hw.clock_hz / r.cycles,
        on_chip_cycles=on_chip,
        c2c_cycles=r.cycles - on_chip,
        stage_cycles=max(s["cycles"] for s in stages),
        stage_binds=b.binding if b.binding != "dependency" else "dependency (stages in turn)",
        instructions=len(program.instrs),
        events=r.vector_ops,
        shared_programs=program.meta["shared_programs"],
    )
    return row


def _run(args) -> dict:
    return measure(*args)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="the tiny case only (CI)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-simulate", action="store_true", help="chip counts only")
    args = ap.parse_args(argv)
    cases = [("tiny-llama-8", "teaching", "native", 8)] if args.small else [
        (m, "groq-tsp-v1", w, c) for m, w, c in CASES
    ]  # fmt: skip
    ctx = mp.get_context("spawn")
    rows = []
    for case in cases:
        with ctx.Pool(1) as pool:
            rows.append(pool.apply(_run, ((*case, not args.no_simulate),)))
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    print(f"{'model':<14}{'weights':>8}{'ctx':>6}{'auto':>6}{'pp':>5}{'compile s':>10}"
          f"{'sim s':>7}{'RSS GiB':>8}{'tok/s':>8}{'on chip':>10}{'c2c':>8}  binds")  # fmt: skip
    for r in rows:
        if "cycles" in r:
            print(
                f"{r['model']:<14}{r['weights']:>8}{r['context']:>6}{r['auto_chips'] or '-':>6}"
                f"{r['pp_chips']:>5}{r['compile_s']:>10.1f}{r['simulate_s']:>7.1f}"
                f"{r['rss_gib']:>8.2f}{r['tokens_per_s']:>8.0f}{r['on_chip_cycles']:>10,}"
                f"{r['c2c_cycles']:>8,}  {r['stage_binds']}"
            )
        else:
            print(
                f"{r['model']:<14}{r['weights']:>8}{r['context']:>6}{r['auto_chips'] or '-':>6}"
                f"{r['pp_chips'] or '-':>5}  {r['note']}"
            )
    print("\nauto: the fewest chips of any mapping (compiler.passes.partition.auto_mapping); pp: "
          "the fewest pipeline stages alone that hold it, the mapping that compiles today.")  # fmt: skip
    for r in rows:
        print(f"  {r['model']} ({r['weights']}, context {r['context']}): {r['why']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
