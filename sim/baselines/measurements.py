"""The published measurements the GPU time model is fitted on, transcribed from
shared/REFERENCE.md, "Calibration measurements (use these to fit the GPU model)". Nothing else is
fitted on.

Every row: batch 1, tokens/s per stream, gpt-fast README, on A100-80GB GPUs power-capped at
330 W, BF16 unless the setup says otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sim.baselines.specs import GPUS, TB, GPUSpec, get_gpu

SOURCE = (
    "shared/REFERENCE.md, Calibration measurements: gpt-fast README, A100-80GB power-capped at "
    "330 W, batch 1"
)

# The same row: "its empirical bandwidth peak ~ 1.7 TB/s". At 330 W the A100 streams at that rate,
# so it is this device's achievable bandwidth; everything else is the A100-80GB row.
CALIBRATION_GPU = dataclasses.replace(
    GPUS["a100-80gb"],
    name="a100-80gb-330w",
    achievable_bandwidth_bytes_per_s=1.7 * TB,
    source=GPUS["a100-80gb"].source + "; achievable bandwidth: " + SOURCE + ", 1.7 TB/s",
)

# The rows give no context length. Taken as 128 KV positions: batch-1 generations of short
# outputs. At 128 positions the KV cache is < 0.6% of the bytes a step reads for every model
# below (llama2-7b: 67 MB of 13.5 GB), so the fit barely depends on it: refitting with 1 or 512
# positions moves bandwidth_efficiency by < 1% (benchmarks/calibrate_gpu.py prints the check).
CALIBRATION_CONTEXT = 128


@dataclass(frozen=True)
class CalibrationPoint:
    model: str  # a name of the models/ registry
    tp: int  # GPUs, tensor-parallel
    weights: str  # a key of sim.baselines.model.FORMATS
    tokens_per_s: float  # measured, per stream
    row: str  # the REFERENCE.md row it is transcribed from
    gpu: str = CALIBRATION_GPU.name  # a name of GPUS, or the calibration device
    context: int = CALIBRATION_CONTEXT  # KV-cache positions


def point_gpu(p: CalibrationPoint) -> GPUSpec:
    return CALIBRATION_GPU if p.gpu == CALIBRATION_GPU.name else get_gpu(p.gpu)


# (model, row text, tp, weights, tokens/s), in the order of the REFERENCE.md table.
_ROWS = (
    ("llama2-7b", "Llama-2-7B | 1 GPU, BF16 / INT8 weights / INT4 (group 32)", 1, "bf16", 104.9),
    ("llama2-7b", "Llama-2-7B | 1 GPU, BF16 / INT8 weights / INT4 (group 32)", 1, "int8", 155.6),
    ("llama2-7b", "Llama-2-7B | 1 GPU, BF16 / INT8 weights / INT4 (group 32)", 1, "int4", 196.8),
    ("llama2-7b", "Llama-2-7B | TP 2 / 4 / 8, BF16", 2, "bf16", 168.8),
    ("llama2-7b", "Llama-2-7B | TP 2 / 4 / 8, BF16", 4, "bf16", 254.0),
    ("llama2-7b", "Llama-2-7B | TP 2 / 4 / 8, BF16", 8, "bf16", 328.4),
    ("llama2-70b", "Llama-2-70B | 1 GPU INT8 / INT4", 1, "int8", 19.1),
    ("llama2-70b", "Llama-2-70B | 1 GPU INT8 / INT4", 1, "int4", 25.3),
    ("llama2-70b", "Llama-2-70B | TP 2 / 4 / 8, BF16", 2, "bf16", 21.3),
    ("llama2-70b", "Llama-2-70B | TP 2 / 4 / 8, BF16", 4, "bf16", 38.0),
    ("llama2-70b", "Llama-2-70B | TP 2 / 4 / 8, BF16", 8, "bf16", 62.5),
    ("llama3.1-8b", "Llama-3.1-8B | 1 GPU BF16 / INT8", 1, "bf16", 93.9),
    ("llama3.1-8b", "Llama-3.1-8B | 1 GPU BF16 / INT8", 1, "int8", 137.6),
    # Mixtral at batch 1 reads only the 2 experts (of 8) its token is routed to in each layer.
    ("mixtral-8x7b", "Mixtral-8x7B | TP 2 / 4 / 8, BF16", 2, "bf16", 96.7),
    ("mixtral-8x7b", "Mixtral-8x7B | TP 2 / 4 / 8, BF16", 4, "bf16", 155.4),
    ("mixtral-8x7b", "Mixtral-8x7B | TP 2 / 4 / 8, BF16", 8, "bf16", 227.8),
)

CALIBRATION_POINTS: tuple[CalibrationPoint, ...] = tuple(
    CalibrationPoint(model=m, tp=tp, weights=w, tokens_per_s=tok, row=row)
    for m, row, tp, w, tok in _ROWS
)


def setup(p: CalibrationPoint) -> str:
    """Short readable description: "TP 2, bf16"."""
    return f"{'1 GPU' if p.tp == 1 else f'TP {p.tp}'}, {p.weights}"
