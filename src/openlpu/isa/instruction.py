"""One immutable record for every instruction; which operands an opcode takes is the `OPERANDS` table."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields, replace

from openlpu.errors import ProgramError
from openlpu.isa.opcodes import OPERANDS, Opcode
from openlpu.isa.types import DType, StreamRef


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    """An instruction with its operands; absent operands are None.

    Operands: n, d (NOP/Repeat counts and spacing in cycles); superlanes (Config); addr, stride (MEM vector
    address and its Repeat step); a, b, c (input streams), out (output stream), map (Gather/Scatter offset stream);
    imm (immediate second operand); dtype, to (element types); plane, row, slot, accumulate (MXM); lanes (Shift
    distance, + is north), rotate (Permute lane rotation), map16 (Distribute map, -1 = zero), n (Rotate size).
    `label` names the instruction in listings and error messages; it has no effect on execution.
    """

    op: Opcode
    n: int | None = None
    d: int | None = None
    superlanes: int | None = None
    addr: int | None = None
    stride: int | None = None
    map: StreamRef | None = None
    a: StreamRef | None = None
    b: StreamRef | None = None
    c: StreamRef | None = None
    out: StreamRef | None = None
    imm: float | int | None = None
    dtype: DType | None = None
    to: DType | None = None
    plane: int | None = None
    row: int | None = None
    slot: int | None = None
    accumulate: bool | None = None
    lanes: int | None = None
    rotate: int | None = None
    map16: tuple[int, ...] | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        required, optional = OPERANDS[self.op]
        given = {name for name, _ in self.operands()}
        missing = [name for name in required if name not in given]
        extra = sorted(given - set(required) - set(optional))
        if missing or extra:
            raise ProgramError(
                f"`{self.op.value}` takes operands {list(required)} (optional {list(optional)}); "
                + (f"missing {missing}" if missing else f"unexpected {extra}")
            )
        if self.b is not None and self.imm is not None:
            raise ProgramError(f"`{self.op.value}` takes either a second stream b= or an immediate imm=, not both")

    def operands(self) -> list[tuple[str, object]]:
        """The operands that are set, in the canonical (field) order."""
        return [(name, value) for name in _OPERAND_FIELDS if (value := getattr(self, name)) is not None]

    def with_(self, **changes: object) -> Instruction:
        return replace(self, **changes)


_OPERAND_FIELDS = tuple(f.name for f in fields(Instruction) if f.name not in ("op", "label"))


@functools.lru_cache(maxsize=4096)
def nop(n: int) -> Instruction:
    """An idle of n cycles (immutable, so shared: programs hold many)."""
    return Instruction(op=Opcode.NOP, n=n)


@functools.lru_cache(maxsize=4096)
def repeat(n: int, d: int = 1) -> Instruction:
    return Instruction(op=Opcode.REPEAT, n=n, d=d)
