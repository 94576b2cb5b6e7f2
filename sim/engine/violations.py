"""The kernel's error code and few integers -> the exception the reference interpreter raises,
worded the same way (chip, unit, cycle, instruction index, disassembly, source, conflict)."""

from __future__ import annotations

import numpy as np

from sim.engine import schema as c
from sim.engine.prepare import Prepared
from sim.errors import ScheduleViolation
from sim.isa import (
    DTYPE_BYTES,
    FLAG_TRANSPOSED,
    OP_UNIT,
    SELECT_REGISTERS,
    DType,
    Op,
    Unit,
    disassemble_one,
    link_name,
    link_problem,
    matmul_problem,
    periods,
    queue_mxm,
    queue_name,
    stream_name,
    topk_problem,
    unit_problem,
)
from sim.program import Program
from sim.reference import tile_problem

OPERAND_FIELDS = ("s0", "s1", "s2")
# Malformed fields, worded by the functions the reference calls for them.
FIELD_PROBLEMS = {c.E_UNIT: unit_problem, c.E_EXTENT: matmul_problem, c.E_TOPK: topk_problem}


def _busy_what(hw, r, m: int) -> tuple[str, int]:
    """The resource an instruction claims (m: slice offset in a MEM group) and its capacity."""
    op = Op(int(r["op"]))
    unit = OP_UNIT[op]
    if unit == Unit.MEM or op == Op.IFETCH:
        if op == Op.WRITE:
            return (
                f"every {queue_name(hw, int(r['slice']) + m)} wr port",
                hw.mem_write_ports_per_slice,
            )
        return f"every {queue_name(hw, int(r['slice']) + m)} rd port", hw.mem_read_ports_per_slice
    if unit == Unit.VXM:
        return "every VXM ALU", hw.vxm_alus
    if unit == Unit.SXM:
        return "every SXM unit", hw.sxm_units_per_hemisphere
    if op == Op.INSTALL:
        return "the install port", hw.mxm_install_vectors_per_cycle
    return "the plane's compute port", 1


def _conflict(program: Program, out: np.ndarray, installed: np.ndarray, i: int, j: int) -> str:
    hw = program.hw
    r = program.instrs[i]
    code, t, a, b, x = (int(out[k]) for k in (c.O_CODE, c.O_CYCLE, c.O_A, c.O_B, c.O_C))
    vid = int(r["vid"]) + j
    op = Op(int(r["op"]))
    float32 = op in (Op.MATMUL, Op.TOPK)  # results float32 whatever the dtype field says
    width = DTYPE_BYTES[DType.FLOAT32 if float32 else DType(int(r["dtype"]))]
    tile = int(r["aux"])
    if code == c.E_SLICE:
        return f"slice group {int(r['slice'])} x{width} is misaligned or not this queue"
    if code == c.E_ACC_ROW:
        return f"accumulator row {a} is outside 0..{hw.mxm_accumulator_vectors - 1}"
    if code == c.E_ACC_HELD:
        held = f"partial sum {b}" if b >= 0 else "nothing"
        return f"expects partial sum {x} in accumulator row {a} but it holds {held}"
    if code == c.E_ACC_BUSY:
        return (
            f"keeps partial sum {vid} in accumulator row {a}, which still holds partial sum {b} "
            "that no MATMUL added"
        )
    if code == c.E_FETCH_SLICE:
        return f"IFETCH reads slice {a}, outside 0..{hw.mem_slices - 1}"
    if code == c.E_ADDRESS:
        return f"address {a} is outside 0..{hw.words_per_slice - 1}"
    if code == c.E_BUSY:
        what, capacity = _busy_what(hw, r, a)
        return f"{what} is already in use in this cycle (capacity {capacity})"
    if code == c.E_HELD:
        held = (
            f"vector {x} (overwritten before its last reader)"
            if x >= 0
            else "nothing yet (read before the write arrives)"
        )
        want = int(out[c.O_D])  # vid + j, plus the selected unit's offset for an indirect READ
        return (
            f"expects vector {want} at {queue_name(hw, int(r['slice']) + a)}[{b}] but it holds "
            + held
        )
    if code == c.E_PUT_ALIGN:
        return f"stream group {stream_name(hw, int(r['sd']))} x{width} is misaligned"
    if code == c.E_PUT_TAKEN:
        return (
            f"stream {stream_name(hw, int(r['sd']) + a)} already carries vector {b} "
            f"(from instruction #{x}) put at this position on this diagonal"
        )
    if code == c.E_NO_VECTOR:
        st = int(r[OPERAND_FIELDS[a]])
        return f"reads stream {stream_name(hw, st)} but no vector arrives there at cycle {t}"
    if code == c.E_TORN:
        return f"stream group {stream_name(hw, int(r[OPERAND_FIELDS[a]]))} x{b} is torn"
    if code == c.E_EXPECT:
        return (
            f"expects vector {b} on stream {stream_name(hw, int(r[OPERAND_FIELDS[a]]))} but vector "
            f"{x} passes at this cycle (its operand is not there yet, no longer, or was replaced "
            "upstream)"
        )
    if code == c.E_WRONG_VECTOR:
        return f"stream carries vector {a}, not {vid}"
    if code == c.E_TILE_USED:
        return f"installs into tile {tile} after a matmul used it"
    if code == c.E_TILE_MISSING:
        return (
            f"needs tile {tile} but the plane holds tile {a} "
            "(overwritten before its last reader, or never installed)"
        )
    if code == c.E_TILE_NOT_READY:
        return f"tile {tile} is not installed until cycle {a}"
    if code == c.E_TILE_ROWS:
        return f"uses {int(r['count'])} rows of tile {tile}; {a} installed"
    what = "column" if int(r["flags"]) & FLAG_TRANSPOSED else "row"
    if code in FIELD_PROBLEMS:
        return FIELD_PROBLEMS[code](hw, r)
    if code == c.E_INSTALL_ROW:
        return f"installs {what} {a} of tile {tile}, outside 0..{hw.lanes - 1}"
    if code == c.E_INSTALL_TWICE:
        return f"installs {what} {a} of tile {tile} twice"
    if code == c.E_TILE_ORIENTATION:
        held = "rows" if what == "column" else "columns"
        return f"installs a {what} of tile {tile}, which holds {held}"
    if code == c.E_TILE_HOLES:  # a: the plane's slot, b: whether its tile is transposed
        problem = tile_problem(tile, int(r["row"]), installed[a], bool(b))
        assert problem is not None, "the kernel and tile_problem disagree"
        return problem
    if code == c.E_SEL_REGISTER:
        return f"select register {a} is outside 0..{SELECT_REGISTERS - 1}"
    if code == c.E_SEL_EARLY:
        return f"reads select register {a} before TOPK writes it at cycle {b}"
    if code == c.E_LINK:
        return link_problem(program.links, r)
    if code == c.E_C2C_SLOT:
        return f"slot {a} is outside 0..{hw.c2c_buffer_vectors - 1} (c2c_buffer_vectors)"
    if code == c.E_LINK_BUSY:
        return f"the link is busy until cycle {a} sending an earlier vector"
    if code == c.E_C2C_OVERWRITE:
        return (
            f"vector {a} lands in slot {b} at cycle {int(out[c.O_D])} and overwrites vector {x} "
            "not yet received"
        )
    if code == c.E_C2C_MISSING:
        coming = int(out[c.O_D])
        if b != c.EMPTY:
            what = f"it holds vector {b}"
        elif coming != c.EMPTY:
            what = f"nothing has landed there yet (vector {x} lands at cycle {coming})"
        else:
            what = "it holds nothing and no SEND in flight fills it"
        return f"expects vector {vid} in slot {a} but {what}"
    raise AssertionError(f"unknown engine error code {code}")


