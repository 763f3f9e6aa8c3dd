"""The instruction set: opcodes and their tables, instruction records, programs and the assembly text form."""

from openlpu.isa.asm import load_program, parse_program, print_program
from openlpu.isa.instruction import Instruction, nop, repeat
from openlpu.isa.opcodes import Family, Opcode
from openlpu.isa.program import Check, CheckMode, Init, InitKind, Placement, Program, Tensor, make_program
from openlpu.isa.types import Direction, DType, QueueId, StreamRef, Unit

__all__ = [
    "Check", "CheckMode", "DType", "Direction", "Family", "Init", "InitKind", "Instruction", "Opcode",
    "Placement", "Program", "QueueId", "StreamRef", "Tensor", "Unit", "load_program", "make_program", "nop",
    "parse_program", "print_program", "repeat",
]
