"""A sweep's results: one SQLite file in the output folder, a row per point, committed one point at
a time, so a sweep killed at any moment (SIGKILL included: SQLite's journal rolls back a half-
written transaction) keeps every point it finished.

    results  (key PRIMARY KEY, kind, status, run, row)   row: the point's columns as JSON
    runs     (run, started, finished, version, space, points, computed, reused, failed)

Only the process that coordinates a sweep writes; workers return rows to it. A row's JSON keeps
the full precision of every float (Python's repr round-trips) and leaves room for columns later
versions add (chip mappings) without a migration.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import pandas as pd

from lpusim.dse.space import HW_FIELDS, area_mm2
from sim.errors import LpuError
from sim.hardware import HardwareConfig

FILE = "results.sqlite"
CSV = "results.csv"
UNITS = ("mem_read", "mem_write", "vxm", "sxm", "mxm_install", "mxm_matmul", "stream_hops")
# The table's columns, in order: inputs, the config, the estimate's outputs, bookkeeping.
COLUMNS = (
    ("key", "kind", "machine", "status", "error", "note")
    + ("model", "weights", "context", "layers", "head", "batch", "chips_spec", "chips", "mapping")
    + ("hw_base", "hw_hash")
    + HW_FIELDS
    + ("sram_bytes", "cycles", "predicted_cycles", "step_s", "tokens_per_s_user")
    + ("batch_tokens_per_s", "bound", "bound_cycles", "bound_fraction", "utilisation")
    + ("bandwidth_utilisation",)
    + tuple(f"util_{u}" for u in UNITS)
    + ("sram_bytes_used", "sram_high_water_bytes", "bytes_read", "bytes_written", "link_bytes")
    + ("c2c_cycles", "instructions", "vector_ops", "program_key", "program_cached")
    + ("compile_s", "simulate_s", "wall_s", "run", "point", "lpusim_version")
)
# Columns that say how a point was computed, not what it is: they differ between two runs of the
# same sweep (timings, which run, whether the Program was already compiled). Everything else is
# deterministic: the same inputs give the same values, bit for bit.
RUN_COLUMNS = ("program_cached", "compile_s", "simulate_s", "wall_s", "run")
INT_COLUMNS = (
    ("context", "layers", "batch", "chips", "cycles", "predicted_cycles", "bound_cycles")
    + ("sram_bytes", "sram_bytes_used", "sram_high_water_bytes", "bytes_read", "bytes_written")
    + ("link_bytes", "c2c_cycles", "instructions", "vector_ops", "run", "point")
    + tuple(f.name for f in fields(HardwareConfig) if f.type == "int")
)
FLOAT_COLUMNS = tuple(f.name for f in fields(HardwareConfig) if f.type == "float") + (
    "step_s", "tokens_per_s_user", "batch_tokens_per_s", "bound_fraction", "utilisation",
    "bandwidth_utilisation", "compile_s", "simulate_s", "wall_s",
) + tuple(f"util_{u}" for u in UNITS)  # fmt: skip

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, run INTEGER NOT NULL,
    row TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run INTEGER PRIMARY KEY, started REAL, finished REAL, version TEXT, space TEXT,
    points INTEGER, computed INTEGER, reused INTEGER, failed INTEGER
);
"""


def results_file(folder) -> Path:
    """The SQLite file of a results folder (or the file itself)."""
    p = Path(folder)
    return p if p.suffix == ".sqlite" else p / FILE


class Store:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise LpuError(f"output {str(folder)!r} is a file; give a folder for the results")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LpuError(f"output folder {str(folder)!r} cannot be created: {e.strerror}") from e
        try:
            self.db = sqlite3.connect(self.folder / FILE, timeout=60)
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LpuError(
                f"{str(self.folder / FILE)!r} is not a sweep results file ({e}); use another folder"
            ) from None

    def keys(self) -> set[str]:
        return {k for (k,) in self.db.execute("SELECT key FROM results")}

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def start_run(self, version: str, space: dict, points: int) -> int:
        with self.db:
            cur = self.db.execute(
                "INSERT INTO runs (started, version, space, points) VALUES (?, ?, ?, ?)",
                (time.time(), version, json.dumps(space), points),
            )
        return cur.lastrowid

    def add(self, row: dict) -> None:
        """One point, in its own transaction: on disk when this returns."""
        with self.db:
            self.db.execute(
                "INSERT OR IGNORE INTO results (key, kind, status, run, row) VALUES (?, ?, ?, ?, ?)",
                (row["key"], row["kind"], row["status"], row["run"], json.dumps(row)),
            )

    def finish_run(self, run: int, computed: int, reused: int, failed: int) -> None:
        with self.db:
            self.db.execute(
                "UPDATE runs SET finished = ?, computed = ?, reused = ?, failed = ? WHERE run = ?",
                (time.time(), computed, reused, failed, run),
            )

    def write_csv(self, table: pd.DataFrame) -> Path:
        """A CSV snapshot of the whole table (load_results'), written to a temporary file and
        renamed."""
        path = self.folder / CSV
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=CSV + ".", suffix=".tmp")
        os.close(fd)
        try:
            table.to_csv(tmp, index=False)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def close(self) -> None:
        self.db.close()


def load_results(folder) -> pd.DataFrame:
    """Every stored row of a results folder as a DataFrame (COLUMNS first, in point order), with
    the silicon-area proxy (`area_mm2_per_chip`, `area_mm2` = chips x that) where the latest run's
    sweep file gave [cost] coefficients. df.attrs: the folder, its runs."""
    path = results_file(folder)
    if not path.is_file():
        raise LpuError(
            f"{str(folder)!r} holds no sweep results (no {path.name}); run `lpusim sweep`"
        )
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
        try:
            rows = [json.loads(r) for (r,) in db.execute("SELECT row FROM results")]
            runs = db.execute("SELECT run, space FROM runs ORDER BY run").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise LpuError(f"{str(path)!r} is not a sweep results file ({e})") from None
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df:
            df[c] = None
    extra = [c for c in df.columns if c not in COLUMNS]
    df = df[list(COLUMNS) + extra]
    for c in INT_COLUMNS:
        df[c] = pd.to_numeric(df[c]).astype("Int64")
    for c in FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c]).astype(float)
    df = df.sort_values(["point", "key"], kind="stable").reset_index(drop=True)
    cost = json.loads(runs[-1][1]).get("cost", {}) if runs else {}
    if cost:
        lpu = df["kind"] == "lpu"
        df["area_mm2_per_chip"] = float("nan")
        df.loc[lpu, "area_mm2_per_chip"] = [
            area_mm2(r, cost) for r in df.loc[lpu, list(HW_FIELDS)].to_dict("records")
        ]
        df["area_mm2"] = df["area_mm2_per_chip"] * df["chips"].astype(float)
    df.attrs.update(results=str(path.parent), runs=len(runs), cost=cost)
    return df
