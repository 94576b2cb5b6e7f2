"""Every user-facing error of the machine side. Each names the bad value and what would be valid."""

from __future__ import annotations


class LpuError(Exception):
    """Base of every error the project raises on purpose; the CLI prints these in one line."""


class ConfigError(LpuError, ValueError):
    """An invalid hardware configuration field, file or preset name."""


class ProgramFormatError(LpuError, ValueError):
    """A Program file that is truncated, foreign, of another version, or built for other hardware."""


class ScheduleError(LpuError):
    """The compiler cannot place a program on this machine; names the resource and the config
    field to change."""


class ScheduleViolation(LpuError):
    """The program does something the hardware would silently get wrong.

    Raised by both executors with the chip, the functional-unit queue, the cycle, the offending
    instruction (index and disassembly), the graph op it came from, and the conflict.
    """

    def __init__(
        self,
        *,
        chip: int,
        unit: str,
        cycle: int,
        index: int,
        instr: str,
        source: str,
        conflict: str,
    ):
        self.chip, self.unit, self.cycle, self.index = chip, unit, cycle, index
        self.instr, self.source, self.conflict = instr, source, conflict
        super().__init__(
            f"chip {chip}, unit {unit}, cycle {cycle}: instruction #{index} `{instr}` "
            f"(from {source}): {conflict}"
        )
