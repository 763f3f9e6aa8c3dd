"""Moving data between the layouts kernels need, transforming it on the way: one column block of a tensor
streamed through up to four chained VXM operations into a column block of another tensor, in either hemisphere.

This is the glue a compiler puts between kernels: a matmul leaves fp32 results split between the hemispheres,
the next matmul wants its fp16 input whole in each; `emit_relayout` carries a block across (or back to its own
side), casting, activating or copying it as it passes the ALUs:

    src (west) --E--> rank 0 --> rank 1 ... --> dst (east), or turning round at the last rank --> dst (west)
    src (east) --W--> rank 3 --> rank 2 ... --> dst (west), or turning round --> dst (east)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from openlpu.errors import ProgramError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.opcodes import VXM_LARGE_ONLY, VXM_UNARY, Opcode
from openlpu.isa.program import Placement, Tensor
from openlpu.isa.types import Direction, DType, StreamRef
from openlpu.kernels.builder import ProgramBuilder
from openlpu.kernels.elementwise import Flow, Load, alu, earliest, rows_of, write
from openlpu.kernels.kernel import Kernel
from openlpu.sim import numerics as nx


@dataclass(frozen=True, slots=True)
class Step:
    """One VXM operation on the way: a unary op in `dtype`, or a cast from `dtype` to `to`."""

    op: Opcode
    dtype: DType
    to: DType | None = None

    @property
    def out(self) -> DType:
        return self.to or self.dtype

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The VXM's arithmetic, for fast paths."""
        return nx.convert(x, self.dtype, self.to) if self.op is Opcode.CAST else nx.vxm_unary(self.op, x, self.dtype)


def emit_relayout(b: ProgramBuilder, src: Tensor, src_block: int, dst: Tensor, dst_block: int,
                  steps: list[Step], start: int = 0) -> int:
    """Stream every row of column block `src_block` of `src` through `steps` into block `dst_block` of `dst`,
    issuing nothing before `start`; returns the first cycle after the last row is written."""
    _check(b.chip, src, dst, steps)
    mark = b.mark()
    schedule = _schedule(src, src_block, dst, dst_block, steps)
    schedule(b, earliest(b.chip, schedule, start))
    return b.done_since(mark)


def relayout(chip: Chip, x: np.ndarray, steps: list[Step], source: Hemisphere, target: Hemisphere) -> Kernel:
    """A standalone program moving x [M, N] (all its column blocks) from `source` to `target` through `steps`."""
    dtype_in, dtype_out = steps[0].dtype, steps[-1].out
    n_blocks = -(-x.shape[1] // chip.lanes.lanes)
    b = ProgramBuilder(chip, "relayout")
    src = Tensor(name="x", dtype=dtype_in, rows=x.shape[0], cols=x.shape[1],
                 placement=Placement(hemisphere=source, first_slice=4, address=0))
    dst = Tensor(name="y", dtype=dtype_out, rows=x.shape[0], cols=x.shape[1],
                 placement=Placement(hemisphere=target, first_slice=0, address=0 if source is not target else
                                     n_blocks * x.shape[0]))
    b.tensors += [src, dst]
    done = 0
    for block in range(n_blocks):
        done = emit_relayout(b, src, block, dst, block, steps, start=done)
    return Kernel(program=b.build(), predicted_cycles=b.predicted_cycles(), inputs={"x": x.astype(dtype_in.numpy)},
                  assemble=lambda t: t["y"], fast=lambda v: fast_relayout(v["x"], steps))


def fast_relayout(x: np.ndarray, steps: list[Step]) -> np.ndarray:
    """What `emit_relayout` computes on the rows it moves."""
    for step in steps:
        x = step.apply(x)
    return x


def _schedule(src: Tensor, src_block: int, dst: Tensor, dst_block: int, steps: list[Step]
              ) -> Callable[[ProgramBuilder, int], Flow]:
    east = src.placement.hemisphere is Hemisphere.W
    d_in = Direction.E if east else Direction.W
    turn = dst.placement.hemisphere is src.placement.hemisphere

    def schedule(pb: ProgramBuilder, t0: int) -> Flow:
        lanes = pb.chip.lanes.lanes
        flow: Flow | Load = Load(rows_of(src, lanes, block=src_block), StreamRef(d_in, 0))
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            d_out = (Direction.W if east else Direction.E) if (last and turn) else d_in
            rank = i if east else pb.chip.vxm.ranks - 1 - i
            out = StreamRef(d_out, 8 * (i + 1) % pb.chip.streams.streams_per_direction)
            flow = alu(pb, _alu(pb.chip, step.op, rank), step.op, step.dtype, src.rows, [flow], out,
                       start=t0 if i == 0 else None, to=step.to)
        write(pb, flow, rows_of(dst, lanes, block=dst_block), src.rows)
        return flow

    return schedule


def _alu(chip: Chip, op: Opcode, rank: int) -> int:
    """An ALU at `rank` that can run `op` (a large one where `op` needs it)."""
    alus = [a for a in range(chip.vxm.alus) if a % chip.vxm.ranks == rank]
    if op in VXM_LARGE_ONLY:
        alus = [a for a in alus if a in chip.vxm.large_alus]
    return alus[0]


def _check(chip: Chip, src: Tensor, dst: Tensor, steps: list[Step]) -> None:
    where = f"relayout {src.name} -> {dst.name}"
    if not 1 <= len(steps) <= chip.vxm.ranks:
        raise ProgramError(f"{where}: give 1 to {chip.vxm.ranks} steps (one per ALU rank), not {len(steps)}")
    for s in steps:
        if s.op is not Opcode.CAST and s.op not in VXM_UNARY:
            raise ProgramError(f"{where}: `{s.op.value}` is not a unary VXM op or a cast")
    chain = [src.dtype] + [s.out for s in steps]
    if any(s.dtype is not d for s, d in zip(steps, chain)) or chain[-1] is not dst.dtype:
        raise ProgramError(f"{where}: types do not chain: {src.dtype.value} through "
                           f"{[s.op.value for s in steps]} must end in {dst.dtype.value}")
    if src.rows != dst.rows or src.placement.interleave != 1 or dst.placement.interleave != 1:
        raise ProgramError(f"{where}: both tensors must be row-major with the same rows ({src.rows} vs {dst.rows})")
