"""Mappings of a model onto chips: parsing, the checks against the model and the system, the
pipeline stages, and the automatic mapping's fit, checked against compare's chip count (the
single-chip fit arithmetic) and a brute-force stage split."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import ModelTooLarge
from compiler.passes.partition import (
    KEYS,
    Mapping,
    auto_mapping,
    check,
    fit,
    stage_blocks,
)
from lpusim.compare import lpu_chips_needed
from models import get_config
from sim import preset
from sim.errors import ArgumentError, LpuError
from sim.system import groq_system

TSP = preset("groq-tsp-v1")
LLAMA70 = get_config("llama2-70b")
MIXTRAL = get_config("mixtral-8x7b")

# --- parsing --------------------------------------------------------------------------------------


@given(st.dictionaries(st.sampled_from(KEYS), st.integers(1, 1000)), st.randoms())
def test_parse_round_trips(degrees, rnd):
    parts = [f"{k}={v}" for k, v in degrees.items()]
    rnd.shuffle(parts)
    m = Mapping.parse(" , ".join(parts) or "tp=1")
    assert m == Mapping(**degrees) and Mapping.parse(str(m)) == m
    assert m.chips == m.tp * m.pp * m.ep


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "mapping='' must be degrees"),
        ("tp=8,tp=2", "gives tp twice"),
        ("tp=0", "has tp='0'"),
        ("tp=-2", "has tp='-2'"),
        ("tp=two", "has tp='two'"),
        ("tp=\u00b2", "has tp='\u00b2'"),  # a superscript 2 is a digit to str.isdigit
        ("dp=2", "has 'dp=2'"),
        ("tp8", "has 'tp8'"),
        ("tp=8;pp=2", "has tp='8;pp=2'"),
        ("tp=8,", "has ''"),
    ],
)
def test_bad_mapping_strings_name_the_value(text, needle):
    with pytest.raises(ArgumentError, match=needle) as e:
        Mapping.parse(text)
    assert "\n" not in str(e.value) and "tp, pp and ep" in str(e.value)


@pytest.mark.parametrize("value", [0, -1, 1.0, True, "2"])
def test_bad_degrees(value):
    with pytest.raises(ArgumentError, match=f"pp={value!r} must be a positive integer"):
        Mapping(pp=value)


# --- checks against the model and the system ------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, text, needle",
    [
        (
            LLAMA70,
            "tp=3",
            "tp must divide n_heads=64, d_ff=28672 and n_kv_heads=8 .*or be a multiple of "
            "n_kv_heads.*valid tp: 1, 2, 4, 8, 16, 32, 64$",
        ),
        (LLAMA70, "tp=128", "tp=128 ways"),
        (LLAMA70, "pp=82", "pp=82 stages, more than the 81 blocks .*valid pp: 1 to 81"),
        (LLAMA70, "tp=8,ep=2", "ep=2, but 'llama2-70b' has no experts; use ep=1"),
        (MIXTRAL, "ep=3", "ep=3, which does not divide n_experts=8 .*valid ep: 1, 2, 4, 8"),
    ],
)
def test_mapping_must_suit_the_model(cfg, text, needle):
    with pytest.raises(ArgumentError, match=needle) as e:
        check(Mapping.parse(text), cfg)
    assert "\n" not in str(e.value) and text in str(e.value)


def test_mapping_must_suit_the_chips_and_the_system():
    m = Mapping.parse("tp=8,pp=72")
    check(m, LLAMA70, 576)
    check(m, LLAMA70, groq_system(576, TSP))
    check(Mapping(tp=4), LLAMA70, groq_system(4, TSP))  # a whole GroqNode holds 4 chips' work
    check(Mapping.parse("tp=8,ep=8"), MIXTRAL, 64)
    with pytest.raises(ArgumentError, match="chips=512 does not match mapping tp=8,pp=72, which"):
        check(m, LLAMA70, 512)
    with pytest.raises(ArgumentError, match="chips='576' does not match"):
        check(m, LLAMA70, "576")
    with pytest.raises(ArgumentError, match="576 chips, but the topology has 72 .groq rack"):
        check(m, LLAMA70, groq_system(72, TSP))


# --- pipeline stages ------------------------------------------------------------------------------


@settings(max_examples=200)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=9), st.data())
def test_stages_are_the_most_even_contiguous_split(sizes, data):
    pp = data.draw(st.integers(1, len(sizes)))
    runs = stage_blocks(sizes, pp)
    assert len(runs) == pp and all(len(r) for r in runs)
    assert [i for r in runs for i in r] == list(range(len(sizes)))
    # brute force over every placement of the pp - 1 cuts
    best = min(
        max(sum(sizes[a:b]) for a, b in itertools.pairwise((0, *cuts, len(sizes))))
        for cuts in itertools.combinations(range(1, len(sizes)), pp - 1)
    )
    assert max(sum(sizes[i] for i in r) for r in runs) == best


def test_stage_count_is_checked():
    with pytest.raises(ArgumentError, match=r"pp=4 must be in \[1, 3\]"):
        stage_blocks([1, 2, 3], 4)


# --- fit and automatic mapping --------------------------------------------------------------------


def assert_sound(f, cfg, hw, context, weights):
    """The fit holds, uses at least compare's chip count and splits the model validly."""
    m = f.mapping
    check(m, cfg, m.chips)
    assert f.fits and all(s.total_bytes <= hw.sram_bytes for s in f.stages)
    assert f.chips_needed == lpu_chips_needed(cfg, hw, context, weights) <= m.chips
    assert [s.stage for s in f.stages] == list(range(m.pp)) and f.stages[-1].head
    assert [i for s in f.stages for i in s.layers] == list(range(cfg.n_layers))
    # every chip of a stage holds 1/tp of it, so the stages' chips hold at least the model
    # (the decode step's input vector aside)
    held = sum(s.total_bytes for s in f.stages) * m.tp * m.ep
    assert held >= f.total_bytes - 4 * hw.lanes * cfg.d_model


