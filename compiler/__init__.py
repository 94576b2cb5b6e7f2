"""JAX function -> graph IR -> passes -> static schedule -> a Program for the simulator."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import jax
import numpy as np

from compiler.codegen.emit import emit
from compiler.codegen.link import link, make_block, model_instances
from compiler.frontend.jaxpr import UnsupportedPrimitive, trace
from compiler.ir.graph import Graph, prune, verify
from compiler.passes.decompose import decompose
from compiler.passes.layout import layout_blocks
from compiler.passes.place import (
    ModelTooLarge,
    check_args_fit,
    check_fits,
    chunk_vectors,
    place_static,
)
from compiler.passes.relayout import fold_relayouts
from compiler.passes.tile import Accumulators, tile
from compiler.schedule.listsched import schedule as list_schedule
from sim.errors import LpuError
from sim.hardware import HardwareConfig, load_hardware
from sim.isa import matmul_period
from sim.program import Program

__all__ = [
    "compile",
    "compile_graph",
    "compile_model",
    "check_model_fits",
    "lower",
    "ModelTooLarge",
    "UnsupportedPrimitive",
]

# LPUSIM_VERIFY=1 checks the IR's invariants after every pass.
DEBUG = os.environ.get("LPUSIM_VERIFY", "") not in ("", "0")


def _check_args_fit(args: dict, params: frozenset, hw: HardwareConfig, chips: int) -> None:
    specs: dict[str, list] = {"param": [], "input": []}
    for name, tree in args.items():
        for leaf in jax.tree_util.tree_leaves(tree):
            kind = "param" if name in params else "input"
            specs[kind].append((np.shape(leaf), np.dtype(leaf.dtype).name))
    check_args_fit(specs, hw, chips)


def check_model_fits(
    cfg,
    hw: HardwareConfig,
    *,
    pos=None,
    context=None,
    weights="native",
    layers=None,
    chips: int = 1,
    head: bool | None = None,
) -> tuple[int, int, int]:
    """The range and fit checks of a model's decode step, from shapes alone (no tracing, no
    weights): (pos, context, layers) with defaults filled in, or an error naming what is out of
    range or how many chips the model needs. Every command runs these first."""
    from compiler.frontend import model as fm

    fm.check_weights(weights)
    with_head = layers is None if head is None else head
    head_only = layers == 0 and with_head  # a pipeline's last stage may hold the head alone
    pos, context, layers = fm.resolve_step(
        cfg, pos=pos, context=context, layers=None if head_only else layers
    )
    layers = 0 if head_only else layers
    specs = fm.decode_specs(
        cfg, context=context, weights=weights, layers=layers, head=with_head, lanes=hw.lanes
    )
    _check_args_fit(specs, frozenset({"params"}), hw, chips)
    return pos, context, layers


def lower(fn: Callable, args: dict, params: frozenset = frozenset()) -> Graph:
    """Trace and run the graph passes: the IR the scheduler's tiling starts from."""
    graph = trace(fn, args, params)  # jaxpr -> graph IR, constants folded
    for p in (decompose, fold_relayouts, prune):
        graph = p(graph)  # div/logistic/lane reductions; fold data movement; drop dead nodes
        if DEBUG:
            verify(graph)
    return graph


def compile_graph(
    graph: Graph,
    hw: HardwareConfig,
    *,
    chips: int = 1,
    meta=None,
    chaining: bool = True,
    accumulate: bool = True,
) -> Program:
    check_fits(graph, hw, chips)  # fail before any work if the model cannot fit
    vp = tile(graph, hw.lanes, _accumulators(hw, accumulate))  # runs of vectors, vops
    placement = place_static(vp, hw)  # weights, inputs, constants: fixed SRAM homes
    sched = list_schedule(vp, hw, placement, chaining=chaining)  # over the chip's resources
    return emit(vp, sched, hw, meta or {}, placement.next_addr)  # addresses, instructions


