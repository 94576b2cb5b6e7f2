"""How a model maps onto chips: how many, and which share of it each chip holds (no IR rewriting).

    Mapping.parse("tp=8,pp=72")                 tensor x pipeline x expert parallel degrees
    check(mapping, cfg, system_or_chips)        the mapping suits the model and the system
    fit(mapping, cfg, hw, context, weights)     SRAM bytes on a chip of every pipeline stage
    auto_mapping(cfg, hw, context, weights)     the fewest chips whose SRAM holds it all

The split the partitioning passes build:
- tp: each chip of a stage holds 1/tp of every weight and of the KV cache's heads, so tp divides
  the query heads, the KV heads and the FFN width.
- ep: the experts of a mixture-of-experts layer in ep groups, each expert's matrices split tp ways;
  the rest of the stage (attention, router, norms, KV cache) is on every chip of the ep groups.
- pp: a decode step is n_layers + 1 blocks, the decoder layers and then the head (final norm and
  LM head); each of pp stages holds a contiguous run of them, the runs chosen so that the fullest
  chip holds as little as possible (`stage_blocks`). The head is a block of its own so that a head
  too large to share a chip with a layer (Llama-2-70B's 32,000 x 8,192 LM head in FP16) can have a
  stage, and one small enough shares the last layers' stage.

Bytes are the compiler's own: `stored_bytes` (padded to whole vectors) of the decode step's
arguments (`decode_specs`), as the single-chip fit check counts them. A chip's share of a block is
what a rank stores (compiler.frontend.shard.shard_params): its slice of each matrix's columns or
rows, padded to whole vectors as stored (a slice of columns pads every row: llama2-7b's 4,096
query columns take 13 vectors of 320 lanes a row, a rank's 512 at tp=8 take 2, 16 over the 8
ranks), the norms whole on every rank; the experts' bytes divided by tp x ep, rounded up, and
what placing the experts a chip chooses among as units takes beyond that (`_unit_slack`).
Computed vectors and instructions are not counted, as in the single-chip check: the compiler
places them in what is left (WORKING_SHARE; a MoE block's fit there too, its chosen experts'
weights installed as stored: 43 words a slice for mixtral-8x7b int8's at tp=4,ep=2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import jax
import numpy as np

from compiler.frontend.model import cache_shape, check_weights, decode_specs, resolve_step
from compiler.frontend.shard import kv_slices, shard_params
from compiler.passes.place import ModelTooLarge, chunk_vectors, stored_bytes
from models import ModelConfig
from sim.errors import ArgumentError, LpuError
from sim.hardware import HardwareConfig
from sim.program import tensor_layout
from sim.system import System

KEYS = ("tp", "pp", "ep")
MAPPING_FORM = 'degrees such as "tp=8,pp=72": tp, pp and ep, each a positive integer, at most once'
# auto_mapping's largest group of a stage (tp x ep chips) where one holds a block: one GroqNode,
# fully connected, so a layer's all-reduce crosses one hop (shared/REFERENCE.md "topology" row);
# a larger group's all-reduce also exchanges between nodes (compiler/passes/wiring.py).
MAX_AUTO_TP = 8


@dataclass(frozen=True)
class Mapping:
    """tp chips split each layer, pp pipeline stages hold layer ranges, ep groups hold the experts:
    tp x pp x ep chips."""

    tp: int = 1
    pp: int = 1
    ep: int = 1

    def __post_init__(self) -> None:
        for key in KEYS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArgumentError(key, value, "must be a positive integer")

    @property
    def chips(self) -> int:
        return self.tp * self.pp * self.ep

    @classmethod
    def parse(cls, text: str) -> Mapping:
        """The mapping a text such as "tp=8,pp=72" names; degrees it does not name are 1."""
        if not isinstance(text, str) or not text.strip():
            raise ArgumentError("mapping", text, f"must be {MAPPING_FORM}")
        degrees: dict[str, int] = {}
        for part in text.split(","):
            key, eq, n = (s.strip() for s in part.partition("="))
            if not eq or key not in KEYS:
                raise ArgumentError(
                    "mapping", text, f"has {part.strip()!r}; it must be {MAPPING_FORM}"
                )
            if key in degrees:
                raise ArgumentError(
                    "mapping", text, f"gives {key} twice; it must be {MAPPING_FORM}"
                )
            if not (n.isascii() and n.isdigit()) or int(n) < 1:
                raise ArgumentError("mapping", text, f"has {key}={n!r}; it must be {MAPPING_FORM}")
            degrees[key] = int(n)
        return cls(**degrees)

    def __str__(self) -> str:
        """The degrees above 1 in the order of KEYS ("tp=1" for a single chip): parse's input."""
        return ",".join(f"{k}={getattr(self, k)}" for k in KEYS if getattr(self, k) > 1) or "tp=1"

    def to_dict(self) -> dict:
        return {**asdict(self), "chips": self.chips}


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def tp_splits(cfg: ModelConfig, tp: int) -> bool:
    """tp divides the query heads and the FFN width, and divides the KV heads or is a multiple of
    them (each KV head then copied on tp / n_kv_heads ranks, compiler/frontend/shard.py)."""
    kv = cfg.n_kv_heads
    return not (cfg.n_heads % tp or cfg.d_ff % tp or kv % tp and tp % kv)


