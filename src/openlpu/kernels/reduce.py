"""Row reductions: rowsum and rowmax of an fp32 [M, N] tensor, and the machinery softmax and RMSNorm share.

A row's column blocks (320 lanes each) are first folded elementwise into one vector, then its lanes are
all-reduced through the west SXM, the only unit that moves data across lanes:

    blocks   p = f(x_0); p = f(x_1) (+) p; ...   VXM; the partials go to two east scratch tensors in turn
    lanes    320 = 4 * 4 * 4 * 5, four stages. A stage sends v west to the SXM, which returns
             rot(v, 0), rot(v, s), rot(v, 2s), ... on separate eastward groups (permute:
             rot(v, k)[(l + k) % 320] = v[l]), and a tree of ALUs on VXM ranks 0-2 combines them.
             With s = 80, 20, 5, 1 every lane ends up holding the whole row's result.

f is the kernel's per-block term (x, x masked, x * x, exp(x - max)). The last block is folded on its way to
the SXM, and the broadcast result leaves the last tree ALU for the kernel's `finish` (a write, or more ops).

A stage is a 100-cycle round trip (45 hops each way between the VXM and the SXM). Rows stream through it one
per cycle in waves of up to 100: a wave holds each of its streams for that many consecutive diagonals per
stage, and a longer one would run into its own next stage (and keep the SXM queues busy past it). The next
wave follows once this one has passed the last stage. Streaming one row per cycle for good would need a
separate set of return streams per stage, and one set already takes 5 of the 8 eastward fp32 groups: so a
long M runs at a quarter of a row per cycle, a short one at one row per cycle.

Padding lanes of the last block (N not a multiple of 320) are zero in SRAM, which a sum ignores; for max the
last block first goes through min(x, mask), with a constant mask row (+inf valid, -inf padding) read with
stride 0. min(x, +inf) is x exactly, -0.0 included.

rowsum and rowmax return y [M, 1]: every lane of the result holds the row's value; the tensor keeps lane 0.

Units are fixed so that a wave's feed can overlap the previous wave's tree and finish without sharing a queue
or a stream: the lane tree uses ALUs 0, 8, 4 (rank 0), 5, 1 (rank 1), 2 (rank 2), SXM queues w.0-w.4 and
streams W0 and E0-E16; feeds and finishes use the other ALUs and the streams named below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from openlpu.errors import ProgramError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import Opcode
from openlpu.isa.program import Check, CheckMode, Placement, Tensor
from openlpu.isa.types import Direction, DType, QueueId, StreamRef, Unit
from openlpu.kernels.builder import ProgramBuilder
from openlpu.kernels.elementwise import Flow, Load, Rows, alu, earliest, group, read, rows_of, write
from openlpu.kernels.kernel import Kernel
from openlpu.sim import numerics as nx
from openlpu.sim import semantics

F32 = DType.FP32
E, W = Direction.E, Direction.W
STAGE_IN = StreamRef(W, 0)  # into the SXM; the rotations come back on E0-E16, where the tree also runs
RESULT = StreamRef(E, 20)  # the broadcast result, from the last tree ALU
X_IN, AUX_IN = StreamRef(E, 24), StreamRef(E, 28)  # x, and a west constant row (mask, weight)
PARTIAL_IN, ROW_IN = StreamRef(W, 24), StreamRef(W, 28)  # east scratch rows toward the VXM
BACK = StreamRef(W, 20)  # a chain turning back west inside the VXM
PASS_OUT = X_IN  # a fold's output to the east scratch continues on x's group

#: East MEM slices (fp32: 4 each): the output first, then the fold's two partials, then per-row results.
OUT_SLICE, PARTIAL_SLICES, ROW_SLICES = 0, (4, 8), (12, 16)
X_SLICE, AUX_SLICE = 0, 4  # west

#: feed(builder, block, partial rows or None, out, first row, rows, start): f(x_block) (+) partial on `out`
Feed = Callable[[ProgramBuilder, int, Rows | None, StreamRef, int, int, int], Flow]
#: finish(builder, broadcast result, first row, rows): the first cycle at which its SRAM results are readable
Finish = Callable[[ProgramBuilder, Flow, int, int], int]


@dataclass(frozen=True)
class RowReduction:
    """One row reduction to schedule: `op` (ADD or MAX) over `blocks` column blocks of `rows` rows."""

    op: Opcode
    rows: int
    blocks: int
    feed: Feed
    finish: Finish
    partials: tuple[Rows, Rows]  # east scratch for the fold, [rows, lanes] each


def reduce_rows(b: ProgramBuilder, r: RowReduction, ready: int = 0) -> int:
    """Schedule `r`, every SRAM read at or after `ready`; returns the cycle its results are readable from."""
    partial = None
    for j in range(r.blocks - 1):
        out = r.partials[j % 2]

        def fold(pb: ProgramBuilder, start: int, j=j, partial=partial, out=out) -> int:
            return write(pb, r.feed(pb, j, partial, PASS_OUT, 0, r.rows, start), out, r.rows)

        ready, partial = fold(b, earliest(b.chip, fold, ready)), out
    gap, span = _stage_timing(b.chip, r.op)
    done, previous = ready, None
    for row0 in range(0, r.rows, gap):
        count = min(gap, r.rows - row0)

        def wave(pb: ProgramBuilder, start: int, row0=row0, count=count) -> int:
            flow = r.feed(pb, r.blocks - 1, partial, STAGE_IN, row0, count, start)
            return r.finish(pb, allreduce(pb, r.op, flow, count)[0], row0, count)

        start = earliest(b.chip, wave, ready)
        if previous is not None:
            start = max(start, previous + span + gap)
        done, previous = max(done, wave(b, start)), start
    return done


def stage_rotations(lanes: int) -> list[tuple[int, ...]]:
    """The rotations each all-reduce stage combines: radix 4 while it divides, then 2, 3, 5; the deepest tree
    (5) last, so that the result leaves from rank 2. 320 lanes: strides 80, 20, 5, 1."""
    radices, rest = [], lanes
    for radix in (4, 2, 3, 5):
        while rest % radix == 0:
            radices.append(radix)
            rest //= radix
    if rest != 1:
        raise ProgramError(f"a lane all-reduce over {lanes} lanes needs factors 2, 3 and 5 only")
    stages, stride = [], lanes
    for radix in sorted(radices, key=lambda k: k == 5):
        stride //= radix
        stages.append(tuple(i * stride for i in range(radix)))
    return stages


def tree_depth(lanes: int) -> int:
    """Roundings any one lane's value passes through in the lane all-reduce (sum error bounds use it)."""
    return sum(math.ceil(math.log2(len(r))) for r in stage_rotations(lanes))


