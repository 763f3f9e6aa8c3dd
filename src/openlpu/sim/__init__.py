"""The cycle-exact, bit-exact simulator of one LPU chip."""

from openlpu.sim.engine import Result, Verified, simulate, verify

__all__ = ["Result", "Verified", "simulate", "verify"]
