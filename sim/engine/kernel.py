"""The event loop, compiled: every repetition of every instruction, in (cycle, instruction, rep)
order (each instruction's cycle the queues' dispatch, sim/engine/icu.py), with the reference interpreter's checks and arithmetic (sim/reference.py); VXM results and
SXM reductions are rounded to the instruction's element type by rounding.round_vector.

`make_kernel(functional)` is a cached factory: `functional` is a constant of the compiled code, so
the timing-only variant has no arithmetic and never touches a value array. Helpers that do not
depend on it are module-level (Numba caches those, and closures calling them, on disk).

Each event decodes its instruction record (INSTR_DTYPE) with a few lookups (sim/engine/prepare.py
builds the tables and the geometry `g`). State, all NumPy arrays (layouts in schema.py):
- mem_vid[cell]: vector id each memory word holds; mem_val[cell]: values (at a group's base slice)
- ring[slot]: the vectors on each (stream key, diagonal mod RING), one per way (each put at its
  own position; a take finds the nearest upstream); ring_val[slot]: their values
- busy[resource]: (last cycle claimed, claims in it); events come in cycle order, so that suffices
- planes[plane], installed[plane], weights[plane]: MXM tile state, which rows (columns) of the
  tile are installed (a flag per lane), and (lanes, lanes) float32 weights
- pending[k], pending_val[k]: WRITE commits in flight, a FIFO
- sel[chip * SELECT_REGISTERS + r], sel_pending[k]: select registers and TOPK writes in flight
  (functional mode; timing mode reads every register as 0); sel_first[...]: when the first TOPK
  write of each register lands (schema.NEVER: none), for the too-early check of both modes
- busy[G_BASE_LINK + channel]: the cycle each link channel is free again; slot_vid[channel *
  slots + slot], slot_val[...]: the C2C receive slots; arrivals[...], arrival_val[...]: SENDs in
  flight, a FIFO per vector width (each lands in order) and one of other chips' SENDs given up
  front, merged by (arrival, issue order)
"""

from __future__ import annotations

import functools

import numpy as np

from sim.engine.flags import njit, njit_inline
from sim.engine.prepare import ARITY_LUT, F32_WORDS, UNIT_LUT, WIDTH_LUT
from sim.engine.rounding import round_vector
from sim.engine.schema import (
    A_AT,
    A_EVENT,
    A_SLOT,
    A_VID,
    E_ACC_BUSY,
    E_ACC_HELD,
    E_ACC_ROW,
    E_ADDRESS,
    E_BUSY,
    E_C2C_MISSING,
    E_C2C_OVERWRITE,
    E_C2C_SLOT,
    E_EXPECT,
    E_EXTENT,
    E_FETCH_SLICE,
    E_HELD,
    E_INDEX,
    E_INSTALL_ROW,
    E_INSTALL_TWICE,
    E_LINK,
    E_LINK_BUSY,
    E_NO_VECTOR,
    E_PUT_ALIGN,
    E_PUT_TAKEN,
    E_SEL_EARLY,
    E_SEL_REGISTER,
    E_SLICE,
    E_TILE_HOLES,
    E_TILE_MISSING,
    E_TILE_NOT_READY,
    E_TILE_ORIENTATION,
    E_TILE_ROWS,
    E_TILE_USED,
    E_TOPK,
    E_TORN,
    E_UNIT,
    E_WAYS,
    E_WRONG_VECTOR,
    EMPTY,
    FIFO_EXTERNAL,
    G_ACC_ROWS,
    G_ALONE,
    G_ARRIVAL_MASK,
    G_BASE_COMPUTE,
    G_BASE_INSTALL,
    G_BASE_LINK,
    G_BASE_SXM,
    G_BASE_VXM,
    G_C2C_LATENCY,
    G_C2C_SLOTS,
    G_CELL_SLICES,
    G_CELL_WORDS,
    G_CHIP_LO,
    G_DIR_LO,
    G_DIRS,
    G_EXTERNAL,
    G_FIRST_SXM_QUEUE,
    G_FP16_CYCLES,
    G_HEMI_LO,
    G_HEMIS,
    G_INSTALL_CAP,
    G_KEYS,
    G_LANES,
    G_LINK_CYCLES,
    G_LINKS,
    G_PENDING_MASK,
    G_PLANE_LO,
    G_PLANES,
    G_QUEUE_LO,
    G_READ_PORTS,
    G_RING_MASK,
    G_SEL_PENDING_MASK,
    G_SLICES,
    G_STREAMS,
    G_SXM_CAP,
    G_TABLES,
    G_VXM_CAP,
    G_WAYS,
    G_WEIGHT_BUFFERS,
    G_WORDS_PER_SLICE,
    G_WRITE_PORTS,
    KEY_PAD,
    N_FIFOS,
    NEVER,
    O_A,
    O_B,
    O_C,
    O_CODE,
    O_CYCLE,
    O_D,
    O_EVENT,
    O_HOPS,
    OK,
    PL_HIGH,
    PL_READY,
    PL_ROWS,
    PL_TILE,
    PL_TRANSPOSED,
    PL_USED,
    Q_CELL,
    Q_COMMIT,
    Q_VID,
    Q_WIDTH,
    R_DIAG,
    R_P0,
    R_SRC,
    R_VID,
    R_WIDTH,
    SQ_COMMIT,
    SQ_INDEX,
    SQ_REGISTER,
)
from sim.isa import (
    FLAG_ACC_IN,
    FLAG_ACC_OUT,
    FLAG_BUFFER,
    FLAG_INDIRECT,
    FLAG_TRANSPOSED,
    SELECT_REGISTERS,
    Op,
    Unit,
)

