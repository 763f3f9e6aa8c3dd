"""Elementwise kernels on the VXM, and the row-stream plumbing every VXM kernel is built from.

A kernel here streams row vectors, one per cycle, from MEM slices in the west through one VXM ALU into MEM
slices in the east. Each operand is read just in time (the read issues so that the vector reaches the ALU in
the cycle the ALU issues), and each byte plane of the result is written in the cycle it passes its slice:

    x, y (west slices, eastward streams) --> ALU --> z (east slices, on x's streams)

Several such "ways" can run side by side, each with its own stream groups, slices and ALU; the tensors are
interleaved row by row over the ways (`Placement.interleave`). A way's slices sit further from the VXM the
more ways there are, which costs latency, so the kernel builds every possible number of ways and keeps the
fastest: one way for small tensors, many for long ones.

Numerics (`openlpu.sim.numerics`): every result is exact (`==`) against the float64 NumPy expression rounded
once to the dtype, transcendentals included, since the VXM evaluates those in fp64 and rounds once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from openlpu.errors import ProgramError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import VXM_LARGE_ONLY, VXM_TRANSCENDENTAL, Opcode
from openlpu.isa.program import Check, CheckMode, Placement, Tensor
from openlpu.isa.types import Direction, DType, StreamRef
from openlpu.kernels.builder import ProgramBuilder, mem_queue, vxm_queue
from openlpu.kernels.kernel import Kernel
from openlpu.sim import numerics as nx
from openlpu.sim import semantics

# -- row-stream plumbing -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rows:
    """Row vectors in SRAM: row i at address `address + i * stride` (stride 0 re-reads one row), its byte b in
    slice `first_slice + b` of `hemisphere`."""

    hemisphere: Hemisphere
    first_slice: int
    address: int
    dtype: DType
    stride: int = 1

    def skip(self, rows: int) -> Rows:
        return replace(self, address=self.address + rows * self.stride)


def rows_of(t: Tensor, lanes: int, block: int = 0, way: int = 0) -> Rows:
    """Rows way, way + interleave, ... of column block `block` of tensor `t`."""
    p, w = t.placement, t.dtype.width_bytes
    return Rows(p.hemisphere, p.first_slice + way * w, p.address + block * t.rows_per_group(), t.dtype)


@dataclass(frozen=True, slots=True)
class Load:
    """An operand read from SRAM onto stream group `ref` just in time for its consumer."""

    rows: Rows
    ref: StreamRef


@dataclass(frozen=True, slots=True)
class Flow:
    """A train of row vectors on one stream group, one row per cycle. A value keeps its diagonal as it moves
    (cycle - position eastward, cycle + position westward), so row i is at position q in cycle `at(q) + i`."""

    ref: StreamRef
    dtype: DType
    diagonal: int
    origin: int  # the writer nearest the consumers; a reader must sit strictly downstream of it

    @classmethod
    def written(cls, ref: StreamRef, dtype: DType, position: int, cycle: int) -> Flow:
        return cls(ref, dtype, cycle - position * ref.direction.step, position)

    def at(self, position: int) -> int:
        if (position - self.origin) * self.ref.direction.step <= 0:
            raise ProgramError(f"stream {self.ref} flows {self.ref.direction.value}ward from position "
                               f"{self.origin}; it never reaches position {position}")
        return self.diagonal + position * self.ref.direction.step


Operand = Flow | Load


def read(b: ProgramBuilder, load: Load, target: int, arrive: int, count: int) -> Flow:
    """Read `count` rows so that row 0 reaches position `target` in cycle `arrive`, byte planes together."""
    rows, d = load.rows, load.ref.direction
    nearest = None
    for byte in range(rows.dtype.width_bytes):
        q = mem_queue(rows.hemisphere, rows.first_slice + byte)
        here = b.position(q)
        if (target - here) * d.step <= 0:
            raise ProgramError(f"{b.name}: {q} at position {here} cannot send {d.value}ward to {target}")
        ins = Instruction(op=Opcode.READ, addr=rows.address, out=StreamRef(d, load.ref.index + byte),
                          stride=None if rows.stride == 1 else rows.stride)
        b.place(q, b.issue_to_arrive(q, b.chip.mem.read_latency_cycles, target, arrive), ins, count)
        nearest = here if nearest is None or (here - nearest) * d.step > 0 else nearest
    return Flow(load.ref, rows.dtype, arrive - target * d.step, nearest)


def write(b: ProgramBuilder, flow: Flow, rows: Rows, count: int) -> int:
    """Write `count` rows of `flow` to `rows`, each byte plane in the cycle it passes its slice. Returns the
    first cycle after the last commit: from then on reads see every row and meet no commit in their bank."""
    done = 0
    for byte in range(rows.dtype.width_bytes):
        q = mem_queue(rows.hemisphere, rows.first_slice + byte)
        a = StreamRef(flow.ref.direction, flow.ref.index + byte)
        ins = Instruction(op=Opcode.WRITE, addr=rows.address, a=a)
        burst = b.place(q, flow.at(b.position(q)), ins, count)
        done = max(done, burst.last + b.chip.mem.write_latency_cycles + 1)
    return done


def alu(b: ProgramBuilder, index: int, op: Opcode, dtype: DType, count: int, operands: list[Operand],
        out: StreamRef, *, imm: float | int | None = None, start: int | None = None, to: DType | None = None
        ) -> Flow:
    """Run `op` on ALU `index` for `count` rows, writing `out` (in `to` for a cast). It issues when its stream
    operands arrive (together), or at `start` when all are loads; loads are read to arrive just then."""
    q = vxm_queue(index)
    here = b.position(q)
    arrivals = {o.at(here) for o in operands if isinstance(o, Flow)} | ({start} - {None})
    if len(arrivals) != 1:
        raise ProgramError(f"{b.name}: `{op.value}` on ALU {index}: operands reach position {here} in cycles "
                           f"{sorted(arrivals)}; they must arrive together (or give start= for loads only)")
    issue = arrivals.pop()
    refs = [(o if isinstance(o, Flow) else read(b, o, here, issue, count)).ref for o in operands]
    b.place(q, issue, Instruction(op=op, dtype=dtype, to=to, out=out, imm=imm, **dict(zip(("a", "b"), refs))),
            count)
    return Flow.written(out, to or dtype, here, issue + semantics.latency(b.chip, op))


def earliest(chip: Chip, schedule: Callable[[ProgramBuilder, int], object], ready: int = 0) -> int:
    """The smallest `start` for which `schedule(builder, start)` places nothing before cycle `ready`.
    Schedules place everything relative to `start`, so one probe run finds their first instruction."""
    probe, origin = ProgramBuilder(chip, "probe"), 1 << 20
    schedule(probe, origin)
    first = min(burst.cycle for bursts in probe.bursts.values() for burst in bursts)
    return ready + origin - first


def alus_for(chip: Chip, op: Opcode) -> list[int]:
    """The ALUs that can run `op`: the large ones for max, min, relu, casts and transcendentals."""
    return sorted(chip.vxm.large_alus) if op in VXM_LARGE_ONLY else list(range(chip.vxm.alus))


def group(chip: Chip, d: Direction, n: int, dtype: DType) -> StreamRef:
    """Stream group n (0, 1, ...) of `dtype`'s width flowing `d`."""
    ref = StreamRef(d, n * dtype.width_bytes)
    if ref.index + dtype.width_bytes > chip.streams.streams_per_direction:
        raise ProgramError(f"stream group {n} of {dtype.value} does not exist: {d.value} has "
                           f"{chip.streams.streams_per_direction // dtype.width_bytes} such groups")
    return ref


