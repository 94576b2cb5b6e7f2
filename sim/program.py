"""A Program: everything a chip needs to run, in one object that saves to and loads from one file.

    Program := hw, instructions (one structured array; a view per chip and queue),
               permute tables, symbols (where each input/param/const/output vector lives, on
               which chip), constant values, source descriptions, predicted cycles, metadata,
               links (the chip pairs SEND and RECV name: link L joins chips links[L]),
               bodies and their placements (below)

Bodies: the chips of a large system run the same instructions many times over (a pipeline
stage's layers, on every chip of every stage of one shape), each chip with a few of its own
around them (the transfers that bring its input and take its output). A Body holds such
instructions once, as chip 0's, dispatched from cycle 0 by their own delays and IFETCHes, naming
local links 0..links-1; a placement puts it on a chip:

    placement p = (chip, body, shift): the chip runs the body `shift` cycles later, each SEND and
                  RECV on the program's link place_links[p, local link]; on queue q the body's
                  instructions come after the chip's first place_at[p, q] instructions of
                  `instrs` (its own), the first of them with delay place_heads[p, q]

so `instrs` holds what is each chip's own. `expand()` writes every placement out: the same
Program as one instruction array, which is what it means. A body whose queue fetches
instructions delivers one past its end there (its last IFETCH brings the chip's next own
instruction), so a chip has an own instruction after the body on each such queue: where it has
none of its own, a NOTIFY of barrier CLOSING_BARRIER + queue, which nothing waits on.

Tensor layout on chip (the machine's convention, shared by compiler and host): a tensor of shape
(..., n) is rows = prod(...) rows of ceil(n / lanes) vectors, row-major; element (r, c) is lane
c % lanes of vector r * tiles + c // lanes. A tensor whose last dim is 1 (or a scalar) is *splat*:
each row is one vector with the value in every lane, so broadcasting it along lanes is free.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sim.errors import LpuError, ProgramFormatError, read_file
from sim.hardware import HardwareConfig
from sim.isa import (
    DTYPE_BY_NAME,
    DTYPE_WIDTHS,
    INSTR_DTYPE,
    Op,
    disassemble_one,
    n_queues,
    queue_name,
    repetitions,
)

FORMAT_MAGIC = "lpusim-program"
# 2: a MATMUL's `row` is its tile's extent, which the executors check (version 1 files have 0);
# 3: the instruction field `period` (cycles between repetitions);
# 4: no cycles: each queue's `delay` (NOP) fields, SYNC/NOTIFY, and the scheduler's predictions;
# 5: chip-to-chip links (the `links` array, SEND/RECV) and each symbol's chip;
# 6: a symbol's host shape where it differs (a KV cache with heads packed side by side);
# 7: bodies and their placements, symbols' arrays stored once however many share them.
FORMAT_VERSION = 7
# The barrier a NOTIFY closing a body's queue notifies (plus the queue): no SYNC waits on it.
CLOSING_BARRIER = 1 << 20
# A placement of a body: the chip that runs it, which body, and how many cycles later.
PLACE_DTYPE = np.dtype([("chip", np.int32), ("body", np.int32), ("shift", np.int64)])


# --- tensor layout --------------------------------------------------------------------------------


def tensor_layout(shape: tuple[int, ...], lanes: int) -> tuple[int, int, bool]:
    """(rows, vectors per row, splat) of a tensor of `shape` on a chip with `lanes` lanes."""
    n = shape[-1] if shape else 1
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    if n == 1:
        return rows, 1, True
    return rows, -(-n // lanes), False


def pack_tensor(values: np.ndarray, lanes: int) -> np.ndarray:
    """Host -> chip: (vectors, lanes) float32 in the tensor layout; padding lanes are 0."""
    values = np.asarray(values)
    rows, tiles, splat = tensor_layout(values.shape, lanes)
    flat = values.astype(np.float32).reshape(rows, -1)
    if splat:
        return np.repeat(flat, lanes, axis=1)
    out = np.zeros((rows, tiles * lanes), np.float32)
    out[:, : flat.shape[1]] = flat
    return out.reshape(rows * tiles, lanes)


def unpack_tensor(vectors: np.ndarray, shape: tuple[int, ...], lanes: int) -> np.ndarray:
    """Chip -> host: the inverse of `pack_tensor` (float32)."""
    rows, tiles, splat = tensor_layout(shape, lanes)
    if splat:
        return vectors[:, 0].reshape(shape)
    n = shape[-1]
    return vectors.reshape(rows, tiles * lanes)[:, :n].reshape(shape)


def _intervals(ins: np.ndarray, symbols) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key, lo, hi): the words [lo, hi) of key = chip * 65536 + slice that `ins` read, write
    or fetch from, and `symbols` hold."""
    mem = np.isin(ins["op"], [int(Op.READ), int(Op.WRITE), int(Op.IFETCH)])
    r = ins[mem & (ins["repeat"] > 0)]
    width = np.where(r["op"] == int(Op.IFETCH), 1, DTYPE_WIDTHS[r["dtype"]])
    # A run of consecutive words (stride 1, or a single repetition) is one interval; any other
    # stride is taken word by word.
    run = (r["stride"] == 1) | (r["repeat"] == 1)
    parts = [(r["chip"][run], r["slice"][run], r["addr"][run], r["repeat"][run], width[run])]
    i, j = repetitions(r[~run])
    other = r[~run]
    addrs = other["addr"].astype(np.int64)[i] + j * other["stride"].astype(np.int64)[i]
    parts.append((other["chip"][i], other["slice"][i], addrs, np.ones(len(i)), width[~run][i]))
    for sym in symbols:
        w = DTYPE_WIDTHS[DTYPE_BY_NAME[sym.dtype]]
        n = len(sym.addrs)
        parts.append((np.full(n, sym.chip), sym.slices, sym.addrs, np.ones(n), np.full(n, w)))
    keys, lo, hi = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for chip, slices, addrs, length, width in parts:
        chip, slices = np.asarray(chip, np.int64), np.asarray(slices, np.int64)
        addrs, length = np.asarray(addrs, np.int64), np.asarray(length, np.int64)
        for m in range(int(width.max()) if len(width) else 0):
            k = m < width
            keys.append(chip[k] * 65536 + slices[k] + m)
            lo.append(addrs[k])
            hi.append(addrs[k] + length[k])
    return np.concatenate(keys), np.concatenate(lo), np.concatenate(hi)


