"""The checks every command and API function applies first, before any tracing, weight building or
simulation: argument types and ranges, the context against the model, the model against the
chip's SRAM and against this machine's memory. Each runs before any tracing or weight building, and each error is
an `ArgumentError` (or `HostMemoryError`) naming the argument, its value and what would be valid;
the CLI shows the same message with the option's name."""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from compiler.frontend.model import resolve_model
from models import ModelConfig
from models.quantize import FORMATS as WEIGHT_FORMATS
from sim.errors import ArgumentError, HostMemoryError
from sim.execute import ENGINES

# The KV-cache length every command (estimate, compile, compare, measure) times when none is given,
# capped at the model's max_seq_len: a typical serving length. Short contexts fit more on a chip;
# pass --context 64 to ask what one chip does with a short cache.
DEFAULT_CONTEXT = 1024
SEED_MAX = 2**63 - 1


def count(name: str, value, lo: int = 1, hi: int | None = None) -> int:
    """`value` as a plain int in [lo, hi]: a bool, a float (even 2.0) or a string is refused."""
    valid = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentError(
            name, value, f"must be an integer {valid}, not a {type(value).__name__}"
        )
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        raise ArgumentError(name, value, f"must be an integer {valid}")
    return value


def optional_count(name: str, value, lo: int = 1, hi: int | None = None) -> int | None:
    return None if value is None else count(name, value, lo, hi)


def chips(value) -> int:
    return count("chips", value)


def mapping(value, n_chips: int):
    """None (one chip, or pp across `n_chips`) or a compiler.passes.partition.Mapping parsed from
    "tp=2,pp=4" (or given as one) that uses exactly `n_chips`."""
    from compiler.passes.partition import Mapping

    if value is None:
        return None
    m = value if isinstance(value, Mapping) else Mapping.parse(value)
    if m.chips != n_chips:
        raise ArgumentError(
            "mapping", str(m), f"uses {m.chips} chips but chips={n_chips}; give matching --chips"
        )
    return m


def mapping_chips(value) -> int:
    """The chips a mapping text (or Mapping) uses: 1 for None."""
    from compiler.passes.partition import Mapping

    if value is None:
        return 1
    return (value if isinstance(value, Mapping) else Mapping.parse(value)).chips


def topology(value, hw):
    """None (the default system of the chips), a sim.system.System, or one read from a TOML
    edge list (sim.system.System.from_toml)."""
    from sim.system import System

    if value is None or isinstance(value, System):
        return value
    return System.from_toml(path("topology", value), hw)


def seed(value) -> int:
    return count("seed", value, 0, SEED_MAX)


def choice(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ArgumentError(name, value, f"must be one of {', '.join(choices)}")
    return value


def engine(value) -> str:
    return choice("engine", value, ENGINES)


def weights(value) -> str:
    return choice("weights", value, WEIGHT_FORMATS)


def path(name: str, value) -> Path:
    """A file path to write: a non-empty string or Path, not a directory, in a directory that
    exists (checked before any work, so a typo costs no compilation)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ArgumentError(name, value, "must be a file path")
    p = Path(value)
    if p.is_dir():
        raise ArgumentError(name, str(value), "is a directory; give a file path")
    if not p.parent.is_dir():
        raise ArgumentError(name, str(value), f"is in {str(p.parent)!r}, which is not a directory")
    return p


def model(value) -> ModelConfig:
    """A ModelConfig, or the config of a name from `lpusim models`."""
    if isinstance(value, ModelConfig):
        return value
    if not isinstance(value, str):
        raise ArgumentError("model", value, "must be a model name (see `lpusim models`)")
    try:
        return resolve_model(value)
    except KeyError as e:  # models.UnknownModelError lists the known names
        raise ArgumentError("model", value, "is not a known model", str(e)) from None


def context(cfg: ModelConfig, value) -> int:
    """The KV-cache length, in [1, the model's max_seq_len]: DEFAULT_CONTEXT (capped) when None."""
    if value is None:
        return min(DEFAULT_CONTEXT, cfg.max_seq_len)
    valid = f"in [1, max_seq_len={cfg.max_seq_len}] for {cfg.name!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentError(
            "context", value, f"must be an integer {valid}, not a {type(value).__name__}"
        )
    if not 1 <= value <= cfg.max_seq_len:
        raise ArgumentError("context", int(value), f"must be {valid}")
    return int(value)


def prompt_ids(cfg: ModelConfig, value) -> list[int]:
    """Token ids to feed first: a non-empty sequence of ints in [0, vocab_size)."""
    valid = f"must be a non-empty sequence of token ids in [0, {cfg.vocab_size})"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
        raise ArgumentError("prompt", value, valid, f"prompt {value!r} {valid}")
    ids = list(value)
    if not ids or any(
        isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t < cfg.vocab_size
        for t in ids
    ):
        shown = ids if len(ids) <= 8 else f"{ids[:8]}..."
        raise ArgumentError("prompt", value, valid, f"prompt {shown} {valid}")
    return [int(t) for t in ids]


# --- this machine's memory ------------------------------------------------------------------------


def available_memory_bytes() -> int | None:
    """Memory this process could still use: MemAvailable (Linux), else free physical pages; None
    where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def weight_bytes(cfg: ModelConfig, fmt: str = "native") -> int:
    """Bytes of the model's weights in format `fmt`, from their shapes alone."""
    from models import param_specs

    leaves = jax.tree_util.tree_leaves(param_specs(cfg, fmt))
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)


def cache_bytes(cfg: ModelConfig, context: int) -> int:
    """Bytes of a KV cache of `context` positions in the model's dtype."""
    per_position = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * cfg.np_dtype.itemsize
    return per_position * context


def host_memory(need: int, what: str) -> None:
    """HostMemoryError when `need` bytes exceed what this machine has available."""
    have = available_memory_bytes()
    if have is not None and need > have:
        raise HostMemoryError(
            f"{what} needs about {need / 1e9:,.1f} GB of memory on this machine, which has "
            f"{have / 1e9:,.1f} GB available; use a smaller model (see `lpusim models`)"
        )
