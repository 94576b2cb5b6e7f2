"""The `lpusim` command line. Every command takes --json and then prints one JSON object.
Bad input prints a one-line error (no traceback) and exits 2; a failed validation exits 1."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sim.errors import LpuError


def _hw_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hw", default="teaching", help="preset name or path to a TOML config file")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny-llama", help="a name from `lpusim models`")
    _hw_arg(p)
    p.add_argument("--chips", type=int, default=1, help="chips to map the model onto")


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _engine_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("numba", "reference"), default="numba")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="lpusim", description="Compile transformers for an LPU-style chip and simulate them."
    )
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="functional simulation vs JAX, token by token")
    _model_args(p)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--prompt", default="1", help="comma-separated token ids")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    _engine_arg(p)
    _json_arg(p)

    p = sub.add_parser("estimate", help="cycles, seconds and tokens/s of one decode step")
    _model_args(p)
    p.add_argument("--context", type=int, default=None, help="KV-cache length (default: max)")
    _engine_arg(p)
    _json_arg(p)

    p = sub.add_parser("compile", help="write a Program file and its listing")
    _model_args(p)
    p.add_argument("--context", type=int, default=None)
    p.add_argument("--pos", type=int, default=None, help="decode position (default: last)")
    p.add_argument("-o", "--output", required=True, help="Program file to write")
    p.add_argument("--listing", default=None, help="listing file (default: OUTPUT.txt)")
    _json_arg(p)

    p = sub.add_parser("simulate", help="run a saved Program (timing mode)")
    p.add_argument("program", help="a file written by `lpusim compile`")
    p.add_argument("--hw", default=None, help="refuse the file unless compiled for this hardware")
    _engine_arg(p)
    _json_arg(p)

    p = sub.add_parser("presets", help="the hardware presets with their key figures")
    _json_arg(p)
    p = sub.add_parser("models", help="the model registry with parameter counts")
    _json_arg(p)
    return ap


def _emit(args, obj: dict, text: str) -> None:
    print(json.dumps(obj, default=float) if args.json else text)


def _cmd_validate(args) -> int:
    from lpusim.api import validate

    try:
        prompt = tuple(int(t) for t in args.prompt.split(","))
    except ValueError:
        raise LpuError(f"--prompt {args.prompt!r} must be comma-separated integers") from None
    if args.chips != 1:
        raise LpuError(f"--chips {args.chips}: multi-chip simulation is not implemented yet")
    v = validate(
        args.model, args.hw, tokens=args.tokens, prompt=prompt, seed=args.seed, engine=args.engine
    )
    obj = v.to_dict()
    obj["predicted_cycles"] = sum(v.predicted_cycles)
    obj["simulated_cycles"] = sum(v.simulated_cycles)
    obj["cycles_per_step"] = v.simulated_cycles
    _emit(args, obj, str(v))
    return 0 if v.tokens_match and v.within_tolerance else 1


def _cmd_estimate(args) -> int:
    from lpusim.api import estimate

    e = estimate(args.model, args.hw, chips=args.chips, context=args.context, engine=args.engine)
    _emit(args, e.to_dict(), str(e))
    return 0


def _cmd_compile(args) -> int:
    from compiler import compile as compile_program

    prog = compile_program(
        args.model, args.hw, chips=args.chips, context=args.context, pos=args.pos
    )
    out = Path(args.output)
    prog.save(out)
    listing = Path(args.listing) if args.listing else out.with_name(out.name + ".txt")
    listing.write_text(prog.disassemble() + "\n")
    obj = {
        "program": str(out),
        "listing": str(listing),
        "hash": prog.content_hash,
        "instructions": len(prog.instrs),
        "predicted_cycles": prog.predicted_cycles,
        **prog.meta,
    }
    text = "\n".join(f"{k:<17} {v}" for k, v in obj.items())
    _emit(args, obj, text)
    return 0


def _cmd_simulate(args) -> int:
    from sim import Program, simulate
    from sim.hardware import load_hardware

    hw = load_hardware(args.hw) if args.hw else None
    prog = Program.load(args.program, hw)
    r = simulate(prog, mode="timing", engine=args.engine)
    obj = {
        "program": args.program,
        "hw": prog.hw.name,
        **r.summary(),
        "tokens_per_s": 1.0 / r.seconds if r.seconds else None,
    }
    text = "\n".join(f"{k:<17} {v}" for k, v in obj.items())
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
    "presets": _cmd_presets,
    "models": _cmd_models,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (LpuError, ValueError, KeyError, TypeError, OSError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"lpusim {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
