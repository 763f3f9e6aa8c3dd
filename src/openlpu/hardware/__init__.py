"""Hardware description: chips loaded from TOML presets or user files, and their stream-position geometry."""

from openlpu.hardware.chip import Chip, chip_from_dict, load_chip, preset_names
from openlpu.hardware.geometry import Geometry, Hemisphere

__all__ = ["Chip", "Geometry", "Hemisphere", "chip_from_dict", "load_chip", "preset_names"]
