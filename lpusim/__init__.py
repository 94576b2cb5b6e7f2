"""lpusim: compile transformers for a deterministic LPU-style chip and simulate them.

import lpusim
print(lpusim.estimate("tiny-llama", "teaching"))
print(lpusim.compare("llama2-70b", "groq-tsp-v1", ["h100-sxm", "h200"]))  # a DataFrame
df = lpusim.sweep("sweep.toml", "results/")  # design-space sweep -> DataFrame (lpusim.dse)
print(lpusim.pareto(df, x="sram_bytes", y="tokens_per_s_user"))
"""

from lpusim.api import Estimate, Validation, estimate, validate
from lpusim.compare import Measurement, compare, measure
from lpusim.dse import load_results, pareto, sweep

__all__ = [
    "Estimate",
    "Measurement",
    "Validation",
    "compare",
    "estimate",
    "load_results",
    "measure",
    "pareto",
    "sweep",
    "validate",
]
