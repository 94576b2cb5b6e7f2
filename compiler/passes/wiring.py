"""Wiring: which chips of the system a stage's tensor-parallel group takes, and which of their
links its all-reduce uses.

A group of G chips (G a power of two) is m blocks of N chips, each block linked pairwise (on a
Groq system a GroqNode: N = 8), N the largest power of two for which every aligned block of the
group's chips is. Its all-reduce (compiler/codegen/tensor.py) runs in *roles*: role i pairs every
chip of the group with one other over a link, both ends sending on it at the same cycles, so that
one rank's instructions serve every chip, each on its own role links (place_links):

    roles 0 .. N-2    chip g with g XOR (i + 1), in its block (the direct all-reduce of a block)
    roles N-1 ..      with m > 1, the exchange between blocks: links between two blocks, each
                      chip on at most one in a role. Every pair of blocks A, B is exchanged in one
                      role, over k of the links between them (k a power of two); a chip with no
                      such link in a role is paired with another of its block (a *dummy* pair).

Block A's chips each hold A's sum S_A when they exchange; a chip weighs what it receives in an
exchange role by `weights` (1 / k for a link carrying a block's sum, 0 for a dummy pair), so that
the sum over A's chips of their weighted receipts is the sum of every other block's S_B: exactly,
since k is a power of two and a dummy's weight is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.errors import ArgumentError
from sim.system import System, default_system


@dataclass(frozen=True)
class Wiring:
    """A group's chips and its all-reduce's links (see the module docstring)."""

    chips: tuple[int, ...]  # rank g -> the system's chip
    block: int  # N: chips per block
    links: np.ndarray  # (L, 2) ranks a < b of every physical link among the group, one row each
    role_link: np.ndarray  # (G, roles) rank g's link (a row of `links`) in each role
    weights: np.ndarray  # (G, exchange roles) float32: what rank g's receipts in each weigh

    @property
    def size(self) -> int:
        return len(self.chips)

    @property
    def blocks(self) -> int:
        return self.size // self.block

    @property
    def exchanges(self) -> int:
        """Roles of the exchange between blocks (0 when the group is one block)."""
        return self.weights.shape[1]

    def shape(self) -> tuple[int, int]:
        """What a rank's instructions depend on: (chips per block, exchange roles)."""
        return self.block, self.exchanges

    def system_links(self, system_rows: dict[tuple[int, int], list[int]]) -> np.ndarray:
        """(G, roles) the system's link (a row index of `system_rows`: (chip a, chip b), a < b ->
        its parallel links' rows) of each rank's role."""
        nth = np.zeros(len(self.links), np.int64)  # which of a pair's parallel links a row is
        seen: dict[tuple[int, int], int] = {}
        for i, (a, b) in enumerate(self.links.tolist()):
            nth[i] = seen.get((a, b), 0)
            seen[(a, b)] = nth[i] + 1
        out = np.zeros(self.role_link.shape, np.int64)
        for g in range(self.size):
            for i, row in enumerate(self.role_link[g].tolist()):
                a, b = (self.chips[r] for r in self.links[row])
                out[g, i] = system_rows[(min(a, b), max(a, b))][nth[row]]
        return out


def _block_size(system: System, chips: list[int]) -> int:
    """The largest power of two N dividing len(chips) whose aligned blocks are linked pairwise."""
    n = len(chips)
    while n > 1:
        if all(
            system.links_between(chips[a], chips[b])
            for s in range(0, len(chips), n)
            for a in range(s, s + n)
            for b in range(a + 1, s + n)
        ):
            return n
        n //= 2
    return 1


def group_wiring(
    system: System, chips: list[int], what: str = "group", exchanges: int | None = None
) -> Wiring:
    """The wiring of a group on `chips` (rank g on chips[g]), its exchange in `exchanges` roles
    if given (roles beyond its own pair every chip with another of its block: dummies);
    ArgumentError naming the chips when the system cannot carry its all-reduce."""
    G = len(chips)
    if G & (G - 1):
        raise ArgumentError("chips", G, "a group's size must be a power of two")
    N = _block_size(system, chips)
    rows: list[tuple[int, int]] = []
    first: dict[tuple[int, int], int] = {}
    for a in range(G):
        for b in range(a + 1, G):
            for _ in range(system.links_between(chips[a], chips[b])):
                first.setdefault((a, b), len(rows))
                rows.append((a, b))
    links = np.array(rows, np.int64).reshape(-1, 2)
    if N == 1 and G > 1:
        raise ArgumentError(
            "mapping",
            what,
            f"puts chips {chips[0]}..{chips[-1]} in a {G}-chip group, but no link joins chips "
            f"{chips[0]} and {chips[1]}; a group's all-reduce needs blocks of chips linked "
            "pairwise (a node)",
        )
    xor = [[first[(min(g, g ^ j), max(g, g ^ j))] for j in range(1, N)] for g in range(G)]
    roles, weights = _exchanges(system, chips, N, links, first, what) if N < G else ([], [])
    while exchanges is not None and len(roles) < exchanges:
        roles.append([first[(g & ~1, g | 1)] for g in range(G)])
        weights.append([0.0] * G)
    role_link = np.array([xor[g] + [r[g] for r in roles] for g in range(G)], np.int64)
    w = np.array(weights, np.float32).T.reshape(G, len(roles))
    return Wiring(tuple(chips), N, links, role_link.reshape(G, -1), w)


