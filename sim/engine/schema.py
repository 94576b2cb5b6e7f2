"""The engine's array layouts: column numbers of its int64 state tables, the geometry vector,
statistics of the pre-pass, and error codes.

Plain module-level ints, so Numba folds them into the kernels as constants. Grammar:

    g       (G_*,)                 sizes and ranges of one Program on one chip config
    stats   (S_*,)                 what the pre-pass over the instructions found
    ring    (slots, R_*)           stream slots: (diagonal mod RING, way, stream key)
    planes  (2 * planes, PL_*)     MXM tile state per (chip, plane, weight buffer)
    installed (2 * planes, lanes)  bool: which rows (columns) of its tile each buffer holds
    queue_lut (queues, 2)          (unit, index) of each queue from G_QUEUE_LO; unit -1: none
    pending (capacity, Q_*)        WRITE commits in flight, a FIFO (commit order = issue order)
    sel_pending (capacity, SQ_*)   TOPK select-register writes in flight, a FIFO (same order)
    busy    (resources, 2)         (last cycle claimed, claims in that cycle) per resource; for
                                   the MXM compute ports and the links' channels (the cycle it is
                                   next free, unused)
    links   (links, 2)             the chips each link joins (Program.links)
    slot_vid (channels * slots,)   vector each C2C receive slot holds (EMPTY: none); channel 2L is
                                   link L's a -> b, 2L + 1 its b -> a
    arrivals (N_FIFOS * capacity, A_*)  SENDs in flight: a FIFO per vector width (1, 2, 4 words),
                                   each in arrival order (arrival = issue + a constant per width),
                                   and FIFO_EXTERNAL: other chips' SENDs, given in arrival order
    out     (O_*,)                 status, where the kernel stopped and why, stream hop count
"""

# --- g: geometry ----------------------------------------------------------------------------------
G_STREAMS = 0  # streams per direction
G_SLICES = 1  # hw.mem_slices (ports, alignment)
G_LANES = 2
G_WORDS_PER_SLICE = 3  # the address limit
G_CHIP_LO = 4  # chip number of chip index 0 (chip numbers are offset so the chip axis starts at 0)
G_CELL_SLICES = 5  # slices per chip in the memory arrays (>= hw.mem_slices); the slices of one
# address are adjacent cells, so a slice group's words share a cache line
G_CELL_WORDS = 6  # addresses per slice in the memory arrays
G_HEMI_LO = 7  # SXM hemisphere (queue - first SXM queue) of dense slot 0, and slots per chip
G_HEMIS = 8
G_PLANE_LO = 9  # MXM `plane` field of dense slot 0, and slots per chip
G_PLANES = 10
G_DIR_LO = 11  # stream direction (st // S) of key block 0, and directions per chip
G_DIRS = 12
G_BASE_VXM = 13  # first resource index of each kind (MEM ports start at 0)
G_BASE_SXM = 14
G_BASE_INSTALL = 15
G_BASE_COMPUTE = 16
G_VXM_CAP = 17
G_SXM_CAP = 18
G_INSTALL_CAP = 19
G_FIRST_SXM_QUEUE = 20
G_TABLES = 21
G_RING_MASK = 22  # diagonals per stream key, minus one (a power of two)
G_PENDING_MASK = 23
G_KEYS = 24  # stream keys; slot = (diagonal & mask) * keys + key, so a group's slots are adjacent
G_QUEUE_LO = 25  # queue of pos_lut[0]
G_SEL_PENDING_MASK = 26
G_WEIGHT_BUFFERS = 27  # per MXM plane (tile state: 2 slots per plane whatever this is)
G_FP16_CYCLES = 28  # compute-pipeline cycles per MATMUL input wider than a byte
G_ACC_ROWS = 29  # accumulator rows per MXM plane (accum: (planes * rows,) partial sum vids)
G_READ_PORTS = 30  # reads a MEM slice serves per cycle
G_WRITE_PORTS = 31
G_WAYS = 32  # vectors each (stream key, diagonal) keeps, put at different positions
G_LINK_CYCLES = 33  # g[G_LINK_CYCLES + w]: cycles a channel sends a w-word vector (w = 1, 2, 4)
G_LINKS = 38
G_C2C_SLOTS = 39  # receive slots per channel (hw.c2c_buffer_vectors)
G_C2C_LATENCY = 40
G_ARRIVAL_MASK = 41  # entries per arrivals FIFO, minus one (a power of two)
G_BASE_LINK = 42  # resource index of channel 0 in busy
G_EXTERNAL = 43  # arrivals given up front in FIFO_EXTERNAL (a chip simulated alone: share.py)
G_ALONE = 44  # 1: chip 0 runs alone (share.py, segments.py), its links' other end (chip 1) stands
# for the chips simulated on their own, whose RECVs take what chip 0 sends them there: vectors
# sent to it land nowhere here
N_GEOMETRY = 45

# Stream keys of one (chip, direction): S streams and a pad, so the torn-group check of the last
# streams looks at keys that are never written instead of at the next direction's.
KEY_PAD = 4

# --- stats: the pre-pass (sim.engine.prepare._scan) -----------------------------------------------
S_BAD_OP = 0  # first instruction no executor can run, or -1
S_BAD_FIELD = 1  # 0: invalid op, 1: invalid dtype
S_CHIP_LO = 2
S_CHIP_HI = 3
S_QUEUE_HI = 4
S_HEMI_LO = 5  # over SXM instructions
S_HEMI_HI = 6
S_PLANE_LO = 7  # over MXM instructions
S_PLANE_HI = 8
S_STREAM_LO = 9  # over every stream operand an instruction uses
S_STREAM_HI = 10
S_TOUCHED = 11  # highest address a MEM instruction names, plus one
S_IN_ORDER = 12  # 1: every repeat is 1 and cycles never decrease: events = instructions
S_EVENTS = 13
S_END = 14  # when the last event's result lands
S_MEM_READ = 15  # counts, in sim.reference.COUNT_KEYS order (stream hops come from the kernel)
S_MEM_WRITE = 16
S_VXM = 17
S_SXM = 18
S_INSTALL = 19
S_MATMUL = 20
S_QUEUE_LO = 21
S_TOPK = 22  # TOPK instructions (their register writes are numbered up front)
S_C2C_SEND = 23  # SEND repetitions
N_STATS = 24

