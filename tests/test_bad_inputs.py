"""Bad input, catalogued: every subcommand, the TOML loader, Program files and the Python API answer
each bad input with one line (exit 2, or an LpuError), no traceback, in well under 5 s, before any
tracing or weight building.

Classes of input covered (CATALOGUE_CLASSES counts them): hardware fields out of range or not
finite, malformed TOML files, missing/empty/directory paths, unwritable outputs, out-of-range and
mistyped options of every subcommand, models that do not fit the chip or this machine's memory,
Program files truncated, byte-flipped, edited, foreign, of another version, missing arrays or
header fields, and wrong types in the Python API."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lpusim
import lpusim.compare  # noqa: F401  (imported here, so that no case's timing includes it)
from lpusim import checks
from lpusim.cli import main, strict_json
from sim import HardwareConfig, Program, preset
from sim.errors import ArgumentError, ConfigError, LpuError, ProgramFormatError
from sim.hardware import load_hardware
from sim.program import FORMAT_VERSION, _file_digest
from tests.programs import softmax_matmul_program

LIMIT_S = 5.0
# This machine's memory as the host-memory checks see it: fixed, so that the cases that must be
# refused are refused (and never start building 100 GB of weights) on any machine.
AVAILABLE_BYTES = 16 * 10**9


@pytest.fixture(autouse=True)
def fixed_host_memory(monkeypatch):
    monkeypatch.setattr(checks, "available_memory_bytes", lambda: AVAILABLE_BYTES)


# --- the files the cases name ---------------------------------------------------------------------

TOMLS = {
    "nan_clock": "clock_hz = nan",
    "inf_clock": "clock_hz = inf",
    "neg_inf_clock": "clock_hz = -inf",
    "tiny_clock": "clock_hz = 1e-300",
    "huge_clock": "clock_hz = 1e300",
    "streams4": "streams_per_direction = 4",
    "streams6": "streams_per_direction = 12\nmem_slices = 6",
    "huge_latency": "mxm_latency_cycles = 100000000",
    "zero_latency": "vxm_small_latency_cycles = 0",
    "float_lanes": "lanes = 16.0",
    "bool_field": "vxm_alus = true",
    "string_field": 'lanes = "320"',
    "array_field": "lanes = [16]",
    "table_field": "[lanes]\nx = 1",
    "unknown_field": "lanez = 16",
    "unknown_base": 'base = "tsp9"',
    "base_not_string": "base = 3",
    "odd_planes": "mxm_planes = 3",
    "three_buffers": "mxm_weight_buffers = 3",
    "slice_not_lanes": "mem_slice_bytes = 16001",
    "slice_too_many_words": "mem_slice_bytes = 1073741824",
    "install_beyond_lanes": "mxm_install_vectors_per_cycle = 17",
    "fp16_pace": "mxm_fp16_cycles_per_vector = 2000",
    "c2c_nan": "c2c_bytes_per_cycle = nan",
    "negative_slices": "mem_slices = -16",
    "empty_name": 'name = ""',
    "syntax": "lanes = = 3",
}
# A chip whose SRAM holds llama2-7b (4096 slices of 2**20 words): only this machine's memory can
# refuse to validate it.
HUGE_SRAM = "base = 'groq-tsp-v1'\nmem_slices = 4096\nmem_slice_bytes = 335544320\n"


def _arrays(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _save(path, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path.write_bytes(buf.getvalue())


def _header(arrays: dict) -> dict:
    return json.loads(arrays["header"].tobytes().decode())


def _rebuilt(arrays: dict, header=None, *, drop=(), redigest=False, **replace) -> dict:
    """The arrays of a saved Program with a new header and arrays dropped or replaced; with
    `redigest`, a digest that matches (a crafted file, not a corrupted one)."""
    body = {k: v for k, v in arrays.items() if k != "header" and k not in drop}
    body.update(replace)
    header = _header(arrays) if header is None else header
    if redigest:
        header = {**header, "digest": _file_digest(header, body)}
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return {**body, "header": np.frombuffer(blob, np.uint8)}


def _edit(header: dict, **changes) -> dict:
    return {**header, **changes}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    for name, body in TOMLS.items():
        base = "" if body.startswith("base") else 'base = "teaching"\n'
        (d / f"{name}.toml").write_text(f"{base}{body}\n")
    (d / "latin1.toml").write_bytes(b'base = "teaching"\nname = "caf\xe9"\n')
    (d / "huge_sram.toml").write_text(HUGE_SRAM)
    (d / "adir").mkdir()
    good = d / "good.lpu"
    softmax_matmul_program().save(good)
    data = good.read_bytes()
    (d / "truncated.lpu").write_bytes(data[: len(data) // 2])
    (d / "truncated10.lpu").write_bytes(data[:10])
    (d / "empty.lpu").write_bytes(b"")
    (d / "foreign.lpu").write_text("not a program")
    (d / "zeros.lpu").write_bytes(b"\0" * 64)
    (d / "flipped.lpu").write_bytes(data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])
    np.savez(d / "other.npz", a=np.zeros(3))
    a = _arrays(good)
    h = _header(a)
    crafted = {
        "header_list": _rebuilt(a, [1, 2]),
        "header_not_json": _rebuilt(a, b"\xff\xfe{"),
        "header_not_utf8_json": _rebuilt(a, b"{'magic': 1}"),
        "bad_magic": _rebuilt(a, _edit(h, magic="other")),
        "old_version": _rebuilt(a, _edit(h, version=FORMAT_VERSION - 1)),
        "new_version": _rebuilt(a, _edit(h, version=FORMAT_VERSION + 1)),
        "string_version": _rebuilt(a, _edit(h, version=str(FORMAT_VERSION))),
        "no_digest": _rebuilt(a, {k: v for k, v in h.items() if k != "digest"}),
        "edited_cycles": _rebuilt(a, _edit(h, predicted_cycles=h["predicted_cycles"] + 1)),
        "edited_meta": _rebuilt(a, _edit(h, meta={"model": "edited"})),
        "edited_sources": _rebuilt(a, _edit(h, sources=["edited"] * len(h["sources"]))),
        "edited_vids": _rebuilt(a, sym0_vids=a["sym0_vids"] + 1),
        "no_instrs": _rebuilt(a, drop=["instrs"], redigest=True),
        "no_tables": _rebuilt(a, drop=["tables"], redigest=True),
        "no_vids": _rebuilt(a, drop=["sym0_vids"], redigest=True),
        "float_instrs": _rebuilt(a, instrs=np.zeros(4), redigest=True),
        "float_tables": _rebuilt(a, tables=a["tables"].astype(float), redigest=True),
        "no_chips": _rebuilt(a, {k: v for k, v in h.items() if k != "chips"}, redigest=True),
        "string_chips": _rebuilt(a, _edit(h, chips="1"), redigest=True),
        "bad_symbol": _rebuilt(a, _edit(h, symbols=[{"name": 3}]), redigest=True),
        "bad_hw": _rebuilt(a, _edit(h, hw={**h["hw"], "clock_hz": -1.0}), redigest=True),
        "hw_hash": _rebuilt(a, _edit(h, hw_hash="0" * 16), redigest=True),
        "short_vids": _rebuilt(a, sym0_vids=a["sym0_vids"][:-1], redigest=True),
    }
    for name, arrays in crafted.items():
        _save(d / f"{name}.lpu", arrays)
    return d


# --- the command line -----------------------------------------------------------------------------

# (id, argv, needle in the one line on stderr). "{d}" is the folder of the files above.
CLI = [
    # no or an unknown subcommand
    ("no command", [], "required: command"),
    ("unknown command", ["frobnicate"], "invalid choice"),
    # validate
    ("validate tokens 0", ["validate", "--tokens", "0"], "--tokens: tokens=0 must be"),
    ("validate tokens float", ["validate", "--tokens", "2.0"], "--tokens: invalid int value"),
    ("validate tokens past max_seq_len", ["validate", "--tokens", "65"], "max_seq_len=64"),
    ("validate seed -1", ["validate", "--seed", "-1"], "--seed: seed=-1 must be"),
    ("validate prompt empty", ["validate", "--prompt", ""], "--prompt"),
    ("validate prompt empty item", ["validate", "--prompt", "1,,2"], "--prompt"),
    ("validate prompt negative", ["validate", "--prompt", "-1"], "prompt [-1]"),
    ("validate prompt past vocab", ["validate", "--prompt", "96"], "prompt [96]"),
    ("validate chips 0", ["validate", "--chips", "0"], "--chips: chips=0"),
    ("validate weights", ["validate", "--weights", "int4"], "weights='int4'"),
    ("validate engine", ["validate", "--engine", "fast"], "invalid choice: 'fast'"),
    ("validate model too big", ["validate", "--model", "llama2-7b"], "needs at least"),
    (
        "validate host memory",
        ["validate", "--model", "llama2-7b", "--hw", "{d}/huge_sram.toml", "--tokens", "1"],
        "GB of memory on this machine",
    ),
    # estimate
    ("estimate context 65", ["estimate", "--context", "65"], "context=65"),
    ("estimate context -1", ["estimate", "--context", "-1"], "context=-1"),
    (
        "estimate context 20000",
        [
            "estimate",
            "--hw",
            "groq-tsp-v1",
            "--model",
            "llama3.1-8b",
            "--context",
            "20000",
            "--chips",
            "1",
        ],  # (a fixed chip count; without one, the fewest chips that hold it)
        "needs at least",
    ),
    ("estimate layers 0", ["estimate", "--layers", "0"], "--layers: layers=0"),
    ("estimate layers 3", ["estimate", "--layers", "3"], "layers=3"),
    ("estimate chips past blocks", ["estimate", "--chips", "4"], "more than the 3 blocks"),
    (
        "estimate mapping tp family",
        ["estimate", "--model", "tiny-gpt2", "--chips", "2", "--mapping", "tp=2"],
        "tp=2: tensor parallelism compiles the llama and mixtral families",
    ),
    (
        "estimate mapping ep",
        ["estimate", "--model", "tiny-mixtral", "--mapping", "ep=3"],
        "has ep=3, which does not divide n_experts=4 of 'tiny-mixtral'; valid ep: 1, 2, 4",
    ),
    (
        "estimate mapping chips",
        ["estimate", "--chips", "2", "--mapping", "pp=4"],
        "uses 4 chips but chips=2",
    ),
    ("estimate mapping text", ["estimate", "--mapping", "pp:2"], "--mapping"),
    ("estimate mapping tp heads", ["estimate", "--chips", "3", "--mapping", "tp=3"], "tp=3"),
    ("estimate topology missing", ["estimate", "--topology", "{d}/none.toml"], "none.toml"),
    ("estimate weights", ["estimate", "--weights", "int3"], "weights='int3'"),
    ("estimate unknown model", ["estimate", "--model", "gpt-5"], "unknown model 'gpt-5'"),
    ("estimate model too big", ["estimate", "--model", "llama2-70b"], "needs at least"),
    ("estimate hw empty", ["estimate", "--hw", ""], "hardware '' is empty"),
    ("estimate hw directory", ["estimate", "--hw", "{d}/adir"], "is a directory"),
    ("estimate hw missing", ["estimate", "--hw", "{d}/missing.toml"], "does not exist"),
    ("estimate hw latin-1", ["estimate", "--hw", "{d}/latin1.toml"], "latin1.toml' is not UTF-8"),
    ("estimate context text", ["estimate", "--context", "x"], "--context: invalid int value"),
    # compile
    ("compile output empty", ["compile", "-o", ""], "--output: output=''"),
    ("compile output directory", ["compile", "-o", "{d}/adir"], "is a directory"),
    ("compile output no folder", ["compile", "-o", "{d}/nowhere/p.lpu"], "not a directory"),
    ("compile listing empty", ["compile", "-o", "{d}/p.lpu", "--listing", ""], "--listing"),
    ("compile pos", ["compile", "-o", "{d}/p.lpu", "--context", "4", "--pos", "4"], "pos=4"),
    ("compile pos -1", ["compile", "-o", "{d}/p.lpu", "--pos", "-1"], "pos=-1"),
    ("compile layers", ["compile", "-o", "{d}/p.lpu", "--layers", "9"], "layers=9"),
    ("compile no output", ["compile"], "-o/--output"),
    # simulate
    ("simulate missing", ["simulate", "{d}/missing.lpu"], "does not exist"),
    ("simulate empty path", ["simulate", ""], "path is empty"),
    ("simulate directory", ["simulate", "{d}/adir"], "is a directory"),
    ("simulate empty file", ["simulate", "{d}/empty.lpu"], "foreign"),
    ("simulate foreign", ["simulate", "{d}/foreign.lpu"], "foreign"),
    ("simulate zeros", ["simulate", "{d}/zeros.lpu"], "foreign"),
    ("simulate npz", ["simulate", "{d}/other.npz"], "no header"),
    ("simulate truncated", ["simulate", "{d}/truncated.lpu"], "truncated or foreign"),
    ("simulate truncated 10", ["simulate", "{d}/truncated10.lpu"], "truncated or foreign"),
    ("simulate flipped", ["simulate", "{d}/flipped.lpu"], "truncated or foreign"),
    ("simulate header list", ["simulate", "{d}/header_list.lpu"], "a JSON list"),
    ("simulate header not json", ["simulate", "{d}/header_not_json.lpu"], "corrupt header"),
    ("simulate header python", ["simulate", "{d}/header_not_utf8_json.lpu"], "corrupt header"),
    ("simulate bad magic", ["simulate", "{d}/bad_magic.lpu"], "bad magic"),
    ("simulate old version", ["simulate", "{d}/old_version.lpu"], "format version"),
    ("simulate new version", ["simulate", "{d}/new_version.lpu"], "format version"),
    ("simulate string version", ["simulate", "{d}/string_version.lpu"], "format version"),
    ("simulate no digest", ["simulate", "{d}/no_digest.lpu"], "has no digest"),
    ("simulate edited cycles", ["simulate", "{d}/edited_cycles.lpu"], "digest does not match"),
    ("simulate edited meta", ["simulate", "{d}/edited_meta.lpu"], "digest does not match"),
    ("simulate edited sources", ["simulate", "{d}/edited_sources.lpu"], "digest does not match"),
    ("simulate edited vids", ["simulate", "{d}/edited_vids.lpu"], "digest does not match"),
    ("simulate no instrs", ["simulate", "{d}/no_instrs.lpu"], "lacks the array 'instrs'"),
    ("simulate no tables", ["simulate", "{d}/no_tables.lpu"], "lacks the array 'tables'"),
    ("simulate no vids", ["simulate", "{d}/no_vids.lpu"], "lacks the array 'sym0_vids'"),
    ("simulate float instrs", ["simulate", "{d}/float_instrs.lpu"], "unknown layout"),
    ("simulate float tables", ["simulate", "{d}/float_tables.lpu"], "array 'tables' of float64"),
    ("simulate no chips", ["simulate", "{d}/no_chips.lpu"], "header without 'chips'"),
    ("simulate string chips", ["simulate", "{d}/string_chips.lpu"], "'chips' = '1'"),
    ("simulate bad symbol", ["simulate", "{d}/bad_symbol.lpu"], "malformed symbol #0"),
    ("simulate bad hw", ["simulate", "{d}/bad_hw.lpu"], "invalid hardware config"),
    ("simulate hw hash", ["simulate", "{d}/hw_hash.lpu"], "does not match its hash"),
    ("simulate short vids", ["simulate", "{d}/short_vids.lpu"], "unequal lengths"),
    ("simulate other hw", ["simulate", "{d}/good.lpu", "--hw", "groq-tsp-v1"], "compiled for"),
    ("simulate hw empty", ["simulate", "{d}/good.lpu", "--hw", ""], "hardware '' is empty"),
    ("simulate engine", ["simulate", "{d}/good.lpu", "--engine", "x"], "invalid choice"),
    # trace
    ("trace missing", ["trace", "{d}/missing.lpu", "-o", "{d}/t.json"], "does not exist"),
    ("trace flipped", ["trace", "{d}/flipped.lpu", "-o", "{d}/t.json"], "truncated or foreign"),
    ("trace header list", ["trace", "{d}/header_list.lpu", "-o", "{d}/t.json"], "JSON list"),
    ("trace output empty", ["trace", "{d}/good.lpu", "-o", ""], "--output: output=''"),
    ("trace output folder", ["trace", "{d}/good.lpu", "-o", "{d}/no/t.json"], "not a directory"),
    # compare
    ("compare batch 0", ["compare", "--batch", "0"], "--batch: batch=0"),
    ("compare batch empty", ["compare", "--batch", ""], "--batch '' must be comma-separated"),
    ("compare batch empty item", ["compare", "--batch", "1,"], "--batch '1,' must be comma-"),
    ("compare batch float", ["compare", "--batch", "1.5"], "--batch '1.5'"),
    ("compare tp 0", ["compare", "--tp", "0"], "--tp: tp=0"),
    ("compare tp 3", ["compare", "--tp", "3"], "tp=3 must divide"),
    ("compare devices 0", ["compare", "--devices", "0"], "--devices: devices=0"),
    ("compare devices and tp", ["compare", "--devices", "2", "--tp", "4"], "tp=4 differs"),
    ("compare context 0", ["compare", "--context", "0"], "context=0"),
    ("compare prompt 0", ["compare", "--prompt", "0"], "prompt=0"),
    ("compare prompt > context", ["compare", "--prompt", "99999"], "prompt=99999"),
    ("compare plot empty", ["compare", "--plot", ""], "--plot: plot=''"),
    ("compare plot folder", ["compare", "--plot", "{d}/no/p.png"], "not a directory"),
    ("compare gpus empty", ["compare", "--gpus", ""], "--gpus '' has an empty item"),
    ("compare gpu unknown", ["compare", "--gpus", "h100"], "unknown GPU 'h100'"),
    ("compare weights", ["compare", "--weights", "int3"], "unknown weight format 'int3'"),
    ("compare hw", ["compare", "--hw", "{d}/nan_clock.toml"], "clock_hz=nan"),
    # measure
    ("measure tokens 0", ["measure", "--tokens", "0"], "tokens=0"),
    ("measure context 0", ["measure", "--context", "0"], "context=0"),
    ("measure seed -1", ["measure", "--seed", "-1"], "seed=-1"),
    ("measure gpt2", ["measure", "--model", "gpt2"], "llama family"),
    ("measure llama2-70b", ["measure", "--model", "llama2-70b"], "GB of memory on this machine"),
    # gpus, presets, models take no arguments
    ("gpus extra", ["gpus", "--bogus"], "unrecognized arguments: --bogus"),
    ("presets extra", ["presets", "x"], "unrecognized arguments: x"),
    ("models extra", ["models", "--x"], "unrecognized arguments: --x"),
]
# Every malformed TOML file, through the command that reads it.
CLI += [
    (f"toml {name}", ["estimate", "--hw", f"{{d}}/{name}.toml"], needle)
    for name, needle in {
        "nan_clock": "clock_hz=nan must be a finite number",
        "inf_clock": "clock_hz=inf",
        "neg_inf_clock": "clock_hz=-inf",
        "tiny_clock": "clock_hz=1e-300",
        "huge_clock": "clock_hz=1e+300",
        "streams4": "streams_per_direction=4",
        "streams6": "mem_slices=6",
        "huge_latency": "mxm_latency_cycles=100000000",
        "zero_latency": "vxm_small_latency_cycles=0",
        "float_lanes": "lanes=16.0 is not an integer",
        "bool_field": "vxm_alus=True is not a number",
        "string_field": "lanes='320' is not a number",
        "array_field": "lanes=[16] is not a number",
        "table_field": "lanes={'x': 1} is not a number",
        "unknown_field": "unknown hardware field(s) lanez",
        "unknown_base": "unknown hardware preset 'tsp9'",
        "base_not_string": "base=3 must be a preset name",
        "odd_planes": "mxm_planes=3",
        "three_buffers": "mxm_weight_buffers=3",
        "slice_not_lanes": "multiple of lanes",
        "slice_too_many_words": "words per slice",
        "install_beyond_lanes": "mxm_install_vectors_per_cycle=17",
        "fp16_pace": "mxm_fp16_cycles_per_vector=2000",
        "c2c_nan": "c2c_bytes_per_cycle=nan",
        "negative_slices": "mem_slices=-16",
        "empty_name": "name='' must be a non-empty string",
        "syntax": "is not valid TOML",
    }.items()
]


@pytest.mark.parametrize("argv, needle", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_cli_bad_input_is_one_line(capsys, files, argv, needle):
    argv = [a.format(d=files) for a in argv]
    t0 = time.perf_counter()
    rc = main(argv)
    elapsed = time.perf_counter() - t0
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and out == ""
    assert len(err.splitlines()) == 1, err
    assert needle in err, err
    assert err.startswith("lpusim"), err
    assert elapsed < LIMIT_S, f"{elapsed:.1f} s"


# --- the Python API -------------------------------------------------------------------------------

API = [
    ("estimate context float", lambda d: lpusim.estimate(context=2.5), "context=2.5"),
    ("estimate context bool", lambda d: lpusim.estimate(context=True), "not a bool"),
    ("estimate chips bool", lambda d: lpusim.estimate(chips=True), "chips=True"),
    ("estimate chips past blocks", lambda d: lpusim.estimate(chips=4), "pp=4"),
    ("estimate mapping int", lambda d: lpusim.estimate(chips=2, mapping=2), "mapping"),
    ("estimate layers float", lambda d: lpusim.estimate(layers=1.0), "layers=1.0"),
    ("estimate model int", lambda d: lpusim.estimate(model=3), "model=3"),
    ("estimate model unknown", lambda d: lpusim.estimate("gpt-5"), "unknown model 'gpt-5'"),
    ("estimate hw None", lambda d: lpusim.estimate(hw=None), "hardware None"),
    ("estimate hw list", lambda d: lpusim.estimate(hw=["teaching"]), "hardware ['teaching']"),
    ("estimate engine", lambda d: lpusim.estimate(engine="fast"), "engine='fast'"),
    ("estimate weights", lambda d: lpusim.estimate(weights=8), "weights=8"),
    ("validate prompt str", lambda d: lpusim.validate(prompt="1,2"), "prompt '1,2'"),
    ("validate prompt empty", lambda d: lpusim.validate(prompt=()), "prompt []"),
    ("validate prompt bool", lambda d: lpusim.validate(prompt=[True]), "prompt [True]"),
    ("validate prompt float", lambda d: lpusim.validate(prompt=[1.0]), "prompt [1.0]"),
    ("validate tokens float", lambda d: lpusim.validate(tokens=2.0), "tokens=2.0"),
    ("validate tokens 0", lambda d: lpusim.validate(tokens=0), "tokens=0"),
    ("validate tokens 100", lambda d: lpusim.validate(tokens=100), "max_seq_len=64"),
    ("validate seed float", lambda d: lpusim.validate(seed=1.5), "seed=1.5"),
    ("validate seed -1", lambda d: lpusim.validate(seed=-1), "seed=-1"),
    ("validate tolerance nan", lambda d: lpusim.validate(tolerance=math.nan), "tolerance=nan"),
    ("validate tolerance str", lambda d: lpusim.validate(tolerance="1"), "tolerance='1'"),
    ("validate chips", lambda d: lpusim.validate(chips=1.0), "chips=1.0"),
    (
        "validate host memory",
        lambda d: lpusim.validate("llama2-7b", str(d / "huge_sram.toml"), tokens=1),
        "GB of memory on this machine",
    ),
    ("compare batch bool", lambda d: lpusim.compare(batch=True), "batch=True"),
    ("compare batch float", lambda d: lpusim.compare(batch=[1, 2.5]), "batch=2.5"),
    ("compare gpus None", lambda d: lpusim.compare(gpus=None), "gpus=None"),
    ("compare gpus int", lambda d: lpusim.compare(gpus=[3]), "gpus=3"),
    ("compare weights empty", lambda d: lpusim.compare(weights=[]), "weights=[]"),
    ("compare tp and devices", lambda d: lpusim.compare(tp=2, devices=1), "tp=2 differs"),
    ("compare devices bool", lambda d: lpusim.compare(devices=True), "devices=True"),
    ("compare context float", lambda d: lpusim.compare(context=2.5), "context=2.5"),
    ("compare prompt 0", lambda d: lpusim.compare(prompt=0), "prompt=0"),
    ("compare engine", lambda d: lpusim.compare(engine="fast"), "engine='fast'"),
    ("measure tokens str", lambda d: lpusim.measure(tokens="3"), "tokens='3'"),
    ("measure context 0", lambda d: lpusim.measure(context=0), "context=0"),
    ("measure seed float", lambda d: lpusim.measure(seed=0.5), "seed=0.5"),
    ("measure llama2-70b", lambda d: lpusim.measure("llama2-70b"), "GB of memory"),
    ("hw nan", lambda d: preset("teaching").replace(clock_hz=math.nan), "clock_hz=nan"),
    ("hw numpy nan", lambda d: preset("teaching").replace(clock_hz=np.float64("inf")), "inf"),
    ("hw string", lambda d: HardwareConfig(lanes="320"), "lanes='320'"),
    ("hw name", lambda d: HardwareConfig(name=3), "name=3"),
    ("hw from list", lambda d: HardwareConfig.from_dict([1]), "table of fields"),
    ("hw unhashable preset", lambda d: preset(["teaching"]), "unknown hardware preset"),
    ("hw empty path", lambda d: HardwareConfig.from_toml(""), "path is empty"),
    ("load_hardware empty", lambda d: load_hardware(" "), "is empty"),
    ("program empty path", lambda d: Program.load(""), "path is empty"),
    ("program directory", lambda d: Program.load(d / "adir"), "is a directory"),
    ("program edited", lambda d: Program.load(d / "edited_cycles.lpu"), "digest does not match"),
    ("program other hw", lambda d: Program.load(d / "good.lpu", preset("lpu-next")), "compiled"),
]


@pytest.mark.parametrize("call, needle", [c[1:] for c in API], ids=[c[0] for c in API])
def test_api_bad_input_raises_an_lpu_error(files, call, needle):
    t0 = time.perf_counter()
    with pytest.raises(LpuError) as caught:
        call(files)
    elapsed = time.perf_counter() - t0
    message = str(caught.value)
    assert needle in message and "\n" not in message, message
    assert elapsed < LIMIT_S, f"{elapsed:.1f} s"


CATALOGUE_CLASSES = {
    "hardware fields (range, finiteness, type) and TOML files": sum(
        c[0].startswith("toml") or "hw" in c[0] for c in CLI + API
    ),
    "Program files": sum(c[0].startswith(("simulate", "trace", "program")) for c in CLI + API),
    "command-line options": sum(
        c[0].split()[0] in ("validate", "estimate", "compile", "compare", "measure") for c in CLI
    ),
    "Python API types and ranges": sum(
        c[0].split()[0] in ("estimate", "validate", "compare", "measure") for c in API
    ),
}


def test_the_catalogue_covers_every_subcommand_and_at_least_60_inputs():
    assert len(CLI) + len(API) >= 60
    commands = {c[1][0] for c in CLI if c[1]}
    assert commands >= {
        "validate", "estimate", "compile", "simulate", "trace", "compare", "gpus", "measure",
        "presets", "models",
    }  # fmt: skip
    assert all(n >= 10 for n in CATALOGUE_CLASSES.values()), CATALOGUE_CLASSES


@pytest.mark.parametrize(
    "argv, call",
    [
        (["estimate", "--context", "65"], lambda: lpusim.estimate(context=65)),
        (["validate", "--seed", "-1"], lambda: lpusim.validate(seed=-1)),
        (["validate", "--tokens", "0"], lambda: lpusim.validate(tokens=0)),
        (["compare", "--batch", "0"], lambda: lpusim.compare(batch=0)),
        (["measure", "--context", "0"], lambda: lpusim.measure(context=0)),
    ],
)
def test_the_cli_says_what_the_api_says_and_names_the_option(capsys, argv, call):
    with pytest.raises(ArgumentError) as caught:
        call()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--{caught.value.name}: {caught.value}" in err


# --- Program files: random corruption ------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "p.lpu"
    prog = softmax_matmul_program()
    prog.save(path)
    return prog, path.read_bytes()


def _same(a: Program, b: Program) -> bool:
    return (
        a.content_hash == b.content_hash
        and a.hw == b.hw
        and (a.predicted_cycles, a.words_used, a.chips, a.meta, a.sources)
        == (b.predicted_cycles, b.words_used, b.chips, b.meta, b.sources)
        and all(
            dataclasses.astuple(s)[:4] == dataclasses.astuple(t)[:4]
            and np.array_equal(s.vids, t.vids)
            for s, t in zip(a.symbols, b.symbols, strict=True)
        )
        and a.consts.keys() == b.consts.keys()
        and all(np.array_equal(a.consts[k], b.consts[k]) for k in a.consts)
    )


@settings(max_examples=200)
@given(data=st.data())
def test_random_byte_flips_load_the_same_program_or_a_format_error(saved, tmp_path_factory, data):
    prog, blob = saved
    corrupt = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        offset = data.draw(st.integers(0, len(blob) - 1), label="offset")
        corrupt[offset] ^= data.draw(st.integers(1, 255), label="mask")
    path = tmp_path_factory.getbasetemp() / "flipped_random.lpu"
    path.write_bytes(bytes(corrupt))
    try:
        back = Program.load(path)
    except ProgramFormatError as e:
        assert "\n" not in str(e)
        return
    assert _same(back, prog)


@pytest.mark.parametrize("fraction", [i / 24 for i in range(24)])
def test_byte_flips_at_many_offsets(saved, tmp_path, fraction):
    prog, blob = saved
    offset = int(fraction * len(blob))
    corrupt = bytearray(blob)
    corrupt[offset] ^= 0xFF
    path = tmp_path / "f.lpu"
    path.write_bytes(bytes(corrupt))
    try:
        back = Program.load(path)
    except ProgramFormatError as e:
        assert "\n" not in str(e)
    else:
        assert _same(back, prog)


def test_truncation_at_every_length_is_a_format_error(saved, tmp_path):
    _, blob = saved
    path = tmp_path / "t.lpu"
    for n in range(0, len(blob), max(1, len(blob) // 64)):
        path.write_bytes(blob[:n])
        with pytest.raises(ProgramFormatError):
            Program.load(path)


# --- strict JSON ----------------------------------------------------------------------------------


def test_json_output_is_strict():
    obj = {
        "tokens_per_s": math.inf,
        "x": np.float32("nan"),
        "fine": 1.5,
        "n": np.int64(3),
        "per_step": [1.0, math.nan],
        "nested": {"y": -math.inf},
    }
    got = strict_json(obj)
    text = json.dumps(got, allow_nan=False)  # raises on NaN or Infinity
    back = json.loads(text)
    assert back["tokens_per_s"] is None and "inf" in back["tokens_per_s_reason"]
    assert back["x"] is None and "nan" in back["x_reason"]
    assert back["fine"] == 1.5 and back["n"] == 3 and "fine_reason" not in back
    assert back["per_step"] == [1.0, None] and "nan" in back["per_step_reason"]
    assert back["nested"]["y"] is None and back["nested"]["y_reason"]


def test_validated_configs_cannot_produce_non_finite_figures():
    with pytest.raises(ConfigError, match="clock_hz=nan"):
        preset("teaching").replace(clock_hz=float("nan"))
    hw = preset("teaching").replace(clock_hz=1e6)  # the slowest clock allowed
    assert math.isfinite(1 / (1000 / hw.clock_hz))