def allreduce(b: ProgramBuilder, op: Opcode, flow: Flow, count: int) -> tuple[Flow, list[int]]:
    """All-reduce the lanes of `count` rows arriving westward on STAGE_IN; returns the result on RESULT (every
    lane holds op over all lanes) and each stage's SXM issue cycle."""
    stages, times = stage_rotations(b.chip.lanes.lanes), []
    for s, rotations in enumerate(stages):
        times.append(flow.at(b.geo.sxm(Hemisphere.W)))
        returns = [_permute(b, i, flow, rot, group(b.chip, E, i, F32), count)
                   for i, rot in enumerate(rotations)]
        flow = _tree(b, op, returns, count, RESULT if s == len(stages) - 1 else STAGE_IN)
    return flow, times


def _permute(b: ProgramBuilder, index: int, flow: Flow, rotate: int, out: StreamRef, count: int) -> Flow:
    q = QueueId(Unit.SXM, Hemisphere.W, index)
    here = b.position(q)
    issue = flow.at(here)
    ins = Instruction(op=Opcode.PERMUTE, dtype=flow.dtype, a=flow.ref, out=out, rotate=rotate)
    b.place(q, issue, ins, count)
    return Flow.written(out, flow.dtype, here, issue + semantics.latency(b.chip, Opcode.PERMUTE))


