"""The instruction set: opcodes, element types, the instruction record, and the queues.

Grammar of one instruction (every field explicit):

    instr  := delay chip queue op dtype flags repeat period  slice addr stride  s0 s1 s2 sd
              plane row count table imm vid in0 in1 in2 aux src
    stream := dir * streams_per_direction + s      dir 0 = eastward, 1 = westward; -1 = none

Each op runs on one kind of unit (OP_UNIT), so only on its queues: a MEM op on the queue of its
slice, a VXM op on the VXM's, an SXM op on either SXM's, an MXM op on the queue of its `plane`
(queue_mxm), SEND and RECV on the chip's C2C queue (queue_c2c), SYNC and NOTIFY on any queue;
`unit_problem` words any other placement.

Instruction queues (the ICU; REFERENCE.md "ICU" row: NOP N, Repeat n,d, Sync/Notify). No
instruction holds a cycle: each queue dispatches its instructions in order, and the cycle of each
follows from the queue (sim/icu.py):

    dispatch(first) = delay                 the queues start together at cycle 0
    dispatch(i)     = dispatch(previous) + delay(i)      `delay` is the explicit NOP count: the
                                            cycles since the queue's previous dispatch
    SYNC b          dispatches no earlier than barrier b's release; NOTIFY b at cycle t
                    releases it at t + icu_sync_latency_cycles (each barrier is notified once)

A queue holds icu_queue_instructions instructions: its first ones are loaded before cycle 0, the
rest by its own IFETCHes; one not yet delivered holds the queue until it is (sim/icu.py).
A queue dispatches at most `issue_width` instructions in one cycle (icu_issue_width; the VXM's
queue stands for the TSP's one queue per ALU, so it dispatches vxm_alus times as many). A repeated
instruction's later repetitions run in its unit, so the queue dispatches the next instruction while
they do. SYNC, NOTIFY and IFETCH must not repeat.

An instruction with `repeat = n` acts n times, at cycles cycle + j*period (j = 0..n-1), on
address addr + j*stride, with vid + j (and MXM row + j): the ICU's Repeat n, d (d = period, 1 by
default). Semantics of each opcode, for repetition j at cycle t = cycle + j*period, at the
position p of the queue's unit:

    READ   slice addr         : the vector at (slice group, addr) must be `vid`; it enters stream
                                group sd at p at t + mem_read_latency
    WRITE  slice addr         : takes the vector passing p on stream group s0 at t (it must be
                                `vid`); it is readable from t + mem_write_latency
    VXM op s0 [s1|imm] [s2]   : operands pass p at t; result (rounded to dtype) enters sd at
                                t + latency(op)
    SXM REDUCE_SUM/MAX count  : lanes [0, count) of s0 reduced, broadcast to every lane of sd
    SXM PERMUTE table         : out[i] = in[table[i]], or 0 where table[i] < 0
    MXM INSTALL plane row     : the vector on s0 becomes row `row` (column, if flags & TRANSPOSED)
                                of the plane's weight tile `aux`; usable from t + install latency.
                                A tile's rows lie in 0..lanes-1, each installed once, all in one
                                orientation; none after a MATMUL used the tile. With flags &
                                BUFFER, into the plane's second weight buffer: a plane holds one
                                tile per buffer, installs into one while MATMULs use the other
    MXM MATMUL plane count row: y = x[:count] @ W[:count, :] with W the installed tile `aux`
                                (float64 accumulation, float32 result) enters sd at t + mxm latency.
                                `row` is the tile's extent, 1..lanes: rows (columns, if installed
                                transposed) 0..row-1 must all be installed, and no other; the
                                tile of buffer 1 with flags & BUFFER. Accumulation across K
                                tiles (FP32, REFERENCE.md "MXM" row): with flags & ACC_IN, y +=
                                the partial sum in accumulator row table + j of the plane, which
                                must be vector in1 + j; with flags & ACC_OUT, y stays in that row
                                (as vector vid + j) and nothing enters sd. Rows 0 ..
                                mxm_accumulator_vectors - 1
    SYNC table                : waits for barrier `table` (above); NOTIFY table releases it
    IFETCH slice addr count   : the next `count` instructions of its own queue, read from word
                                addr of `slice` through its read port (a READ's port, for one
                                cycle: instruction fetch costs read bandwidth), land in the
                                queue's buffer mem_read_latency cycles later (sim/icu.py)
    SXM TOPK count imm table  : the k = imm largest of lanes [0, count) of s0, largest first:
                                lanes [0, k) of sd get their lane numbers, lanes [k, 2k) their
                                values (bits unchanged), every other lane 0; the result is float32
                                whatever the dtype field. Select registers sel[table + i] = the
                                i-th lane number (i < k), readable from t + sxm latency
    C2C SEND table addr       : takes the vector passing p on stream s0 at t (it must be in0 + j,
                                unchecked if in0 < 0) and sends it, as vector vid + j, over link
                                `table` from its chip to the link's other end (the chip must be
                                an endpoint: link_problem). The link's channel in that direction
                                is busy for link_cycles(width) = ceil(width * lanes /
                                c2c_bytes_per_cycle) cycles from t: another SEND on the channel
                                in them is a violation. The vector lands in the peer's receive
                                slot addr + j*stride of that channel at t + c2c_latency_cycles +
                                link_cycles(width); a slot outside 0..c2c_buffer_vectors-1, or
                                one still holding a vector no RECV took when it lands, is a
                                violation
    C2C RECV table addr       : takes the vector in slot addr + j*stride of the channel of link
                                `table` that arrives at its chip: it must have landed by t and be
                                vector vid + j; it enters stream group sd at p at t + latency(RECV)
                                and the slot is free again
    READ + FLAG_INDIRECT      : the unit-relative READ: address addr + j*stride + sel[row]*count,
      slice addr row count aux  where it expects vector vid + j + sel[row]*aux (`count`: words
                                between consecutive units, e.g. experts; `aux`: vector ids between
                                them); it enters sd as vector vid + j, so consumers check the same
                                ids whichever unit was selected

Chip-to-chip links (Program.links): link L joins chips links[L] = (a, b), a != b, with two
channels: 2L carries a -> b, 2L + 1 carries b -> a, each with its own c2c_buffer_vectors receive
slots at the receiving end. Chips run in lockstep (one cycle count for every chip). SEND and RECV
run at hw.c2c_position on the stream row; `width` is the dtype's words. A vector no RECV takes is
no violation: it stays in its slot (until another lands there). Every violation of a SEND or RECV whose link exists and
ends at its chip begins with `link_name`, e.g. "link 3 (chip 0 -> chip 1): ...".

TOPK orders values as jax.lax.top_k does: by IEEE 754 totalOrder (+NaN above +inf, -NaN below -inf,
-0.0 below +0.0), ties to the lower lane. It needs an integer k with 1 <= k <= count <= lanes,
2k <= lanes, and registers table .. table + k - 1 within the chip's SELECT_REGISTERS.

Select registers (per chip) carry a data-dependent choice into addresses with *static timing*: which
unit an indirect READ picks changes where it reads, never when, so the schedule and its cycle count
are the same whatever the selection. A register holds 0 until a TOPK writes it; an indirect READ at
cycle t sees the writes that became readable at cycles <= t, and a READ that comes before the first
TOPK write of its register (while a later one exists) is a violation; each repetition of a READ
reads the register at its own cycle. Timing mode computes no values, so there every register reads
as 0 (unit 0 is the one whose vector ids are checked).

A vector of b-byte elements is b words wide: it uses b adjacent slices (from `slice`, aligned to
b) at one address, and b adjacent streams (from the operand, aligned to b).

Element types (DType). The executors carry every element as a float32 value that the type can
hold exactly; rounding a float32 x "to dtype" gives:

    FLOAT32   x
    FLOAT16   NumPy's x.astype(float16): nearest, ties to even; |x| >= 65520 -> inf
    BFLOAT16  ml_dtypes' x.astype(bfloat16): nearest, ties to even; NaN -> 0x7FC0 with x's sign
    BOOL      1.0 if x != 0 else 0.0 (NaN is true)
    INT8      x rounded to an integer, ties to even, saturated to [-128, 127]; NaN -> 0; the
              result is a float32 integer, so never -0.0
    FP8E4M3   ml_dtypes' x.astype(float8_e4m3fn): nearest, ties to even (464 -> 448); |x| > 464,
              inf and NaN -> NaN with x's sign (the type has no inf), carried as the float32
              0x7FC00000 (negative: 0xFFC00000)

The weight types INT8 and FP8E4M3 need nothing of their own from the MXM: their values are exact
float32s, so INSTALL and MATMUL treat them as any other tile.

`vid` names the logical vector an instruction writes (or, for READ, expects at its address);
`in0..in2` the vectors it expects on s0..s2 (-1: unchecked); `aux` the weight tile. None of them
changes what the hardware computes: the executors use them to check that what arrives is what the
compiler meant (see sim/reference.py).
"""

