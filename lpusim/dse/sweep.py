"""`sweep`: evaluate every point of a space, in this process, on a local process pool, or on a
Dask cluster, storing each finished point at once (lpusim.dse.store) and skipping, with
`resume`, the points already stored.

Order of work: the points that share a Program (they differ only in clock or link figures) form
a group; the first of each group is submitted first and the rest once it has finished, so they
find its Program in the cache instead of compiling it side by side. The results do not depend on
the order: every row is a pure function of its point.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import tempfile
from collections import deque
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from lpusim import checks
from lpusim.dse.cache import program_key
from lpusim.dse.run import default_cache, evaluate, evaluate_gpu
from lpusim.dse.space import Point, chip_count, load_space, lpusim_version
from lpusim.dse.store import Store, load_results
from sim.errors import ArgumentError, LpuError


def sweep(
    space,
    output=None,
    *,
    workers: int | None = None,
    scheduler=None,
    resume: bool = False,
    cache=None,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate the points of `space` (a sweep TOML file, a dict of its keys, or a Space) and
    return this sweep's rows (lpusim.load_results's columns) as a DataFrame.

    output: the results folder (default: a temporary one, removed afterwards).
    workers: local processes (1 runs in this process). Workers are spawned, so a script that
        asks for more than one runs its sweep under `if __name__ == "__main__":`. Each pays a few
        seconds to start (JAX, the engine's kernels), as much as some POINTS_PER_WORKER quick
        points take, so the default is one per POINTS_PER_WORKER points, up to the CPUs this
        process may use.
    scheduler: a Dask scheduler address or a distributed.Client (then `workers` is unused, and
        `cache` must be on a filesystem the Dask workers share).
    resume: skip the points whose key the folder already holds; without it, a folder that holds
        results is refused.
    cache: the Program cache folder (default: output/programs).
    df.attrs: points, computed, reused, failed, gpu_rows, programs_cached, results.
    """
    space = load_space(space)  # every value checked before anything runs
    if workers is not None:
        workers = checks.count("workers", workers, 1, 4096)
    if scheduler is not None and workers is not None:
        raise ArgumentError(
            "workers", workers, "is for local processes; the Dask cluster's workers run the points"
        )
    if output is None:
        with tempfile.TemporaryDirectory(prefix="lpusim-sweep-") as tmp:
            kwargs = dict(workers=workers, scheduler=scheduler, cache=cache, progress=progress)
            df = sweep(space, tmp, **kwargs)
            df.attrs["results"] = None
            return df
    if not isinstance(output, (str, os.PathLike)) or not str(output).strip():
        raise ArgumentError("output", output, "must be a folder path")
    output = Path(output)
    cache = Path(cache) if cache is not None else default_cache(output)
    # A Dask address is reached before anything is written.
    backend = _backend(workers, scheduler, len(space.points))
    store = None
    try:
        store = Store(output)
        done = store.keys()
        if done and not resume:
            raise LpuError(
                f"{str(output)!r} already holds {len(done)} sweep results; pass --resume "
                "(resume=True) to add to them without recomputing a finished point, or choose "
                "an empty folder"
            )
        summary = _run(space, store, done, cache, backend, progress)
        df = load_results(output)  # read once: the CSV snapshot and this sweep's rows
        store.write_csv(df)
    finally:
        backend.close()
        if store is not None:
            store.close()
    keys = {p.key for p in space.points + space.gpu_points}
    df = df[df["key"].isin(keys)].reset_index(drop=True)
    df.attrs.update(summary, results=str(output))
    return df


def _run(space, store: Store, done: set, cache: Path, backend, progress) -> dict:
    todo = [p for p in space.points if p.key not in done]
    gpu_todo = [g for g in space.gpu_points if g.key not in done]
    run = store.start_run(lpusim_version(), {**space.source, "cost": space.cost}, len(todo))
    computed = failed = cached = 0
    for g in gpu_todo:  # a formula each: here, before the points
        store.add(evaluate_gpu(g, run))
    # Points done (and of how many), failed, served from the Program cache, and the time left;
    # shown where stderr is a terminal (disable=None), as every progress bar of the CLI.
    off = None if progress else True
    bar = tqdm(total=len(todo), desc="sweep", unit="pt", file=sys.stderr, disable=off)
    try:
        for row in _schedule(todo, backend, str(cache), run):
            store.add(row)
            computed += 1
            failed += row["status"] != "ok"
            cached += bool(row["program_cached"])
            bar.set_postfix(failed=failed, cached=cached, refresh=False)
            bar.update(1)
    finally:
        bar.close()
    keys = {p.key for p in space.points}
    stored_failed = sum(
        1
        for (k, s) in store.db.execute("SELECT key, status FROM results")
        if k in keys and s != "ok"
    )
    store.finish_run(run, computed, len(space.points) - len(todo), stored_failed)
    return {
        "points": len(space.points),
        "computed": computed,
        "reused": len(space.points) - len(todo),
        "failed": stored_failed,
        "gpu_rows": len(space.gpu_points),
        "programs_cached": cached,
        "run": run,
    }