def split_tps(cfg: ModelConfig) -> list[int]:
    return [t for t in range(1, math.gcd(cfg.n_heads, cfg.d_ff) + 1) if tp_splits(cfg, t)]


def check(mapping: Mapping, cfg: ModelConfig, system_or_chips: System | int | None = None) -> None:
    """ArgumentError naming the mapping and what would be valid when it cannot split `cfg`, or
    uses other than the `chips` given, or more chips than the `System` has (a system may have more:
    a Groq system comes in whole nodes)."""
    where = f"of {cfg.name!r}"
    text = str(mapping)
    if not tp_splits(cfg, mapping.tp):
        given = f"n_heads={cfg.n_heads}, d_ff={cfg.d_ff} and n_kv_heads={cfg.n_kv_heads}"
        raise ArgumentError(
            "mapping",
            text,
            f"splits each layer tp={mapping.tp} ways, but tp must divide {given} {where} (or "
            f"be a multiple of n_kv_heads: each KV head copied); valid tp: "
            f"{', '.join(map(str, split_tps(cfg)))}",
        )
    if mapping.pp > cfg.n_layers + 1:
        raise ArgumentError(
            "mapping",
            text,
            f"has pp={mapping.pp} stages, more than the {cfg.n_layers + 1} blocks {where} (its "
            f"{cfg.n_layers} layers and the head); valid pp: 1 to {cfg.n_layers + 1}",
        )
    if mapping.ep > 1 and not cfg.n_experts:
        raise ArgumentError(
            "mapping", text, f"has ep={mapping.ep}, but {cfg.name!r} has no experts; use ep=1"
        )
    if cfg.n_experts and cfg.n_experts % mapping.ep:
        raise ArgumentError(
            "mapping",
            text,
            f"has ep={mapping.ep}, which does not divide n_experts={cfg.n_experts} {where}; "
            f"valid ep: {_divisors(cfg.n_experts)}",
        )
    if isinstance(system_or_chips, System):
        if system_or_chips.chips < mapping.chips:
            raise ArgumentError(
                "mapping",
                text,
                f"uses tp x pp x ep = {mapping.chips} chips, but the topology has "
                f"{system_or_chips.chips} ({system_or_chips.describe()})",
            )
    elif system_or_chips is not None and (
        type(system_or_chips) is not int or system_or_chips != mapping.chips
    ):
        raise ArgumentError(
            "chips",
            system_or_chips,
            f"does not match mapping {text}, which uses tp x pp x ep = {mapping.chips} chips",
        )


# --- bytes per chip of each block ----------------------------------------------------------------


