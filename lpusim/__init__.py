"""lpusim: compile transformers for a deterministic LPU-style chip and simulate them.

import lpusim
print(lpusim.estimate("tiny-llama", "teaching"))
print(lpusim.compare("llama2-70b", "groq-tsp-v1", ["h100-sxm", "h200"]))  # a DataFrame
"""

from lpusim.api import Estimate, Validation, estimate, validate
from lpusim.compare import Measurement, compare, measure

__all__ = ["Estimate", "Measurement", "Validation", "compare", "estimate", "measure", "validate"]