def compile(
    target,
    hw: str | HardwareConfig = "teaching",
    *,
    args: dict | None = None,
    params: tuple[str, ...] = ("params",),
    chips: int = 1,
    mapping=None,
    system=None,
    phase: str = "decode",
    pos: int | None = None,
    context: int | None = None,
    weights: str = "native",
    layers: int | None = None,
    replay: bool = True,
    chaining: bool = True,
    accumulate: bool = True,
    progress: Callable[[str, float], None] | None = None,
) -> Program:
    """Compile a function (with `args`: argument name -> pytree of arrays or ShapeDtypeStructs)
    or a model (a name from `models.list_models()` or a ModelConfig) for `hw`.

    A model compiles one decode step at position `pos`
    (default: the last of `context`, which defaults to min(64, the model's max_seq_len)) with its KV cache
    in SRAM and its weights stored as `weights` ("native", "fp16", "bf16", "int8", "fp8"): every
    layer and the head, or, given `layers`, the first `layers` layers alone (output "x"). Its
    layers are scheduled once and replayed (`replay=False` schedules every layer anew: the same
    Program, slower). `chaining=False` sends every result through SRAM (no unit takes another's
    result straight from its stream); `accumulate=False` adds partial sums over K tiles on the VXM
    instead of in the MXM plane's accumulator. `progress(stage, fraction)` hears how far along it is.

    Several chips (a model only): `mapping` (a Mapping or "pp=4"; default pp=chips) says how its
    layers are split, `system` (a sim.system.System; default: `default_system`) how the chips
    are linked. Pipeline parallelism (compiler/codegen/pipeline.py), tensor parallelism
    (compiler/codegen/tensor.py; llama and mixtral families) and expert parallelism (mixtral:
    ep groups of tp chips, each holding 1/ep of the experts) compile, where a stage's tp x ep
    chips are a power of two, linked pairwise.
    """
    hw = load_hardware(hw)
    if isinstance(chips, bool) or not isinstance(chips, int) or chips < 1:
        raise LpuError(f"chips={chips!r} must be a whole number of chips, 1 or more")
    if phase not in ("decode", "prefill"):
        raise LpuError(f"phase={phase!r}; valid phases: 'decode', 'prefill'")
    if callable(target) and not isinstance(target, str):
        if chips != 1 or mapping is not None:
            raise LpuError(f"chips={chips}: a function compiles for one chip; map a model instead")
        if args is None:
            raise LpuError("compiling a function needs args=: argument name -> example pytree")
        _check_args_fit(args, frozenset(params), hw, chips)  # before spending time on tracing
        graph = lower(target, args, frozenset(params))
        meta = {"function": target.__name__}
        return compile_graph(
            graph, hw, chips=chips, meta=meta, chaining=chaining, accumulate=accumulate
        )
    if phase == "prefill":
        raise LpuError("phase='prefill' is not implemented yet for models; use phase='decode'")
    from compiler.frontend.model import resolve_model

    if chips != 1 or mapping is not None:
        return compile_mapped(
            resolve_model(target), hw, chips=chips, mapping=mapping, system=system, pos=pos,
            context=context, weights=weights, layers=layers, chaining=chaining,
            accumulate=accumulate, progress=progress,
        )  # fmt: skip
    return compile_model(
        resolve_model(target), hw, pos=pos, context=context, weights=weights, layers=layers,
        replay=replay, chaining=chaining, accumulate=accumulate, progress=progress,
    )  # fmt: skip


def compile_model(
    cfg,
    hw: HardwareConfig,
    *,
    pos: int | None,
    context: int | None,
    weights: str = "native",
    layers: int | None = None,
    head: bool | None = None,
    replay: bool = True,
    chaining: bool = True,
    accumulate: bool = True,
    progress: Callable[[str, float], None] | None = None,
) -> Program:
    """One decode step of a model: a layer block scheduled once and replayed, then the head
    (`head`: by default with every layer, without it given `layers`)."""
    from compiler.frontend import model as fm

    report = progress or (lambda stage, fraction: None)
    with_head = layers is None if head is None else head
    pos, context, layers = check_model_fits(  # fit first: before any tracing
        cfg, hw, pos=pos, context=context, weights=weights, layers=layers, head=with_head
    )
    report("trace", 0.0)
    fn, args = fm.layer_target(cfg, pos=pos, context=context, weights=weights, lanes=hw.lanes)
    acc = _accumulators(hw, accumulate)
    vp_layer = tile(lower(fn, args, frozenset({"params"})), hw.lanes, acc)
    vp_head = None
    if with_head:
        fn, args = fm.head_target(cfg, weights=weights)
        vp_head = tile(lower(fn, args, frozenset({"params"})), hw.lanes, acc)
    report("trace", 1.0)
    lay = layout_blocks(vp_layer, vp_head, hw, layers)  # SRAM: shared, per-layer bands, dynamic

    def scheduled(name, vp, placement, pins, stage):
        sched = list_schedule(vp, hw, placement, pins, lambda f: report(stage, f), chaining)
        return make_block(name, vp, sched, hw, lay.floor)

    layer_blocks = [
        scheduled("layer", vp_layer, lay.layer_placement(shift), lay.layer_pins(shift), stage)
        for shift, stage in (
            [(0, "schedule layer")] * min(layers, 1)
            if replay
            else [(l * lay.band_words, f"schedule layer {l}") for l in range(layers)]
        )
    ]
    head_block = None
    if with_head:
        head_block = scheduled("head", vp_head, lay.head_placement(), (), "schedule head")
    report("link", 0.0)
    meta = {
        "model": cfg.name, "phase": "decode", "pos": pos, "context": context,
        "weights": weights, "layers": layers, "head": with_head, "replay": replay,
    }  # fmt: skip
    words = max([lay.words()] + [b.words for b in (*layer_blocks, head_block) if b is not None])
    program = link(hw, model_instances(lay, layer_blocks, head_block, replay), meta, words)
    report("link", 1.0)
    return _host_caches(program, cfg, context)


