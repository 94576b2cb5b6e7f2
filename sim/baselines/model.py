"""Decode and prefill time of a transformer on GPUs, built from mechanisms.

Per device, for one step (a decode step of `batch` tokens, or the prefill of `batch` prompts):

    step = max(memory, compute) + overhead + communication

    memory         bytes read / (achievable bandwidth x bandwidth_efficiency [x format's])
                   weights: 1/tp of them (MoE: only the experts the batch routes to), KV cache
    compute        FLOPs / (tensor-core peak of the compute dtype x compute_efficiency)
    overhead       layers x layer_overhead_s
    communication  tp > 1: two all-reduces of the activations per layer

Why this shape. Within a matmul kernel the weight stream and the tensor-core math overlap, so a
step's kernels together take the longer of the two (the roofline); a decode step at batch 1 moves
~1 byte per FLOP and sits far on the memory side (A100: compute wins only above batch ~208,
REFERENCE.md "Formulas" line). A roofline alone under-predicts decode time by 14-24%
(REFERENCE.md, "Observed model-bandwidth utilisation" paragraph): between kernels nothing is
streamed (launches, norms, rotary, softmax, syncs), which a per-layer time adds. In Megatron-
style tensor parallelism each layer all-reduces its activations after attention and after the
MLP; the next layer needs the result, so that time adds too. An all-reduce costs a latency
(the 1 KB NCCL measurement, scaled by tree depth log2(tp) relative to the 8 GPUs it was measured
on, as NCCL's small-message trees grow) plus a ring's 2(tp-1)/tp of the message over the bus
bandwidth. Weight-only INT8/INT4 stream fewer bytes but unpack them in the matmul, so they reach
a lower fraction of the bandwidth (fitted per format).

Not modelled: activation traffic to HBM (small in decode; prefill is compute-bound anyway), the
logits' all-gather under tp (one per step, against 2 x layers all-reduces), the embedding lookup
(reads `batch` rows), speculative decoding, continuous batching, paged-KV overheads.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from numbers import Integral

from sim.baselines.calibration import FITTED
from sim.baselines.efficiency import Efficiency
from sim.baselines.specs import GB, GPUSpec, get_gpu
from sim.errors import LpuError


def is_count(value) -> bool:
    """An integer (NumPy's too, as sweep tables hand them over), not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


class DoesNotFit(LpuError, ValueError):
    """The model, its KV cache and the batch do not fit the devices; says how many it needs."""


class UnsupportedFormat(LpuError, ValueError):
    """A weight format that does not exist, or that a GPU has no tensor cores for."""


@dataclass(frozen=True)
class ModelDims:
    """What the time model needs to know about a transformer (plain numbers; lpusim converts a
    models.ModelConfig into one)."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int  # hidden width of the MLP (of each expert)
    vocab_size: int
    mlp_matrices: int = 3  # SwiGLU: gate, up, down; 2 for a GELU MLP (GPT-2)
    n_experts: int = 0  # 0: dense MLP
    experts_per_token: int = 0
    tie_embeddings: bool = False  # the LM head reads the embedding table
    other_params: int = 0  # norms, biases, learned position tables: 16-bit, on every device

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff"):
            value = getattr(self, name)
            if not is_count(value) or value < 1:
                raise LpuError(f"ModelDims {self.name!r}: {name}={value!r} must be an int >= 1")
        if self.vocab_size < 1 or self.mlp_matrices not in (2, 3) or self.other_params < 0:
            raise LpuError(
                f"ModelDims {self.name!r}: vocab_size={self.vocab_size} must be >= 1, "
                f"mlp_matrices={self.mlp_matrices} 2 or 3, other_params={self.other_params} >= 0"
            )
        if self.n_heads % self.n_kv_heads:
            raise LpuError(
                f"ModelDims {self.name!r}: n_heads={self.n_heads} is not a multiple of "
                f"n_kv_heads={self.n_kv_heads}"
            )
        moe_ok = (self.n_experts == 0 and self.experts_per_token == 0) or (
            1 <= self.experts_per_token <= self.n_experts
        )
        if not moe_ok:
            raise LpuError(
                f"ModelDims {self.name!r}: n_experts={self.n_experts}, experts_per_token="
                f"{self.experts_per_token}: both 0 (dense) or 1 <= experts_per_token <= n_experts"
            )

    # --- parameter counts (elements) --------------------------------------------------------

    @property
    def attn_params(self) -> int:  # q, k, v, o projections of one layer
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        return self.d_model * q + 2 * self.d_model * kv + q * self.d_model

    @property
    def expert_params(self) -> int:  # one MLP (one expert)
        return self.mlp_matrices * self.d_model * self.d_ff

    @property
    def router_params(self) -> int:
        return self.d_model * self.n_experts

    @property
    def table_params(self) -> int:  # the embedding table (= the LM head when tied)
        return self.vocab_size * self.d_model

    def layer_params(self, experts: float) -> float:
        """Matmul weights of all layers with `experts` experts per layer (dense: 1)."""
        per_layer = self.attn_params + self.router_params + experts * self.expert_params
        return self.n_layers * per_layer

    def linear_params(self, experts: float) -> float:
        """The layers' matmul weights plus an untied LM head (a tied one is the table)."""
        return self.layer_params(experts) + (0 if self.tie_embeddings else self.table_params)

    @property
    def params(self) -> int:
        return (
            round(self.linear_params(max(self.n_experts, 1)))
            + self.table_params
            + (self.other_params)
        )

    def experts_touched(self, tokens: int) -> float:
        """Expected distinct experts per layer that `tokens` tokens route to (uniform top-k
        routing): E (1 - (1 - k/E)^tokens). At batch 1 a token reads only its k experts."""
        if not self.n_experts:
            return 1.0
        e, k = self.n_experts, self.experts_per_token
        return e * (1.0 - (1.0 - k / e) ** tokens)

    def kv_heads_per_device(self, tp: int) -> int:
        # KV heads are split over tp; with more devices than KV heads each keeps a copy of one.
        return -(-self.n_kv_heads // tp)

    def kv_bytes_per_token(self, tp: int, kv_bytes: float) -> float:
        """K and V of one token in every layer, on one device (kipply: 2 layers kv_heads hd b)."""
        return 2 * self.n_layers * self.kv_heads_per_device(tp) * self.head_dim * kv_bytes


# --- weight formats ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightFormat:
    name: str
    bytes_per_weight: float
    compute: str  # the tensor-core dtype the matmuls run in (a key of GPUSpec.flops_per_s)
    efficiency: str | None  # Efficiency field scaling the bandwidth, None for native formats
    note: str


FORMATS: dict[str, WeightFormat] = {
    f.name: f
    for f in (
        # The GPUs table lists BF16 tensor-core peaks; FP16's is taken equal.
        WeightFormat("fp16", 2.0, "bf16", None, "16-bit weights and matmuls"),
        WeightFormat("bf16", 2.0, "bf16", None, "16-bit weights and matmuls"),
        WeightFormat(
            "fp8", 1.0, "fp8", None, "FP8 weights and matmuls (no calibration point: as BF16)"
        ),
        # Per-output-channel 16-bit scales: < 0.1% of the bytes, not counted.
        WeightFormat("int8", 1.0, "bf16", "int8_efficiency", "weight-only INT8, BF16 matmuls"),
        # REFERENCE.md calibration rows: INT4 in groups of 32; a 16-bit scale and zero point per
        # group add 4 bytes per 32 weights.
        WeightFormat(
            "int4", 0.5 + 4 / 32, "bf16", "int4_efficiency", "weight-only INT4 (group 32)"
        ),
    )
}
KV_BYTES = 2.0  # KV cache and activations stay 16-bit under weight-only quantisation


def weight_format(name: str) -> WeightFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise UnsupportedFormat(
            f"unknown weight format {name!r}; formats: {', '.join(FORMATS)}"
        ) from None


def _check_runs(gpu: GPUSpec, fmt: WeightFormat) -> None:
    if fmt.compute not in gpu.flops_per_s:
        runs = [f.name for f in FORMATS.values() if f.compute in gpu.flops_per_s]
        raise UnsupportedFormat(
            f"{gpu.name} has no {fmt.compute.upper()} tensor cores (the GPUs table lists none); "
            f"formats it runs: {', '.join(runs)}"
        )


# --- capacity -----------------------------------------------------------------------------------


def valid_tp(dims: ModelDims) -> list[int]:
    """Tensor-parallel degrees that split the attention heads evenly."""
    return [t for t in range(1, dims.n_heads + 1) if dims.n_heads % t == 0]


def _check_tp(dims: ModelDims, tp: int) -> None:
    if not is_count(tp) or tp not in valid_tp(dims):
        raise LpuError(
            f"tp={tp!r} must divide n_heads={dims.n_heads} of {dims.name}; valid: "
            f"{', '.join(map(str, valid_tp(dims)))}"
        )


def _check_positive(**values) -> None:
    for name, value in values.items():
        if not is_count(value) or value < 1:
            raise LpuError(f"{name}={value!r} must be an int >= 1")


def memory_per_device(dims: ModelDims, *, weights: str, tp: int, batch: int, context: int) -> float:
    """Bytes one of `tp` devices holds: its share of every weight (all experts), the embedding
    table, the norms, and the KV cache of `batch` sequences of `context` tokens. Activations and
    workspace are not counted, so the device count is a lower bound."""
    fmt = weight_format(weights)
    _check_tp(dims, tp)
    _check_positive(batch=batch, context=context)
    sharded = dims.linear_params(max(dims.n_experts, 1)) * fmt.bytes_per_weight
    sharded += dims.table_params * KV_BYTES  # vocab-parallel embedding, kept 16-bit
    kv = batch * context * dims.kv_bytes_per_token(tp, KV_BYTES)
    return sharded / tp + dims.other_params * KV_BYTES + kv


def min_devices(gpu, dims: ModelDims, *, weights: str, batch: int, context: int) -> int:
    """The fewest devices (a valid tensor-parallel degree) that hold the model and KV cache."""
    gpu = get_gpu(gpu)
    for tp in valid_tp(dims):
        need = memory_per_device(dims, weights=weights, tp=tp, batch=batch, context=context)
        if need <= gpu.memory_bytes:
            return tp
    raise DoesNotFit(
        f"{dims.name} ({weights} weights, batch {batch}, context {context}) does not fit "
        f"{gpu.name} even split {dims.n_heads} ways: {need / GB:.1f} GB per device of "
        f"{gpu.memory_bytes / GB:.0f} GB"
    )


def check_fits(gpu: GPUSpec, dims: ModelDims, *, weights, tp, batch, context) -> float:
    need = memory_per_device(dims, weights=weights, tp=tp, batch=batch, context=context)
    if need > gpu.memory_bytes:
        n = min_devices(gpu, dims, weights=weights, batch=batch, context=context)
        raise DoesNotFit(
            f"{dims.name} ({weights} weights, batch {batch}, context {context}) needs "
            f"{need / GB:.1f} GB per device at tp={tp} but {gpu.name} has "
            f"{gpu.memory_bytes / GB:.0f} GB: it needs at least {n} devices (tp={n})"
        )
    return need


# --- the step -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Demand:
    """What one step asks of one device, before any efficiency is applied."""

    weight_bytes: float  # weights streamed from HBM
    kv_bytes: float  # KV cache read and written
    flops: float
    layers: int
    allreduces: int  # per step
    allreduce_message_bytes: float
    tp: int

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes


def decode_demand(dims: ModelDims, *, weights: str, tp: int, batch: int, context: int) -> Demand:
    """One decode step: `batch` sequences each add a token to a cache of `context` positions
    (the cache is full: the costliest step of a generation of that length)."""
    fmt = weight_format(weights)
    _check_tp(dims, tp)
    _check_positive(batch=batch, context=context)
    touched = dims.experts_touched(batch)
    w = dims.linear_params(touched) * fmt.bytes_per_weight
    if dims.tie_embeddings:
        w += dims.table_params * KV_BYTES  # the LM head reads the (16-bit) embedding table
    # Reads `context` positions and writes one, per sequence.
    kv = batch * (context + 1) * dims.kv_bytes_per_token(tp, KV_BYTES)
    # 2 FLOPs per weight per token (each token runs only its k experts) + attention:
    # q.k and p.v, 2 x 2 x context x head_dim per head (kipply's arithmetic).
    matmul = 2 * batch * (dims.layer_params(max(dims.experts_per_token, 1)) + dims.table_params)
    attn = 4 * batch * context * dims.n_heads * dims.head_dim * dims.n_layers
    return Demand(
        weight_bytes=w / tp + dims.other_params * KV_BYTES,
        kv_bytes=kv,
        flops=(matmul + attn) / tp,
        layers=dims.n_layers,
        allreduces=2 * dims.n_layers if tp > 1 else 0,
        allreduce_message_bytes=batch * dims.d_model * KV_BYTES,
        tp=tp,
    )


def prefill_demand(dims: ModelDims, *, weights: str, tp: int, batch: int, prompt: int) -> Demand:
    """Prefill of `batch` prompts of `prompt` tokens together, up to the first token's logits."""
    fmt = weight_format(weights)
    _check_tp(dims, tp)
    _check_positive(batch=batch, prompt=prompt)
    tokens = batch * prompt
    w = dims.linear_params(dims.experts_touched(tokens)) * fmt.bytes_per_weight
    if dims.tie_embeddings:
        w += dims.table_params * KV_BYTES
    kv = 2 * tokens * dims.kv_bytes_per_token(tp, KV_BYTES)  # written, then read by attention
    # Every prompt token runs the layers; only the last one per prompt needs logits. Causal
    # attention: query i attends i keys, 4 i head_dim FLOPs per head; summed, 2 P (P+1) head_dim.
    k = max(dims.experts_per_token, 1)
    matmul = 2 * tokens * dims.layer_params(k) + 2 * batch * dims.table_params
    attn = 2 * batch * prompt * (prompt + 1) * dims.n_heads * dims.head_dim * dims.n_layers
    return Demand(
        weight_bytes=w / tp + dims.other_params * KV_BYTES,
        kv_bytes=kv,
        flops=(matmul + attn) / tp,
        layers=dims.n_layers,
        allreduces=2 * dims.n_layers if tp > 1 else 0,
        allreduce_message_bytes=tokens * dims.d_model * KV_BYTES,
        tp=tp,
    )


def allreduce_latency_s(gpu: GPUSpec, tp: int) -> float:
    """Measured 8-device latency scaled by tree depth: log2(tp) / log2(8)."""
    return gpu.allreduce_latency_s * math.log2(tp) / 3.0 if tp > 1 else 0.0


def allreduce_transfer_s(gpu: GPUSpec, tp: int, message_bytes: float) -> float:
    """A ring all-reduce moves 2 (tp-1)/tp of the message through each device's bus."""
    return 2 * (tp - 1) / tp * message_bytes / gpu.allreduce_bus_bytes_per_s if tp > 1 else 0.0


@dataclass(frozen=True)
class StepTime:
    phase: str  # "decode" | "prefill"
    gpu: str
    weights: str
    tp: int
    batch: int
    tokens: int  # context (decode) or prompt (prefill)
    bytes_per_device: float
    flops_per_device: float
    memory_s: float
    compute_s: float
    overhead_s: float
    communication_s: float
    step_s: float
    bound: str  # which term dominates: memory bandwidth, compute, overhead, communication
    bandwidth_utilisation: float  # bytes / step / peak bandwidth (MBU, REFERENCE.md)
    memory_per_device_bytes: float

    def to_dict(self) -> dict:
        return asdict(self)


def step_time(gpu: GPUSpec, demand: Demand, fmt: WeightFormat, eff: Efficiency) -> dict:
    """The four terms and their sum (seconds), and which one dominates."""
    bw = gpu.achievable_bandwidth_bytes_per_s * eff.bandwidth_efficiency
    fmt_eff = getattr(eff, fmt.efficiency) if fmt.efficiency else 1.0
    memory = demand.weight_bytes / (bw * fmt_eff) + demand.kv_bytes / bw
    compute = demand.flops / (gpu.flops_per_s[fmt.compute] * eff.compute_efficiency)
    overhead = demand.layers * eff.layer_overhead_s
    per_allreduce = eff.allreduce_latency_scale * allreduce_latency_s(
        gpu, demand.tp
    ) + allreduce_transfer_s(gpu, demand.tp, demand.allreduce_message_bytes)
    comm = demand.allreduces * per_allreduce
    terms = {
        "memory bandwidth" if memory >= compute else "compute": max(memory, compute),
        "overhead": overhead,
        "communication": comm,
    }
    return {
        "memory_s": memory,
        "compute_s": compute,
        "overhead_s": overhead,
        "communication_s": comm,
        "step_s": sum(terms.values()),
        "bound": max(terms, key=terms.get),
    }


def _run(phase, gpu, dims, demand, *, weights, tp, batch, tokens, context, eff) -> StepTime:
    gpu = get_gpu(gpu)
    fmt = weight_format(weights)
    _check_runs(gpu, fmt)
    held = check_fits(gpu, dims, weights=weights, tp=tp, batch=batch, context=context)
    t = step_time(gpu, demand, fmt, eff or FITTED)
    return StepTime(
        phase=phase,
        gpu=gpu.name,
        weights=weights,
        tp=tp,
        batch=batch,
        tokens=tokens,
        bytes_per_device=demand.bytes,
        flops_per_device=demand.flops,
        bandwidth_utilisation=demand.bytes / t["step_s"] / gpu.bandwidth_bytes_per_s,
        memory_per_device_bytes=held,
        **t,
    )


def decode_time(
    gpu,
    dims: ModelDims,
    *,
    weights: str = "bf16",
    tp: int = 1,
    batch: int = 1,
    context: int = 1024,
    eff: Efficiency | None = None,
) -> StepTime:
    """One decode step on `tp` devices of `gpu` (a name or a GPUSpec). Raises DoesNotFit (with
    the devices needed) when the weights and KV cache exceed the devices' memory."""
    demand = decode_demand(dims, weights=weights, tp=tp, batch=batch, context=context)
    return _run(
        "decode",
        gpu,
        dims,
        demand,
        weights=weights,
        tp=tp,
        batch=batch,
        tokens=context,
        context=context,
        eff=eff,
    )


def prefill_time(
    gpu,
    dims: ModelDims,
    *,
    weights: str = "bf16",
    tp: int = 1,
    batch: int = 1,
    prompt: int = 512,
    context: int | None = None,
    eff: Efficiency | None = None,
) -> StepTime:
    """Prefill of `batch` prompts of `prompt` tokens: the time to the first token. The devices
    must hold a KV cache of `context` positions (default: the prompt)."""
    demand = prefill_demand(dims, weights=weights, tp=tp, batch=batch, prompt=prompt)
    return _run(
        "prefill",
        gpu,
        dims,
        demand,
        weights=weights,
        tp=tp,
        batch=batch,
        tokens=prompt,
        context=context or prompt,
        eff=eff,
    )
