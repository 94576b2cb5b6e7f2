from pathlib import Path

import numpy as np
import pytest

from sim import ProgramFormatError, preset, simulate
from sim.program import Program, pack_tensor, unpack_tensor
from tests.programs import softmax_matmul_args, softmax_matmul_program

GOLDEN = Path(__file__).parent / "golden"


def test_save_load_round_trip(tmp_path):
    prog = softmax_matmul_program()
    path = tmp_path / "p.lpu"
    prog.save(path)
    back = Program.load(path, preset("teaching"))
    assert back.content_hash == prog.content_hash
    assert back.disassemble() == prog.disassemble()
    a = simulate(prog, softmax_matmul_args(), engine="reference")
    b = simulate(back, softmax_matmul_args(), engine="reference")
    assert a.cycles == b.cycles
    assert a.outputs["out"].tobytes() == b.outputs["out"].tobytes()


def test_truncated_foreign_and_mismatched_files(tmp_path):
    prog = softmax_matmul_program()
    good = tmp_path / "p.lpu"
    prog.save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.lpu").write_bytes(data[: len(data) // 2])
    with pytest.raises(ProgramFormatError, match="truncated or foreign"):
        Program.load(tmp_path / "trunc.lpu")
    (tmp_path / "foreign.lpu").write_text("not a program")
    with pytest.raises(ProgramFormatError, match="foreign"):
        Program.load(tmp_path / "foreign.lpu")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ProgramFormatError, match="no header"):
        Program.load(tmp_path / "other.npz")
    with pytest.raises(ProgramFormatError, match="compiled for hardware teaching"):
        Program.load(good, preset("groq-tsp-v1"))
    with pytest.raises(ProgramFormatError, match="does not exist"):
        Program.load(tmp_path / "missing.lpu")


def test_pack_unpack_round_trip():
    for shape in [(5,), (3, 40), (2, 3, 1), (), (4, 16)]:
        x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
        assert np.array_equal(unpack_tensor(pack_tensor(x, 16), shape, 16), x)
    splat = pack_tensor(np.ones((3, 1), np.float32), 16)
    assert splat.shape == (3, 16) and np.all(splat == 1)


def test_listing_names_ops_and_sources():
    text = softmax_matmul_program().disassemble()
    for word in ("READ.f16", "INSTALL", "MATMUL", "REDUCE_MAX", "EXP", "WRITE.f32", "dot"):
        assert word in text


def _small_program():
    import jax.numpy as jnp

    from compiler import compile

    def f(a, b):
        return jnp.maximum(a * b + 1.0, 0.0)

    x = np.ones((1, 20), np.float32)
    return compile(f, "teaching", args={"a": x, "b": x}, params=())


def test_golden_listing():
    """A small program's listing, kept as a golden file (regenerate deliberately if the compiler
    changes: `python -c "from tests.sim.test_program import regenerate; regenerate()"`)."""
    got = _small_program().disassemble()
    assert got == (GOLDEN / "mul_add_relu.txt").read_text().rstrip("\n")


def regenerate():
    (GOLDEN / "mul_add_relu.txt").write_text(_small_program().disassemble() + "\n")
