"""Design-space sweeps: a sweep killed by SIGKILL and resumed gives the uninterrupted table with no
point computed twice; a Dask LocalCluster gives the local pool's table; points that differ only
in the clock reuse one Program; a failing point is a row, not a stop; bad sweep files are one
line before anything runs; Pareto fronts against a brute-force definition."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lpusim
from lpusim.cli import main
from lpusim.dse import RUN_COLUMNS, load_results, load_space, pareto
from lpusim.dse.cache import ProgramCache, program_key
from lpusim.dse.space import SweepFileError
from lpusim.dse.store import FILE
from models import get_config
from sim import preset
from sim.errors import LpuError

ROOT = Path(__file__).resolve().parents[2]
# 12 points, 6 Programs: each (context, planes) compiles once and its second clock reuses it.
SPACE = """
models = ["tiny-llama"]
context = [8, 12, 16]
gpus = ["h100-sxm"]
[hw]
base = "teaching"
mxm_planes = [2, 4]
clock_hz = [1e9, 2e9]
[cost]
base_mm2 = 10.0
sram_mm2_per_mib = 0.5
mxm_mm2_per_mac = 0.001
"""
POINTS = 12


def deterministic(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=list(RUN_COLUMNS)).reset_index(drop=True)


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    lpusim.estimate("tiny-llama", "teaching", context=8)  # the engine's JIT, once, on disk
    path = tmp_path_factory.mktemp("space") / "sweep.toml"
    path.write_text(SPACE)
    return path


@pytest.fixture(scope="module")
def reference(spec, tmp_path_factory) -> pd.DataFrame:
    """The uninterrupted sweep, in this process (workers=1)."""
    out = tmp_path_factory.mktemp("reference")
    return lpusim.sweep(spec, out, workers=1)


def _stored(folder: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{folder / FILE}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM results WHERE kind = 'lpu'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_reference_sweep_reuses_programs_across_clocks(reference):
    a = reference.attrs
    assert (a["points"], a["computed"], a["reused"], a["failed"], a["gpu_rows"]) == (
        POINTS, POINTS, 0, 0, 3
    )  # fmt: skip
    lpu = reference[reference["kind"] == "lpu"]
    assert (lpu["status"] == "ok").all() and (lpu["chips"] == 1).all()
    assert a["programs_cached"] == POINTS // 2  # one compile per (context, planes)
    for _, g in lpu.groupby(["context", "mxm_planes"]):
        assert g["program_key"].nunique() == 1 and g["cycles"].nunique() == 1
        assert list(g["program_cached"]) == [False, True]
        # the same cycles at twice the clock: half the seconds
        slow, fast = g.sort_values("clock_hz")["step_s"]
        assert fast == pytest.approx(slow / 2, rel=1e-12)
    assert (lpu["cycles"] == lpu["predicted_cycles"]).all()
    assert (lpu["area_mm2"] > 10).all()
    gpu = reference[reference["kind"] == "gpu"]
    assert list(gpu["machine"]) == ["h100-sxm"] * 3 and (gpu["status"] == "ok").all()


def test_killed_sweep_resumes_to_the_same_table_computing_no_point_twice(spec, reference, tmp_path):
    out = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lpusim.cli", "sweep", str(spec), "-o", str(out), "--workers", "1"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill takes any child with it
    )
    deadline = time.monotonic() + 120
    while _stored(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    before = _stored(out)
    assert 3 <= before < POINTS, f"the sweep had stored {before} points when killed"

    df = lpusim.sweep(spec, out, workers=1, resume=True)
    a = df.attrs
    assert (a["points"], a["reused"], a["computed"]) == (POINTS, before, POINTS - before)
    table = load_results(out)
    lpu = table[table["kind"] == "lpu"]
    assert lpu["key"].is_unique and len(lpu) == POINTS
    # Each point was computed by exactly one run: `before` by the killed one, the rest now.
    assert lpu["run"].value_counts().to_dict() == {1: before, 2: POINTS - before}
    pd.testing.assert_frame_equal(deterministic(table), deterministic(reference))
    pd.testing.assert_frame_equal(deterministic(df), deterministic(reference))

    # Resuming a finished sweep computes nothing; without --resume the folder is refused.
    assert lpusim.sweep(spec, out, resume=True, workers=1).attrs["computed"] == 0
    with pytest.raises(LpuError, match="--resume"):
        lpusim.sweep(spec, out, workers=1)


def test_dask_local_cluster_and_local_pool_give_the_same_table(spec, reference, tmp_path, capsys):
    from distributed import LocalCluster

    cache = tmp_path / "programs"
    pool = lpusim.sweep(spec, tmp_path / "pool", workers=2, cache=cache)
    assert pool.attrs["computed"] == POINTS
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        argv = ["sweep", str(spec), "-o", str(tmp_path / "dask"), "--json"]
        rc = main(argv + ["--scheduler", cluster.scheduler_address, "--cache", str(cache)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["results"] == str(tmp_path / "dask")
    assert {k: summary[k] for k in ("points", "computed", "reused", "failed")} == {
        "points": POINTS, "computed": POINTS, "reused": 0, "failed": 0
    }  # fmt: skip
    assert summary["programs_cached"] == POINTS  # the pool compiled them all
    dask = load_results(tmp_path / "dask")
    pd.testing.assert_frame_equal(deterministic(dask), deterministic(pool))
    pd.testing.assert_frame_equal(deterministic(pool), deterministic(reference))


def test_failing_points_are_rows_and_the_sweep_goes_on(spec, reference, tmp_path):
    space = {
        "models": ["tiny-llama", "tiny-mixtral"],
        "context": [8, 100],
        "chips": ["auto", 2, "tp=2,pp=2"],
        "hw": {"base": "teaching"},
    }
    df = lpusim.sweep(space, tmp_path, workers=1)
    rows = {(r.model, r.context, r.chips_spec): r for r in df.itertuples()}
    ok = {k for k, r in rows.items() if r.status == "ok"}
    # One chip, and pipeline stages on two: tiny-mixtral needs two chips, tiny-llama takes them;
    # both models' tensor-parallel groups. Context 100 is past both models' max_seq_len.
    assert ok == {
        ("tiny-llama", 8, "auto"), ("tiny-llama", 8, "2"), ("tiny-mixtral", 8, "2"),
        ("tiny-llama", 8, "tp=2,pp=2"), ("tiny-mixtral", 8, "auto"),
        ("tiny-mixtral", 8, "tp=2,pp=2"),
    }, {k: r.error for k, r in rows.items() if k not in ok}  # fmt: skip
    assert df.attrs["points"] == 12 and df.attrs["failed"] == 6
    # "auto" is the fewest chips' mapping (compiler.passes.partition.auto_mapping)
    auto = rows["tiny-mixtral", 8, "auto"]
    assert (auto.chips, auto.mapping) == (2, "tp=2")
    two = rows["tiny-llama", 8, "2"]
    assert two.chips == 2 and two.link_bytes > 0 and two.c2c_cycles > 0
    e = lpusim.estimate("tiny-llama", "teaching", chips=2, context=8, engine="reference")
    assert (two.cycles, two.link_bytes) == (e.cycles_per_token, e.link_bytes)
    assert rows["tiny-llama", 8, "auto"].link_bytes == 0
    four = rows["tiny-llama", 8, "tp=2,pp=2"]
    assert (four.chips, four.mapping) == (4, "tp=2,pp=2") and four.c2c_cycles > 0
    assert "context=100 must be in [1, max_seq_len=64]" in rows["tiny-llama", 100, "auto"].error


def test_a_corrupt_cached_program_is_compiled_again(tmp_path):
    cfg, hw = get_config("tiny-llama"), preset("teaching")
    args = dict(chips=1, context=8, weights="native", layers=None)
    cache = ProgramCache(tmp_path)
    first, hit = cache.program(cfg, hw, **args)
    assert not hit
    assert ProgramCache(tmp_path).program(cfg, hw, **args)[1]  # found on disk
    path = tmp_path / f"{program_key(cfg, hw, **args)}.lpu"
    path.write_bytes(path.read_bytes()[:100])  # as if a writer died mid-file
    again, hit = ProgramCache(tmp_path).program(cfg, hw, **args)
    assert not hit and again.content_hash == first.content_hash
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file and renamed
    faster = hw.replace(clock_hz=2e9, c2c_latency_cycles=5)
    program, hit = ProgramCache(tmp_path).program(cfg, faster, **args)
    assert hit and program.hw == faster


def test_pareto_cli_and_plot(reference, tmp_path, capsys):
    folder = reference.attrs["results"]
    png = tmp_path / "pareto.png"
    rc = main(
        ["pareto", folder, "--x", "area_mm2", "--by", "context", "--plot", str(png), "--json"]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    obj = json.loads(out)
    assert png.stat().st_size > 10_000 and obj["plot"] == str(png)
    assert [r["machine"] for r in obj["gpus"]] == ["h100-sxm"] * 3
    front = pd.DataFrame(obj["front"])
    assert (front["clock_hz"] == 2e9).all() and len(front) >= 3  # the faster clock dominates
    rc = main(["pareto", folder, "--x", "nope"])
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "--x: x='nope' is not a column" in err


@pytest.mark.parametrize("seed", range(5))
def test_pareto_is_the_non_dominated_set(seed):
    rng = np.random.default_rng(seed)
    n = 60
    df = pd.DataFrame(
        {
            "kind": "lpu",
            "status": "ok",
            "g": rng.integers(0, 2, n),
            "x": rng.integers(0, 8, n).astype(float),
            "y": rng.integers(0, 8, n).astype(float),
        }
    )
    for x_goal, y_goal in (("min", "max"), ("max", "min")):
        got = set(pareto(df, "x", "y", x_goal=x_goal, y_goal=y_goal, by="g").index)
        sx = df["x"] * (1 if x_goal == "min" else -1)
        sy = df["y"] * (1 if y_goal == "max" else -1)
        brute = {
            i
            for i in df.index
            if not any(
                df["g"][j] == df["g"][i]
                and sx[j] <= sx[i]
                and sy[j] >= sy[i]
                and (sx[j] < sx[i] or sy[j] > sy[i])
                for j in df.index
            )
        }
        assert got == brute


# --- bad sweep files: one line, exit 2, before anything runs --------------------------------------

BAD = {
    "unknown key": ('models = ["tiny-llama"]\nmodel = "x"', "unknown key(s) model"),
    "unknown field": (
        'models = ["tiny-llama"]\n[hw]\nlanez = [16]',
        "unknown hardware field(s) lanez",
    ),
    "empty list": ('models = ["tiny-llama"]\n[hw]\nmem_slices = []', "hw.mem_slices = [] is empty"),
    "empty models": ("models = []", "models = [] is empty"),
    "no models": ('weights = ["int8"]', "names no models"),
    "empty range": (
        'models = ["tiny-llama"]\n[hw]\nclock_hz = { from = 1e9, to = 1e9, steps = 3 }',
        "is empty: from equals to",
    ),
    "one-step range": (
        'models = ["tiny-llama"]\n[hw]\nclock_hz = { from = 1e9, to = 2e9, steps = 1 }',
        "steps must be an integer >= 2",
    ),
    "range fields": (
        'models = ["tiny-llama"]\n[hw]\nclock_hz = { from = 1e9, upto = 2e9 }',
        "a range is { from = A, to = B, steps = N }",
    ),
    "refused value": (
        'models = ["tiny-llama"]\n[hw]\nbase = "teaching"\nmxm_planes = [2, 3]',
        "hw.mxm_planes = 3 is refused by the config on base 'teaching': mxm_planes=3 must be even",
    ),
    "refused clock": (
        'models = ["tiny-llama"]\n[hw]\nclock_hz = [1e9, 0.0]',
        "hw.clock_hz = 0.0 is refused",
    ),
    "refused combination": (
        'models = ["tiny-llama"]\n[hw]\nbase = "teaching"\nlanes = [16, 32]\n'
        "mem_slice_bytes = [16384, 16400]",
        "combination lanes=32, mem_slice_bytes=16400 on base 'teaching' is refused",
    ),
    "non-integer range": (
        'models = ["tiny-llama"]\n[hw]\nmem_slices = { from = 16, to = 32, steps = 4 }',
        "mem_slices is an integer field",
    ),
    "unknown model": ('models = ["tiny-llama", "gpt-5"]', "unknown model 'gpt-5'"),
    "unknown gpu": ('models = ["tiny-llama"]\ngpus = ["h100"]', "unknown GPU 'h100'"),
    "unknown base": ('models = ["tiny-llama"]\n[hw]\nbase = "tsp9"', "unknown hardware preset"),
    "bad weights": ('models = ["tiny-llama"]\nweights = ["int3"]', "'int3' is not a weight format"),
    "bad context": ('models = ["tiny-llama"]\ncontext = [0]', "context: 0 must be a positive"),
    "bad chips": ('models = ["tiny-llama"]\nchips = ["tp=2,xx=3"]', "chips: 'tp=2,xx=3' must be"),
    "duplicate": ('models = ["tiny-llama"]\ncontext = [8, 8]', "context lists 8 twice"),
    "bad cost": (
        'models = ["tiny-llama"]\n[cost]\nbase_mm2 = 1.0',
        "cost names base_mm2 but not mxm_mm2_per_mac, sram_mm2_per_mib",
    ),
    "sample too big": ('models = ["tiny-llama"]\nsample = { points = 5 }', "sample.points = 5"),
    "not toml": ("models = = 1", "is not valid TOML"),
}


@pytest.mark.parametrize("body, needle", BAD.values(), ids=BAD.keys())
def test_bad_sweep_files_are_one_line_before_anything_runs(tmp_path, capsys, body, needle):
    path = tmp_path / "bad.toml"
    path.write_text(body + "\n")
    out = tmp_path / "results"
    t0 = time.perf_counter()
    rc = main(["sweep", str(path), "-o", str(out)])
    elapsed = time.perf_counter() - t0
    stdout, err = capsys.readouterr()
    assert rc == 2 and stdout == "", (rc, stdout, err)
    assert err.startswith("lpusim sweep: error: sweep file") and err.count("\n") == 1, err
    assert needle in err, err
    assert not out.exists()  # nothing ran, nothing was written
    assert elapsed < 5.0
    with pytest.raises(SweepFileError):
        load_space(path)


def test_bad_options(tmp_path, capsys, spec):
    cases = [
        (["sweep", str(tmp_path / "none.toml"), "-o", str(tmp_path / "r")], "does not exist"),
        (["sweep", str(spec), "-o", str(tmp_path / "r"), "--workers", "0"], "--workers: workers=0"),
        (["sweep", str(spec), "-o", str(spec)], "is a file; give a folder"),
        (["pareto", str(tmp_path)], "holds no sweep results"),
    ]
    for argv, needle in cases:
        rc = main(argv)
        _, err = capsys.readouterr()
        assert rc == 2 and err.count("\n") == 1 and needle in err, (argv, err)