# --- ring: G_WAYS slots per (diagonal mod RING, stream key) ----------------------------------------
# A diagonal may carry several vectors, put at different positions (each replaces the one from
# upstream from its position on); each takes a way. A take finds the nearest upstream of the ways.
R_DIAG = 0  # the full diagonal held, or EMPTY: another diagonal means the slot is stale
R_VID = 1
R_P0 = 2  # position where the vector entered
R_WIDTH = 3  # words of the vector (streams of its group)
R_SRC = 4  # instruction that put it
N_RING = 5
EMPTY = -(2**63)

# --- planes ---------------------------------------------------------------------------------------
PL_TILE = 0
PL_READY = 1
PL_ROWS = 2  # rows (columns) installed; with PL_HIGH it tells whether they are 0..extent-1
PL_USED = 3
PL_TRANSPOSED = 4
PL_HIGH = 5  # highest row installed, plus one
N_PLANE = 6

# --- pending WRITE commits ------------------------------------------------------------------------
Q_COMMIT = 0
Q_CELL = 1
Q_WIDTH = 2
Q_VID = 3
N_PENDING = 4

# --- pending select-register writes ---------------------------------------------------------------
SQ_COMMIT = 0
SQ_REGISTER = 1  # chip index * SELECT_REGISTERS + register
SQ_INDEX = 2
N_SEL_PENDING = 3
# sel_first[chip index * SELECT_REGISTERS + register]: the cycle the first TOPK write of a register
# lands, or NEVER when no TOPK writes it.
NEVER = -(2**63)

# --- arrivals: SENDs in flight ---------------------------------------------------------------------
A_AT = 0  # the cycle the vector lands
A_EVENT = 1  # the SEND's event (its issue order)
A_SLOT = 2  # channel * slots + slot
A_VID = 3
N_ARRIVAL = 4
N_FIFOS = 4  # FIFO f < 3 holds the SENDs of 2**f-word vectors
FIFO_EXTERNAL = 3  # the vectors other chips send to a chip simulated alone (A_EVENT -1)

# --- out ------------------------------------------------------------------------------------------
O_CODE = 0
O_EVENT = 1
O_CYCLE = 2
O_A = 3
O_B = 4
O_C = 5
O_HOPS = 6
O_D = 7  # E_HELD: the vector expected there
N_OUT = 8

# Error codes (O_CODE): the kernel stops at the first; sim.engine.violations words it.
OK = 0
E_SLICE = 1  # MEM slice group misaligned or not this queue
E_ADDRESS = 2  # a: address
E_BUSY = 3  # a: offset of the claimed resource in the instruction's slice group
E_HELD = 4  # a: slice offset, b: address, c: vector the memory holds, d: the one expected
E_PUT_ALIGN = 5  # output stream group misaligned
E_PUT_TAKEN = 6  # a: stream offset, b: vector already there, c: its instruction
E_NO_VECTOR = 7  # a: operand (0, 1, 2)
E_TORN = 8  # a: operand, b: width of the vector found
E_WRONG_VECTOR = 9  # a: vector on the stream (WRITE)
E_TILE_USED = 10
E_TILE_MISSING = 11  # a: tile the plane holds
E_TILE_NOT_READY = 12  # a: cycle it is ready
E_TILE_ROWS = 13  # a: the tile's extent (= rows installed)
E_INDEX = 14  # functional only: where the reference's NumPy indexing fails; a: the index
E_EXPECT = 15  # a: operand, b: vector expected (in0..in2), c: vector on the stream
E_TOPK = 16  # malformed TOPK (k, count, table)
E_SEL_REGISTER = 17  # indirect READ names no select register; a: the register
E_SEL_EARLY = 18  # a: register, b: cycle its first TOPK write lands
E_UNIT = 19  # the op's unit does not run on this queue (or, MXM, not for this plane)
E_EXTENT = 20  # malformed MATMUL extent (row field)
E_INSTALL_ROW = 21  # a: row outside the lanes
E_INSTALL_TWICE = 22  # a: row already installed in this tile
E_TILE_ORIENTATION = 23  # an INSTALL of a row into a tile of columns, or the reverse
E_TILE_HOLES = 24  # the rows installed are not 0..extent-1; a: plane slot, b: transposed
E_FETCH_SLICE = 25  # an IFETCH names no slice; a: the slice
E_ACC_ROW = 26  # a: accumulator row outside the plane's
E_ACC_HELD = 27  # a: row, b: partial sum it holds (-1: none), c: the one expected
E_ACC_BUSY = 28  # a: row, b: the partial sum it still holds
E_WAYS = 29  # a diagonal holds more vectors than G_WAYS: not a violation; run again with more
E_LINK = 30  # a SEND/RECV names no link, or one that does not end at its chip (link_problem)
E_C2C_SLOT = 31  # a: receive slot outside the channel's
E_LINK_BUSY = 32  # a: the cycle the channel is free again
E_C2C_OVERWRITE = 33  # (event: the SEND) a: vid landing, b: slot, c: vid it holds, d: arrival
E_C2C_MISSING = 34  # a: slot, b: vid it holds (EMPTY: none), c: vid in flight to it, d: when it
# lands (EMPTY: none in flight)
