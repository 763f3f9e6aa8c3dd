"""Simulated chip cycles per wall-clock second of the cycle-exact simulator.

(a) a 4096 x 4096 fp16 matrix-vector product on the MXM (the matmul kernel, both hemispheres);
(b) a long VXM elementwise chain (64 fp32 operations over 2048 rows, streamed through the ALU ranks).

Each is built once, then simulated `--repeat` times (checks off: the NumPy reference is not the simulator);
the best wall time counts. The last line printed is one JSON object with `cycles_per_second` (of (a)).
Run: .venv/bin/python bench/bench_sim.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from openlpu.hardware import load_chip
from openlpu.isa import DType, Opcode
from openlpu.kernels import matmul
from openlpu.kernels.chain import Step, vxm_chain
from openlpu.sim import simulate


def _time(kernel, chip, repeat: int) -> tuple[int, float, int, int]:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = simulate(kernel.program, chip, kernel.inputs, run_checks=False)
        best = min(best, time.perf_counter() - start)
    assert result.cycles == kernel.predicted_cycles
    return result.cycles, best, result.events, kernel.program.instruction_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    chip = load_chip("groqchip1")
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (1, 4096)).astype(np.float16)
    b = rng.uniform(-1, 1, (4096, 4096)).astype(np.float16)
    cases = {
        "matvec_fp16_4096": matmul(chip, a, b, DType.FP16),
        "vxm_chain_64x2048": vxm_chain(chip, rng.uniform(-1, 1, (2048, 320)).astype(np.float32),
                                       [Step(Opcode.MUL, 0.999), Step(Opcode.ADD, 0.001)] * 32),
    }
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "numpy": np.__version__}
    for name, kernel in cases.items():
        cycles, seconds, events, instructions = _time(kernel, chip, args.repeat)
        report[name] = {"cycles": cycles, "wall_seconds": round(seconds, 4), "events": events,
                        "instructions": instructions, "cycles_per_second": round(cycles / seconds)}
        print(f"{name}: {cycles} cycles, {instructions} instructions, {events} events in {seconds:.3f} s "
              f"-> {cycles / seconds:,.0f} simulated cycles/s")
    report["cycles_per_second"] = report["matvec_fp16_4096"]["cycles_per_second"]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
