"""Where every functional slice sits on the east-west stream axis.

Stream registers sit between slices; a value moves one position per cycle. Positions count from the west edge:

    MXM_W | SXM_W | MEM_W[S-1] ... MEM_W[0] | VXM rank 0 ... rank R-1 | MEM_E[0] ... MEM_E[S-1] | SXM_E | MXM_E

MEM slices are numbered from the VXM outward in each hemisphere, as GroqAPI numbers them (reference 1.1). The VXM
takes one position per ALU rank, so chaining ALUs costs one stream hop per rank (reference 7 #6).
"""

from __future__ import annotations

from dataclasses import dataclass

from openlpu.enums import IdentityEnum
from openlpu.hardware.chip import Chip


class Hemisphere(IdentityEnum):
    W = "w"
    E = "e"


@dataclass(frozen=True, slots=True)
class Geometry:
    mem_slices_per_hemisphere: int
    vxm_ranks: int

    @classmethod
    def of(cls, chip: Chip) -> Geometry:
        return cls(mem_slices_per_hemisphere=chip.mem.slices_per_hemisphere, vxm_ranks=chip.vxm.ranks)

    @property
    def positions(self) -> int:
        return 4 + 2 * self.mem_slices_per_hemisphere + self.vxm_ranks

    def mxm(self, h: Hemisphere) -> int:
        return 0 if h is Hemisphere.W else self.positions - 1

    def sxm(self, h: Hemisphere) -> int:
        return 1 if h is Hemisphere.W else self.positions - 2

    def vxm_rank(self, rank: int) -> int:
        return 2 + self.mem_slices_per_hemisphere + rank

    def mem(self, h: Hemisphere, slice_index: int) -> int:
        s = self.mem_slices_per_hemisphere
        if h is Hemisphere.W:
            return 2 + (s - 1 - slice_index)
        return 2 + s + self.vxm_ranks + slice_index

    def global_slice(self, h: Hemisphere, slice_index: int) -> int:
        """Index of a MEM slice in chip-wide numbering: west slices first, then east."""
        return slice_index if h is Hemisphere.W else self.mem_slices_per_hemisphere + slice_index

    def name(self, position: int) -> str:
        """What sits at a stream position, for messages: `mem.w.3`, `vxm rank 0`, `sxm.e`, `mxm.w`."""
        s, r = self.mem_slices_per_hemisphere, self.vxm_ranks
        if position in (0, self.positions - 1):
            return "mxm." + ("w" if position == 0 else "e")
        if position in (1, self.positions - 2):
            return "sxm." + ("w" if position == 1 else "e")
        if position < 2 + s:
            return f"mem.w.{s - 1 - (position - 2)}"
        if position < 2 + s + r:
            return f"vxm rank {position - 2 - s}"
        return f"mem.e.{position - 2 - s - r}"
