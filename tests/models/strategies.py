"""Hypothesis strategies for small model configs of every family."""

import dataclasses

from hypothesis import strategies as st

from models import get_config
from models.configs import FAMILIES

DTYPES = ["float32", "float16", "bfloat16"]


@st.composite
def decoder_configs(draw, families=FAMILIES, dtypes=DTYPES):
    """A small valid ModelConfig of a drawn family: GQA groups, odd widths, 1..3 layers."""
    family = draw(st.sampled_from(families))
    kv = draw(st.integers(1, 3))
    heads = kv if family == "gpt2" else kv * draw(st.integers(1, 3))  # gpt2: no GQA
    fields = dict(
        name="drawn",
        family=family,
        vocab_size=draw(st.integers(2, 50)),
        d_model=heads * 2 * draw(st.integers(1, 6)),
        n_layers=draw(st.integers(1, 3)),
        n_heads=heads,
        n_kv_heads=kv,
        d_ff=draw(st.integers(1, 40)),
        max_seq_len=draw(st.integers(1, 16)),
        dtype=draw(st.sampled_from(dtypes)),
    )
    if family == "gpt2":
        fields.update(rope_theta=0.0, tie_embeddings=True)
    elif family == "mixtral":
        experts = draw(st.integers(1, 4))
        fields.update(n_experts=experts, experts_per_token=draw(st.integers(1, experts)))
    return dataclasses.replace(get_config("tiny-llama"), **fields)
