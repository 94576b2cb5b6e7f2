import pytest

from sim import ConfigError, HardwareConfig, preset
from sim.hardware import PRESETS, load_hardware


def test_presets_are_valid_and_distinct():
    assert {"groq-tsp-v1", "teaching"} <= set(PRESETS)
    tsp = preset("groq-tsp-v1")
    assert tsp.lanes == 320 and tsp.mem_slices == 88 and tsp.clock_hz == 900e6
    assert tsp.sram_bytes == 88 * 2.5 * 2**20  # 220 MiB (REFERENCE.md "SRAM" row)
    assert len({hw.hash for hw in PRESETS.values()}) == len(PRESETS)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="groq-tsp-v1"):
        preset("tsp-v9")


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("lanes", 0, "lanes=0"),
        ("mem_slice_bytes", -16, "mem_slice_bytes=-16"),
        ("streams_per_direction", 2, "streams_per_direction=2"),
        ("mxm_planes", 3, "mxm_planes=3"),
        ("mem_slices", 12, "mem_slices=12"),
        ("lanes", 1.5, "lanes=1.5"),
        ("vxm_alus", True, "vxm_alus=True"),
        ("mem_slice_bytes", 16 * 1000 + 1, "multiple of lanes"),
    ],
)
def test_invalid_fields_name_the_value(field, value, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        preset("teaching").replace(**{field: value})


def test_unknown_field_lists_valid_ones():
    with pytest.raises(ConfigError, match="lanez.*valid fields:.*lanes"):
        preset("teaching").replace(lanez=3)


def test_toml_with_base(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text('base = "teaching"\nmem_slice_bytes = 32768\n')
    hw = load_hardware(str(path))
    assert hw.mem_slice_bytes == 32768 and hw.lanes == 16 and hw.name == "big"
    assert hw.hash != preset("teaching").hash


def test_toml_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("lanes = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_hardware(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load_hardware(str(tmp_path / "missing.toml"))


def test_floorplan_is_mirrored():
    hw = preset("teaching")
    positions = [hw.slice_position(s) for s in range(hw.mem_slices)]
    assert sorted(
        positions + [hw.vxm_position, 0, 1, hw.width_positions - 2, hw.width_positions - 1]
    ) == list(range(hw.width_positions))
    assert hw.slice_position(0) == hw.vxm_position - 1
    assert hw.slice_position(hw.half_slices) == hw.vxm_position + 1


def test_default_config_round_trips():
    hw = HardwareConfig()
    assert HardwareConfig.from_dict(hw.to_dict()) == hw