@dataclass(frozen=True)
class _ModelBytes:
    """Stored bytes of a decode step's arguments: what a rank holds of a layer and of the head,
    for every tp the model allows (a divisor of its heads, KV heads and FFN width), and in
    total."""

    layers: int
    dense_rank: dict[int, int]  # tp -> a layer's weights other than experts on a rank
    experts: int  # a layer's expert weights, all of them (0 for a dense MLP)
    experts_rank: dict[tuple[int, int], int]  # (tp, ep) -> a chip's experts and their slots
    units_rank: dict[tuple[int, int], int]  # (tp, ep) -> what placing them as units takes more
    kv_rank: dict[int, int]  # tp -> a layer's K and V caches of KV/tp heads, as a rank packs them
    head_rank: dict[int, int]  # tp -> the final norm and a rank's LM head columns
    total: int  # everything, the input vector included


def _model_bytes(cfg: ModelConfig, hw: HardwareConfig, context: int, weights: str) -> _ModelBytes:
    check_weights(weights)
    resolve_step(cfg, pos=None, context=context, layers=None)  # context in [1, max_seq_len]
    specs = decode_specs(cfg, context=context, weights=weights, layers=cfg.n_layers, lanes=hw.lanes)

    def size(tree) -> int:
        leaves = jax.tree_util.tree_leaves(tree)
        return sum(stored_bytes(np.shape(x), np.dtype(x.dtype).name, hw) for x in leaves)

    # Every layer is alike (models.decoder._layout): layer 0's shard is every layer's.
    experts = size(specs["params"]["layers"][0].get("experts", {}))
    head = {k: v for k, v in specs["params"].items() if k != "layers"}
    dtype = np.dtype(cfg.np_dtype).name
    dense_rank, kv_rank, head_rank = {}, {}, {}
    experts_rank, units_rank = {}, {}
    eps = [e for e in range(1, cfg.n_experts + 1) if cfg.n_experts % e == 0] if experts else [1]
    for t in split_tps(cfg):
        shard = shard_params(cfg, t, weights)  # a rank's slices
        dense_rank[t] = size({k: v for k, v in shard["layer"].items()
                              if k not in ("experts", "expert_slots")})  # fmt: skip
        for e in eps:  # a chip's experts: its ep group's, each split tp ways, and their slots
            layer = shard_params(cfg, t, weights, e)["layer"] if experts else {}
            experts_rank[(t, e)] = size({k: v for k, v in layer.items()
                                         if k in ("experts", "expert_slots")})  # fmt: skip
            units_rank[(t, e)] = _unit_slack(layer, cfg, hw)
        # the head's other leaves (gpt2's final norm bias) whole on every rank
        head_rank[t] = size(shard["head"]) + size({k: v for k, v in head.items()
                                                   if k not in shard["head"]})  # fmt: skip
        kv = cache_shape(cfg, context, hw.lanes, cfg.n_kv_heads // kv_slices(cfg, t))  # packed
        kv_rank[t] = 2 * stored_bytes(kv, dtype, hw)
    return _ModelBytes(
        cfg.n_layers, dense_rank, experts, experts_rank, units_rank, kv_rank, head_rank,
        size(specs),
    )  # fmt: skip


def _unit_slack(layer: dict, cfg: ModelConfig, hw: HardwareConfig) -> int:
    """Bytes beyond their stored bytes that a chip's stacked parameters take in SRAM: the leaves
    a run-time choice indexes (a TOPK's select register, compiler/passes/tile.py SELECT_UNIT),
    the experts where the chip chooses among n >= k of them (models.decoder.experts_part; fewer
    are indexed by constants) and their slot table (a row per expert id).

    place_static puts every unit of such a leaf at unit 0's slices, `stride` words above the one
    before, stride being unit 0's words on its fullest slice, and balance_band leaves such a band
    as placed. Unit 0's segments (at most chunk_vectors rows of a unit, each in the least filled
    group of its MXM track) leave its fullest slice about one segment above its even share, and
    every unit repeats that: a segment's rows a unit, on every slice (none where a unit is
    whole segments, as many a group: tiny-mixtral's on the teaching chip). Measured on groq-tsp-v1,
    mixtral-8x7b int8, one layer (words a slice above the layer's stored bytes, this bound): tp=8
    (8 units) 786 of 984, tp=4,ep=2 361 of 492, tp=2,ep=4 228 of 254."""
    experts, slots = layer.get("experts"), layer.get("expert_slots")
    leaves = jax.tree_util.tree_leaves(experts or {})
    n = leaves[0].shape[0] if leaves else 0
    stacked = (leaves if n >= cfg.experts_per_token else []) + ([slots] if slots else [])
    words, chunk = 0, chunk_vectors(hw)
    for leaf in stacked:
        units = leaf.shape[0]
        rows, tiles, _ = tensor_layout(leaf.shape, hw.lanes)
        rows //= units  # a unit's rows of each tile column, in segments of `chunk`
        groups = hw.mem_slices // np.dtype(leaf.dtype).itemsize
        if rows % chunk or tiles * (rows // chunk) % groups:  # else whole segments, level
            words += units * min(rows, chunk)
    return words * hw.lanes * hw.mem_slices


def _block_bytes(b: _ModelBytes, tp: int, ep: int) -> list[tuple[int, int, int]]:
    """(weights, KV cache, units' placement) bytes on one chip of each block: the layers, then
    the head."""
    layer = (b.dense_rank[tp] + b.experts_rank[(tp, ep)], b.kv_rank[tp], b.units_rank[(tp, ep)])
    return [layer] * b.layers + [(b.head_rank[tp], 0, 0)]


# --- pipeline stages ------------------------------------------------------------------------------


def stage_blocks(sizes: Sequence[int], pp: int) -> list[range]:
    """pp contiguous, non-empty runs of blocks of these sizes whose largest sum is the least
    possible: the least bound under which packing the blocks in order needs at most pp runs (by
    bisection), then the blocks packed under it, a run closing early only when the blocks left are
    just enough for one in each run left."""
    if not 1 <= pp <= len(sizes):
        raise ArgumentError("pp", pp, f"must be in [1, {len(sizes)}], one block or more a stage")
    lo, hi = max(sizes), sum(sizes)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _runs(sizes, mid) <= pp else (mid + 1, hi)
    runs, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and (total + size > lo or len(sizes) - i == pp - len(runs) - 1):
            runs.append(range(start, i))
            start, total = i, 0
        total += size
    return [*runs, range(start, len(sizes))]


def _runs(sizes: Sequence[int], bound: int) -> int:
    """Runs that packing the blocks in order, each run holding at most `bound`, takes: the fewest
    any contiguous split under `bound` takes (every block fits: bound >= max(sizes))."""
    runs, total = 1, 0
    for size in sizes:
        if total + size > bound:
            runs, total = runs + 1, 0
        total += size
    return runs


# --- the fit of a mapping -------------------------------------------------------------------------

# The share of a chip's SRAM a stage keeps free of weights and KV cache: its computed vectors, its
# instruction image, the shared vectors below the bands and what whole segments leave uneven in
# them (compiler/passes/balance.py). Measured on groq-tsp-v1 with llama2-7b int8 at context 64:
# a layer on one chip (compile(..., layers=1)) ends 5 words above an even share of its weights
# and cache, computed vectors and the instruction image take 95 more, 100 of 8,192 words (1.2%;
# before the bands were levelled, 157: 1.9%); a tp=8 stage of 7 layers (tp=8,pp=5) ends 27 words
# above (6 shared, 3 a layer) and 75 more, 102 words. With its KV cache in rows of whole heads,
# the layer at context 1024 held 98.3% of the chip and its compile ran out of words.
WORKING_SHARE = 0.02


def stage_capacity(hw: HardwareConfig) -> int:
    """Bytes of a chip's SRAM a stage's weights and KV cache may fill."""
    return int(hw.sram_bytes * (1 - WORKING_SHARE))


@dataclass(frozen=True)
class StageBytes:
    """SRAM bytes on each chip of one pipeline stage (its tp x ep chips hold equal shares)."""

    stage: int
    layers: range  # decoder layers; empty for a stage holding only the head
    head: bool  # the stage holds the final norm and LM head
    weights_bytes: int
    kv_bytes: int
    capacity_bytes: int
    units_bytes: int = 0  # placing stacked experts, a unit at a time (_unit_slack)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.units_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.capacity_bytes

    def __str__(self) -> str:
        r = self.layers
        held = [f"layer {r[0]}" if len(r) == 1 else f"layers {r[0]}-{r[-1]}"] if r else []
        held += ["the head"] if self.head else []
        units = f", experts placed as units {self.units_bytes:,}" if self.units_bytes else ""
        return (
            f"stage {self.stage} ({' and '.join(held)}): "
            f"{self.total_bytes:,} bytes per chip (weights {self.weights_bytes:,}, KV cache "
            f"{self.kv_bytes:,}{units}) of the {self.capacity_bytes:,} a stage may fill "
            f"({self.total_bytes / self.capacity_bytes:.0%}; the rest holds its computed vectors "
            "and instructions)"
        )

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "layers": list(self.layers),
            "head": self.head,
            "weights_bytes": self.weights_bytes,
            "kv_bytes": self.kv_bytes,
            "units_bytes": self.units_bytes,
            "total_bytes": self.total_bytes,
            "capacity_bytes": self.capacity_bytes,
        }


@dataclass(frozen=True)
class Fit:
    """Why a mapping does or does not hold a model: the bytes on a chip of every stage."""

    model: str
    hw: str
    weights: str
    context: int
    mapping: Mapping
    total_bytes: int  # the whole decode step: weights, KV cache and input, as one chip counts them
    chips_needed: int  # ceil(total_bytes / SRAM per chip): no mapping has fewer chips
    stages: tuple[StageBytes, ...]
    others: tuple[Mapping, ...] = ()  # where it does not fit: mappings of its chips that do

    @property
    def fullest(self) -> StageBytes:
        """The stage whose chips hold the most (the first such)."""
        return max(self.stages, key=lambda s: s.total_bytes)

    @property
    def fits(self) -> bool:
        return self.fullest.fits

    def __str__(self) -> str:
        return (
            f"{self.model} ({self.weights} weights, context {self.context}) on "
            f"{_chips(self.mapping.chips)} of {self.hw} ({self.mapping}): the fullest chip holds "
            f"{self.fullest}; the model's {self.total_bytes:,} bytes need at least "
            f"{_chips(self.chips_needed)}"
        )

    def check(self) -> None:
        """ModelTooLarge naming the fullest stage when a chip's share exceeds its SRAM."""
        if not self.fits:
            same = ", ".join(map(str, self.others))
            verb = "fits" if len(self.others) == 1 else "fit"
            also = f" (on the same {self.mapping.chips} chips {same} {verb})" if same else ""
            raise ModelTooLarge(
                f"{self}: it does not fit; a larger pp or tp splits the model further{also}"
            )

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "hw": self.hw,
            "weights": self.weights,
            "context": self.context,
            "mapping": self.mapping.to_dict(),
            "total_bytes": self.total_bytes,
            "chips_needed": self.chips_needed,
            "fits": self.fits,
            "stages": [s.to_dict() for s in self.stages],
        }


