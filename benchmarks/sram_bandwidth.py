"""The SRAM bandwidth each preset delivers, measured by simulating a streaming microbenchmark
(sim/microbench.py: every slice reads and writes a run on every port, one word a cycle, each
vector one hop on its stream), against its ports' peak and the figure published for it.

    python benchmarks/sram_bandwidth.py            # 2048 vectors per run
    python benchmarks/sram_bandwidth.py --small    # what CI runs: 256
    python benchmarks/sram_bandwidth.py --json

Published figures: REFERENCE.md "SRAM bandwidth" row (groq-tsp-v1, 80 TB/s) and the
next-generation line (lpu-next, 150 TB/s); the teaching chip has none.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from sim import preset, simulate
from sim.microbench import sram_stream_program

STATED_TB_PER_S = {"groq-tsp-v1": 80.0, "lpu-next": 150.0, "teaching": None}


def measure(name: str, vectors: int) -> dict:
    hw = preset(name)
    n = min(vectors, hw.words_per_slice // (2 * hw.mem_read_ports_per_slice))
    program = sram_stream_program(hw, n)
    start = time.perf_counter()
    r = simulate(program, mode="timing")
    wall = time.perf_counter() - start
    seconds = r.cycles / hw.clock_hz
    return {
        "hw": name,
        "vectors": n,
        "cycles": r.cycles,
        "ports": f"{hw.mem_read_ports_per_slice}R+{hw.mem_write_ports_per_slice}W",
        "peak_tb_per_s": hw.sram_bytes_per_cycle * hw.clock_hz / 1e12,
        "simulated_tb_per_s": (r.bytes_read + r.bytes_written) / seconds / 1e12,
        "stated_tb_per_s": STATED_TB_PER_S[name],
        "simulate_s": wall,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="short runs (CI)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = [measure(name, 256 if args.small else 2048) for name in STATED_TB_PER_S]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'preset':<13}{'ports':>7}{'vectors':>9}{'cycles':>8}{'peak TB/s':>11}"
          f"{'simulated':>11}{'stated':>8}{'sim s':>7}")  # fmt: skip
    for r in rows:
        stated = "-" if r["stated_tb_per_s"] is None else f"{r['stated_tb_per_s']:.0f}"
        print(
            f"{r['hw']:<13}{r['ports']:>7}{r['vectors']:>9}{r['cycles']:>8}"
            f"{r['peak_tb_per_s']:>11.2f}{r['simulated_tb_per_s']:>11.2f}{stated:>8}"
            f"{r['simulate_s']:>7.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
