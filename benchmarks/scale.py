"""Real models on many chips: for each, the fewest chips that hold it (any mapping) and, where a
mapping compiles (pipeline stages, tensor-parallel groups of llama-family models), one decode step
compiled and simulated on every chip: wall times, peak memory, tokens/s per user and where a
token's time goes (on chip, chip to chip, and of that the tensor-parallel all-reduces).

    python benchmarks/scale.py            # the models of issue 8 on groq-tsp-v1
    python benchmarks/scale.py --small    # what CI runs: an 8-layer tiny model on 8 teaching chips
    python benchmarks/scale.py --case llama2-70b:int8:1024:tp=8,pp=81:8
                                          # model:weights:context:mapping[:layers]; layers cuts
                                          # the model to its first N layers (pp scaled alike)
    python benchmarks/scale.py --many     # hundreds of chips: models given more layers, one a chip
    python benchmarks/scale.py --json

Each case runs in a fresh process, so its peak RSS is its own. A case's mapping is the one given,
else auto_mapping's (the fewest chips), else the fewest pipeline stages alone.
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
MANY = [  # (model, hardware, weights, context, mapping, layers)
    ("tiny-llama-256L", "teaching", "native", 64, None, None),
    ("llama2-7b-64L", "groq-tsp-v1", "int8", 64, None, None),
    ("llama2-7b-128L", "groq-tsp-v1", "int8", 64, None, None),
]

CASES = [  # (model, weights, context, mapping: None for the fewest chips, layers: None for all)
    ("llama2-7b", "int8", 64, None, None),
    ("llama2-7b", "int8", 1024, None, None),
    ("llama3-8b", "int8", 64, "tp=8,pp=5", None),
    ("llama2-70b", "int8", 1024, None, None),  # the fewest chips: tp=4,pp=81
    ("llama2-70b", "int8", 1024, "tp=8,pp=81", None),  # a layer a chip over a GroqNode's 8
    ("llama2-70b", "int8", 1024, "tp=16,pp=36", None),  # 576 chips: groups of two nodes
    ("mixtral-8x7b", "int8", 1024, None, None),
    ("mixtral-8x7b", "native", 1024, None, None),  # bf16: tp=8 x ep=2, groups of two nodes
    ("llama3.1-405b", "int8", 1024, None, None),
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


def measure(
    model: str, hw_name: str, weights: str, context: int, mapping, layers, simulate_it: bool
) -> dict:
    from compiler import compile
    from compiler.passes.partition import Mapping, auto_mapping
    from lpusim.api import time_breakdown
    from sim import preset, simulate
    from sim.bounds import bounds
    from sim.critical import critical_path
    from sim.errors import LpuError

    hw, cfg = preset(hw_name), _config(model)
    if layers is not None:  # the first `layers` layers and the head, as a model of its own
        cfg = dataclasses.replace(cfg, name=f"{cfg.name}[:{layers}]", n_layers=layers)
    row = {"model": cfg.name, "hw": hw_name, "weights": weights, "context": context}
    try:
        plan = auto_mapping(cfg, hw, context, weights)
        row.update(auto_chips=plan.mapping.chips, auto_mapping=str(plan.mapping), why=str(plan))
    except LpuError as e:  # no mapping holds it: say why
        row.update(auto_chips=None, auto_mapping="-", why=str(e).split(";")[0])
    # a model given many layers: a stage a layer (or the head's chip), as a large model would be
    many = re.fullmatch(r".+-\d+L", model) is not None
    pp = _fewest_pipeline(cfg, hw, context, weights, cfg.n_layers if many else 1)
    if mapping is None:
        auto = row["auto_mapping"] if row["auto_chips"] and not many else None
        mapping = auto or (pp and f"pp={pp}")
    row["mapping"] = mapping or "-"
    if not mapping or not simulate_it:
        row["note"] = "no mapping holds it" if not mapping else "not simulated"
        return row
    m = Mapping.parse(mapping)
    t0 = time.perf_counter()
    try:
        program = compile(cfg, hw, chips=m.chips, mapping=m, context=context, weights=weights)
    except LpuError as e:
        row["note"] = f"{mapping}: {str(e)[:160]}"
        return row
    t1 = time.perf_counter()
    r = simulate(program, mode="timing")
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # compile and simulate
    stages = program.meta["stages"]
    t = time_breakdown(program, r.cycles)
    b = bounds(program, program.predicted)
    path = critical_path(program, r.cycles)
    row.update(
        chips=m.chips,
        compile_s=t1 - t0,
        simulate_s=t2 - t1,
        rss_gib=rss,
        cycles=r.cycles,
        predicted_equal=r.cycles == program.predicted_cycles,
        tokens_per_s=hw.clock_hz / r.cycles,
        on_chip_cycles=t["on chip"],
        c2c_cycles=t["chip to chip"],
        allreduce_cycles=t.get("all-reduce", 0),
        stage_cycles=max(s["cycles"] for s in stages),
        stage_binds=b.binding if b.binding != "dependency" else "dependency (stages in turn)",
        instructions=len(program.instrs),
        events=r.vector_ops,
        shared_programs=program.meta["shared_programs"],
        chips_simulated=getattr(r, "chips_simulated", None),
        critical_path=path,
    )
    return row


def _run(args) -> dict:
    return measure(*args)


def _case(text: str) -> tuple:
    parts = text.split(":")
    if len(parts) not in (4, 5):
        raise SystemExit(f"--case {text!r}: give model:weights:context:mapping[:layers]")
    layers = int(parts[4]) if len(parts) == 5 else None
    return parts[0], parts[1], int(parts[2]), parts[3] or None, layers


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="the tiny case only (CI)")
    ap.add_argument("--case", action="append", default=[], help="model:weights:context:mapping")
    ap.add_argument("--many", action="store_true", help="hundreds of chips (synthetic models)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-simulate", action="store_true", help="chip counts only")
    args = ap.parse_args(argv)
    if args.small:
        cases = [("tiny-llama-8", "teaching", "native", 8, "tp=2,pp=4", None)]
    elif args.many:
        cases = MANY
    elif args.case:
        cases = [(m, "groq-tsp-v1", w, c, mp_, n) for m, w, c, mp_, n in map(_case, args.case)]
    else:
        cases = [(m, "groq-tsp-v1", w, c, mp_, n) for m, w, c, mp_, n in CASES]
    ctx = mp.get_context("spawn")
    rows = []
    for case in cases:
        with ctx.Pool(1) as pool:
            rows.append(pool.apply(_run, ((*case, not args.no_simulate),)))
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    print(f"{'model':<18}{'weights':>8}{'ctx':>6}{'auto':>6} {'mapping':<14}{'chips':>6}"
          f"{'compile s':>10}{'sim s':>7}{'ran':>5}{'RSS GiB':>8}{'tok/s':>8}{'on chip':>11}"
          f"{'c2c':>11}{'all-red':>11}  binds")  # fmt: skip
    for r in rows:
        head = (
            f"{r['model']:<18}{r['weights']:>8}{r['context']:>6}{r['auto_chips'] or '-':>6} "
            f"{r['mapping']:<14}"
        )
        if "cycles" in r:
            print(
                f"{head}{r['chips']:>6}{r['compile_s']:>10.1f}{r['simulate_s']:>7.1f}"
                f"{r['chips_simulated'] or r['chips']:>5}{r['rss_gib']:>8.2f}"
                f"{r['tokens_per_s']:>8.0f}{r['on_chip_cycles']:>11,}{r['c2c_cycles']:>11,}"
                f"{r['allreduce_cycles']:>11,}  {r['stage_binds']}"
            )
        else:
            print(f"{head}  {r['note']}")
    print("\nauto: the fewest chips of any mapping (compiler.passes.partition.auto_mapping); ran: "
          "the body runs the engine simulated (a stage's body once for its chips alike, "
          "sim/engine/segments.py; every chip's own transfers too); RSS: the "
          "peak of compiling and simulating; c2c: chip-to-chip cycles along a token's path, "
          "all-red: of which tensor-parallel all-reduces.")  # fmt: skip
    print("\nAlong each token's critical path (sim/critical.py), cycles:")
    for r in rows:
        if "critical_path" in r:
            split = ", ".join(f"{k} {v:,}" for k, v in r["critical_path"].items())
            print(f"  {r['model']} ({r['weights']}, {r['mapping']}): {split}")
    print("\nWhy these chips:")
    for r in rows:
        print(f"  {r['model']} ({r['weights']}, context {r['context']}): {r['why']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
