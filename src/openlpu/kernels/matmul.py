"""Matrix x matrix on the MXM: C[M, N] = A[M, K] @ B[K, N], int8 (exact, int32 out) or fp16 (fp32 out).

Schedule, per hemisphere (the N tiles are shared out between the two hemispheres' MXMs, each with its own copy of
A in its own MEM slices):

    for each block of up to `accumulator_vectors` rows of A:
      for each 320-column tile of B:
        for each 320-deep K tile:
          LW  x (320 / rows-per-LW) cycles   32 MEM slices stream the tile's rows on all 32 inbound streams
          IW                                 swap the loaded tile in
          ABC x rows (every cycle; every 2nd for fp16)   A's rows stream in; products land in accumulator slots
        ACC x rows                           results stream back out to C's MEM slices (overlaps the next tile)

LW takes every inbound stream, so loads and activations alternate on the streams; that is the bound this kernel
sits on (weight bytes / (32 streams x 320 B) cycles per hemisphere, plus the activation passes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from openlpu.errors import ProgramError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import Opcode
from openlpu.isa.program import Check, CheckMode, Placement, Tensor
from openlpu.isa.types import DType, StreamRef
from openlpu.kernels.builder import ProgramBuilder, mem_queue, mxm_queue
from openlpu.kernels.kernel import Kernel
from openlpu.kernels.vectors import View, write_view
from openlpu.sim import numerics as nx
from openlpu.sim.validate import inbound, lw_rows, outbound

#: MEM slices (counted from the VXM outward) each operand uses in a hemisphere: A's byte planes next to the VXM,
#: C's after them, B's 32 weight streams on the slices nearest the MXM.
A_SLICE, C_SLICE = 0, 4


@dataclass(frozen=True)
class _Shape:
    m: int
    k: int
    n: int
    dtype: DType
    lanes: int
    slots: int

    @property
    def k_tiles(self) -> int:
        return math.ceil(self.k / self.lanes)

    @property
    def k_padded(self) -> int:
        return self.k_tiles * self.lanes

    @property
    def n_tiles(self) -> int:
        return math.ceil(self.n / self.lanes)

    @property
    def out_dtype(self) -> DType:
        return DType.INT32 if self.dtype is DType.INT8 else DType.FP32


def matmul(chip: Chip, a: np.ndarray, b: np.ndarray, dtype: DType, *, skip_zero_tiles: bool = False,
           name: str = "matmul") -> Kernel:
    """A kernel computing a @ b on `chip`; `a` is [M, K], `b` is [K, N], both converted to `dtype`; with
    `skip_zero_tiles`, b's all-zero 320 x 320 tiles are neither loaded nor streamed through."""
    if dtype not in (DType.INT8, DType.FP16):
        raise ProgramError(f"matmul: the MXM multiplies int8 or fp16, not {dtype.value}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ProgramError(f"matmul: shapes {a.shape} and {b.shape} do not chain as [M, K] x [K, N]")
    shape = _Shape(a.shape[0], a.shape[1], b.shape[1], dtype, chip.lanes.lanes, chip.mxm.accumulator_vectors)
    builder = ProgramBuilder(chip, name)
    tiles = np.array_split(np.arange(shape.n_tiles), 2)
    inputs: dict[str, np.ndarray] = {}
    parts = []
    for h, mine in zip((Hemisphere.W, Hemisphere.E), tiles):
        if len(mine):
            cols = slice(mine[0] * shape.lanes, min(shape.n, (mine[-1] + 1) * shape.lanes))
            parts.append((h, cols))
            inputs.update(_half(builder, shape, h, a, b[:, cols], cols.stop - cols.start, skip_zero_tiles))
    halves = [h.value for h, _ in parts]
    return Kernel(
        program=builder.build(),
        predicted_cycles=builder.predicted_cycles(),
        inputs=inputs,
        assemble=lambda t: np.concatenate([t[f"c_{h}"] for h in halves], axis=1),
        fast=lambda x: np.concatenate([fast_matmul(x[f"a_{h}"], x[f"b_{h}"], dtype, shape.slots,
                                                   skip=zero_tiles(x[f"b_{h}"]) if skip_zero_tiles else frozenset())
                                       for h in halves], axis=1),
    )


def fast_matmul(a: np.ndarray, b: np.ndarray, dtype: DType, slots: int, lanes: int = 320,
                skip: frozenset[tuple[int, int]] = frozenset()) -> np.ndarray:
    """What one hemisphere's MXM computes for `emit_matmul`, pass by pass: each `lanes`-deep pass with `mxm_pass`,
    passes folded into the accumulator in K order (the `skip`ped tiles left out), rows in blocks of `slots` as the
    schedule does. `a` is [M, K] with K a multiple of `lanes`."""
    s = _Shape(a.shape[0], a.shape[1], b.shape[1], dtype, lanes, slots)
    n = b.shape[1]
    w = np.zeros((s.k_padded, math.ceil(n / lanes) * lanes), b.dtype)
    w[:, :n] = b
    out = np.empty((s.m, w.shape[1]), s.out_dtype.numpy)
    for m0 in range(0, s.m, s.slots):
        rows = slice(m0, m0 + s.slots)
        for n0 in range(0, w.shape[1], lanes):
            acc = None
            for k0 in range(0, s.k_padded, lanes):
                if (k0 // lanes, n0 // lanes) in skip:
                    continue
                product = nx.mxm_pass(a[rows, k0:k0 + lanes], w[k0:k0 + lanes, n0:n0 + lanes], s.dtype)
                acc = product if acc is None else nx.accumulate(acc, product, s.dtype)
            out[rows, n0:n0 + lanes] = acc
    return out[:, :n]


def _half(builder: ProgramBuilder, s: _Shape, h: Hemisphere, a: np.ndarray, b: np.ndarray, n: int,
          skip_zero_tiles: bool) -> dict:
    chip = builder.chip
    b_slice = chip.mem.slices_per_hemisphere - chip.streams.streams_per_direction
    if b_slice < C_SLICE + 4:
        raise ProgramError(f"matmul: a hemisphere needs {C_SLICE + 4 + chip.streams.streams_per_direction} MEM "
                           f"slices (a, c, then 32 weight streams), chip {chip.name} has "
                           f"{chip.mem.slices_per_hemisphere}")
    ta = Tensor(name=f"a_{h.value}", dtype=s.dtype, rows=s.m, cols=s.k_padded,
                placement=Placement(hemisphere=h, first_slice=A_SLICE, address=0))
    tb = Tensor(name=f"b_{h.value}", dtype=s.dtype, rows=s.k_padded, cols=n,
                placement=Placement(hemisphere=h, first_slice=b_slice, address=0,
                                    interleave=lw_rows(chip, s.dtype)))
    tc = Tensor(name=f"c_{h.value}", dtype=s.out_dtype, rows=s.m, cols=n,
                placement=Placement(hemisphere=h, first_slice=C_SLICE, address=0))
    builder.tensors += [ta, tb, tc]
    pad = np.zeros((s.k_padded - s.k,) + b.shape[1:])
    emit_matmul(builder, ta, tb, tc, skip=zero_tiles(np.concatenate([b, pad])) if skip_zero_tiles else frozenset())
    inputs = {
        ta.name: np.pad(a, ((0, 0), (0, s.k_padded - s.k))).astype(s.dtype.numpy),
        tb.name: np.concatenate([b, pad]).astype(s.dtype.numpy),
    }
    builder.checks.append(_check(s, tc.name, inputs[ta.name], inputs[tb.name], ta.name, tb.name))
    return inputs


def emit_matmul(builder: ProgramBuilder, a: Tensor, w: Tensor, c: Tensor, start: int = 0,
                skip: frozenset[tuple[int, int]] = frozenset()) -> int:
    """Schedule c = a @ w on the MXM of the tensors' hemisphere, no instruction issuing before `start`; returns
    the first cycle after everything has landed (c is in SRAM, the streams are quiet).

    The tensors may sit anywhere in that hemisphere, given: a [M, K] int8/fp16 row-major (K a multiple of 320);
    w [K, N] of a's type in the MXM layout (interleave 32 / width: one weight row per inbound stream per cycle,
    over 32 consecutive slices); c [M, N] int32/fp32 row-major. `skip`: (K tile, N tile) pairs whose weights are
    all zero (`zero_tiles`): not loaded, not streamed through — each N tile's sum starts at its first other K
    tile.
    """
    s = _contract(builder.chip, a, w, c)
    kept = [[kt for kt in range(s.k_tiles) if (kt, nt) not in skip] for nt in range(s.n_tiles)]
    if not all(kept):
        raise ProgramError(f"matmul {a.name} @ {w.name}: every K tile of an N tile is skipped; give its zeros "
                           "another way")
    mark = builder.mark()
    _schedule(builder, s, a, w, c, start, kept)
    return builder.done_since(mark)


def zero_tiles(w: np.ndarray, lanes: int = 320) -> frozenset[tuple[int, int]]:
    """(K tile, N tile) pairs of a weight [K, N] whose lanes x lanes tile is all zero."""
    k, n = w.shape
    nonzero = np.zeros((math.ceil(k / lanes), math.ceil(n / lanes)), bool)
    for kt in range(nonzero.shape[0]):
        for nt in range(nonzero.shape[1]):
            nonzero[kt, nt] = w[kt * lanes:(kt + 1) * lanes, nt * lanes:(nt + 1) * lanes].any()
    return frozenset((int(kt), int(nt)) for kt, nt in zip(*np.nonzero(~nonzero)))


def _contract(chip: Chip, a: Tensor, w: Tensor, c: Tensor) -> _Shape:
    """The shape of a @ w, after checking the tensors are laid out as the schedule needs."""
    lanes, h = chip.lanes.lanes, a.placement.hemisphere
    problems = []
    if not (a.placement.hemisphere is w.placement.hemisphere is c.placement.hemisphere):
        problems.append("a, w and c must sit in one hemisphere (the MXM there reads a and w and writes c)")
    if a.dtype not in (DType.INT8, DType.FP16) or w.dtype is not a.dtype:
        problems.append(f"a and w must both be int8 or fp16 (got {a.dtype.value} and {w.dtype.value})")
    elif c.dtype is not (DType.INT32 if a.dtype is DType.INT8 else DType.FP32):
        problems.append(f"c must be {'int32' if a.dtype is DType.INT8 else 'fp32'} for {a.dtype.value} inputs")
    if a.cols % lanes or w.rows != a.cols or (c.rows, c.cols) != (a.rows, w.cols):
        problems.append(f"shapes a {a.rows}x{a.cols}, w {w.rows}x{w.cols}, c {c.rows}x{c.cols} must be "
                        f"[M, K] x [K, N] -> [M, N] with K a multiple of {lanes}")
    if a.placement.interleave != 1 or c.placement.interleave not in (1, 2) or c.rows % c.placement.interleave:
        problems.append("a must be row-major (interleave 1), c row-major or interleaved by 2 (even rows)")
    if w.placement.interleave != lw_rows(chip, w.dtype):
        problems.append(f"w must have interleave {lw_rows(chip, w.dtype)} (the MXM weight layout)")
    if w.placement.first_slice + chip.streams.streams_per_direction > chip.mem.slices_per_hemisphere:
        problems.append(f"w needs {chip.streams.streams_per_direction} slices from its first slice "
                        f"{w.placement.first_slice}; a hemisphere has {chip.mem.slices_per_hemisphere}")
    if problems:
        raise ProgramError(f"matmul {a.name} @ {w.name} -> {c.name} ({h.value}): " + "; ".join(problems))
    return _Shape(a.rows, a.cols, w.cols, a.dtype, lanes, chip.mxm.accumulator_vectors)


def _check(s: _Shape, c: str, a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> Check:
    """int8 is exact. fp16 rounds to fp32 once per 320-deep pass and once per accumulation, each within 2^-24 of
    the running sum, so the error is at most (2 * K tiles) * 2^-24 * max |a| @ |b|: the stated tolerance."""
    expr = f"matmul({a_name}, {b_name})"
    if s.dtype is DType.INT8:
        return Check(target=c, mode=CheckMode.EXACT, expr=expr)
    scale = float((np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))).max(initial=0.0))
    return Check(target=c, mode=CheckMode.CLOSE, expr=expr, rtol=0.0, atol=2 * s.k_tiles * 2.0**-24 * scale)


def _schedule(builder: ProgramBuilder, s: _Shape, a: Tensor, w: Tensor, c: Tensor, start: int,
              kept: list[list[int]]) -> None:
    chip, h = builder.chip, a.placement.hemisphere
    width, rows = s.dtype.width_bytes, lw_rows(chip, s.dtype)
    lw_cycles = chip.mxm.plane_rows // rows
    gap = chip.mxm.fp16_issue_interval_cycles if s.dtype is DType.FP16 else 1
    mxm, acc_q = mxm_queue(h, 0), mxm_queue(h, 1)
    target = builder.position(mxm)
    d_in, d_out = inbound(h), outbound(h)
    read_lat = chip.mem.read_latency_cycles
    group_rows = s.k_padded // rows  # addresses per column block of w
    t = _first_arrival(builder, h, (a.placement.first_slice, w.placement.first_slice), target, start)
    drained = start  # first cycle the ACC queue is free
    for m0 in range(0, s.m, s.slots):
        mc = min(s.slots, s.m - m0)
        for nt in range(math.ceil(s.n / s.lanes)):
            for kt in kept[nt]:
                for j in range(chip.streams.streams_per_direction):
                    q = mem_queue(h, w.placement.first_slice + j)
                    addr = w.placement.address + nt * group_rows + kt * lw_cycles
                    builder.place(q, builder.issue_to_arrive(q, read_lat, target, t),
                                  Instruction(op=Opcode.READ, addr=addr, out=StreamRef(d_in, j)), lw_cycles)
                builder.place(mxm, t, Instruction(op=Opcode.LW, plane=0, dtype=s.dtype, row=0), lw_cycles)
                builder.place(mxm, t + lw_cycles, Instruction(op=Opcode.IW, plane=0))
                first = t + lw_cycles + chip.mxm.iw_latency_cycles
                for byte in range(width):
                    q = mem_queue(h, a.placement.first_slice + byte)
                    addr = a.placement.address + kt * s.m + m0
                    builder.place(q, builder.issue_to_arrive(q, read_lat, target, first),
                                  Instruction(op=Opcode.READ, addr=addr, out=StreamRef(d_in, byte)), mc, gap)
                builder.place(mxm, first, Instruction(op=Opcode.ABC, plane=0, dtype=s.dtype, a=StreamRef(d_in, 0),
                                                      slot=0, accumulate=kt != kept[nt][0]), mc, gap)
                t = first + (mc - 1) * gap + 1
            drain = max(t - 1 + chip.mxm.abc_latency_cycles, drained)
            _drain(builder, c, acc_q, drain, View(c, nt, 1, m0, mc), d_out)
            drained = drain + mc
            # the next tile's first product into slot m must land after this drain has read slot m
            t = max(t, drain + 1 - chip.mxm.abc_latency_cycles - lw_cycles - chip.mxm.iw_latency_cycles)


def _first_arrival(builder: ProgramBuilder, h: Hemisphere, slices: tuple[int, ...], target: int, start: int) -> int:
    """The earliest cycle at which every operand can reach the MXM with no read issuing before `start`."""
    far = max(abs(target - builder.position(mem_queue(h, s))) for s in slices)
    return start + far + builder.chip.mem.read_latency_cycles


def _drain(builder: ProgramBuilder, c: Tensor, q, start: int, rows: View, d_out) -> None:
    """ACC `rows.count` slots from `start` and write them (4 byte planes) to `rows` of c, whatever its
    interleave."""
    chip = builder.chip
    builder.place(q, start, Instruction(op=Opcode.ACC, plane=0, slot=0, out=StreamRef(d_out, 0)), rows.count)
    produced = start + chip.mxm.acc_latency_cycles
    write_view(builder, StreamRef(d_out, 0), produced - builder.position(q) * d_out.step, rows)
