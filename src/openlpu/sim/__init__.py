"""The cycle-exact, bit-exact simulator of one LPU chip."""

from openlpu.sim.engine import Result, simulate

__all__ = ["Result", "simulate"]
