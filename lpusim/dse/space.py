"""A sweep file (TOML, or the same keys as a dict) -> the list of points to evaluate, every value
checked before anything runs.

    models  = ["tiny-llama", "gpt2"]      # names from `lpusim models` (required)
    weights = ["native", "int8"]          # default ["native"]
    context = [16, 64]                    # KV-cache lengths (default: checks.DEFAULT_CONTEXT)
    layers  = ["all", 1]                  # "all" (with the head) or the first N layers alone
    batch   = [1]                         # decode batch
    chips   = ["auto"]                    # "auto" (the fewest that hold the model), counts, or
                                          # mappings such as "tp=8,pp=9"
    gpus    = ["h100-sxm", "h200"]        # reference rows from the GPU time model (compare)
    engine  = "numba"                     # the simulator: "numba" or "reference"
    sample  = { points = 20, seed = 0 }   # a random sample of the grid instead of all of it
    [hw]
    base = "groq-tsp-v1"                  # a preset, or a list of presets (an axis)
    mem_slices = [44, 88, 176]            # any HardwareConfig field: a value, a list, or a range
    clock_hz = { from = 0.6e9, to = 1.5e9, steps = 4 }   # linear; `log = true`: geometric
    [cost]                                # silicon-area proxy, mm^2 per chip (optional)
    base_mm2 = 100.0                      # everything but SRAM and MXM
    sram_mm2_per_mib = 0.5
    mxm_mm2_per_mac = 0.0001              # per MAC cell: mxm_planes x lanes^2 of them

Every list is an axis; the points are their product (models outermost, hardware fields
innermost, in the file's order). A scalar is a list of one. Errors name the file, the key and the
value, on one line: an unknown key or field, an empty list or range, a duplicate value, a model or
GPU nobody knows, a hardware value the config refuses (alone, or in combination with the others).
What only a point can tell (a context past one model's max_seq_len, a model that needs more chips)
is recorded as that point's error when it runs, and the sweep goes on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from compiler.passes.partition import KEYS as MAPPING_KEYS
from compiler.passes.partition import Mapping
from lpusim import checks
from models.quantize import FORMATS as WEIGHT_FORMATS
from sim.errors import ConfigError, LpuError, read_toml
from sim.execute import ENGINES
from sim.hardware import FIELD_RANGES, HardwareConfig, preset

KEYS = ("models", "weights", "context", "layers", "batch", "chips", "gpus", "engine", "sample")
TABLES = ("hw", "cost")
COST_KEYS = ("base_mm2", "sram_mm2_per_mib", "mxm_mm2_per_mac")
HW_FIELDS = tuple(f.name for f in fields(HardwareConfig) if f.name != "name")
DEFAULT_BASE = "groq-tsp-v1"


class SweepFileError(LpuError, ValueError):
    """A sweep file or space that cannot be run: names the key, the value and what is valid."""


def lpusim_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lpusim")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


@dataclass(frozen=True)
class Point:
    """One configuration to estimate. `chips` is the sweep file's spec ("auto", "1", "tp=8,pp=9");
    `layers` None means every layer and the head."""

    index: int
    model: str
    weights: str
    context: int | None
    layers: int | None
    batch: int
    chips: str
    hw: HardwareConfig
    base: str
    engine: str = "numba"
    version: str = field(default_factory=lpusim_version)

    @property
    def key(self) -> str:
        """What makes a result reusable: its inputs, the config's hash and the lpusim version (not
        the engine: both executors give the same cycles)."""
        return _digest(
            {
                "kind": "lpu",
                "model": self.model,
                "weights": self.weights,
                "context": self.context,
                "layers": self.layers,
                "batch": self.batch,
                "chips": self.chips,
                "hw": self.hw.hash,
                "version": self.version,
            }
        )


@dataclass(frozen=True)
class GpuPoint:
    """A reference row: one GPU for one (model, weights, context, batch) of the sweep."""

    index: int
    gpu: str
    model: str
    weights: str
    context: int | None
    batch: int
    version: str = field(default_factory=lpusim_version)

    @property
    def key(self) -> str:
        return _digest(
            {
                "kind": "gpu",
                "gpu": self.gpu,
                "model": self.model,
                "weights": self.weights,
                "context": self.context,
                "batch": self.batch,
                "version": self.version,
            }
        )


@dataclass(frozen=True)
class Space:
    points: tuple[Point, ...]
    gpu_points: tuple[GpuPoint, ...]
    cost: dict[str, float]  # COST_KEYS -> coefficient; empty: no area proxy
    source: dict  # the sweep file's contents, as parsed (stored with the results)
    name: str  # what the errors call it: "sweep file 'x.toml'" or "sweep space"


def _digest(obj: dict, length: int = 20) -> str:
    """A content hash of a JSON-able dict (anything else in it as its str)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