def _exchanges(system, chips, N, links, first, what):
    """The exchange roles between the m blocks: per role, each rank's link row and weight."""
    G = len(chips)
    m = G // N
    between: dict[tuple[int, int], list[int]] = {}  # (block A, block B), A < B -> link rows
    for row, (a, b) in enumerate(links.tolist()):
        if a // N != b // N:
            between.setdefault((a // N, b // N), []).append(row)
    todo = [(A, B) for A in range(m) for B in range(A + 1, m)]
    for A, B in todo:
        if not between.get((A, B)):
            raise ArgumentError(
                "mapping",
                what,
                f"puts chips {chips[A * N]}..{chips[A * N + N - 1]} and "
                f"{chips[B * N]}..{chips[B * N + N - 1]} in one {G}-chip group, but no link joins "
                "them; the group's all-reduce exchanges between every two of its nodes",
            )
    roles, weights = [], []
    while todo:
        link_of = [-1] * G
        weight = [0.0] * G
        left = []
        for A, B in todo:
            chosen, ends = [], set()
            for row in between[(A, B)]:
                a, b = (int(r) for r in links[row])
                if link_of[a] < 0 and link_of[b] < 0 and not {a, b} & ends:
                    chosen.append(row)
                    ends |= {a, b}
            k = 1 << (len(chosen).bit_length() - 1) if chosen else 0
            if k < 2:  # an odd count would leave a block an odd number of chips to pair
                left.append((A, B))
                continue
            for row in chosen[:k]:
                for r in links[row]:
                    link_of[int(r)], weight[int(r)] = row, 1.0 / k
        if len(left) == len(todo):
            A, B = left[0]
            raise ArgumentError(
                "mapping",
                what,
                f"puts chips {chips[A * N]}..{chips[A * N + N - 1]} and "
                f"{chips[B * N]}..{chips[B * N + N - 1]} in one {G}-chip group, but fewer than "
                "two links join them where each chip has one; the all-reduce's exchange between "
                "two nodes takes an even number of links",
            )
        for blk in range(m):  # dummies: the block's chips without an exchange in this role
            idle = [g for g in range(blk * N, blk * N + N) if link_of[g] < 0]
            for a, b in zip(idle[::2], idle[1::2], strict=True):
                link_of[a] = link_of[b] = first[(a, b)]
        roles.append(link_of)
        weights.append(weight)
        todo = left
    return roles, weights


def place_groups(system: System, size: int, stages: int) -> list[list[int]] | None:
    """Each stage's `size` chips: consecutive chips where every stage's group can be wired (the
    chips s * size .. s * size + size - 1), else whole blocks of consecutive chips, a stage taking
    the next run of blocks that wires and skipping a block where it does not (on a Groq system:
    the GroqNodes of a rack, never two racks). None when the system runs out of chips."""
    n = system.chips
    if size * stages <= n:
        try:
            plain = [list(range(s * size, (s + 1) * size)) for s in range(stages)]
            for group in plain:
                group_wiring(system, group)
            return plain
        except ArgumentError:
            pass
    N = _block_size(system, list(range(size)))
    if N == 1:  # no blocks of linked chips to walk
        return None
    m = size // N
    out, start = [], 0
    while len(out) < stages:
        if start + size > n:
            return None
        group = list(range(start, start + size))
        try:
            group_wiring(system, group)
        except ArgumentError:
            start += N
            continue
        out.append(group)
        start += m * N
    return out


def stage_groups(mapping, system: System, given: bool) -> tuple[System, list[list[int]]]:
    """The system and each pipeline stage's chips (place_groups) for a mapping: a default
    system (not `given`) grows, a rack at a time on a Groq system, until its groups fit."""
    size, stages = mapping.tp * mapping.ep, mapping.pp
    if size == 1:
        return system, [[s] for s in range(stages)]
    while True:
        groups = place_groups(system, size, stages)
        if groups is not None:
            return system, groups
        group_wiring(system, list(range(size)), str(mapping))  # its own error, if that is why
        if given or system.chips >= 4 * size * stages:
            fit = 0
            while place_groups(system, size, fit + 1) is not None:
                fit += 1
            raise ArgumentError(
                "mapping",
                str(mapping),
                f"needs {stages} groups of {size} chips, each of whole blocks of chips linked "
                f"pairwise and linked to each other, but {system.describe()} has room for {fit}",
            )
        system = default_system(system.chips + 1, system.hw)


def wire_stages(mapping, system: System, given: bool):
    """(system, each stage's chips, each stage's Wiring or None for groups of one chip): the
    stages placed (stage_groups) and their groups wired, every stage's exchange between blocks
    in as many roles (one program serves every stage of a shape). Raises what either raises."""
    system, groups = stage_groups(mapping, system, given)
    if mapping.tp * mapping.ep == 1:
        return system, groups, None
    wirings = [group_wiring(system, g, str(mapping)) for g in groups]
    most = max(w.exchanges for w in wirings)
    if any(w.exchanges < most for w in wirings):
        wirings = [group_wiring(system, g, str(mapping), most) for g in groups]
    return system, groups, wirings