from __future__ import annotations

import functools
import math
from enum import IntEnum
from fractions import Fraction

import ml_dtypes
import numpy as np

from sim.hardware import HardwareConfig


class Unit(IntEnum):
    MEM = 0
    VXM = 1
    SXM = 2
    MXM = 3
    ICU = 4  # SYNC/NOTIFY: any queue
    C2C = 5  # SEND/RECV: chip-to-chip links


class Op(IntEnum):
    READ = 0
    WRITE = 1
    ADD = 10
    SUB = 11
    MUL = 12
    MAX = 13
    MIN = 14
    NEG = 15
    EXP = 16
    RSQRT = 17
    CONVERT = 18
    SELECT = 19
    REDUCE_SUM = 30
    REDUCE_MAX = 31
    PERMUTE = 32
    TOPK = 33
    INSTALL = 40
    MATMUL = 41
    SYNC = 50
    NOTIFY = 51
    IFETCH = 52
    SEND = 60
    RECV = 61


# Per-op behaviour as tables: adding an op is a row in each.
OP_UNIT = {
    Op.READ: Unit.MEM,
    Op.WRITE: Unit.MEM,
    **{
        op: Unit.VXM
        for op in (
            Op.ADD,
            Op.SUB,
            Op.MUL,
            Op.MAX,
            Op.MIN,
            Op.NEG,
            Op.EXP,
            Op.RSQRT,
            Op.CONVERT,
            Op.SELECT,
        )
    },
    Op.REDUCE_SUM: Unit.SXM,
    Op.REDUCE_MAX: Unit.SXM,
    Op.PERMUTE: Unit.SXM,
    Op.TOPK: Unit.SXM,
    Op.INSTALL: Unit.MXM,
    Op.MATMUL: Unit.MXM,
    Op.SYNC: Unit.ICU,
    Op.NOTIFY: Unit.ICU,
    Op.IFETCH: Unit.ICU,
    Op.SEND: Unit.C2C,
    Op.RECV: Unit.C2C,
}

