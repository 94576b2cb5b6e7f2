"""SimResult: what a simulation measured, with the figures a researcher asks for."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.hardware import HardwareConfig


# Per-cycle capacity of each resource kind, to turn event counts into utilisation (the links'
# depends on the program's links: SimResult.link_utilisation).
def capacities(hw: HardwareConfig) -> dict[str, float]:
    return {
        "mem_read": hw.mem_slices,
        "mem_write": hw.mem_slices,
        "vxm": hw.vxm_alus,
        "sxm": 2 * hw.sxm_units_per_hemisphere,
        "mxm_install": hw.mxm_planes * hw.mxm_install_vectors_per_cycle,
        "mxm_matmul": hw.mxm_planes,
        "stream_hops": 2 * hw.streams_per_direction * hw.width_positions,
    }


@dataclass(frozen=True)
class SimResult:
    hw: HardwareConfig
    cycles: int
    predicted_cycles: int
    mode: str  # "functional" | "timing"
    engine: str  # "numba" | "reference"
    outputs: dict[str, np.ndarray]
    busy: dict[str, int]  # events per resource kind (MEM counts words: one per slice used)
    bytes_read: int
    bytes_written: int
    instructions: int
    vector_ops: int  # events: every repetition of every instruction
    trace: list = field(default_factory=list, repr=False)
    # (links, 2) int64: bytes sent over each link a -> b and b -> a (Program.links)
    link_bytes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    chips: int = 1  # whose units `busy` counts together
    # Groups of identical chips the engine simulated once each (by the group's first chip), every
    # chip in one group; empty when every chip was simulated on its own (sim/engine/share.py).
    chip_groups: tuple[tuple[int, ...], ...] = ()

    @property
    def chips_simulated(self) -> int | None:
        """How many chips' runs the engine made when it shared them (None: every chip's)."""
        return len(self.chip_groups) if self.chip_groups else None

    @property
    def seconds(self) -> float:
        return self.cycles / self.hw.clock_hz

    @property
    def link_utilisation(self) -> np.ndarray:
        """(links, 2): the fraction of the run's cycles each link direction was sending."""
        if not self.cycles:
            return np.zeros(self.link_bytes.shape)
        return self.link_bytes / (self.hw.c2c_bytes_per_cycle * self.cycles)

    @property
    def utilisation(self) -> dict[str, float]:
        """Busy fraction per resource kind, of every chip's units together; "c2c_send": of
        every link direction together."""
        cap = capacities(self.hw)
        out = {}
        for k, v in self.busy.items():
            if k == "c2c_send":
                u = self.link_utilisation
                out[k] = float(u.mean()) if u.size else 0.0
            else:
                out[k] = v / (cap[k] * self.cycles * self.chips) if self.cycles else 0.0
        return out

    def summary(self) -> dict:
        return {
            "cycles": self.cycles,
            "predicted_cycles": self.predicted_cycles,
            "seconds": self.seconds,
            "mode": self.mode,
            "engine": self.engine,
            "instructions": self.instructions,
            "vector_ops": self.vector_ops,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "unit_utilisation": self.utilisation,
            "link_bytes": self.link_bytes.tolist(),
            "chips_simulated": self.chips_simulated,
        }
