"""The chip-level program of one chip, before placement: tensors with a hemisphere and a role, and a sequence of
operations each of which one emitter in `openlpu.kernels` schedules.

Every tensor is [rows, cols] with cols a whole number of 320-lane column blocks (the compiler pads explicitly,
so the padding lanes are part of the tensor and the fast path sees exactly what the SRAM holds). A `Ref` picks
vectors of a tensor in the order a train carries them (see `openlpu.kernels.vectors.View`).

Operations:
    Vxm      out = op(ins...) elementwise on one ALU; inputs in either hemisphere, output in the other
    Chain    Vxm steps in one pass through the ALU ranks: a step's result flows on a stream to the steps that
             read it, one rank on; only its non-STREAM results are written to SRAM (independent steps may
             flow opposite ways, each toward the hemisphere its result is written in)
    Matmul   c = a @ w on the MXM of their hemisphere (fp16 in, fp32 out; int8 in, int32 out), skipping the
             tiles of a constant w that are all zero
    Pair     two matmuls side by side, one on each hemisphere's MXM (they share no unit, slice or stream segment)
    RmsNorm  y = rmsnorm(x, w) over the first n columns (x, w west; y east)
    InvRms   y = rsqrt(mean(x^2) + eps) per row of x over its first n columns, in every lane (x west; y east):
             RmsNorm's first pass, for a norm whose scaling the compiler moves past the next matmul
    TokenScale  y = max(max|x|, floor) / 127 per row of x, in every lane (x west; y east): int8 activations
    LaneMix  out = sum_i m_i * rotate(x, r_i): lane rotations through the SXM, weighted by rows (RoPE, KV heads)
    Scatter  row index[0] of `dst` (block by block) = src; dst in the other hemisphere
    Send     the vectors of `src` over the east link to the next chip
    Receive  the vectors the previous chip sent, into `dst`

The text form (`str(graph)`) lists tensors and operations, one per line, for `openlpu compile --dump`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.opcodes import Opcode
from openlpu.isa.types import DType


class Role(enum.Enum):
    WEIGHT = "weight"  # loaded once, read-only (MXM layout)
    CONST = "const"  # loaded once, read-only (masks, norm weights, constant rows)
    INPUT = "input"  # written by the host before every step (embedding row, RoPE rows, position)
    STATE = "state"  # kept in SRAM from step to step (KV cache)
    ACT = "act"  # lives from the operation that writes it to its last reader
    OUTPUT = "output"  # read by the host after the step (logits)
    STREAM = "stream"  # flows on a stream from one step of a Chain to the next; never in SRAM


@dataclass(frozen=True, slots=True)
class TensorDef:
    name: str
    dtype: DType
    rows: int
    cols: int
    hemisphere: Hemisphere
    role: Role
    interleave: int = 1

    @property
    def blocks(self) -> int:
        return self.cols // 320

    def __str__(self) -> str:
        il = f" interleave={self.interleave}" if self.interleave != 1 else ""
        shape = f"{self.dtype.value}[{self.rows}x{self.cols}]"
        return f"{self.role.value:6} {self.name} {shape} {self.hemisphere.value}{il}"


@dataclass(frozen=True, slots=True)
class Ref:
    """Vectors of tensor `name`: blocks block0 + j * block_step (blocks None: all blocks; block_step 0: one
    block repeated `blocks` times), in each rows row0 + i * step (rows None: all rows; step 0: one row repeated
    `rows` times)."""

    name: str
    block0: int = 0
    blocks: int | None = None
    row0: int = 0
    rows: int | None = None
    step: int = 1
    block_step: int = 1

    def __str__(self) -> str:
        parts = [self.name]
        if self.block_step != 1:
            parts.append(f"[b{self.block0}+{self.block_step}*{self.blocks}]")
        elif self.block0 or self.blocks is not None:
            parts.append(f"[b{self.block0}:{'' if self.blocks is None else self.block0 + self.blocks}]")
        if self.row0 or self.rows is not None or self.step != 1:
            parts.append(f"[r{self.row0}+{self.step}*{self.rows}]")
        return "".join(parts)


@dataclass(frozen=True, slots=True)
class Vxm:
    op: Opcode
    dtype: DType
    ins: tuple[Ref, ...]
    out: Ref
    imm: float | None = None
    to: DType | None = None

    def reads(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.ins)

    def writes(self) -> tuple[str, ...]:
        return (self.out.name,)

    def __str__(self) -> str:
        extra = (f" imm={self.imm!r}" if self.imm is not None else "") + (f" to={self.to.value}" if self.to else "")
        return f"vxm.{self.op.value} {self.dtype.value} {self.out} <- {', '.join(map(str, self.ins))}{extra}"


@dataclass(frozen=True, slots=True)
class Chain:
    """VXM steps streamed through the ALU ranks in one pass: a step reads SRAM tensors and the results of earlier
    steps (whole, in the order they flow), and its result is written to SRAM unless its tensor is a STREAM one."""

    steps: tuple[Vxm, ...]

    def reads(self) -> tuple[str, ...]:
        made = {s.out.name for s in self.steps}
        return tuple(dict.fromkeys(r.name for s in self.steps for r in s.ins if r.name not in made))

    def writes(self) -> tuple[str, ...]:
        return tuple(s.out.name for s in self.steps)

    def __str__(self) -> str:
        return "chain { " + " ; ".join(map(str, self.steps)) + " }"


@dataclass(frozen=True, slots=True)
class Matmul:
    a: str
    w: str
    c: str
    skip: frozenset[tuple[int, int]] = frozenset()  # (K tile, N tile) pairs of w that are all zero: skipped

    def reads(self) -> tuple[str, ...]:
        return (self.a, self.w)

    def writes(self) -> tuple[str, ...]:
        return (self.c,)

    def __str__(self) -> str:
        skip = f" skip={sorted(self.skip)}" if self.skip else ""
        return f"matmul {self.c} <- {self.a} @ {self.w}{skip}"


@dataclass(frozen=True, slots=True)
class Pair:
    """Two independent matmuls that start together, one on each hemisphere's MXM: each reads and writes only
    its own hemisphere's slices and streams, so neither waits for the other."""

    west: Matmul
    east: Matmul

    def reads(self) -> tuple[str, ...]:
        return (*self.west.reads(), *self.east.reads())

    def writes(self) -> tuple[str, ...]:
        return (*self.west.writes(), *self.east.writes())

    def __str__(self) -> str:
        return f"pair {{ {self.west} | {self.east} }}"


