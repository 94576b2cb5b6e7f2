"""Compiled Programs on disk, by content hash, shared by every worker of a sweep.

The key covers what the compiler reads: the model's config, the weight format, context, layers,
chips, every HardwareConfig field the schedule depends on, and the compiler's version (the
lpusim version and a hash of the compiler's, the models' and the machine description's sources).
Not in the key: the config's name, `clock_hz` (seconds scale with it, cycles do not) and the
`c2c_*` link figures (no single-chip schedule uses a link). So points that differ only there load
the Program and simulate it again with their own config.

Safe under concurrent workers (processes or Dask threads): a Program is written to a temporary
file in the cache folder and renamed into place (`os.replace`, atomic on one filesystem), so a
reader sees a whole file or none; two workers that miss together both compile and the second
rename wins with identical contents. A file that fails to load (truncated by a crash before the
rename was possible, or from another version) counts as a miss and is rewritten. A compile that
fails with an LpuError (a schedule that cannot be placed) is cached as its message, so the points
that share it fail at once with the same words.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import threading
from functools import cache
from pathlib import Path

from compiler import compile as compile_program
from lpusim.dse.space import _digest, lpusim_version
from sim import Program
from sim.errors import LpuError, ProgramFormatError
from sim.hardware import HardwareConfig

# Config fields that do not change a single-chip schedule.
NOT_SCHEDULED = ("name", "clock_hz", "c2c_links", "c2c_bytes_per_cycle", "c2c_latency_cycles")
ROOT = Path(__file__).resolve().parents[2]
# What a Program is made from: a change to any of these files is a new compiler version.
SOURCES = ("compiler", "models", "sim/isa.py", "sim/program.py", "sim/hardware.py", "sim/icu.py")
MEMORY_PROGRAMS = 8  # Programs each worker keeps in memory (the last ones used)


class CachedCompileError(LpuError):
    """A compile that failed before, for the same key: the same message, without compiling."""


@cache
def compiler_version() -> str:
    h = hashlib.sha256(lpusim_version().encode())
    for name in SOURCES:
        p = ROOT / name
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def schedule_fields(hw: HardwareConfig) -> dict:
    return {k: v for k, v in hw.to_dict().items() if k not in NOT_SCHEDULED}


def program_key(cfg, hw: HardwareConfig, *, chips, context, weights, layers, mapping=None) -> str:
    blob = {
        "model": dataclasses.asdict(cfg),
        "weights": weights,
        "context": context,
        "layers": layers,
        "chips": chips,
        **({"mapping": str(mapping)} if mapping is not None else {}),
        "hw": schedule_fields(hw),
        "compiler": compiler_version(),
    }
    return _digest(blob, 24)


class ProgramCache:
    """Programs in `folder`, keyed by `program_key`; `program(...)` is what `lpusim.estimate`
    calls (its `programs=` argument) instead of compiling."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._memory: dict[str, Program] = {}
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.lpu"

    def lookup(self, key: str) -> Program | None:
        with self._lock:
            if key in self._memory:
                return self._memory[key]
        try:
            program = Program.load(self.path(key))
        except ProgramFormatError:  # absent, or unreadable: compile it (again)
            return None
        self._remember(key, program)
        return program

    def _remember(self, key: str, program: Program) -> None:
        with self._lock:
            self._memory[key] = program
            while len(self._memory) > MEMORY_PROGRAMS:
                self._memory.pop(next(iter(self._memory)))

    def _write(self, path: Path, write) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def program(self, cfg, hw, *, chips, context, weights, layers, mapping=None, progress=None):
        """(Program for `hw`, whether it came from the cache)."""
        key = program_key(
            cfg, hw, chips=chips, context=context, weights=weights, layers=layers, mapping=mapping
        )
        program = self.lookup(key)
        hit = program is not None
        if program is None:
            failed = self.folder / f"{key}.error"
            if failed.exists():
                raise CachedCompileError(failed.read_text(encoding="utf-8"))
            try:
                program = compile_program(
                    cfg, hw, chips=chips, mapping=mapping, context=context, weights=weights,
                    layers=layers, progress=progress,
                )  # fmt: skip
            except LpuError as e:
                message = " ".join(str(e).split())
                self._write(failed, lambda p: Path(p).write_text(message, encoding="utf-8"))
                raise
            self._write(self.path(key), program.save)
            self._remember(key, program)
        if program.hw != hw:  # compiled for a config that differs only in NOT_SCHEDULED fields
            program = dataclasses.replace(program, hw=hw)
        return program, hit


class PointPrograms:
    """The `programs=` source for one point's estimate: remembers whether its Program was cached."""

    def __init__(self, cache: ProgramCache):
        self.cache, self.hit, self.key = cache, False, None

    def program(
        self, cfg, hw, *, chips, context, weights, layers, mapping=None, progress=None
    ) -> Program:
        self.key = program_key(
            cfg, hw, chips=chips, context=context, weights=weights, layers=layers, mapping=mapping
        )
        program, self.hit = self.cache.program(
            cfg, hw, chips=chips, context=context, weights=weights, layers=layers,
            mapping=mapping, progress=progress,
        )  # fmt: skip
        return program