# Stream operands each VXM op reads (s0, s1, s2); a binary op whose s1 is -1 uses `imm` instead.
VXM_ARITY = {
    Op.ADD: 2,
    Op.SUB: 2,
    Op.MUL: 2,
    Op.MAX: 2,
    Op.MIN: 2,
    Op.NEG: 1,
    Op.EXP: 1,
    Op.RSQRT: 1,
    Op.CONVERT: 1,
    Op.SELECT: 3,
}

# The VXM's "large" ALUs do transcendental functions (REFERENCE.md, "VXM" row).
VXM_LARGE = frozenset({Op.EXP, Op.RSQRT})

FLAG_TRANSPOSED = 1  # INSTALL: the vector is a column of the tile
FLAG_INDIRECT = 2  # READ: the address and vector id are relative to the unit sel[row] selects
FLAG_BUFFER = 4  # INSTALL/MATMUL: the plane's second weight buffer (mxm_weight_buffers = 2)
FLAG_ACC_IN = 8  # MATMUL: add to the partial sums in the plane's accumulator
FLAG_ACC_OUT = 16  # MATMUL: keep the sums in the accumulator instead of putting them out

# Select registers per chip: TOPK writes them, indirect READs use them. A register holds a lane
# number, below TOPK's `count` (an int16 field), so 15 bits always suffice.
SELECT_REGISTERS = 16


