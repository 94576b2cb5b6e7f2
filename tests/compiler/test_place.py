"""Stored segments: each tile of `lanes` rows is cut evenly over the MXM's install ports, so a
short last tile (K not a multiple of the lanes) still streams from every port and they finish
together."""

from hypothesis import given
from hypothesis import strategies as st

from compiler.passes.place import _chunks, chunk_vectors
from sim.hardware import preset

HW = preset("groq-tsp-v1")  # 320 lanes, 8 rows installed per cycle: segments of 40


def test_a_short_last_tile_is_cut_into_as_many_segments_as_ports():
    assert chunk_vectors(HW) == 40
    # 4096 rows: 12 tiles of 320 (8 x 40) and one of 256 (8 x 32, not 6 x 40 + 16)
    cuts = _chunks(4096, HW)
    assert cuts[:8] == [(40 * k, 40) for k in range(8)]
    assert cuts[-8:] == [(3840 + 32 * k, 32) for k in range(8)]


@given(st.integers(1, 3000), st.sampled_from(["groq-tsp-v1", "teaching"]))
def test_weight_segments_cover_the_rows_once_and_stay_inside_their_tile(rows, hw_name):
    hw = preset(hw_name)
    cuts = _chunks(rows, hw)
    assert [r0 for r0, _ in cuts] == [sum(n for _, n in cuts[:k]) for k in range(len(cuts))]
    assert sum(n for _, n in cuts) == rows
    ports = hw.mxm_install_vectors_per_cycle
    for r0, n in cuts:
        assert r0 // hw.lanes == (r0 + n - 1) // hw.lanes  # inside one tile
    tiles = {}
    for r0, n in cuts:
        tiles.setdefault(r0 // hw.lanes, []).append(n)
    for sizes in tiles.values():  # at most one segment per port, none longer than needed:
        n = sum(sizes)  # the tile installs in the fewest cycles its rows allow
        assert len(sizes) <= ports and max(sizes) == -(-n // ports)


def test_each_weight_tile_lies_in_one_hemisphere_and_the_next_in_the_other():
    """An MXM vop's rows go whole to one hemisphere, from the MXM's edge inwards, so a plane on
    that side installs them without crossing the chip; consecutive vops alternate sides."""
    import jax
    import jax.numpy as jnp

    from compiler import compile

    def f(x, w):
        return jnp.dot(x, w, preferred_element_type=jnp.float32)

    args = {
        "x": jax.ShapeDtypeStruct((1, 1280), jnp.int8),
        "w": jax.ShapeDtypeStruct((1280, 640), jnp.int8),
    }
    prog = compile(f, HW, args=args, params=("w",))
    w = prog.symbol("w")
    side = (w.slices >= HW.half_slices).astype(int)
    rows, tiles = 1280, 2
    per_tile = side.reshape(rows, tiles).T.reshape(tiles, rows // HW.lanes, HW.lanes)
    assert (per_tile == per_tile[..., :1]).all()  # each (K tile, N tile) on one side
    assert set(per_tile[..., 0].ravel().tolist()) == {0, 1}  # both sides used
    first = w.slices.reshape(rows, tiles)[0, 0]
    # nearest the MXM of its side: the outermost slice group of its hemisphere
    assert first in (HW.half_slices - 1, HW.mem_slices - 1)
