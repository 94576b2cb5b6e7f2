"""The LPU next to the GPUs people use: one table, the same model, precision, batch and context on
both sides.

    compare("llama2-70b", "groq-tsp-v1", ["h100-sxm", "b200"])  -> pandas DataFrame, one row per
                                                                    machine (per weights x batch)
    plot(df, "cmp.png")                                         -> roofline + tokens/s per user
    measure("tiny-llama", tokens=64)                            -> the JAX reference timed here

GPU rows come from the calibrated time model in sim.baselines. The LPU row comes from
`lpusim.estimate` (compile + simulate one decode step); where the LPU side cannot compile the
configuration yet, its row says why and its figures are None: nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jax
import numpy as np
import pandas as pd

from compiler import ModelTooLarge
from compiler.frontend.model import decode_specs, resolve_model
from compiler.passes.partition import auto_mapping
from compiler.passes.place import stored_bytes
from lpusim import checks
from lpusim.api import _table, estimate, mapping_advice
from models import ModelConfig, decode_step, embed, init_cache, init_params, param_count
from sim.baselines import (
    FITTED,
    FORMATS,
    GPUS,
    DoesNotFit,
    Efficiency,
    GPUSpec,
    ModelDims,
    UnsupportedFormat,
    decode_time,
    get_gpu,
    min_devices,
    prefill_time,
)
from sim.baselines.model import decode_demand, prefill_demand
from sim.errors import ArgumentError, LpuError
from sim.hardware import HardwareConfig, load_hardware

DEFAULT_GPUS = ("a100-80gb", "h100-sxm", "h200", "b200", "mi300x")
# Storage dtypes the LPU compiler accepts, by the weight-format names both sides share.
# compare's weight format -> (the model's storage dtype for the LPU, or None to keep it; the
# compiler's weight format)
# the model's storage dtype -> its format name
DTYPE_FORMAT = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
LPU_FORMATS = {
    "fp16": ("float16", "native"),
    "bf16": ("bfloat16", "native"),
    "fp32": ("float32", "native"),
    "int8": (None, "int8"),
    "fp8": (None, "fp8"),
}
WEIGHTS = tuple(FORMATS) + ("fp32",)
# A TP group larger than one 8-GPU node crosses nodes, whose network REFERENCE.md does not give.
NODE_GPUS = 8
# Above this fraction of device memory a row says that little is left for activations and
# workspace, which the capacity check does not count.
FULL = 0.9

COLUMNS = (
    "machine",
    "kind",
    "weights",
    "batch",
    "context",
    "prompt",
    "devices",
    "tp",
    "tokens_per_s_user",
    "step_s",
    "ttft_s",
    "batch_tokens_per_s",
    "tokens_per_s_per_device",
    "bandwidth_utilisation",
    "bound",
    "why",
    "prefill_bound",
    "memory_per_device_bytes",
    "note",
)


def model_dims(cfg: ModelConfig) -> ModelDims:
    """The plain numbers the GPU time model needs; parameters it does not split out (norms,
    biases, learned positions) go to other_params so the total equals models.param_count."""
    base = ModelDims(
        name=cfg.name,
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        d_ff=cfg.d_ff,
        vocab_size=cfg.vocab_size,
        mlp_matrices=2 if cfg.family == "gpt2" else 3,  # GELU MLP vs SwiGLU
        n_experts=cfg.n_experts,
        experts_per_token=cfg.experts_per_token,
        tie_embeddings=cfg.tie_embeddings,
    )
    return dataclasses.replace(base, other_params=param_count(cfg) - base.params)


def _as_list(value, name: str) -> list:
    """A value or a sequence of them as a list; each item is checked by its user."""
    if isinstance(value, str) or not isinstance(value, (Sequence, np.ndarray)):
        return [value]
    out = list(value)
    if not out:
        raise ArgumentError(name, value, "must name at least one value")
    return out


def _gpu(name):
    if not isinstance(name, (str, GPUSpec)):
        raise ArgumentError("gpus", name, f"must name GPUs; known GPUs: {', '.join(GPUS)}")
    return get_gpu(name)


def natural_format(cfg: ModelConfig) -> str:
    """The weight format a model is served in: its storage dtype's, except that a model published
    in FP32 (GPT-2) is served in FP16, as every GPU stack runs it."""
    return "fp16" if cfg.dtype == "float32" else DTYPE_FORMAT[cfg.dtype]


# --- the GPU side ---------------------------------------------------------------------------------


def _empty_row(machine, kind, weights, batch, context, prompt, note) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(
        machine=machine,
        kind=kind,
        weights=weights,
        batch=batch,
        context=context,
        prompt=prompt,
        note=note,
    )
    return row


def gpu_row(gpu, dims, *, weights, batch, context, prompt, tp, eff, asked="tp") -> dict:
    """One GPU's row: on `tp` devices (`asked` names the option that set it), or by default on the
    fewest that hold the model and KV cache."""
    gpu = get_gpu(gpu)
    row = _empty_row(gpu.name, "gpu", weights, batch, context, prompt, "")
    if weights not in FORMATS:
        row["note"] = (
            f"{weights} weights are not modelled on GPUs (the GPUs table has no FP32 FLOP/s); "
            f"GPU formats: {', '.join(FORMATS)}"
        )
        return row
    row["devices"] = tp
    try:
        n = tp or min_devices(gpu, dims, weights=weights, batch=batch, context=context)
        dec = decode_time(gpu, dims, weights=weights, tp=n, batch=batch, context=context, eff=eff)
        pre = prefill_time(
            gpu, dims, weights=weights, tp=n, batch=batch, prompt=prompt, context=context, eff=eff
        )
    except (DoesNotFit, UnsupportedFormat) as e:
        row["note"] = str(e)
        return row
    notes = []
    if dec.memory_per_device_bytes > FULL * gpu.memory_bytes:
        notes.append(
            f"fills {dec.memory_per_device_bytes / gpu.memory_bytes:.0%} of each device's memory "
            "with weights and KV cache alone (activations and workspace not counted)"
        )
    if n > NODE_GPUS:
        notes.append(
            f"tp {n} spans more than one {NODE_GPUS}-GPU node; all-reduces use the "
            f"{gpu.link} figures (optimistic)"
        )
    chosen = f"as {asked} asked" if tp else "the fewest that hold weights and KV cache"
    row.update(
        devices=n,
        tp=n,
        tokens_per_s_user=1.0 / dec.step_s,
        step_s=dec.step_s,
        ttft_s=pre.step_s,
        batch_tokens_per_s=batch / dec.step_s,
        tokens_per_s_per_device=batch / dec.step_s / n,
        bandwidth_utilisation=dec.bandwidth_utilisation,
        bound=dec.bound,
        why=gpu_why(dec, n, chosen),
        prefill_bound=pre.bound,
        memory_per_device_bytes=dec.memory_per_device_bytes,
        note="; ".join(notes),
    )
    return row


def gpu_why(dec, devices: int, chosen: str) -> str:
    """What sets a GPU's decode step: its terms (sim.baselines.model.step_time) and its devices."""
    return (
        f"{dec.bound}: reading {_si(dec.bytes_per_device, 'B')} per device takes "
        f"{_si(dec.memory_s, 's')}, compute {_si(dec.compute_s, 's')}, per-layer overhead "
        f"{_si(dec.overhead_s, 's')}, all-reduces {_si(dec.communication_s, 's')}; "
        f"{devices} device{'s' if devices > 1 else ''} ({chosen})"
    )