# --- reading --------------------------------------------------------------------------------------


def load_space(spec) -> Space:
    """A Space from a TOML file path, a dict of the same keys, or a Space as it is."""
    if isinstance(spec, Space):
        return spec
    if isinstance(spec, dict):
        return parse_space(spec, "sweep space")
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise SweepFileError(
            f"sweep space {spec!r} must be a TOML file path, a dict of sweep keys or a Space"
        )
    path = Path(spec)
    name = f"sweep file {str(path)!r}"
    return parse_space(read_toml(path, "sweep file", SweepFileError), name)


def parse_space(values: dict, name: str = "sweep space") -> Space:
    def fail(message: str):
        raise SweepFileError(f"{name}: {message}")

    unknown = sorted(set(values) - set(KEYS) - set(TABLES))
    if unknown:
        fail(f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(KEYS + TABLES)}")
    if "models" not in values:
        fail('names no models; add e.g. models = ["tiny-llama"]')
    models = _axis(values, "models", fail, _model_name)
    weights = _axis(values, "weights", fail, _weights, default=["native"])
    context = _axis(values, "context", fail, _positive_int, default=[None])
    layers = _axis(values, "layers", fail, _layers, default=[None])
    batch = _axis(values, "batch", fail, _positive_int, default=[1])
    chips = _axis(values, "chips", fail, _chips, default=["auto"])
    gpus = _axis(values, "gpus", fail, _gpu_name, default=[], allow_empty=True)
    engine = values.get("engine", "numba")
    if engine not in ENGINES:
        fail(f"engine={engine!r} must be one of {', '.join(ENGINES)}")
    configs = _hardware(values.get("hw", {}), fail)
    cost = _cost(values.get("cost", {}), fail)
    grid = list(itertools.product(models, weights, context, layers, batch, chips, configs))
    grid = _sample(values.get("sample"), grid, fail)
    version = lpusim_version()
    points = tuple(
        Point(i, m, w, c, la, b, ch, hw, base, engine, version)
        for i, (m, w, c, la, b, ch, (base, hw)) in enumerate(grid)
    )
    refs = dict.fromkeys((m, w, c, b) for m, w, c, _, b, _, _ in grid)
    gpu_points = tuple(
        GpuPoint(len(points) + i, g, m, w, c, b, version)
        for i, ((m, w, c, b), g) in enumerate(itertools.product(refs, gpus))
    )
    return Space(points, gpu_points, cost, _plain(values), name)


def _plain(values):
    """The parsed file as JSON can hold it (TOML dates become strings)."""
    return json.loads(json.dumps(values, default=str))


def _axis(values, key, fail, check, default=None, allow_empty=False) -> list:
    if key not in values:
        return list(default)
    raw = values[key]
    items = raw if isinstance(raw, list) else [raw]
    if not items and not allow_empty:
        fail(f"{key} = [] is empty; give at least one value")
    out = []
    for v in items:
        try:
            v = check(v)
        except (LpuError, ValueError) as e:
            fail(f"{key}: {' '.join(str(e).split())}")
        if v in out:
            fail(f"{key} lists {v!r} twice")
        out.append(v)
    return out


