"""A system: N chips and the chip-to-chip (C2C) links between them.

    System(hw, graph, name)        any undirected networkx Graph (edge attribute `links`: parallel
                                   physical links, default 1) or MultiGraph (one edge per link)
    System.from_toml(path, hw)     a user's edge list: chips = N and [[link]] a, b, links
    groq_system(chips, hw)         GroqNodes of 8, GroqRacks of 72, a Dragonfly between racks
    fully_connected(n, hw), ring(n, hw), torus2d(rows, cols, hw)

Chips are numbered 0..N-1. A system is validated on construction: chip ids in range, no link from a
chip to itself, every chip reachable, and no chip with more links than `hw.c2c_links`. Link latency
and bandwidth come from the HardwareConfig (`c2c_latency_cycles`, `c2c_bytes_per_cycle`), hop counts
from the topology; `transfer_cycles` combines them.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from pathlib import Path

import networkx as nx
import numpy as np

from sim.errors import ArgumentError, ConfigError, read_toml
from sim.hardware import HardwareConfig

# GroqNode, GroqRack and the Dragonfly between racks (shared/REFERENCE.md, "topology" row:
# "GroqNode = 8 chips fully connected (7 local links), 4 global links per chip; GroqRack = 9 nodes
# = 72 chips; Dragonfly up to 10,440 chips").
NODE_CHIPS = 8
RACK_NODES = 9
RACK_CHIPS = NODE_CHIPS * RACK_NODES
# A chip's 4 global links (those leaving its node), split 2 + 2 (D): 10,440 = 145 racks x 72 chips,
# and 145 racks are fully connected by one link per pair of racks when 144 = 72 x 2 links leave
# each rack; the other 2 x 72 = 144 ports of a rack make 72 links inside it, 2 per pair of nodes.
RACK_LINKS_PER_CHIP = 2  # to other nodes of the chip's rack
DRAGONFLY_LINKS_PER_CHIP = 2  # to other racks
MAX_RACKS = 1 + RACK_CHIPS * DRAGONFLY_LINKS_PER_CHIP  # 145: one link to every other rack


@dataclass(frozen=True, eq=False)
class System:
    """N chips of one HardwareConfig and the C2C links between them. `graph` is normalised to an
    undirected nx.Graph on nodes 0..N-1 whose edge attribute `links` counts parallel links."""

    hw: HardwareConfig
    graph: nx.Graph
    name: str = "custom"

    def __post_init__(self) -> None:
        if not isinstance(self.hw, HardwareConfig):
            raise ConfigError(f"a system's chips are a HardwareConfig, not {self.hw!r}")
        object.__setattr__(self, "graph", nx.freeze(_checked_graph(self.graph, self.hw)))

    # --- construction from a file -------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict, hw: HardwareConfig, name: str = "custom") -> System:
        """{"chips": N, "link": [{"a": 0, "b": 1, "links": 2}, ...], "name": optional}: the
        TOML file's tables. A chip pair appears in one entry; `links` defaults to 1."""
        if not isinstance(values, dict):
            raise ConfigError(f"a topology is a table of chips and links, not {values!r}")
        unknown = sorted(set(values) - {"chips", "link", "name"})
        if unknown:
            raise ConfigError(
                f"unknown topology key(s) {', '.join(unknown)}; valid keys: chips, link, name"
            )
        if "chips" not in values:
            raise ConfigError("a topology needs chips = N, the number of chips")
        chips = values["chips"]
        if not _is_int(chips) or chips < 1:
            raise ConfigError(f"chips={chips!r} must be a positive integer")
        name = values.get("name", name)
        if not isinstance(name, str):
            raise ConfigError(f"name={name!r} must be a string")
        entries = values.get("link", [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError(
                f"link={entries!r} must be an array of tables, [[link]] a = 0, b = 1, links = 1"
            )
        graph = nx.MultiGraph()
        graph.add_nodes_from(range(chips))
        first: dict[frozenset, int] = {}
        for i, entry in enumerate(entries):
            unknown = sorted(set(entry) - {"a", "b", "links"})
            if unknown:
                raise ConfigError(
                    f"link {i}: unknown key(s) {', '.join(unknown)}; valid: a, b, links"
                )
            for end in ("a", "b"):
                chip = entry.get(end)
                if not _is_int(chip) or not 0 <= chip < chips:
                    raise ConfigError(
                        f"link {i}: {end}={chip!r} must be a chip id in [0, {chips}) "
                        f"(chips = {chips})"
                    )
            a, b = entry["a"], entry["b"]
            pair = frozenset((a, b))
            if pair in first:
                raise ConfigError(
                    f"link {i} (a={a}, b={b}) repeats link {first[pair]}: give each pair of chips "
                    "one [[link]] and count parallel links in its `links`"
                )
            first[pair] = i
            graph.add_edge(a, b, links=entry.get("links", 1))
        return cls(hw, graph, name)

    @classmethod
    def from_toml(cls, path: str | Path, hw: HardwareConfig) -> System:
        where = f"topology file {str(path)!r}"
        values = read_toml(path, "topology file", ConfigError)
        try:
            return cls.from_dict(values, hw, Path(path).stem)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    # --- queries ------------------------------------------------------------------------------

    @property
    def chips(self) -> int:
        return self.graph.number_of_nodes()

    @cached_property
    def links(self) -> int:
        """Physical links in the system."""
        return sum(n for _, _, n in self.graph.edges(data="links"))

    def degree(self, chip: int) -> int:
        """Links at `chip`."""
        return self.graph.degree(self._chip(chip), weight="links")

    def links_between(self, a: int, b: int) -> int:
        """Parallel links joining chips a and b directly (0 if none)."""
        edge = self.graph.get_edge_data(self._chip(a), self._chip(b))
        return 0 if edge is None else edge["links"]

    def hops(self, a: int, b: int) -> int:
        """Links a transfer from a to b crosses on a shortest route (0 from a chip to itself)."""
        return int(self._hops[self._chip(a), self._chip(b)])

    def path(self, a: int, b: int) -> list[int]:
        """Chips of the shortest route from a to b, both included; among equally short routes, the
        one through the lowest chip ids (each step takes the lowest neighbour one hop nearer b)."""
        a, b = self._chip(a), self._chip(b)
        route = [a]
        while route[-1] != b:
            here = self._neighbours[route[-1]]
            nearer = here[self._hops[here, b] == self._hops[route[-1], b] - 1]
            route.append(int(nearer.min()))
        return route

    @cached_property
    def diameter(self) -> int:
        """The most hops between any two chips."""
        return int(self._hops.max())

    # --- transfer timing ----------------------------------------------------------------------

    def transfer_cycles(self, nbytes: int, hops: int, links: int = 1) -> int:
        """Cycles from the first byte leaving the source to the last arriving, for `nbytes` over
        `hops` links with `links` parallel links on every hop (their bandwidths add).

        Cut-through and pipelined over the hops: the head of the message reaches the destination
        after hops x c2c_latency_cycles, and the rest follows at the link rate, so the bytes are
        paid for once, not once per hop: hops x latency + ceil(nbytes / (links x bytes per cycle)).
        Nothing crosses a link when nbytes or hops is 0. `c2c_bytes_per_cycle` is taken at its
        decimal value (14.3 bytes/cycle moves 143 bytes in exactly 10 cycles)."""
        for arg, value, lo in (("nbytes", nbytes, 0), ("hops", hops, 0), ("links", links, 1)):
            if not _is_int(value) or value < lo:
                raise ArgumentError(arg, value, f"must be an integer >= {lo}")
        if nbytes == 0 or hops == 0:
            return 0
        rate = links * Fraction(str(self.hw.c2c_bytes_per_cycle))
        return hops * self.hw.c2c_latency_cycles + math.ceil(nbytes / rate)

    # --- reports ------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line for reports."""
        return (
            f"{self.name}: {self.chips:,} chips of {self.hw.name}, {self.links:,} C2C links, "
            f"diameter {self.diameter} hop{'' if self.diameter == 1 else 's'} "
            f"({self.hw.c2c_latency_cycles} cycles, {self.hw.c2c_bytes_per_cycle:g} bytes/cycle "
            "per link)"
        )

    def to_dict(self) -> dict:
        """For JSON: the summary and every link as [a, b, parallel links], a < b, sorted."""
        edges = sorted((min(a, b), max(a, b), n) for a, b, n in self.graph.edges(data="links"))
        return {
            "name": self.name,
            "hw": self.hw.name,
            "chips": self.chips,
            "links": self.links,
            "diameter": self.diameter,
            "edges": [list(e) for e in edges],
        }

    # --- internals ----------------------------------------------------------------------------

    def _chip(self, chip) -> int:
        if not _is_int(chip) or not 0 <= chip < self.chips:
            raise ArgumentError("chip", chip, f"must be a chip id in [0, {self.chips})")
        return int(chip)

    @cached_property
    def _neighbours(self) -> list[np.ndarray]:
        return [np.array(sorted(self.graph[c]), dtype=np.int64) for c in range(self.chips)]

    @cached_property
    def _hops(self) -> np.ndarray:
        return _all_pairs_hops(self._neighbours)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _checked_graph(graph, hw: HardwareConfig) -> nx.Graph:
    """`graph` as a fresh nx.Graph on chips 0..N-1 with `links` on every edge, or the ConfigError
    naming what is wrong and what would be valid."""
    if not isinstance(graph, nx.Graph) or graph.is_directed():
        raise ConfigError(
            f"a topology is an undirected networkx Graph or MultiGraph, not {type(graph).__name__}"
        )
    n = graph.number_of_nodes()
    if n == 0:
        raise ConfigError("a topology needs at least one chip")
    for chip in graph.nodes:
        if not _is_int(chip) or not 0 <= chip < n:
            raise ConfigError(
                f"chip id {chip!r} is not in [0, {n}): the {n} chips of a topology are 0..{n - 1}"
            )
    out = nx.Graph()
    out.add_nodes_from(range(n))
    for a, b, links in graph.edges(data="links", default=1):
        a, b = int(a), int(b)
        if a == b:
            raise ConfigError(f"link ({a}, {b}) joins chip {a} to itself; a link joins two chips")
        if not _is_int(links) or links < 1:
            raise ConfigError(f"link ({a}, {b}): links={links!r} must be a positive integer")
        before = out.get_edge_data(a, b, {"links": 0})["links"]
        out.add_edge(a, b, links=before + int(links))
    for chip, degree in out.degree(weight="links"):
        if degree > hw.c2c_links:
            raise ConfigError(
                f"chip {chip} has {degree} links, more than c2c_links={hw.c2c_links} of "
                f"{hw.name!r}; give it at most {hw.c2c_links} or use a chip with more"
            )
    reached = nx.node_connected_component(out, 0)
    if len(reached) < n:
        cut = [c for c in range(n) if c not in reached]
        more = f" and {len(cut) - 8} more" if len(cut) > 8 else ""
        raise ConfigError(
            f"chip(s) {', '.join(map(str, cut[:8]))}{more} cannot be reached from chip 0; every "
            "chip of a system must be connected"
        )
    return out


def _all_pairs_hops(neighbours: list[np.ndarray]) -> np.ndarray:
    """(N, N) hop counts by breadth-first search from every chip at once. Row i of `reached` is the
    bitset of chips within d hops of i; a step ORs in the rows of i's neighbours, and the new bits
    are the chips at d + 1 hops. Cost: diameter x N^2 / 8 bytes per neighbour, and N^2 hop counts
    kept (measured: 0.01 s for the 576-chip Dragonfly, 0.35 s for 4,104 chips, 2.2 s and 218 MB
    for the 10,440-chip one, 0.65 s for a 64 x 64 torus; 15 s for a 4,096-chip ring, whose
    diameter is 2,048)."""
    n = len(neighbours)
    width = max(len(nb) for nb in neighbours)
    padded = np.repeat(np.arange(n)[:, None], max(width, 1), axis=1)  # a chip pads with itself
    for chip, nb in enumerate(neighbours):
        padded[chip, : len(nb)] = nb
    reached = np.packbits(np.eye(n, dtype=bool), axis=1, bitorder="little")  # (N, ceil(N/8))
    hops = np.zeros((n, n), dtype=np.min_scalar_type(n))
    for d in range(1, n):
        grown = reached.copy()
        for k in range(padded.shape[1]):
            grown |= reached[padded[:, k]]
        new = grown & ~reached
        if not new.any():
            break
        hops[np.unpackbits(new, axis=1, count=n, bitorder="little").view(bool)] = d
        reached = grown
    return hops


# --- topologies -----------------------------------------------------------------------------------


def _count(name: str, value) -> int:
    if not _is_int(value) or value < 1:
        raise ArgumentError(name, value, "must be a positive integer")
    return int(value)


def _add_link(graph: nx.Graph, a: int, b: int) -> None:
    """One more physical link between a and b."""
    graph.add_edge(a, b, links=graph.get_edge_data(a, b, {"links": 0})["links"] + 1)


def fully_connected(n: int, hw: HardwareConfig) -> System:
    """n chips, one link between every pair."""
    n = _count("chips", n)
    graph = nx.complete_graph(n)
    return System(hw, graph, f"fully connected {n}")


def ring(n: int, hw: HardwareConfig) -> System:
    """n chips in a cycle, each linked to the next; a ring of two joins them by two links."""
    n = _count("chips", n)
    graph = nx.empty_graph(n)
    for c in range(n if n > 1 else 0):
        _add_link(graph, c, (c + 1) % n)
    return System(hw, graph, f"ring {n}")


def torus2d(rows: int, cols: int, hw: HardwareConfig) -> System:
    """rows x cols chips, chip r * cols + c, each linked to its four neighbours with wrap-around;
    a dimension of 2 joins its pair twice, a dimension of 1 has no links along it."""
    rows, cols = _count("rows", rows), _count("cols", cols)
    graph = nx.empty_graph(rows * cols)
    for r in range(rows):
        for c in range(cols):
            if cols > 1:
                _add_link(graph, r * cols + c, r * cols + (c + 1) % cols)
            if rows > 1:
                _add_link(graph, r * cols + c, (r + 1) % rows * cols + c)
    return System(hw, graph, f"torus {rows}x{cols}")


def groq_system(chips: int, hw: HardwareConfig) -> System:
    """The smallest Groq system of whole GroqNodes holding `chips`: up to 72 chips, the nodes of
    one rack; beyond, whole GroqRacks (576 chips = 8 racks). Chip r * 72 + k * 8 + i is chip i of
    node k of rack r.

    Wiring (REFERENCE.md "topology" row; the split of the 4 global links is derived, see
    DRAGONFLY_LINKS_PER_CHIP): each node is a full mesh (7 links per chip); each chip has 2 links to
    other nodes of its rack and 2 to other racks, 11 of its `c2c_links` (16 on groq-tsp-v1; the
    row gives no use for the other 5). At both levels every pair of groups (nodes of a rack; racks)
    gets the same number of links, as many as the groups' ports allow: 2 per pair of nodes in a
    full rack (16 in a rack of 2 nodes), 144 // (racks - 1) per pair of racks (1 at the full
    145-rack Dragonfly). A group's ports go round its chips in order, so its links to other groups
    are spread over all its chips. Diameters: 1 hop in a node, 3 in a full rack, 6 across 8 racks, 7
    across 145 (7 x 216 cycles at 900 MHz = 1.7 us; the row says "< 3 us end to end")."""
    chips = _count("chips", chips)
    nodes = -(-chips // NODE_CHIPS)
    racks = 1 if nodes <= RACK_NODES else -(-chips // RACK_CHIPS)
    if racks > MAX_RACKS:
        raise ArgumentError(
            "chips",
            chips,
            f"is more than a Groq Dragonfly holds: at most {MAX_RACKS} racks of {RACK_CHIPS}, "
            f"{MAX_RACKS * RACK_CHIPS:,} chips (REFERENCE.md topology row)",
        )
    per_rack = nodes if racks == 1 else RACK_NODES
    graph = nx.empty_graph(racks * per_rack * NODE_CHIPS)
    node_groups = []
    for r in range(racks):
        rack = [
            list(range((r * per_rack + k) * NODE_CHIPS, (r * per_rack + k + 1) * NODE_CHIPS))
            for k in range(per_rack)
        ]
        for node in rack:
            graph.add_edges_from(((a, b) for a in node for b in node if a < b), links=1)
        _connect_groups(graph, rack, RACK_LINKS_PER_CHIP)
        node_groups.append(sum(rack, []))
    _connect_groups(graph, node_groups, DRAGONFLY_LINKS_PER_CHIP)
    if racks > 1:
        name = f"groq dragonfly of {racks} racks"
    else:
        name = f"groq rack of {nodes} nodes" if nodes > 1 else "groq node"
    return System(hw, graph, name)


def _connect_groups(graph: nx.Graph, groups: list[list[int]], ports_per_chip: int) -> None:
    """Join every pair of equal-sized groups with k = ports // (groups - 1) links, where ports =
    group size x ports_per_chip. Group g reaches group (g + d) % G, d = 1..G-1, through its ports
    (d - 1) * k ... d * k - 1, and port p is on chip p % size of the group: the groups' links to
    each other are spread evenly over their chips, at most ports_per_chip on any chip."""
    count, size = len(groups), len(groups[0])
    if count < 2:
        return
    k = size * ports_per_chip // (count - 1)
    for g in range(count):
        for d in range(1, count):
            h = (g + d) % count
            if h < g:
                continue  # added from h's side
            back = count - d  # h reaches g at offset `back`
            for t in range(k):
                _add_link(
                    graph,
                    groups[g][((d - 1) * k + t) % size],
                    groups[h][((back - 1) * k + t) % size],
                )


def default_system(chips: int, hw: HardwareConfig) -> System:
    """The system a mapping onto `chips` chips gets unless one is given: Groq's wiring where the
    chip has its links (NODE_CHIPS - 1 + RACK_LINKS_PER_CHIP + DRAGONFLY_LINKS_PER_CHIP), else
    every chip linked to every other where the links allow, else a ring."""
    chips = _count("chips", chips)
    if hw.c2c_links >= NODE_CHIPS - 1 + RACK_LINKS_PER_CHIP + DRAGONFLY_LINKS_PER_CHIP:
        return groq_system(chips, hw)
    if chips - 1 <= hw.c2c_links:
        return fully_connected(chips, hw)
    return ring(chips, hw)
