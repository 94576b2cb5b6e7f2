"""Least-squares fit of the time model's efficiency parameters on calibration measurements.

Every calibration point is batch-1 decode, memory-bound (checked), so its step time is linear in

    theta = [1/eta, 1/(eta rho_int8), 1/(eta rho_int4), layer_overhead_s, allreduce_latency_scale]

(eta: bandwidth_efficiency, rho: the formats' efficiencies):

    t = weight_bytes / bw * theta[format] + kv_bytes / bw * theta[0] + layers * theta[3]
        + allreduces * latency(tp) * theta[4] + allreduces * transfer(tp, message)

Dividing each row by its measured time makes the least-squares objective the sum of squared
relative errors of the step time; numpy's lstsq solves it exactly, no iteration, no start point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sim.baselines.efficiency import Efficiency
from sim.baselines.measurements import CalibrationPoint, point_gpu, setup
from sim.baselines.model import (
    ModelDims,
    allreduce_latency_s,
    allreduce_transfer_s,
    decode_demand,
    decode_time,
    weight_format,
)
from sim.errors import LpuError

PARAMETERS = (
    "1/bandwidth_efficiency",
    "1/(bandwidth_efficiency x int8_efficiency)",
    "1/(bandwidth_efficiency x int4_efficiency)",
    "layer_overhead_s",
    "allreduce_latency_scale",
)
_COLUMN = {None: 0, "int8_efficiency": 1, "int4_efficiency": 2}


@dataclass(frozen=True)
class FitResult:
    efficiency: Efficiency
    rows: list[dict]  # per point: model, setup, measured and predicted tokens/s, rel_error
    rms_rel_error: float
    max_abs_rel_error: float


def _design(p: CalibrationPoint, dims: ModelDims):
    """One row of the linear system (seconds per unit of each parameter) and its fixed part."""
    gpu = point_gpu(p)
    d = decode_demand(dims, weights=p.weights, tp=p.tp, batch=1, context=p.context)
    bw = gpu.achievable_bandwidth_bytes_per_s
    row = np.zeros(len(PARAMETERS))
    row[_COLUMN[weight_format(p.weights).efficiency]] += d.weight_bytes / bw
    row[0] += d.kv_bytes / bw
    row[3] = d.layers
    row[4] = d.allreduces * allreduce_latency_s(gpu, p.tp)
    fixed = d.allreduces * allreduce_transfer_s(gpu, p.tp, d.allreduce_message_bytes)
    return row, fixed


def _round(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def evaluate(
    eff: Efficiency, points: Sequence[CalibrationPoint], dims_of: Callable[[str], ModelDims]
) -> list[dict]:
    """Each point's measured and predicted tokens/s and relative error (predicted / measured - 1)."""
    rows = []
    for p in points:
        t = decode_time(
            point_gpu(p),
            dims_of(p.model),
            weights=p.weights,
            tp=p.tp,
            batch=1,
            context=p.context,
            eff=eff,
        )
        predicted = 1.0 / t.step_s
        rows.append(
            {
                "model": p.model,
                "setup": setup(p),
                "tp": p.tp,
                "weights": p.weights,
                "measured_tokens_per_s": p.tokens_per_s,
                "predicted_tokens_per_s": predicted,
                "rel_error": predicted / p.tokens_per_s - 1.0,
                "bound": t.bound,
                "memory_s": t.memory_s,
                "compute_s": t.compute_s,
            }
        )
    return rows


def fit(points: Sequence[CalibrationPoint], dims_of: Callable[[str], ModelDims]) -> FitResult:
    """Fit the five parameters; values rounded to 4 significant digits, errors computed with the
    rounded values (so the stored table is exactly what the stored values give)."""
    a, b = [], []
    for p in points:
        row, fixed = _design(p, dims_of(p.model))
        t = 1.0 / p.tokens_per_s
        a.append(row / t)
        b.append(1.0 - fixed / t)
    a, b = np.array(a), np.array(b)
    unidentified = [name for name, col in zip(PARAMETERS, a.T, strict=True) if not col.any()]
    if unidentified or np.linalg.matrix_rank(a) < len(PARAMETERS):
        raise LpuError(
            f"the calibration points do not determine every parameter "
            f"(no point measures: {', '.join(unidentified) or 'a combination of them'})"
        )
    theta = np.linalg.lstsq(a, b, rcond=None)[0]
    if (theta <= 0).any():
        bad = [n for n, v in zip(PARAMETERS, theta, strict=True) if v <= 0]
        raise LpuError(f"the fit gives non-positive {', '.join(bad)}: the model does not fit")
    eff = Efficiency(
        bandwidth_efficiency=_round(1 / theta[0]),
        layer_overhead_s=_round(theta[3]),
        int8_efficiency=_round(theta[0] / theta[1]),
        int4_efficiency=_round(theta[0] / theta[2]),
        allreduce_latency_scale=_round(theta[4]),
    )
    rows = evaluate(eff, points, dims_of)
    compute_bound = [r for r in rows if r["compute_s"] > r["memory_s"]]
    if compute_bound:
        raise LpuError(
            f"calibration points {[(r['model'], r['setup']) for r in compute_bound]} are "
            "compute-bound; the linear fit assumes memory-bound decode"
        )
    errors = np.array([r["rel_error"] for r in rows])
    return FitResult(
        efficiency=eff,
        rows=rows,
        rms_rel_error=float(np.sqrt(np.mean(errors**2))),
        max_abs_rel_error=float(np.abs(errors).max()),
    )