def _fit(cfg, hw, context, weights, mapping: Mapping, b: _ModelBytes) -> Fit:
    blocks = _block_bytes(b, mapping.tp, mapping.ep)
    stages = []
    for s, run in enumerate(stage_blocks([sum(b) for b in blocks], mapping.pp)):
        layers = range(run.start, min(run.stop, cfg.n_layers))
        w, kv, units = (sum(blocks[i][j] for i in run) for j in (0, 1, 2))
        stages.append(StageBytes(s, layers, cfg.n_layers in run, w, kv, stage_capacity(hw), units))
    needed = -(-b.total // hw.sram_bytes)
    return Fit(cfg.name, hw.name, weights, context, mapping, b.total, needed, tuple(stages))


def fit(
    mapping: Mapping, cfg: ModelConfig, hw: HardwareConfig, context: int, weights: str = "native"
) -> Fit:
    """The bytes a chip of each stage holds under `mapping` (checked against the model first);
    `.check()` raises ModelTooLarge when one exceeds the chip's SRAM."""
    check(mapping, cfg)
    b = _model_bytes(cfg, hw, context, weights)
    out = _fit(cfg, hw, context, weights, mapping, b)
    if out.fits:
        return out
    n, group = mapping.chips, mapping.ep
    same = [
        Mapping(t, n // (t * group), group)
        for t in split_tps(cfg)
        if not t & (t - 1) and n % (t * group) == 0 and n // (t * group) <= cfg.n_layers + 1
    ]
    fits = tuple(m for m in same if m != mapping and _fit(cfg, hw, context, weights, m, b).fits)
    return dataclasses.replace(out, others=fits)


def auto_mapping(
    cfg: ModelConfig, hw: HardwareConfig, context: int, weights: str = "native", wires=None
) -> Fit:
    """The mapping with the fewest chips whose every chip holds its share, over tp a power of two
    that splits the layer (tp_splits) and ep a divisor of the experts: groups of tp x ep
    chips at most MAX_AUTO_TP (a node) where such a group holds a block, larger groups (their
    all-reduce also between nodes, compiler/passes/wiring.py) only where none does. For each, pp
    is the fewest stages under the chip's SRAM (packing the blocks in order), but at least the
    total's lower bound, ceil(total / SRAM) chips. Among equal chip counts: the fewest stages (a
    token crosses every stage in turn), then the larger tp. Raises ModelTooLarge when a block
    split the most ways (the group whose layer is least on a chip) does not fit a chip.
    `wires(mapping) -> bool`: only mappings it accepts (a given system's links carry them)."""
    b = _model_bytes(cfg, hw, context, weights)
    needed = -(-b.total // hw.sram_bytes)
    tps = [t for t in split_tps(cfg) if not t & (t - 1)]
    eps = [e for e in range(1, cfg.n_experts + 1) if cfg.n_experts % e == 0] or [1]
    # Groups of a node first (tp x ep chips linked pairwise); larger ones only where no group of
    # a node holds a block.
    groups = [(tp, ep) for tp in tps for ep in eps]
    best, held = None, False
    for node in (True, False):
        found = []
        for tp, ep in [g for g in groups if (g[0] * g[1] <= MAX_AUTO_TP) == node]:
            sizes = [sum(block) for block in _block_bytes(b, tp, ep)]
            if max(sizes) > stage_capacity(hw):
                continue
            pp = max(_runs(sizes, stage_capacity(hw)), -(-needed // (tp * ep)))
            if pp <= len(sizes):
                found.append(((tp * pp * ep, pp, -tp), Mapping(tp, pp, ep)))
        held |= bool(found)
        found.sort(key=lambda f: f[0])
        best = next((f for f in found if wires is None or wires(f[1])), None)
        if best:
            break
    if best is None and held:
        raise LpuError(
            f"{cfg.name}: no mapping that holds it ({weights} weights, context {context}) has the "
            "chips and links it needs on the given system"
        )
    if best is None:  # the group whose layer is the least on a chip
        tp, ep = min(groups, key=lambda g: (max(map(sum, _block_bytes(b, *g))), -g[0]))
        widest = _fit(cfg, hw, context, weights, Mapping(tp, cfg.n_layers + 1, ep), b)
        experts = f", ep dividing n_experts={cfg.n_experts}" if cfg.n_experts else ""
        raise ModelTooLarge(
            f"{widest}: no mapping fits, even with one block per stage split the most ways "
            f"(tp up to {tps[-1]}, as n_heads={cfg.n_heads}, n_kv_heads={cfg.n_kv_heads} and "
            f"d_ff={cfg.d_ff} allow{experts})"
        )
    return _fit(cfg, hw, context, weights, best[1], b)


def _chips(n: int) -> str:
    return f"{n} chip" if n == 1 else f"{n} chips"
