"""Numba compile flags of the engine, in one place: every compiled function in sim/engine is
decorated with `njit` or `njit_inline` from here.

- nopython: the kernels must compile to machine code; a silent fallback to object mode would be
  a hundred times slower and hide a typing mistake.
- cache: compiled kernels are written next to the sources (`__pycache__`), so only the first
  simulation on a machine pays the compile time (seconds per kernel variant). Numba checks a
  cached function against its own file only, but the kernels also compile in tables built from
  sim/isa.py and the inlined helpers of rounding.py: after changing those, delete the `*.nbi`
  and `*.nbc` files in sim/engine/__pycache__ (or change kernel.py and prepare.py too).
- fastmath off: the engine must agree bit for bit with the reference interpreter, so no
  reassociation of sums, no fused multiply-add contraction, no assumption that NaN/inf are absent.
- error_model "numpy": 1/0 gives inf and sqrt(-1) NaN, as with NumPy arrays in the reference,
  instead of raising ZeroDivisionError.
- boundscheck off: every index is validated before use (addresses, slices) or bounded by
  construction (ring slots, the pending-commit queue), so checks would only slow the event loop.
  `NUMBA_BOUNDSCHECK=1` turns them on for debugging, and the NUMBA_DISABLE_JIT=1 test run executes
  the same code under NumPy's own index checks.
"""

import numba

JIT_FLAGS = {
    "nopython": True,
    "cache": True,
    "fastmath": False,
    "error_model": "numpy",
    "boundscheck": False,
}

njit = numba.jit(**JIT_FLAGS)
# For the event loop's small helpers: inlined into the loop in Numba's IR, because calls between
# separately compiled functions are not inlined by LLVM and each passes its arrays with reference
# counting, which costs more than the helper's own work.
njit_inline = numba.jit(**JIT_FLAGS, inline="always")