def topk_problem(hw: HardwareConfig, ins) -> str | None:
    """Why a TOPK's fields are malformed, or None; a malformed TOPK writes no register."""
    kf, count, table = float(ins["imm"]), int(ins["count"]), int(ins["table"])
    k = int(kf) if kf.is_integer() else -1
    if 1 <= k <= count <= hw.lanes and 2 * k <= hw.lanes and 0 <= table <= SELECT_REGISTERS - k:
        return None
    return (
        f"TOPK k={kf:g} of count={count} into select registers from {table}: needs an integer "
        f"1 <= k <= count <= {hw.lanes}, 2k <= {hw.lanes} and registers "
        f"table..table+k-1 within 0..{SELECT_REGISTERS - 1}"
    )


def matmul_problem(hw: HardwareConfig, ins) -> str | None:
    """Why a MATMUL's extent (its `row` field) is malformed, or None."""
    extent = int(ins["row"])
    if 1 <= extent <= hw.lanes:
        return None
    return f"MATMUL extent (row field) {extent} is outside 1..{hw.lanes}"


def topk_registers(hw: HardwareConfig, ins) -> range:
    """The select registers a TOPK writes (none if it is malformed)."""
    if topk_problem(hw, ins) is not None:
        return range(0)
    return range(int(ins["table"]), int(ins["table"]) + int(ins["imm"]))


def latency(hw: HardwareConfig, op: Op) -> int:
    """Cycles from issue to result on the output stream (or to commit, for WRITE/INSTALL)."""
    unit = OP_UNIT[op]
    if op == Op.READ:
        return hw.mem_read_latency_cycles
    if op == Op.WRITE:
        return hw.mem_write_latency_cycles
    if unit == Unit.VXM:
        return hw.vxm_large_latency_cycles if op in VXM_LARGE else hw.vxm_small_latency_cycles
    if unit == Unit.SXM:
        return hw.sxm_latency_cycles
    if unit == Unit.ICU:
        return 0
    if unit == Unit.C2C:  # RECV: slot to stream; a SEND's vector lands after link_cycles + latency
        return 1
    if op == Op.INSTALL:
        return hw.mxm_install_latency_cycles
    return hw.mxm_latency_cycles


def matmul_period(hw: HardwareConfig, input_bytes: int) -> int:
    """Cycles a plane's compute pipeline takes per streamed input: INT8 inputs at the full rate,
    wider ones (FP16, and FP32, which the MXM runs no faster) at `mxm_fp16_cycles_per_vector`
    (REFERENCE.md "MXM" row: FP16 at ~1/4 the INT8 rate)."""
    return 1 if input_bytes == 1 else hw.mxm_fp16_cycles_per_vector


# --- element types --------------------------------------------------------------------------------


class DType(IntEnum):
    FLOAT32 = 0
    FLOAT16 = 1
    BFLOAT16 = 2
    BOOL = 3
    INT8 = 4
    FP8E4M3 = 5  # ml_dtypes.float8_e4m3fn: no infinities, one NaN per sign, max 448


DTYPE_BYTES = {
    DType.FLOAT32: 4,
    DType.FLOAT16: 2,
    DType.BFLOAT16: 2,
    DType.BOOL: 1,
    DType.INT8: 1,
    DType.FP8E4M3: 1,
}
DTYPE_NUMPY = {
    DType.FLOAT32: np.dtype(np.float32),
    DType.FLOAT16: np.dtype(np.float16),
    DType.BFLOAT16: np.dtype(ml_dtypes.bfloat16),
    DType.BOOL: np.dtype(np.bool_),
    DType.INT8: np.dtype(np.int8),
    DType.FP8E4M3: np.dtype(ml_dtypes.float8_e4m3fn),
}
# Words of a vector by dtype code (an array for a field of records; 1 for an invalid code).
DTYPE_WIDTHS = np.array([DTYPE_BYTES.get(c, 1) for c in range(256)], np.int64)
DTYPE_BY_NAME = {np.dtype(v).name: k for k, v in DTYPE_NUMPY.items()}
# Suffixes in listings (`READ.f16`).
DTYPE_SHORT = {
    DType.FLOAT32: "f32",
    DType.FLOAT16: "f16",
    DType.BFLOAT16: "bf16",
    DType.BOOL: "bool",
    DType.INT8: "i8",
    DType.FP8E4M3: "f8e4m3",
}


# --- the instruction record -------------------------------------------------------------------------

