"""What every kernel returns: a scheduled program that knows its cycle count before it runs, and a fast path.

`run` simulates the program cycle-exactly. `run_fast` computes the same output from the same inputs with the
same numerics, in the same order of operations, without simulating: it must match `run` bit for bit (a test
checks each kernel), and its latency is the schedule's prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from openlpu.hardware.chip import Chip
from openlpu.isa.program import Program
from openlpu.sim.engine import Result, simulate


@dataclass(frozen=True)
class Kernel:
    program: Program
    predicted_cycles: int
    inputs: dict[str, np.ndarray]
    assemble: Callable[[dict[str, np.ndarray]], np.ndarray]
    fast: Callable[[dict[str, np.ndarray]], np.ndarray]

    def run(self, chip: Chip) -> tuple[np.ndarray, Result]:
        """Simulate on `chip`; returns the kernel's output array and the simulation result."""
        result = simulate(self.program, chip, self.inputs)
        return self.assemble(result.tensors), result

    def run_fast(self) -> tuple[np.ndarray, int]:
        """The output without simulating, and the predicted cycle count."""
        return self.fast(self.inputs), self.predicted_cycles
