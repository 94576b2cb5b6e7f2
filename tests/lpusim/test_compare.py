"""compare / gpus / measure: the same inputs on both sides, the LPU row honest about what it
cannot compile, the CLI's JSON and errors, and `measure` on this machine's JAX device (CPU)."""

import dataclasses
import json
import math
import re

import pandas as pd
import pytest

import lpusim
from compiler import ModelTooLarge
from compiler.passes.partition import auto_mapping
from lpusim.cli import main
from lpusim.compare import COLUMNS, DEFAULT_GPUS, lpu_chips_needed, model_dims, plot, records
from models import MODELS, get_config, param_count
from sim.baselines import GPUS, decode_time
from sim.hardware import preset

REQUIRED = (
    "machine",
    "devices",
    "tokens_per_s_user",
    "step_s",
    "ttft_s",
    "batch",
    "batch_tokens_per_s",
    "bandwidth_utilisation",
    "bound",
)

# The LPU row of a model that needs several chips: the mapping that holds it, and why not yet.
NOTE = (
    r"needs \d+ chips \(tp=\d+[^;]*, fullest chip stage .*\); "
    r"compile it with chips=\d+, mapping='tp=\d+,pp=\d+' \(--chips \d+ --mapping tp=\d+,pp=\d+\)"
)


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("name", list(MODELS))
def test_model_dims_count_every_parameter(name):
    cfg = get_config(name)
    dims = model_dims(cfg)
    assert dims.params == param_count(cfg)
    assert dims.other_params >= 0


def test_compare_llama2_70b_gpu_rows_and_an_honest_lpu_row():
    df = lpusim.compare(
        "llama2-70b", "groq-tsp-v1", ["a100-80gb", "h100-sxm", "h200"], many_chips=False
    )
    assert isinstance(df, pd.DataFrame) and list(df.columns) == list(COLUMNS)
    gpu = df[df["kind"] == "gpu"].set_index("machine")
    assert gpu.loc["a100-80gb", "devices"] == 2  # 138 GB of weights: two 80 GB devices
    assert (gpu["bound"] == "memory bandwidth").all()
    for col in ("tokens_per_s_user", "ttft_s", "batch_tokens_per_s", "bandwidth_utilisation"):
        assert (gpu[col] > 0).all()
    assert (gpu["bandwidth_utilisation"] < 1).all()
    lpu = df[df["kind"] == "lpu"].iloc[0]
    assert lpu["machine"] == "groq-tsp-v1"
    # In fp16 a tp=8 rank's layer, its 1,024 query columns padded to 4 vectors of 320 a row,
    # outgrows a chip (compiler.passes.partition): groups of several GroqNodes hold it.
    assert re.fullmatch(NOTE, lpu["note"]), lpu["note"]
    assert "mapping='tp=32," in lpu["note"]
    assert all(pd.isna(lpu[c]) for c in ("tokens_per_s_user", "step_s", "ttft_s", "bound"))
    # In int8 a node's group does. The chip count is the mapping's: estimate refuses the model
    # naming the same mapping.
    int8 = lpusim.compare("llama2-70b", "groq-tsp-v1", ["h100-sxm"], weights="int8",
                          many_chips=False)  # fmt: skip
    lpu = int8[int8["kind"] == "lpu"].iloc[0]
    assert re.fullmatch(NOTE, lpu["note"]), lpu["note"]
    assert all(pd.isna(lpu[c]) for c in ("tokens_per_s_user", "step_s", "ttft_s", "bound"))
    with pytest.raises(ModelTooLarge, match=f"on {lpu['devices']} chips of groq-tsp-v1"):
        lpusim.estimate("llama2-70b", "groq-tsp-v1", chips=1, context=1024, weights="int8")


def test_both_sides_get_the_same_model_precision_batch_and_context():
    df = lpusim.compare(
        "llama2-7b", "groq-tsp-v1", ["h100-sxm"], batch=[1, 8], weights=["fp16", "int8"],
        many_chips=False,
    )  # fmt: skip
    assert len(df) == 4 * 2
    for _, block in df.groupby(["weights", "batch"]):
        assert set(block["kind"]) == {"gpu", "lpu"}
        assert block["context"].nunique() == 1 and block["prompt"].nunique() == 1
    lpu = df[df["kind"] == "lpu"].set_index(["weights", "batch"])
    # int8 at context 1024 fits pipeline stages alone (the KV cache packed densely: a layer and
    # its cache fill 96.6% of a chip): the row says how many chips it needs, fewer than fp16's,
    # and how to compile it
    note = lpu.loc[("int8", 1), "note"]
    pipeline = r"needs (\d+) chips \(pp=\1, fullest chip stage .*\); compile it with chips=\1 "
    assert re.fullmatch(pipeline + r"\(--chips \1\)", note), note
    assert lpu.loc[("int8", 1), "devices"] < lpu.loc[("fp16", 1), "devices"]
    assert "batch 8: only batch-1 decode programs compile yet" in lpu.loc[("fp16", 8), "note"]
    gpu = df[df["kind"] == "gpu"].set_index(["weights", "batch"])
    t = decode_time(
        "h100-sxm", model_dims(get_config("llama2-7b")), weights="int8", batch=8, context=1024
    )
    assert gpu.loc[("int8", 8), "step_s"] == pytest.approx(t.step_s)
    agg = gpu.xs("fp16", level="weights")["batch_tokens_per_s"]
    assert agg.loc[8] > agg.loc[1]