INSTR_DTYPE = np.dtype(
    [
        ("delay", np.int64),
        ("chip", np.int16),
        ("queue", np.int16),
        ("op", np.uint8),
        ("dtype", np.uint8),
        ("flags", np.uint8),
        ("repeat", np.int32),
        ("period", np.int16),
        ("slice", np.int16),
        ("addr", np.int32),
        ("stride", np.int32),
        ("s0", np.int16),
        ("s1", np.int16),
        ("s2", np.int16),
        ("sd", np.int16),
        ("plane", np.int16),
        ("row", np.int16),
        ("count", np.int16),
        ("table", np.int32),
        ("imm", np.float64),
        ("vid", np.int64),
        ("in0", np.int64),
        ("in1", np.int64),
        ("in2", np.int64),
        ("aux", np.int64),
        ("src", np.int32),
    ]
)

# Defaults of an instruction record: -1 marks an unused stream/slice/plane/table operand.
INSTR_DEFAULTS = dict(
    delay=0,
    chip=0,
    queue=0,
    op=0,
    dtype=0,
    flags=0,
    repeat=1,
    period=1,
    slice=-1,
    addr=0,
    stride=0,
    s0=-1,
    s1=-1,
    s2=-1,
    sd=-1,
    plane=-1,
    row=0,
    count=0,
    table=-1,
    imm=0.0,
    vid=-1,
    in0=-1,
    in1=-1,
    in2=-1,
    aux=-1,
    src=-1,
)


def make_instrs(records: list[dict]) -> np.ndarray:
    """Records (dicts of fields) -> instructions, in record order. A record may give the `cycle`
    its queue dispatches it at instead of a `delay`: the delay is then the cycles since the
    previous record of its (chip, queue), or since cycle 0 for the first."""
    out = np.zeros(len(records), dtype=INSTR_DTYPE)
    given = set().union(*records) if records else set()
    for name, default in INSTR_DEFAULTS.items():
        if name in given:
            out[name] = [r.get(name, default) for r in records]
        elif default:
            out[name] = default
    last: dict[tuple, int] = {}
    for i, r in enumerate(records):
        if "cycle" in r:
            key = (int(out["chip"][i]), int(out["queue"][i]))
            out["delay"][i] = int(r["cycle"]) - last.get(key, 0)
            last[key] = int(r["cycle"])
    return out


def repetitions(ins) -> tuple[np.ndarray, np.ndarray]:
    """(instruction, repetition j) of every repetition of the instructions `ins`, in order; a
    repeat below 1 is none, as both executors take it."""
    reps = np.maximum(ins["repeat"].astype(np.int64), 0)
    i = np.repeat(np.arange(len(ins), dtype=np.int64), reps)
    return i, np.arange(len(i), dtype=np.int64) - np.repeat(np.cumsum(reps) - reps, reps)


def periods(ins):
    """Cycles between repetitions of each instruction (of a record or an array of them): its
    `period` field, below 1 taken as 1 by both executors."""
    return np.maximum(ins["period"].astype(np.int64), 1)


# --- queues: one per functional unit instance -----------------------------------------------------
# MEM slice i -> queue i; then the VXM, the two SXMs (west, east), the MXM planes.


def queue_vxm(hw: HardwareConfig) -> int:
    return hw.mem_slices


def queue_sxm(hw: HardwareConfig, hemisphere: int) -> int:
    return hw.mem_slices + 1 + hemisphere


def queue_mxm(hw: HardwareConfig, plane: int) -> int:
    return hw.mem_slices + 3 + plane


def queue_c2c(hw: HardwareConfig) -> int:
    return hw.mem_slices + 3 + hw.mxm_planes


def n_queues(hw: HardwareConfig) -> int:
    return queue_c2c(hw) + 1


def queue_unit(hw: HardwareConfig, q: int) -> tuple[Unit, int] | None:
    """The unit queue q feeds and its index (slice, hemisphere or plane), or None: no such queue."""
    if 0 <= q < hw.mem_slices:
        return Unit.MEM, q
    if q == queue_vxm(hw):
        return Unit.VXM, 0
    if q in (queue_sxm(hw, 0), queue_sxm(hw, 1)):
        return Unit.SXM, q - queue_sxm(hw, 0)
    if queue_mxm(hw, 0) <= q < queue_c2c(hw):
        return Unit.MXM, q - queue_mxm(hw, 0)
    if q == queue_c2c(hw):
        return Unit.C2C, 0
    return None


