"""A program: one instruction stream per queue, tensors placed in SRAM with their initial contents, and checks.

Tensor layout (byte-planar, as on the chip): a tensor of shape [rows, cols] and element width w is cut into
column blocks of `lanes` columns (the last one zero-padded). Row r of column block j lives at vector address
`address + j * ceil(rows / interleave) + r // interleave`, its byte b in MEM slice
`first_slice + (r % interleave) * w + b` of the tensor's hemisphere. `interleave` > 1 spreads consecutive rows
over groups of slices so that several slices can stream one tensor in parallel (MXM weights use 32 / w).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.instruction import Instruction
from openlpu.isa.types import DType, QueueId


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    hemisphere: Hemisphere
    first_slice: int
    address: int
    interleave: int = 1


class InitKind(enum.Enum):
    ZEROS = "zeros"
    CONST = "const"
    RANDOM = "random"
    RANGE = "range"
    VALUES = "values"


@dataclass(frozen=True, slots=True, kw_only=True)
class Init:
    """Initial contents: zeros; const(value); random(seed, low, high) uniform (integers for int types);
    range(start, step) row-major; values(v0, v1, ...) row-major literal."""

    kind: InitKind
    args: tuple[float | int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Tensor:
    name: str
    dtype: DType
    rows: int
    cols: int
    placement: Placement
    init: Init | None = None

    def column_blocks(self, lanes: int) -> int:
        return math.ceil(self.cols / lanes)

    def rows_per_group(self) -> int:
        return math.ceil(self.rows / self.placement.interleave)

    def slices_used(self) -> range:
        p = self.placement
        return range(p.first_slice, p.first_slice + min(p.interleave, self.rows) * self.dtype.width_bytes)

    def addresses_used(self, lanes: int) -> range:
        p = self.placement
        return range(p.address, p.address + self.column_blocks(lanes) * self.rows_per_group())


class CheckMode(enum.Enum):
    EXACT = "=="
    CLOSE = "~="


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """After the run, tensor `target` must equal (`==`, bit for bit after rounding the reference to its dtype)
    or be close to (`~=`, within rtol/atol) the NumPy expression `expr` over the tensors' initial values."""

    target: str
    mode: CheckMode
    expr: str
    rtol: float = 0.0
    atol: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Program:
    name: str
    queues: tuple[tuple[QueueId, tuple[Instruction, ...]], ...]
    tensors: tuple[Tensor, ...] = ()
    checks: tuple[Check, ...] = ()
    chip: str | None = None

    def stream(self, queue: QueueId) -> tuple[Instruction, ...]:
        for q, instrs in self.queues:
            if q == queue:
                return instrs
        return ()

    def tensor(self, name: str) -> Tensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def instruction_count(self) -> int:
        return sum(len(instrs) for _, instrs in self.queues)


def make_program(
    name: str,
    queues: dict[QueueId, list[Instruction]],
    tensors: list[Tensor] | tuple[Tensor, ...] = (),
    checks: list[Check] | tuple[Check, ...] = (),
    chip: str | None = None,
) -> Program:
    """Build a Program with queues in canonical (sorted) order and empty queues dropped."""
    ordered = tuple((q, tuple(queues[q])) for q in sorted(queues, key=_queue_key) if queues[q])
    return Program(name=name, queues=ordered, tensors=tuple(tensors), checks=tuple(checks), chip=chip)


def _queue_key(q: QueueId) -> tuple[str, str, int]:
    return (q.unit.value, q.hemisphere.value if q.hemisphere else "", q.index)
