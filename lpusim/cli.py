"""The `lpusim` command line. Every command takes --json and then prints one strict JSON object
(no NaN or Infinity: a figure that is not a finite number is null, with a `<key>_reason`).
Bad input prints a one-line error naming the option (no traceback) and exits 2; a validation
outside its tolerance exits 1."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from lpusim import checks
from lpusim.progress import StageProgress
from sim.errors import ArgumentError, LpuError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what `lpusim CMD --help` explains in full)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _hw_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hw", default="teaching", help="preset name or path to a TOML config file")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny-llama", help="a name from `lpusim models`")
    _hw_arg(p)
    p.add_argument(
        "--chips",
        type=int,
        default=None,
        help="chips to map the model onto (default: the chips --mapping uses, else 1; "
        "estimate: else the fewest chips that hold the model)",
    )
    p.add_argument(
        "--mapping",
        default=None,
        help='how the model splits over the chips, e.g. "pp=4", "tp=2,pp=2" or, for a '
        'mixture of experts, "tp=2,ep=4" (default: pp=--chips)',
    )
    p.add_argument(
        "--topology",
        default=None,
        help="a TOML edge list of the chips' links (chips = N, [[link]] a, b, links); default: "
        "Groq's nodes and racks where the chip has the links, else fully connected or a ring",
    )


def _weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        default="native",
        help="weight storage: native (the model's dtype), fp16, bf16, int8, fp8 (e4m3); "
        "int8/fp8 with one scale per output channel",
    )


def _layers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--layers", type=int, default=None, help="compile only the first N layers (no head)"
    )


def _context_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--context",
        type=int,
        default=None,
        help=f"KV-cache length of the decode step (default: {checks.DEFAULT_CONTEXT}, or the "
        "model's max_seq_len if shorter; the same in every command)",
    )


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _engine_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("numba", "reference"), default="numba")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="lpusim", description="Compile transformers for an LPU-style chip and simulate them."
    )
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="functional simulation vs JAX, token by token")
    _model_args(p)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--prompt", default="1", help="comma-separated token ids")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    _weights_arg(p)
    _engine_arg(p)
    _json_arg(p)

    p = sub.add_parser("estimate", help="cycles, seconds and tokens/s of one decode step")
    _model_args(p)
    _context_arg(p)
    _weights_arg(p)
    _layers_arg(p)
    _engine_arg(p)
    _json_arg(p)

    p = sub.add_parser("compile", help="write a Program file and its listing")
    _model_args(p)
    _context_arg(p)
    _weights_arg(p)
    _layers_arg(p)
    p.add_argument("--pos", type=int, default=None, help="decode position (default: last)")
    p.add_argument("-o", "--output", required=True, help="Program file to write")
    p.add_argument("--listing", default=None, help="listing file (default: OUTPUT.txt)")
    _json_arg(p)

    p = sub.add_parser("simulate", help="run a saved Program (timing mode)")
    p.add_argument("program", help="a file written by `lpusim compile`")
    p.add_argument("--hw", default=None, help="refuse the file unless compiled for this hardware")
    _engine_arg(p)
    _json_arg(p)

    p = sub.add_parser("compare", help="the LPU next to GPUs: tokens/s, TTFT, devices, bound")
    p.add_argument("--model", default="llama2-7b", help="a name from `lpusim models`")
    p.add_argument(
        "--hw", default="groq-tsp-v1", help="LPU preset or TOML file; 'none' leaves the LPU out"
    )
    p.add_argument(
        "--gpus",
        default="a100-80gb,h100-sxm,h200,b200,mi300x",
        help="comma-separated names from `lpusim gpus`, or 'all'",
    )
    p.add_argument("--batch", default="1", help="comma-separated batch sizes")
    p.add_argument(
        "--weights", default=None, help="comma-separated formats (default: the model's dtype)"
    )
    p.add_argument("--tp", type=int, default=None, help="GPUs' tensor-parallel degree")
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="give every machine this many devices (default: each the fewest that hold the "
        "model and KV cache)",
    )
    _context_arg(p)
    p.add_argument("--prompt", type=int, default=None, help="prefill length timed as TTFT")
    p.add_argument("--engine", choices=("numba", "reference"), default=None)
    p.add_argument("--plot", default=None, help="write a roofline and tokens/s chart here")
    p.add_argument(
        "--one-chip",
        action="store_true",
        help="simulate the LPU on one chip only: a model larger than a chip gets a row saying "
        "how many chips and which mapping hold it (default: compiled and simulated on them)",
    )
    _json_arg(p)

    p = sub.add_parser("gpus", help="the GPU table with its sources and the fitted efficiencies")
    _json_arg(p)

    p = sub.add_parser("measure", help="time the JAX reference decode step on this machine")
    p.add_argument("--model", default="tiny-llama", help="a llama-family name from `lpusim models`")
    p.add_argument("--tokens", type=int, default=64, help="decode steps to time")
    _context_arg(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    _json_arg(p)

    p = sub.add_parser("trace", help="a saved Program's schedule as Perfetto trace JSON")
    p.add_argument("program", help="a file written by `lpusim compile`")
    p.add_argument("-o", "--output", required=True, help="trace file (open at ui.perfetto.dev)")
    _json_arg(p)

    p = sub.add_parser(
        "sweep", help="evaluate a design space (sweep TOML file) into a results folder"
    )
    p.add_argument(
        "spec", help="sweep file: models, weights, context, ..., [hw] fields as lists or ranges"
    )
    p.add_argument("-o", "--output", required=True, help="results folder (SQLite + CSV + Programs)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local processes (default: one per POINTS_PER_WORKER points of lpusim.dse.sweep, up "
        "to the CPUs; 1: this one)",
    )
    p.add_argument("--scheduler", default=None, help="a Dask scheduler address, tcp://host:8786")
    p.add_argument(
        "--resume", action="store_true", help="skip the points the results folder already holds"
    )
    p.add_argument("--cache", default=None, help="Program cache folder (default: OUTPUT/programs)")
    _json_arg(p)

    p = sub.add_parser("pareto", help="the Pareto front of a sweep's results, and its plot")
    p.add_argument("results", help="a folder `lpusim sweep` wrote")
    p.add_argument("--x", default="chips", help="column to minimise (default: chips)")
    p.add_argument("--y", default="tokens_per_s_user", help="column to maximise")
    p.add_argument("--x-goal", choices=("min", "max"), default="min")
    p.add_argument("--y-goal", choices=("min", "max"), default="max")
    p.add_argument(
        "--by", default="model", help="comma-separated columns: one front per group ('' for one)"
    )
    p.add_argument("--plot", default=None, help="write the front, every point and the GPUs here")
    _json_arg(p)

    p = sub.add_parser("presets", help="the hardware presets with their key figures")
    _json_arg(p)
    p = sub.add_parser("models", help="the model registry with parameter counts")
    _json_arg(p)
    return ap


def strict_json(value):
    """`value` as JSON can hold it: NumPy scalars and arrays as plain numbers and lists, tuples as
    lists, and every NaN or infinity as None, with a sibling `<key>_reason` saying what it was."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = strict_json(v)
            out[k] = v
            bad = _non_finite(value[k])
            if bad:
                out[f"{k}_reason"] = f"not a finite number ({bad}); JSON has no NaN or Infinity"
        return out
    if isinstance(value, (list, tuple, np.ndarray)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _non_finite(value) -> str:
    """'nan', 'inf', '-inf' for a non-finite float (or floats in a list: the first one)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return next((b for b in map(_non_finite, value) if b), "")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return ""


def _emit(args, obj: dict, text: str) -> None:
    print(json.dumps(strict_json(obj), allow_nan=False) if args.json else text)


def _write(option: str, path, write) -> Path:
    """Call write(path) for the file an option names, or say which option could not be written."""
    path = checks.path(option, path)
    try:
        write(path)
    except OSError as e:
        raise ArgumentError(option, str(path), f"cannot be written: {e.strerror or e}") from None
    return path


def _cmd_validate(args) -> int:
    from lpusim.api import validate

    try:
        prompt = tuple(int(t) for t in args.prompt.split(","))
    except ValueError:
        raise LpuError(f"--prompt {args.prompt!r} must be comma-separated integers") from None
    with StageProgress() as progress:
        v = validate(
            args.model,
            args.hw,
            tokens=args.tokens,
            prompt=prompt,
            chips=args.chips,
            mapping=args.mapping,
            topology=args.topology,
            seed=args.seed,
            engine=args.engine,
            weights=args.weights,
            progress=progress,
        )
    obj = v.to_dict()
    obj["predicted_cycles"] = sum(v.predicted_cycles)
    obj["simulated_cycles"] = sum(v.simulated_cycles)
    obj["cycles_per_step"] = v.simulated_cycles
    _emit(args, obj, str(v))
    return 0 if v.passed else 1


def _cmd_estimate(args) -> int:
    from lpusim.api import estimate

    with StageProgress() as progress:
        e = estimate(
            args.model, args.hw, chips=args.chips, mapping=args.mapping, topology=args.topology,
            context=args.context, engine=args.engine, weights=args.weights, layers=args.layers,
            progress=progress,
        )  # fmt: skip
    _emit(args, e.to_dict(), str(e))
    return 0


def _cmd_compile(args) -> int:
    from compiler import check_model_fits
    from compiler import compile as compile_program
    from sim.hardware import load_hardware

    out = checks.path("output", args.output)
    listing = checks.path("listing", args.listing) if args.listing is not None else None
    cfg, hw = checks.model(args.model), load_hardware(args.hw)
    chips, context = checks.chips(args.chips), checks.context(cfg, args.context)
    mapping, system = checks.mapping(args.mapping, chips), checks.topology(args.topology, hw)
    layers = checks.optional_count("layers", args.layers, 1, cfg.n_layers)
    weights = checks.weights(args.weights)
    check_model_fits(
        cfg, hw, pos=args.pos, context=context, weights=weights, layers=layers, chips=chips
    )
    with StageProgress() as progress:
        prog = compile_program(
            cfg, hw, chips=chips, mapping=mapping, system=system, context=context, pos=args.pos,
            weights=weights, layers=layers, progress=progress,
        )  # fmt: skip
    _write("output", out, prog.save)
    listing = listing or out.with_name(out.name + ".txt")
    _write("listing", listing, lambda p: p.write_text(prog.disassemble() + "\n"))
    obj = {
        "program": str(out),
        "listing": str(listing),
        "hash": prog.content_hash,
        "instructions": len(prog.instrs),
        "predicted_cycles": prog.predicted_cycles,
        **prog.meta,
    }
    text = "\n".join(f"{k:<17} {v}" for k, v in obj.items() if k != "blocks")
    for b in prog.meta.get("blocks", ()):
        text += (
            f"\n  {b['name']:<28} from cycle {b['first_cycle']:>9}, {b['cycles']} cycles, "
            f"{b['instructions']} instructions"
        )
    _emit(args, obj, text)
    return 0


def _cmd_simulate(args) -> int:
    from sim import Program, simulate
    from sim.hardware import load_hardware

    hw = load_hardware(args.hw) if args.hw is not None else None
    prog = Program.load(args.program, hw)
    r = simulate(prog, mode="timing", engine=args.engine)
    obj = {"program": args.program, "hw": prog.hw.name, **r.summary()}
    if r.seconds:
        obj["tokens_per_s"] = 1.0 / r.seconds
    else:
        obj["tokens_per_s"] = None
        obj["tokens_per_s_reason"] = "the program takes 0 cycles"
    text = "\n".join(f"{k:<17} {v}" for k, v in obj.items())
    _emit(args, obj, text)
    return 0


def _csv(text: str, name: str, cast=str) -> list:
    try:
        values = [cast(v.strip()) for v in text.split(",")]
    except ValueError:
        raise LpuError(f"{name} {text!r} must be comma-separated {cast.__name__}s") from None
    if any(v == "" for v in values):
        raise LpuError(f"{name} {text!r} has an empty item")
    return values


def _cmd_compare(args) -> int:
    from lpusim.compare import compare, format_table, plot, records
    from sim.baselines import GPUS

    plot_path = checks.path("plot", args.plot) if args.plot is not None else None
    gpus = list(GPUS) if args.gpus == "all" else _csv(args.gpus, "--gpus")
    df = compare(
        args.model,
        None if args.hw == "none" else args.hw,
        gpus,
        batch=_csv(args.batch, "--batch", int),
        weights=_csv(args.weights, "--weights") if args.weights else None,
        tp=args.tp,
        devices=args.devices,
        context=args.context,
        prompt=args.prompt,
        engine=args.engine,
        many_chips=not args.one_chip,
    )
    text = format_table(df)
    obj = {"rows": records(df), **df.attrs}
    if plot_path is not None:
        _write("plot", plot_path, lambda p: plot(df, p))
        text += f"\nwrote {plot_path}"
        obj["plot"] = str(plot_path)
    _emit(args, obj, text)
    return 0


def _cmd_gpus(args) -> int:
    from dataclasses import asdict

    from sim.baselines import FIT_ERRORS, FITTED, GPUS
    from sim.baselines.specs import display_row

    rows = [display_row(g) for g in GPUS.values()]
    head = (
        f"{'name':<11}{'memory':>8}{'peak BW':>10}{'achievable':>12}{'BF16':>9}{'FP8':>9}"
        f"  {'link':<16}{'all-reduce':>12}{'latency':>9}"
    )
    lines = [head]
    for r in rows:
        fp8 = f"{r['fp8_tflops']:.0f}" if r["fp8_tflops"] else "-"
        lines.append(
            f"{r['name']:<11}{r['memory_gb']:>6.0f}GB{r['bandwidth_tb_per_s']:>6.3g}TB/s"
            f"{r['achievable_tb_per_s']:>8.3g}TB/s{r['bf16_tflops']:>6.0f}TF/s{fp8:>5}TF/s"
            f"  {r['link'] + ' ' + format(r['link_gb_per_s'], '.0f') + ' GB/s':<16}"
            f"{r['allreduce_bus_gb_per_s']:>8.0f}GB/s{r['allreduce_latency_us']:>7.0f}us"
        )
    lines += ["", "sources:"]
    for r in rows:
        lines.append(f"  {r['name']}: {r['source']}")
        if r["derived"]:
            lines.append(f"  {' ' * len(r['name'])}  derived: {r['derived']}")
    eff = asdict(FITTED)
    lines += ["", "fitted efficiencies (sim/baselines/calibration.py):"]
    lines += [f"  {k:<24} {v:.4g}" for k, v in eff.items()]
    obj = {
        "gpus": rows,
        "efficiency": eff,
        "fit_errors": [
            dict(zip(("model", "setup", "measured", "predicted", "rel_error"), e, strict=True))
            for e in FIT_ERRORS
        ],
    }
    _emit(args, obj, "\n".join(lines))
    return 0


def _cmd_measure(args) -> int:
    from lpusim.compare import measure

    m = measure(args.model, tokens=args.tokens, context=args.context, seed=args.seed)
    _emit(args, {**m.to_dict(), "calibration_point": m.calibration_point()}, str(m))
    return 0


def _cmd_trace(args) -> int:
    from sim import Program
    from sim.trace import write_perfetto

    out = checks.path("output", args.output)
    prog = Program.load(args.program)
    path = _write("output", out, lambda p: write_perfetto(prog, p))
    obj = {
        "program": args.program,
        "trace": str(path),
        "instructions": len(prog.instrs),
        "cycles": prog.predicted_cycles,
    }
    _emit(
        args,
        obj,
        f"wrote {path}: {len(prog.instrs)} instructions, "
        f"{prog.predicted_cycles} cycles; open it at ui.perfetto.dev",
    )
    return 0


def _cmd_sweep(args) -> int:
    from lpusim.dse import sweep

    df = sweep(
        args.spec, args.output, workers=args.workers, scheduler=args.scheduler,
        resume=args.resume, cache=args.cache,
    )  # fmt: skip
    a = df.attrs
    obj = {k: a[k] for k in ("points", "computed", "reused", "failed", "results")}
    obj.update(gpu_rows=a["gpu_rows"], programs_cached=a["programs_cached"], run=a["run"])
    text = (
        f"{a['points']} points: {a['computed']} computed ({a['programs_cached']} with a cached "
        f"Program), {a['reused']} reused, {a['failed']} failed; {a['gpu_rows']} GPU rows\n"
        f"results in {a['results']} (results.sqlite, results.csv); "
        f"`lpusim pareto {a['results']}` for the front"
    )
    failed = df[(df["kind"] == "lpu") & (df["status"] != "ok")]
    for r in failed.head(5).itertuples():
        text += f"\n  point {r.point} failed: {r.error}"
    if len(failed) > 5:
        text += f"\n  ... and {len(failed) - 5} more (see the error column)"
    _emit(args, obj, text)
    return 0


def _cmd_pareto(args) -> int:
    from lpusim.compare import records
    from lpusim.dse import load_results, pareto, plot_pareto
    from lpusim.dse.space import HW_FIELDS

    plot_path = checks.path("plot", args.plot) if args.plot is not None else None
    df = load_results(args.results)
    by = _csv(args.by, "--by") if args.by else None
    goals = dict(x_goal=args.x_goal, y_goal=args.y_goal, by=by)
    front = pareto(df, args.x, args.y, **goals)
    gpus = df[(df["kind"] == "gpu") & (df["status"] == "ok")]
    # The inputs that differ between the front's rows: what the front is made of.
    inputs = ["model", "weights", "context", "layers", "chips", "hw_base", *HW_FIELDS]
    varying = [c for c in inputs if front[c].nunique(dropna=False) > 1 and c not in (by or [])]
    cols = list(dict.fromkeys([*(by or []), args.x, args.y, *varying]))
    text = f"Pareto front of {args.y} ({args.y_goal}) against {args.x} ({args.x_goal}): "
    text += f"{len(front)} of {int((df['kind'] == 'lpu').sum())} LPU points\n"
    text += front[cols].to_string(index=False) if len(front) else "(no point has both figures)"
    if len(gpus):
        text += "\nGPU reference rows:\n"
        text += gpus[["machine", "model", "weights", "context", "chips", args.y]].to_string(
            index=False
        )
    obj = {"front": records(front), "gpus": records(gpus), "x": args.x, "y": args.y}
    if plot_path is not None:
        _write("plot", plot_path, lambda p: plot_pareto(df, args.x, args.y, p, **goals))
        text += f"\nwrote {plot_path}"
        obj["plot"] = str(plot_path)
    _emit(args, obj, text)
    return 0


def _cmd_presets(args) -> int:
    from sim.hardware import PRESETS

    rows = [
        {
            "name": hw.name,
            "clock_hz": hw.clock_hz,
            "lanes": hw.lanes,
            "sram_bytes": hw.sram_bytes,
            "mem_slices": hw.mem_slices,
            "mxm_planes": hw.mxm_planes,
            "vxm_alus": hw.vxm_alus,
            "streams_per_direction": hw.streams_per_direction,
            "hash": hw.hash,
        }
        for hw in PRESETS.values()
    ]
    head = f"{'name':<14}{'clock':>10}{'lanes':>7}{'SRAM':>12}{'slices':>8}{'MXM':>5}{'VXM':>5}"
    lines = [head] + [
        f"{r['name']:<14}{r['clock_hz'] / 1e6:>7.0f}MHz{r['lanes']:>7}"
        f"{r['sram_bytes'] / 2**20:>9.2f}MiB{r['mem_slices']:>8}{r['mxm_planes']:>5}{r['vxm_alus']:>5}"
        for r in rows
    ]
    _emit(args, {"presets": rows}, "\n".join(lines))
    return 0


def _cmd_models(args) -> int:
    from models import MODELS, param_count

    rows = [
        {
            "name": c.name,
            "family": c.family,
            "params": param_count(c),
            "published_params": c.published_params,
            "layers": c.n_layers,
            "d_model": c.d_model,
            "heads": c.n_heads,
            "kv_heads": c.n_kv_heads,
            "dtype": c.dtype,
        }
        for c in MODELS.values()
    ]
    head = (
        f"{'name':<16}{'family':<9}{'params':>16}{'layers':>7}{'d_model':>8}{'heads':>6}{'kv':>4}"
    )
    lines = [head] + [
        f"{r['name']:<16}{r['family']:<9}{r['params']:>16,}{r['layers']:>7}{r['d_model']:>8}"
        f"{r['heads']:>6}{r['kv_heads']:>4}"
        for r in rows
    ]
    _emit(args, {"models": rows}, "\n".join(lines))
    return 0


COMMANDS = {
    "validate": _cmd_validate,
    "estimate": _cmd_estimate,
    "compile": _cmd_compile,
    "simulate": _cmd_simulate,
    "trace": _cmd_trace,
    "compare": _cmd_compare,
    "gpus": _cmd_gpus,
    "measure": _cmd_measure,
    "sweep": _cmd_sweep,
    "pareto": _cmd_pareto,
    "presets": _cmd_presets,
    "models": _cmd_models,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0), or a usage error argparse has printed in one line (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        # A model command without --chips: the mapping's chips, or one (estimate: a chip where
        # the model fits, else the fewest chips that hold it)
        if getattr(args, "chips", 0) is None and args.command != "estimate":
            args.chips = checks.mapping_chips(args.mapping)
        return COMMANDS[args.command](args)
    except (LpuError, ValueError, KeyError, TypeError, OSError, MemoryError) as e:
        if isinstance(e, ArgumentError):
            message = e.as_option()
        elif isinstance(e, KeyError) and e.args:
            message = str(e.args[0])
        elif isinstance(e, MemoryError) and not isinstance(e, LpuError):
            message = f"out of memory on this machine ({e or 'MemoryError'})"
        else:
            message = str(e)
        message = " ".join(message.split())  # one line, whatever the message held
        print(f"lpusim {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
