"""The opcodes: a closed enum, grouped by unit, with one table row per opcode.

`OPERANDS` says which operand fields each opcode takes (required and optional), `REPEAT_ADVANCE` how `Repeat`
advances an operand on each re-issue, and `LATENCY_FIELD` which chip field holds its functional latency d_func.
The simulator's semantics table lives in `openlpu.sim.semantics`; a test checks every opcode is in every table.
"""

from __future__ import annotations

import enum

from openlpu.enums import IdentityEnum
from openlpu.isa.types import Unit


class Family(enum.Enum):
    ICU = "icu"
    MEM = "mem"
    VXM = "vxm"
    MXM = "mxm"
    SXM = "sxm"
    C2C = "c2c"


class Opcode(IdentityEnum):
    # ICU: every queue runs these for its own instruction stream.
    NOP = "nop"
    REPEAT = "repeat"
    SYNC = "sync"
    NOTIFY = "notify"
    CONFIG = "config"
    # MEM
    READ = "read"
    WRITE = "write"
    GATHER = "gather"
    SCATTER = "scatter"
    # VXM unary
    COPY = "copy"
    NEG = "neg"
    ABS = "abs"
    RELU = "relu"
    EXP = "exp"
    RECIP = "recip"
    RSQRT = "rsqrt"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    SILU = "silu"
    # VXM binary (second operand a stream `b` or an immediate `imm`)
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    MAX = "max"
    MIN = "min"
    CMP_EQ = "cmp_eq"
    CMP_LT = "cmp_lt"
    CMP_LE = "cmp_le"
    # VXM other
    SELECT = "select"
    CAST = "cast"
    # MXM
    LW = "lw"
    IW = "iw"
    ABC = "abc"
    ACC = "acc"
    # SXM
    SHIFT = "shift"
    PERMUTE = "permute"
    DISTRIBUTE = "distribute"
    ROTATE = "rotate"
    TRANSPOSE = "transpose"
    # C2C
    SEND = "send"
    RECEIVE = "receive"

    @property
    def family(self) -> Family:
        return FAMILY[self]


ICU_OPS = frozenset({Opcode.NOP, Opcode.REPEAT, Opcode.SYNC, Opcode.NOTIFY, Opcode.CONFIG})
MEM_OPS = frozenset({Opcode.READ, Opcode.WRITE, Opcode.GATHER, Opcode.SCATTER})
VXM_UNARY = frozenset(
    {Opcode.COPY, Opcode.NEG, Opcode.ABS, Opcode.RELU, Opcode.EXP, Opcode.RECIP, Opcode.RSQRT, Opcode.TANH,
     Opcode.SIGMOID, Opcode.SILU}
)
VXM_BINARY = frozenset(
    {Opcode.ADD, Opcode.SUB, Opcode.MUL, Opcode.MAX, Opcode.MIN, Opcode.CMP_EQ, Opcode.CMP_LT, Opcode.CMP_LE}
)
VXM_COMPARE = frozenset({Opcode.CMP_EQ, Opcode.CMP_LT, Opcode.CMP_LE})
VXM_TRANSCENDENTAL = frozenset(
    {Opcode.EXP, Opcode.RECIP, Opcode.RSQRT, Opcode.TANH, Opcode.SIGMOID, Opcode.SILU}
)
VXM_OPS = VXM_UNARY | VXM_BINARY | {Opcode.SELECT, Opcode.CAST}
#: Operations only the large ALUs implement (reference 1.4: max and fp32->fp16 casts need a large ALU).
VXM_LARGE_ONLY = VXM_TRANSCENDENTAL | {Opcode.MAX, Opcode.MIN, Opcode.RELU, Opcode.CAST}
MXM_OPS = frozenset({Opcode.LW, Opcode.IW, Opcode.ABC, Opcode.ACC})
SXM_OPS = frozenset({Opcode.SHIFT, Opcode.PERMUTE, Opcode.DISTRIBUTE, Opcode.ROTATE, Opcode.TRANSPOSE})
C2C_OPS = frozenset({Opcode.SEND, Opcode.RECEIVE})

FAMILY: dict[Opcode, Family] = {
    **{op: Family.ICU for op in ICU_OPS},
    **{op: Family.MEM for op in MEM_OPS},
    **{op: Family.VXM for op in VXM_OPS},
    **{op: Family.MXM for op in MXM_OPS},
    **{op: Family.SXM for op in SXM_OPS},
    **{op: Family.C2C for op in C2C_OPS},
}

