"""Instruction records: operand validation against the OPERANDS table, and table completeness."""

from __future__ import annotations

import pytest

from openlpu.errors import ProgramError
from openlpu.isa import DType, Instruction, Opcode, StreamRef, nop, repeat
from openlpu.isa.opcodes import FAMILY, LATENCY_FIELD, OPERANDS, REPEAT_ADVANCE
from openlpu.isa.types import Direction

E0 = StreamRef(Direction.E, 0)
W4 = StreamRef(Direction.W, 4)


def test_missing_operand() -> None:
    with pytest.raises(ProgramError) as e:
        Instruction(op=Opcode.READ, addr=0)
    assert str(e.value) == "`read` takes operands ['addr', 'out'] (optional ['stride']); missing ['out']"


def test_missing_operands_are_listed_in_table_order() -> None:
    with pytest.raises(ProgramError) as e:
        Instruction(op=Opcode.SELECT, dtype=DType.FP16, b=E0)
    assert str(e.value) == "`select` takes operands ['dtype', 'a', 'b', 'c', 'out'] (optional []); " \
                           "missing ['a', 'c', 'out']"


def test_unexpected_operand() -> None:
    with pytest.raises(ProgramError) as e:
        Instruction(op=Opcode.NOP, n=3, addr=5, imm=1)
    assert str(e.value) == "`nop` takes operands ['n'] (optional []); unexpected ['addr', 'imm']"


def test_operandless_opcode_rejects_operands() -> None:
    with pytest.raises(ProgramError) as e:
        Instruction(op=Opcode.SYNC, n=1)
    assert str(e.value) == "`sync` takes operands [] (optional []); unexpected ['n']"


def test_b_and_imm_together() -> None:
    with pytest.raises(ProgramError) as e:
        Instruction(op=Opcode.ADD, dtype=DType.FP32, a=E0, b=W4, imm=2, out=E0)
    assert str(e.value) == "`add` takes either a second stream b= or an immediate imm=, not both"


def test_operands_in_field_order_and_label_excluded() -> None:
    ins = Instruction(op=Opcode.READ, out=E0, stride=1, addr=7, label="start")
    assert ins.operands() == [("addr", 7), ("stride", 1), ("out", E0)]


def test_helpers() -> None:
    assert nop(4) == Instruction(op=Opcode.NOP, n=4)
    assert repeat(3) == Instruction(op=Opcode.REPEAT, n=3, d=1)
    assert repeat(3, 2).with_(n=5) == Instruction(op=Opcode.REPEAT, n=5, d=2)


def test_every_opcode_appears_in_every_table() -> None:
    for table in (OPERANDS, REPEAT_ADVANCE, LATENCY_FIELD, FAMILY):
        assert set(table) == set(Opcode)