def _host_caches(program: Program, cfg, context: int, kv: int | None = None) -> Program:
    """The host gives and gets each KV cache in the model's layout (kv heads, context, head_dim);
    where the chip packs heads side by side, its symbols say so (Symbol.host_shape)."""
    host = (kv or cfg.n_kv_heads, context, cfg.head_dim)
    symbols = tuple(
        replace(s, host_shape=host) if s.name.startswith("cache/") and tuple(s.shape) != host else s
        for s in program.symbols
    )
    return replace(program, symbols=symbols)


def compile_tensor_stages(
    cfg,
    hw: HardwareConfig,
    tp: int,
    shapes: list[tuple[int, bool]],
    *,
    pos: int | None,
    context: int | None,
    weights: str = "native",
    chaining: bool = True,
    accumulate: bool = True,
    progress: Callable[[str, float], None] | None = None,
    ep: int = 1,
    wiring=None,
) -> dict[tuple[int, bool], Program]:
    """One decode step's stages on tensor-parallel groups of tp chips, or ep such groups
    splitting the experts (compiler/frontend/shard.py), a Program for each stage shape
    (layers, head): chip 0's attention, MLP, reduce and head blocks scheduled once for all of
    them (one SRAM layout: the most layers any stage has, the head above its own stage's),
    linked per layer with the all-reduces between them, run by every chip
    (compiler/codegen/tensor.py): chip 0's instructions, as the pipeline takes them. `wiring`
    (compiler/passes/wiring.py, the first stage's): a group of several blocks of chips, its
    all-reduce within each block, then between them."""
    from compiler.codegen.tensor import (
        ALLREDUCE_ATTENTION,
        EXCHANGE,
        allreduce_block,
        replicate,
        tensor_instances,
    )
    from compiler.frontend import model as fm
    from compiler.frontend import shard
    from compiler.passes.layout import layout_tensor

    report = progress or (lambda stage, fraction: None)
    shard.check_tp(cfg, tp, ep)
    pos, context, _ = fm.resolve_step(cfg, pos=pos, context=context, layers=None)
    most = max(layers for layers, _ in shapes)
    head_layers = [layers for layers, head in shapes if head]
    report("trace", 0.0)
    size = tp * ep
    block = size if wiring is None else wiring.block
    if ep > 1 and tp > block:
        raise LpuError(
            f"tp={tp} x ep={ep}: the attention's all-reduce over tp={tp} chips would leave a block "
            f"of {block} chips linked pairwise; an ep group's tp chips must be linked pairwise"
        )
    # the MLP's partials: every chip's (a block's, then the blocks' sums exchanged)
    targets = {"reduce": shard.reduce_target(cfg, block, size // block)}
    if block < size:
        targets["sum"] = shard.sum_target(cfg, block)
        targets["weigh"] = shard.weigh_target(cfg, wiring.exchanges)
    if most:  # (a pipeline's last stage may hold the head alone)
        targets["attention"] = shard.attention_target(
            cfg, tp, pos=pos, context=context, weights=weights, lanes=hw.lanes
        )
        targets["mlp"] = shard.mlp_target(cfg, tp, weights=weights, ep=ep)
    if most and ep > 1:  # the attention's partials: its ep group's tp chips
        targets["reduce-attention"] = shard.reduce_target(cfg, tp)
    if head_layers:
        targets["head"] = shard.head_target(cfg, tp, weights=weights)
    acc = _accumulators(hw, accumulate)
    vps = {b: tile(lower(fn, args, frozenset({"params"})), hw.lanes, acc)
           for b, (fn, args) in targets.items()}  # fmt: skip
    report("trace", 1.0)
    # SRAM: shared (x, the partials' slots), bands, the head, dynamic
    lay = layout_tensor(vps, hw, most, head_layers[0] if head_layers else 0)
    blocks = {}
    for b, vp in vps.items():
        sched = list_schedule(
            vp,
            hw,
            lay.placement(b),
            lay.pins(b),
            lambda f, b=b: report(f"schedule {b}", f),
            chaining,
        )
        blocks[b] = make_block(b, vp, sched, hw, lay.floor)
    if size > 1:  # chip 0's transfers, for every chip
        blocks["all-reduce"] = allreduce_block(hw, lay.parts_at[0], lay.parts_at[1:block])
    if block < size:
        blocks[EXCHANGE] = allreduce_block(hw, lay.sum_at, lay.q_at, block - 1, EXCHANGE)
    if ep > 1 and tp > 1:
        blocks[ALLREDUCE_ATTENTION] = allreduce_block(hw, lay.parts_at[0], lay.parts_at[1:tp])
    words = max([lay.words()] + [b.words for b in blocks.values()])
    programs = {}
    for k, (layers, head) in enumerate(shapes):
        report("link", k / len(shapes))
        meta = {
            "model": cfg.name, "phase": "decode", "pos": pos, "context": context,
            "weights": weights, "layers": layers, "head": head, "replay": True,
        }  # fmt: skip
        local = link(hw, tensor_instances(lay, blocks, layers, head), meta, words, fetch=False)
        kv = shard.kv_slices(cfg, tp)
        local = _host_caches(local, cfg, context, cfg.n_kv_heads // kv)
        programs[(layers, head)] = replicate(
            local, tp, {"vocab": cfg.vocab_size, "kv_slices": kv}, ep, wiring, written=False
        )
    report("link", 1.0)
    return programs


def compile_mapped(
    cfg, hw: HardwareConfig, *, chips, mapping, system, layers=None, progress=None, **kw
) -> Program:
    """One decode step on several chips: pipeline stages, each a chip or a group of tp x ep
    chips (tensor parallel, and expert parallel for mixture-of-experts models), as
    partition.fit splits the layers and the head by their bytes; stages of one shape (layers,
    head) share one compiled Program."""
    from compiler.codegen.pipeline import pipeline
    from compiler.frontend import model as fm
    from compiler.passes.partition import Mapping, check, fit
    from compiler.passes.wiring import wire_stages
    from sim.system import default_system

    mapping = Mapping.parse(mapping) if isinstance(mapping, str) else mapping
    mapping = mapping or Mapping(pp=chips)
    if mapping.chips != chips:
        raise LpuError(f"mapping {mapping} uses {mapping.chips} chips; chips={chips}")
    if layers is not None:
        raise LpuError("layers= compiles one chip's first layers; several chips take whole models")
    _, context, _ = fm.resolve_step(cfg, pos=kw.get("pos"), context=kw.get("context"), layers=None)
    plan = fit(mapping, cfg, hw, context, kw.get("weights", "native"))  # checks it against cfg
    group = mapping.tp * mapping.ep
    if group > 1:
        from compiler.frontend.shard import check_tp

        check_tp(cfg, mapping.tp, mapping.ep)  # before the fit: the family, a power of two
    plan.check()  # every stage's chip holds its share
    given = system is not None
    system = default_system(chips, hw) if system is None else system
    check(mapping, cfg, system)  # the system has the chips
    system, groups, wirings = wire_stages(mapping, system, given)  # a stage's chips, wired
    keys = [(len(st.layers), st.head) for st in plan.stages]
    if group > 1:  # every shape's blocks scheduled once
        wiring = wirings[0] if wirings[0].blocks > 1 else None
        shapes = compile_tensor_stages(
            cfg, hw, mapping.tp, sorted(set(keys)), progress=progress, ep=mapping.ep,
            wiring=wiring, **kw,
        )  # fmt: skip
    else:
        shapes = {key: compile_model(cfg, hw, layers=key[0], head=key[1], progress=progress, **kw)
                  for key in sorted(set(keys))}  # fmt: skip
    stages = [shapes[key] for key in keys]
    meta = {**stages[-1].meta, "layers": cfg.n_layers, "mapping": str(mapping),
            "stage_layers": [len(st.layers) for st in plan.stages],
            "shared_programs": len(shapes)}  # fmt: skip
    return pipeline(system, stages, [st.layers.start for st in plan.stages], meta, groups, wirings)


def _accumulators(hw: HardwareConfig, accumulate: bool) -> Accumulators | None:
    """The MXM's accumulators as the tiler sees them (None: the VXM adds every partial sum)."""
    if not accumulate:
        return None
    return Accumulators(
        hw.mxm_accumulator_vectors, hw.mxm_planes, chunk_vectors(hw), matmul_period(hw, 2)
    )
