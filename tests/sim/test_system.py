"""Systems of chips and C2C links: presets, user topologies, hop counts and transfer timing. Hop
counts and routes are checked against networkx's own shortest paths."""

import itertools
import json
import math
from fractions import Fraction

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import preset
from sim.errors import ArgumentError, ConfigError
from sim.system import (
    MAX_RACKS,
    RACK_CHIPS,
    System,
    fully_connected,
    groq_system,
    ring,
    torus2d,
)

TSP = preset("groq-tsp-v1")
WIDE = TSP.replace(c2c_links=1024)  # a chip with ports for any small random graph


def rack_pair_links(system: System) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for a, b, n in system.graph.edges(data="links"):
        ra, rb = sorted((a // RACK_CHIPS, b // RACK_CHIPS))
        if ra != rb:
            out[ra, rb] = out.get((ra, rb), 0) + n
    return out


# --- Groq presets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "asked, chips, diameter, max_degree",
    [(1, 8, 1, 7), (5, 8, 1, 7), (8, 8, 1, 7), (16, 16, 2, 9), (72, 72, 3, 9), (73, 144, 4, 11)],
)
def test_groq_sizes(asked, chips, diameter, max_degree):
    s = groq_system(asked, TSP)
    assert s.chips == chips and s.diameter == diameter
    assert max(s.degree(c) for c in range(s.chips)) == max_degree <= TSP.c2c_links
    for node in range(chips // 8):  # every GroqNode is a full mesh of single links
        for a, b in itertools.combinations(range(node * 8, node * 8 + 8), 2):
            assert s.links_between(a, b) == 1


def test_groq_rack_joins_every_pair_of_nodes_twice():
    s = groq_system(72, TSP)
    assert s.name == "groq rack of 9 nodes" and s.links == 9 * 28 + 36 * 2
    between = {}
    for a, b, n in s.graph.edges(data="links"):
        if a // 8 != b // 8:
            key = tuple(sorted((a // 8, b // 8)))
            between[key] = between.get(key, 0) + n
    assert between == {pair: 2 for pair in itertools.combinations(range(9), 2)}
    assert all(s.degree(c) == 7 + 2 for c in range(72))


def test_groq_576_chips_is_eight_racks_in_a_dragonfly():
    s = groq_system(576, TSP)
    assert s.chips == 576 and s.name == "groq dragonfly of 8 racks"
    # 7 + 2 + 2 of 16 links; 7 rack pairs x 20 links use 140 of a rack's 144 global ports
    assert sorted(s.degree(c) for c in range(72)) == [10] * 4 + [11] * 68
    assert rack_pair_links(s) == {p: 144 // 7 for p in itertools.combinations(range(8), 2)}
    assert s.diameter == 6
    # hop counts agree with networkx's breadth-first search from a few chips
    for a in (0, 77, 575):
        expected = nx.shortest_path_length(s.graph, a)
        assert [s.hops(a, b) for b in range(576)] == [expected[b] for b in range(576)]


def test_groq_largest_dragonfly_has_one_link_per_pair_of_racks():
    s = groq_system(MAX_RACKS * RACK_CHIPS, TSP)
    assert s.chips == 10_440  # REFERENCE.md topology row: "Dragonfly up to 10,440 chips"
    pairs = rack_pair_links(s)
    assert len(pairs) == MAX_RACKS * (MAX_RACKS - 1) // 2 and set(pairs.values()) == {1}


def test_groq_limits():
    with pytest.raises(ArgumentError, match="chips=10441 .*10,440 chips"):
        groq_system(10_441, TSP)
    with pytest.raises(ArgumentError, match="chips=0 must be a positive integer"):
        groq_system(0, TSP)
    with pytest.raises(
        ConfigError, match="chip 0 has 7 links, more than c2c_links=4 of 'teaching'"
    ):
        groq_system(8, preset("teaching"))


# --- generic topologies ---------------------------------------------------------------------------


def test_generic_topologies():
    fc = fully_connected(6, TSP)
    assert fc.diameter == 1 and fc.links == 15
    r = ring(9, TSP)
    assert r.diameter == 4 and {r.degree(c) for c in range(9)} == {2}
    assert ring(2, TSP).links_between(0, 1) == 2 and ring(1, TSP).links == 0
    t = torus2d(4, 6, TSP)
    assert t.chips == 24 and t.diameter == 2 + 3 and {t.degree(c) for c in range(24)} == {4}
    assert t.hops(0, 23) == 2  # wrap-around on both axes: (0,0) -> (3,5)
    assert torus2d(2, 3, TSP).links_between(0, 3) == 2  # a dimension of 2 joins its pair twice
    assert torus2d(1, 5, TSP).links == 5


def test_generic_topologies_check_their_sizes():
    with pytest.raises(ArgumentError, match="cols=0 must be a positive integer"):
        torus2d(3, 0, TSP)
    with pytest.raises(ConfigError, match="chip 0 has 17 links, more than c2c_links=16"):
        fully_connected(18, TSP)


# --- queries on random connected graphs -----------------------------------------------------------


@st.composite
def connected_graphs(draw):
    """A random spanning tree on shuffled chip ids plus random extra links, 1-3 parallel each."""
    n = draw(st.integers(1, 12))
    order = draw(st.permutations(range(n)))
    g = nx.MultiGraph()
    g.add_nodes_from(range(n))
    for i in range(1, n):
        g.add_edge(order[i], order[draw(st.integers(0, i - 1))], links=draw(st.integers(1, 3)))
    if n > 1:
        pairs = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(
            lambda p: p[0] != p[1]
        )
        for a, b in draw(st.lists(pairs, max_size=2 * n)):
            g.add_edge(a, b)  # a MultiGraph edge without `links` is one link
    return g


@settings(max_examples=60)
@given(connected_graphs())
def test_hops_and_paths_match_networkx(g):
    s = System(WIDE, g, "random")
    chips = range(s.chips)
    expected = dict(nx.all_pairs_shortest_path_length(g))
    for a, b in itertools.product(chips, chips):
        h = s.hops(a, b)
        assert h == expected[a][b] == s.hops(b, a)
        path = s.path(a, b)
        assert path == min(nx.all_shortest_paths(g, a, b))  # lowest chip ids on ties
        assert len(path) == h + 1 and all(
            s.links_between(x, y) for x, y in itertools.pairwise(path)
        )
    for a, b, c in itertools.product(chips, chips, chips):
        assert s.hops(a, c) <= s.hops(a, b) + s.hops(b, c)
    assert s.diameter == (nx.diameter(g) if s.chips > 1 else 0)
    assert s.links == sum(n for _, _, n in g.edges(data="links", default=1))
    assert sum(s.degree(c) for c in chips) == 2 * s.links


def test_queries_name_a_bad_chip():
    s = ring(4, TSP)
    with pytest.raises(ArgumentError, match=r"chip=4 must be a chip id in \[0, 4\)"):
        s.hops(0, 4)
    with pytest.raises(ArgumentError, match="chip=-1"):
        s.path(-1, 2)


# --- user topologies ------------------------------------------------------------------------------

GOOD = """
chips = 4
[[link]]
a = 0
b = 1
links = 2
[[link]]
a = 1
b = 2
[[link]]
a = 3
b = 2
"""


def test_toml_topology(tmp_path):
    path = tmp_path / "line.toml"
    path.write_text(GOOD)
    s = System.from_toml(path, TSP)
    assert s.name == "line" and s.chips == 4 and s.links == 4 and s.diameter == 3
    assert s.links_between(0, 1) == 2 and s.links_between(0, 2) == 0
    d = json.loads(json.dumps(s.to_dict()))
    assert d["edges"] == [[0, 1, 2], [1, 2, 1], [2, 3, 1]] and d["chips"] == 4
    assert s.describe().startswith("line: 4 chips of groq-tsp-v1, 4 C2C links, diameter 3 hops")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[[link]]\na = 0\nb = 1\n", "needs chips = N"),
        ("chips = 0\n", "chips=0 must be a positive integer"),
        ("chips = 2\nnodes = 2\n", "unknown topology key.*nodes; valid keys: chips, link, name"),
        ("chips = 2\nlink = 3\n", "link=3 must be an array of tables"),
        ("chips = 4\n[[link]]\na = 0\nb = 9\n", r"link 0: b=9 must be a chip id in \[0, 4\)"),
        ("chips = 4\n[[link]]\na = 0\n", "link 0: b=None must be a chip id"),
        ("chips = 2\n[[link]]\na = 0\nb = 1\nwidth = 2\n", "link 0: unknown key.*width"),
        ("chips = 2\n[[link]]\na = 1\nb = 1\n", r"link \(1, 1\) joins chip 1 to itself"),
        ("chips = 2\n[[link]]\na = 0\nb = 1\nlinks = 0\n", r"link \(0, 1\): links=0 must be"),
        (
            "chips = 2\n[[link]]\na = 0\nb = 1\n[[link]]\na = 1\nb = 0\n",
            r"link 1 \(a=1, b=0\) repeats link 0",
        ),
        ("chips = 2\n[[link]]\na = 0\nb = 1\nlinks = 17\n", "chip 0 has 17 links, more than"),
        ("chips = 3\n[[link]]\na = 0\nb = 1\n", r"chip\(s\) 2 cannot be reached from chip 0"),
        ("chips = = 2", "is not valid TOML"),
    ],
)
def test_bad_toml_names_the_value(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle) as e:
        System.from_toml(path, TSP)
    assert "\n" not in str(e.value) and "bad.toml" in str(e.value)


def test_missing_topology_file(tmp_path):
    with pytest.raises(ConfigError, match="topology file .* does not exist"):
        System.from_toml(tmp_path / "none.toml", TSP)


@pytest.mark.parametrize(
    "graph, needle",
    [
        (nx.DiGraph([(0, 1)]), "undirected networkx Graph or MultiGraph, not DiGraph"),
        (nx.Graph([(0, 1), (1, 5)]), r"chip id 5 is not in \[0, 3\)"),
        (nx.Graph([("a", "b")]), r"chip id 'a' is not in \[0, 2\)"),
        (nx.empty_graph(0), "at least one chip"),
        (nx.Graph([(0, 1, {"links": 1.5})]), r"link \(0, 1\): links=1.5 must be a positive"),
    ],
)
def test_bad_graphs_name_the_value(graph, needle):
    with pytest.raises(ConfigError, match=needle):
        System(TSP, graph)


def test_multigraph_counts_parallel_links_and_the_graph_is_frozen():
    g = nx.MultiGraph([(0, 1), (0, 1), (1, 2)])
    s = System(TSP, g)
    assert s.links_between(0, 1) == 2 and s.links == 3
    g.add_edge(0, 2)  # the system keeps its own copy
    assert s.links_between(0, 2) == 0
    with pytest.raises(nx.NetworkXError):
        s.graph.add_edge(0, 2)


# --- transfer timing ------------------------------------------------------------------------------


def test_transfer_cycles_examples():
    s = ring(4, TSP)
    # 143 bytes at 14.3 bytes/cycle: 10 cycles after 2 hops of 216 (cut-through)
    assert s.transfer_cycles(143, 2) == 2 * 216 + 10
    assert s.transfer_cycles(143, 2, links=2) == 2 * 216 + 5
    assert s.transfer_cycles(144, 1) == 216 + 11
    assert s.transfer_cycles(0, 3) == 0 and s.transfer_cycles(1000, 0) == 0
    for bad in (
        {"nbytes": -1, "hops": 1},
        {"nbytes": 1, "hops": 1.5},
        {"nbytes": 1, "hops": 1, "links": 0},
    ):
        with pytest.raises(ArgumentError):
            s.transfer_cycles(**bad)


@given(st.integers(1, 10**9), st.integers(1, 10), st.integers(1, 16))
def test_transfer_cycles_model(nbytes, hops, links):
    s = ring(4, TSP)
    t = s.transfer_cycles(nbytes, hops, links)
    assert t == hops * 216 + math.ceil(Fraction(nbytes) / (links * Fraction("14.3")))
    assert s.transfer_cycles(nbytes + 1, hops, links) >= t
    assert s.transfer_cycles(nbytes, hops + 1, links) == t + 216
    assert s.transfer_cycles(nbytes, hops, links + 1) <= t