def test_llama2_70b_int8_on_groq():
    f = auto_mapping(LLAMA70, TSP, 1024, "int8")
    assert_sound(f, LLAMA70, TSP, 1024, "int8")
    m = f.mapping
    assert LLAMA70.n_heads % m.tp == 0 and LLAMA70.n_kv_heads % m.tp == 0 and m.ep == 1
    # 70.1 GB over 220 MiB chips (the KV cache two heads a row): at least 304; one layer on four
    # chips fills 95% of each
    assert f.chips_needed == 304 and m.chips == 324 and str(m) == "tp=4,pp=81"
    assert f.fullest.total_bytes / f.fullest.capacity_bytes > 0.9
    # nothing with fewer chips fits: the most stages each tp has below 324 chips do not
    for tp in (1, 2, 4, 8):
        pp = min((m.chips - 1) // tp, LLAMA70.n_layers + 1)
        assert not fit(Mapping(tp, pp), LLAMA70, TSP, 1024, "int8").fits
    assert "llama2-70b (int8 weights, context 1024) on 324 chips" in str(f)


def test_fixed_mapping_fit_grows_with_context():
    m = Mapping.parse("tp=8,pp=80")
    short = fit(m, LLAMA70, TSP, 1024, "int8")
    short.check()
    assert str(short.stages[0]).startswith("stage 0 (layer 0): ")
    assert str(short.stages[-1]).startswith("stage 79 (layer 79 and the head): ")
    long = fit(m, LLAMA70, TSP, 4096, "int8")
    assert long.stages[0].kv_bytes == 4 * short.stages[0].kv_bytes
    with pytest.raises(ModelTooLarge, match=r"on 16 chips .*stage 1 \(layers 40-79 and the head\)"):
        fit(Mapping(tp=8, pp=2), LLAMA70, TSP, 1024, "int8").check()


def test_a_rank_holds_its_padded_slices():
    """A rank stores its slice of a matrix's columns in whole vectors: llama2-70b's 8,192 query
    columns are 26 vectors of 320 a row, a rank's 1,024 at tp=8 take 4 (32 of the 8 ranks). Two
    layers a chip (Groq's 576 chips, tp=8,pp=72) then exceed a chip in int8 at context 1024."""
    f = fit(Mapping.parse("tp=8,pp=72"), LLAMA70, TSP, 1024, "int8")
    assert not f.fits and f.fullest.layers == range(2)
    assert f.fullest.total_bytes / f.fullest.capacity_bytes > 1.04
    # the same 576 chips in groups of two nodes or more do hold it
    assert f.others == (Mapping(16, 36), Mapping(32, 18), Mapping(64, 9))
    with pytest.raises(ModelTooLarge, match="on the same 576 chips tp=16,pp=36, tp=32,pp=18, "):
        f.check()
    # a rank's layer in vectors of 320 lanes: int8 wq (8192, 1024), wk and wv (8192, 128), wo
    # (1024, 8192), w_gate and w_up (8192, 3584), w_down (3584, 8192); float32 scales of the
    # output columns (wo's and w_down's whole); the two float16 norms (8192,) whole
    int8 = 8192 * 4 + 2 * 8192 * 1 + 1024 * 26 + 2 * 8192 * 12 + 3584 * 26
    scales = 4 + 2 * 1 + 26 + 2 * 12 + 26
    one = fit(Mapping(tp=8, pp=81), LLAMA70, TSP, 1024, "int8").stages[0]
    assert one.weights_bytes == (int8 + 4 * scales + 2 * 2 * 26) * TSP.lanes == 117_120_000


def test_mixtral_uses_expert_parallelism():
    """In bf16 a layer of mixtral-8x7b needs more than a node's 8 chips: tp x ep = 16."""
    f = auto_mapping(MIXTRAL, TSP, 1024, "native")
    assert_sound(f, MIXTRAL, TSP, 1024, "native")
    assert f.mapping.ep > 1 and MIXTRAL.n_experts % f.mapping.ep == 0
    assert f.mapping.tp * f.mapping.ep > 8  # no group of a node holds a layer
    for tp, ep in ((8, 1), (4, 2), (2, 4), (1, 8)):
        assert not fit(Mapping(tp, MIXTRAL.n_layers + 1, ep), MIXTRAL, TSP, 1024, "native").fits
    d = f.to_dict()
    assert d["mapping"]["chips"] == f.mapping.chips and len(d["stages"]) == f.mapping.pp


def test_mixtral_int8_takes_groups_of_a_node():
    """In int8 a node's 8 chips hold a layer, so the automatic mapping's groups are of a node
    (linked pairwise: the all-reduce's one hop), not the 16 whose 2 layers a stage filled 99.7%
    of the share without the units' placement (and could not be linked)."""
    f = auto_mapping(MIXTRAL, TSP, 1024, "int8")
    assert_sound(f, MIXTRAL, TSP, 1024, "int8")
    assert str(f.mapping) == "tp=8,pp=33" and f.mapping.chips == 264


def test_experts_placed_as_units_are_counted():
    """A chip's experts chosen at run time are stacked units, each placed at unit 0's stride
    (its fullest slice): the fit adds a segment's rows (40 on groq-tsp-v1, a scale's 1) a unit on
    every slice, for each stacked leaf, and one row per expert for the slot table."""
    words = TSP.lanes * TSP.mem_slices  # bytes of a word on every slice
    stage = fit(Mapping(tp=8, pp=33), MIXTRAL, TSP, 1024, "int8").stages[0]
    assert stage.units_bytes == 8 * (3 * 40 + 3 * 1) * words  # w_gate, w_up, w_down, scales
    assert stage.total_bytes == stage.weights_bytes + stage.kv_bytes + stage.units_bytes
    stage = fit(Mapping(tp=4, pp=33, ep=2), MIXTRAL, TSP, 1024, "int8").stages[0]
    assert stage.units_bytes == (4 * (3 * 40 + 3 * 1) + 8) * words  # and expert_slots (8, 4)
    assert "experts placed as units 14,080,000)" in str(stage)
    # one expert a chip (n < k): indexed by constants, not stacked; and dense layers have none
    assert fit(Mapping(pp=33, ep=8), MIXTRAL, TSP, 1024, "int8").stages[0].units_bytes == 8 * words
    dense = fit(Mapping(tp=4, pp=81), LLAMA70, TSP, 1024, "int8")
    assert all(s.units_bytes == 0 for s in dense.stages)
    assert "experts placed" not in str(dense)


def test_a_mapping_too_small_for_the_units_is_refused():
    """tp=8,ep=2 with 2 layers a stage: 99.7% of the share in weights and KV cache, which the
    fit let through before counting the units; compiling it then ran out of words."""
    m = Mapping(tp=8, pp=16, ep=2)
    with pytest.raises(ModelTooLarge, match=r"experts placed as units [\d,]+\) of the") as e:
        fit(m, MIXTRAL, TSP, 1024, "int8").check()
    assert "\n" not in str(e.value) and "bytes per chip (weights " in str(e.value)
    f = fit(m, MIXTRAL, TSP, 1024, "int8")
    assert f.fullest.weights_bytes + f.fullest.kv_bytes <= f.fullest.capacity_bytes


def test_small_models_take_one_chip():
    f = auto_mapping(get_config("tiny-llama"), TSP, 64)
    assert f.mapping == Mapping() and f.chips_needed == 1 and len(f.stages) == 1


def test_a_model_no_node_holds_maps_onto_groups_of_nodes():
    """At tp=8 a rank's llama3.1-405b layer is 413,797,120 bytes, more than a chip: the
    automatic mapping takes groups of two GroqNodes, each KV head on two ranks."""
    plan = auto_mapping(get_config("llama3.1-405b"), TSP, 1024, "int8")
    assert plan.mapping == Mapping(tp=16, pp=127)


def test_too_large_for_any_mapping():
    cfg = get_config("llama3.1-405b")
    with pytest.raises(ModelTooLarge, match="stage 0 .layer 0.: 29,561,600 bytes per chip") as e:
        auto_mapping(cfg, preset("teaching"), 1024, "int8")
    assert "\n" not in str(e.value) and "no mapping fits" in str(e.value)
    assert "tp up to 128, as n_heads=128, n_kv_heads=8 and d_ff=53248 allow" in str(e.value)


def test_bad_context_and_weights():
    with pytest.raises(LpuError, match="context=0 must be in"):
        auto_mapping(LLAMA70, TSP, 0)
    with pytest.raises(LpuError, match="weights='int3'"):
        fit(Mapping(tp=8, pp=72), LLAMA70, TSP, 1024, "int3")


@settings(max_examples=25)
@given(
    st.sampled_from(["tiny-llama", "tiny-mixtral", "tiny-gpt2", "tiny-llama-f32"]),
    st.sampled_from(["native", "int8"]),
    st.integers(1, 64),
    st.integers(4, 64).map(lambda k: 256 * k),  # 4 to 64 KiB a chip: tiny models need many
)
def test_auto_mapping_is_sound_and_locally_minimal(model, weights, context, slice_bytes):
    cfg = get_config(model)
    hw = preset("teaching").replace(mem_slice_bytes=slice_bytes)
    try:
        f = auto_mapping(cfg, hw, context, weights)
    except ModelTooLarge:
        return  # a block split the most ways exceeds the chip: nothing to check
    assert_sound(f, cfg, hw, context, weights)
    m = f.mapping
    if m.pp > 1 and (m.pp - 1) * m.tp * m.ep >= f.chips_needed:
        assert not fit(Mapping(m.tp, m.pp - 1, m.ep), cfg, hw, context, weights).fits
