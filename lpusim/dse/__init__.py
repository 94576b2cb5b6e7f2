"""Design-space exploration: sweep a space of models and hardware configs, keep the results, find
the Pareto front.

    df = lpusim.sweep("sweep.toml", "results/", workers=2)   # or scheduler="tcp://host:8786"
    df = lpusim.load_results("results/")
    front = lpusim.pareto(df, x="sram_bytes", y="tokens_per_s_user")

Files, in the order a sweep uses them: space (the sweep file -> points, checked before anything
runs), cache (compiled Programs by content hash), run (one point -> its row), store (the results
folder: SQLite, a row per point), sweep (where and in what order points run), pareto (fronts and
plots).
"""

from lpusim.dse.pareto import pareto, plot_pareto
from lpusim.dse.space import Space, SweepFileError, load_space
from lpusim.dse.store import COLUMNS, RUN_COLUMNS, load_results
from lpusim.dse.sweep import sweep

__all__ = [
    "COLUMNS",
    "RUN_COLUMNS",
    "Space",
    "SweepFileError",
    "load_results",
    "load_space",
    "pareto",
    "plot_pareto",
    "sweep",
]