READ, WRITE, INSTALL, MATMUL = int(Op.READ), int(Op.WRITE), int(Op.INSTALL), int(Op.MATMUL)
ADD, SUB, MUL, MAX, MIN = int(Op.ADD), int(Op.SUB), int(Op.MUL), int(Op.MAX), int(Op.MIN)
NEG, EXP, RSQRT, CONVERT = int(Op.NEG), int(Op.EXP), int(Op.RSQRT), int(Op.CONVERT)
REDUCE_SUM, PERMUTE, TOPK = int(Op.REDUCE_SUM), int(Op.PERMUTE), int(Op.TOPK)
MEM, VXM, SXM, MXM = int(Unit.MEM), int(Unit.VXM), int(Unit.SXM), int(Unit.MXM)
ICU, C2C = int(Unit.ICU), int(Unit.C2C)
SEND = int(Op.SEND)
LAST = np.iinfo(np.int64).max  # lands every SEND still in flight
IFETCH = int(Op.IFETCH)


@njit_inline
def _fail(out, code, e, t, a, b, c):
    out[O_CODE] = code
    out[O_EVENT] = e
    out[O_CYCLE] = t
    out[O_A] = a
    out[O_B] = b
    out[O_C] = c


@njit_inline
def _claim(busy, r, t, capacity):
    """One use of resource r in cycle t; True when that exceeds its capacity."""
    if busy[r, 0] != t:
        busy[r, 0] = t
        busy[r, 1] = 0
    busy[r, 1] += 1
    return busy[r, 1] > capacity


@njit_inline
def _commit(pending, k, mem_vid):
    """Pending WRITE k lands: every slice of its group now holds its vector."""
    for m in range(pending[k, Q_WIDTH]):
        mem_vid[pending[k, Q_CELL] + m] = pending[k, Q_VID]


@njit_inline
def _direction(st, S):
    """st // S as Python floor division (the unused operand -1 is direction -1, as in the
    reference's divmod), without a division for the two real directions."""
    if 0 <= st < S:
        return 0
    if S <= st < 2 * S:
        return 1
    return st // S


@njit_inline
def _key(st, ci, geo):
    """Stream key of (chip index ci, stream operand st): its row block in the ring.
    geo: (streams per direction, directions per chip, first direction, ring mask, keys, ways)."""
    S, dirs, dir_lo, _, _, _ = geo
    d = _direction(st, S)
    return (ci * dirs + d - dir_lo) * (S + KEY_PAD) + st - d * S


@njit_inline
def _slot(key, diag, way, geo):
    return ((diag & geo[3]) * geo[5] + way) * geo[4] + key


@njit_inline
def _expect(first, j):
    """The vector an operand of repetition j must be (`in0..in2` + j), or -1: unchecked."""
    return first + j if first >= 0 else -1


@njit_inline
def _nearest(ring, key, diag, p, east, geo):
    """The slot of the vector on (key, diag) that entered nearest upstream of p (p included), or
    -1: a diagonal carries one vector per way, each from its own position."""
    best = -1
    for way in range(geo[5]):
        slot = _slot(key, diag, way, geo)
        if ring[slot, R_DIAG] != diag:
            continue
        p0 = ring[slot, R_P0]
        upstream = p0 <= p if east else p0 >= p
        if upstream and (best < 0 or (p0 > ring[best, R_P0] if east else p0 < ring[best, R_P0])):
            best = slot
    return best


