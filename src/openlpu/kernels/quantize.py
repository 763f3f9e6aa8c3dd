"""Per-token int8 scales: the first half of quantising activations for the MXM's int8 mode.

For every row of an fp32 [M, N] tensor x (west), every lane of row r of y [M, lanes] (east) gets

    s = max(max_lanes |x[r]|, FLOOR) * fp32(1/127)

A row reduction as in `openlpu.kernels.reduce`: each block's |x| (ALU 12, rank 0), folded by max (ALU 13, rank 1),
the lanes all-reduced by max through the west SXM; then the floor (ALU 7, rank 3, turning back west) and the scale
(ALU 6, rank 2) before the write east. Padding lanes are zero in SRAM, which |x| and max ignore.

The compiler does the rest with plain VXM trains: q = cast_int8(x * recip(s)) (round half to even; |x * recip(s)|
stays below 127.5, so q is in -127..127), the int8 MXM pass, and the int32 sums times s and the weights'
channel scales (`openlpu.compiler.lower`). FLOOR keeps an all-zero row's scale finite and non-zero, so its
reciprocal is finite too and the row quantises to zeros; it changes no row whose max is above it.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from openlpu.errors import ProgramError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.opcodes import Opcode
from openlpu.isa.program import Check, CheckMode, Tensor
from openlpu.isa.types import StreamRef
from openlpu.kernels.builder import ProgramBuilder, vxm_queue
from openlpu.kernels.elementwise import Flow, Load, Rows, alu, immediate, read, rows_of, write
from openlpu.kernels.kernel import Kernel
from openlpu.kernels.reduce import (
    AUX_IN,
    F32,
    OUT_SLICE,
    PARTIAL_IN,
    PARTIAL_SLICES,
    X_IN,
    X_SLICE,
    RowReduction,
    check_fp32,
    fast_reduce,
    padded_blocks,
    reduce_rows,
    tensor,
)
from openlpu.kernels.rmsnorm import SCALE_BACK
from openlpu.sim import numerics as nx

INT8_MAX = 127
FLOOR = 2.0**-100  # 1 / (FLOOR / 127) ~ 1.6e32: finite in fp32
STEP = 1.0 / INT8_MAX  # the immediate; the VXM rounds it to fp32


def emit_token_scale(b: ProgramBuilder, tx: Tensor, ty: Tensor, partials: tuple[Tensor, Tensor],
                     start: int = 0) -> int:
    """Schedule ty = token scales of tx on placed fp32 tensors, no instruction before `start`; returns the first
    cycle after everything has landed. tx [M, N] sits in the west; ty and the fold's two `partials` ([M, lanes]
    each) in the east."""
    lanes, m = b.chip.lanes.lanes, tx.rows
    if tx.placement.hemisphere is not Hemisphere.W or any(
            t.placement.hemisphere is not Hemisphere.E for t in (ty, *partials)):
        raise ProgramError(f"token scale {tx.name}: x must sit in the west hemisphere, y and the scratch in the east")
    if tx.dtype is not F32 or ty.dtype is not F32 or ty.rows != m:
        raise ProgramError(f"token scale {tx.name}: x [M, N] and y [M, {lanes}] must be fp32 with M rows")
    mark = b.mark()
    rows = (rows_of(partials[0], lanes), rows_of(partials[1], lanes))
    reduce_rows(b, RowReduction(Opcode.MAX, m, tx.column_blocks(lanes), _abs_feed(tx, lanes), _scale(ty, lanes),
                                rows), start)
    return b.done_since(mark)


def _abs_feed(tx: Tensor, lanes: int):
    """|x_j| (ALU 12, rank 0), folded by max (ALU 13, rank 1)."""

    def feed(b: ProgramBuilder, j: int, partial: Rows | None, out: StreamRef, row0: int, count: int,
             start: int) -> Flow:
        first = 12
        x = read(b, Load(rows_of(tx, lanes, block=j).skip(row0), X_IN), b.position(vxm_queue(first)), start, count)
        t = alu(b, first, Opcode.ABS, F32, count, [x], X_IN if partial else out)
        if partial is None:
            return t
        return alu(b, 13, Opcode.MAX, F32, count, [t, Load(partial.skip(row0), PARTIAL_IN)], out)

    return feed


def _scale(ty: Tensor, lanes: int):
    """max(total, FLOOR) on ALU 7 (large, rank 3), turning back west; times fp32(1/127) on ALU 6 (rank 2)."""

    def finish(b: ProgramBuilder, total: Flow, row0: int, count: int) -> int:
        t = alu(b, 7, Opcode.MAX, F32, count, [total], SCALE_BACK, imm=FLOOR)
        t = alu(b, 6, Opcode.MUL, F32, count, [t], AUX_IN, imm=STEP)
        return write(b, t, rows_of(ty, lanes).skip(row0), count)

    return finish


def fast_token_scale(x: np.ndarray, lanes: int) -> np.ndarray:
    """What `emit_token_scale` computes, with the same fp32 operations in the same order: x [M, C] -> [M, lanes]."""
    xb = padded_blocks(x, lanes)
    top = fast_reduce(Opcode.MAX, lambda j: nx.vxm_unary(Opcode.ABS, xb[:, j], F32), xb.shape[1])
    floored = nx.vxm_binary(Opcode.MAX, top, immediate(FLOOR, F32), F32)
    return nx.vxm_binary(Opcode.MUL, floored, immediate(STEP, F32), F32)


def token_scale(chip: Chip, x: np.ndarray, *, name: str = "token_scale") -> Kernel:
    """y [M, lanes] = the per-row int8 scale of x [M, N] fp32 in every lane (`~=` max|x| / 127 within 2^-23)."""
    x = check_fp32(x, name)
    m, n = x.shape
    lanes = chip.lanes.lanes
    b = ProgramBuilder(chip, name)
    tx, ty = tensor("x", Hemisphere.W, X_SLICE, m, n), tensor("y", Hemisphere.E, OUT_SLICE, m, lanes)
    scratch = [tensor(f"partial{i}", Hemisphere.E, s, m, lanes) for i, s in enumerate(PARTIAL_SLICES)]
    blocks = tx.column_blocks(lanes)
    b.tensors += [tx, ty, *scratch[: min(2, blocks - 1)]]
    emit_token_scale(b, tx, ty, (scratch[0], scratch[1]))
    # fp32(1/127) and the product each round once: within 2^-23 of max|x| / 127 (rows above FLOOR)
    b.checks.append(Check(target="y", mode=CheckMode.CLOSE, expr=f"rowmax(abs(x)) / {INT8_MAX}", rtol=2.0**-23))
    return Kernel(program=b.build(), predicted_cycles=b.predicted_cycles(), inputs={"x": x},
                  assemble=lambda t: t["y"], fast=partial(_fast, lanes))


def _fast(lanes: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return fast_token_scale(inputs["x"], lanes)