def _index_error(program: Program, i: int, a: int) -> IndexError:
    """The IndexError NumPy raises in the reference for an out-of-range operand (functional
    mode only), with NumPy's wording."""
    r = program.instrs[i]
    lanes = program.hw.lanes
    op = Op(int(r["op"]))
    size, index = lanes, a  # a MATMUL's count beyond the lanes, or a PERMUTE's table
    if op == Op.PERMUTE:
        table, n = int(r["table"]), len(program.tables)
        if not -n <= table < n:
            size, index = n, table
        else:
            row = program.tables[table]
            index = int(row[np.argmax(row >= lanes)])
    return IndexError(f"index {index} is out of bounds for axis 0 with size {size}")


def raise_failure(program: Program, prep: Prepared, out: np.ndarray, installed: np.ndarray) -> None:
    """Raise what the reference raises at the event where the kernel stopped (`installed`: the
    kernel's MXM row flags, which a MATMUL's complaint lists)."""
    e = int(out[c.O_EVENT])
    i = int(prep.ev_i[e])
    j = (int(prep.ev_t[e]) - int(prep.dispatch[i])) // int(periods(program.instrs[i]))
    if out[c.O_CODE] == c.E_INDEX:
        raise _index_error(program, i, int(out[c.O_A]))
    r = program.instrs[i]
    conflict = _conflict(program, out, installed, i, j)
    if int(r["op"]) in (Op.SEND, Op.RECV) and link_problem(program.links, r) is None:
        conflict = f"{link_name(program.links, r)}: {conflict}"  # as the reference names links
    raise ScheduleViolation(
        chip=int(r["chip"]),
        unit=queue_name(program.hw, int(r["queue"])),
        cycle=int(out[c.O_CYCLE]),
        index=i,
        instr=disassemble_one(program.hw, r),
        source=program.source(int(r["src"])),
        conflict=conflict,
    )


def missing_output(program: Program, chip: int, name: str, k: int, slice_: int, addr: int,
                   want: int, held: int, end: int) -> ScheduleViolation:  # fmt: skip
    return ScheduleViolation(
        chip=chip,
        unit=queue_name(program.hw, slice_),
        cycle=end,
        index=-1,
        instr=f"output {name}[{k}]",
        source="program end",
        conflict=f"output vector {want} is not at [{addr}] (it holds {held})",
    )


def leftover_partial(program: Program, prep, slot: int, vid: int) -> ScheduleViolation:
    """A partial sum still in an accumulator at the end (slot: dense plane * rows + row)."""
    g, rows = prep.g, program.hw.mxm_accumulator_vectors
    dense, row = divmod(slot, rows)
    key = int(np.searchsorted(prep.plane_map, dense))  # plane_map never decreases
    chip_index, plane = divmod(key, int(g[c.G_PLANES]))
    return ScheduleViolation(
        chip=chip_index + int(g[c.G_CHIP_LO]),
        unit=queue_name(program.hw, queue_mxm(program.hw, plane + int(g[c.G_PLANE_LO]))),
        cycle=prep.cycles,
        index=-1,
        instr=f"accumulator row {row}",
        source="program end",
        conflict=f"partial sum {vid} is left in the accumulator: no MATMUL added it",
    )