# -- the elementwise kernels ---------------------------------------------------------------------------------

UNARY_EXPR = {
    Opcode.COPY: "x", Opcode.NEG: "-x", Opcode.ABS: "abs(x)", Opcode.RELU: "relu(x)", Opcode.EXP: "exp(x)",
    Opcode.RECIP: "recip(x)", Opcode.RSQRT: "rsqrt(x)", Opcode.TANH: "tanh(x)", Opcode.SIGMOID: "sigmoid(x)",
    Opcode.SILU: "silu(x)",
}
BINARY_EXPR = {
    Opcode.ADD: "{a} + {b}", Opcode.SUB: "{a} - {b}", Opcode.MUL: "{a} * {b}",
    Opcode.MAX: "maximum({a}, {b})", Opcode.MIN: "minimum({a}, {b})",
}


def unary(chip: Chip, op: Opcode, x: np.ndarray, dtype: DType, *, name: str | None = None) -> Kernel:
    """z = op(x) for x [M, N], elementwise in `dtype`."""
    if op not in UNARY_EXPR:
        raise ProgramError(f"unary: `{op.value}` is not a unary VXM op; use one of "
                           f"{[o.value for o in UNARY_EXPR]}")
    return _elementwise(chip, op, dtype, [x], None, UNARY_EXPR[op], name or op.value)


def binary(chip: Chip, op: Opcode, x: np.ndarray, y: np.ndarray, dtype: DType, *,
           name: str | None = None) -> Kernel:
    """z = x op y for x, y [M, N], elementwise in `dtype`."""
    _check_binary(op)
    if np.shape(x) != np.shape(y):
        raise ProgramError(f"binary: shapes {np.shape(x)} and {np.shape(y)} differ")
    return _elementwise(chip, op, dtype, [x, y], None, BINARY_EXPR[op].format(a="x", b="y"), name or op.value)


