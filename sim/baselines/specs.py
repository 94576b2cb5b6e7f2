"""The GPUs an LPU is compared against: capacity, bandwidth, FLOP/s and interconnect, each with
where it comes from.

Every figure is a row of shared/REFERENCE.md. "GPUs table" is its "GPUs (dense figures, no
sparsity)" table; "BabelStream" its "Measured achievable memory bandwidth (BabelStream, Azure
AI-benchmarking-guide)" line; "NCCL" its "Measured NCCL all-reduce, 8 GPUs" line. Where a GPU
has no measurement the figure is derived, and the `derived` field says how. Units are in the
field names; "GB" in the table is taken as 10^9 bytes (conservative if a vendor means GiB).
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import LpuError

GB = 1e9
TB = 1e12
TFLOP = 1e12
US = 1e-6


class UnknownGPU(LpuError, ValueError):
    """A GPU name that is not in the table; the message lists the known names."""


@dataclass(frozen=True)
class GPUSpec:
    name: str
    memory_bytes: float  # HBM/GDDR capacity of one device
    bandwidth_bytes_per_s: float  # peak memory bandwidth (datasheet)
    achievable_bandwidth_bytes_per_s: float  # what a streaming kernel reaches (BabelStream)
    flops_per_s: dict[str, float]  # dense tensor-core peak by compute dtype ("bf16", "fp8")
    link_bytes_per_s: float  # device-to-device link as the table gives it (NVLink: both directions)
    link: str  # what the link is
    allreduce_bus_bytes_per_s: float  # NCCL bus bandwidth of an 8-device all-reduce
    allreduce_latency_s: float  # NCCL latency of a 1 KB 8-device all-reduce
    source: str  # the REFERENCE.md rows the figures come from
    derived: str = ""  # figures not measured on this device, and how they were obtained

    def __post_init__(self) -> None:
        for name in (
            "memory_bytes",
            "bandwidth_bytes_per_s",
            "achievable_bandwidth_bytes_per_s",
            "link_bytes_per_s",
            "allreduce_bus_bytes_per_s",
            "allreduce_latency_s",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise LpuError(f"GPUSpec {self.name!r}: {name}={value!r} must be > 0")
        if self.achievable_bandwidth_bytes_per_s > self.bandwidth_bytes_per_s:
            raise LpuError(
                f"GPUSpec {self.name!r}: achievable bandwidth "
                f"{self.achievable_bandwidth_bytes_per_s:.3g} B/s exceeds the peak "
                f"{self.bandwidth_bytes_per_s:.3g} B/s"
            )
        if "bf16" not in self.flops_per_s or any(v <= 0 for v in self.flops_per_s.values()):
            raise LpuError(
                f"GPUSpec {self.name!r}: flops_per_s={self.flops_per_s!r} needs a positive 'bf16'"
            )
        if not self.source:
            raise LpuError(f"GPUSpec {self.name!r}: every spec needs a source")


# Fraction of peak bandwidth BabelStream reaches, midpoints of the measured ranges (BabelStream
# line): A100-80GB 79-86%, H100 SXM 87-95%, H200 84-93%.
_STREAM_FRACTION = {"a100-80gb": 0.825, "h100-sxm": 0.91, "h200": 0.885}
# For a GPU that was not measured: the mean of those three (derived, conf D).
STREAM_FRACTION_UNMEASURED = sum(_STREAM_FRACTION.values()) / len(_STREAM_FRACTION)

# NCCL line: 8-GPU all-reduce bus bandwidth and 1 KB latency, per NVLink generation measured.
_NCCL_A100 = (231 * GB, 45 * US)  # NVLink3, 600 GB/s total
_NCCL_H100 = (479 * GB, 26 * US)  # NVLink4, 900 GB/s total
# Bus bandwidth as a fraction of the link's total bandwidth on the newest measured generation
# (H100: 479 / 900), used to scale unmeasured links (derived, conf D).
_NCCL_LINK_FRACTION = _NCCL_H100[0] / (900 * GB)
# The GPUs table names PCIe4 for L4 and L40S with no figure: PCIe Gen4 x16 as REFERENCE.md's
# "host link" row models it (GroqFlow groqmodel.py: 24 GB/s per transfer). NCCL over PCIe is
# taken to be no faster than the latency measured over NVLink3 (U).
_PCIE4 = (24 * GB, _NCCL_A100[1])


def _achievable(name: str, peak: float) -> float:
    return peak * _STREAM_FRACTION.get(name, STREAM_FRACTION_UNMEASURED)


def _gpu(name, memory_gb, bandwidth_gb, bf16_tflops, fp8_tflops, link_gb, link, row, nccl, derived):
    peak = bandwidth_gb * GB
    flops = {"bf16": bf16_tflops * TFLOP}
    if fp8_tflops is not None:
        flops["fp8"] = fp8_tflops * TFLOP
    measured = name in _STREAM_FRACTION
    stream = (
        f"BabelStream: {_STREAM_FRACTION[name]:.1%} of peak (midpoint of the measured range)"
        if measured
        else f"BabelStream: not measured; {STREAM_FRACTION_UNMEASURED:.1%} of peak, the mean of "
        "the A100-80GB, H100 SXM and H200 midpoints (D)"
    )
    return GPUSpec(
        name=name,
        memory_bytes=memory_gb * GB,
        bandwidth_bytes_per_s=peak,
        achievable_bandwidth_bytes_per_s=_achievable(name, peak),
        flops_per_s=flops,
        link_bytes_per_s=link_gb * GB,
        link=link,
        allreduce_bus_bytes_per_s=nccl[0],
        allreduce_latency_s=nccl[1],
        source=f"shared/REFERENCE.md GPUs table, row {row!r}; {stream}",
        derived=derived,
    )


_SAME_AS_H100_NCCL = "all-reduce: NCCL line's H100 figures (same NVLink4 900 GB/s) (D)"
_SCALED_NCCL = (
    "all-reduce: bus bandwidth = link total x 479/900 (H100's NCCL ratio), latency = H100's "
    "26 us (D, not measured)"
)
_PCIE_NCCL = (
    "all-reduce over PCIe Gen4 x16: 24 GB/s (REFERENCE 'host link' row, GroqFlow's PCIe model), "
    "latency = A100's NCCL 45 us (U)"
)

GPUS: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        _gpu(
            "a100-40gb",
            40,
            1555,
            312,
            None,  # no FP8 tensor cores (the table lists INT8 624 TOPS instead)
            600,
            "NVLink3",
            "A100-40GB SXM",
            _NCCL_A100,
            "all-reduce: NCCL line's A100 figures (same NVLink3) (D)",
        ),
        _gpu(
            "a100-80gb",
            80,
            2039,
            312,
            None,
            600,
            "NVLink3",
            "A100-80GB SXM",
            _NCCL_A100,
            "",
        ),
        _gpu("h100-sxm", 80, 3350, 989, 1979, 900, "NVLink4", "H100 SXM", _NCCL_H100, ""),
        _gpu(
            "h100-pcie",
            80,
            2000,
            756,
            1513,
            600,
            "NVLink bridge",
            "H100 PCIe",
            (600 * GB * _NCCL_LINK_FRACTION, _NCCL_H100[1]),
            _SCALED_NCCL + "; the bridge joins pairs of cards, so TP > 2 is optimistic",
        ),
        _gpu(
            "h200", 141, 4800, 989, 1979, 900, "NVLink4", "H200 SXM", _NCCL_H100, _SAME_AS_H100_NCCL
        ),
        _gpu(
            "b200",
            180,  # the table's range is 180-192 GB; the low end is taken
            8000,
            2250,
            4500,
            1800,
            "NVLink5",
            "B200",
            (1800 * GB * _NCCL_LINK_FRACTION, _NCCL_H100[1]),
            _SCALED_NCCL,
        ),
        _gpu("l4", 24, 300, 121, 242.5, 24, "PCIe4 x16", "L4", _PCIE4, _PCIE_NCCL),
        _gpu("l40s", 48, 864, 362, 733, 24, "PCIe4 x16", "L40S", _PCIE4, _PCIE_NCCL),
        _gpu(
            "mi300x",
            192,
            5300,
            1307,
            2615,
            896,
            "Infinity Fabric",
            "MI300X",
            (896 * GB * _NCCL_LINK_FRACTION, _NCCL_H100[1]),
            _SCALED_NCCL + " (RCCL on Infinity Fabric taken to behave like NCCL on NVLink4)",
        ),
    )
}


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    if isinstance(name, GPUSpec):
        return name
    try:
        return GPUS[name]
    except KeyError:
        raise UnknownGPU(f"unknown GPU {name!r}; known GPUs: {', '.join(GPUS)}") from None


def display_row(g: GPUSpec) -> dict:
    """One line of `lpusim gpus`, in display units (GB, TB/s, TFLOP/s, us)."""
    return {
        "name": g.name,
        "memory_gb": g.memory_bytes / GB,
        "bandwidth_tb_per_s": g.bandwidth_bytes_per_s / TB,
        "achievable_tb_per_s": g.achievable_bandwidth_bytes_per_s / TB,
        "bf16_tflops": g.flops_per_s["bf16"] / TFLOP,
        "fp8_tflops": g.flops_per_s["fp8"] / TFLOP if "fp8" in g.flops_per_s else None,
        "link": g.link,
        "link_gb_per_s": g.link_bytes_per_s / GB,
        "allreduce_bus_gb_per_s": g.allreduce_bus_bytes_per_s / GB,
        "allreduce_latency_us": g.allreduce_latency_s / US,
        "source": g.source,
        "derived": g.derived,
    }