def unit_problem(hw: HardwareConfig, ins) -> str | None:
    """Why the instruction's queue cannot run its op, or None (see the module docstring)."""
    op, q = Op(int(ins["op"])), int(ins["queue"])
    unit, plane = OP_UNIT[op], int(ins["plane"])
    held = queue_unit(hw, q)
    if unit == Unit.ICU and held is not None:
        return None if int(ins["repeat"]) == 1 else f"{op.name} repeats ({int(ins['repeat'])}x)"
    if unit == Unit.MXM and int(ins["flags"]) & FLAG_BUFFER and hw.mxm_weight_buffers < 2:
        return f"MXM op {op.name} uses weight buffer 1 but planes of {hw.name} have one buffer"
    if held is not None and held[0] == unit and (unit != Unit.MXM or held[1] == plane):
        return None
    what = f"{unit.name} op {op.name}" + (f" for plane {plane}" if unit == Unit.MXM else "")
    if held is None:
        return f"{what} issued on queue {q}, which does not exist"
    return f"{what} issued on queue {queue_name(hw, q)}, which cannot run it"


def issue_width(hw: HardwareConfig, q: int) -> int:
    """Instructions queue q dispatches at most in one cycle (the module docstring)."""
    return hw.icu_issue_width * (hw.vxm_alus if q == queue_vxm(hw) else 1)


def queue_name(hw: HardwareConfig, q: int) -> str:
    if q < hw.mem_slices:
        return f"MEM{'WE'[hw.slice_hemisphere(q)]}{q % hw.half_slices}"
    if q == queue_vxm(hw):
        return "VXM"
    if q in (queue_sxm(hw, 0), queue_sxm(hw, 1)):
        return f"SXM{'WE'[q - queue_sxm(hw, 0)]}"
    if q == queue_c2c(hw):
        return "C2C"
    return f"MXM{q - queue_mxm(hw, 0)}"


def queue_position(hw: HardwareConfig, q: int) -> int:
    if q < hw.mem_slices:
        return hw.slice_position(q)
    if q == queue_vxm(hw):
        return hw.vxm_position
    if q in (queue_sxm(hw, 0), queue_sxm(hw, 1)):
        return hw.sxm_position(q - queue_sxm(hw, 0))
    if q == queue_c2c(hw):
        return hw.c2c_position
    return hw.mxm_position(q - queue_mxm(hw, 0))


# --- chip-to-chip links ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def link_cycles(hw: HardwareConfig, width: int) -> int:
    """Cycles a link's channel is busy sending one vector of `width` words (bytes per lane):
    ceil(width * lanes / c2c_bytes_per_cycle), the rate taken at its decimal value as
    sim.system.System.transfer_cycles takes it."""
    return math.ceil(Fraction(width * hw.lanes) / Fraction(str(hw.c2c_bytes_per_cycle)))


def link_problem(links: np.ndarray, ins) -> str | None:
    """Why a SEND/RECV cannot use its link (`table`), or None: the link must exist and end at
    the instruction's chip."""
    link, chip, n = int(ins["table"]), int(ins["chip"]), len(links)
    if not 0 <= link < n:
        have = f"the program's links are 0..{n - 1}" if n else "the program has no links"
        return f"link {link} does not exist ({have})"
    a, b = int(links[link, 0]), int(links[link, 1])
    if chip not in (a, b):
        return f"link {link} joins chip {a} and chip {b}, not chip {chip}"
    return None


def link_channel(links: np.ndarray, ins) -> tuple[int, int, int]:
    """(channel, sending chip, receiving chip) of a SEND or RECV whose link_problem is None: a
    SEND sends from its chip, a RECV receives at its chip."""
    link, chip = int(ins["table"]), int(ins["chip"])
    a, b = int(links[link, 0]), int(links[link, 1])
    other = b if chip == a else a
    src, dst = (chip, other) if int(ins["op"]) == Op.SEND else (other, chip)
    return 2 * link + (0 if src == a else 1), src, dst