def _si(value: float, unit: str) -> str:
    """3 significant digits with an SI prefix: 68.9 GB, 24 ms, 251 ns."""
    if value == 0:
        return f"0 {unit}"
    prefixes = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "u"))
    scale, prefix = next((p for p in prefixes if abs(value) >= p[0]), (1e-9, "n"))
    return f"{value / scale:.3g} {prefix}{unit}"


# --- the LPU side ---------------------------------------------------------------------------------


def lpu_chips_needed(
    cfg: ModelConfig,
    hw: HardwareConfig,
    context: int,
    weights: str = "native",
    layers: int | None = None,
) -> int:
    """Chips whose SRAM holds the weights and KV cache (of the first `layers` layers and no
    head, if given), by the compiler's own fit arithmetic."""
    n = cfg.n_layers if layers is None else layers
    args = decode_specs(
        cfg, context=context, weights=weights, layers=n, head=layers is None, lanes=hw.lanes
    )
    total = sum(
        stored_bytes(np.shape(leaf), np.dtype(leaf.dtype).name, hw)
        for leaf in jax.tree_util.tree_leaves(args)
    )
    return -(-total // hw.sram_bytes)


def _default_engine() -> str:
    try:
        import sim.engine  # noqa: F401  (the Numba engine; fall back while it is unavailable)
    except ImportError:
        return "reference"
    return "numba"


def lpu_bound(utilisation: dict[str, float]) -> str:
    """The busiest unit when it is busy at least half the step; otherwise the step is as long as
    its chain of dependent operations (latency), not any unit's throughput."""
    unit = max(utilisation, key=utilisation.get)
    u = utilisation[unit]
    if u >= 0.5:
        return f"{unit} ({u:.0%} busy)"
    return f"latency (critical path; busiest unit {unit} {u:.1%})"


def lpu_row(
    cfg, hw, *, weights, batch, context, prompt, engine, cache, devices=None, many=True
) -> dict:
    """Estimate's figures where the configuration compiles; otherwise a row saying why not.
    `devices`: the chips asked for (default: the fewest whose SRAM holds weights and KV cache,
    compiled and simulated on that mapping's chips unless `many` is False)."""
    row = _empty_row(hw.name, "lpu", weights, batch, context, prompt, "")
    if weights not in LPU_FORMATS:
        row["note"] = (
            f"{weights} weights do not compile for the LPU yet (storage: "
            f"{', '.join(LPU_FORMATS)} only)"
        )
        return row
    dtype, fmt = LPU_FORMATS[weights]
    if dtype is not None:
        cfg = dataclasses.replace(cfg, dtype=dtype)
    try:
        chips = lpu_chips_needed(cfg, hw, context, fmt)
    except LpuError as e:  # a family the compiler does not trace yet
        row["note"] = str(e)
        return row
    plan = None
    if chips > 1 and devices is None:  # the fewest chips a mapping holds it on, and which
        try:
            plan = auto_mapping(cfg, hw, context, fmt)
            chips, mapped = plan.mapping.chips, f" ({plan.mapping}, fullest chip {plan.fullest})"
            advice = mapping_advice(plan.mapping, cfg, hw)
        except LpuError:
            mapped, advice = "", "no mapping holds it"
        if plan is not None and many and batch == 1:
            return _mapped_row(row, cfg, hw, plan.mapping, context, fmt, engine, cache)
    row["devices"] = chips if devices is None else devices
    why = []
    if devices is not None and devices < chips:
        why.append(f"needs {chips} chips; {devices} hold too little SRAM")
    elif devices is not None and devices > 1:
        why.append(
            f"{devices} chips asked (needs {chips}); compare simulates one chip (estimate "
            "--chips compiles pipeline stages)"
        )
    elif chips > 1:
        why.append(f"needs {chips} chips{mapped}; {advice}")
    if batch != 1:
        why.append(f"batch {batch}: only batch-1 decode programs compile yet")
    if why:
        row["note"] = "; ".join(why)
        return row
    key = (cfg.dtype, fmt, context)
    if key not in cache:
        try:
            cache[key] = estimate(cfg, hw, chips=1, context=context, engine=engine, weights=fmt)
        except ModelTooLarge as e:
            cache[key] = e
    e = cache[key]
    if isinstance(e, ModelTooLarge):
        row["note"] = str(e)
        return row
    return _simulated(row, e, hw, 1, 1, lpu_why(e, hw), "simulated; TTFT: no prefill programs yet")


def _simulated(row, e, hw, chips: int, tp: int, why: str, note: str) -> dict:
    """The row's figures from estimate `e` of a step on `chips` chips."""
    sram_bytes_per_s = hw.mem_slices * hw.lanes * hw.clock_hz * chips  # a word a slice a cycle
    row.update(
        devices=chips,
        tp=tp,
        tokens_per_s_user=e.tokens_per_s,
        step_s=e.seconds_per_token,
        batch_tokens_per_s=e.tokens_per_s,
        tokens_per_s_per_device=e.tokens_per_s / chips,
        bandwidth_utilisation=e.bytes_read / e.seconds_per_token / sram_bytes_per_s,
        bound=lpu_bound(e.unit_utilisation),
        why=why,
        memory_per_device_bytes=e.sram_bytes_used / chips,
        note=note,
    )
    return row


def _mapped_row(row, cfg, hw, mapping, context, fmt, engine, cache) -> dict:
    """The LPU row of a model on the chips of `mapping`, compiled and timed by `estimate`."""
    key = (cfg.dtype, fmt, context, str(mapping))
    if key not in cache:
        try:
            cache[key] = estimate(cfg, hw, chips=mapping.chips, mapping=mapping, context=context,
                                  engine=engine, weights=fmt)  # fmt: skip
        except LpuError as e:
            cache[key] = e
    e = cache[key]
    row["devices"] = mapping.chips
    if isinstance(e, LpuError):
        row["note"] = f"needs {mapping.chips} chips ({mapping}); {e}"
        return row
    t = e.time_breakdown
    why = (
        f"{mapping} on {mapping.chips} chips: a token crosses {mapping.pp} stages, "
        f"{t.get('on chip', 0):,} cycles on chip and {t.get('chip to chip', 0):,} chip to "
        f"chip; {e.bound_by} bounds each stage"
    )
    note = f"simulated on {mapping.chips} chips ({mapping}); TTFT: no prefill programs yet"
    return _simulated(row, e, hw, mapping.chips, mapping.tp, why, note)


def lpu_why(e, hw: HardwareConfig) -> str:
    """What sets the simulated step: its largest lower bound (sim.bounds) and the busiest unit."""
    unit = max(e.unit_utilisation, key=e.unit_utilisation.get)
    busiest = f"busiest unit {unit} {e.unit_utilisation[unit]:.0%}"
    if e.bound_by == "dependency":
        return (
            f"latency: its chain of dependent operations needs {e.bound_cycles:,} of the step's "
            f"{e.cycles_per_token:,} cycles, with vectors crossing a chip {hw.width_positions} "
            f"positions wide; no unit's throughput limits it ({busiest})"
        )
    return (
        f"{e.bound_by}: needs at least {e.bound_cycles:,} of the step's {e.cycles_per_token:,} "
        f"cycles ({busiest}); one chip holds weights and KV cache"
    )


# --- compare --------------------------------------------------------------------------------------


def compare(
    model="llama2-7b",
    hw: str | HardwareConfig | None = "groq-tsp-v1",
    gpus: Sequence[str] | str = DEFAULT_GPUS,
    *,
    batch: int | Sequence[int] = 1,
    weights: str | Sequence[str] | None = None,
    tp: int | None = None,
    devices: int | None = None,
    context: int | None = None,
    prompt: int | None = None,
    engine: str | None = None,
    eff: Efficiency | None = None,
    many_chips: bool = True,
) -> pd.DataFrame:
    """One row per machine for every (weights, batch): the GPUs from the calibrated time model,
    then the LPU (`hw`; None leaves it out) from the simulator.

    weights: formats of FORMATS or "fp32" (default: the format the model is served in, fp16 for
    models published in fp32). devices: every machine's device count (default: each the fewest
    that hold model and KV cache); tp: the GPUs' tensor-parallel degree alone. context: KV-cache
    positions of the timed decode step (default: checks.DEFAULT_CONTEXT, capped at max_seq_len,
    as in `estimate`); prompt: the prefill length that TTFT times (default: context // 2).
    engine: the LPU simulator (default: "numba" when it imports). many_chips: a model one chip
    does not hold is compiled and simulated on the fewest chips that do (False: a row saying
    how many, at once; hundreds of chips take tens of seconds). Columns: COLUMNS, `why` saying
    what bounds each row's step; df.attrs holds the inputs (for `plot`).
    """
    cfg = checks.model(model)
    dims = model_dims(cfg)
    context = checks.context(cfg, context)
    prompt = max(context // 2, 1) if prompt is None else checks.count("prompt", prompt, 1, context)
    default = natural_format(cfg)
    weights_list = _as_list(weights if weights is not None else default, "weights")
    for w in weights_list:
        if w not in WEIGHTS:
            valid = f"formats: {', '.join(WEIGHTS)}"
            raise ArgumentError("weights", w, valid, f"unknown weight format {w!r}; {valid}")
    batches = [checks.count("batch", b) for b in _as_list(batch, "batch")]
    tp = checks.optional_count("tp", tp)
    devices = checks.optional_count("devices", devices)
    if tp is not None and devices is not None and tp != devices:
        raise ArgumentError("tp", tp, f"differs from devices={devices}; give one of them")
    gpu_specs = [_gpu(g) for g in _as_list(gpus, "gpus")]
    gpu_tp = devices or tp
    if gpu_tp is not None:
        decode_demand(dims, weights="bf16", tp=gpu_tp, batch=1, context=1)  # validates tp
    hw = load_hardware(hw) if hw is not None else None
    engine = checks.engine(engine) if engine is not None else _default_engine()
    eff = eff or FITTED
    asked = "devices" if devices is not None else "tp"
    rows, cache = [], {}
    for w in weights_list:
        for b in batches:
            lengths = dict(weights=w, batch=b, context=context, prompt=prompt)
            rows += [
                gpu_row(g, dims, tp=gpu_tp, eff=eff, asked=asked, **lengths) for g in gpu_specs
            ]
            if hw is not None:
                rows.append(
                    lpu_row(
                        cfg,
                        hw,
                        engine=engine,
                        cache=cache,
                        devices=devices,
                        many=many_chips,
                        **lengths,
                    )  # fmt: skip
                )
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("batch", "context", "prompt", "devices", "tp"):
        df[col] = df[col].astype("Int64")
    for col in COLUMNS:
        if col.endswith(("_s", "_user", "_device", "utilisation", "_bytes")):
            df[col] = df[col].astype(float)
    df.attrs.update(
        model=cfg.name,
        hw=hw.name if hw is not None else None,
        gpus=[g.name for g in gpu_specs],
        context=context,
        prompt=prompt,
        devices=devices,
        weights_note=(
            f"{cfg.name} is published in {cfg.dtype}; compared at {default}, as it is served"
            if weights is None and DTYPE_FORMAT[cfg.dtype] != default
            else None
        ),
        eff=asdict(eff),
    )
    return df


def records(df: pd.DataFrame) -> list[dict]:
    """The rows as JSON-ready dicts (None where a figure is missing)."""
    out = df.astype(object).where(df.notna(), None).to_dict("records")
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()} for r in out]


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def format_table(df: pd.DataFrame) -> str:
    """Readable text: one block per (weights, batch), notes numbered under each block."""
    head = (
        f"{'machine':<14}{'devices':>8}{'tok/s/user':>12}{'step ms':>10}{'TTFT ms':>10}"
        f"{'batch':>6}{'batch tok/s':>13}{'tok/s/dev':>11}{'BW util':>8}  bound"
    )
    out = []
    for (w, b), block in df.groupby(["weights", "batch"], sort=False):
        a = df.attrs
        out.append(
            f"{a.get('model')}: {w} weights, batch {b}, context {a.get('context')}, "
            f"prompt {a.get('prompt')}"
            + (f" ({a['weights_note']})" if a.get("weights_note") else "")
        )
        out.append(head)
        notes, whys = [], []
        for r in records(block):
            bound = r["bound"] or ""
            if r["note"]:
                if r["note"] not in notes:
                    notes.append(r["note"])
                bound = (bound + " " if bound else "") + f"[{notes.index(r['note']) + 1}]"
            out.append(
                f"{r['machine']:<14}{_fmt(r['devices'], 'd'):>8}"
                f"{_fmt(r['tokens_per_s_user'], '.4g'):>12}"
                f"{_fmt(r['step_s'] and r['step_s'] * 1e3, '.4g'):>10}"
                f"{_fmt(r['ttft_s'] and r['ttft_s'] * 1e3, '.4g'):>10}"
                f"{r['batch']:>6}{_fmt(r['batch_tokens_per_s'], '.4g'):>13}"
                f"{_fmt(r['tokens_per_s_per_device'], '.4g'):>11}"
                f"{_fmt(r['bandwidth_utilisation'], '.0%'):>8}  {bound}"
            )
            if r.get("why"):
                whys.append(f"  why {r['machine']}: {r['why']}")
        out += whys
        out += [f"  [{i}] {n}" for i, n in enumerate(notes, 1)]
        out.append("")
    return "\n".join(out).rstrip()


