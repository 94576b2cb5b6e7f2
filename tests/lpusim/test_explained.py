"""Answers that explain themselves: compare's device counts, shared default context, natural weight
format and `why` column; validate's verdict."""

import json

import pandas as pd
import pytest

import lpusim
import lpusim.api
from compiler import ModelTooLarge
from lpusim import checks
from lpusim.cli import main
from lpusim.compare import plot


def test_estimate_and_compare_share_one_default_context():
    df = lpusim.compare("llama2-70b", "groq-tsp-v1", ["h100-sxm"], weights="int8", many_chips=False)
    assert df.attrs["context"] == checks.DEFAULT_CONTEXT
    chips = int(df[df["kind"] == "lpu"]["devices"].iloc[0])
    with pytest.raises(ModelTooLarge, match=f"on {chips} chips of groq-tsp-v1"):
        lpusim.estimate("llama2-70b", "groq-tsp-v1", chips=1, weights="int8")  # the default context


def test_models_published_in_fp32_are_compared_in_fp16():
    df = lpusim.compare("gpt2", None, ["h100-sxm", "h200"])
    assert set(df["weights"]) == {"fp16"} and (df["tokens_per_s_user"] > 0).all()
    assert "published in float32" in df.attrs["weights_note"]
    assert lpusim.compare("gpt2", None, ["h100-sxm"], weights="fp32")["note"].iloc[0]


def test_devices_gives_every_machine_the_same_count_and_every_row_says_why():
    df = lpusim.compare("llama2-7b", "groq-tsp-v1", ["h100-sxm", "h200", "a100-80gb"], devices=2)
    assert (df["devices"] == 2).all()
    gpu = df[df["kind"] == "gpu"]
    assert (gpu["tp"] == 2).all() and gpu["why"].str.contains(
        "2 devices \\(as devices asked\\)"
    ).all()
    lpu = df[df["kind"] == "lpu"].iloc[0]
    assert "2 hold too little SRAM" in lpu["note"]
    default = lpusim.compare("llama2-70b", None, ["h100-sxm", "h200"]).set_index("machine")
    # One H200 against two H100s: the rows say so, and why each has the count it has.
    assert default.loc["h200", "devices"] == 1 and default.loc["h100-sxm", "devices"] == 2
    assert "the fewest that hold weights and KV cache" in default.loc["h200", "why"]
    assert default.loc["h200", "why"].startswith("memory bandwidth: reading")


def test_the_lpu_row_says_what_bounds_its_step(capsys):
    df = lpusim.compare("tiny-llama", "lpu-next", ["h100-sxm"], engine="reference")
    why = df[df["kind"] == "lpu"]["why"].iloc[0]
    assert why.startswith("latency: its chain of dependent operations")
    assert "197 positions wide" in why  # lpu-next is wider than the TSP: longer trips
    assert main(["compare", "--model", "tiny-llama", "--hw", "none", "--gpus", "h100-sxm"]) == 0
    assert "why h100-sxm: overhead" in capsys.readouterr().out


def test_every_bar_shows_its_device_count():
    df = lpusim.compare("llama2-7b", "groq-tsp-v1", ["h100-sxm"], batch=[1, 8], many_chips=False)
    fig = plot(df)
    labels = [t.get_text() for t in fig.axes[1].texts]
    assert len(labels) == len(df) and all(" dev" in t for t in labels)
    assert any(t.endswith("n/a") for t in labels)
    assert pd.isna(df[df["kind"] == "lpu"]["tokens_per_s_user"]).all()


def test_validate_says_within_tolerance_and_exits_1_when_not(capsys, monkeypatch):
    assert main(["validate", "--tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "within tolerance               yes: max |logit error|" in out
    monkeypatch.setitem(lpusim.api.LOGIT_TOLERANCE, "float16", 1e-12)
    assert main(["validate", "--tokens", "2", "--json"]) == 1
    v = json.loads(capsys.readouterr().out)
    assert v["within_tolerance"] is False and v["passed"] is False