def link_name(links: np.ndarray, ins) -> str:
    """`link L (chip a -> chip b)`: the channel a SEND or RECV uses, as violations name it."""
    _, src, dst = link_channel(links, ins)
    return f"link {int(ins['table'])} (chip {src} -> chip {dst})"


def direction(src_position: int, dst_position: int) -> int:
    """0 (eastward) when the destination is east of the source or at it, else 1 (westward)."""
    return 0 if dst_position >= src_position else 1


def diagonal(direction: int, cycle: int, position: int) -> int:
    """A vector on a stream is at position p0 + k (east) or p0 - k (west) at cycle t0 + k, so
    cycle - position (east) or cycle + position (west) names it wherever it is."""
    return cycle - position if direction == 0 else cycle + position


def stream_name(hw: HardwareConfig, s: int) -> str:
    return f"{'EW'[s // hw.streams_per_direction]}{s % hw.streams_per_direction}"


def disassemble_one(hw: HardwareConfig, ins) -> str:
    """One instruction as readable text, e.g. `READ.f16 MEMW3[12] -> E4 vid=88`."""
    op = Op(int(ins["op"]))
    dt = DTYPE_SHORT[DType(int(ins["dtype"]))]
    rep = f" x{int(ins['repeat'])}" if ins["repeat"] > 1 else ""
    if ins["repeat"] > 1 and ins["period"] != 1:
        rep += f" every {int(ins['period'])}"

    def st(field):
        return stream_name(hw, int(ins[field]))

    if op in (Op.SYNC, Op.NOTIFY):
        return f"{op.name} barrier{int(ins['table'])}"
    if op == Op.IFETCH:
        return f"IFETCH {int(ins['count'])} from {queue_name(hw, int(ins['slice']))}[{int(ins['addr'])}]"
    vid = f"{int(ins['vid'])}"
    slot = f"link{int(ins['table'])}[{int(ins['addr'])}]"
    if op == Op.SEND:
        body = f"{st('s0')} -> {slot}"
    elif op == Op.RECV:
        body = f"{slot} -> {st('sd')}"
    elif op == Op.READ and ins["flags"] & FLAG_INDIRECT:
        sel = f"sel{int(ins['row'])}"
        where = f"{int(ins['addr'])} + {sel}*{int(ins['count'])}"
        body = f"{queue_name(hw, int(ins['slice']))}[{where}] -> {st('sd')}"
        vid += f" + {sel}*{int(ins['aux'])}"
    elif op == Op.READ:
        body = f"{queue_name(hw, int(ins['slice']))}[{int(ins['addr'])}] -> {st('sd')}"
    elif op == Op.WRITE:
        body = f"{st('s0')} -> {queue_name(hw, int(ins['slice']))}[{int(ins['addr'])}]"
    elif op in VXM_ARITY:
        ins_ = [st("s0")]
        if VXM_ARITY[op] >= 2:
            ins_.append(st("s1") if ins["s1"] >= 0 else f"#{float(ins['imm']):.6g}")
        if VXM_ARITY[op] == 3:
            ins_.append(st("s2"))
        body = f"{', '.join(ins_)} -> {st('sd')}"
    elif op in (Op.REDUCE_SUM, Op.REDUCE_MAX):
        body = f"{st('s0')}[:{int(ins['count'])}] -> {st('sd')}"
    elif op == Op.PERMUTE:
        body = f"{st('s0')} table{int(ins['table'])} -> {st('sd')}"
    elif op == Op.TOPK:
        k = f"k={float(ins['imm']):g}"
        body = f"{st('s0')}[:{int(ins['count'])}] {k} -> {st('sd')} sel{int(ins['table'])}"
    elif op == Op.INSTALL:
        t = "T" if ins["flags"] & FLAG_TRANSPOSED else ""
        body = f"{st('s0')} -> tile{int(ins['aux'])} row{t} {int(ins['row'])}"
    else:
        tile = f"tile{int(ins['aux'])} extent {int(ins['row'])}"
        body = f"{st('s0')}[:{int(ins['count'])}] @ {tile} -> {st('sd')}"
    stride = f" stride {int(ins['stride'])}" if ins["repeat"] > 1 and ins["stride"] else ""
    return f"{op.name}.{dt}{rep} {body}{stride} vid={vid}"
