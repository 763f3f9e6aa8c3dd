"""Row softmax of an fp32 [M, N] tensor: y = exp(x - max(x)) / sum(exp(x - max(x))), row by row.

Three passes over x, each streaming rows through the VXM (row reductions as in `openlpu.kernels.reduce`):

    A  m = rowmax(x)                          -> east scratch `row_max` (every lane holds the row's max)
    B  r = 1 / rowsum(exp(min(x, mask) - m))  -> east scratch `inv_sum` (the mask zeroes padding terms)
    C  y = exp(x - m) * r                     -> y, block by block, all rows back to back

Pass C recomputes exp(x - m) rather than storing it: the same fp32 operations give the same values, and x is
read from SRAM at one row per cycle either way.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.opcodes import Opcode
from openlpu.isa.program import Check, CheckMode, Tensor
from openlpu.isa.types import StreamRef
from openlpu.kernels.builder import ProgramBuilder
from openlpu.kernels.elementwise import Flow, Load, Rows, alu, earliest, rows_of, write
from openlpu.kernels.kernel import Kernel
from openlpu.kernels.reduce import (
    AUX_IN,
    BACK,
    F32,
    OUT_SLICE,
    PARTIAL_IN,
    ROW_IN,
    ROW_SLICES,
    X_IN,
    X_SLICE,
    RowReduction,
    check_fp32,
    fast_reduce,
    mask_tensor,
    padded_blocks,
    partials,
    plain_feed,
    plain_terms,
    reduce_rows,
    tensor,
    tree_depth,
)
from openlpu.sim import numerics as nx


def softmax(chip: Chip, x: np.ndarray, *, name: str = "softmax") -> Kernel:
    """y = softmax(x) along rows for x [M, N] in fp32 (`~=` within the bound in `_check`)."""
    x = check_fp32(x, name)
    b = ProgramBuilder(chip, name)
    m, n = x.shape
    lanes = chip.lanes.lanes
    tx, ty = tensor("x", Hemisphere.W, X_SLICE, m, n), tensor("y", Hemisphere.E, OUT_SLICE, m, n)
    t_max, t_inv = (tensor(t, Hemisphere.E, s, m, lanes) for t, s in zip(("row_max", "inv_sum"), ROW_SLICES))
    b.tensors += [tx, ty, t_max, t_inv]
    mask, inputs = mask_tensor(b, n)
    blocks = tx.column_blocks(lanes)
    scratch = partials(b, m, blocks)
    ready = reduce_rows(b, RowReduction(Opcode.MAX, m, blocks, plain_feed(Opcode.MAX, tx, mask, lanes),
                                        _store(t_max, lanes), scratch))
    ready = reduce_rows(b, RowReduction(Opcode.ADD, m, blocks, _exp_feed(tx, t_max, mask, lanes),
                                        _store(t_inv, lanes, Opcode.RECIP), scratch), ready)
    _normalize(b, tx, ty, t_max, t_inv, ready)
    b.checks.append(_check(x, blocks, lanes))
    return Kernel(program=b.build(), predicted_cycles=b.predicted_cycles(), inputs={"x": x, **inputs},
                  assemble=lambda t: t["y"], fast=partial(_fast, lanes))


def _fast(lanes: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Passes A, B and C with the same fp32 operations in the same order, on whole arrays."""
    x = padded_blocks(inputs["x"], lanes)
    blocks, masked = x.shape[1], plain_terms(x, inputs.get("mask"))
    row_max = fast_reduce(Opcode.MAX, masked, blocks)

    def exp_term(j: int) -> np.ndarray:  # `_exp_feed`: min(x, mask) on the last block, then sub, exp
        return nx.vxm_unary(Opcode.EXP, nx.vxm_binary(Opcode.SUB, masked(j), row_max, F32), F32)

    inv_sum = nx.vxm_unary(Opcode.RECIP, fast_reduce(Opcode.ADD, exp_term, blocks), F32)
    e = nx.vxm_unary(Opcode.EXP, nx.vxm_binary(Opcode.SUB, x, row_max[:, None], F32), F32)
    y = nx.vxm_binary(Opcode.MUL, e, inv_sum[:, None], F32)
    return y.reshape(len(y), -1)[:, : inputs["x"].shape[1]]


