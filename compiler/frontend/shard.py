"""Tensor- and expert-parallel shards of a decode step: the blocks one chip of a group runs, as
the model's own JAX functions (models.decoder) on a slice of its heads, FFN columns and experts.

Rank r of a group of T chips holds:

    wq, wk, wv, w_gate, w_up, lm_head   columns r/T (heads r*H/T.. and their KV heads; FFN and
                                        vocabulary columns; lm_head padded to ceil(V/T) a rank)
    wo, w_down                          rows r/T (the rows its heads' or FFN columns' outputs
                                        multiply)
    cache k, v                          KV heads r*KV/T..(r+1)*KV/T
    norms                               whole, on every rank
  (int8 and fp8: a column shard's scales split with it; a row shard keeps every scale)

A layer is four blocks, each scheduled once and replayed (compiler/codegen/tensor.py):

    attention  x -> y = wo_r(attention of rank r's heads of attn_norm(x)), cache_r   (partial)
    reduce     x, parts[0..T-1] -> x + ((parts[0] + parts[1]) + (parts[2] + parts[3]) ...)
    mlp        x -> y = w_down_r(silu(w_gate_r h) * w_up_r h), h = mlp_norm(x)      (partial)
    reduce

and the head, norm and rank r's vocabulary columns: x -> logits_r. parts[j] on rank r is rank
(r XOR j)'s partial (parts[0] its own), summed as a balanced tree: every rank adds the same
pairs in the same order, so every rank holds the same x, bit for bit (tp a power of two). The
reduce is the residual add of the whole layer, so its norms see the full x on every rank.

Mixtral (mlp: the router, whole on every rank, and its experts, each split by FFN columns as
w_gate, w_up and w_down above) also splits over ep groups of tp chips: chip g = e * tp + r of a
group of G = tp * ep holds rank r's slice (above) of everything but the experts, and of experts
e*E/ep..(e+1)*E/ep-1 (E = n_experts) their FFN columns r/tp, with the slot table expert_slots
(E, E/ep), columns e*E/ep.. of the identity (models.decoder.experts_part):

    attention        as above (the chips of ep group e: ranks 0..tp-1)
    reduce-attention x, parts[0..tp-1] -> x + their tree    (the attention's all-reduce: its tp)
    mlp              x -> y = experts_part(its experts, mlp_norm(x))                 (partial)
    reduce           x, parts[0..G-1] -> x + their tree     (the MoE's all-reduce: all G chips)

Every ep group holds the same attention, KV cache and head (as partition.fit counts them); the
experts are split G ways. The chips differ only in their data (their experts and slot tables),
so they run one program. G must be a power of two, for the same sums on every chip.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from models import ModelConfig, param_specs
from models.decoder import attend, attend_packed, experts_part, mlp
from models.ops import is_quantized, mm, rmsnorm, rope_tables
from sim.errors import LpuError

# Which axis of a layer's (or the head's) matrix a rank holds a slice of: -1 columns, -2 rows.
SPLIT = {"wq": -1, "wk": -1, "wv": -1, "w_gate": -1, "w_up": -1, "lm_head": -1, "wo": -2,
         "w_down": -2}  # fmt: skip
TP_FAMILIES = ("llama", "mixtral")  # gpt2's output biases would be added once per rank
KV_SPLIT = ("wk", "wv")  # split by KV head (kv_slices)
SUFFIX = "#tp"  # a rank's slice of a tensor: "params/layers/3/wq#tp1"
EP_SUFFIX = "#ep"  # an ep group's experts, before any tp suffix: ".../experts/w_up#ep1#tp0"


def check_tp(cfg: ModelConfig, tp: int, ep: int = 1) -> None:
    """An error naming tp (or ep) and what would be valid when these blocks cannot split `cfg`
    over groups of tp * ep chips (partition.check has checked that tp divides the heads and FFN
    width, and ep the experts)."""
    if cfg.family not in TP_FAMILIES:
        raise LpuError(
            f"tp={tp}: tensor parallelism compiles the {' and '.join(TP_FAMILIES)} families; "
            f"{cfg.name!r} is {cfg.family!r} (use pp only)"
        )
    if tp & (tp - 1):
        raise LpuError(
            f"tp={tp}: the all-reduce sums the same pairs on every chip only for tp a power of "
            "two; valid tp: 1, 2, 4, 8, ..."
        )
    g = tp * ep
    if g & (g - 1):
        valid = [e for e in range(1, cfg.n_experts + 1) if cfg.n_experts % e == e & (e - 1) == 0]
        raise LpuError(
            f"ep={ep}: a group of tp x ep = {g} chips; the all-reduce sums the same pairs on "
            f"every chip only for a power of two; valid ep for {cfg.name!r} (dividing "
            f"n_experts={cfg.n_experts}): {', '.join(map(str, valid))}"
        )


def _split(spec, axis: int, tp: int, pad: bool = False):
    n = spec.shape[axis]
    width = -(-n // tp) if pad else n // tp
    shape = list(spec.shape)
    shape[axis] = width
    return jax.ShapeDtypeStruct(tuple(shape), spec.dtype)


def _shard_leaf(name: str, spec, tp: int, pad: bool = False):
    """One parameter's shard spec; a quantised matrix's {"q", "scale"} together."""
    axis = SPLIT.get(name)
    if axis is None:
        return spec
    if is_quantized(spec):
        scale = _split(spec["scale"], -1, tp, pad) if axis == -1 else spec["scale"]
        return {"q": _split(spec["q"], axis, tp, pad), "scale": scale}
    return _split(spec, axis, tp, pad)


def _experts(spec, ep: int):
    """An ep group's share of a stacked expert tensor (E, ...): E / ep experts."""
    return _split(spec, 0, ep)


