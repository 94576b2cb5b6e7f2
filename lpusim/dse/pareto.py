"""Pareto fronts of a sweep's table and their plot, with the GPU reference rows on the same axes.

    pareto(df, x="sram_bytes", y="tokens_per_s_user")   -> the non-dominated LPU rows
    plot_pareto(df, x=..., y=..., path="pareto.png")     -> every point, the front, the GPUs

A row is dominated when another is at least as good in both x and y and better in one ("good":
smaller x and larger y by default; `x_goal`/`y_goal` turn either around). Rows that failed or
lack x or y take no part. Equal rows on the front are all kept.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sim.errors import ArgumentError

GOALS = ("min", "max")


def _numeric_columns(df: pd.DataFrame) -> list[str]:
    return [
        c
        for c in df.columns
        if pd.api.types.is_numeric_dtype(df[c])
        and not pd.api.types.is_bool_dtype(df[c])
        and c != "point"
    ]


def _column(df: pd.DataFrame, name: str, option: str) -> str:
    numeric = _numeric_columns(df)
    if name not in numeric:
        what = "is not a column" if name not in df.columns else "is not a numeric column"
        raise ArgumentError(option, name, f"{what} of the results; numeric: {', '.join(numeric)}")
    return name


def _goal(value, option: str) -> str:
    if value not in GOALS:
        raise ArgumentError(option, value, "must be 'min' or 'max'")
    return value


def _by(df: pd.DataFrame, by) -> list[str]:
    by = [] if by is None else [by] if isinstance(by, str) else list(by)
    for c in by:
        if c not in df.columns:
            raise ArgumentError("by", c, f"is not a column of the results: {', '.join(df.columns)}")
    return by


def _front_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-dominated points for smaller x and larger y: sort by x, keep each x's best y where it
    beats every smaller x's."""
    order = np.lexsort((-y, x))
    keep = np.zeros(len(x), bool)
    best = -math.inf
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and x[order[j]] == x[order[i]]:
            j += 1
        top = y[order[i]]  # the best y at this x (sorted descending within it)
        if top > best:
            for k in order[i:j]:
                keep[k] = y[k] == top
            best = top
        i = j
    return keep


def pareto(
    df: pd.DataFrame,
    x: str = "chips",
    y: str = "tokens_per_s_user",
    *,
    x_goal: str = "min",
    y_goal: str = "max",
    by=None,
    kind: str | None = "lpu",
) -> pd.DataFrame:
    """The non-dominated rows of `df` (of `kind`, "lpu" by default; None: every row), one front
    per group of `by` (column names), sorted by group and x."""
    x, y = _column(df, x, "x"), _column(df, y, "y")
    x_goal, y_goal = _goal(x_goal, "x_goal"), _goal(y_goal, "y_goal")
    by = _by(df, by)
    sel = df
    if kind is not None and "kind" in df:
        sel = sel[sel["kind"] == kind]
    if "status" in sel:
        sel = sel[sel["status"] == "ok"]
    sel = sel[sel[x].notna() & sel[y].notna()]
    keep = pd.Series(False, index=sel.index)
    groups = sel.groupby(by, sort=False, dropna=False) if by else [(None, sel)]
    for _, g in groups:
        xs = g[x].to_numpy(float) * (1 if x_goal == "min" else -1)
        ys = g[y].to_numpy(float) * (1 if y_goal == "max" else -1)
        keep[g.index] = _front_mask(xs, ys)
    front = sel[keep]
    return front.sort_values(by + [x], ascending=[True] * len(by) + [x_goal == "min"]).copy()


def _log_scale(values: pd.Series) -> bool:
    v = values[values > 0]
    return len(v) > 1 and v.max() / v.min() > 20


def plot_pareto(
    df: pd.DataFrame,
    x: str = "chips",
    y: str = "tokens_per_s_user",
    path=None,
    *,
    x_goal: str = "min",
    y_goal: str = "max",
    by=None,
    gpus: bool = True,
):
    """Every LPU point (faint), each group's front (a line), and the GPU rows: a marker where
    the GPU has an x, else a dashed level across the axes. Returns the Figure; saves it to
    `path` when given (matplotlib's Agg canvas: no display needed)."""
    from matplotlib.figure import Figure

    front = pareto(df, x, y, x_goal=x_goal, y_goal=y_goal, by=by)
    by = _by(df, by)
    ok = df[(df["status"] == "ok") & df[y].notna()]
    lpu, gpu = ok[ok["kind"] == "lpu"], ok[ok["kind"] == "gpu"]
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    groups = list(front.groupby(by, sort=False)) if by else [((), front)]
    for i, (name, g) in enumerate(groups):
        name = name if isinstance(name, tuple) else (name,)
        label = ", ".join(f"{c}={v}" for c, v in zip(by, name, strict=True)) or "LPU"
        members = lpu
        for c, v in zip(by, name, strict=True):
            members = members[members[c] == v]
        ax.scatter(members[x], members[y], s=12, alpha=0.3, color=f"C{i}")
        ax.plot(g[x], g[y], "o-", color=f"C{i}", drawstyle="steps-post", label=f"{label}: front")
    if gpus:
        for j, r in enumerate(gpu.itertuples()):
            color = f"C{(len(groups) + j) % 10}"
            what = f"{r.machine}: {r.model}, {r.weights}, context {r.context}, {r.chips} dev"
            gx = getattr(r, x)
            if gx is not None and not pd.isna(gx):
                ax.scatter([gx], [getattr(r, y)], marker="*", s=120, color=color, label=what)
            else:  # no such figure for a GPU (SRAM per chip, silicon area): its level
                ax.axhline(getattr(r, y), linestyle="--", linewidth=1, color=color, label=what)
    shown = pd.concat([lpu[[x, y]], gpu[[y]]])
    if _log_scale(shown[y]):
        ax.set_yscale("log")
    if _log_scale(lpu[x]):
        ax.set_xscale("log")
    ax.set_xlabel(f"{x} ({'lower' if x_goal == 'min' else 'higher'} is better)")
    ax.set_ylabel(f"{y} ({'higher' if y_goal == 'max' else 'lower'} is better)")
    ax.set_title(f"Pareto front: {y} against {x}")
    ax.legend(fontsize=7)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
