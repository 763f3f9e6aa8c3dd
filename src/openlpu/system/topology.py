"""Which chip's link is wired to which: a frozen description of a system of chips."""

from __future__ import annotations

from dataclasses import dataclass

from openlpu.errors import ConfigError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.types import QueueId, Unit


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """Link `queue` (a C2C queue such as `c2c.e.0`) of chip number `chip`."""

    chip: int
    queue: QueueId

    def __str__(self) -> str:
        return f"chip {self.chip} {self.queue}"


@dataclass(frozen=True, slots=True)
class System:
    """Chips and the point-to-point links between them; each link carries traffic both ways independently."""

    chips: tuple[Chip, ...]
    links: tuple[tuple[Endpoint, Endpoint], ...]

    def __post_init__(self) -> None:
        seen: set[Endpoint] = set()
        for a, b in self.links:
            for end in (a, b):
                if not 0 <= end.chip < len(self.chips) or end.queue.unit is not Unit.C2C:
                    raise ConfigError(f"link end {end} does not name a C2C queue of one of the {len(self.chips)} chips")
                if end in seen:
                    raise ConfigError(f"{end} is wired twice; a link connects exactly two endpoints")
                seen.add(end)

    def peer(self, end: Endpoint) -> Endpoint | None:
        for a, b in self.links:
            if a == end:
                return b
            if b == end:
                return a
        return None


def pipeline(chip: Chip, n: int) -> System:
    """n chips in a line: chip i's east link 0 to chip i+1's west link 0 (a layer pipeline's shape)."""
    if n < 1:
        raise ConfigError(f"a pipeline needs at least one chip, not {n}")
    east, west = QueueId(Unit.C2C, Hemisphere.E, 0), QueueId(Unit.C2C, Hemisphere.W, 0)
    return System(chips=(chip,) * n, links=tuple((Endpoint(i, east), Endpoint(i + 1, west)) for i in range(n - 1)))