# --- plots ----------------------------------------------------------------------------------------


def lpu_roof(hw: HardwareConfig) -> tuple[float, float]:
    """(FLOP/s, bytes/s) of one chip: MXM planes of lanes x lanes MACs per cycle, 16-bit at a
    quarter of the 8-bit rate (REFERENCE.md "MXM" row), and one SRAM word per slice per cycle."""
    flops = 2 * hw.mxm_planes * hw.lanes**2 * hw.clock_hz / 4
    return flops, hw.mem_slices * hw.lanes * hw.clock_hz


def plot(df: pd.DataFrame, path=None):
    """Roofline (arithmetic intensity vs attainable FLOP/s per device, one line per machine, the
    model's decode and prefill points marked) and tokens/s per user. Returns the Figure; saves it
    to `path` when given."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    a = df.attrs
    if "model" not in a:
        raise LpuError("plot needs a DataFrame returned by lpusim.compare (its attrs are missing)")
    dims = model_dims(resolve_model(a["model"]))
    weights = str(df["weights"].iloc[0])
    # GPUs have no FP32 roof in the table: an fp32 comparison is drawn at the BF16 peaks, and the
    # title says so.
    fmt = FORMATS.get(weights, FORMATS["bf16"])
    shown = weights if weights in FORMATS else f"{weights} (roofs at BF16 peak)"
    fig = Figure(figsize=(13, 5), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    ai = np.logspace(-1, 4, 200)  # FLOP per byte
    roofs = []  # (machine, peak FLOP/s, peak bytes/s) per device
    for name in a["gpus"]:
        g = get_gpu(name)
        roofs.append(
            (name, g.flops_per_s.get(fmt.compute, g.flops_per_s["bf16"]), g.bandwidth_bytes_per_s)
        )
    if a["hw"]:
        roofs.append((a["hw"], *lpu_roof(load_hardware(a["hw"]))))
    color = {name: f"C{i}" for i, (name, _, _) in enumerate(roofs)}
    for name, peak, bw in roofs:
        label = name + (" (one chip)" if name == a["hw"] else "")
        ax.loglog(ai, np.minimum(peak, ai * bw), label=label, color=color[name])
    marks = []
    for b in sorted(set(df["batch"].dropna().astype(int))):
        d = decode_demand(dims, weights=fmt.name, tp=1, batch=b, context=a["context"])
        marks.append((f"decode, batch {b}", d.flops / d.bytes))
    p = prefill_demand(dims, weights=fmt.name, tp=1, batch=1, prompt=a["prompt"])
    marks.append((f"prefill, {a['prompt']} tokens", p.flops / p.bytes))
    for label, x in marks:
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.text(x, 0.02, " " + label, rotation=90, fontsize=8, transform=ax.get_xaxis_transform())
        for _, peak, bw in roofs:
            ax.plot([x], [min(peak, x * bw)], "k.", markersize=5)
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("attainable FLOP/s per device")
    ax.set_title(f"roofline: {a['model']}, {shown}, context {a['context']}")
    ax.legend(fontsize=8)
    # Grouped bars: one group per (weights, batch), one bar per machine; missing figures say n/a.
    groups = list(dict.fromkeys(zip(df["weights"], df["batch"], strict=True)))
    machines = list(dict.fromkeys(df["machine"]))
    width = 0.8 / len(machines)
    for i, m in enumerate(machines):
        for j, (w, b) in enumerate(groups):
            sel = df[(df["machine"] == m) & (df["weights"] == w) & (df["batch"] == b)]
            v = float(sel["tokens_per_s_user"].iloc[0]) if len(sel) else math.nan
            x = j + (i - (len(machines) - 1) / 2) * width
            n = sel["devices"].iloc[0] if len(sel) else None
            count = "" if n is None or pd.isna(n) else f"{int(n)} dev "
            if not math.isnan(v):
                bx.bar(x, v, width, color=color.get(m, f"C{i}"), label=m if j == 0 else None)
            # Every bar says how many devices (GPUs or chips) hold one copy of the model.
            bx.text(
                x,
                0.01,
                count + ("n/a" if math.isnan(v) else ""),
                rotation=90,
                ha="center",
                va="bottom",
                fontsize=7,
                transform=bx.get_xaxis_transform(),
            )
    bx.set_yscale("log")
    bx.set_xticks(range(len(groups)), [f"{w}\nbatch {b}" for w, b in groups])
    bx.set_ylabel("tokens/s per user")
    bx.set_title("decode tokens/s per user (N dev: devices; n/a: see the notes)")
    handles = [Patch(color=color.get(m, "grey"), label=m) for m in machines]
    bx.legend(handles=handles, fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


# --- measure --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    model: str
    device: str  # what JAX ran on, e.g. "cpu" or "NVIDIA H100 80GB HBM3"
    platform: str  # "cpu", "gpu", "tpu"
    dtype: str
    context: int
    tokens: int
    compile_s: float
    step_s: float  # mean over the timed steps
    step_s_median: float
    tokens_per_s: float
    bytes_per_step: int  # weights (less the host-side embedding table) + KV cache read + written
    achieved_bandwidth_bytes_per_s: float

    def to_dict(self) -> dict:
        return asdict(self)

    def calibration_point(self) -> dict:
        """The fields a calibration point needs (batch 1, one device, the model's dtype)."""
        return {
            "model": self.model,
            "tp": 1,
            "weights": DTYPE_FORMAT[self.dtype],
            "tokens_per_s": self.tokens_per_s,
            "device": self.device,
            "context": self.context,
        }

    def __str__(self) -> str:
        return _table(
            [
                ("model", f"{self.model} ({self.dtype})"),
                ("device", f"{self.device} ({self.platform})"),
                ("context", self.context),
                ("tokens timed", self.tokens),
                ("compile (s)", self.compile_s),
                ("step (s), mean", self.step_s),
                ("step (s), median", self.step_s_median),
                ("tokens/s", self.tokens_per_s),
                ("bytes per step", self.bytes_per_step),
                ("achieved bandwidth (GB/s)", self.achieved_bandwidth_bytes_per_s / 1e9),
            ]
        )


def measure(
    model="tiny-llama", *, tokens: int = 64, context: int | None = None, seed: int = 0
) -> Measurement:
    """Time the models/ reference decode step, jitted, on JAX's default device.

    Greedy decoding, each token fed back: `tokens` steps at the last position of a `context`-
    position KV cache (default: min(1024, max_seq_len)), i.e. the costliest step of a generation
    of that length, compiled once (models.decode_step takes its position as a static argument, so
    every position would be a compilation). The step includes the device-to-host argmax a real
    decode loop waits for."""
    cfg = checks.model(model)
    if cfg.family != "llama":
        raise ArgumentError(
            "model",
            cfg.name,
            f"is family {cfg.family!r}; the JAX reference decode step (models.llama) implements "
            "the llama family",
        )
    tokens = checks.count("tokens", tokens)
    context = checks.context(cfg, context)
    seed = checks.seed(seed)
    device = jax.devices()[0]
    # The random weights and the cache are built here; on a CPU, JAX holds a second copy.
    copies = 2 if device.platform == "cpu" else 1
    need = copies * (checks.weight_bytes(cfg) + checks.cache_bytes(cfg, context))
    checks.host_memory(need, f"measuring {cfg.name} (random {cfg.dtype} weights)")
    params = init_params(cfg, seed)
    weights = jax.device_put({k: v for k, v in params.items() if k != "embed"}, device)
    cache = jax.device_put(init_cache(cfg, context), device)
    pos = context - 1
    step = jax.jit(decode_step, static_argnames=("cfg", "pos"))

    def run(token, cache):
        logits, cache = step(weights, embed(params, token), cache, cfg=cfg, pos=pos)
        return _greedy(logits), cache

    t0 = time.perf_counter()
    token, cache = run(1, cache)  # compiles
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(tokens):
        t0 = time.perf_counter()
        token, cache = run(token, cache)
        times.append(time.perf_counter() - t0)
    weight_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(weights))
    kv_token = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * cfg.np_dtype.itemsize
    moved = weight_bytes + kv_token * (context + 1)  # read `context` positions, write one
    mean = sum(times) / len(times)
    return Measurement(
        model=cfg.name,
        device=getattr(device, "device_kind", str(device)),
        platform=device.platform,
        dtype=cfg.dtype,
        context=context,
        tokens=tokens,
        compile_s=compile_s,
        step_s=mean,
        step_s_median=statistics.median(times),
        tokens_per_s=1.0 / mean,
        bytes_per_step=int(moved),
        achieved_bandwidth_bytes_per_s=moved / mean,
    )


def _greedy(logits) -> int:
    """Greedy token of logits (1, vocab), lowest id on a tie, as models.generate picks it."""
    return int(np.argmax(np.asarray(logits)[0]))
