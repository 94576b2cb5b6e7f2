"""The engine's array layouts: column numbers of its int64 tables, error codes, parameters.

Plain module-level ints, so Numba folds them into the kernels as constants. Grammar:

    ins     (instructions, I_*)    one row per instruction, everything the event loop needs,
                                   precomputed by sim.engine.prepare
    ring    (slots, R_*)           stream slots: keys x RING diagonals (see prepare.ring_size)
    planes  (planes, PL_*)         MXM tile state per (chip, plane)
    pending (capacity, Q_*)        WRITE commits in flight, a FIFO (commit order = issue order)
    busy    (resources, 2)         (last cycle used, uses in that cycle) per resource
    par     (P_*,)                 sizes
    out     (O_*,)                 status, where it failed and why, and the stream hop count
"""

# --- ins: per-instruction columns -----------------------------------------------------------------
I_CYCLE = 0  # issue cycle of repetition 0
I_UNIT = 1  # sim.isa.Unit
I_OP = 2  # sim.isa.Op
I_CODE = 3  # element type (sim.isa.DType) results are rounded to
I_WIDTH = 4  # words per lane of the vector it reads/writes/produces (MATMUL: 4, float32)
I_LAT = 5  # cycles from issue to result (or commit)
I_POS = 6  # floorplan position of the queue's unit
I_VID = 7  # vector id of repetition 0
I_SLICE_OK = 8  # MEM: slice group aligned, inside the chip and this queue's slice
I_CELL = 9  # MEM: flat memory index of (chip, base slice, address 0)
I_ADDR = 10
I_STRIDE = 11
I_RES = 12  # first resource it claims (MEM: one per slice of its group)
I_CAP = 13  # that resource's uses per cycle
I_K0 = 14  # stream keys of s0, s1, s2, sd; -1 where unused (s1 of an immediate operand)
I_K1 = 15
I_K2 = 16
I_KD = 17
I_EAST0 = 18  # 1 where that stream flows east (diagonal t - p), 0 west (t + p)
I_EAST1 = 19
I_EAST2 = 20
I_EASTD = 21
I_SD_OK = 22  # the output stream group is aligned and inside its direction
I_ARITY = 23  # VXM stream operands
I_PLANE = 24  # MXM: compact index of (chip, plane)
I_TILE = 25
I_TRANSPOSED = 26
I_ROW = 27
I_COUNT = 28
I_NRED = 29  # REDUCE: lanes reduced (Python slice semantics of `count`)
I_TABLE = 30  # PERMUTE: row of `tables`, -1 if the table index or an entry is out of range
N_COLS = 31

# --- ring: one slot per (stream key, diagonal mod RING) --------------------------------------------
R_DIAG = 0  # the full diagonal held, or EMPTY: a different diagonal means the slot is stale
R_VID = 1
R_P0 = 2  # position where the vector entered
R_WIDTH = 3  # words of the vector (streams of its group)
R_SRC = 4  # instruction that put it
N_RING = 5
EMPTY = -(2**63)

# --- planes ---------------------------------------------------------------------------------------
PL_TILE = 0
PL_READY = 1
PL_ROWS = 2
PL_USED = 3
PL_TRANSPOSED = 4
N_PLANE = 5

# --- pending WRITE commits ------------------------------------------------------------------------
Q_COMMIT = 0
Q_CELL = 1
Q_WIDTH = 2
Q_VID = 3
N_PENDING = 4

# --- par ------------------------------------------------------------------------------------------
P_LANES = 0
P_WORDS = 1  # words per slice (the address limit)
P_CELL_STRIDE = 2  # flat memory index distance between adjacent slices
P_RING_MASK = 3
P_PENDING_MASK = 4
N_PAR = 5

# --- out ------------------------------------------------------------------------------------------
O_CODE = 0
O_EVENT = 1
O_CYCLE = 2
O_A = 3
O_B = 4
O_C = 5
O_HOPS = 6
N_OUT = 7

# Error codes (O_CODE): the kernel stops at the first; sim.engine.violations words it.
OK = 0
E_SLICE = 1  # MEM slice group misaligned or not this queue
E_ADDRESS = 2  # a: address
E_BUSY = 3  # a: offset of the resource in the instruction's group
E_HELD = 4  # a: slice offset, b: address, c: vector held
E_PUT_ALIGN = 5  # output stream group misaligned
E_PUT_TAKEN = 6  # a: stream offset, b: vector there, c: its instruction
E_NO_VECTOR = 7  # a: operand (0, 1, 2)
E_TORN = 8  # a: operand, b: width of the vector found
E_WRONG_VECTOR = 9  # a: vector on the stream
E_TILE_USED = 10
E_TILE_MISSING = 11  # a: tile the plane holds
E_TILE_NOT_READY = 12  # a: ready cycle
E_TILE_ROWS = 13  # a: rows installed
E_INDEX = 14  # functional only, where the reference indexes out of range; a: the index
