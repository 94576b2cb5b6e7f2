"""GPU baselines: the machines people would pick instead of an LPU, and a calibrated time model
of transformer decode and prefill on them.

    from sim.baselines import GPUS, ModelDims, decode_time, prefill_time
    decode_time("h100-sxm", dims, weights="bf16", tp=2, batch=8, context=2048).step_s

specs        the GPU table, each figure with its source (shared/REFERENCE.md)
model        the time model: bytes / bandwidth, FLOPs / FLOP/s, per-layer overhead, all-reduces
efficiency   the fitted parameters' definitions
calibration  their fitted values and the fit's error on every calibration point
measurements the calibration points, transcribed from shared/REFERENCE.md
fit          the least-squares fit (benchmarks/calibrate_gpu.py runs it)
"""

from sim.baselines.calibration import FIT_ERRORS, FITTED
from sim.baselines.efficiency import Efficiency
from sim.baselines.model import (
    FORMATS,
    DoesNotFit,
    ModelDims,
    StepTime,
    UnsupportedFormat,
    decode_time,
    memory_per_device,
    min_devices,
    prefill_time,
    valid_tp,
)
from sim.baselines.specs import GPUS, GPUSpec, UnknownGPU, get_gpu

__all__ = [
    "FITTED",
    "FIT_ERRORS",
    "FORMATS",
    "GPUS",
    "DoesNotFit",
    "Efficiency",
    "GPUSpec",
    "ModelDims",
    "StepTime",
    "UnknownGPU",
    "UnsupportedFormat",
    "decode_time",
    "get_gpu",
    "memory_per_device",
    "min_devices",
    "prefill_time",
    "valid_tp",
]
