"""Operand types of the instruction set: directions, element types, stream references and queue names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from openlpu.enums import IdentityEnum
from openlpu.hardware.geometry import Hemisphere


class Direction(IdentityEnum):
    """Which way a stream flows: east is toward higher positions (see `openlpu.hardware.geometry`)."""

    E = "E"
    W = "W"

    @property
    def step(self) -> int:
        return 1 if self is Direction.E else -1


class DType(IdentityEnum):
    INT8 = "int8"
    INT16 = "int16"
    INT32 = "int32"
    FP16 = "fp16"
    FP32 = "fp32"

    @property
    def width_bytes(self) -> int:
        return DTYPE_WIDTH_BYTES[self]

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(DTYPE_NUMPY[self])

    @property
    def is_float(self) -> bool:
        return self in (DType.FP16, DType.FP32)


DTYPE_WIDTH_BYTES = {DType.INT8: 1, DType.INT16: 2, DType.INT32: 4, DType.FP16: 2, DType.FP32: 4}
DTYPE_NUMPY = {DType.INT8: "<i1", DType.INT16: "<i2", DType.INT32: "<i4", DType.FP16: "<f2", DType.FP32: "<f4"}


@dataclass(frozen=True, slots=True, order=True)
class StreamRef:
    """The first stream of a stream group: `E4` is eastward stream 4. A w-byte value uses streams index..index+w-1."""

    direction: Direction
    index: int

    def __str__(self) -> str:
        return f"{self.direction.value}{self.index}"

    def group(self, width: int) -> range:
        return range(self.index, self.index + width)


class Unit(IdentityEnum):
    MEM = "mem"
    VXM = "vxm"
    MXM = "mxm"
    SXM = "sxm"
    C2C = "c2c"


@dataclass(frozen=True, slots=True, order=True)
class QueueId:
    """An instruction queue: `mem.w.3` (MEM slice 3 of the west hemisphere), `vxm.5` (ALU 5), `mxm.e.0`, `sxm.w.2`,
    `c2c.e.1` (chip-to-chip link 1 of the east edge).

    Every queue also executes the ICU instructions (NOP, Repeat, Sync, Notify, Config) for its own stream.
    """

    unit: Unit
    hemisphere: Hemisphere | None
    index: int

    def __str__(self) -> str:
        if self.hemisphere is None:
            return f"{self.unit.value}.{self.index}"
        return f"{self.unit.value}.{self.hemisphere.value}.{self.index}"

    @classmethod
    def parse(cls, text: str) -> QueueId:
        """Parse `mem.w.3` / `vxm.5`; raises ValueError with the accepted forms."""
        parts = text.split(".")
        try:
            unit = Unit(parts[0])
            if unit is Unit.VXM and len(parts) == 2:
                return cls(unit, None, int(parts[1]))
            if unit is not Unit.VXM and len(parts) == 3:
                return cls(unit, Hemisphere(parts[1]), int(parts[2]))
        except ValueError:
            pass
        raise ValueError(f"bad queue name {text!r}: expected mem.w.N, mem.e.N, sxm.w.N, mxm.e.N, c2c.w.N or vxm.N")
