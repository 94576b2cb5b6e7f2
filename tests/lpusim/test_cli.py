"""The CLI: one JSON object with --json; bad input -> one line on stderr, no traceback, exit 2."""

import json
import re

import pytest

import lpusim
from lpusim.cli import main
from sim import Program


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_presets_and_models(capsys):
    rc, out, _ = run(capsys, "presets", "--json")
    names = {p["name"] for p in json.loads(out)["presets"]}
    assert rc == 0 and {"groq-tsp-v1", "teaching"} <= names
    rc, out, _ = run(capsys, "models", "--json")
    models = {m["name"]: m for m in json.loads(out)["models"]}
    assert rc == 0 and models["llama2-70b"]["params"] == 68_976_648_192


def test_estimate_json(capsys):
    rc, out, _ = run(
        capsys,
        "estimate",
        "--model",
        "tiny-llama",
        "--hw",
        "teaching",
        "--context",
        "8",
        "--engine",
        "reference",
        "--json",
    )
    e = json.loads(out)
    assert rc == 0
    for key in (
        "cycles_per_token",
        "seconds_per_token",
        "tokens_per_s",
        "chips",
        "unit_utilisation",
        "bytes_read",
    ):
        assert key in e
    assert e["cycles_per_token"] == e["predicted_cycles"] > 0
    assert e["tokens_per_s"] == pytest.approx(1.0 / e["seconds_per_token"])
    assert set(e["unit_utilisation"]) >= {"mem_read", "vxm", "sxm", "mxm_install"}


def test_compile_then_simulate(capsys, tmp_path):
    path = tmp_path / "prog.lpu"
    rc, out, err = run(
        capsys, "compile", "--model", "tiny-llama", "--context", "4", "-o", str(path), "--json"
    )
    assert rc == 0, err  # each command's exit status first: a failed one prints no JSON
    compiled = json.loads(out)
    assert path.exists() and (tmp_path / "prog.lpu.txt").exists()
    assert "MATMUL" in (tmp_path / "prog.lpu.txt").read_text()
    rc, out, err = run(capsys, "simulate", str(path), "--engine", "reference", "--json")
    assert rc == 0, err
    sim = json.loads(out)
    assert sim["cycles"] == compiled["predicted_cycles"]
    trace = tmp_path / "trace.json"
    rc, out, err = run(capsys, "trace", str(path), "-o", str(trace), "--json")
    assert rc == 0, err  # before reading the file: a failed command writes none
    events = json.loads(trace.read_text())["traceEvents"]
    assert json.loads(out)["trace"] == str(trace)
    repetitions = int(Program.load(path).instrs["repeat"].sum())
    assert sum(e["ph"] == "X" for e in events) == repetitions


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["estimate", "--model", "gpt-5"], "unknown model 'gpt-5'"),
        (["estimate", "--hw", "tsp9"], "unknown hardware preset 'tsp9'"),
        (["estimate", "--model", "llama2-7b"], "needs at least"),
        (["estimate", "--chips", "8"], "pp=8"),
        (
            ["validate", "--model", "tiny-gpt2", "--chips", "2", "--mapping", "tp=2"],
            "tp=2: tensor parallelism compiles the llama and mixtral families",
        ),
        (["estimate", "--context", "0"], "context=0"),
        (["compile", "--pos", "99", "--context", "4", "-o", "x.lpu"], "pos=99"),
        (["simulate", "missing.lpu"], "does not exist"),
        (["validate", "--prompt", "1,x"], "--prompt"),
        (["validate", "--prompt", "1000"], "prompt [1000]"),
    ],
)
def test_bad_input_one_line_no_traceback(capsys, argv, needle):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_hardware_file(capsys, tmp_path):
    for body, needle in [
        ("lanes = 0", "lanes=0"),
        ("streams_per_direction = 2", "streams_per_direction=2"),
        ("mem_slice_bytes = -5", "-5"),
    ]:
        f = tmp_path / "hw.toml"
        f.write_text(f'base = "teaching"\n{body}\n')
        rc, _, err = run(capsys, "estimate", "--hw", str(f))
        assert rc == 2 and needle in err and "Traceback" not in err


def test_foreign_program_file(capsys, tmp_path):
    f = tmp_path / "junk.lpu"
    f.write_bytes(b"\x00" * 64)
    rc, _, err = run(capsys, "simulate", str(f))
    assert rc == 2 and "not an lpusim Program file" in err


def test_cli_estimate_of_a_model_too_large_for_a_chip_says_how_it_would_map(capsys):
    """One line, no traceback: the bytes it needs, and the fewest chips that hold it with the
    mapping, the fullest chip and its share of SRAM (compiler.passes.partition.auto_mapping)."""
    rc, out, err = run(
        capsys, "estimate", "--model", "llama2-70b", "--hw", "groq-tsp-v1", "--weights", "int8",
        "--chips", "1",
    )  # fmt: skip
    assert rc != 0 and not out and len(err.strip().splitlines()) == 1
    assert "it needs at least 304 chips" in err
    assert "Mapped onto the fewest chips that hold it: llama2-70b (int8 weights" in err
    assert re.search(r"on (\d+) chips of groq-tsp-v1 \(tp=\d+,pp=\d+\): the fullest chip", err)
    assert re.search(r"compile it with chips=\d+, mapping='tp=\d+,pp=\d+'", err)


def test_cli_estimate_without_chips_maps_a_model_too_large_for_a_chip_onto_the_fewest(capsys):
    """No --chips: the fewest chips that hold the model (tiny-mixtral needs two teaching chips),
    compiled and simulated there, and why those chips: the bytes on the fullest."""
    rc, out, err = run(capsys, "estimate", "--model", "tiny-mixtral", "--context", "8", "--json")
    assert rc == 0, err
    e = json.loads(out)
    assert (e["chips"], e["mapping"]) == (2, "tp=2")
    assert "on 2 chips of teaching (tp=2): the fullest chip holds" in e["chips_why"]
    assert "need at least 2 chips" in e["chips_why"]
    given = lpusim.estimate("tiny-mixtral", "teaching", chips=2, mapping="tp=2", context=8)
    assert e["cycles_per_token"] == given.cycles_per_token


def test_estimate_without_chips_takes_the_fewest_chips_a_given_system_carries():
    """tiny-llama-8 fits two teaching chips as tp=2 (the fewest stages) or pp=2; on a system
    where chips 0 and 1 meet only through chip 2, a tp=2 group has no link: pp=2, relayed."""
    import dataclasses

    import networkx as nx

    from models import get_config
    from sim import preset
    from sim.system import System

    tiny8 = dataclasses.replace(get_config("tiny-llama"), name="tiny-llama-8", n_layers=8)
    assert lpusim.estimate(tiny8, "teaching", context=8).mapping == "tp=2"
    system = System(preset("teaching"), nx.Graph([(0, 2), (2, 1), (1, 3)]))
    e = lpusim.estimate(tiny8, "teaching", topology=system, context=8)
    assert (e.chips, e.mapping) == (2, "pp=2")
    given = lpusim.estimate(tiny8, "teaching", chips=2, mapping="pp=2", topology=system, context=8)
    assert e.cycles_per_token == given.cycles_per_token
