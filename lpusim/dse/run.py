"""Evaluating points: one LPU point (`evaluate`: the chips it needs, then `lpusim.estimate` with
the Program cache) or one GPU reference row (`evaluate_gpu`: the calibrated time model). Each
returns the point's row; a point that fails returns a row with its error, never raises, so one
bad point does not stop a sweep."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from compiler.passes.partition import Mapping, auto_mapping
from lpusim import checks
from lpusim.compare import lpu_chips_needed
from lpusim.dse.cache import PointPrograms, ProgramCache
from lpusim.dse.space import HW_FIELDS, GpuPoint, Point, chip_count
from lpusim.dse.store import UNITS
from sim.errors import LpuError

_caches: dict[str, ProgramCache] = {}  # one per cache folder in each worker process
_caches_lock = threading.Lock()


def program_cache(folder: str) -> ProgramCache:
    with _caches_lock:
        if folder not in _caches:
            _caches[folder] = ProgramCache(folder)
        return _caches[folder]


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if isinstance(e, LpuError) else f"{type(e).__name__}: {text}"


def base_row(p: Point) -> dict:
    row = {
        "key": p.key,
        "kind": "lpu",
        "machine": p.hw.name,
        "status": "ok",
        "error": None,
        "note": None,
        "model": p.model,
        "weights": p.weights,
        "context": p.context,
        "layers": p.layers,
        "head": p.layers is None,
        "batch": p.batch,
        "chips_spec": p.chips,
        "chips": chip_count(p.chips),
        "hw_base": p.base,
        "hw_hash": p.hw.hash,
        **{f: getattr(p.hw, f) for f in HW_FIELDS},
        "sram_bytes": p.hw.sram_bytes,
        "point": p.index,
        "lpusim_version": p.version,
    }
    return row


def _estimate_point(p: Point, row: dict, programs: PointPrograms):
    from lpusim.api import estimate

    cfg = checks.model(p.model)
    context = checks.context(cfg, p.context)
    layers = checks.optional_count("layers", p.layers, 1, cfg.n_layers)
    row["context"] = context
    row["layers"] = cfg.n_layers if layers is None else layers
    mapping = None  # one chip, or pipeline stages on every chip of a count
    if p.chips == "auto":  # the fewest chips that hold the step
        chips = max(1, lpu_chips_needed(cfg, p.hw, context, p.weights, layers))
        if chips > 1 and layers is None:  # the mapping that holds it (more chips, maybe)
            mapping = auto_mapping(cfg, p.hw, context, p.weights).mapping
            chips = mapping.chips
    else:
        chips = row["chips"]
        if "=" in p.chips:
            mapping = Mapping.parse(p.chips)
    row["chips"] = chips
    row["mapping"] = str(mapping or Mapping(pp=chips))
    if chips > 1 and layers is not None:
        raise LpuError(f"{chips} chips take whole models; layers={layers} is for one chip")
    if p.batch != 1:
        raise LpuError(f"batch {p.batch}: only batch-1 decode programs compile yet")
    return estimate(
        cfg, p.hw, chips=chips, mapping=mapping, context=context, weights=p.weights,
        layers=layers, engine=p.engine, programs=programs,
    )  # fmt: skip


def evaluate(p: Point, cache_folder: str, run: int) -> dict:
    """The row of one LPU point."""
    t0 = time.perf_counter()
    row = base_row(p)
    programs = PointPrograms(program_cache(cache_folder))
    try:
        e = _estimate_point(p, row, programs)
    except Exception as exc:  # recorded as the point's error: the sweep goes on
        row.update(status="error", error=one_line(exc))
    else:
        row.update(
            cycles=e.cycles_per_token,
            predicted_cycles=e.predicted_cycles,
            step_s=e.seconds_per_token,
            tokens_per_s_user=e.tokens_per_s,
            batch_tokens_per_s=p.batch * e.tokens_per_s,
            bound=e.bound_by,
            bound_cycles=e.bound_cycles,
            bound_fraction=e.bound_fraction,
            utilisation=max(e.unit_utilisation.values()),
            # of the SRAM's read bandwidth: one word per slice per cycle (as in `compare`)
            bandwidth_utilisation=e.bytes_read
            / e.cycles_per_token
            / (p.hw.mem_slices * p.hw.lanes),
            **{f"util_{u}": e.unit_utilisation.get(u) for u in UNITS},
            sram_bytes_used=e.sram_bytes_used,
            sram_high_water_bytes=e.sram_high_water_bytes,
            bytes_read=e.bytes_read,
            bytes_written=e.bytes_written,
            link_bytes=e.link_bytes,
            c2c_cycles=e.time_breakdown.get("chip to chip", 0),
            instructions=e.instructions,
            vector_ops=e.vector_ops,
            compile_s=e.compile_s,
            simulate_s=e.simulate_s,
        )
    row.update(
        program_key=programs.key,
        program_cached=programs.hit,
        wall_s=time.perf_counter() - t0,
        run=run,
    )
    return row


def evaluate_gpu(g: GpuPoint, run: int) -> dict:
    """The row of one GPU reference: `compare`'s GPU row for the same model, weights, context and
    batch (the whole model; weights "native" as the model is served: fp16 for fp32 models)."""
    from lpusim.compare import gpu_row, model_dims, natural_format
    from sim.baselines import FITTED

    t0 = time.perf_counter()
    cfg = checks.model(g.model)
    context = checks.context(cfg, g.context)
    weights = natural_format(cfg) if g.weights == "native" else g.weights
    r = gpu_row(
        g.gpu, model_dims(cfg), weights=weights, batch=g.batch, context=context,
        prompt=max(context // 2, 1), tp=None, eff=FITTED,
    )  # fmt: skip
    ok = r["tokens_per_s_user"] is not None
    return {
        "key": g.key,
        "kind": "gpu",
        "machine": g.gpu,
        "status": "ok" if ok else "error",
        "error": None if ok else r["note"],
        "note": (r["note"] or None) if ok else None,
        "model": g.model,
        "weights": g.weights,
        "context": context,
        "layers": cfg.n_layers,
        "head": True,
        "batch": g.batch,
        "chips_spec": "auto",
        "chips": r["devices"],
        "step_s": r["step_s"],
        "tokens_per_s_user": r["tokens_per_s_user"],
        "batch_tokens_per_s": r["batch_tokens_per_s"],
        "bound": r["bound"],
        "bandwidth_utilisation": r["bandwidth_utilisation"],
        "wall_s": time.perf_counter() - t0,
        "run": run,
        "point": g.index,
        "lpusim_version": g.version,
    }


def default_cache(output: Path) -> Path:
    return output / "programs"
