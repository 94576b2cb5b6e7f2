"""Sweep throughput: points per second of `lpusim.sweep` on 1 worker (this process) and on 2 local
worker processes, for a grid of single-chip points, and the share of points served from the
Program cache (points that differ only in clock_hz reuse one compiled Program).

    python benchmarks/sweep_speed.py            # 48 points: tiny-llama and tiny-gpt2
    python benchmarks/sweep_speed.py --small    # what CI runs: 24 points of tiny-llama
    python benchmarks/sweep_speed.py --json

Each run starts from an empty results folder and an empty Program cache, so it pays every compile;
the 2-worker figure includes starting the worker processes (each imports JAX and loads the
engine's compiled kernels). A last run repeats the 1-worker sweep into a new folder with the
cache it filled: every point's Program is then cached, which is what a sweep that adds points to
an earlier one sees. Single-chip points only until multi-chip compilation lands.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lpusim


def space(small: bool) -> dict:
    return {
        "models": ["tiny-llama"] if small else ["tiny-llama", "tiny-gpt2"],
        "context": [8, 16, 32],
        "hw": {
            "base": "teaching",
            "mxm_planes": [2, 4],
            "clock_hz": {"from": 0.5e9, "to": 2e9, "steps": 4},
        },
    }


def timed(spec: dict, out: Path, cache: Path, workers: int) -> dict:
    t0 = time.perf_counter()
    df = lpusim.sweep(spec, out, workers=workers, cache=cache, progress=False)
    wall = time.perf_counter() - t0
    a = df.attrs
    assert a["failed"] == 0, df[df["status"] != "ok"]["error"].tolist()
    return {
        "workers": workers,
        "points": a["points"],
        "wall_s": wall,
        "points_per_s": a["computed"] / wall,
        "cache_share": a["programs_cached"] / a["computed"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="24 points (CI)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    spec = space(args.small)
    lpusim.estimate("tiny-llama", "teaching", context=8)  # the engine's kernels, compiled once
    rows = []
    with tempfile.TemporaryDirectory(prefix="sweep-speed-") as tmp:
        tmp = Path(tmp)
        for workers in (1, 2):
            row = timed(spec, tmp / f"w{workers}", tmp / f"cache{workers}", workers)
            rows.append({**row, "cache": "empty"})
        row = timed(spec, tmp / "warm", tmp / "cache1", 1)
        rows.append({**row, "cache": "filled"})
    if args.json:
        print(json.dumps({"rows": rows}))
        return 0
    print(f"{'workers':>7} {'cache':>7} {'points':>7} {'wall s':>8} {'points/s':>9} {'cached':>7}")
    for r in rows:
        print(
            f"{r['workers']:>7} {r['cache']:>7} {r['points']:>7} {r['wall_s']:>8.2f} "
            f"{r['points_per_s']:>9.2f} {r['cache_share']:>7.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