def _merge(keys: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """The union of the intervals [lo, hi) of each key as disjoint ones, sorted by (key, lo)."""
    order = np.lexsort((lo, keys))
    keys, lo, hi = keys[order], lo[order], hi[order]
    if not len(keys):
        return keys, lo, hi
    span = int(hi.max()) + 1
    reach = np.maximum.accumulate(keys * span + hi)  # the furthest end so far, key by key
    before = np.r_[-1, reach[:-1]]
    new = keys * span + lo > before  # starts past everything before it: a new interval
    group = np.cumsum(new) - 1
    end = np.zeros(int(group[-1]) + 1, np.int64)
    np.maximum.at(end, group, keys * span + hi)
    return keys[new], lo[new], end - keys[new] * span


def _covered(keys: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> int:
    """Words in the union of the intervals [lo, hi) of each key (a chip's slice)."""
    _, lo, hi = _merge(keys, lo, hi)
    return int((hi - lo).sum())


def _rank_in_group(key: np.ndarray) -> np.ndarray:
    """Each element's place among the earlier elements with its key (0 for the first)."""
    order = np.argsort(key, kind="stable")
    k = key[order]
    start = np.r_[0, np.flatnonzero(k[1:] != k[:-1]) + 1] if len(k) else np.zeros(0, np.int64)
    first = np.repeat(start, np.diff(np.r_[start, len(k)]))
    rank = np.empty(len(key), np.int64)
    rank[order] = np.arange(len(key)) - first
    return rank


def _queue_sizes(ins: np.ndarray, queues: int) -> np.ndarray:
    """(queues,) instructions on each queue."""
    return np.bincount(ins["queue"].astype(np.int64), minlength=queues)[:queues]


def pack_heads(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Host -> chip for a tensor stored with heads one after another: (A, *mid, B) -> `shape` =
    (ceil(A*B/W), *mid, W), element (a, ..., b) at row (a*B + b) // W, element (a*B + b) % W;
    the rest 0."""
    values = np.asarray(values)
    a, b, width = values.shape[0], values.shape[-1], shape[-1]
    flat = np.moveaxis(values, 0, -2).reshape(*values.shape[1:-1], a * b)  # (*mid, A*B)
    padded = np.zeros((*flat.shape[:-1], shape[0] * width), values.dtype)
    padded[..., : a * b] = flat
    return np.moveaxis(padded.reshape(*flat.shape[:-1], shape[0], width), -2, 0)


def unpack_heads(values: np.ndarray, host_shape: tuple[int, ...]) -> np.ndarray:
    """Chip -> host: the inverse of `pack_heads`."""
    values = np.asarray(values)
    a, b = host_shape[0], host_shape[-1]
    flat = np.moveaxis(values, 0, -2).reshape(*values.shape[1:-1], -1)[..., : a * b]
    return np.moveaxis(flat.reshape(*flat.shape[:-1], a, b), -2, 0)


# --- the program --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Symbol:
    """A tensor the host loads or reads back: where each of its vectors lives."""

    name: str
    kind: str  # "param" | "input" | "const" | "output"
    shape: tuple[int, ...]
    dtype: str  # NumPy dtype name of the element type on chip
    slices: np.ndarray  # (vectors,) int32: base slice of each vector's slice group
    addrs: np.ndarray  # (vectors,) int32: address in those slices
    vids: np.ndarray  # (vectors,) int64: the logical vector id the checker expects there
    chip: int = 0  # the chip it is preloaded on (param, input, const) or read back from (output)
    # The host's shape where it is not `shape`: heads side by side (pack_heads), as the compiler
    # stores a KV cache whose heads are narrower than a vector. None: the host's is `shape`.
    host_shape: tuple[int, ...] | None = None

    def but(self, **changes) -> Symbol:
        """This symbol with `changes` (fields by name): dataclasses.replace without its look at
        the fields each call (a pipeline of many chips renames tens of thousands)."""
        unknown = set(changes) - set(self.__dict__)
        if unknown:
            raise TypeError(f"Symbol has no fields {sorted(unknown)}")
        new = object.__new__(Symbol)
        new.__dict__.update(self.__dict__, **changes)
        return new

    @property
    def host(self) -> tuple[int, ...]:
        """The shape the host gives and gets back."""
        return self.shape if self.host_shape is None else self.host_shape

    def to_chip(self, values: np.ndarray) -> np.ndarray:
        """Host values in the layout of `shape`."""
        return values if self.host_shape is None else pack_heads(values, self.shape)

    def to_host(self, values: np.ndarray) -> np.ndarray:
        """Values of `shape` in the host's layout."""
        return values if self.host_shape is None else unpack_heads(values, self.host_shape)


@dataclass(frozen=True)
class Body:
    """Instructions several chips run alike: chip 0's, dispatched from cycle 0 by their own
    delays and IFETCHes, SENDs and RECVs on local links 0..links-1; with the scheduler's cycle
    of each (None: nothing to check)."""

    instrs: np.ndarray
    predicted: np.ndarray | None
    links: int = 0


@dataclass(frozen=True)
class Program:
    hw: HardwareConfig
    instrs: np.ndarray  # INSTR_DTYPE; each queue's instructions in dispatch order
    tables: np.ndarray  # (tables, lanes) int32 lane permutations for SXM PERMUTE
    symbols: tuple[Symbol, ...]
    consts: dict[str, np.ndarray]  # values of the "const" symbols
    sources: tuple[str, ...]  # instruction `src` -> the graph op it came from
    predicted_cycles: int
    words_used: int  # highest address used in any slice, plus one
    chips: int = 1
    meta: dict = field(default_factory=dict)
    # The scheduler's cycle for each instruction, checked against the queues' (sim/icu.py); None:
    # nothing to check (a hand-written program).
    predicted: np.ndarray | None = None
    # (links, 2) int32: the two chips each C2C link joins (sim/isa.py, "Chip-to-chip links").
    links: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))
    # Bodies and where they are placed (the module's docstring): PLACE_DTYPE (placements,);
    # (placements, most links of a body) int32; (placements, queues) int32 and int64.
    bodies: tuple[Body, ...] = ()
    placements: np.ndarray = field(default_factory=lambda: np.zeros(0, PLACE_DTYPE))
    place_links: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int32))
    place_at: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int32))
    place_heads: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))

    def __post_init__(self) -> None:
        links = np.asarray(self.links)
        if links.ndim != 2 or links.shape[1] != 2 or not np.issubdtype(links.dtype, np.integer):
            raise ValueError(
                f"links must be an integer (links, 2) array, not {links.dtype}{list(links.shape)}"
            )
        links = links.astype(np.int32)
        bad = np.flatnonzero(
            (links < 0).any(axis=1)
            | (links >= self.chips).any(axis=1)
            | (links[:, 0] == links[:, 1])
        )
        if len(bad):
            a, b = (int(x) for x in links[bad[0]])
            raise ValueError(
                f"link {int(bad[0])} joins chip {a} and chip {b}: a link joins two different chips "
                f"of the program's 0..{self.chips - 1}"
            )
        object.__setattr__(self, "links", links)
        self._check_placements()
        for sym in self.symbols:
            if not 0 <= sym.chip < self.chips:
                raise ValueError(
                    f"symbol {sym.name!r} is on chip {sym.chip}; the program's chips are "
                    f"0..{self.chips - 1}"
                )

    def _check_placements(self) -> None:
        pl = np.asarray(self.placements)
        if pl.dtype != PLACE_DTYPE or pl.ndim != 1:
            raise ValueError(f"placements must be a 1-D array of {PLACE_DTYPE}, not {pl.dtype}")
        n, queues = len(pl), n_queues(self.hw)
        if not n:
            return
        most = max((b.links for b in self.bodies), default=0)
        for name, shape in (("place_links", (n, most)), ("place_at", (n, queues)),
                            ("place_heads", (n, queues))):  # fmt: skip
            if tuple(np.shape(getattr(self, name))) != shape:
                raise ValueError(
                    f"{name} has shape {np.shape(getattr(self, name))}; {n} placements need {shape}"
                )
        bad = np.flatnonzero((pl["chip"] < 0) | (pl["chip"] >= self.chips))
        if len(bad):
            raise ValueError(
                f"placement {int(bad[0])} is on chip {int(pl['chip'][bad[0]])}; the program's "
                f"chips are 0..{self.chips - 1}"
            )
        bad = np.flatnonzero((pl["body"] < 0) | (pl["body"] >= len(self.bodies)))
        if len(bad):
            raise ValueError(
                f"placement {int(bad[0])} places body {int(pl['body'][bad[0]])}; the program has "
                f"{len(self.bodies)} bodies"
            )
        if len(np.unique(pl["chip"])) != n:
            raise ValueError("a chip has more than one placement; place one body a chip")
        for p in range(n):
            ln = self.place_links[p, : self.bodies[int(pl["body"][p])].links]
            if ((ln < 0) | (ln >= len(self.links))).any():
                raise ValueError(
                    f"placement {p} maps a body's links onto {ln.tolist()}; the program's links "
                    f"are 0..{len(self.links) - 1}"
                )

    @property
    def placed(self) -> bool:
        """Whether some of its instructions are bodies placed on chips (see `expand`)."""
        return len(self.placements) > 0

    def instruction_count(self) -> int:
        """Instructions of every chip, a placed body's counted on each of its chips."""
        body = np.array([len(b.instrs) for b in self.bodies] or [0], np.int64)
        return len(self.instrs) + int(body[self.placements["body"]].sum())

    def vector_instruction_count(self) -> int:
        """Instructions counted once per repetition, of every chip."""
        reps = [int(np.maximum(b.instrs["repeat"], 0).sum()) for b in self.bodies] or [0]
        placed = int(np.asarray(reps, np.int64)[self.placements["body"]].sum())
        return int(np.maximum(self.instrs["repeat"], 0).sum()) + placed

    def expand(self) -> Program:
        """The same program with every placement written out on its chip: one instruction
        array (chip by chip, queue by queue, in each queue's order), no bodies."""
        if not self.placed:
            return self
        own, queues = self.instrs, n_queues(self.hw)
        key = own["chip"].astype(np.int64) * queues + own["queue"].astype(np.int64)
        rank = _rank_in_group(key)  # each own instruction's place in its queue
        place_of = np.full(self.chips, -1, np.int64)
        place_of[self.placements["chip"]] = np.arange(len(self.placements))
        p_own = place_of[own["chip"].astype(np.int64)]
        mine = np.flatnonzero(p_own >= 0)
        if len(mine):  # those after a body's place in their queue move past its instructions
            pp, qq = p_own[mine], own["queue"][mine].astype(np.int64)
            sizes = np.stack([_queue_sizes(b.instrs, queues) for b in self.bodies])
            n_body = sizes[self.placements["body"][pp].astype(np.int64), qq]
            after = rank[mine] >= self.place_at[pp, qq]
            rank[mine[after]] += n_body[after]
        parts, keys, ranks, preds = [own], [key], [rank], [self.predicted]
        for p, (chip, b, shift) in enumerate(self.placements.tolist()):
            body = self.bodies[b]
            ins = body.instrs.copy()
            ins["chip"] = chip
            c2c = (ins["op"] == int(Op.SEND)) | (ins["op"] == int(Op.RECV))
            ins["table"][c2c] = self.place_links[p][ins["table"][c2c].astype(np.int64)]
            q = ins["queue"].astype(np.int64)
            r = _rank_in_group(q)
            ins["delay"][r == 0] = self.place_heads[p][q[r == 0]]
            parts.append(ins)
            keys.append(chip * queues + q)
            ranks.append(r + self.place_at[p][q])
            preds.append(None if body.predicted is None else body.predicted + shift)
        order = np.lexsort((np.concatenate(ranks), np.concatenate(keys)))
        predicted = None
        if all(x is not None for x in preds):
            predicted = np.concatenate(preds)[order]
        return replace(
            self,
            instrs=np.take(np.concatenate(parts), order),
            predicted=predicted,
            bodies=(),
            placements=np.zeros(0, PLACE_DTYPE),
            place_links=np.zeros((0, 0), np.int32),
            place_at=np.zeros((0, 0), np.int32),
            place_heads=np.zeros((0, 0), np.int64),
        )

    def symbol(self, name: str) -> Symbol:
        for s in self.symbols:
            if s.name == name:
                return s
        raise KeyError(f"no symbol {name!r}; symbols: {', '.join(s.name for s in self.symbols)}")

    def symbols_of(self, kind: str) -> list[Symbol]:
        return [s for s in self.symbols if s.kind == kind]

    def resident(self, inputs: dict, functional: bool):
        """(symbol, values or None) for each tensor in SRAM before cycle 0 (parameters, inputs,
        constants), checking the host's inputs: functional runs need every one of them."""
        for sym in self.symbols:
            if sym.kind == "output":
                continue
            if sym.kind == "const":
                values = self.consts[sym.name]
            elif sym.name in inputs:
                values = np.asarray(inputs[sym.name])
                if tuple(values.shape) != tuple(sym.host):
                    raise ValueError(
                        f"input {sym.name!r} has shape {values.shape}; the program needs {sym.host}"
                    )
                values = sym.to_chip(values)
            elif functional:
                raise ValueError(
                    f"functional simulation needs input {sym.name!r} {sym.dtype}{list(sym.host)}"
                )
            else:
                values = None
            yield sym, values

    def queue(self, chip: int, q: int) -> np.ndarray:
        """The instruction queue of one functional unit, in issue order."""
        if self.placed:
            return self.expand().queue(chip, q)
        sel = (self.instrs["chip"] == chip) & (self.instrs["queue"] == q)
        return self.instrs[sel]

    def sram_bytes_used(self) -> int:
        """Bytes of SRAM the program uses: every word a symbol holds or an instruction reads,
        writes or fetches from (each word a slice's `lanes` bytes), counted once per chip."""
        if self.placed:
            return self._placed_sram_words() * self.hw.lanes
        keys, lo, hi = _intervals(self.instrs, self.symbols)
        return _covered(keys, lo, hi) * self.hw.lanes if len(keys) else 0

    def _placed_sram_words(self) -> int:
        """sram_bytes_used's words without writing the bodies out: each chip's body's and
        symbols' words (once for the chips that have the same, by identity), and the words of
        its own instructions that they do not hold."""
        pl, own = self.placements, self.instrs
        place_of = {int(ch): p for p, ch in enumerate(pl["chip"].tolist())}
        by_chip: dict[int, list] = {}
        for sym in self.symbols:
            by_chip.setdefault(sym.chip, []).append(sym)
        chip = own["chip"].astype(np.int64)
        alone = [c for c in range(self.chips) if c not in place_of]
        words = 0
        if alone:
            sel = np.isin(chip, alone)
            syms = [s for c in alone for s in by_chip.get(c, ())]
            keys, lo, hi = _intervals(own[sel], syms)
            words += _covered(keys, lo, hi) if len(keys) else 0
        bodies = [_intervals(b.instrs, ()) for b in self.bodies]
        merged: dict[tuple, tuple] = {}
        for c, p in place_of.items():
            syms = by_chip.get(c, [])
            k = int(pl["body"][p])
            group = (k, *sorted((id(s.slices), id(s.addrs), s.dtype) for s in syms))
            if group not in merged:
                here = [replace(s, chip=0) for s in syms]
                sk, slo, shi = _intervals(np.zeros(0, INSTR_DTYPE), here)
                bk, blo, bhi = bodies[k]
                merged[group] = _merge(np.r_[bk, sk], np.r_[blo, slo], np.r_[bhi, shi])
            mk, mlo, mhi = merged[group]
            words += int((mhi - mlo).sum())
            mine = own[chip == c].copy()
            mine["chip"] = 0
            ok, olo, ohi = _intervals(mine, ())
            cells = np.unique(np.concatenate(
                [k * (1 << 32) + np.arange(a, z) for k, a, z in zip(ok, olo, ohi, strict=True)]
                or [np.zeros(0, np.int64)]))  # fmt: skip
            start = mk * (1 << 32) + mlo
            i = np.searchsorted(start, cells, "right") - 1
            held = (i >= 0) & (cells < start[np.maximum(i, 0)] + (mhi - mlo)[np.maximum(i, 0)])
            words += int((~held).sum())
        return words

    def source(self, src: int) -> str:
        return self.sources[src] if 0 <= src < len(self.sources) else "?"

    @property
    def content_hash(self) -> str:
        h = hashlib.sha256()
        h.update(self.hw.hash.encode())
        h.update(self.instrs.tobytes())
        if self.predicted is not None:
            h.update(self.predicted.tobytes())
        h.update(self.tables.tobytes())
        if len(self.links):  # a one-chip program hashes as before links existed
            h.update(b"links" + self.links.tobytes())
        for b in self.bodies:
            h.update(b"body%d" % b.links + b.instrs.tobytes())
            if b.predicted is not None:
                h.update(b.predicted.tobytes())
        if self.placed:
            for a in (self.placements, self.place_links, self.place_at, self.place_heads):
                h.update(np.ascontiguousarray(a).tobytes())
        for s in self.symbols:
            on = f"@{s.chip}" if s.chip else ""
            host = "" if s.host_shape is None else f"<-{s.host_shape}"
            h.update(f"{s.name}{s.kind}{s.shape}{s.dtype}{on}{host}".encode())
            h.update(s.slices.tobytes() + s.addrs.tobytes())
        return h.hexdigest()[:16]

    # --- listing -----------------------------------------------------------------------------

    def disassemble(self, limit: int | None = None) -> str:
        """Readable listing: one line per instruction, grouped by chip and queue (bodies written
        out on their chips)."""
        if self.placed:
            return self.expand().disassemble(limit)
        hw = self.hw
        lines = [
            f"; program {self.content_hash} for {hw.name} (hw {hw.hash}), {self.chips} chip(s)",
            f"; predicted cycles {self.predicted_cycles}, {len(self.instrs)} instructions",
        ]
        for b in self.meta.get("blocks", ()):
            # A replayed block is the same instructions at a later cycle (and, for a layer's
            # weights and cache, a shifted address band).
            lines.append(
                f"; block {b['name']}: cycles {b['first_cycle']}..{b['first_cycle'] + b['cycles']}"
                f", {b['instructions']} instructions, addresses +{b['addr_shift_words']} words"
            )
        for k, (a, b) in enumerate(self.links.tolist()):
            lines.append(f"; link {k}: chip {a} <-> chip {b}")
        for s in self.symbols:
            on = f" on chip {s.chip}" if self.chips > 1 else ""
            lines.append(
                f"; {s.kind:6s} {s.name} {s.dtype}{list(s.shape)} {len(s.addrs)} vectors{on}"
            )
        lines.append("; columns: dispatch cycle, +delay (cycles since the queue's previous one)")
        if self.predicted is not None:
            cycles = self.predicted
        else:
            from sim.engine.icu import dispatch_cycles  # the engine builds on this module

            cycles = dispatch_cycles(hw, self.instrs)[0]  # the queues' own timing (-1: never)
        shown = 0
        for chip in range(self.chips):
            for q in range(n_queues(hw)):
                sel = np.flatnonzero((self.instrs["chip"] == chip) & (self.instrs["queue"] == q))
                if not len(sel):
                    continue
                lines.append(f"chip{chip}.{queue_name(hw, q)}:")
                for i in sel:
                    if limit is not None and shown >= limit:
                        lines.append(f"; ... {len(self.instrs) - shown} more")
                        return "\n".join(lines)
                    ins = self.instrs[i]
                    text = disassemble_one(hw, ins)
                    lines.append(
                        f"  {int(cycles[i]):>8d} +{int(ins['delay']):<6d} {text:<60s} ; "
                        f"{self.source(int(ins['src']))}"
                    )
                    shown += 1
        return "\n".join(lines)

    # --- one file ----------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """One compressed NumPy archive: a JSON header and the arrays. The header's `digest`
        covers every header field and every array, so an edited or corrupted file is refused.
        Symbols that share their arrays (a tensor's copies on many chips) store them once."""
        data: dict[tuple, int] = {}  # (ids of a symbol's arrays) -> where they are stored
        for s in self.symbols:
            data.setdefault((id(s.slices), id(s.addrs), id(s.vids)), len(data))
        header = {
            "magic": FORMAT_MAGIC,
            "version": FORMAT_VERSION,
            "hw": self.hw.to_dict(),
            "hw_hash": self.hw.hash,
            "sources": list(self.sources),
            "predicted_cycles": self.predicted_cycles,
            "words_used": self.words_used,
            "chips": self.chips,
            "meta": self.meta,
            "symbols": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "shape": list(s.shape),
                    "dtype": s.dtype,
                    "chip": s.chip,
                    "host_shape": None if s.host_shape is None else list(s.host_shape),
                    "data": data[(id(s.slices), id(s.addrs), id(s.vids))],
                }
                for s in self.symbols
            ],
            "content_hash": self.content_hash,
            "bodies": [
                {"links": b.links, "predicted": b.predicted is not None} for b in self.bodies
            ],
        }
        arrays = {"instrs": self.instrs, "tables": self.tables, "links": self.links}
        for i, b in enumerate(self.bodies):
            arrays[f"body{i}_instrs"] = b.instrs
            if b.predicted is not None:
                arrays[f"body{i}_predicted"] = b.predicted
        if self.placed:
            arrays.update(placements=self.placements, place_links=self.place_links,
                          place_at=self.place_at, place_heads=self.place_heads)  # fmt: skip
        if self.predicted is not None:
            arrays["predicted"] = self.predicted
        for i, s in enumerate(self.symbols):
            k = data[(id(s.slices), id(s.addrs), id(s.vids))]
            arrays[f"sym{k}_slices"], arrays[f"sym{k}_addrs"] = s.slices, s.addrs
            arrays[f"sym{k}_vids"] = s.vids
            if s.kind == "const":
                arrays[f"const{i}"] = self.consts[s.name]
        header["digest"] = _file_digest(header, arrays)
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        Path(path).write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: str | Path, hw: HardwareConfig | None = None) -> Program:
        """Load a Program; refuses truncated, foreign, edited, corrupt or mismatched files with a
        one-line ProgramFormatError."""
        if not str(path):
            raise ProgramFormatError(
                "program file path is empty; give a file `lpusim compile` wrote"
            )
        path = Path(path)
        name = repr(str(path))
        data = read_file(path, "program file", ProgramFormatError)
        if not data.startswith(b"PK\x03\x04"):
            raise ProgramFormatError(f"{name} is not an lpusim Program file (foreign)")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # any failure to decode these bytes (zlib, zip, npy) is corruption
            raise ProgramFormatError(
                f"{name} is not an lpusim Program file (truncated or foreign: {_one_line(e)})"
            ) from None
        if "header" not in arrays:
            raise ProgramFormatError(f"{name} is not an lpusim Program file (no header)")
        try:
            header = json.loads(arrays["header"].tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise ProgramFormatError(f"{name} has a corrupt header (not JSON)") from None
        if not isinstance(header, dict):
            raise ProgramFormatError(
                f"{name} has a corrupt header (a JSON {type(header).__name__}, not an object)"
            )
        if header.get("magic") != FORMAT_MAGIC:
            raise ProgramFormatError(f"{name} is not an lpusim Program file (bad magic)")
        if header.get("version") != FORMAT_VERSION:
            raise ProgramFormatError(
                f"{name} is Program format version {header.get('version')!r}; "
                f"this lpusim reads version {FORMAT_VERSION}"
            )
        body = {k: v for k, v in arrays.items() if k != "header"}
        if "digest" not in header:
            raise ProgramFormatError(
                f"{name} has no digest (written before files carried one); recompile it"
            )
        if header["digest"] != _file_digest(header, body):
            raise ProgramFormatError(
                f"{name} is corrupt or was edited: its digest does not match its header and arrays"
            )
        try:
            program = _from_parts(cls, header, body)
        except ProgramFormatError as e:
            raise ProgramFormatError(f"{name} {e}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProgramFormatError(f"{name} is malformed: {_one_line(e)}") from None
        if hw is not None and hw.hash != program.hw.hash:
            raise ProgramFormatError(
                f"{name} was compiled for hardware {program.hw.name} ({program.hw.hash}), "
                f"not {hw.name} ({hw.hash}); recompile it for this hardware"
            )
        if program.content_hash != header["content_hash"]:
            raise ProgramFormatError(f"{name} is corrupt: its content hash does not match")
        return program


# --- the file's parts (Program.save / Program.load) -----------------------------------------------

HEADER_FIELDS = {
    "hw": dict,
    "hw_hash": str,
    "sources": list,
    "predicted_cycles": int,
    "words_used": int,
    "chips": int,
    "meta": dict,
    "symbols": list,
    "content_hash": str,
    "bodies": list,
}
SYMBOL_KINDS = ("param", "input", "const", "output")
# Each symbol's arrays: (name suffix, dtype).
SYMBOL_ARRAYS = (("slices", np.int32), ("addrs", np.int32), ("vids", np.int64))


def _one_line(e: BaseException) -> str:
    """`module.Type: message` of an exception, on one line."""
    kind = type(e).__qualname__
    if type(e).__module__ not in ("builtins", None):
        kind = f"{type(e).__module__}.{kind}"
    return f"{kind}: {' '.join(str(e).split())[:200]}"


def _file_digest(header: dict, arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of every header field but the digest itself and of every array (name, dtype,
    shape, bytes): any edit to a saved Program changes it."""
    h = hashlib.sha256()
    fields = {k: v for k, v in header.items() if k != "digest"}
    h.update(json.dumps(fields, sort_keys=True).encode())
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"\0{k}\0{a.dtype.descr}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _from_parts(cls, header: dict, arrays: dict[str, np.ndarray]) -> Program:
    """The Program a checked header and its arrays describe; ProgramFormatError (completed with the
    file's name) for a missing or mistyped part."""

    def array(key: str, dtype, ndim: int) -> np.ndarray:
        if key not in arrays:
            raise ProgramFormatError(f"lacks the array {key!r}")
        a = arrays[key]
        if a.dtype != np.dtype(dtype) or a.ndim != ndim:
            raise ProgramFormatError(
                f"has array {key!r} of {a.dtype}{list(a.shape)}; expected {ndim}-D {np.dtype(dtype)}"
            )
        return a

    for key, kind in HEADER_FIELDS.items():
        if key not in header:
            raise ProgramFormatError(f"has a header without {key!r}")
        if not isinstance(header[key], kind) or isinstance(header[key], bool):
            raise ProgramFormatError(
                f"has header field {key!r} = {header[key]!r:.60}; expected a {kind.__name__}"
            )
    try:
        file_hw = HardwareConfig.from_dict(header["hw"])
    except LpuError as e:
        raise ProgramFormatError(f"has an invalid hardware config: {e}") from None
    if header["hw_hash"] != file_hw.hash:
        raise ProgramFormatError("has a hardware config that does not match its hash")
    instrs = arrays.get("instrs")
    if instrs is None:
        raise ProgramFormatError("lacks the array 'instrs'")
    if instrs.dtype != INSTR_DTYPE or instrs.ndim != 1:
        raise ProgramFormatError("has instructions of an unknown layout")
    tables = array("tables", np.int32, 2)
    links = array("links", np.int32, 2)
    predicted = array("predicted", np.int64, 1) if "predicted" in arrays else None
    if predicted is not None and len(predicted) != len(instrs):
        raise ProgramFormatError(
            f"has {len(predicted)} predicted cycles for {len(instrs)} instructions"
        )
    symbols, consts = [], {}
    for i, s in enumerate(header["symbols"]):
        if not (
            isinstance(s, dict)
            and isinstance(s.get("name"), str)
            and s.get("kind") in SYMBOL_KINDS
            and isinstance(s.get("dtype"), str)
            and isinstance(s.get("shape"), list)
            and all(isinstance(d, int) and d >= 0 for d in s["shape"])
            and isinstance(s.get("chip"), int)
            and not isinstance(s["chip"], bool)
            and isinstance(s.get("data"), int)
            and not isinstance(s["data"], bool)
            and (
                s.get("host_shape") is None
                or isinstance(s["host_shape"], list)
                and all(isinstance(d, int) and d >= 0 for d in s["host_shape"])
            )
        ):
            raise ProgramFormatError(f"has a malformed symbol #{i}: {s!r:.80}")
        k = s["data"]
        parts = [array(f"sym{k}_{suffix}", dtype, 1) for suffix, dtype in SYMBOL_ARRAYS]
        if len({len(a) for a in parts}) != 1:
            raise ProgramFormatError(f"has symbol {s['name']!r} with arrays of unequal lengths")
        symbols.append(
            Symbol(
                s["name"],
                s["kind"],
                tuple(s["shape"]),
                s["dtype"],
                *parts,
                chip=s["chip"],
                host_shape=None if s.get("host_shape") is None else tuple(s["host_shape"]),
            )  # fmt: skip
        )
        if s["kind"] == "const":
            if f"const{i}" not in arrays:
                raise ProgramFormatError(f"lacks the array 'const{i}' (constant {s['name']!r})")
            consts[s["name"]] = arrays[f"const{i}"]
    bodies = []
    for i, b in enumerate(header["bodies"]):
        if not (isinstance(b, dict) and isinstance(b.get("links"), int) and b["links"] >= 0):
            raise ProgramFormatError(f"has a malformed body #{i}: {b!r:.80}")
        ins = arrays.get(f"body{i}_instrs")
        if ins is None or ins.dtype != INSTR_DTYPE or ins.ndim != 1:
            raise ProgramFormatError(f"lacks body {i}'s instructions (or they have another layout)")
        pred = array(f"body{i}_predicted", np.int64, 1) if b.get("predicted") else None
        if pred is not None and len(pred) != len(ins):
            raise ProgramFormatError(f"has {len(pred)} predicted cycles for body {i}'s {len(ins)}")
        bodies.append(Body(ins, pred, b["links"]))
    placed = {}
    if "placements" in arrays:
        pl = arrays["placements"]
        if pl.dtype != PLACE_DTYPE or pl.ndim != 1:
            raise ProgramFormatError("has placements of an unknown layout")
        placed = dict(
            placements=pl,
            place_links=array("place_links", np.int32, 2),
            place_at=array("place_at", np.int32, 2),
            place_heads=array("place_heads", np.int64, 2),
        )
    return cls(
        bodies=tuple(bodies),
        **placed,
        hw=file_hw,
        instrs=instrs,
        tables=tables,
        symbols=tuple(symbols),
        consts=consts,
        sources=tuple(str(x) for x in header["sources"]),
        predicted_cycles=header["predicted_cycles"],
        words_used=header["words_used"],
        chips=header["chips"],
        meta=header["meta"],
        predicted=predicted,
        links=links,
    )
