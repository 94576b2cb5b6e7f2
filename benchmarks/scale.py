"""Real models on many chips: for each, the fewest chips that hold it (any mapping, and pipeline
stages alone, the one mapping that compiles today), then, where pipeline stages hold it, one
decode step compiled and simulated on every chip: wall times, peak memory, tokens/s per user and
where a token's time goes.

    python benchmarks/scale.py            # the models of issue 8 on groq-tsp-v1
    python benchmarks/scale.py --small    # what CI runs: an 8-layer tiny model on 8 teaching chips
    python benchmarks/scale.py --many     # hundreds of chips: models given more layers, one a chip
    python benchmarks/scale.py --json

Each case runs in a fresh process, so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import re
import resource
import sys
import time

# Hundreds of chips: a model given N layers ("<model>-<N>L"), a stage a chip. Its stages are
# of two shapes, so this measures what grows with the chips: the pipeline's assembly,
# instruction fetch, and simulating every chip (the engine runs identical chips once).
MANY = [  # (model, hardware, weights, context)
    ("tiny-llama-256L", "teaching", "native", 64),
    ("llama2-7b-64L", "groq-tsp-v1", "int8", 64),
    ("llama2-7b-128L", "groq-tsp-v1", "int8", 64),
]

CASES = [  # (model, weights, context)
    ("llama2-7b", "int8", 64),
    ("llama2-7b", "int8", 1024),
    ("llama3-8b", "int8", 64),
    ("llama2-70b", "int8", 1024),
    ("mixtral-8x7b", "int8", 1024),
    ("llama3.1-405b", "int8", 1024),
]


def _config(name: str):
    """A model by name; "<model>-<N>L" (and "tiny-llama-8") is the model with N layers."""
    from models import get_config

    if name == "tiny-llama-8":
        return dataclasses.replace(get_config("tiny-llama"), name=name, n_layers=8)
    m = re.fullmatch(r"(.+)-(\d+)L", name)
    if m:
        return dataclasses.replace(get_config(m.group(1)), name=name, n_layers=int(m.group(2)))
    return get_config(name)


def _fewest_pipeline(cfg, hw, context: int, weights: str, least: int = 1):
    """The fewest pipeline stages (from `least`) whose every chip holds its share, or None."""
    from compiler.passes.partition import Mapping, fit

    for pp in range(least, cfg.n_layers + 2):
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
    # a model given many layers: a stage a layer (or the head's chip), as a large model would be
    least = cfg.n_layers if re.fullmatch(r".+-\d+L", model) else 1
    pp = _fewest_pipeline(cfg, hw, context, weights, least)
    row["pp_chips"] = pp
    if pp is None or not simulate_it:
        row["note"] = "no pipeline-only mapping holds it" if pp is None else "not simulated"
        return row
    t0 = time.perf_counter()
    program = compile(cfg, hw, chips=pp, context=context, weights=weights)
    t1 = time.perf_counter()
    r = simulate(program, mode="timing")
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # compile and simulate
    stages = program.meta["stages"]
    on_chip = sum(s["cycles"] for s in stages)
    b = bounds(program, program.predicted)
    row.update(
        compile_s=t1 - t0,
        simulate_s=t2 - t1,
        rss_gib=rss,
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
        chips_simulated=getattr(r, "chips_simulated", None),
    )
    return row


def _run(args) -> dict:
    return measure(*args)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="the tiny case only (CI)")
    ap.add_argument("--many", action="store_true", help="hundreds of chips (synthetic models)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-simulate", action="store_true", help="chip counts only")
    args = ap.parse_args(argv)
    cases = [("tiny-llama-8", "teaching", "native", 8)] if args.small else MANY if args.many else [
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
    print(f"{'model':<16}{'weights':>8}{'ctx':>6}{'auto':>6}{'pp':>5}{'compile s':>10}"
          f"{'sim s':>7}{'ran':>5}{'RSS GiB':>8}{'tok/s':>8}{'on chip':>11}"
          f"{'c2c':>9}  binds")  # fmt: skip
    for r in rows:
        if "cycles" in r:
            print(
                f"{r['model']:<16}{r['weights']:>8}{r['context']:>6}{r['auto_chips'] or '-':>6}"
                f"{r['pp_chips']:>5}{r['compile_s']:>10.1f}{r['simulate_s']:>7.1f}"
                f"{r['chips_simulated'] or r['pp_chips']:>5}{r['rss_gib']:>8.2f}"
                f"{r['tokens_per_s']:>8.0f}{r['on_chip_cycles']:>11,}{r['c2c_cycles']:>9,}"
                f"  {r['stage_binds']}"
            )
        else:
            print(
                f"{r['model']:<16}{r['weights']:>8}{r['context']:>6}{r['auto_chips'] or '-':>6}"
                f"{r['pp_chips'] or '-':>5}  {r['note']}"
            )
    print("\nauto: the fewest chips of any mapping (compiler.passes.partition.auto_mapping); pp: "
          "the fewest pipeline stages alone that hold it, the mapping that compiles today; ran: "
          "the chips the engine simulated (identical chips once, sim/engine/share.py); RSS: the "
          "peak of compiling and simulating.")  # fmt: skip
    for r in rows:
        print(f"  {r['model']} ({r['weights']}, context {r['context']}): {r['why']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
