"""The Python face: `estimate` (compile + time a decode step) and `validate` (functional runs
against the JAX reference, token by token). Results are plain objects with `to_dict()` and a
readable table."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import jax
import numpy as np

from compiler import ModelTooLarge, check_model_fits
from compiler import compile as compile_program
from compiler.frontend.jaxpr import flatten_named
from compiler.frontend.shard import gather_outputs, shard_inputs
from compiler.passes.partition import Mapping, auto_mapping, fit
from lpusim import checks
from models import decode_step, embed, init_cache, init_params
from sim import Program, simulate
from sim.bounds import bounds
from sim.critical import critical_path
from sim.errors import ArgumentError, LpuError
from sim.hardware import load_hardware

Progress = Callable[[str, float], None]


class ProgramSource(Protocol):
    """Gives `estimate` its Program: compiled now, or one compiled earlier for the same schedule
    (lpusim.dse.cache). Must return a Program for exactly `hw`."""

    def program(
        self, cfg, hw, *, chips, context, weights, layers, mapping, progress
    ) -> Program: ...


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
    weights: str
    layers: str  # "all (with head)" or "first N of M (no head)"
    mapping: str  # how the model is split over the chips ("tp=1": one chip)
    topology: str  # how the chips are linked
    context: int
    cycles_per_token: int
    predicted_cycles: int
    seconds_per_token: float
    tokens_per_s: float
    unit_utilisation: dict[str, float]
    bytes_read: int
    bytes_written: int
    instructions: int
    vector_instructions: int  # instructions counted once per repetition
    vector_ops: int
    sram_high_water_bytes: int  # the highest address in use, in every slice
    sram_bytes_used: int  # the words a tensor or an instruction image actually occupies
    compile_s: float
    simulate_s: float
    bound_cycles: int  # the step's lower bound on this chip (sim.bounds)
    bound_by: str  # what sets it: mxm_install, sram_read, streams, dependency, ...
    bound_fraction: float  # bound / simulated cycles: how close the schedule comes
    bounds: dict[str, int] = field(default_factory=dict)  # every lower bound, cycles
    # Along the token's critical path, cycles: on chip (the stages in turn) and between chips
    # (a stage's x crossing the links to the next); one chip: all on chip.
    time_breakdown: dict[str, int] = field(default_factory=dict)
    link_bytes: int = 0  # bytes sent over every chip-to-chip link
    # The token's cycles along its critical path through the schedule (sim/critical.py):
    # compute, data movement, waiting, chip to chip; they add up to cycles_per_token.
    critical_path: dict[str, int] = field(default_factory=dict)
    # The links' busy fraction of the step: "mean" over the directions that carried data,
    # "busiest" and its "busiest_link" [from chip, to chip], and "links": [a, b, a to b, b to a]
    # of every link that carried data.
    link_utilisation: dict = field(default_factory=dict)
    # Why these chips: the bytes the fullest chip holds (weights and the KV cache at this
    # context) of its SRAM, and the fewest chips the model's bytes need.
    chips_why: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return _table(
            [
                ("model", self.model),
                ("hardware", f"{self.hw} x {self.chips} chip(s)"),
                ("why these chips", self.chips_why),
                ("mapping", self.mapping),
                ("topology", self.topology),
                ("weights", self.weights),
                ("layers", self.layers),
                ("context", self.context),
                ("cycles per token", self.cycles_per_token),
                ("seconds per token", self.seconds_per_token),
                ("tokens/s (one user)", self.tokens_per_s),
                (
                    "time on chip, between chips",
                    ", ".join(f"{k} {v:,} cycles" for k, v in self.time_breakdown.items()),
                ),
                (
                    "along the critical path",
                    ", ".join(f"{k} {v:,} cycles" for k, v in self.critical_path.items()),
                ),
                (
                    "links",
                    "none"
                    if not self.link_utilisation.get("links")
                    else f"{len(self.link_utilisation['links'])} carried data, busy "
                    f"{self.link_utilisation['mean']:.1%} of the step on average, the busiest "
                    f"{self.link_utilisation['busiest']:.1%} (chip "
                    f"{self.link_utilisation['busiest_link'][0]} to "
                    f"{self.link_utilisation['busiest_link'][1]})",
                ),
                ("bytes read per token", self.bytes_read),
                ("SRAM in use (bytes)", self.sram_bytes_used),
                ("SRAM high-water (bytes)", self.sram_high_water_bytes),
                ("instructions", f"{self.instructions} ({self.vector_instructions} unrolled)"),
                ("lower bound (cycles)", f"{self.bound_cycles} ({self.bound_by})"),
                ("bound / simulated", self.bound_fraction),
                ("unit utilisation", self.unit_utilisation),
                ("compile / simulate (s)", f"{self.compile_s:.2f} / {self.simulate_s:.2f}"),
            ]
        )


def _fewest_chips(cfg, hw, context: int, weights: str, system=None):
    """None where the model fits one chip, else the Fit of the fewest chips of any mapping
    that hold it (and that a given `system`'s chips and links carry), where that mapping
    compiles; None too where none does (the fit check's error then says why)."""
    try:
        check_model_fits(cfg, hw, context=context, weights=weights, layers=None, chips=1)
        return None
    except ModelTooLarge:
        try:
            plan = auto_mapping(cfg, hw, context, weights, lambda m: _carries(system, m, cfg))
        except LpuError:
            return None
    return plan if mapping_advice(plan.mapping, cfg, hw).startswith("compile it") else None


def _carries(system, mapping, cfg) -> bool:
    """Whether `system` (None: the default, which grows to fit) has the mapping's chips and
    wires its stages' groups, as compiling it would."""
    if system is None:
        return True
    from compiler.passes.partition import check
    from compiler.passes.wiring import wire_stages

    try:
        check(mapping, cfg, system)
        wire_stages(mapping, system, given=True)
    except LpuError:
        return False
    return True


def _check_fits_or_map(cfg, hw, *, context, weights, layers, chips, mapping=None, plan=None):
    """The fit check, and why the chips hold the model (the bytes on the fullest chip, with the
    KV cache at this context: `plan`, the mapping's Fit, where known); where the model needs
    more chips, the error also says how it would map onto the fewest that hold it
    (compiler.passes.partition.auto_mapping)."""
    try:
        check_model_fits(cfg, hw, context=context, weights=weights, layers=layers, chips=chips)
        if layers is not None:
            return f"the first {layers} layers fit {chips} chip(s) of {hw.name}"
        return str(plan or fit(mapping or Mapping(pp=chips), cfg, hw, context, weights))
    except ModelTooLarge as e:
        if layers is not None:
            raise
        try:
            plan = auto_mapping(cfg, hw, context, weights)
        except LpuError:  # no mapping holds it: the plain error says how much it needs
            raise e from None
        raise ModelTooLarge(
            f"{e}. Mapped onto the fewest chips that hold it: {plan}; {mapping_advice(plan.mapping, cfg, hw)}"
        ) from None


def mapping_advice(mapping, cfg=None, hw=None) -> str:
    """What to do with a mapping: compile it (pipeline stages; tensor- and expert-parallel
    groups of a family that compiles them), or why it would not compile: the family, or, given
    `hw`, groups of tp x ep chips that the chips' default wiring cannot carry."""
    from compiler.frontend.shard import TP_FAMILIES, check_tp
    from compiler.passes.wiring import stage_groups
    from sim.system import default_system

    n = mapping.chips
    if mapping.tp * mapping.ep == 1:
        return f"compile it with chips={n} (--chips {n})"
    if cfg is not None and cfg.family not in TP_FAMILIES:
        return f"tensor parallelism compiles the {' and '.join(TP_FAMILIES)} families only"
    try:
        if cfg is not None:
            check_tp(cfg, mapping.tp, mapping.ep)
        if hw is not None:
            stage_groups(mapping, default_system(n, hw), given=False)
    except LpuError as e:
        return f"it does not compile: {e}"
    return f"compile it with chips={n}, mapping={str(mapping)!r} (--chips {n} --mapping {mapping})"


def estimate(
    model="tiny-llama",
    hw="teaching",
    *,
    chips: int | None = None,
    mapping=None,
    topology=None,
    context: int | None = None,
    engine: str = "numba",
    weights: str = "native",
    layers: int | None = None,
    progress: Progress | None = None,
    programs: ProgramSource | None = None,
) -> Estimate:
    """Compile one decode step at the last position of `context` (default: DEFAULT_CONTEXT,
    capped at the model's max_seq_len; of the first `layers` layers alone, if given) with weights
    stored as `weights`, and time it on the simulator. Every argument, the context and the fit
    are checked first, before any tracing or weight building. chips: None is the mapping's
    chips, or without one a chip where the model fits, else the fewest chips of any mapping that
    hold it (compiler.passes.partition.auto_mapping; `chips_why` says why). `programs`: where
    the Program comes from instead of compiling it here (a sweep's cache; see ProgramSource)."""
    cfg = checks.model(model)
    hw = load_hardware(hw)
    fewest = chips is None and mapping is None
    chips = checks.chips(checks.mapping_chips(mapping) if chips is None else chips)
    mapping, system = checks.mapping(mapping, chips), checks.topology(topology, hw)
    context = checks.context(cfg, context)
    layers = checks.optional_count("layers", layers, 1, cfg.n_layers)
    engine, weights = checks.engine(engine), checks.weights(weights)
    fewest = fewest and layers is None
    plan = _fewest_chips(cfg, hw, context, weights, system) if fewest else None
    if plan is not None:
        chips, mapping = plan.mapping.chips, plan.mapping
    why = _check_fits_or_map(
        cfg, hw, context=context, weights=weights, layers=layers, chips=chips, mapping=mapping,
        plan=plan,
    )  # fmt: skip
    t0 = time.perf_counter()
    if programs is not None:
        if system is not None:
            raise ArgumentError("topology", topology, "is not cached: estimate without programs=")
        program = programs.program(
            cfg, hw, chips=chips, context=context, weights=weights, layers=layers,
            mapping=mapping, progress=progress,
        )  # fmt: skip
    else:
        program = compile_program(
            cfg, hw, chips=chips, mapping=mapping, system=system, context=context,
            weights=weights, layers=layers, progress=progress,
        )  # fmt: skip
    t1 = time.perf_counter()
    result = simulate(program, mode="timing", engine=engine)
    t2 = time.perf_counter()
    n = program.meta["layers"]
    b = bounds(program, program.predicted)  # the simulation just checked it is the queues' timing
    return Estimate(
        model=cfg.name,
        hw=hw.name,
        chips=chips,
        weights=weights,
        layers="all (with head)" if layers is None else f"first {n} of {cfg.n_layers} (no head)",
        mapping=program.meta.get("mapping", "tp=1"),
        topology=program.meta.get("topology", "one chip"),
        context=program.meta["context"],
        cycles_per_token=result.cycles,
        predicted_cycles=result.predicted_cycles,
        seconds_per_token=result.seconds,
        tokens_per_s=1.0 / result.seconds if result.seconds else math.inf,  # JSON: null
        unit_utilisation=result.utilisation,
        bytes_read=result.bytes_read,
        bytes_written=result.bytes_written,
        instructions=result.instructions,
        vector_instructions=program.vector_instruction_count(),
        vector_ops=result.vector_ops,
        sram_high_water_bytes=program.words_used * hw.lanes * hw.mem_slices,
        sram_bytes_used=program.sram_bytes_used(),
        compile_s=t1 - t0,
        simulate_s=t2 - t1,
        bound_cycles=b.cycles,
        bound_by=b.binding,
        bound_fraction=b.fraction(result.cycles),
        bounds=b.terms,
        time_breakdown=time_breakdown(program, result.cycles),
        link_bytes=int(result.link_bytes.sum()),
        chips_why=why,
        critical_path=critical_path(program, result.cycles),
        link_utilisation=_links_busy(program, result),
    )


def _links_busy(program: Program, result) -> dict:
    """Estimate.link_utilisation of a simulated program."""
    u = np.asarray(result.link_utilisation, np.float64).reshape(-1, 2)
    links = np.asarray(program.links).reshape(-1, 2)
    used = np.flatnonzero((u > 0).any(axis=1))
    if not len(used):
        return {"mean": 0.0, "busiest": 0.0, "busiest_link": None, "links": []}
    flat = int(np.argmax(u))
    a, b = (int(x) for x in links[flat // 2])
    return {
        "mean": float(u[u > 0].mean()),
        "busiest": float(u.flat[flat]),
        "busiest_link": [a, b] if flat % 2 == 0 else [b, a],
        "links": [[int(links[i, 0]), int(links[i, 1]), float(u[i, 0]), float(u[i, 1])]
                  for i in used.tolist()],
    }  # fmt: skip


def time_breakdown(program: Program, cycles: int) -> dict[str, int]:
    """Cycles of one token on chip and between chips: a pipeline's stages run in turn, each
    starting once the previous stage's x has crossed the links (Program.meta["stages"]); inside
    a tensor- or expert-parallel stage, its all-reduces (from the end of a block to the start of the reduce
    that sums its partials) are chip to chip too, and "all-reduce" says how much of it they are."""
    stages = program.meta.get("stages")
    if not stages:
        return {"on chip": cycles, "chip to chip": 0}
    allreduce = sum(s.get("allreduce_cycles", 0) for s in stages)
    on_chip = sum(s["cycles"] for s in stages) - allreduce
    out = {"on chip": on_chip, "chip to chip": cycles - on_chip}
    if program.meta.get("tp", 1) > 1 or program.meta.get("ep", 1) > 1:
        out["all-reduce"] = allreduce  # part of "chip to chip"
    return out


# --- validate -------------------------------------------------------------------------------------


def decode_inputs(params: dict, x: np.ndarray, cache: dict) -> dict[str, np.ndarray]:
    """The named inputs of a compiled decode step (see compiler.frontend.model)."""
    tree = {"params": {k: v for k, v in params.items() if k != "embed"}, "x": x, "cache": cache}
    return {k: np.asarray(v) for k, v in flatten_named(tree).items()}


def run_decode_step(program: Program, params, x, cache, *, engine="numba"):
    """Functional simulation of one decode step: (logits, new cache, SimResult). A
    tensor- or expert-parallel program's chips get their slices of the weights and cache (and
    their experts), and the logits and cache come back whole."""
    inputs = decode_inputs(params, x, cache)
    tp = program.meta.get("tp", 1)
    if tp > 1 or program.meta.get("ep", 1) > 1:
        inputs = shard_inputs(program.symbols, inputs)
    result = simulate(program, inputs, engine=engine)
    out = result.outputs
    if tp > 1:
        out = gather_outputs(out, tp, {"logits": (1, program.meta["vocab"])})
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
    weights: str
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
    # Against the unquantised model (the same seed's weights in the model's dtype): what the
    # weight format costs. Equal to the above for weights="native".
    tokens_unquantised: list[int] = field(default_factory=list)
    tokens_match_unquantised: bool = True
    max_abs_error_unquantised: float = 0.0
    steps: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """The chip chose the reference's tokens and every logit is within the tolerance."""
        return self.tokens_match and self.within_tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def __str__(self) -> str:
        within = (
            f"yes: max |logit error| {self.max_abs_error:.3g} <= {self.tolerance_abs:g}"
            if self.within_tolerance
            else f"no: max |logit error| {self.max_abs_error:.3g} > {self.tolerance_abs:g}"
        )
        return _table(
            [
                ("model", self.model),
                ("hardware", self.hw),
                ("weights", self.weights),
                ("prompt", self.prompt),
                ("tokens (LPU)", self.tokens_lpu),
                ("tokens (JAX, same weights)", self.tokens_jax),
                ("tokens match", "yes" if self.tokens_match else "no"),
                ("within tolerance", within),
                ("max |logit error|", self.max_abs_error),
                # Relative to |JAX logit| (floored at 1e-6): large where a logit is near zero, so
                # the verdict is on the absolute error.
                ("max relative error", f"{self.max_rel_error:.4g} (informative; logits near 0)"),
                ("tolerance", f"{self.tolerance_abs:g} absolute on every logit"),
                ("tokens (JAX, unquantised)", self.tokens_unquantised),
                ("tokens match unquantised", self.tokens_match_unquantised),
                ("max |logit error| unquantised", self.max_abs_error_unquantised),
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
    mapping=None,
    topology=None,
    seed: int = 0,
    engine: str = "numba",
    tolerance: float | None = None,
    weights: str = "native",
    progress: Progress | None = None,
) -> Validation:
    """Generate `tokens` greedy tokens on the simulated chip (functional mode) and with the JAX
    reference of the same (quantised, for weights="int8"/"fp8") model, each from its own cache,
    comparing logits at every step; and with the unquantised model, to show what the weight
    format costs."""
    cfg = checks.model(model)
    hw = load_hardware(hw)
    tokens = checks.count("tokens", tokens)
    prompt = checks.prompt_ids(cfg, prompt)
    chips, seed = checks.chips(chips), checks.seed(seed)
    mapping, system = checks.mapping(mapping, chips), checks.topology(topology, hw)
    engine, weights = checks.engine(engine), checks.weights(weights)
    if tolerance is not None and (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, numbers.Real)
        or not 0 < tolerance < math.inf
    ):
        raise ArgumentError("tolerance", tolerance, "must be a positive finite number (or None)")
    context = len(prompt) + tokens - 1
    if context > cfg.max_seq_len:
        raise ArgumentError(
            "tokens",
            tokens,
            f"after a prompt of {len(prompt)} needs a KV cache of {context} positions; "
            f"{cfg.name!r} has max_seq_len={cfg.max_seq_len}, so at most "
            f"{cfg.max_seq_len - len(prompt) + 1} tokens",
        )
    # Fit first: the chip's SRAM, then this machine's memory for the random weights (built here,
    # quantised from the native ones, and copied once more for JAX) and three KV caches.
    check_model_fits(cfg, hw, context=context, weights=weights, chips=chips)
    need = 2 * checks.weight_bytes(cfg, weights) + 3 * checks.cache_bytes(cfg, context)
    if weights != "native":
        need += checks.weight_bytes(cfg)
    checks.host_memory(need, f"validating {cfg.name} with {weights} random weights")
    tolerance = LOGIT_TOLERANCE[cfg.dtype] if tolerance is None else float(tolerance)
    report = progress or (lambda stage, fraction: None)
    params = init_params(cfg, seed, weights)
    native = params if weights == "native" else init_params(cfg, seed)
    context = len(prompt) + tokens - 1
    jit_step = jax.jit(decode_step, static_argnames=("cfg", "pos"))
    lpu = _Generation(params, cfg, context, prompt)
    ref = _Generation(params, cfg, context, prompt)
    unq = _Generation(native, cfg, context, prompt)
    steps = []
    for pos in range(context):
        report("validate", pos / context)
        program = compile_program(
            cfg, hw, chips=chips, mapping=mapping, system=system, pos=pos, context=context,
            weights=weights,
        )  # fmt: skip
        lpu_logits, lpu.cache, result = run_decode_step(
            program, params, lpu.x(pos), lpu.cache, engine=engine
        )
        jax_logits = ref.jax_step(jit_step, pos)
        unq_logits = unq.jax_step(jit_step, pos)
        err = np.abs(lpu_logits - jax_logits)
        steps.append(
            {
                "pos": pos,
                "max_abs_error": float(err.max()),
                "max_rel_error": float((err / np.maximum(np.abs(jax_logits), 1e-6)).max()),
                "max_abs_error_unquantised": float(np.abs(lpu_logits - unq_logits).max()),
                "predicted_cycles": program.predicted_cycles,
                "simulated_cycles": result.cycles,
            }
        )
        for g, logits in ((lpu, lpu_logits), (ref, jax_logits), (unq, unq_logits)):
            g.advance(pos, logits)
    report("validate", 1.0)
    max_abs = max(s["max_abs_error"] for s in steps)
    return Validation(
        model=cfg.name,
        hw=hw.name,
        weights=weights,
        prompt=prompt,
        tokens_lpu=lpu.out,
        tokens_jax=ref.out,
        tokens_match=lpu.out == ref.out,
        max_abs_error=max_abs,
        max_rel_error=max(s["max_rel_error"] for s in steps),
        tolerance_abs=tolerance,
        within_tolerance=max_abs <= tolerance,
        predicted_cycles=[s["predicted_cycles"] for s in steps],
        simulated_cycles=[s["simulated_cycles"] for s in steps],
        tokens_unquantised=unq.out,
        tokens_match_unquantised=lpu.out == unq.out,
        max_abs_error_unquantised=max(s["max_abs_error_unquantised"] for s in steps),
        steps=steps,
    )


class _Generation:
    """One greedy generation's state: its cache, the token fed next and the tokens it chose."""

    def __init__(self, params: dict, cfg, context: int, prompt: list[int]):
        self.params, self.cfg, self.prompt = params, cfg, prompt
        self.cache = init_cache(cfg, context)
        self.token = prompt[0]
        self.out: list[int] = []

    def x(self, pos: int) -> np.ndarray:
        return embed(self.params, self.token, pos, self.cfg)

    def jax_step(self, jit_step, pos: int) -> np.ndarray:
        weights = {k: v for k, v in self.params.items() if k != "embed"}
        logits, cache = jit_step(weights, self.x(pos), self.cache, cfg=self.cfg, pos=pos)
        self.cache = jax.tree.map(np.asarray, cache)
        return np.asarray(logits)

    def advance(self, pos: int, logits: np.ndarray) -> None:
        if pos + 1 < len(self.prompt):
            self.token = self.prompt[pos + 1]
        else:
            self.token = int(np.argmax(logits[0]))
            self.out.append(self.token)
