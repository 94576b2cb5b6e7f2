"""lpusim: compile transformers for a deterministic LPU-style chip and simulate them.

import lpusim
print(lpusim.estimate("tiny-llama", "teaching"))
"""

from lpusim.api import Estimate, Validation, estimate, validate

__all__ = ["Estimate", "Validation", "estimate", "validate"]
