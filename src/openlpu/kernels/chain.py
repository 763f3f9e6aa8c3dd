"""A chain of VXM operations streamed through the ALUs without touching memory between them.

Each pass streams every row from one hemisphere's MEM slices through the four ALU ranks (one operation per rank,
one stream hop between ranks) into the other hemisphere's slices; the next pass streams back the other way. A
chain of L operations takes ceil(L / 4) passes; rows flow one per cycle, so a pass over M rows takes about M
cycles plus its pipeline depth. Values are fp32 and every operation rounds to fp32, as the VXM does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from openlpu.errors import ProgramError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.opcodes import VXM_BINARY, VXM_COMPARE, VXM_UNARY, Opcode
from openlpu.isa.program import Check, CheckMode, Placement, Tensor
from openlpu.isa.types import DType
from openlpu.kernels.builder import ProgramBuilder
from openlpu.kernels.elementwise import immediate
from openlpu.kernels.kernel import Kernel
from openlpu.kernels.vectors import ChainStep, View, emit_chain
from openlpu.sim import numerics as nx

_FP32 = DType.FP32


@dataclass(frozen=True, slots=True)
class Step:
    """One chain operation: a unary op, or a binary op with an immediate second operand."""

    op: Opcode
    imm: float | None = None

    def expr(self, inner: str) -> str:
        names = {Opcode.ADD: "+", Opcode.SUB: "-", Opcode.MUL: "*"}
        imm = None if self.imm is None else immediate(self.imm, _FP32).item()  # rounded to fp32, as the VXM does
        if self.op in names:
            return f"fp32({inner} {names[self.op]} {imm!r})"
        if self.op in (Opcode.MAX, Opcode.MIN):
            return f"fp32({'maximum' if self.op is Opcode.MAX else 'minimum'}({inner}, {imm!r}))"
        if self.op is Opcode.COPY:
            return inner
        if self.op is Opcode.NEG:
            return f"-{inner}"
        return f"fp32({self.op.value}({inner}))"


def vxm_chain(chip: Chip, x: np.ndarray, steps: list[Step], *, name: str = "vxm_chain") -> Kernel:
    """Apply `steps` in order to every element of fp32 `x` [rows, cols <= 320]."""
    if x.ndim != 2 or x.shape[1] > chip.lanes.lanes:
        raise ProgramError(f"vxm_chain: x must be [rows, <= {chip.lanes.lanes}], got {x.shape}")
    _check_steps(steps)
    rows = x.shape[0]
    b = ProgramBuilder(chip, name)
    buffers = {h: Tensor(name="x" if h is Hemisphere.W else "y", dtype=_FP32, rows=rows, cols=x.shape[1],
                         placement=Placement(hemisphere=h, first_slice=0, address=0))
               for h in (Hemisphere.W, Hemisphere.E)}
    b.tensors += list(buffers.values())
    t = 0
    passes = [steps[i:i + 4] for i in range(0, len(steps), 4)]
    for n, chunk in enumerate(passes):
        t = _pass(b, rows, chunk, Hemisphere.W if n % 2 == 0 else Hemisphere.E, t)
    result = buffers[Hemisphere.E if len(passes) % 2 else Hemisphere.W]
    expr = "x"
    for s in steps:
        expr = s.expr(expr)
    b.checks.append(Check(target=result.name, mode=CheckMode.EXACT, expr=expr))
    return Kernel(program=b.build(), predicted_cycles=b.predicted_cycles(),
                  inputs={"x": x.astype(np.float32)}, assemble=lambda tensors: tensors[result.name],
                  fast=partial(_fast, tuple(steps)))


def _fast(steps: tuple[Step, ...], inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The steps in order on the whole tensor, each rounded to fp32 as its ALU does."""
    x = inputs["x"]
    for s in steps:
        x = (nx.vxm_unary(s.op, x, _FP32) if s.imm is None
             else nx.vxm_binary(s.op, x, immediate(s.imm, _FP32), _FP32))
    return x


def _check_steps(steps: list[Step]) -> None:
    for s in steps:
        binary = s.op in VXM_BINARY - VXM_COMPARE
        if not (s.op in VXM_UNARY and s.imm is None or binary and s.imm is not None):
            raise ProgramError(f"vxm_chain: step {s.op.value} needs {'an imm' if binary else 'no imm'} operand")
    if not steps:
        raise ProgramError("vxm_chain: give at least one step")


def _pass(b: ProgramBuilder, rows: int, steps: list[Step], source: Hemisphere, start: int) -> int:
    """Stream `rows` rows from `source`'s buffer through one ALU per step (`emit_chain`, one rank per step) into
    the other hemisphere's; returns the first cycle after the pass's last write has committed."""
    lanes = b.chip.lanes.lanes
    buffers = {t.placement.hemisphere: t for t in b.tensors}
    x, y = (View.of(buffers[h], lanes) for h in (source, Hemisphere.E if source is Hemisphere.W else Hemisphere.W))
    return emit_chain(b, [ChainStep(s.op, _FP32, (x,) if k == 0 else (k - 1,), y if k == len(steps) - 1 else None,
                                    imm=s.imm) for k, s in enumerate(steps)], start)