def _tree(b: ProgramBuilder, op: Opcode, flows: list[Flow], count: int, out: StreamRef) -> Flow:
    """Combine flows that reach VXM rank 0 together: pairs on large ALUs, an odd one copied along on a small
    ALU (so it stays in step), one rank further east per level; the last level writes `out`."""
    vxm, rank, level = b.chip.vxm, 0, flows
    while len(level) > 1:
        large = [a for a in sorted(vxm.large_alus) if a % vxm.ranks == rank]
        small = [a for a in range(vxm.alus) if a % vxm.ranks == rank and a not in vxm.large_alus]
        last = len(level) <= 2
        pairs = range(0, len(level) - 1, 2)
        nxt = [alu(b, large[i // 2], op, F32, count, level[i:i + 2], out if last else level[i].ref)
               for i in pairs]
        if len(level) % 2:
            nxt.append(alu(b, small[0], Opcode.COPY, F32, count, [level[-1]], level[-1].ref))
        level, rank = nxt, rank + 1
    return level[0]


def _stage_timing(chip: Chip, op: Opcode) -> tuple[int, int]:
    """(cycles between consecutive stages: the most rows a wave may hold, cycles from first to last stage)."""
    probe, origin = ProgramBuilder(chip, "probe"), 1 << 20
    _, times = allreduce(probe, op, Flow.written(STAGE_IN, F32, probe.geo.vxm_rank(0), origin), 1)
    gaps = [t1 - t0 for t0, t1 in zip(times, times[1:])]
    return min(gaps, default=chip.lanes.lanes), times[-1] - times[0]


# -- shared layout -------------------------------------------------------------------------------------------


def tensor(name: str, h: Hemisphere, first_slice: int, rows: int, cols: int) -> Tensor:
    return Tensor(name=name, dtype=F32, rows=rows, cols=cols,
                  placement=Placement(hemisphere=h, first_slice=first_slice, address=0))


def partials(b: ProgramBuilder, rows: int, blocks: int) -> tuple[Rows, Rows]:
    """The fold's two east scratch tensors (declared only as far as the fold uses them)."""
    lanes = b.chip.lanes.lanes
    ts = [tensor(f"partial{i}", Hemisphere.E, s, rows, lanes) for i, s in enumerate(PARTIAL_SLICES)]
    b.tensors += ts[: min(2, blocks - 1)]
    return rows_of(ts[0], lanes), rows_of(ts[1], lanes)


def mask_tensor(b: ProgramBuilder, cols: int) -> tuple[Rows | None, dict[str, np.ndarray]]:
    """A [1, lanes] row, +inf on the last block's valid lanes and -inf on its padding, and its contents; None
    when nothing pads."""
    lanes = b.chip.lanes.lanes
    valid = cols - (math.ceil(cols / lanes) - 1) * lanes
    if valid == lanes:
        return None, {}
    t = tensor("mask", Hemisphere.W, AUX_SLICE, 1, lanes)
    b.tensors.append(t)
    row = np.where(np.arange(lanes) < valid, np.inf, -np.inf).astype(np.float32)[None, :]
    return Rows(Hemisphere.W, AUX_SLICE, 0, F32, stride=0), {t.name: row}


def check_fp32(x: np.ndarray, name: str) -> np.ndarray:
    if np.ndim(x) != 2 or 0 in np.shape(x):
        raise ProgramError(f"{name}: expected a non-empty [M, N] array, got shape {np.shape(x)}")
    return np.asarray(x).astype(np.float32)


def plain_feed(op: Opcode, tx: Tensor, mask: Rows | None, lanes: int) -> Feed:
    """Fold x's blocks themselves, the last one through min(x, mask) when a mask is given (ALU 13; then ALU
    12 adds, ALU 10 takes the max)."""
    blocks = tx.column_blocks(lanes)

    def feed(b: ProgramBuilder, j: int, partial: Rows | None, out: StreamRef, row0: int, count: int,
             start: int) -> Flow:
        xs = rows_of(tx, lanes, block=j).skip(row0)
        masked = mask is not None and j == blocks - 1
        if partial is None and not masked:  # straight from SRAM to the SXM, or to the east scratch
            to = b.geo.sxm(Hemisphere.W) if out == STAGE_IN else b.geo.vxm_rank(0)
            return read(b, Load(xs, out), to, start, count)
        term: Flow | Load = Load(xs, X_IN)
        if masked:
            pair = [term, Load(mask, AUX_IN)]
            term = alu(b, 13, Opcode.MIN, F32, count, pair, X_IN if partial else out, start=start)
            if partial is None:
                return term
            start = None
        combine = [term, Load(partial.skip(row0), PARTIAL_IN)]
        return alu(b, 12 if op is Opcode.ADD else 10, op, F32, count, combine, out, start=start)

    return feed


# -- rowsum / rowmax -----------------------------------------------------------------------------------------


def rowsum(chip: Chip, x: np.ndarray, *, name: str = "rowsum") -> Kernel:
    """y[M, 1] = x.sum(axis=1) for x [M, N] in fp32: a tree sum, `~=` within the bound in `_sum_check`."""
    return _row_reduce(chip, Opcode.ADD, check_fp32(x, name), name)


def rowmax(chip: Chip, x: np.ndarray, *, name: str = "rowmax") -> Kernel:
    """y[M, 1] = x.max(axis=1) for x [M, N] in fp32, exactly."""
    return _row_reduce(chip, Opcode.MAX, check_fp32(x, name), name)


def _row_reduce(chip: Chip, op: Opcode, x: np.ndarray, name: str) -> Kernel:
    b = ProgramBuilder(chip, name)
    m, n = x.shape
    lanes = chip.lanes.lanes
    tx, ty = tensor("x", Hemisphere.W, X_SLICE, m, n), tensor("y", Hemisphere.E, OUT_SLICE, m, 1)
    b.tensors += [tx, ty]
    mask, inputs = mask_tensor(b, n) if op is Opcode.MAX else (None, {})
    blocks = tx.column_blocks(lanes)

    def finish(pb: ProgramBuilder, result: Flow, row0: int, count: int) -> int:
        return write(pb, result, rows_of(ty, lanes).skip(row0), count)

    feed = plain_feed(op, tx, mask, lanes)
    reduce_rows(b, RowReduction(op, m, blocks, feed, finish, partials(b, m, blocks)))
    b.checks.append(_sum_check(x, blocks, lanes) if op is Opcode.ADD else
                    Check(target="y", mode=CheckMode.EXACT, expr="rowmax(x)"))
    return Kernel(program=b.build(), predicted_cycles=b.predicted_cycles(), inputs={"x": x, **inputs},
                  assemble=lambda t: t["y"], fast=partial(_fast, op, lanes))


def _fast(op: Opcode, lanes: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The fold and the lane all-reduce; y keeps lane 0 of the broadcast result."""
    x = padded_blocks(inputs["x"], lanes)
    return fast_reduce(op, plain_terms(x, inputs.get("mask")), x.shape[1])[:, :1]


def _sum_check(x: np.ndarray, blocks: int, lanes: int) -> Check:
    """An element passes through at most (blocks - 1) fold additions and `tree_depth` tree additions, each
    rounding within 2^-24 of a partial sum no larger than the row's sum of |x|. So, to first order,
    |error| <= (blocks - 1 + tree_depth) * 2^-24 * max over rows of sum |x|."""
    scale = float(np.abs(x.astype(np.float64)).sum(axis=1).max())
    atol = (blocks - 1 + tree_depth(lanes)) * 2.0**-24 * scale
    return Check(target="y", mode=CheckMode.CLOSE, expr="rowsum(x)", atol=atol)


# -- the fast path: the same fp32 operations, in the same order, on whole [M, lanes] arrays --------------------


def padded_blocks(x: np.ndarray, lanes: int) -> np.ndarray:
    """x [M, N] -> [M, blocks, lanes], the padding lanes zero as in SRAM."""
    m, n = x.shape
    padded = np.zeros((m, math.ceil(n / lanes) * lanes), x.dtype)
    padded[:, :n] = x
    return padded.reshape(m, -1, lanes)


def plain_terms(x: np.ndarray, mask: np.ndarray | None) -> Callable[[int], np.ndarray]:
    """`plain_feed`'s term for block j of x [M, blocks, lanes]: x_j, the last one through min(x, mask)."""

    def term(j: int) -> np.ndarray:
        if mask is None or j < x.shape[1] - 1:
            return x[:, j]
        return nx.vxm_binary(Opcode.MIN, x[:, j], mask, F32)

    return term


def fast_reduce(op: Opcode, term: Callable[[int], np.ndarray], blocks: int) -> np.ndarray:
    """What `reduce_rows` computes from the per-block terms f(x_j) [M, lanes]: the fold p = f(x_j) (+) p in
    block order, then the lane all-reduce; every lane of the result, as the last tree ALU sends it."""
    p = term(0)
    for j in range(1, blocks):
        p = nx.vxm_binary(op, term(j), p, F32)
    lanes = p.shape[-1]
    for rotations in stage_rotations(lanes):  # the SXM's permutes, all of a stage at once: [..., rotation, lane]
        p = _fast_tree(op, p[..., (np.arange(lanes) - np.array(rotations)[:, None]) % lanes])
    return p


def _fast_tree(op: Opcode, level: np.ndarray) -> np.ndarray:
    """`_tree`'s order on the terms level[..., i, :]: adjacent pairs combined level by level, an odd last one
    copied along."""
    while level.shape[-2] > 1:
        n = level.shape[-2]
        pairs = nx.vxm_binary(op, level[..., 0:n - 1:2, :], level[..., 1:n:2, :], F32)
        if n % 2:
            pairs = np.concatenate([pairs, nx.vxm_unary(Opcode.COPY, level[..., n - 1:, :], F32)], axis=-2)
        level = pairs
    return level[..., 0, :]
