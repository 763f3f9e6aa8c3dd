"""Systems of chips joined by chip-to-chip links, and their simulation."""

from openlpu.system.simulate import SystemResult, simulate_system
from openlpu.system.topology import Endpoint, System, pipeline

__all__ = ["Endpoint", "System", "SystemResult", "pipeline", "simulate_system"]
