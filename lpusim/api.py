"""The Python face: `estimate` (compile + time a decode step) and `validate` (functional runs
against the JAX reference, token by token). Results are plain objects with `to_dict()` and a
readable table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import jax
import numpy as np

from compiler import compile as compile_program
from compiler.frontend.jaxpr import flatten_named
from compiler.frontend.model import resolve_model
from models import decode_step, embed, init_cache, init_params
from sim import Program, simulate
from sim.errors import LpuError
from sim.hardware import load_hardware


def _table(rows: list[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in rows)
    out = []
    for k, v in rows:
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, dict):
            v = ", ".join(
                f"{a} {b:.1%}" if isinstance(b, float) else f"{a} {b}" for a, b in v.items()
            )
        out.append(f"{k:<{width}}  {v}")
    return "\n".join(out)


# --- estimate -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    model: str
    hw: str
    chips: int
    context: int
    cycles_per_token: int
    predicted_cycles: int
    seconds_per_token: float
    tokens_per_s: float
    unit_utilisation: dict[str, float]
    bytes_read: int
    bytes_written: int
    instructions: int
    vector_ops: int
    sram_high_water_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return _table(
            [
                ("model", self.model),
                ("hardware", f"{self.hw} x {self.chips} chip(s)"),
                ("context", self.context),
                ("cycles per token", self.cycles_per_token),
                ("seconds per token", self.seconds_per_token),
                ("tokens/s (one user)", self.tokens_per_s),
                ("bytes read per token", self.bytes_read),
                ("SRAM high-water (bytes)", self.sram_high_water_bytes),
                ("instructions", self.instructions),
                ("unit utilisation", self.unit_utilisation),
            ]
        )


def estimate(
    model="tiny-llama",
    hw="teaching",
    *,
    chips: int = 1,
    context: int | None = None,
    engine: str = "numba",
) -> Estimate:
    """Compile one decode step at the last position of `context` and time it on the simulator."""
    cfg = resolve_model(model)
    hw = load_hardware(hw)
    program = compile_program(cfg, hw, chips=chips, context=context)
    result = simulate(program, mode="timing", engine=engine)
    return Estimate(
        model=cfg.name,
        hw=hw.name,
        chips=chips,
        context=program.meta["context"],
        cycles_per_token=result.cycles,
        predicted_cycles=result.predicted_cycles,
        seconds_per_token=result.seconds,
        tokens_per_s=1.0 / result.seconds if result.seconds else math.inf,
        unit_utilisation=result.utilisation,
        bytes_read=result.bytes_read,
        bytes_written=result.bytes_written,
        instructions=result.instructions,
        vector_ops=result.vector_ops,
        sram_high_water_bytes=program.words_used * hw.lanes * hw.mem_slices,
    )


# --- validate -------------------------------------------------------------------------------------


def decode_inputs(params: dict, x: np.ndarray, cache: dict) -> dict[str, np.ndarray]:
    """The named inputs of a compiled decode step (see compiler.frontend.model)."""
    tree = {"params": {k: v for k, v in params.items() if k != "embed"}, "x": x, "cache": cache}
    return {k: np.asarray(v) for k, v in flatten_named(tree).items()}


def run_decode_step(program: Program, params, x, cache, *, engine="numba"):
    """Functional simulation of one decode step: (logits, new cache, SimResult)."""
    result = simulate(program, decode_inputs(params, x, cache), engine=engine)
    out = result.outputs
    dtype = cache["k"][0].dtype  # outputs come back as float32; the cache is stored in `dtype`
    new_cache = {
        kv: [out[f"cache/{kv}/{i}"].astype(dtype) for i in range(len(cache[kv]))]
        for kv in ("k", "v")
    }
    return out["logits"], new_cache, result


@dataclass(frozen=True)
class Validation:
    model: str
    hw: str
    prompt: list[int]
    tokens_lpu: list[int]
    tokens_jax: list[int]
    tokens_match: bool
    max_abs_error: float
    max_rel_error: float
    tolerance_abs: float
    within_tolerance: bool
    predicted_cycles: list[int]
    simulated_cycles: list[int]
    steps: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return _table(
            [
                ("model", self.model),
                ("hardware", self.hw),
                ("prompt", self.prompt),
                ("tokens (LPU)", self.tokens_lpu),
                ("tokens (JAX)", self.tokens_jax),
                ("tokens match", self.tokens_match),
                ("max |logit error|", self.max_abs_error),
                ("max relative error", self.max_rel_error),
                ("tolerance", f"{self.tolerance_abs:g} absolute on every logit"),
                ("cycles predicted = simulated", self.predicted_cycles == self.simulated_cycles),
                ("cycles per step", self.simulated_cycles),
            ]
        )


# Absolute logit tolerance by storage dtype (tiny-llama's logits are O(1)). The chip sums in
# float64 and rounds to float32 once; XLA sums in float32 in its own order. With float32 storage
# that is the whole difference (measured: ~1e-6). With 16-bit storage a value that lands within
# one float32 rounding of a 16-bit rounding boundary rounds the other way on one side: one ulp
# (2^-10 relative for float16, 2^-7 for bfloat16) in an activation, carried into the logits by
# the remaining layers (measured on tiny-llama, float16: ~1.2e-3).
LOGIT_TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 8e-2}


def validate(
    model="tiny-llama",
    hw="teaching",
    *,
    tokens: int = 16,
    prompt: tuple[int, ...] = (1,),
    chips: int = 1,
    seed: int = 0,
    engine: str = "numba",
    tolerance: float | None = None,
) -> Validation:
    """Generate `tokens` greedy tokens on the simulated chip (functional mode) and with the JAX
    reference, each from its own cache, comparing logits at every step."""
    cfg = resolve_model(model)
    hw = load_hardware(hw)
    if tokens < 1:
        raise LpuError(f"tokens={tokens} must be >= 1")
    prompt = [int(t) for t in prompt]
    if not prompt or any(not 0 <= t < cfg.vocab_size for t in prompt):
        raise LpuError(f"prompt {prompt} must be non-empty token ids in [0, {cfg.vocab_size})")
    tolerance = LOGIT_TOLERANCE[cfg.dtype] if tolerance is None else tolerance
    params = init_params(cfg, seed)
    context = len(prompt) + tokens - 1
    jit_step = jax.jit(decode_step, static_argnames=("cfg", "pos"))
    lpu_cache = jax_cache = init_cache(cfg, context)
    lpu_tok = jax_tok = prompt[0]
    lpu_out, jax_out, steps = [], [], []
    for pos in range(context):
        program = compile_program(cfg, hw, chips=chips, pos=pos, context=context)
        lpu_logits, lpu_cache, result = run_decode_step(
            program, params, embed(params, lpu_tok), lpu_cache, engine=engine
        )
        jax_logits, jax_cache = jit_step(
            params, embed(params, jax_tok), jax_cache, cfg=cfg, pos=pos
        )
        jax_logits = np.asarray(jax_logits)
        jax_cache = jax.tree.map(np.asarray, jax_cache)
        err = np.abs(lpu_logits - jax_logits)
        steps.append(
            {
                "pos": pos,
                "max_abs_error": float(err.max()),
                "max_rel_error": float((err / np.maximum(np.abs(jax_logits), 1e-6)).max()),
                "predicted_cycles": program.predicted_cycles,
                "simulated_cycles": result.cycles,
            }
        )
        if pos + 1 < len(prompt):
            lpu_tok = jax_tok = prompt[pos + 1]
        else:
            lpu_tok, jax_tok = int(np.argmax(lpu_logits[0])), int(np.argmax(jax_logits[0]))
            lpu_out.append(lpu_tok)
            jax_out.append(jax_tok)
    max_abs = max(s["max_abs_error"] for s in steps)
    return Validation(
        model=cfg.name,
        hw=hw.name,
        prompt=prompt,
        tokens_lpu=lpu_out,
        tokens_jax=jax_out,
        tokens_match=lpu_out == jax_out,
        max_abs_error=max_abs,
        max_rel_error=max(s["max_rel_error"] for s in steps),
        tolerance_abs=tolerance,
        within_tolerance=max_abs <= tolerance,
        predicted_cycles=[s["predicted_cycles"] for s in steps],
        simulated_cycles=[s["simulated_cycles"] for s in steps],
        steps=steps,
    )