def _group(p: Point) -> str | None:
    """The Program cache key a point will use, or None where it cannot tell (the point will
    fail before compiling, or its chips depend on the fit)."""
    if p.batch != 1 or chip_count(p.chips) not in (None, 1):
        return None
    try:
        cfg = checks.model(p.model)
        context = checks.context(cfg, p.context)
        layers = checks.optional_count("layers", p.layers, 1, cfg.n_layers)
    except LpuError:
        return None
    return program_key(cfg, p.hw, chips=1, context=context, weights=p.weights, layers=layers)


def _schedule(todo: list[Point], backend, cache: str, run: int):
    """Rows as they finish: group leaders first, each group's followers once its leader is done."""
    group = {p.index: _group(p) for p in todo}
    followers: dict[str, list[Point]] = {}
    ready: deque[Point] = deque()
    for p in todo:
        g = group[p.index]
        if g is not None and g in followers:
            followers[g].append(p)
        else:
            if g is not None:
                followers[g] = []
            ready.append(p)
    inflight: dict = {}
    while ready or inflight:
        while ready and len(inflight) < backend.slots:
            p = ready.popleft()
            inflight[backend.submit(evaluate, p, cache, run)] = p
        for f in backend.wait(list(inflight)):
            p = inflight.pop(f)
            try:
                row = f.result()
            except Exception as e:  # the worker itself died (killed, out of memory)
                raise LpuError(
                    f"a worker died while computing point {p.index} ({type(e).__name__}: {e}); "
                    "the finished points are stored: rerun with --resume"
                ) from None
            ready.extend(followers.pop(group[p.index], ()))  # its Program is cached now
            yield row


# --- where points run -----------------------------------------------------------------------------


class _Inline:
    """This process, one point at a time."""

    slots = 1

    def submit(self, fn, *args):
        f = cf.Future()
        f.set_result(fn(*args))
        return f

    def wait(self, futures):
        return futures

    def close(self):
        pass


class _Pool:
    """Local worker processes (spawned: JAX does not survive a fork)."""

    def __init__(self, workers: int):
        ctx = multiprocessing.get_context("spawn")
        self.pool = cf.ProcessPoolExecutor(workers, mp_context=ctx)
        self.slots = 2 * workers

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def wait(self, futures):
        return cf.wait(futures, return_when=cf.FIRST_COMPLETED).done

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Dask:
    """A Dask distributed cluster, by scheduler address or an existing Client."""

    def __init__(self, scheduler):
        import distributed

        self.own = not isinstance(scheduler, distributed.Client)
        if self.own:
            if not isinstance(scheduler, str) or not scheduler.strip():
                raise ArgumentError(
                    "scheduler",
                    scheduler,
                    "must be a Dask scheduler address such as tcp://host:8786, or a "
                    "distributed.Client",
                )
            try:
                scheduler = distributed.Client(scheduler, timeout=30)
            except (OSError, TimeoutError, ValueError) as e:
                raise ArgumentError(
                    "scheduler", scheduler, f"cannot be reached: {' '.join(str(e).split())}"
                ) from None
        self.client = scheduler
        self.wait_fn = distributed.wait
        self.slots = 2 * max(1, sum(self.client.nthreads().values()))

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def wait(self, futures):
        return self.wait_fn(futures, return_when="FIRST_COMPLETED").done

    def close(self):
        if self.own:
            self.client.close()


# Points per local worker by default. A worker's start-up (JAX, the engine's kernels) outweighs
# quick points: `benchmarks/sweep_speed.py --small` measured 24 points at 7.96 points/s on 1
# worker and 4.47 on 2 (2-core CI machine). Where 2 workers start to win was not measured; 32 is
# a guess above that 24.
POINTS_PER_WORKER = 32


def _backend(workers, scheduler, points: int):
    """Where points run. A pool starts its processes as points are submitted, at most one per
    point to compute."""
    if scheduler is not None:
        return _Dask(scheduler)
    cpus = len(os.sched_getaffinity(0)) or 1
    workers = workers or max(1, min(cpus, points // POINTS_PER_WORKER))
    return _Inline() if workers == 1 else _Pool(workers)
