"""Every user-facing error of the machine side. Each names the bad value and what would be valid."""

from __future__ import annotations

from pathlib import Path


class LpuError(Exception):
    """Base of every error the project raises on purpose; the CLI prints these in one line."""


class ConfigError(LpuError, ValueError):
    """An invalid hardware configuration field, file or preset name."""


class ArgumentError(LpuError, ValueError):
    """A bad argument to a command or API function: a wrong type (a bool, float or string where an
    integer is due), a value out of range, an empty path. The message names the argument, its value
    and what would be valid; `as_option()` says the same naming the command-line option."""

    def __init__(self, name: str, value, valid: str, message: str | None = None):
        self.name, self.value, self.valid = name, value, valid
        super().__init__(message or f"{name}={value!r} {valid}")

    def as_option(self) -> str:
        return f"--{self.name.replace('_', '-')}: {self}"


class HostMemoryError(LpuError, MemoryError):
    """Building what a command needs (random weights, a KV cache) would exceed this machine's
    available memory; says how much it needs and how much there is."""


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


def read_file(path, what: str, error: type[LpuError], text: bool = False):
    """The bytes (or, with `text`, the UTF-8 text) of the file `what` names, e.g. "hardware
    file"; any failure to read it is one line of `error` naming the file."""
    name = f"{what} {str(path)!r}"
    try:
        data = Path(path).read_bytes()
        return data.decode("utf-8") if text else data
    except FileNotFoundError:
        raise error(f"{name} does not exist") from None
    except IsADirectoryError:
        raise error(f"{name} is a directory") from None
    except UnicodeDecodeError as e:
        raise error(
            f"{name} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
            "TOML files are UTF-8"
        ) from None
    except OSError as e:
        raise error(f"cannot read {name}: {e.strerror}") from None


def read_toml(path, what: str, error: type[LpuError]) -> dict:
    """The table of the TOML file `what` names (read_file's errors, and one line of `error` if
    it is not valid TOML)."""
    import tomllib

    text = read_file(path, what, error, text=True)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{what} {str(path)!r} is not valid TOML: {e}") from None