def _store(t: Tensor, lanes: int, op: Opcode | None = None):
    """Finish a reduction: write the broadcast result (after `op` on large ALU 7, rank 3) to `t`'s rows."""

    def finish(b: ProgramBuilder, result: Flow, row0: int, count: int) -> int:
        if op is not None:
            result = alu(b, 7, op, F32, count, [result], result.ref)
        return write(b, result, rows_of(t, lanes).skip(row0), count)

    return finish


def _exp_feed(tx: Tensor, t_max: Tensor, mask: Rows | None, lanes: int):
    """exp(x_j - m) folded by addition. The masked last block runs one rank further east (min, sub, exp on
    ranks 1-3) and so turns back west for the addition."""
    blocks = tx.column_blocks(lanes)

    def feed(b: ProgramBuilder, j: int, partial: Rows | None, out: StreamRef, row0: int, count: int,
             start: int) -> Flow:
        x = Load(rows_of(tx, lanes, block=j).skip(row0), X_IN)
        mx = Load(rows_of(t_max, lanes).skip(row0), ROW_IN)
        if mask is not None and j == blocks - 1:
            t = alu(b, 13, Opcode.MIN, F32, count, [x, Load(mask, AUX_IN)], X_IN, start=start)
            t = alu(b, 14, Opcode.SUB, F32, count, [t, mx], X_IN)
            t = alu(b, 15, Opcode.EXP, F32, count, [t], BACK if partial else out)
            adder = 6
        else:
            t = alu(b, 12, Opcode.SUB, F32, count, [x, mx], X_IN, start=start)
            t = alu(b, 13, Opcode.EXP, F32, count, [t], X_IN if partial else out)
            adder = 14
        if partial is None:
            return t
        return alu(b, adder, Opcode.ADD, F32, count, [t, Load(partial.skip(row0), PARTIAL_IN)], out)

    return feed


def _normalize(b: ProgramBuilder, tx: Tensor, ty: Tensor, t_max: Tensor, t_inv: Tensor, ready: int) -> None:
    """y_j = exp(x_j - m) * r for every block j, all rows of one block after another (ALUs 12, 13, 14)."""
    lanes, m = b.chip.lanes.lanes, tx.rows

    def block(pb: ProgramBuilder, start: int, j: int = 0) -> int:
        mx, inv = Load(rows_of(t_max, lanes), ROW_IN), Load(rows_of(t_inv, lanes), PARTIAL_IN)
        t = alu(pb, 12, Opcode.SUB, F32, m, [Load(rows_of(tx, lanes, block=j), X_IN), mx], X_IN, start=start)
        t = alu(pb, 13, Opcode.EXP, F32, m, [t], X_IN)
        t = alu(pb, 14, Opcode.MUL, F32, m, [t, inv], X_IN)
        return write(pb, t, rows_of(ty, lanes, block=j), m)

    start = earliest(b.chip, block, ready)
    for j in range(tx.column_blocks(lanes)):
        block(b, start + j * m, j)


def _check(x: np.ndarray, blocks: int, lanes: int) -> Check:
    """Relative error bound, u = 2^-24, first order. d = x - m rounds within u (m - x) <= u span (span: the
    largest max - min of a row), which exp turns into a relative error, plus its own rounding: each term is
    within (span + 1) u. The sum adds D = blocks - 1 + tree depth roundings, relative as all terms are
    positive: (span + 1 + D) u; 1 / sum one more u. The product: the term's (span + 1) u, the reciprocal's
    (span + D + 2) u, and its own u. In all (2 span + D + 4) u of |y|."""
    x64 = x.astype(np.float64)
    span = float((x64.max(axis=1) - x64.min(axis=1)).max())
    depth = blocks - 1 + tree_depth(lanes)
    return Check(target="y", mode=CheckMode.CLOSE, expr="softmax(x)", rtol=(2 * span + depth + 4) * 2.0**-24)
