"""Lane mixing: y = sum_i m_i * rotate(x, r_i), the SXM's lane rotations weighted by rows, in one train.

Lanes only move through the SXM. RoPE's rotate_half and grouped-query attention's sharing of a KV head by several
query heads are both a few lane rotations, each kept on some lanes and dropped on the others:

    rope(x)   = x * cos + rotate(x, -dh/2) * sin_neg + rotate(x, +dh/2) * sin_pos    (sin_neg: -sin on each head's
                                                                                     first half, sin_pos: +sin on
                                                                                     its second, 0 elsewhere)
    expand(k) = sum over the distinct shifts r of mask_r * rotate(k, r)              (mask_r: 1 on the lanes whose
                                                                                     head is r lanes from its KV head)

`emit_lane_mix` streams the vectors of x (one per cycle) out to the SXM of their hemisphere, where up to four
queues rotate the same train at once (PERMUTE: out[(l + r) mod lanes] = in[l]); the rotated trains come back past
the MEM slices — where each term's row vector is read onto a stream beside it — to the VXM, multiply there on the
first ALU rank, and add pairwise on the next ranks (an odd one copied along to stay in step) into the other
hemisphere:

    x (west) --W--> SXM_W --E--> rank 0: r_i * m_i --> rank 1: + --> rank 2: + --> y (east)

and mirrored for an east x. A term's rows: any view with as many vectors as x's (a broadcast row, a row per
position, a block repeated), each on its own slices (they are read in the same cycles). x may sit on a term's
slices: it is read a round trip earlier, and a train longer than that round trip runs in waves. Numerics: every
product and sum is one fp32 VXM operation, in the order above
(((t0 + t1) + (t2 + t3)), ((t0 + t1) + t2)), which `fast_lane_mix` repeats.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from openlpu.errors import ProgramError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import Opcode
from openlpu.isa.program import Placement, Tensor
from openlpu.isa.types import Direction, DType, QueueId, StreamRef, Unit
from openlpu.kernels.builder import ProgramBuilder, vxm_queue
from openlpu.kernels.elementwise import Flow, alu
from openlpu.kernels.kernel import Kernel
from openlpu.kernels.vectors import View, far_read, read_view, toward, write_view
from openlpu.sim import numerics as nx
from openlpu.sim import semantics

F32 = DType.FP32
MAX_TERMS = 4  # one multiply per ALU of the first rank
W, E = Hemisphere.W, Hemisphere.E


@dataclass(frozen=True, slots=True)
class Term:
    """One rotation of x and the rows that weight it."""

    rotate: int
    rows: View


def emit_lane_mix(b: ProgramBuilder, x: View, terms: list[Term], out: View, start: int = 0) -> int:
    """Schedule out = sum_i terms[i].rows * rotate(x, terms[i].rotate) on placed fp32 views, no instruction before
    `start`; returns the first cycle after every result has landed. x and the terms' rows sit in one hemisphere,
    out in the other. The terms' rows are read in the same cycles, so they must sit on different slices; x may
    share theirs: x is read a round trip to the SXM before them, and a train longer than that round trip is cut
    into waves that run one after another (`_wave`)."""
    _check(b.chip, x, terms, out)
    mark, wave = b.mark(), _wave(b, x, terms)
    for k0 in range(0, x.count, wave):
        start = _emit_wave(b, x, terms, out, (k0, min(x.count, k0 + wave)), start)
    return b.done_since(mark)


def _wave(b: ProgramBuilder, x: View, terms: list[Term]) -> int:
    """The most vectors of x one train may carry: all of them, unless x shares a slice with some term's rows;
    then as many as are read from that slice before the rows' reads reach it (2 hops to the SXM and back per
    slice between them, and the rotation)."""
    shared = _slices(x) & set().union(*(_slices(t.rows) for t in terms))
    if not shared:
        return x.count
    sxm = b.geo.sxm(x.hemisphere)
    permute = semantics.latency(b.chip, Opcode.PERMUTE)
    return min(permute + 2 * abs(b.geo.mem(x.hemisphere, s) - sxm) for s in shared)


def _slices(v: View) -> set[int]:
    ways = min(v.tensor.placement.interleave, v.tensor.rows)
    return {v.slice_of(way, byte) for way in range(ways) for byte in range(v.dtype.width_bytes)}


def _emit_wave(b: ProgramBuilder, x: View, terms: list[Term], out: View, part: tuple[int, int], start: int) -> int:
    """Vectors part[0] .. part[1] - 1 of the lane mix, from `start`; returns when their results have landed."""
    h, lanes, count = x.hemisphere, b.chip.lanes.lanes, part[1] - part[0]
    outward = Direction.W if h is W else Direction.E  # toward this hemisphere's SXM
    back = toward(h)
    sxm = b.geo.sxm(h)
    ranks = range(b.chip.vxm.ranks) if h is W else range(b.chip.vxm.ranks - 1, -1, -1)
    arrive = start + far_read(b, [x], sxm)
    read_view(b, x, StreamRef(outward, 0), sxm, arrive, part)
    flows = []
    for i, term in enumerate(terms):
        ref = StreamRef(back, 4 * i)
        b.place(QueueId(Unit.SXM, h, i), arrive, Instruction(op=Opcode.PERMUTE, dtype=F32, a=StreamRef(outward, 0),
                                                             out=ref, rotate=term.rotate % lanes), count)
        rotated = Flow.written(ref, F32, sxm, arrive + semantics.latency(b.chip, Opcode.PERMUTE))
        flows.append(_weigh(b, 4 * i + ranks[0], rotated, term.rows, StreamRef(back, 16 + 4 * i), part))
    for rank in ranks[1:]:
        if len(flows) == 1:
            break
        alus = [4 * j + rank for j in range(4)]
        pairs = [alu(b, alus[j // 2], Opcode.ADD, F32, count, flows[j:j + 2], flows[j].ref)
                 for j in range(0, len(flows) - 1, 2)]
        if len(flows) % 2:
            pairs.append(alu(b, alus[-1], Opcode.COPY, F32, count, [flows[-1]], flows[-1].ref))
        flows = pairs
    return write_view(b, flows[0].ref, flows[0].diagonal, out, part)


def _weigh(b: ProgramBuilder, index: int, rotated: Flow, rows: View, ref: StreamRef, part: tuple[int, int]
           ) -> Flow:
    """rotated * rows on ALU `index`, the rows (vectors `part` of the view) read to arrive with the rotated
    train."""
    here = b.position(vxm_queue(index))
    issue = rotated.at(here)
    read_view(b, rows, ref, here, issue, part)
    b.place(vxm_queue(index), issue, Instruction(op=Opcode.MUL, dtype=F32, a=rotated.ref, b=ref, out=rotated.ref),
            part[1] - part[0])
    return Flow.written(rotated.ref, F32, here, issue + semantics.latency(b.chip, Opcode.MUL))


def _check(chip: Chip, x: View, terms: list[Term], out: View) -> None:
    where = f"lane mix -> {out.tensor.name}"
    if not 1 <= len(terms) <= MAX_TERMS:
        raise ProgramError(f"{where}: give 1 to {MAX_TERMS} terms (one multiply per ALU of a rank), not {len(terms)}")
    views = [x, out, *(t.rows for t in terms)]
    if any(v.dtype is not F32 for v in views):
        raise ProgramError(f"{where}: x, the terms' rows and the output must all be fp32")
    if any(t.rows.hemisphere is not x.hemisphere for t in terms) or out.hemisphere is x.hemisphere:
        raise ProgramError(f"{where}: x and the terms' rows must share a hemisphere and the output sit in the other")
    if any(v.count != x.count for v in views):
        raise ProgramError(f"{where}: x carries {x.count} vectors; the terms' rows and the output carry "
                           f"{[t.rows.count for t in terms]} and {out.count}")


def fast_lane_mix(x: np.ndarray, terms: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """What `emit_lane_mix` computes on vectors x [count, lanes] and each term's rows [count, lanes]."""
    flows = [nx.vxm_binary(Opcode.MUL, np.roll(x, r, axis=-1), m, F32) for r, m in terms]
    while len(flows) > 1:
        pairs = [nx.vxm_binary(Opcode.ADD, flows[j], flows[j + 1], F32) for j in range(0, len(flows) - 1, 2)]
        flows = pairs + flows[len(pairs) * 2:]
    return flows[0]


