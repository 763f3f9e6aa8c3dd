"""RMSNorm of an fp32 [M, N] tensor: y = x / sqrt(mean(x^2) + eps) * w, with a weight row w [N].

Two passes over x (row reductions as in `openlpu.kernels.reduce`):

    A  r = rsqrt(rowsum(x * x) * (1/N) + eps)   -> east scratch `inv_rms`; the scaling runs on ranks 3, 2, 1
                                                   (mul, add, rsqrt), turning back west after the lane tree
    B  y = (x * r) * w                         -> y, block by block; w's block is re-read every row (stride 0)

Padding lanes are zero in SRAM, so they add nothing to the sum of squares.

Pass A alone is `inv_rms` (`emit_inv_rms`): the compiler defers the scaling past the next matmul,
rmsnorm(x) @ W = r * ((x * w) @ W) with r a per-row scalar, so that the matmul of x * w runs while the lane
reduction computes r (`openlpu.compiler.lower`).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np

from openlpu.errors import ProgramError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.opcodes import Opcode
from openlpu.isa.program import Check, CheckMode, Tensor
from openlpu.isa.types import Direction, StreamRef
from openlpu.kernels.builder import ProgramBuilder, vxm_queue
from openlpu.kernels.elementwise import Flow, Load, Rows, alu, earliest, immediate, read, rows_of, write
from openlpu.kernels.kernel import Kernel
from openlpu.kernels.reduce import (
    AUX_IN,
    AUX_SLICE,
    F32,
    OUT_SLICE,
    PARTIAL_IN,
    PARTIAL_SLICES,
    ROW_IN,
    ROW_SLICES,
    X_IN,
    X_SLICE,
    RowReduction,
    check_fp32,
    fast_reduce,
    padded_blocks,
    reduce_rows,
    tensor,
    tree_depth,
)
from openlpu.sim import numerics as nx

SCALE_BACK = StreamRef(Direction.W, 4)  # mean and mean + eps, flowing back west from rank 3 to rank 1


def rmsnorm(chip: Chip, x: np.ndarray, w: np.ndarray, *, eps: float = 1e-5, name: str = "rmsnorm") -> Kernel:
    """y = rmsnorm(x, w, eps) for x [M, N] and w [N] in fp32 (`~=` within the bound in `_check`)."""
    x = check_fp32(x, name)
    m, n = x.shape
    if np.shape(w) not in ((n,), (1, n)):
        raise ProgramError(f"{name}: weight shape {np.shape(w)} does not match x's {n} columns; "
                           f"expected ({n},)")
    b = ProgramBuilder(chip, name)
    lanes = chip.lanes.lanes
    tx, ty = tensor("x", Hemisphere.W, X_SLICE, m, n), tensor("y", Hemisphere.E, OUT_SLICE, m, n)
    tw = tensor("w", Hemisphere.W, AUX_SLICE, 1, n)
    t_inv = tensor("inv_rms", Hemisphere.E, ROW_SLICES[0], m, lanes)
    b.tensors += [tx, tw, ty, t_inv]
    eps32 = float(np.float32(eps))
    blocks = tx.column_blocks(lanes)
    scratch = [tensor(f"partial{i}", Hemisphere.E, s, m, lanes) for i, s in enumerate(PARTIAL_SLICES)]
    b.tensors += scratch[: min(2, blocks - 1)]
    emit_rmsnorm(b, tx, tw, ty, t_inv, (scratch[0], scratch[1]), n, eps32)
    b.checks.append(_check(x, blocks, lanes, eps32))
    return Kernel(program=b.build(), predicted_cycles=b.predicted_cycles(),
                  inputs={"x": x, "w": np.asarray(w, np.float32).reshape(1, n)}, assemble=lambda t: t["y"],
                  fast=partial(_fast, lanes, eps32))


def inv_rms(chip: Chip, x: np.ndarray, *, eps: float = 1e-5, name: str = "inv_rms") -> Kernel:
    """y [M, lanes] = rsqrt(mean(x^2) + eps) of each row of x [M, N] fp32, in every lane (`~=` within the bound
    in `_inv_check`)."""
    x = check_fp32(x, name)
    m, n = x.shape
    b = ProgramBuilder(chip, name)
    lanes = chip.lanes.lanes
    tx, ty = tensor("x", Hemisphere.W, X_SLICE, m, n), tensor("y", Hemisphere.E, ROW_SLICES[0], m, lanes)
    blocks = tx.column_blocks(lanes)
    scratch = [tensor(f"partial{i}", Hemisphere.E, s, m, lanes) for i, s in enumerate(PARTIAL_SLICES)]
    b.tensors += [tx, ty, *scratch[: min(2, blocks - 1)]]
    eps32 = float(np.float32(eps))
    emit_inv_rms(b, tx, ty, (scratch[0], scratch[1]), n, eps32)
    b.checks.append(_inv_check(n, blocks, lanes, eps32))
    return Kernel(program=b.build(), predicted_cycles=b.predicted_cycles(), inputs={"x": x},
                  assemble=lambda t: t["y"], fast=lambda inputs: fast_inv_rms(inputs["x"], n, eps32, lanes))


def emit_rmsnorm(b: ProgramBuilder, tx: Tensor, tw: Tensor, ty: Tensor, t_inv: Tensor,
                 partials: tuple[Tensor, Tensor], n: int, eps: float, start: int = 0) -> int:
    """Schedule ty = rmsnorm(tx, tw) over the first `n` columns (the rest are zero) on placed fp32 tensors, no
    instruction before `start`; returns the first cycle after everything has landed. x and w sit in the west
    hemisphere; y, the per-row scratch `t_inv` ([M, lanes]) and the fold's two `partials` ([M, lanes]) in the
    east. `eps` is already an fp32 value."""
    if tw.placement.hemisphere is not Hemisphere.W or ty.placement.hemisphere is not Hemisphere.E:
        raise ProgramError(f"rmsnorm {tx.name}: x and w must sit in the west hemisphere, y and the scratch in "
                           "the east")
    mark = b.mark()
    _scale(b, tx, tw, ty, t_inv, emit_inv_rms(b, tx, t_inv, partials, n, eps, start))
    return b.done_since(mark)


def emit_inv_rms(b: ProgramBuilder, tx: Tensor, t_inv: Tensor, partials: tuple[Tensor, Tensor], n: int,
                 eps: float, start: int = 0) -> int:
    """Schedule pass A alone: every lane of row r of `t_inv` ([M, lanes], east) = rsqrt(sum(x[r]^2) / n + eps)
    for placed fp32 x (west; columns past n zero), no instruction before `start`; the fold's two `partials`
    ([M, lanes]) sit in the east. Returns the first cycle at which t_inv is readable. `eps` is an fp32 value."""
    lanes, m = b.chip.lanes.lanes, tx.rows
    if tx.placement.hemisphere is not Hemisphere.W or any(
            t.placement.hemisphere is not Hemisphere.E for t in (t_inv, *partials)):
        raise ProgramError(f"rmsnorm {tx.name}: x must sit in the west hemisphere, the inverse rms and the scratch "
                           "in the east")
    if tx.dtype is not F32 or t_inv.dtype is not F32 or (t_inv.rows, t_inv.cols) != (m, lanes):
        raise ProgramError(f"rmsnorm {tx.name}: x [M, N] and the inverse rms [M, {lanes}] must be fp32 with M rows")
    rows = (rows_of(partials[0], lanes), rows_of(partials[1], lanes))
    return reduce_rows(b, RowReduction(Opcode.ADD, m, tx.column_blocks(lanes), _square_feed(tx, lanes),
                                       _inverse_rms(t_inv, lanes, n, eps), rows), start)


def _fast(lanes: int, eps: float, inputs: dict[str, np.ndarray]) -> np.ndarray:
    n = inputs["x"].shape[1]
    return fast_rmsnorm(inputs["x"], inputs["w"], n, eps, lanes)[:, :n]


def fast_inv_rms(x: np.ndarray, n: int, eps: float, lanes: int) -> np.ndarray:
    """Pass A with the same fp32 operations in the same order, on whole arrays: x [M, C] with C >= n (columns
    past n zero) -> [M, lanes]: every lane of a row holds its rsqrt(mean(x^2) + eps), as its lane of the lane
    tree computed it."""
    xb = padded_blocks(x, lanes)
    total = fast_reduce(Opcode.ADD, lambda j: nx.vxm_binary(Opcode.MUL, xb[:, j], xb[:, j], F32), xb.shape[1])
    mean = nx.vxm_binary(Opcode.MUL, total, immediate(1.0 / n, F32), F32)
    return nx.vxm_unary(Opcode.RSQRT, nx.vxm_binary(Opcode.ADD, mean, immediate(eps, F32), F32), F32)


def fast_rmsnorm(x: np.ndarray, w: np.ndarray, n: int, eps: float, lanes: int) -> np.ndarray:
    """Passes A and B with the same fp32 operations in the same order, on whole arrays: x [M, C], w [1, C]
    with C >= n (columns past n zero); returns [M, blocks * lanes]."""
    inv_rms = fast_inv_rms(x, n, eps, lanes)
    x, w = padded_blocks(x, lanes), padded_blocks(w, lanes)
    y = nx.vxm_binary(Opcode.MUL, nx.vxm_binary(Opcode.MUL, x, inv_rms[:, None], F32), w, F32)
    return y.reshape(len(y), -1)


def _square_feed(tx: Tensor, lanes: int):
    """x_j * x_j (ALU 12, rank 0), folded by addition (ALU 9, rank 1)."""

    def feed(b: ProgramBuilder, j: int, partial: Rows | None, out: StreamRef, row0: int, count: int,
             start: int) -> Flow:
        square = 12
        # Both operands of the square are one stream: read x once, to reach the ALU at `start`.
        xs = Load(rows_of(tx, lanes, block=j).skip(row0), X_IN)
        x = read(b, xs, b.position(vxm_queue(square)), start, count)
        t = alu(b, square, Opcode.MUL, F32, count, [x, x], X_IN if partial else out)
        if partial is None:
            return t
        return alu(b, 9, Opcode.ADD, F32, count, [t, Load(partial.skip(row0), PARTIAL_IN)], out)

    return feed


def _inverse_rms(t_inv: Tensor, lanes: int, n: int, eps: float):
    """rsqrt(sum * (1/N) + eps) on ALUs 3 (rank 3), 6 (rank 2), 13 (large, rank 1), written to `t_inv`."""

    def finish(b: ProgramBuilder, total: Flow, row0: int, count: int) -> int:
        mean = alu(b, 3, Opcode.MUL, F32, count, [total], SCALE_BACK, imm=1.0 / n)
        t = alu(b, 6, Opcode.ADD, F32, count, [mean], SCALE_BACK, imm=eps)
        t = alu(b, 13, Opcode.RSQRT, F32, count, [t], AUX_IN)
        return write(b, t, rows_of(t_inv, lanes).skip(row0), count)

    return finish


def _scale(b: ProgramBuilder, tx: Tensor, tw: Tensor, ty: Tensor, t_inv: Tensor, ready: int) -> None:
    """y_j = (x_j * r) * w_j for every block j, all rows of one block after another (ALUs 12, 9)."""
    lanes, m = b.chip.lanes.lanes, tx.rows

    def block(pb: ProgramBuilder, start: int, j: int = 0) -> int:
        weight = replace(rows_of(tw, lanes, block=j), stride=0)  # the same row of w for every row of x
        x = Load(rows_of(tx, lanes, block=j), X_IN)
        t = alu(pb, 12, Opcode.MUL, F32, m, [x, Load(rows_of(t_inv, lanes), ROW_IN)], X_IN, start=start)
        t = alu(pb, 9, Opcode.MUL, F32, m, [t, Load(weight, AUX_IN)], X_IN)
        return write(pb, t, rows_of(ty, lanes, block=j), m)

    start = earliest(b.chip, block, ready)
    for j in range(tx.column_blocks(lanes)):
        block(b, start + j * m, j)


def _inv_check(n: int, blocks: int, lanes: int, eps: float) -> Check:
    """`_check`'s bound up to the rsqrt: the argument within (D + 4) u, halved by rsqrt, plus its own rounding:
    (D / 2 + 3) u."""
    depth = blocks - 1 + tree_depth(lanes)
    return Check(target="y", mode=CheckMode.CLOSE, expr=f"rsqrt(rowsum(x * x) / {n} + {eps!r})",
                 rtol=(depth / 2 + 3) * 2.0**-24)


def _check(x: np.ndarray, blocks: int, lanes: int, eps: float) -> Check:
    """Relative error bound, u = 2^-24, first order. The sum of squares: one rounding per square and one per
    addition level, D = blocks - 1 + tree depth of them, all terms positive: (D + 1) u. Times fl(1/N): 2 u;
    plus eps: u; so the rsqrt argument is within (D + 4) u, which rsqrt halves, and its own rounding adds u;
    then two products, 2 u. In all (D / 2 + 5) u of |y|."""
    depth = blocks - 1 + tree_depth(lanes)
    rtol = (depth / 2 + 5) * 2.0**-24
    return Check(target="y", mode=CheckMode.CLOSE, expr=f"rmsnorm(x, w, {eps!r})", rtol=rtol)