@njit_inline
def _width_at(ring, st, ci, geo, p, t):
    """Words of the vector on stream st at (p, t), 1 if none (taking it will say so)."""
    east = 0 <= st < geo[0]
    diag = t - p if east else t + p
    slot = _nearest(ring, _key(st, ci, geo), diag, p, east, geo)
    return ring[slot, R_WIDTH] if slot >= 0 else 1


@njit_inline
def _occupy(busy, r, t, cycles):
    """Resource r (capacity one) busy from t for `cycles` cycles; True when it is not free at t.
    busy[r, 0] holds the cycle it is next free."""
    if t < busy[r, 0]:
        return True
    busy[r, 0] = t + cycles
    return False


@njit_inline
def _take(ring, st, ci, geo, operand, p, t, expect, out, e):
    """The slot of the vector passing position p at cycle t on stream st (operand 0..2);
    -1 (with `out` filled) when none arrives, its group is torn, or it is not `expect`."""
    key = _key(st, ci, geo)
    east = 0 <= st < geo[0]
    diag = t - p if east else t + p
    slot = _nearest(ring, key, diag, p, east, geo)
    if slot < 0:
        _fail(out, E_NO_VECTOR, e, t, operand, 0, 0)
        return -1
    width = ring[slot, R_WIDTH]
    for m in range(1, width):
        other = _nearest(ring, key + m, diag, p, east, geo)
        if other < 0 or ring[other, R_SRC] != ring[slot, R_SRC]:
            _fail(out, E_TORN, e, t, operand, width, 0)
            return -1
    if expect >= 0 and ring[slot, R_VID] != expect:
        _fail(out, E_EXPECT, e, t, operand, expect, ring[slot, R_VID])
        return -1
    out[O_HOPS] += abs(p - ring[slot, R_P0]) * width
    return slot


@njit_inline
def _put(ring, st, ci, geo, width, p0, t0, vid, src, out, e):
    """Enter a `width`-word vector on stream group st at position p0, cycle t0; its base slot,
    or -1 (with `out` filled) when the group is misaligned, a vector was put at p0 on this
    diagonal already, or the diagonal's ways are all taken (E_WAYS: run again with more)."""
    S = geo[0]
    d = _direction(st, S)
    within = st - d * S
    if within & (width - 1) or within + width > S:  # width is 1, 2 or 4
        _fail(out, E_PUT_ALIGN, e, t0, 0, 0, 0)
        return -1
    key = _key(st, ci, geo)
    diag = t0 - p0 if d == 0 else t0 + p0
    base = -1
    for m in range(width):
        free = -1
        for way in range(geo[5]):
            slot = _slot(key + m, diag, way, geo)
            if ring[slot, R_DIAG] != diag:
                if free < 0:
                    free = slot
            elif ring[slot, R_P0] == p0:
                _fail(out, E_PUT_TAKEN, e, t0, m, ring[slot, R_VID], ring[slot, R_SRC])
                return -1
        if free < 0:
            _fail(out, E_WAYS, e, t0, 0, 0, 0)
            return -1
        ring[free, R_DIAG] = diag
        ring[free, R_VID] = vid
        ring[free, R_P0] = p0
        ring[free, R_WIDTH] = width
        ring[free, R_SRC] = src
        if m == 0:
            base = free
    return base


@njit_inline
def _earliest(arrivals, heads, tails, mask, cap, cell):
    """Row of the SEND in flight that lands first (ties: the first issued), over all of them
    (cell < 0) or those to one receive slot; -1 if none."""
    best = -1
    for f in range(N_FIFOS):
        for n in range(heads[f], tails[f]):
            k = f * cap + (n & mask)
            if cell >= 0 and arrivals[k, A_SLOT] != cell:
                continue
            if (
                best < 0
                or arrivals[k, A_AT] < arrivals[best, A_AT]
                or (
                    arrivals[k, A_AT] == arrivals[best, A_AT]
                    and arrivals[k, A_EVENT] < arrivals[best, A_EVENT]
                )
            ):
                best = k
            if cell < 0:
                break  # each FIFO lands in order: its head is its earliest
    return best