def _model_name(v) -> str:
    return checks.model(v).name


def _weights(v) -> str:
    if v not in WEIGHT_FORMATS:
        raise ValueError(f"{v!r} is not a weight format; formats: {', '.join(WEIGHT_FORMATS)}")
    return v


def _positive_int(v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{v!r} must be a positive integer")
    return int(v)


def _layers(v) -> int | None:
    return None if v == "all" else _positive_int(v)


def _gpu_name(v) -> str:
    from sim.baselines import GPUS

    if v not in GPUS:
        raise ValueError(f"unknown GPU {v!r}; known GPUs: {', '.join(GPUS)}")
    return v


def _chips(v) -> str:
    """'auto', a count ('8'), or a mapping 'tp=8,pp=9' (compiler.passes.partition.Mapping), the
    degrees it names in the order of MAPPING_KEYS."""
    if v == "auto":
        return v
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return str(_positive_int(v))
    valid = f'"auto", a chip count, or a mapping such as "tp=8,pp=9" of {", ".join(MAPPING_KEYS)}'
    try:
        mapping = Mapping.parse(v)  # the compiler's reading of a mapping
    except LpuError:
        raise ValueError(f"{v!r} must be {valid}") from None
    named = {part.partition("=")[0].strip() for part in v.split(",")}
    return ",".join(f"{k}={getattr(mapping, k)}" for k in MAPPING_KEYS if k in named)


def chip_count(spec: str) -> int | None:
    """Chips a spec asks for; None for 'auto'."""
    if spec == "auto":
        return None
    if spec.isdigit():
        return int(spec)
    return Mapping.parse(spec).chips


# --- hardware -------------------------------------------------------------------------------------


def _hardware(table, fail) -> list[tuple[str, HardwareConfig]]:
    """(base preset, config) for every combination of [hw]'s values, each one built (and so
    validated) here."""
    if not isinstance(table, dict):
        fail(f"hw must be a table of HardwareConfig fields, not {table!r}")
    table = dict(table)
    raw_base = table.pop("base", DEFAULT_BASE)
    bases = raw_base if isinstance(raw_base, list) else [raw_base]
    if not bases:
        fail("hw.base = [] is empty; give a preset name")
    unknown = sorted(set(table) - set(HW_FIELDS))
    if unknown:
        fail(
            f"unknown hardware field(s) {', '.join(unknown)} in [hw]; valid fields: base, "
            f"{', '.join(HW_FIELDS)}"
        )
    presets = []
    for b in bases:
        try:
            presets.append(preset(b))
        except ConfigError as e:
            fail(f"hw.base: {e}")
        if bases.count(b) > 1:
            fail(f"hw.base lists {b!r} twice")
    axes = {f: _hw_values(f, v, fail) for f, v in table.items()}
    for p in presets:  # each value alone first, so the error names the value, not a combination
        for f, vs in axes.items():
            for v in vs:
                try:
                    p.replace(**{f: v})
                except ConfigError as e:
                    fail(f"hw.{f} = {v!r} is refused by the config on base {p.name!r}: {e}")
    out = []
    for p in presets:
        for combo in itertools.product(*axes.values()):
            changes = dict(zip(axes, combo, strict=True))
            try:
                out.append((p.name, p.replace(**changes)))
            except ConfigError as e:
                shown = ", ".join(f"{k}={v!r}" for k, v in changes.items())
                fail(f"[hw] combination {shown} on base {p.name!r} is refused by the config: {e}")
    return out


def _hw_values(name: str, raw, fail) -> list:
    """A field's values: a number, a list of numbers, or {from, to, steps[, log]}."""
    integer = next(f.type for f in fields(HardwareConfig) if f.name == name) == "int"
    if isinstance(raw, dict):
        values = _range(name, raw, fail)
        if integer:
            rounded = [round(v) for v in values]
            if any(
                abs(v - r) > 1e-9 * max(1.0, abs(r)) for v, r in zip(values, rounded, strict=True)
            ):
                fail(
                    f"hw.{name} = {raw!r} gives non-integer values {[float(v) for v in values]}; "
                    f"{name} is an integer field: choose from/to/steps that land on integers, "
                    "or give a list"
                )
            values = rounded
    else:
        values = raw if isinstance(raw, list) else [raw]
    if not values:
        lo, hi, _ = FIELD_RANGES[name]
        fail(f"hw.{name} = [] is empty; give at least one value in [{lo:g}, {hi:g}]")
    out = []
    for v in values:
        if v in out:
            fail(f"hw.{name} lists {v!r} twice")
        out.append(v)
    return out


def _range(name: str, raw: dict, fail) -> list[float]:
    shown = f"hw.{name} = {raw!r}"
    unknown = sorted(set(raw) - {"from", "to", "steps", "log"})
    if unknown or not {"from", "to", "steps"} <= set(raw):
        fail(f"{shown}: a range is {{ from = A, to = B, steps = N }} (optionally log = true)")
    a, b, n, log = raw["from"], raw["to"], raw["steps"], raw.get("log", False)
    for k, v in (("from", a), ("to", b)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            fail(f"{shown}: {k} must be a finite number")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        fail(f"{shown}: steps must be an integer >= 2 (an empty or one-value range is a list)")
    if a == b:
        fail(f"{shown} is empty: from equals to; give a list of one value instead")
    if not isinstance(log, bool):
        fail(f"{shown}: log must be true or false")
    if log:
        if a <= 0 or b <= 0:
            fail(f"{shown}: a log range needs positive from and to")
        values = np.geomspace(a, b, int(n))
    else:
        values = np.linspace(a, b, int(n))
    return [float(v) for v in values]


def _cost(table, fail) -> dict[str, float]:
    if not isinstance(table, dict):
        fail(f"cost must be a table of {', '.join(COST_KEYS)}, not {table!r}")
    unknown = sorted(set(table) - set(COST_KEYS))
    if unknown:
        fail(f"unknown cost key(s) {', '.join(unknown)}; valid: {', '.join(COST_KEYS)}")
    out = {}
    for k, v in table.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v < math.inf:
            fail(f"cost.{k} = {v!r} must be a finite number >= 0 (mm^2)")
        out[k] = float(v)
    if out and set(out) != set(COST_KEYS):
        missing = sorted(set(COST_KEYS) - set(out))
        fail(f"cost names {', '.join(sorted(out))} but not {', '.join(missing)}; give all three")
    return out


def _sample(raw, grid: list, fail) -> list:
    """The whole grid, or `points` of it chosen by `seed` (the same every time), in grid order."""
    if raw is None:
        return grid
    if not isinstance(raw, dict) or set(raw) - {"points", "seed"} or "points" not in raw:
        fail(f"sample = {raw!r} must be {{ points = N, seed = S }}")
    n, seed = raw["points"], raw.get("seed", 0)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= len(grid):
        fail(f"sample.points = {n!r} must be an integer in [1, {len(grid)}] (the grid's size)")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        fail(f"sample.seed = {seed!r} must be an integer >= 0")
    chosen = np.random.default_rng(int(seed)).choice(len(grid), int(n), replace=False)
    return [grid[i] for i in sorted(int(i) for i in chosen)]


# --- cost proxy -----------------------------------------------------------------------------------


def area_mm2(hw_fields: dict, cost: dict[str, float]) -> float:
    """Silicon area of one chip: a fixed part, the SRAM, and the MXM's MAC cells."""
    sram_mib = hw_fields["mem_slices"] * hw_fields["mem_slice_bytes"] / 2**20
    macs = hw_fields["mxm_planes"] * hw_fields["lanes"] ** 2
    return cost["base_mm2"] + cost["sram_mm2_per_mib"] * sram_mib + cost["mxm_mm2_per_mac"] * macs