#: The unit whose queues may issue each non-ICU family.
FAMILY_UNIT = {Family.MEM: Unit.MEM, Family.VXM: Unit.VXM, Family.MXM: Unit.MXM, Family.SXM: Unit.SXM,
               Family.C2C: Unit.C2C}

_UNARY = (("dtype", "a", "out"), ())
_BINARY = (("dtype", "a", "out"), ("b", "imm"))

#: (required operand fields, optional operand fields) per opcode.
OPERANDS: dict[Opcode, tuple[tuple[str, ...], tuple[str, ...]]] = {
    Opcode.NOP: (("n",), ()),
    Opcode.REPEAT: (("n", "d"), ()),
    Opcode.SYNC: ((), ()),
    Opcode.NOTIFY: ((), ()),
    Opcode.CONFIG: (("superlanes",), ()),
    Opcode.READ: (("addr", "out"), ("stride",)),
    Opcode.WRITE: (("addr", "a"), ("stride",)),
    Opcode.GATHER: (("addr", "map", "out"), ("stride",)),
    Opcode.SCATTER: (("addr", "map", "a"), ("stride",)),
    **{op: _UNARY for op in VXM_UNARY},
    **{op: _BINARY for op in VXM_BINARY},
    Opcode.SELECT: (("dtype", "a", "b", "c", "out"), ()),
    Opcode.CAST: (("dtype", "a", "out", "to"), ()),
    Opcode.LW: (("plane", "dtype", "row"), ()),
    Opcode.IW: (("plane",), ()),
    Opcode.ABC: (("plane", "dtype", "a", "slot"), ("accumulate",)),
    Opcode.ACC: (("plane", "slot", "out"), ()),
    Opcode.SHIFT: (("dtype", "a", "out", "lanes"), ()),
    Opcode.PERMUTE: (("dtype", "a", "out", "rotate"), ()),
    Opcode.DISTRIBUTE: (("dtype", "a", "out", "map16"), ()),
    Opcode.ROTATE: (("a", "out", "n"), ()),
    Opcode.TRANSPOSE: (("a", "out"), ()),
    Opcode.SEND: (("a",), ()),
    Opcode.RECEIVE: (("out",), ()),
}

#: Operand advanced by each re-issue of `Repeat`, and by how much ("stride" reads the instruction's stride,
#: "rows" is the number of weight rows one LW loads).
REPEAT_ADVANCE: dict[Opcode, tuple[str, str] | None] = {
    **{op: None for op in Opcode},
    Opcode.READ: ("addr", "stride"),
    Opcode.WRITE: ("addr", "stride"),
    Opcode.GATHER: ("addr", "stride"),
    Opcode.SCATTER: ("addr", "stride"),
    Opcode.LW: ("row", "rows"),
    Opcode.ABC: ("slot", "one"),
    Opcode.ACC: ("slot", "one"),
}

#: The chip field (section.field) giving d_func, or None where the opcode produces nothing on a stream.
LATENCY_FIELD: dict[Opcode, str | None] = {
    Opcode.NOP: None,
    Opcode.REPEAT: None,
    Opcode.SYNC: None,
    Opcode.NOTIFY: "icu.notify_latency_cycles",
    Opcode.CONFIG: None,
    Opcode.READ: "mem.read_latency_cycles",
    Opcode.WRITE: "mem.write_latency_cycles",
    Opcode.GATHER: "mem.read_latency_cycles",
    Opcode.SCATTER: "mem.write_latency_cycles",
    **{op: "vxm.simple_latency_cycles" for op in VXM_UNARY | VXM_BINARY | {Opcode.SELECT}},
    **{op: "vxm.transcendental_latency_cycles" for op in VXM_TRANSCENDENTAL},
    Opcode.CAST: "vxm.convert_latency_cycles",
    Opcode.LW: None,
    Opcode.IW: "mxm.iw_latency_cycles",
    Opcode.ABC: "mxm.abc_latency_cycles",
    Opcode.ACC: "mxm.acc_latency_cycles",
    Opcode.SHIFT: "sxm.shift_latency_cycles",
    Opcode.PERMUTE: "sxm.permute_latency_cycles",
    Opcode.DISTRIBUTE: "sxm.distribute_latency_cycles",
    Opcode.ROTATE: "sxm.rotate_latency_cycles",
    Opcode.TRANSPOSE: "sxm.transpose_latency_cycles",
    Opcode.SEND: None,
    Opcode.RECEIVE: "c2c.receive_latency_cycles",
}