def test_lpu_figures_come_from_estimate_where_the_model_compiles():
    df = lpusim.compare("tiny-llama", "groq-tsp-v1", ["h100-sxm"], engine="reference")
    lpu = df[df["kind"] == "lpu"].iloc[0]
    e = lpusim.estimate("tiny-llama", "groq-tsp-v1", context=64, engine="reference")
    assert lpu["devices"] == 1 and lpu["step_s"] == e.seconds_per_token
    assert lpu["tokens_per_s_user"] == pytest.approx(e.tokens_per_s)
    assert pd.isna(lpu["ttft_s"]) and "no prefill programs" in lpu["note"]
    assert lpu["bound"].startswith(("latency", "mem_read", "mxm", "vxm", "sxm", "stream"))
    assert lpu_chips_needed(get_config("tiny-llama"), preset("groq-tsp-v1"), 64) == 1


def test_gpu_rows_say_when_a_model_does_not_fit_or_a_format_does_not_run():
    df = lpusim.compare("llama2-70b", None, ["a100-80gb", "h200"], tp=1)
    rows = df.set_index("machine")
    assert "needs at least 2 devices" in rows.loc["a100-80gb", "note"]
    assert math.isnan(rows.loc["a100-80gb", "step_s"])
    assert rows.loc["h200", "devices"] == 1 and "fills 98%" in rows.loc["h200", "note"]
    df = lpusim.compare("llama2-7b", None, ["a100-80gb", "h100-sxm"], weights="fp8")
    rows = df.set_index("machine")
    assert "has no FP8 tensor cores" in rows.loc["a100-80gb", "note"]
    assert rows.loc["h100-sxm", "step_s"] > 0


def test_plot_writes_a_roofline_and_a_bar_chart(tmp_path):
    df = lpusim.compare("llama2-7b", "groq-tsp-v1", ["a100-80gb", "h100-sxm"], batch=[1, 16],
                        many_chips=False)  # fmt: skip
    fig = plot(df, tmp_path / "cmp.png")
    assert (tmp_path / "cmp.png").stat().st_size > 10_000
    roof, bars = fig.axes
    assert roof.get_xscale() == "log" and len(roof.get_lines()) >= 3
    assert [t.get_text() for t in bars.get_legend().get_texts()] == [
        "a100-80gb",
        "h100-sxm",
        "groq-tsp-v1",
    ]


def test_cli_compare_json(capsys, tmp_path):
    rc, out, err = run(
        capsys,
        "compare",
        "--model",
        "llama3-8b",
        "--batch",
        "1,8,64",
        "--weights",
        "fp16,int8",
        "--plot",
        str(tmp_path / "p.png"),
        "--json",
        "--one-chip",
    )
    assert rc == 0, err
    rows = json.loads(out)["rows"]
    assert len(rows) == 2 * 3 * (len(DEFAULT_GPUS) + 1)
    for r in rows:
        assert set(REQUIRED) <= set(r)
    gpu = [r for r in rows if r["machine"] == "h100-sxm" and r["weights"] == "fp16"]
    assert [r["batch"] for r in gpu] == [1, 8, 64]
    assert gpu[0]["tokens_per_s_user"] > gpu[2]["tokens_per_s_user"]
    assert gpu[0]["batch_tokens_per_s"] < gpu[2]["batch_tokens_per_s"]
    assert (tmp_path / "p.png").exists()


def test_cli_compare_text_has_one_row_per_machine(capsys):
    rc, out, _ = run(
        capsys, "compare", "--model", "llama2-70b", "--gpus", "h100-sxm,b200", "--weights", "int8",
        "--one-chip",  # (without it: 324 chips compiled and simulated, half a minute)
    )  # fmt: skip
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("llama2-70b: int8 weights, batch 1, context 1024, prompt 512")
    assert [line.split()[0] for line in lines[2:5]] == ["h100-sxm", "b200", "groq-tsp-v1"]
    assert "compile it with chips=" in out