@dataclass(frozen=True, slots=True)
class RmsNorm:
    x: str
    w: str
    y: str
    n: int
    eps: float

    @property
    def scratch(self) -> tuple[str, str, str]:
        return (f"{self.y}_inv", f"{self.y}_p0", f"{self.y}_p1")

    def reads(self) -> tuple[str, ...]:
        return (self.x, self.w)

    def writes(self) -> tuple[str, ...]:
        return (self.y, *self.scratch)

    def __str__(self) -> str:
        return f"rmsnorm {self.y} <- {self.x}, {self.w} n={self.n} eps={self.eps!r}"


@dataclass(frozen=True, slots=True)
class InvRms:
    x: str
    y: str
    n: int
    eps: float

    @property
    def scratch(self) -> tuple[str, str]:
        return (f"{self.y}_p0", f"{self.y}_p1")

    def reads(self) -> tuple[str, ...]:
        return (self.x,)

    def writes(self) -> tuple[str, ...]:
        return (self.y, *self.scratch)

    def __str__(self) -> str:
        return f"inv_rms {self.y} <- {self.x} n={self.n} eps={self.eps!r}"


@dataclass(frozen=True, slots=True)
class TokenScale:
    x: str
    y: str

    @property
    def scratch(self) -> tuple[str, str]:
        return (f"{self.y}_p0", f"{self.y}_p1")

    def reads(self) -> tuple[str, ...]:
        return (self.x,)

    def writes(self) -> tuple[str, ...]:
        return (self.y, *self.scratch)

    def __str__(self) -> str:
        return f"token_scale {self.y} <- {self.x}"


@dataclass(frozen=True, slots=True)
class LaneMix:
    x: Ref
    terms: tuple[tuple[int, Ref], ...]  # (rotation in lanes, the rows that weight it)
    out: Ref

    def reads(self) -> tuple[str, ...]:
        return (self.x.name, *(m.name for _, m in self.terms))

    def writes(self) -> tuple[str, ...]:
        return (self.out.name,)

    def __str__(self) -> str:
        return f"lane_mix {self.out} <- " + " + ".join(f"rot({self.x}, {r}) * {m}" for r, m in self.terms)


@dataclass(frozen=True, slots=True)
class Scatter:
    src: Ref
    dst: str
    index: str

    def reads(self) -> tuple[str, ...]:
        return (self.src.name, self.index, self.dst)

    def writes(self) -> tuple[str, ...]:
        return (self.dst,)

    def __str__(self) -> str:
        return f"scatter {self.dst}[{self.index}] <- {self.src}"


@dataclass(frozen=True, slots=True)
class Send:
    src: str

    def reads(self) -> tuple[str, ...]:
        return (self.src,)

    def writes(self) -> tuple[str, ...]:
        return ()

    def __str__(self) -> str:
        return f"send {self.src}"


@dataclass(frozen=True, slots=True)
class Receive:
    dst: str

    def reads(self) -> tuple[str, ...]:
        return ()

    def writes(self) -> tuple[str, ...]:
        return (self.dst,)

    def __str__(self) -> str:
        return f"receive {self.dst}"


Operation = Vxm | Chain | Matmul | Pair | RmsNorm | InvRms | TokenScale | LaneMix | Scatter | Send | Receive


@dataclass(frozen=True)
class ChipGraph:
    """One chip's share of the model: its layers, tensors, operations in order, and the contents of every
    weight, constant and initial state."""

    index: int
    layers: range
    tensors: dict[str, TensorDef]
    ops: tuple[Operation, ...]
    data: dict[str, np.ndarray] = field(repr=False)

    def by_role(self, *roles: Role) -> list[TensorDef]:
        return [t for t in self.tensors.values() if t.role in roles]

    def __str__(self) -> str:
        head = f"chip {self.index}: layers {self.layers.start}..{self.layers.stop - 1}"
        return "\n".join([head, *(f"  {t}" for t in self.tensors.values()), *(f"  {op}" for op in self.ops)])
