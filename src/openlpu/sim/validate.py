"""Static checks of each instruction against the chip: right queue, operands in range, legal stream groups.

These catch what is wrong regardless of timing; `openlpu.sim.streams` and the engine catch the timing errors.
"""

from __future__ import annotations

from openlpu.errors import ProgramError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import (
    FAMILY_UNIT,
    ICU_OPS,
    MXM_OPS,
    SXM_OPS,
    VXM_LARGE_ONLY,
    VXM_OPS,
    VXM_TRANSCENDENTAL,
    Family,
    Opcode,
)
from openlpu.isa.program import Program
from openlpu.isa.types import Direction, DType, QueueId, StreamRef, Unit
from openlpu.sim import memory


def inbound(h: Hemisphere) -> Direction:
    """The direction of streams arriving at a hemisphere's MXM (from the MEM slices toward the chip edge)."""
    return Direction.W if h is Hemisphere.W else Direction.E


def outbound(h: Hemisphere) -> Direction:
    return Direction.E if h is Hemisphere.W else Direction.W


def check_program(program: Program, chip: Chip) -> None:
    """Every static rule: queues, instructions, tensors inside the SRAM and apart, checks on known tensors."""
    for q, instrs in program.queues:
        check_queue(chip, q)
        for i, ins in enumerate(instrs):
            check_instruction(chip, q, i, ins)
    names = [t.name for t in program.tensors]
    if len(set(names)) != len(names):
        raise ProgramError(f"program {program.name}: tensor names repeat: {names}")
    for t in program.tensors:
        memory.check_tensor(t, chip)
    clash = memory.overlaps(program.tensors, chip)
    if clash:
        raise ProgramError(f"tensors {clash[0]} and {clash[1]} overlap in SRAM; move one to other slices/addresses")
    for c in program.checks:
        if c.target not in names:
            raise ProgramError(f"check on unknown tensor {c.target!r}; tensors are {names}")


def check_queue(chip: Chip, q: QueueId) -> None:
    limits = {
        Unit.MEM: chip.mem.slices_per_hemisphere,
        Unit.VXM: chip.vxm.alus,
        Unit.MXM: chip.icu.mxm_queues_per_hemisphere,
        Unit.SXM: chip.sxm.queues_per_hemisphere,
        Unit.C2C: chip.c2c.links // 2,
    }
    if not 0 <= q.index < limits[q.unit]:
        raise ProgramError(f"queue {q}: index {q.index} is outside 0..{limits[q.unit] - 1} on chip {chip.name}")


def check_instruction(chip: Chip, q: QueueId, i: int, ins: Instruction) -> None:
    """Raise ProgramError naming the queue and instruction index if `ins` is illegal on queue `q`."""
    try:
        _check(chip, q, ins)
    except ProgramError as e:
        raise ProgramError(f"{q} instruction {i} `{ins.op.value}`: {e}") from None


def _check(chip: Chip, q: QueueId, ins: Instruction) -> None:
    fam = ins.op.family
    if fam is not Family.ICU and FAMILY_UNIT[fam] is not q.unit:
        raise ProgramError(f"a {fam.value.upper()} instruction cannot run on a {q.unit.value.upper()} queue")
    for name in ("n", "d", "superlanes"):
        value = getattr(ins, name)
        if value is not None and value < (0 if name == "n" and ins.op is Opcode.NOP else 1):
            raise ProgramError(f"operand {name}={value} must be positive")
    if ins.op is Opcode.CONFIG and ins.superlanes > chip.lanes.superlanes:
        raise ProgramError(f"superlanes={ins.superlanes} exceeds the chip's {chip.lanes.superlanes}")
    if ins.op in ICU_OPS:
        return
    _check_streams(chip, ins)
    if ins.addr is not None and not 0 <= ins.addr < chip.mem.addresses_per_slice:
        raise ProgramError(f"addr={ins.addr} is outside 0..{chip.mem.addresses_per_slice - 1}")
    if ins.op in VXM_OPS:
        _check_vxm(chip, q, ins)
    elif ins.op in MXM_OPS:
        _check_mxm(chip, q, ins)
    elif ins.op in SXM_OPS:
        _check_sxm(chip, ins)
    elif ins.op is Opcode.SEND and ins.a.direction is not inbound(q.hemisphere):
        raise ProgramError(f"a link at the {q.hemisphere.value} edge sends {inbound(q.hemisphere).value}-flowing "
                           "streams (those arriving at the edge)")
    elif ins.op is Opcode.RECEIVE and ins.out.direction is not outbound(q.hemisphere):
        raise ProgramError(f"a link at the {q.hemisphere.value} edge receives onto "
                           f"{outbound(q.hemisphere).value}-flowing streams (those leaving the edge)")


