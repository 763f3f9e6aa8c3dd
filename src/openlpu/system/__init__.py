"""Systems of chips joined by chip-to-chip links, and their simulation."""

from openlpu.system.topology import Endpoint, System, pipeline
from openlpu.system.simulate import SystemResult, simulate_system

__all__ = ["Endpoint", "System", "SystemResult", "pipeline", "simulate_system"]
