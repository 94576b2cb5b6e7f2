"""An independent float64 NumPy implementation of the three decoder families, for the tests.

Written from the architectures' definitions, not from models/: plain loops over layers, heads and
experts, float64 throughout. The only thing it shares with the JAX code is its documented storage
rounding: values are rounded to the storage dtype where the LPU stores them (every matmul input,
the KV cache, attention probabilities): `linear` and `rnd` below. Without it the float16 tiny
models' logits differ from the JAX code's by up to 2.3e-3; with it by 5e-7 (tiny-llama) to 1.4e-3
(tiny-mixtral) (measured: a 7-token prefill, seed 1, with and without these two roundings).
Quantised matrices are dequantised in float64 (q * scale per output channel), which is exactly
what the JAX side computes up to float32 rounding.
"""

from __future__ import annotations

import math

import numpy as np


def dense(w) -> np.ndarray:
    """A stored matrix as float64: plain, or {"q", "scale"} dequantised per output channel."""
    if isinstance(w, dict):
        return np.asarray(w["q"], np.float64) * np.asarray(w["scale"], np.float64)[..., None, :]
    return np.asarray(w, np.float64)


class Reference:
    """Forward pass of `params` (any family, any weight format) for config `cfg`."""

    def __init__(self, params: dict, cfg):
        self.p, self.cfg, self.dt = params, cfg, cfg.np_dtype

    def rnd(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x).astype(self.dt).astype(np.float64)

    def linear(self, h, w, b=None):
        # The input is rounded to the weight's dtype (or, for 8-bit weights, the storage dtype).
        dt = self.dt if isinstance(w, dict) else w.dtype
        y = np.asarray(h).astype(dt).astype(np.float64) @ dense(w)
        return y if b is None else y + np.asarray(b, np.float64)

    def norm(self, x, p, name):
        w = np.asarray(p[name], np.float64)
        eps = self.cfg.norm_eps
        if self.cfg.family == "gpt2":
            mu = x.mean(-1, keepdims=True)
            var = ((x - mu) ** 2).mean(-1, keepdims=True)
            return (x - mu) / np.sqrt(var + eps) * w + np.asarray(p[name + "_bias"], np.float64)
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(self, x, pos):
        # x (heads, hd) at position pos: rotate pairs (i, i + hd/2) by pos * theta**(-2i/hd).
        hd = x.shape[-1]
        angle = pos * self.cfg.rope_theta ** (-2.0 * np.arange(hd // 2) / hd)
        c, s = np.cos(angle), np.sin(angle)
        x1, x2 = x[:, : hd // 2], x[:, hd // 2 :]
        return np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)

    def attention(self, layer, x):
        # x (T, d): causal multi-head (grouped-query) attention over the whole sequence.
        cfg, t, hd = self.cfg, x.shape[0], self.cfg.head_dim
        gpt2 = cfg.family == "gpt2"
        h = self.norm(x, layer, "attn_norm")
        qkv = [self.linear(h, layer[w], layer.get("b" + w[1:])) for w in ("wq", "wk", "wv")]
        q = qkv[0].reshape(t, cfg.n_heads, hd)
        k = qkv[1].reshape(t, cfg.n_kv_heads, hd)
        v = qkv[2].reshape(t, cfg.n_kv_heads, hd)
        if not gpt2:
            q = np.stack([self.rope(q[i], i) for i in range(t)])
            k = np.stack([self.rope(k[i], i) for i in range(t)])
        k, v, q = self.rnd(k), self.rnd(v), self.rnd(q)  # the cache holds k and v in storage
        out = np.zeros((t, cfg.n_heads, hd))
        group = cfg.n_heads // cfg.n_kv_heads
        for i in range(t):
            for head in range(cfg.n_heads):
                kv = head // group
                s = k[: i + 1, kv] @ q[i, head] / math.sqrt(hd)
                prob = np.exp(s - s.max())
                out[i, head] = self.rnd(prob / prob.sum()) @ v[: i + 1, kv]
        return self.linear(out.reshape(t, -1), layer["wo"], layer.get("bo"))

    def swiglu(self, h, w_gate, w_up, w_down):
        g = self.linear(h, w_gate)
        return self.linear(g / (1.0 + np.exp(-g)) * self.linear(h, w_up), w_down)

    def route(self, layer, h):
        # h (d,): expert ids by descending router logit (ties to the lower id) and gate weights.
        logits = self.linear(h, layer["w_router"])
        ids = np.argsort(-logits, kind="stable")[: self.cfg.experts_per_token]
        e = np.exp(logits[ids] - logits[ids].max())
        return ids, e / e.sum(), logits

    def mlp(self, layer, h):
        # h (T, d) normed -> (T, d).
        if self.cfg.family == "gpt2":
            u = self.linear(h, layer["w_up"], layer["b_up"])
            gelu = 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
            return self.linear(gelu, layer["w_down"], layer["b_down"])
        if self.cfg.family == "llama":
            return self.swiglu(h, layer["w_gate"], layer["w_up"], layer["w_down"])
        ex = {name: dense(w) for name, w in layer["experts"].items()}
        out = np.zeros_like(h)
        for i, row in enumerate(h):
            ids, gates, _ = self.route(layer, row)
            for e, g in zip(ids, gates, strict=True):
                out[i] += g * self.swiglu(row, ex["w_gate"][e], ex["w_up"][e], ex["w_down"][e])
        return out

    def embed(self, tokens):
        if self.cfg.family == "gpt2":
            wte = dense(self.p["lm_head"]).T  # (V, d): the tied table, stored as the LM head
            return np.stack(
                [
                    wte[tok] + np.asarray(self.p["embed"]["wpe"][i], np.float64)
                    for i, tok in enumerate(tokens)
                ]
            )
        return np.asarray(self.p["embed"], np.float64)[list(tokens)]

    def forward(self, tokens) -> np.ndarray:
        """Logits (T, vocab) float64 of every position of `tokens`, causally."""
        x = self.embed(tokens)
        for layer in self.p["layers"]:
            x = x + self.attention(layer, x)
            x = x + self.mlp(layer, self.norm(x, layer, "mlp_norm"))
        return self.linear(self.norm(x, self.p, "final_norm"), self.p["lm_head"])