def _check_streams(chip: Chip, ins: Instruction) -> None:
    n = chip.streams.streams_per_direction
    for name, width in stream_operand_widths(ins):
        ref: StreamRef = getattr(ins, name)
        if ref.index % width or not 0 <= ref.index <= n - width:
            raise ProgramError(
                f"operand {name}={ref} must start a {width}-stream group: an index that is a multiple of "
                f"{width} in 0..{n - width}"
            )


def stream_operand_widths(ins: Instruction) -> list[tuple[str, int]]:
    """(operand, stream-group width) for every stream operand of `ins`."""
    w = ins.dtype.width_bytes if ins.dtype else 1
    op = ins.op
    if op in (Opcode.READ, Opcode.WRITE, Opcode.SEND, Opcode.RECEIVE):
        return [("out" if op in (Opcode.READ, Opcode.RECEIVE) else "a", 1)]
    if op in (Opcode.GATHER, Opcode.SCATTER):
        return [("map", 2), ("out" if op is Opcode.GATHER else "a", 1)]
    if op is Opcode.CAST:
        return [("a", w), ("out", ins.to.width_bytes)]
    if op is Opcode.ABC:
        return [("a", w)]
    if op is Opcode.ACC:
        return [("out", 4)]
    if op is Opcode.ROTATE:
        return [("a", 1), ("out", 1)]
    if op is Opcode.TRANSPOSE:
        return [("a", 16), ("out", 16)]
    return [(name, w) for name in ("a", "b", "c", "out") if getattr(ins, name) is not None]


def _check_vxm(chip: Chip, q: QueueId, ins: Instruction) -> None:
    if ins.op in VXM_LARGE_ONLY and q.index not in chip.vxm.large_alus:
        raise ProgramError(
            f"`{ins.op.value}` needs a large ALU; ALU {q.index} is small. Large ALUs: {list(chip.vxm.large_alus)}"
        )
    if ins.op in VXM_TRANSCENDENTAL and not ins.dtype.is_float:
        raise ProgramError(f"`{ins.op.value}` is defined on fp16/fp32 only, not {ins.dtype.value}")


def _check_mxm(chip: Chip, q: QueueId, ins: Instruction) -> None:
    if not 0 <= ins.plane < chip.mxm.planes // 2:
        raise ProgramError(f"plane={ins.plane} is outside 0..{chip.mxm.planes // 2 - 1} (planes per hemisphere)")
    if ins.dtype is not None and ins.dtype not in (DType.INT8, DType.FP16):
        raise ProgramError(f"the MXM multiplies int8 or fp16, not {ins.dtype.value}")
    if ins.dtype is DType.FP16 and ins.plane % 2:
        raise ProgramError("fp16 uses a plane pair; name its first plane (an even plane number)")
    if ins.op is Opcode.ABC and ins.a.direction is not inbound(q.hemisphere):
        raise ProgramError(f"the {q.hemisphere.value} MXM reads {inbound(q.hemisphere).value}-flowing streams")
    if ins.op is Opcode.ACC and ins.out.direction is not outbound(q.hemisphere):
        raise ProgramError(f"the {q.hemisphere.value} MXM writes {outbound(q.hemisphere).value}-flowing streams")
    if ins.slot is not None and not 0 <= ins.slot < chip.mxm.accumulator_vectors:
        raise ProgramError(f"slot={ins.slot} is outside 0..{chip.mxm.accumulator_vectors - 1}")
    if ins.row is not None and (ins.row < 0 or ins.row + lw_rows(chip, ins.dtype) > chip.mxm.plane_rows):
        raise ProgramError(
            f"row={ins.row}: an LW loads {lw_rows(chip, ins.dtype)} rows, so row must be in "
            f"0..{chip.mxm.plane_rows - lw_rows(chip, ins.dtype)}"
        )


def lw_rows(chip: Chip, dtype: DType) -> int:
    """Weight rows one LW loads: one byte plane per stream from every inbound stream."""
    return chip.streams.streams_per_direction // dtype.width_bytes


def _check_sxm(chip: Chip, ins: Instruction) -> None:
    lanes = chip.lanes.lanes
    if ins.op is Opcode.SHIFT and not -lanes < ins.lanes < lanes:
        raise ProgramError(f"lanes={ins.lanes} must be in {-lanes + 1}..{lanes - 1}")
    if ins.op is Opcode.PERMUTE and not 0 <= ins.rotate < lanes:
        raise ProgramError(f"rotate={ins.rotate} must be in 0..{lanes - 1}")
    if ins.op is Opcode.DISTRIBUTE:
        per = chip.lanes.lanes_per_superlane
        if len(ins.map16) != per or any(not -1 <= m < per for m in ins.map16):
            raise ProgramError(f"map16 must list {per} lane indices in -1..{per - 1} (-1 = zero)")
    if ins.op is Opcode.ROTATE:
        n = chip.streams.streams_per_direction
        if not 2 <= ins.n or ins.a.index + ins.n > n or ins.out.index + ins.n * ins.n > n:
            raise ProgramError(f"rotate n={ins.n} needs streams a..a+n-1 and out..out+n*n-1 within 0..{n - 1}")