def test_cli_gpus(capsys):
    rc, out, _ = run(capsys, "gpus", "--json")
    obj = json.loads(out)
    assert rc == 0 and {g["name"] for g in obj["gpus"]} == set(GPUS)
    assert all(g["source"] for g in obj["gpus"])
    assert len(obj["fit_errors"]) == 16 and obj["efficiency"]["bandwidth_efficiency"] > 0
    rc, out, _ = run(capsys, "gpus")
    assert rc == 0 and "h100-sxm" in out and "REFERENCE.md" in out


def test_measure_runs_on_cpu(capsys):
    m = lpusim.measure("tiny-llama", tokens=3, context=16)
    assert m.platform == "cpu" and m.tokens == 3 and m.context == 16
    assert m.tokens_per_s == pytest.approx(1 / m.step_s)
    assert m.achieved_bandwidth_bytes_per_s == pytest.approx(m.bytes_per_step / m.step_s)
    cfg = get_config("tiny-llama")
    weights = (param_count(cfg) - cfg.vocab_size * cfg.d_model) * 2  # less the host embedding
    assert m.bytes_per_step == weights + 2 * 2 * 2 * 10 * 17 * 2  # + K, V: layers kv hd (16+1)
    rc, out, _ = run(capsys, "measure", "--tokens", "2", "--context", "8", "--json")
    obj = json.loads(out)
    assert rc == 0 and obj["tokens_per_s"] > 0
    assert obj["calibration_point"] == {
        "model": "tiny-llama",
        "tp": 1,
        "weights": "fp16",
        "tokens_per_s": obj["tokens_per_s"],
        "device": obj["device"],
        "context": 8,
    }


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["compare", "--gpus", "h100"], "unknown GPU 'h100'"),
        (["compare", "--batch", "1,x"], "--batch '1,x'"),
        (["compare", "--batch", "0"], "batch=0"),
        (["compare", "--weights", "int3"], "unknown weight format 'int3'"),
        (["compare", "--tp", "3"], "tp=3 must divide n_heads=32"),
        (["compare", "--context", "5000"], "context=5000"),
        (["compare", "--prompt", "2000"], "prompt=2000"),
        (["compare", "--model", "gpt-5"], "unknown model 'gpt-5'"),
        (["compare", "--hw", "tsp9"], "unknown hardware preset 'tsp9'"),
        (["measure", "--model", "gpt2"], "llama family"),
        (["measure", "--tokens", "0"], "tokens=0"),
        (["measure", "--context", "65"], "context=65"),
    ],
)
def test_bad_input_one_line_no_traceback(capsys, argv, needle):
    rc, _, err = run(capsys, *argv)
    assert rc == 2
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_records_are_json_ready():
    df = lpusim.compare("llama2-70b", "groq-tsp-v1", ["h100-sxm"], many_chips=False)
    recs = records(df)
    json.dumps(recs)
    assert recs[1]["tokens_per_s_user"] is None and isinstance(recs[0]["devices"], int)


def test_int8_model_that_fits_one_chip_gets_simulated_lpu_figures():
    df = lpusim.compare("tiny-gpt2", "teaching", ["h100-sxm"], weights=["int8", "int4"])
    lpu = df[df["kind"] == "lpu"].set_index("weights")
    assert lpu.loc["int8", "devices"] == 1 and lpu.loc["int8", "tokens_per_s_user"] > 0
    assert lpu.loc["int8", "note"].startswith("simulated")
    assert "int4 weights do not compile for the LPU yet" in lpu.loc["int4", "note"]


def test_a_model_one_chip_does_not_hold_is_simulated_on_the_chips_that_do():
    """The LPU row of a model larger than a chip: compiled and simulated on the fewest chips
    that hold it, its figures estimate's for that mapping."""
    tiny8 = dataclasses.replace(get_config("tiny-llama"), name="tiny-llama-8", n_layers=8)
    df = lpusim.compare(tiny8, "teaching", ["h100-sxm"], context=16)
    lpu = df[df["kind"] == "lpu"].iloc[0]
    plan = auto_mapping(tiny8, preset("teaching"), 16, "native")
    assert lpu["devices"] == plan.mapping.chips > 1
    e = lpusim.estimate(tiny8, "teaching", chips=plan.mapping.chips, mapping=plan.mapping,
                        context=16)  # fmt: skip
    assert lpu["tokens_per_s_user"] == e.tokens_per_s and lpu["step_s"] == e.seconds_per_token
    assert lpu["note"].startswith(f"simulated on {plan.mapping.chips} chips ({plan.mapping})")
    assert f"a token crosses {plan.mapping.pp} stages" in lpu["why"]
