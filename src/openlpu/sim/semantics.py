"""Per-opcode tables the simulator runs on: latency, which streams an instruction reads and writes, where it sits,
and the order in which opcode classes execute inside one batch of independent events.
"""

from __future__ import annotations

import enum
from functools import reduce

from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Geometry
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import C2C_OPS, LATENCY_FIELD, MEM_OPS, MXM_OPS, REPEAT_ADVANCE, SXM_OPS, VXM_OPS, Opcode
from openlpu.isa.types import Direction, QueueId, StreamRef, Unit
from openlpu.sim.validate import inbound, lw_rows


class Phase(enum.IntEnum):
    """Execution order inside a batch of events that do not depend on each other. Readers of a state run before
    its writers, so that a read in the same batch sees the old value (as it does in hardware, where it is earlier
    or in the same cycle): MEM reads before MEM writes, ACC before ABC, ABC before IW, IW before LW."""

    MEM_READ = 0
    VXM = 1
    SXM = 2
    ACC = 3
    ABC = 4
    IW = 5
    LW = 6
    MEM_WRITE = 7
    C2C = 8


PHASE: dict[Opcode, Phase] = {
    Opcode.READ: Phase.MEM_READ,
    Opcode.GATHER: Phase.MEM_READ,
    Opcode.WRITE: Phase.MEM_WRITE,
    Opcode.SCATTER: Phase.MEM_WRITE,
    **{op: Phase.VXM for op in VXM_OPS},
    **{op: Phase.SXM for op in SXM_OPS},
    Opcode.ACC: Phase.ACC,
    Opcode.ABC: Phase.ABC,
    Opcode.IW: Phase.IW,
    Opcode.LW: Phase.LW,
    Opcode.SEND: Phase.C2C,
    Opcode.RECEIVE: Phase.C2C,
}


def latency(chip: Chip, op: Opcode) -> int:
    """d_func in cycles: from issue to the result on the stream register at the unit (or to the state update)."""
    path = LATENCY_FIELD[op]
    if path is None:
        return 0
    return reduce(getattr, path.split("."), chip)


def position(geo: Geometry, chip: Chip, q: QueueId) -> int:
    """The stream position where queue `q`'s unit reads and writes streams."""
    if q.unit is Unit.MEM:
        return geo.mem(q.hemisphere, q.index)
    if q.unit is Unit.VXM:
        return geo.vxm_rank(q.index % chip.vxm.ranks)
    if q.unit is Unit.SXM:
        return geo.sxm(q.hemisphere)
    return geo.mxm(q.hemisphere)  # the MXM and the chip-to-chip links share each hemisphere's outer edge


def _group(ref: StreamRef, width: int) -> list[tuple[Direction, int]]:
    return [(ref.direction, s) for s in ref.group(width)]


def stream_reads(chip: Chip, q: QueueId, ins: Instruction) -> list[tuple[Direction, int]]:
    """Streams read at issue, in operand order (a, b, c / map first for Gather and Scatter), low byte first."""
    op, w = ins.op, ins.dtype.width_bytes if ins.dtype else 1
    if op in (Opcode.WRITE, Opcode.SEND):
        return _group(ins.a, 1)
    if op is Opcode.GATHER:
        return _group(ins.map, 2)
    if op is Opcode.SCATTER:
        return _group(ins.map, 2) + _group(ins.a, 1)
    if op is Opcode.LW:
        return [(inbound(q.hemisphere), s) for s in range(chip.streams.streams_per_direction)]
    if op is Opcode.ABC:
        return _group(ins.a, w)
    if op is Opcode.ROTATE:
        return _group(ins.a, ins.n)
    if op is Opcode.TRANSPOSE:
        return _group(ins.a, 16)
    if op in VXM_OPS or op in SXM_OPS:
        return sum((_group(getattr(ins, n), w) for n in ("a", "b", "c") if getattr(ins, n) is not None), [])
    return []


def stream_writes(ins: Instruction) -> list[tuple[Direction, int]]:
    """Streams written `latency` cycles after issue, low byte first."""
    op = ins.op
    if op in (Opcode.READ, Opcode.GATHER, Opcode.RECEIVE):
        return _group(ins.out, 1)
    if op is Opcode.ACC:
        return _group(ins.out, 4)
    if op is Opcode.CAST:
        return _group(ins.out, ins.to.width_bytes)
    if op is Opcode.ROTATE:
        return _group(ins.out, ins.n * ins.n)
    if op is Opcode.TRANSPOSE:
        return _group(ins.out, 16)
    if op in VXM_OPS or op in SXM_OPS:
        return _group(ins.out, ins.dtype.width_bytes)
    return []


def advance_step(chip: Chip, ins: Instruction) -> int:
    """How much `Repeat` advances the instruction's address, row or slot on each re-issue (`REPEAT_ADVANCE`)."""
    rule = REPEAT_ADVANCE[ins.op]
    if rule is None:
        return 0
    by = rule[1]
    if by == "stride":
        return ins.stride if ins.stride is not None else 1
    return lw_rows(chip, ins.dtype) if by == "rows" else 1


assert all(op in PHASE for op in MXM_OPS | SXM_OPS | VXM_OPS | MEM_OPS | C2C_OPS)