@njit_inline
def _land(arrivals, arrival_val, heads, tails, mask, cap, upto, slot_vid, slot_val, slots, ev_t,
          functional, out, alone):  # fmt: skip
    """The SENDs in flight that land by cycle `upto`, in arrival order, into their receive slots;
    True (with `out` filled, at the SEND) when one lands on a vector no RECV took. `alone`: chip
    0 runs alone, and what it sends lands on the chips that stand for others (schema.G_ALONE)."""
    while True:
        k = _earliest(arrivals, heads, tails, mask, cap, -1)
        if k < 0 or arrivals[k, A_AT] > upto:
            return False
        heads[k // cap] += 1
        cell = arrivals[k, A_SLOT]
        if alone and arrivals[k, A_EVENT] >= 0:
            continue  # chip 0's own SEND: it lands on a chip simulated on its own
        if slot_vid[cell] != EMPTY:
            e = arrivals[k, A_EVENT]  # -1: another chip's SEND (FIFO_EXTERNAL), at its landing
            at = ev_t[e] if e >= 0 else arrivals[k, A_AT]
            _fail(out, E_C2C_OVERWRITE, e, at, arrivals[k, A_VID], cell % slots, slot_vid[cell])
            out[O_D] = arrivals[k, A_AT]
            return True
        slot_vid[cell] = arrivals[k, A_VID]
        if functional:
            slot_val[cell] = arrival_val[k]


@njit
def _vxm_values(op, vals, a, b, c, imm, res):
    """res[:] = op(a, b, c) per lane in float64, rounded to float32 (b < 0: the immediate)."""
    for k in range(res.size):
        x = np.float64(vals[a, k])
        y = imm if b < 0 else np.float64(vals[b, k])
        if op in (ADD, SUB, MUL) and x != x and y != y:
            # Two NaNs: IEEE 754 leaves the payload open. Take the operand NumPy's loops (the
            # reference) return on x86 for whole SIMD vectors: the first, or the immediate for
            # ADD and MUL; otherwise it would depend on LLVM's choice of operand order.
            r = y if b < 0 and op != SUB else x
        elif op == ADD:
            r = x + y
        elif op == SUB:
            r = x - y
        elif op == MUL:
            r = x * y
        elif op in (MAX, MIN):
            if x != x or y != y:  # NaN in either operand gives NaN, as the reference's np.where
                r = np.float64(np.nan)
            elif x >= y if op == MAX else x <= y:
                r = x
            else:
                r = y
        elif op == NEG:
            r = -x
        elif op == EXP:
            r = np.exp(x)
        elif op == RSQRT:
            r = 1.0 / np.sqrt(x)
        elif op == CONVERT:
            r = x
        else:  # SELECT
            r = y if x != 0 else np.float64(vals[c, k])
        res[k] = r


@njit
def _reduce_values(op, vals, a, n, res):
    """res[:] = the sum (max) of lanes [0, n) of vector a, sequentially in float64."""
    acc = np.float64(0.0) if op == REDUCE_SUM else np.float64(-np.inf)
    for k in range(n):
        x = np.float64(vals[a, k])
        if op == REDUCE_SUM:
            # Two NaNs: the payload is open (IEEE 754); keep the sum's, as the reference's
            # `acc += x` in CPython mostly does on x86. Otherwise it would depend on LLVM.
            acc = acc if acc != acc and x != x else acc + x
        elif x != x or acc != acc:
            acc = np.float64(np.nan)
        elif x > acc:
            acc = x
    res[:] = acc


@njit
def _topk_values(vals, a, n, k, keys, res):
    """res = the lanes of the k largest of lanes [0, n) of vector a, then their values, then 0s;
    ordered by IEEE 754 totalOrder (an integer key of the bits), ties to the lower lane."""
    bits = vals[a].view(np.int32)
    for lane in range(n):
        b = np.int64(bits[lane])
        keys[lane] = b if b >= 0 else b ^ 0x7FFFFFFF
    res[:] = 0.0
    for i in range(k):
        best = 0
        for lane in range(1, n):
            if keys[lane] > keys[best]:
                best = lane
        res[i] = best
        res[k + i] = vals[a, best]
        keys[best] = NEVER  # below every key of a float32: taken


@njit
def _matmul_values(vals, a, w, k, acc, res, base, add):
    """res = (base if add) + x[:k] @ w[:k, :], accumulated over k in order in float64, rounded
    to float32."""
    for n in range(acc.size):
        acc[n] = np.float64(base[n]) if add else 0.0
    for kk in range(k):
        x = np.float64(vals[a, kk])
        for n in range(acc.size):
            acc[n] += x * np.float64(w[kk, n])
    for n in range(acc.size):
        res[n] = acc[n]


@functools.cache
def make_kernel(functional: bool):
    """The event loop; with functional=False it only times and checks."""

    @njit
    def run(
        ev_t, ev_i, ins, dispatch, g, lat_lut, pos_lut, queue_lut, hemi_map, plane_map, tables, table_ok,
        mem_vid, mem_val, ring, ring_val, busy, planes, installed, weights, accum, accum_val,
        pending,
        pending_val, sel_first, sel, sel_pending, links, slot_vid, slot_val, arrivals, arrival_val,
        out,
    ):  # fmt: skip
        lanes = g[G_LANES]
        slices = g[G_SLICES]
        geo = (g[G_STREAMS], g[G_DIRS], g[G_DIR_LO], g[G_RING_MASK], g[G_KEYS], g[G_WAYS])
        chip_lo = g[G_CHIP_LO]
        queue_lo = g[G_QUEUE_LO]
        words_per_slice = g[G_WORDS_PER_SLICE]
        cell_slices = g[G_CELL_SLICES]
        cell_words = g[G_CELL_WORDS]
        qmask = g[G_PENDING_MASK]
        head = 0  # the pending FIFO holds entries head..tail-1, entry k at row k & qmask
        tail = 0
        smask = g[G_SEL_PENDING_MASK]
        sel_head = 0  # the same for sel_pending
        sel_tail = 0
        res = np.zeros(lanes, np.float32)  # the vector an event computes
        acc = np.zeros(lanes, np.float64)
        keys = np.zeros(lanes, np.int64)
        c2c = g[G_LINKS] > 0
        alone = g[G_ALONE] == 1
        slots = g[G_C2C_SLOTS]
        amask = g[G_ARRIVAL_MASK]
        acap = amask + 1
        # The arrivals FIFOs: one per vector width (1, 2, 4 words), and one of the vectors other
        # chips send this one (a chip simulated alone, sim/engine/share.py), filled up front.
        a_head = np.zeros(N_FIFOS, np.int64)
        a_tail = np.zeros(N_FIFOS, np.int64)
        a_tail[FIFO_EXTERNAL] = g[G_EXTERNAL]
        for e in range(ev_t.size):
            t = ev_t[e]
            i = ev_i[e]
            while head < tail and pending[head & qmask, Q_COMMIT] <= t:  # commits, then reads
                _commit(pending, head & qmask, mem_vid)
                if functional:
                    mem_val[pending[head & qmask, Q_CELL]] = pending_val[head & qmask]
                head += 1
            if functional:
                while sel_head < sel_tail and sel_pending[sel_head & smask, SQ_COMMIT] <= t:
                    k = sel_head & smask
                    sel[sel_pending[k, SQ_REGISTER]] = sel_pending[k, SQ_INDEX]
                    sel_head += 1
            if c2c and _land(
                arrivals, arrival_val, a_head, a_tail, amask, acap, t, slot_vid, slot_val, slots,
                ev_t, functional, out, alone,
            ):  # fmt: skip
                return

            r = ins[i]
            j = (t - dispatch[i]) // max(np.int64(r["period"]), 1)
            op = np.int64(r["op"])
            unit = UNIT_LUT[op]
            q = np.int64(r["queue"])
            held = queue_lut[q - queue_lo, 0]  # the unit this queue feeds, first of all
            second = np.int64(r["flags"]) & FLAG_BUFFER  # MXM: its plane's second weight buffer
            if unit == ICU:  # SYNC/NOTIFY did their work in the queues' timing
                if held < 0 or r["repeat"] != 1:
                    _fail(out, E_UNIT, e, t, 0, 0, 0)
                    return
                if op == IFETCH:  # an instruction word through the slice's read port
                    s = np.int64(r["slice"])
                    a = np.int64(r["addr"])
                    if s < 0 or s >= slices:
                        _fail(out, E_FETCH_SLICE, e, t, s, 0, 0)
                        return
                    if a < 0 or a >= words_per_slice:
                        _fail(out, E_ADDRESS, e, t, a, 0, 0)
                        return
                    rd = (np.int64(r["chip"]) - chip_lo) * 2 * slices + s
                    if _claim(busy, rd, t, g[G_READ_PORTS]):
                        _fail(out, E_BUSY, e, t, 0, 0, 0)
                        return
                continue
            if (
                held != unit
                or (unit == MXM and queue_lut[q - queue_lo, 1] != r["plane"])
                or (unit == MXM and second and g[G_WEIGHT_BUFFERS] < 2)
            ):
                _fail(out, E_UNIT, e, t, 0, 0, 0)
                return
            ci = np.int64(r["chip"]) - chip_lo
            p = pos_lut[q - queue_lo]
            t0 = t + lat_lut[op]
            vid = r["vid"] + j
            code = np.int64(r["dtype"])
            width = WIDTH_LUT[code]

            if unit == C2C:
                link = np.int64(r["table"])
                chip = np.int64(r["chip"])
                if (
                    link < 0
                    or link >= g[G_LINKS]
                    or (chip != links[link, 0] and chip != links[link, 1])
                ):
                    _fail(out, E_LINK, e, t, 0, 0, 0)
                    return
                sender = chip if op == SEND else links[link, 0] + links[link, 1] - chip
                channel = 2 * link + (0 if sender == links[link, 0] else 1)
                slot = np.int64(r["addr"]) + j * np.int64(r["stride"])
                if slot < 0 or slot >= slots:
                    _fail(out, E_C2C_SLOT, e, t, slot, 0, 0)
                    return
                cell = channel * slots + slot
                if op == SEND:
                    cost = g[G_LINK_CYCLES + width]
                    free = g[G_BASE_LINK] + channel
                    if _occupy(busy, free, t, cost):
                        _fail(out, E_LINK_BUSY, e, t, busy[free, 0], 0, 0)
                        return
                    a = _take(
                        ring, np.int64(r["s0"]), ci, geo, 0, p, t, _expect(r["in0"], j), out, e
                    )
                    if a < 0:
                        return
                    f = width >> 1  # the FIFO of this width: its arrivals come in issue order
                    k = f * acap + (a_tail[f] & amask)
                    arrivals[k, A_AT] = t + g[G_C2C_LATENCY] + cost
                    arrivals[k, A_EVENT] = e
                    arrivals[k, A_SLOT] = cell
                    arrivals[k, A_VID] = vid
                    if functional:
                        arrival_val[k] = ring_val[a]
                    a_tail[f] += 1
                else:
                    if slot_vid[cell] != vid:
                        k = _earliest(arrivals, a_head, a_tail, amask, acap, cell)
                        _fail(out, E_C2C_MISSING, e, t, slot, slot_vid[cell], 0)
                        out[O_D] = EMPTY
                        if k >= 0:
                            out[O_C] = arrivals[k, A_VID]
                            out[O_D] = arrivals[k, A_AT]
                        return
                    slot_put = _put(ring, np.int64(r["sd"]), ci, geo, width, p, t0, vid, i, out, e)
                    if slot_put < 0:
                        return
                    if functional:
                        ring_val[slot_put] = slot_val[cell]
                    slot_vid[cell] = EMPTY
                continue

            if unit == MEM:
                s = np.int64(r["slice"])
                if s & (width - 1) or s + width > slices or q != s:  # width is 1, 2 or 4
                    _fail(out, E_SLICE, e, t, 0, 0, 0)
                    return
                a = np.int64(r["addr"]) + j * np.int64(r["stride"])
                expect_vid = vid
                if op == READ and np.int64(r["flags"]) & FLAG_INDIRECT:
                    reg = np.int64(r["row"])
                    if reg < 0 or reg >= SELECT_REGISTERS:
                        _fail(out, E_SEL_REGISTER, e, t, reg, 0, 0)
                        return
                    ready = sel_first[ci * SELECT_REGISTERS + reg]
                    if ready > t:  # NEVER is below every cycle
                        _fail(out, E_SEL_EARLY, e, t, reg, ready, 0)
                        return
                    index = 0  # timing mode: every register reads as 0
                    if functional:
                        index = sel[ci * SELECT_REGISTERS + reg]
                    a += index * np.int64(r["count"])
                    expect_vid += index * r["aux"]
                if a < 0 or a >= words_per_slice:
                    _fail(out, E_ADDRESS, e, t, a, 0, 0)
                    return
                port = (ci * 2 + (1 if op == WRITE else 0)) * slices + s
                ports = g[G_WRITE_PORTS] if op == WRITE else g[G_READ_PORTS]
                for m in range(width):
                    if _claim(busy, port + m, t, ports):
                        _fail(out, E_BUSY, e, t, m, 0, 0)
                        return
                cell = (ci * cell_words + a) * cell_slices + s
                if op == READ:
                    # Beyond the memory arrays lie only words no WRITE or symbol names (an
                    # indirect READ's unit may reach them): they hold nothing.
                    inside = a < cell_words
                    for m in range(width):
                        held = mem_vid[cell + m] if inside else -1
                        if held != expect_vid:
                            _fail(out, E_HELD, e, t, m, a, held)
                            out[O_D] = expect_vid
                            return
                    slot = _put(ring, np.int64(r["sd"]), ci, geo, width, p, t0, vid, i, out, e)
                    if slot < 0:
                        return
                    if functional:
                        if inside:
                            ring_val[slot] = mem_val[cell]
                        else:
                            ring_val[slot] = 0.0
                else:
                    slot = _take(ring, np.int64(r["s0"]), ci, geo, 0, p, t, -1, out, e)
                    if slot < 0:
                        return
                    if ring[slot, R_VID] != vid:
                        _fail(out, E_WRONG_VECTOR, e, t, ring[slot, R_VID], 0, 0)
                        return
                    k = tail & qmask
                    pending[k, Q_COMMIT] = t0
                    pending[k, Q_CELL] = cell
                    pending[k, Q_WIDTH] = width
                    pending[k, Q_VID] = vid
                    if functional:
                        pending_val[k] = ring_val[slot]
                    tail += 1
                continue

            # VXM, SXM, MXM: claim the unit, then take operand s0 (malformed fields come first).
            if op == MATMUL:  # `row`: the tile's extent
                if r["row"] < 1 or r["row"] > lanes:
                    _fail(out, E_EXTENT, e, t, 0, 0, 0)
                    return
            elif op == INSTALL:
                row = np.int64(r["row"]) + j
                if row < 0 or row >= lanes:
                    _fail(out, E_INSTALL_ROW, e, t, row, 0, 0)
                    return
            elif op == TOPK:
                kf = r["imm"]
                count = np.int64(r["count"])
                tb = np.int64(r["table"])
                if not (
                    kf == np.floor(kf)
                    and 1.0 <= kf <= count <= lanes
                    and 2.0 * kf <= lanes
                    and tb >= 0
                    and tb + kf <= SELECT_REGISTERS
                ):
                    _fail(out, E_TOPK, e, t, 0, 0, 0)
                    return
            pl = 0
            if unit == VXM:
                claimed = _claim(busy, g[G_BASE_VXM] + ci, t, g[G_VXM_CAP])
            elif unit == SXM:
                hemi = q - g[G_FIRST_SXM_QUEUE] - g[G_HEMI_LO]
                sxm = g[G_BASE_SXM] + hemi_map[ci * g[G_HEMIS] + hemi]
                claimed = _claim(busy, sxm, t, g[G_SXM_CAP])
            else:
                pl = plane_map[ci * g[G_PLANES] + np.int64(r["plane"]) - g[G_PLANE_LO]]
                if op == INSTALL:
                    claimed = _claim(busy, g[G_BASE_INSTALL] + pl, t, g[G_INSTALL_CAP])
                else:  # a cycle per INT8 input, several per wider one
                    w_in = _width_at(ring, np.int64(r["s0"]), ci, geo, p, t)
                    cycles = 1 if w_in == 1 else g[G_FP16_CYCLES]
                    claimed = _occupy(busy, g[G_BASE_COMPUTE] + pl, t, cycles)
            if claimed:
                _fail(out, E_BUSY, e, t, 0, 0, 0)
                return
            a = _take(ring, np.int64(r["s0"]), ci, geo, 0, p, t, _expect(r["in0"], j), out, e)
            if a < 0:
                return

            if unit == VXM:
                arity = ARITY_LUT[op]
                b = -1  # -1: the immediate
                c = -1
                if arity >= 2 and r["s1"] >= 0:
                    expect = _expect(r["in1"], j)
                    b = _take(ring, np.int64(r["s1"]), ci, geo, 1, p, t, expect, out, e)
                    if b < 0:
                        return
                if arity == 3:
                    expect = _expect(r["in2"], j)
                    c = _take(ring, np.int64(r["s2"]), ci, geo, 2, p, t, expect, out, e)
                    if c < 0:
                        return
                if functional:
                    _vxm_values(op, ring_val, a, b, c, r["imm"], res)
                    round_vector(res, code)

            elif unit == SXM:
                if op == TOPK:
                    width = F32_WORDS
                if functional:
                    if op == TOPK:
                        k = np.int64(r["imm"])
                        tb = np.int64(r["table"])
                        _topk_values(ring_val, a, np.int64(r["count"]), k, keys, res)
                        for n in range(k):
                            row = sel_tail & smask
                            sel_pending[row, SQ_COMMIT] = t0
                            sel_pending[row, SQ_REGISTER] = ci * SELECT_REGISTERS + tb + n
                            sel_pending[row, SQ_INDEX] = np.int64(res[n])
                            sel_tail += 1
                    elif op == PERMUTE:
                        tb = np.int64(r["table"])
                        if tb < 0:  # Python indexing, as the reference's tables[table]
                            tb += g[G_TABLES]
                        if not (0 <= tb < g[G_TABLES] and table_ok[tb]):
                            _fail(out, E_INDEX, e, t, 0, 0, 0)
                            return
                        for k in range(lanes):
                            src = tables[tb, k]
                            res[k] = ring_val[a, src] if src >= 0 else np.float32(0.0)
                    else:
                        count = np.int64(r["count"])  # the reference reduces a[:count]
                        n = min(count, lanes) if count >= 0 else max(lanes + count, 0)
                        _reduce_values(op, ring_val, a, n, res)
                        round_vector(res, code)

            else:  # MXM
                tile = r["aux"]
                transposed = np.int64(r["flags"]) & FLAG_TRANSPOSED
                # the tile state of the plane's weight buffer (two per plane)
                plane_slot = pl
                pl = 2 * pl + (1 if second else 0)
                if op == INSTALL:
                    row = np.int64(r["row"]) + j  # within the lanes, as checked above
                    if planes[pl, PL_TILE] != tile:  # a new tile; the old weights stay in place
                        planes[pl, PL_TILE] = tile
                        planes[pl, PL_ROWS] = 0
                        planes[pl, PL_HIGH] = 0
                        planes[pl, PL_USED] = 0
                        planes[pl, PL_READY] = 0
                        planes[pl, PL_TRANSPOSED] = transposed
                        installed[pl, :] = False
                    elif planes[pl, PL_USED]:
                        _fail(out, E_TILE_USED, e, t, 0, 0, 0)
                        return
                    elif planes[pl, PL_TRANSPOSED] != transposed:
                        _fail(out, E_TILE_ORIENTATION, e, t, 0, 0, 0)
                        return
                    if installed[pl, row]:
                        _fail(out, E_INSTALL_TWICE, e, t, row, 0, 0)
                        return
                    installed[pl, row] = True
                    planes[pl, PL_ROWS] += 1
                    planes[pl, PL_HIGH] = max(planes[pl, PL_HIGH], row + 1)
                    if functional:
                        if transposed:
                            weights[pl, :, row] = ring_val[a]
                        else:
                            weights[pl, row, :] = ring_val[a]
                    planes[pl, PL_READY] = max(planes[pl, PL_READY], t0)
                    continue
                k = np.int64(r["count"])
                extent = np.int64(r["row"])  # 1..lanes (checked above)
                if planes[pl, PL_TILE] != tile:
                    _fail(out, E_TILE_MISSING, e, t, planes[pl, PL_TILE], 0, 0)
                    return
                if t < planes[pl, PL_READY]:
                    _fail(out, E_TILE_NOT_READY, e, t, planes[pl, PL_READY], 0, 0)
                    return
                # Rows are installed at most once, so these two say they are exactly 0..extent-1.
                if planes[pl, PL_ROWS] != extent or planes[pl, PL_HIGH] > extent:
                    _fail(out, E_TILE_HOLES, e, t, pl, planes[pl, PL_TRANSPOSED], 0)
                    return
                if not planes[pl, PL_TRANSPOSED] and extent < k:
                    _fail(out, E_TILE_ROWS, e, t, extent, 0, 0)
                    return
                fl = np.int64(r["flags"])
                arow = np.int64(r["table"]) + j  # accumulator row
                aslot = plane_slot * g[G_ACC_ROWS] + arow
                if fl & (FLAG_ACC_IN | FLAG_ACC_OUT) and (arow < 0 or arow >= g[G_ACC_ROWS]):
                    _fail(out, E_ACC_ROW, e, t, arow, 0, 0)
                    return
                add = fl & FLAG_ACC_IN
                if add:
                    if accum[aslot] != r["in1"] + j:
                        _fail(out, E_ACC_HELD, e, t, arow, accum[aslot], r["in1"] + j)
                        return
                    accum[aslot] = -1  # taken
                planes[pl, PL_USED] = 1
                width = F32_WORDS
                if functional:
                    if k > lanes:
                        _fail(out, E_INDEX, e, t, lanes, 0, 0)
                        return
                    base = accum_val[aslot] if add else res
                    _matmul_values(ring_val, a, weights[pl], k, acc, res, base, add)
                if fl & FLAG_ACC_OUT:  # the sums stay in the plane
                    if accum[aslot] >= 0:
                        _fail(out, E_ACC_BUSY, e, t, arow, accum[aslot], 0)
                        return
                    accum[aslot] = vid
                    if functional:
                        accum_val[aslot] = res
                    continue

            slot = _put(ring, np.int64(r["sd"]), ci, geo, width, p, t0, vid, i, out, e)
            if slot < 0:
                return
            if functional:
                ring_val[slot] = res

        while head < tail:  # commits still in flight at the end
            _commit(pending, head & qmask, mem_vid)
            if functional:
                mem_val[pending[head & qmask, Q_CELL]] = pending_val[head & qmask]
            head += 1
        if c2c and _land(
            arrivals, arrival_val, a_head, a_tail, amask, acap, LAST, slot_vid, slot_val, slots,
            ev_t, functional, out, alone,
        ):  # fmt: skip
            return
        out[O_CODE] = OK

    return run