def lane_mix(chip: Chip, x: np.ndarray, terms: list[tuple[int, np.ndarray]], *, source: Hemisphere = W,
             share: int = 0, name: str = "lane_mix") -> Kernel:
    """A standalone program: y = sum_i m_i * rotate(x, r_i) for fp32 x [M, N] and each m_i [M, N] (N a multiple
    of the lanes), x and the m_i in `source`, y in the other hemisphere; x on the slices of m_{share - 1} (at
    other addresses) when `share` > 0."""
    x = np.asarray(x, np.float32)
    lanes = chip.lanes.lanes
    if x.ndim != 2 or x.shape[1] % lanes or any(np.shape(m) != x.shape for _, m in terms):
        raise ProgramError(f"{name}: needs x [M, a multiple of {lanes}] and term rows of x's shape")
    b = ProgramBuilder(chip, name)

    def tensor(t: str, h: Hemisphere, first_slice: int) -> Tensor:
        return Tensor(name=t, dtype=F32, rows=x.shape[0], cols=x.shape[1],
                      placement=Placement(hemisphere=h, first_slice=first_slice, address=0))

    tx, ty = tensor("x", source, 4 * share), tensor("y", E if source is W else W, 0)
    tms = [tensor(f"m{i}", source, 4 * (i + 1)) for i in range(len(terms))]
    if share:
        tx = replace(tx, placement=replace(tx.placement, address=x.shape[0] * (x.shape[1] // lanes)))
    b.tensors += [tx, ty, *tms]
    emit_lane_mix(b, View.of(tx, lanes), [Term(r, View.of(t, lanes)) for (r, _), t in zip(terms, tms)],
                  View.of(ty, lanes))
    inputs = {"x": x, **{f"m{i}": np.asarray(m, np.float32) for i, (_, m) in enumerate(terms)}}

    def vectors(a: np.ndarray) -> np.ndarray:
        return a.reshape(a.shape[0], -1, lanes)  # lanes last: each vector rotates on its own

    def fast(i: dict[str, np.ndarray]) -> np.ndarray:
        mixed = fast_lane_mix(vectors(i["x"]), [(r, vectors(i[f"m{j}"])) for j, (r, _) in enumerate(terms)])
        return mixed.reshape(i["x"].shape)

    return Kernel(program=b.build(), predicted_cycles=b.predicted_cycles(), inputs=inputs,
                  assemble=lambda t: t["y"], fast=fast)
