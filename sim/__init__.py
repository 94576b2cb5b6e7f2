"""The machine: hardware configs and presets, the ISA, Programs, and the two executors."""

from sim.errors import ConfigError, LpuError, ProgramFormatError, ScheduleViolation
from sim.execute import simulate
from sim.hardware import PRESETS, HardwareConfig, load_hardware, preset
from sim.program import Program, Symbol
from sim.result import SimResult

__all__ = [
    "ConfigError",
    "HardwareConfig",
    "LpuError",
    "PRESETS",
    "Program",
    "ProgramFormatError",
    "ScheduleViolation",
    "SimResult",
    "Symbol",
    "load_hardware",
    "preset",
    "simulate",
]
