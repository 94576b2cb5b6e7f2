"""The few numbers of the GPU time model that are fitted rather than read off a datasheet.

The fitted values live in sim/baselines/calibration.py (written by benchmarks/calibrate_gpu.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from sim.errors import LpuError


@dataclass(frozen=True)
class Efficiency:
    # Fraction of the achievable (BabelStream) bandwidth that a decode step's kernels reach
    # while streaming weights and KV cache.
    bandwidth_efficiency: float
    # Fixed time per layer per step: kernel launches and the small memory-light kernels (norms,
    # rotary, softmax, residual adds) and the synchronisation between them.
    layer_overhead_s: float
    # Weight-only quantisation: the fraction of bandwidth_efficiency left once the matmul kernel
    # also unpacks and rescales the weights it streams.
    int8_efficiency: float
    int4_efficiency: float
    # Measured NCCL all-reduce latency x this = what an inference engine's all-reduce costs
    # (engines replay CUDA graphs and use small-message kernels that nccl-tests does not).
    allreduce_latency_scale: float
    # Fraction of the dense tensor-core peak a matmul reaches. NOT fitted: every calibration
    # point is batch-1 decode, which is memory-bound, so nothing measures it. 1.0 is the roofline
    # (an optimistic bound on compute-bound prefill and large-batch decode); set it to explore.
    compute_efficiency: float = 1.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise LpuError(f"Efficiency.{name}={value!r} must be a finite number > 0")
        if self.compute_efficiency > 1:
            raise LpuError(
                f"Efficiency.compute_efficiency={self.compute_efficiency!r} must be <= 1 "
                "(a fraction of the tensor-core peak)"
            )
