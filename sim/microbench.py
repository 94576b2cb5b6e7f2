"""Hand-built Programs that drive one resource of the machine flat out: what the simulated chip can
deliver, measured by running it, for presets to be checked against their published figures.

    sram_stream_program(hw, vectors) -> Program

SRAM bandwidth. Neighbouring slices of a hemisphere pair up, (0, 1), (2, 3), ... Each slice READs
`vectors` words per port, one a cycle (a Repeat), onto a stream towards its partner, which WRITEs
them as they pass, one position further on: every read and write port busy every cycle, every
vector one hop on its stream. Pairs use the same streams on the same diagonals at different
positions, as the TSP's stream registers allow (sim/reference.py "Streams"): a vector put by a
pair downstream replaces the one from upstream after its partner took it.
"""

from __future__ import annotations

import numpy as np

from sim.hardware import HardwareConfig
from sim.isa import DType, Op, make_instrs
from sim.program import Program, Symbol


def _start_cycles(flows: int, hop: int) -> list[int]:
    """Cycles a slice's queue dispatches its READs at, one per flow, such that none shares a cycle
    with another READ or with a WRITE (each `hop` cycles after a READ): the queue dispatches one
    instruction a cycle."""
    starts: list[int] = []
    used: set[int] = set()
    t = 0
    while len(starts) < flows:
        if t not in used and t + hop not in used:
            starts.append(t)
            used.update((t, t + hop))
        t += 1
    return starts


def sram_stream_program(hw: HardwareConfig, vectors: int) -> Program:
    """Every slice reads and writes `vectors` words per port pair (min of read and write ports
    per slice): 2 x that x slices x vectors words in all (INT8, one word a vector)."""
    if not isinstance(vectors, int) or vectors < 1:
        raise ValueError(f"vectors={vectors!r} must be a positive integer")
    flows = min(hw.mem_read_ports_per_slice, hw.mem_write_ports_per_slice)
    if flows > hw.streams_per_direction:
        raise ValueError(
            f"{flows} port pairs per slice need as many streams each way; "
            f"streams_per_direction={hw.streams_per_direction}"
        )
    if vectors * 2 * flows > hw.words_per_slice:
        raise ValueError(
            f"vectors={vectors}: {2 * flows} runs of it per slice exceed the slice's "
            f"{hw.words_per_slice} words"
        )
    hop = hw.mem_read_latency_cycles + 1  # from a READ's dispatch to its vector at the partner
    starts = _start_cycles(flows, hop)
    records, slices, addrs, vids = [], [], [], []
    for a in range(hw.mem_slices):
        b = a ^ 1  # its partner: the next slice of the hemisphere, outwards or inwards
        direction = 0 if hw.slice_position(b) > hw.slice_position(a) else 1
        for k, t in enumerate(starts):
            v0 = (a * flows + k) * vectors  # the run this slice reads on port pair k
            slices += [a] * vectors
            addrs += range(k * vectors, (k + 1) * vectors)
            vids += range(v0, v0 + vectors)
            stream = direction * hw.streams_per_direction + k
            common = dict(dtype=DType.INT8, repeat=vectors, stride=1, vid=v0)
            records.append(
                dict(op=Op.READ, queue=a, slice=a, addr=k * vectors, sd=stream, cycle=t, **common)
            )
            records.append(
                dict(op=Op.WRITE, queue=b, slice=b, addr=(flows + k) * vectors, s0=stream, cycle=t + hop, **common)
            )  # fmt: skip
    records.sort(key=lambda r: (r["queue"], r["cycle"]))
    n = len(vids)
    source = Symbol(
        name="x",
        kind="input",
        shape=(n, hw.lanes),
        dtype="int8",
        slices=np.asarray(slices, np.int32),
        addrs=np.asarray(addrs, np.int32),
        vids=np.asarray(vids, np.int64),
    )
    return Program(
        hw=hw,
        instrs=make_instrs(records),
        tables=np.zeros((0, hw.lanes), np.int32),
        symbols=(source,),
        consts={},
        sources=("sram_stream_program",),
        predicted_cycles=0,
        words_used=2 * flows * vectors,
    )
