"""What every kernel returns: a scheduled program that knows its cycle count before it runs."""

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

    def run(self, chip: Chip) -> tuple[np.ndarray, Result]:
        """Simulate on `chip`; returns the kernel's output array and the simulation result."""
        result = simulate(self.program, chip, self.inputs)
        return self.assemble(result.tensors), result