def binary_scalar(chip: Chip, op: Opcode, x: np.ndarray, imm: float | int, dtype: DType, *,
                  name: str | None = None) -> Kernel:
    """z = x op imm for x [M, N]; the immediate is rounded (or wrapped) to `dtype` as the VXM does."""
    _check_binary(op)
    value = nx.narrow(np.array(imm, np.float64 if dtype.is_float else np.int64), dtype).item()
    expr = BINARY_EXPR[op].format(a="x", b=repr(value))
    return _elementwise(chip, op, dtype, [x], value, expr, name or f"{op.value}_scalar")


def _check_binary(op: Opcode) -> None:
    if op not in BINARY_EXPR:
        raise ProgramError(f"binary: `{op.value}` is not supported; use one of "
                           f"{[o.value for o in BINARY_EXPR]}")


def _elementwise(chip: Chip, op: Opcode, dtype: DType, operands: list[np.ndarray], imm, expr: str,
                 name: str) -> Kernel:
    x = operands[0]
    if np.ndim(x) != 2 or 0 in np.shape(x):
        raise ProgramError(f"{name}: expected a non-empty [M, N] array, got shape {np.shape(x)}")
    if op in VXM_TRANSCENDENTAL and not dtype.is_float:
        raise ProgramError(f"{name}: `{op.value}` is defined on fp16/fp32 only, not {dtype.value}")
    top = _max_ways(chip, op, dtype, len(operands), x.shape[0])
    kernels = [_build(chip, op, dtype, operands, imm, expr, name, n) for n in range(1, top + 1)]
    return min(kernels, key=lambda k: k.predicted_cycles)


def _max_ways(chip: Chip, op: Opcode, dtype: DType, loads: int, rows: int) -> int:
    """Ways that fit: stream groups for every load, an ALU each, slices on both sides, and a row each."""
    w, slices = dtype.width_bytes, chip.mem.slices_per_hemisphere
    groups = chip.streams.streams_per_direction // w
    return max(1, min(groups // loads, len(alus_for(chip, op)), slices // (loads * w), rows))


def _build(chip: Chip, op: Opcode, dtype: DType, operands: list[np.ndarray], imm, expr: str, name: str,
           ways: int) -> Kernel:
    b = ProgramBuilder(chip, name)
    m, n = operands[0].shape
    w, lanes = dtype.width_bytes, chip.lanes.lanes

    def tensor(t: str, h: Hemisphere, first_slice: int) -> Tensor:
        return Tensor(name=t, dtype=dtype, rows=m, cols=n,
                      placement=Placement(hemisphere=h, first_slice=first_slice, address=0, interleave=ways))

    inputs = [tensor(t, Hemisphere.W, i * ways * w) for i, t in enumerate(["x", "y"][: len(operands)])]
    z = tensor("z", Hemisphere.E, 0)
    b.tensors += [*inputs, z]
    for way, index in zip(range(ways), alus_for(chip, op)):
        refs = [group(chip, Direction.E, way * len(inputs) + i, dtype) for i in range(len(inputs))]
        for offset, count in _segments(m, ways, way, z.column_blocks(lanes)):
            loads = [Load(rows_of(t, lanes, way=way).skip(offset), ref) for t, ref in zip(inputs, refs)]

            def schedule(pb: ProgramBuilder, start: int, loads=loads, count=count, index=index) -> Flow:
                return alu(pb, index, op, dtype, count, list(loads), loads[0].ref, imm=imm, start=start)

            flow = schedule(b, earliest(chip, schedule) + offset)
            write(b, flow, rows_of(z, lanes, way=way).skip(offset), count)
    b.checks.append(Check(target="z", mode=CheckMode.EXACT, expr=expr))
    return Kernel(program=b.build(), predicted_cycles=b.predicted_cycles(),
                  inputs={t.name: np.asarray(v).astype(dtype.numpy) for t, v in zip(inputs, operands)},
                  assemble=lambda t: t["z"], fast=partial(_fast, op, dtype, imm))


def _fast(op: Opcode, dtype: DType, imm: float | int | None, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """What the ALUs compute, on the whole tensor at once (each element is independent of the others)."""
    if op in UNARY_EXPR:
        return nx.vxm_unary(op, inputs["x"], dtype)
    second = inputs["y"] if imm is None else immediate(imm, dtype)
    return nx.vxm_binary(op, inputs["x"], second, dtype)


def immediate(value: float | int, dtype: DType) -> np.ndarray:
    """An instruction's `imm` as the VXM reads it (`openlpu.sim.execute.Machine._imm`): rounded (floats) or
    wrapped (ints) to `dtype`."""
    return nx.narrow(np.array(value).astype(np.float64 if dtype.is_float else np.int64), dtype)


def _segments(rows: int, ways: int, way: int, blocks: int) -> list[tuple[int, int]]:
    """(address offset, rows) bursts of one way; issue cycles advance with addresses, one row per cycle. One
    burst covers every block when the way's rows fill each block's addresses, else one burst per block."""
    per_block, mine = math.ceil(rows / ways), len(range(way, rows, ways))
    if mine == per_block:
        return [(0, per_block * blocks)]
    return [(j * per_block, mine) for j in range(blocks)]