def shard_params(cfg: ModelConfig, tp: int, weights: str, ep: int = 1) -> dict:
    """A chip's parameter specs: {"layer": one layer's, "head": final norm and lm_head's}; with
    ep > 1, its ep group's experts and their slot table (expert_slots, E x E/ep)."""
    full = param_specs(cfg, weights)
    layer = {}
    for k, v in full["layers"][0].items():
        if k != "experts":
            layer[k] = _shard_leaf(k, v, kv_slices(cfg, tp) if k in KV_SPLIT else tp)
            continue
        layer[k] = {
            name: jax.tree.map(lambda a: _experts(a, ep), _shard_leaf(name, spec, tp))
            for name, spec in v.items()
        }
        if ep > 1:
            slots = (cfg.n_experts, cfg.n_experts // ep)
            layer["expert_slots"] = jax.ShapeDtypeStruct(slots, cfg.np_dtype)
    head = {"final_norm": full["final_norm"], "lm_head": _shard_leaf("lm_head", full["lm_head"],
            tp, pad=True)}  # fmt: skip
    return {"layer": layer, "head": head}


_ATTENTION = ("attn_norm", "wq", "wk", "wv", "wo")
_MLP = {"llama": ("mlp_norm", "w_gate", "w_up", "w_down"),
        "mixtral": ("mlp_norm", "w_router", "experts", "expert_slots")}  # fmt: skip


def attention_target(
    cfg: ModelConfig, tp: int, *, pos: int, context: int, weights: str, lanes: int | None = None
):
    """(fn, args) of a rank's attention: params/layers/0/{attn_norm, wq, wk, wv, wo}, x,
    cache/{k,v}/0 -> y (its partial of the output projection), cache; the cache of its KV heads
    in rows of cache_row_width (compiler.frontend.model) on a chip of `lanes` lanes."""
    from compiler.frontend.model import cache_row_width, cache_shape

    p = shard_params(cfg, tp, weights)["layer"]
    heads = cfg.n_kv_heads // kv_slices(cfg, tp)
    local = cfg  # the query heads per KV head: with KV heads copied, a rank's own
    if tp > cfg.n_kv_heads:
        local = dataclasses.replace(cfg, n_kv_heads=tp)  # n_heads / tp query heads a KV head
    width = cache_row_width(cfg, lanes, heads)
    kv = jax.ShapeDtypeStruct(cache_shape(cfg, context, lanes, heads), cfg.np_dtype)
    args = {
        "params": {"layers": [{k: p[k] for k in _ATTENTION}]},
        "x": jax.ShapeDtypeStruct((1, cfg.d_model), jnp.float32),
        "cache": {"k": [kv], "v": [kv]},
    }
    rope = rope_tables(cfg.head_dim, cfg.rope_theta, pos)

    def attention(params, x, cache):
        layer = params["layers"][0]
        k, v = cache["k"][0], cache["v"][0]
        if width != cfg.head_dim:
            o, k, v = attend_packed(layer, x, k, v, local, pos, rope, width, heads)
        else:
            o, k, v = attend(layer, x, k, v, local, pos, rope)
        return {"y": mm(o, layer["wo"], cfg.np_dtype), "cache": {"k": [k], "v": [v]}}

    attention.__name__ = f"{cfg.name}_attention_tp{tp}"
    return attention, args


def mlp_target(cfg: ModelConfig, tp: int, *, weights: str, ep: int = 1):
    """(fn, args) of a chip's MLP: params/layers/0/{mlp_norm, w_gate, w_up, w_down} (mixtral:
    {mlp_norm, w_router, experts, and with ep > 1 expert_slots}), x -> y (its partial of the
    MLP's output: its FFN columns, of its ep group's experts)."""
    p = shard_params(cfg, tp, weights, ep)["layer"]
    args = {
        "params": {"layers": [{k: p[k] for k in _MLP[cfg.family] if k in p}]},
        "x": jax.ShapeDtypeStruct((1, cfg.d_model), jnp.float32),
    }
    part = mlp if ep == 1 else experts_part  # ep = 1: every chip holds every expert's columns

    def mlp_fn(params, x):
        layer = params["layers"][0]
        return {"y": part(layer, rmsnorm(x, layer["mlp_norm"], cfg.norm_eps), cfg=cfg)}

    mlp_fn.__name__ = f"{cfg.name}_mlp_tp{tp}" + (f"_ep{ep}" if ep > 1 else "")
    return mlp_fn, args


def _tree(parts: list) -> jax.Array:
    while len(parts) > 1:
        parts = [a + b for a, b in zip(parts[::2], parts[1::2], strict=True)]
    return parts[0]


def reduce_target(cfg: ModelConfig, tp: int, blocks: int = 1):
    """(fn, args) of the all-reduce's sum: x, parts/0..tp-1 -> x + the balanced tree of parts;
    a group of several blocks (compiler/passes/wiring.py) adds its own block's sum S first:
    x, S, parts/0..tp-1 -> x + (S + the tree)."""
    vec = jax.ShapeDtypeStruct((1, cfg.d_model), jnp.float32)
    args = {"x": vec, "parts": [vec] * tp}
    if blocks > 1:
        args["S"] = vec

    def reduce(x, parts, S=None):
        tree = _tree(parts)
        return {"x": x + (tree if S is None else S + tree)}

    reduce.__name__ = f"{cfg.name}_reduce_tp{tp}" + (f"_of{blocks}" if blocks > 1 else "")
    return reduce, args


def sum_target(cfg: ModelConfig, block: int):
    """(fn, args) of a block's sum, before the exchange between blocks: parts/0..block-1 -> S,
    their balanced tree (the same bits on every chip of the block)."""
    vec = jax.ShapeDtypeStruct((1, cfg.d_model), jnp.float32)

    def block_sum(parts):
        return {"S": _tree(parts)}

    block_sum.__name__ = f"{cfg.name}_sum_block{block}"
    return block_sum, {"parts": [vec] * block}


def weigh_target(cfg: ModelConfig, roles: int):
    """(fn, args) of what a chip passes on from the exchange between blocks: q/0..roles-1 (what
    it received in each exchange role) -> y = sum of w[i] * q/i, w the chip's weights as a
    constant (roles, d_model), the same lane by lane; compiled with placeholder values that
    differ lane by lane (so that no lowering takes them for a scalar), each chip given its own."""
    vec = jax.ShapeDtypeStruct((1, cfg.d_model), jnp.float32)
    w = 1.0 / (2.0 + np.arange(roles * cfg.d_model, dtype=np.float32)).reshape(roles, -1)

    def weigh(q):
        y = q[0] * w[0]
        for i in range(1, roles):
            y = y + q[i] * w[i]
        return {"y": y}

    weigh.__name__ = f"{cfg.name}_weigh_{roles}"
    return weigh, {"q": [vec] * roles}


def weigh_role(value: np.ndarray) -> int:
    """The exchange role whose weights a constant of weigh_target's placeholder holds."""
    flat = np.asarray(value, np.float64).ravel()
    return int(round(1.0 / flat[0] - 2.0)) // flat.size


def head_target(cfg: ModelConfig, tp: int, *, weights: str):
    """(fn, args) of a rank's head: params/{final_norm, lm_head}, x -> logits (its ceil(V/tp)
    vocabulary columns)."""
    from models import head

    args = {"params": shard_params(cfg, tp, weights)["head"],
            "x": jax.ShapeDtypeStruct((1, cfg.d_model), jnp.float32)}  # fmt: skip

    def head_fn(params, x):
        return {"logits": head(params, x, cfg=cfg)}

    head_fn.__name__ = f"{cfg.name}_head_tp{tp}"
    return head_fn, args


# --- the host's side: full tensors <-> a rank's slices -------------------------------------------


def shard_name(name: str, rank: int) -> str:
    return f"{name}{SUFFIX}{rank}"


def _expert_held(name: str) -> bool:
    """A tensor split over ep groups: a stacked expert tensor, or the slot table."""
    return "/experts/" in name or name.endswith("/expert_slots")


def kv_slices(cfg: ModelConfig, tp: int) -> int:
    """Slices of the KV heads over tp ranks: tp, or with more ranks than KV heads, one head a
    slice, copied on tp / n_kv_heads consecutive ranks (their query heads share it)."""
    return min(tp, cfg.n_kv_heads)


def _kv_held(name: str) -> bool:
    """A KV head's own tensor: its cache, or its columns of wk or wv (and their scales)."""
    parts = name.split("/")
    return parts[0] == "cache" or bool({"wk", "wv"} & set(parts[-2:]))


def rank_name(name: str, chip: int, tp: int, ep: int = 1, kv: int | None = None) -> str | None:
    """The name of chip `chip` (= e * tp + r)'s slice of the named tensor: "#ep{e}" for an ep
    group's experts, then "#tp{r}" for a tp rank's slice; None where every chip holds it whole.
    With `kv` KV-head slices fewer than tp (kv_slices), rank r's KV tensors are slice r // (tp /
    kv)'s, under that slice's name."""
    e, r = divmod(chip, tp)
    if kv is not None and kv < tp and _kv_held(name):
        r //= tp // kv
    out = name
    if ep > 1 and _expert_held(name):
        out += f"{EP_SUFFIX}{e}"
    if tp > 1 and shard_axis(name) is not None:
        out += f"{SUFFIX}{r}"
    return None if out == name else out


def _ranks(name: str) -> tuple[str, dict[str, int]]:
    """A sliced tensor's name -> (the whole tensor's name, {suffix: index})."""
    ranks = {}
    for suffix in (SUFFIX, EP_SUFFIX):  # the tp suffix comes last
        base, sep, index = name.rpartition(suffix)
        if sep and index.isdigit():
            name, ranks[suffix] = base, int(index)
    return name, ranks


def _take(full: np.ndarray, axis: int, index: int, width: int) -> np.ndarray:
    """Slice `index` of `width` along `axis`, zero-padded where the last one is short."""
    lo = index * width
    part = np.take(full, np.arange(lo, min(lo + width, full.shape[axis])), axis=axis)
    if part.shape[axis] < width:
        pad = [(0, 0)] * full.ndim
        pad[axis] = (0, width - part.shape[axis])
        part = np.pad(part, pad)
    return part


def shard_axis(name: str) -> int | None:
    """The axis a rank's slice of the named tensor is cut along (None: every rank holds it)."""
    parts = name.split("/")
    if name == "logits":
        return -1  # (1, vocabulary)
    if parts[0] == "cache":
        return 0  # (KV heads, context, head_dim)
    leaf = parts[-1]
    if leaf in ("q", "scale") and len(parts) > 1 and parts[-2] in SPLIT:
        axis = SPLIT[parts[-2]]
        return None if leaf == "scale" and axis == -2 else -1 if leaf == "scale" else axis
    return SPLIT.get(leaf)


def shard_inputs(symbols, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The program's inputs from full tensors: a symbol "name#tpR" gets rank R's slice of
    inputs["name"] (zero-padded where the last rank's is short), "name#epE" ep group E's experts
    (then "#tpR" its rank's slice of them); a slot table ".../expert_slots#epE" is columns of the
    identity, which the host's parameters do not hold. Others are passed on."""
    out = dict(inputs)
    for sym in symbols:
        base, ranks = _ranks(sym.name)
        if not ranks or sym.kind not in ("param", "input"):
            continue
        if base in inputs:
            part = np.asarray(inputs[base])
        elif base.endswith("/expert_slots"):
            part = np.eye(sym.host[0], dtype=np.float32)
        else:
            continue
        if EP_SUFFIX in ranks:
            axis = -1 if base.endswith("/expert_slots") else 0
            part = _take(part, axis, ranks[EP_SUFFIX], sym.host[axis])
        if SUFFIX in ranks:
            axis = shard_axis(base)
            part = _take(part, axis, ranks[SUFFIX], sym.host[axis])
        out[sym.name] = part
    return out


def gather_outputs(outputs: dict[str, np.ndarray], tp: int, full_shapes: dict) -> dict:
    """The full tensors of outputs a rank each returns a slice of ("name#tpR"), cut to
    full_shapes[name] where given (the LM head's padding); others are passed on."""
    out, parts = {}, {}
    for name, value in outputs.items():
        base, sep, rank = name.rpartition(SUFFIX)
        if sep:
            parts.setdefault(base, {})[int(rank)] = value
        else:
            out[name] = value
    for base, by_rank in parts.items():  # (tensors of copied KV heads: a rank each slice)
        if sorted(by_rank) != list(range(len(by_rank))) or tp % len(by_rank):
            raise LpuError(f"output {base!r}: ranks {sorted(by_rank)} of tp={tp} came back")
        axis = shard_axis(base)
        full = np.concatenate([by_rank[r] for r in range(len(by_rank))], axis=axis)
        if base in full_shapes:
            full = full[tuple(slice(0, n) for n in full_shapes[base])]
        out[base] = full
    return out
