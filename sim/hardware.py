"""The chip as a frozen, validated configuration, its floorplan, and the named presets.

Every field carries its unit in its name. A config is built from a preset, a TOML file or keyword
arguments, and validated on construction: a bad value raises `ConfigError` naming the field, the
value and what would be valid. Nothing is clamped.

Floorplan (one row of functional units; data flows east-west, one position per cycle):

    MXM_W  SXM_W  MEM_W[h-1] ... MEM_W[0]  VXM  MEM_E[0] ... MEM_E[h-1]  SXM_E  MXM_E

mirrored around the VXM as on the TSP (shared/REFERENCE.md, "layout" row). `h` is half the MEM
slices. MEM slice `i < h` is west slice `i`, slice `h + i` is east slice `i`; slice 0 of each
hemisphere is nearest the VXM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

from sim.errors import ConfigError, read_toml

# The widest element a vector holds: the VXM computes in FP32 (REFERENCE.md, "VXM" row), so every
# stream direction must carry a 4-byte-per-lane vector in one cycle.
MAX_ELEMENT_BYTES = 4
# Words (one byte per lane) a slice may hold: the compiler's allocator scans a table per word.
MAX_WORDS_PER_SLICE = 2**20

# Valid range of every numeric field, and why. Lower bounds are what the machine needs; upper
# bounds keep a config inside what the instruction fields (16-bit slice, stream, queue and period
# operands) and the engine's per-cycle windows (sized by the longest latency and the chip's width)
# hold, and lie far above any published or proposed chip. Nothing outside them is clamped.
_LATENCY = (1, 4096, "cycles; the engine keeps a window of in-flight vectors this long")
FIELD_RANGES: dict[str, tuple[float, float, str]] = {
    "clock_hz": (1e6, 1e11, "Hz: 1 MHz to 100 GHz"),
    "lanes": (1, 4096, "elements per vector; the TSP has 320"),
    "mem_slices": (8, 4096, "SRAM slices per chip; the TSP has 88"),
    "mem_slice_bytes": (1, 2**30, "bytes per slice, at most 1 GiB; the TSP has 2.5 MiB"),
    "streams_per_direction": (
        2 * MAX_ELEMENT_BYTES,
        256,
        "one-byte streams each way; a VXM op may take two FP32 operands flowing the same way in "
        f"one cycle, so the scheduler needs two groups of {MAX_ELEMENT_BYTES}",
    ),
    "mem_read_ports_per_slice": (1, 16, "vector reads a MEM slice serves per cycle"),
    "mem_write_ports_per_slice": (1, 16, "vector writes a MEM slice accepts per cycle"),
    "mem_read_latency_cycles": _LATENCY,
    "mem_write_latency_cycles": _LATENCY,
    "mxm_planes": (2, 256, "matrix planes, half on each side"),
    "mxm_install_vectors_per_cycle": (1, 4096, "weight rows a plane installs per cycle"),
    "mxm_install_latency_cycles": _LATENCY,
    "mxm_latency_cycles": _LATENCY,
    "mxm_weight_buffers": (
        1,
        2,
        "tiles a plane holds: 2 lets the next tile install while the current one computes",
    ),
    "mxm_fp16_cycles_per_vector": (1, 1024, "cycles a plane takes per FP16 input vector"),
    "mxm_accumulator_vectors": (1, 65536, "partial-sum vectors a plane accumulates over K tiles"),
    "vxm_alus": (1, 1024, "VXM ALUs per lane"),
    "vxm_small_latency_cycles": _LATENCY,
    "vxm_large_latency_cycles": _LATENCY,
    "sxm_units_per_hemisphere": (1, 64, "SXM units on each side"),
    "sxm_latency_cycles": _LATENCY,
    "c2c_links": (1, 1024, "chip-to-chip links per chip"),
    "c2c_bytes_per_cycle": (1e-3, 1e6, "bytes per cycle per link"),
    "c2c_latency_cycles": (1, 1_000_000, "cycles per chip-to-chip hop, up to 1 ms at 1 GHz"),
    "c2c_buffer_vectors": (1, 65536, "receive slots per link direction: vectors a RECV takes"),
    "icu_issue_width": (1, 64, "instructions a queue dispatches per cycle"),
    "icu_sync_latency_cycles": _LATENCY,
    "icu_queue_instructions": (1, 2**20, "instructions a queue's buffer holds"),
    "icu_instruction_bytes": (1, 4096, "SRAM bytes per instruction (a fetched word holds some)"),
}


def _checked(name: str, kind: str, value):
    """`value` of field `name` as a plain int or float, or ConfigError naming it and its range."""
    lo, hi, why = FIELD_RANGES[name]
    integer = kind == "int"
    valid = f"{'an integer' if integer else 'a finite number'} in [{lo:g}, {hi:g}] ({why})"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name}={value!r} is not a number; it must be {valid}")
    if integer and not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name}={value!r} is not an integer; it must be {valid}")
    value = int(value) if integer else float(value)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ConfigError(f"{name}={value!r} must be {valid}")
    return value


@dataclass(frozen=True)
class HardwareConfig:
    """One LPU chip. A *word* is one byte per lane (`lanes` bytes); an element of b bytes makes a
    vector b words wide, stored in b adjacent MEM slices and carried by b adjacent streams (the
    TSP's stream groups)."""

    name: str = "custom"
    clock_hz: float = 900e6
    lanes: int = 320
    mem_slices: int = 88
    mem_slice_bytes: int = 2_621_440
    streams_per_direction: int = 32
    mem_read_latency_cycles: int = 1
    mem_write_latency_cycles: int = 1
    mxm_planes: int = 4
    mxm_install_vectors_per_cycle: int = 8
    mxm_install_latency_cycles: int = 4
    mxm_latency_cycles: int = 20
    mxm_weight_buffers: int = 2
    mxm_fp16_cycles_per_vector: int = 4
    vxm_alus: int = 16
    vxm_small_latency_cycles: int = 2
    vxm_large_latency_cycles: int = 8
    sxm_units_per_hemisphere: int = 2
    sxm_latency_cycles: int = 4
    c2c_links: int = 16
    c2c_bytes_per_cycle: float = 14.3
    c2c_latency_cycles: int = 216
    icu_issue_width: int = 1
    icu_sync_latency_cycles: int = 4
    icu_queue_instructions: int = 256
    icu_instruction_bytes: int = 32
    mxm_accumulator_vectors: int = 320
    mem_read_ports_per_slice: int = 1
    mem_write_ports_per_slice: int = 1
    c2c_buffer_vectors: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name={self.name!r} must be a non-empty string")
        for f in fields(self):
            if f.name != "name":
                object.__setattr__(self, f.name, _checked(f.name, f.type, getattr(self, f.name)))
        if self.mem_slices % (2 * MAX_ELEMENT_BYTES):
            raise ConfigError(
                f"mem_slices={self.mem_slices} must be a multiple of {2 * MAX_ELEMENT_BYTES}: two "
                f"hemispheres, each holding whole {MAX_ELEMENT_BYTES}-slice groups for FP32 vectors"
            )
        if self.streams_per_direction % MAX_ELEMENT_BYTES:
            raise ConfigError(
                f"streams_per_direction={self.streams_per_direction}: a float32 vector is "
                f"{MAX_ELEMENT_BYTES} bytes per lane and needs a group of {MAX_ELEMENT_BYTES} "
                f"one-byte streams; use a multiple of {MAX_ELEMENT_BYTES}"
            )
        if self.mxm_planes % 2:
            raise ConfigError(f"mxm_planes={self.mxm_planes} must be even (one half per side)")
        if not self.lanes // self.icu_instruction_bytes:
            raise ConfigError(
                f"icu_instruction_bytes={self.icu_instruction_bytes}: an instruction fetch reads "
                f"one word of lanes={self.lanes} bytes, which must hold at least one instruction"
            )
        least = self.lanes // self.icu_instruction_bytes + self.mem_read_latency_cycles + 2
        if self.icu_queue_instructions < least:
            raise ConfigError(
                f"icu_queue_instructions={self.icu_queue_instructions}: a queue must hold at least "
                f"{least} (a fetched word of instructions while a fetch is in flight)"
            )
        if self.mem_slice_bytes % self.lanes:
            raise ConfigError(
                f"mem_slice_bytes={self.mem_slice_bytes} must be a multiple of lanes={self.lanes} "
                "(a slice holds whole one-byte-per-lane words)"
            )
        if self.words_per_slice > MAX_WORDS_PER_SLICE:
            raise ConfigError(
                f"mem_slice_bytes={self.mem_slice_bytes} is {self.words_per_slice:,} words of "
                f"lanes={self.lanes} bytes; at most {MAX_WORDS_PER_SLICE:,} words per slice (the "
                "compiler's allocator keeps a table per word; the TSP has 8,192)"
            )
        if self.mxm_install_vectors_per_cycle > self.lanes:
            raise ConfigError(
                f"mxm_install_vectors_per_cycle={self.mxm_install_vectors_per_cycle} must be at "
                f"most lanes={self.lanes} (a weight tile has `lanes` rows)"
            )

    # --- derived quantities -------------------------------------------------------------------

    @property
    def words_per_slice(self) -> int:
        return self.mem_slice_bytes // self.lanes

    @property
    def sram_bytes(self) -> int:
        return self.mem_slices * self.mem_slice_bytes

    @property
    def sram_bytes_per_cycle(self) -> int:
        """Bytes every slice's read and write ports move in one cycle, all together."""
        ports = self.mem_read_ports_per_slice + self.mem_write_ports_per_slice
        return self.mem_slices * ports * self.lanes

    @property
    def half_slices(self) -> int:
        return self.mem_slices // 2

    @property
    def vxm_position(self) -> int:
        return 2 + self.half_slices

    @property
    def c2c_position(self) -> int:
        """Where SEND takes and RECV puts vectors on the stream row: the VXM's position (U: the
        C2C ports' place is unpublished; at the centre both hemispheres reach them equally)."""
        return self.vxm_position

    @property
    def width_positions(self) -> int:
        """Positions from the west MXM to the east MXM; a vector crosses one per cycle."""
        return self.mem_slices + 5

    def slice_position(self, s: int) -> int:
        h = self.half_slices
        return self.vxm_position - 1 - s if s < h else self.vxm_position + 1 + (s - h)

    def sxm_position(self, hemisphere: int) -> int:
        return 1 if hemisphere == 0 else self.width_positions - 2

    def mxm_position(self, plane: int) -> int:
        return 0 if plane < self.mxm_planes // 2 else self.width_positions - 1

    def slice_hemisphere(self, s: int) -> int:
        return 0 if s < self.half_slices else 1

    @cached_property
    def hash(self) -> str:
        """Content hash of every field: a Program compiled for one config refuses another."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # --- construction -------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> HardwareConfig:
        _check_field_names(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict) -> HardwareConfig:
        if not isinstance(values, dict):
            raise ConfigError(
                f"a hardware config is a table of fields, not {type(values).__name__} {values!r}"
            )
        values = dict(values)
        base = values.pop("base", None)
        _check_field_names(values)
        if base is not None:
            if not isinstance(base, str):
                raise ConfigError(
                    f"base={base!r} must be a preset name; presets: {', '.join(sorted(PRESETS))}"
                )
            return preset(base).replace(**values)
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path) -> HardwareConfig:
        if not str(path):
            raise ConfigError("hardware file path is empty; give a TOML file or a preset name")
        path = Path(path)
        name = repr(str(path))
        values = read_toml(path, "hardware file", ConfigError)
        values.setdefault("name", path.stem)
        try:
            return cls.from_dict(values)
        except ConfigError as e:
            raise ConfigError(f"hardware file {name}: {e}") from None


def _check_field_names(values: dict) -> None:
    valid = {f.name for f in fields(HardwareConfig)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ConfigError(
            f"unknown hardware field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(valid))}"
        )


# --- presets --------------------------------------------------------------------------------------
# Sources are rows of shared/REFERENCE.md. Instruction latencies are not published (row
# "instruction latencies", conf U): they are free parameters, marked U below.

PRESETS: dict[str, HardwareConfig] = {
    "groq-tsp-v1": HardwareConfig(
        name="groq-tsp-v1",
        clock_hz=900e6,  # "clock" row: ISCA 2020, GroqFlow groqmodel.py
        lanes=320,  # "lanes" row: 20 superlanes x 16 lanes, one byte each
        mem_slices=88,  # "SRAM" row: 88 slices x 2.5 MiB = 220 MiB, 44 per hemisphere
        mem_slice_bytes=2_621_440,
        streams_per_direction=32,  # "streams" row: 32 east + 32 west, 1 byte per lane
        mem_read_latency_cycles=1,  # U
        mem_write_latency_cycles=1,  # U
        mxm_planes=4,  # "MXM" row: 4 planes of 320x320
        mxm_install_vectors_per_cycle=8,  # "MXM" row: install < 40 cycles for 320 rows (U)
        mxm_install_latency_cycles=4,  # U
        mxm_latency_cycles=20,  # U
        mxm_weight_buffers=2,  # U: the next tile installs while the current one computes
        mxm_fp16_cycles_per_vector=4,  # "peak" row: 750 TOPS INT8, 188 TFLOPS FP16 (1/4)
        vxm_alus=16,  # "VXM" row: 16 ALUs per lane, each a whole vector op per cycle
        vxm_small_latency_cycles=2,  # U: add, mul, max
        vxm_large_latency_cycles=8,  # U: exp, rsqrt
        sxm_units_per_hemisphere=2,  # U
        sxm_latency_cycles=4,  # U
        c2c_links=16,  # "C2C links" row
        c2c_bytes_per_cycle=14.3,  # 12.9 GB/s per link per direction / 0.9 GHz
        c2c_latency_cycles=216,  # "C2C latency" row (U)
        icu_issue_width=1,  # "ICU" row: 144 queues, each dispatching in order (one a cycle: U)
        icu_sync_latency_cycles=4,  # "ICU" row: Sync/Notify; the NOTIFY-to-release delay is U
        icu_queue_instructions=256,  # "ICU" row: instructions fetched from MEM; buffer size U
        icu_instruction_bytes=32,  # U: 10 instructions per 320-byte word
        mxm_accumulator_vectors=320,  # "MXM" row: FP32/INT32 accumulators; how many is U
        # "SRAM bandwidth" row: 80 TB/s. One read and one write per slice and cycle would move
        # 88 x 320 B x 2 x 0.9 GHz = 50.7 TB/s; the split into ports is unpublished (U): two of
        # each (two banks, each reading and writing a word a cycle) is the least that reaches it,
        # 101 TB/s (benchmarks/sram_bandwidth.py measures it).
        mem_read_ports_per_slice=2,
        mem_write_ports_per_slice=2,
        c2c_buffer_vectors=64,  # U: receive slots per link direction (a few round trips' worth)
    ),
    # Next generation, from press figures only ("Next-generation LPU" line, all conf S): 500 MB
    # of SRAM, 150 TB/s of SRAM bandwidth, 2.5 TB/s chip to chip. The TSP's organisation is kept;
    # slices are added (192 x 2.5 MiB = 503 MB) and the clock is a free parameter (U), chosen so
    # that 192 slices x 320 B x (read + write) x clock = 150 TB/s.
    "lpu-next": HardwareConfig(
        name="lpu-next",
        clock_hz=1.22e9,
        lanes=320,
        mem_slices=192,
        mem_slice_bytes=2_621_440,
        streams_per_direction=32,
        mem_read_latency_cycles=1,
        mem_write_latency_cycles=1,
        mxm_planes=8,  # U: twice the TSP, to keep the matrix units fed from twice the SRAM
        mxm_install_vectors_per_cycle=8,
        mxm_install_latency_cycles=4,
        mxm_latency_cycles=20,
        vxm_alus=16,
        vxm_small_latency_cycles=2,
        vxm_large_latency_cycles=8,
        sxm_units_per_hemisphere=2,
        sxm_latency_cycles=4,
        c2c_links=16,
        c2c_bytes_per_cycle=128.0,  # 2.5 TB/s over 16 links at 1.22 GHz
        c2c_latency_cycles=216,
        icu_issue_width=1,
        icu_sync_latency_cycles=4,
        icu_queue_instructions=256,
        icu_instruction_bytes=32,
        mxm_accumulator_vectors=320,
        mem_read_ports_per_slice=1,  # the clock above makes these 150 TB/s
        mem_write_ports_per_slice=1,
        c2c_buffer_vectors=64,  # U, as groq-tsp-v1
    ),
    # A chip small enough that a whole decoder layer's schedule fits on a screen. Nothing here is a
    # measured figure: it keeps the TSP's shape (mirrored hemispheres, stream groups) at toy size.
    "teaching": HardwareConfig(
        name="teaching",
        clock_hz=1e9,
        lanes=16,
        mem_slices=16,
        mem_slice_bytes=16 * 1024,  # 1024 words per slice, 256 KiB per chip
        streams_per_direction=8,  # two FP32 vectors per direction per cycle
        mem_read_latency_cycles=1,
        mem_write_latency_cycles=1,
        mxm_planes=2,
        mxm_install_vectors_per_cycle=2,
        mxm_install_latency_cycles=1,
        mxm_latency_cycles=2,
        vxm_alus=4,
        vxm_small_latency_cycles=1,
        vxm_large_latency_cycles=2,
        sxm_units_per_hemisphere=1,
        sxm_latency_cycles=2,
        c2c_links=4,
        c2c_bytes_per_cycle=4.0,
        c2c_latency_cycles=20,
        icu_issue_width=1,
        icu_sync_latency_cycles=1,
        icu_queue_instructions=1024,  # a toy's queue bursts single vectors, one a cycle
        icu_instruction_bytes=4,  # 4 instructions per 16-byte word
        mxm_accumulator_vectors=16,
        c2c_buffer_vectors=8,  # a few slots, so a listing shows them being reused
    ),
}


def preset(name: str) -> HardwareConfig:
    try:
        return PRESETS[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name
        raise ConfigError(
            f"unknown hardware preset {name!r}; presets: {', '.join(sorted(PRESETS))}"
        ) from None


def load_hardware(spec: str | Path | HardwareConfig) -> HardwareConfig:
    """A preset name, a path to a TOML file of config fields, or a config as it is."""
    if isinstance(spec, HardwareConfig):
        return spec
    if isinstance(spec, Path):
        return HardwareConfig.from_toml(spec)
    if not isinstance(spec, str):
        raise ConfigError(
            f"hardware {spec!r} must be a preset name, a TOML file or a HardwareConfig; "
            f"presets: {', '.join(sorted(PRESETS))}"
        )
    if not spec.strip():
        raise ConfigError(
            f"hardware {spec!r} is empty; give a preset name ({', '.join(sorted(PRESETS))}) "
            "or a TOML file"
        )
    if spec in PRESETS:
        return PRESETS[spec]
    if spec.endswith(".toml") or Path(spec).exists():
        return HardwareConfig.from_toml(spec)
    return preset(spec)
