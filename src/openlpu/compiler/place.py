"""SRAM placement: a slice range and an address range for every tensor of a chip graph.

Rules (what the emitters and the hardware need):
- MXM weights (interleave 16 for fp16, 32 for int8: one byte plane per weight stream) take the 32 slices
  nearest their hemisphere's MXM, stacked from address 0.
- Every other tensor takes one group of 4 slices (fp32 interleaved by 2: two groups): the first group, counted
  from the VXM, with room at some address, at the lowest such address (first fit keeps the other groups free
  for the tensors an operation must read alongside); KV caches try the weight band's slices first, then count
  from the band inward.
- Tensors one operation reads (or writes) together in one hemisphere sit on disjoint slices: a slice streams
  one vector per cycle. (A lane mix's x is read a round trip before its terms' rows: only the rows count.)
- An activation holds its addresses only from the operation that first touches it to the last one; weights,
  constants, inputs, state and outputs hold theirs for the whole program (liveness-based reuse).
A graph that does not fit raises DoesNotFitError naming the tensor and the hemisphere.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from openlpu.compiler.chipgraph import (
    Chain,
    ChipGraph,
    InvRms,
    LaneMix,
    Matmul,
    Pair,
    RmsNorm,
    Role,
    Scatter,
    TensorDef,
    TokenScale,
    Vxm,
)
from openlpu.errors import DoesNotFitError, InternalError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.program import Placement, Tensor

GROUP = 4  # slices per group: one fp32 vector's byte planes


class _Boxes:
    """The SRAM boxes taken in one hemisphere: slices [s0, s1) x addresses [lo, hi) from operation t0 to t1,
    as columns of one integer array (a compile places thousands of tensors, each against all of them)."""

    def __init__(self) -> None:
        self.rows, self.n = np.zeros((64, 6), np.int64), 0

    def add(self, slices: range, lo: int, hi: int, t0: int, t1: int) -> None:
        if self.n == len(self.rows):
            self.rows = np.concatenate([self.rows, np.zeros_like(self.rows)])
        self.rows[self.n] = (slices.start, slices.stop, lo, hi, t0, t1)
        self.n += 1

    def lowest(self, span: range, size: int, t0: int, t1: int) -> int:
        """The lowest address at which `size` addresses on `span` are free from operation t0 to t1: first fit
        among the boxes that share a slice and an operation with it, in address order."""
        s0, s1, lo, hi, b0, b1 = self.rows[:self.n].T
        near = (s0 < span.stop) & (span.start < s1) & (b0 <= t1) & (t0 <= b1)
        lo, hi = lo[near], hi[near]
        order = np.lexsort((hi, lo))
        lo, hi = lo[order], hi[order]
        at = np.maximum.accumulate(np.concatenate([[0], hi]))  # the first free address past boxes 0..k-1
        fits = np.flatnonzero(lo >= at[:-1] + size)
        return int(at[fits[0]] if len(fits) else at[-1])


def lifetimes(graph: ChipGraph) -> dict[str, tuple[int, int]]:
    """[first, last] operation index touching each tensor; the whole program for non-activations."""
    end = len(graph.ops)
    span: dict[str, tuple[int, int]] = {}
    for i, op in enumerate(graph.ops):
        for name in (*op.reads(), *op.writes()):
            a, _ = span.get(name, (i, i))
            span[name] = (a, i)
    return {name: (span.get(name, (0, 0)) if t.role is Role.ACT else (0, end)) for name, t in graph.tensors.items()}


def together(graph: ChipGraph) -> dict[str, set[str]]:
    """For each tensor, the tensors some operation streams at the same time in the same hemisphere."""
    pairs: dict[str, set[str]] = defaultdict(set)
    for op in graph.ops:
        if isinstance(op, Vxm):  # the output may share a hemisphere with an input
            groups = [{r.name for r in op.ins} | {op.out.name}]
        elif isinstance(op, Chain):  # everything it reads from and writes to SRAM, at once
            groups = [{n for n in (*op.reads(), *op.writes()) if graph.tensors[n].role is not Role.STREAM}]
        elif isinstance(op, Matmul):
            groups = [{op.a, op.w, op.c}]
        elif isinstance(op, Pair):  # each MXM's operands in its own hemisphere
            groups = [{m.a, m.w, m.c} for m in (op.west, op.east)]
        elif isinstance(op, Scatter):
            groups = [{op.src.name, op.index}]
        elif isinstance(op, RmsNorm):
            groups = [{op.x, op.w}, {op.y, *op.scratch}]
        elif isinstance(op, InvRms | TokenScale):
            groups = [{op.y, *op.scratch}]
        elif isinstance(op, LaneMix):  # x may share a term's slices: the emitter reads it in waves
            groups = [{m.name for _, m in op.terms}]
        else:
            groups = []
        for g in groups:
            for name in g:
                pairs[name] |= g - {name}
    return pairs


def _width(t: TensorDef) -> int:
    return t.dtype.width_bytes * min(t.interleave, t.rows)


def _vectors(t: TensorDef) -> int:
    """Addresses per slice: column blocks x rows per interleave group."""
    return t.blocks * -(-t.rows // t.interleave)


KEPT = (Role.WEIGHT, Role.CONST, Role.STATE)  # what another program on the same chips finds where it was


def place(graph: ChipGraph, chip: Chip, fixed: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Place every tensor of `graph`. `fixed`: the weights, constants and state of another program on the same
    chip (`kept`), which keep their places and whose SRAM no other tensor may take."""
    slices, depth = chip.mem.slices_per_hemisphere, chip.mem.addresses_per_slice
    band = chip.streams.streams_per_direction  # MXM weight slices
    life, near = lifetimes(graph), together(graph)
    boxes = {h: _Boxes() for h in Hemisphere}
    placed: dict[str, Tensor] = {}
    top = {h: 0 for h in Hemisphere}
    for t in (fixed or {}).values():  # the other program's weights, constants and state: taken, used here or not
        if t.name in graph.tensors:
            placed[t.name] = t
        h = t.placement.hemisphere
        used = t.addresses_used(chip.lanes.lanes)
        boxes[h].add(t.slices_used(), used.start, used.stop, 0, len(graph.ops))
        if t.placement.first_slice == slices - band:
            top[h] = max(top[h], used.stop)
    weights = [t for t in graph.tensors.values() if t.interleave * t.dtype.width_bytes == band
               and t.name not in placed]
    for t in weights:
        h, size = t.hemisphere, _vectors(t)
        if top[h] + size > depth:
            raise DoesNotFitError(f"chip {graph.index}: weight {t.name} ({size} addresses per slice) does not fit "
                                  f"the {band} weight slices of the {h.value} hemisphere: {top[h]} of {depth} "
                                  "addresses are taken; split the model over more chips")
        first = slices - band
        boxes[h].add(range(first, slices), top[h], top[h] + size, 0, len(graph.ops))
        placed[t.name] = _tensor(t, first, top[h])
        top[h] += size
    for t in graph.tensors.values():
        if t.name in placed or t.role is Role.STREAM:  # a chain's stream-only results take no SRAM
            continue
        h = t.hemisphere
        t0, t1 = life[t.name]
        avoid = {s for other in near.get(t.name, ()) if other in placed
                 and placed[other].placement.hemisphere is h for s in placed[other].slices_used()}
        best = None
        for first in _groups(t, slices, band):
            span = range(first, first + _width(t))
            if avoid.intersection(span):
                continue
            lo = boxes[h].lowest(span, _vectors(t), t0, t1)
            if lo + _vectors(t) <= depth:
                best = (first, lo)
                break
        if best is None:
            raise DoesNotFitError(f"chip {graph.index}: {t.role.value} tensor {t.name} ({_vectors(t)} addresses "
                                  f"on {_width(t)} slices) finds no room in the {h.value} hemisphere; compile a "
                                  "shorter context or split the model over more chips")
        boxes[h].add(range(best[0], best[0] + _width(t)), best[1], best[1] + _vectors(t), t0, t1)
        placed[t.name] = _tensor(t, *best)
    return placed


def _groups(t: TensorDef, slices: int, band: int) -> list[int]:
    """First slices of the groups to try for `t`, in order: from the VXM outward. A KV cache (state, large and
    held for the whole program) tries the weight band's slices first (above the weights, where a chip holds few
    blocks), then the other groups from the band inward: the groups next to the VXM keep room for the
    activations an operation streams side by side, and those a matmul writes (never on its weights' slices)."""
    starts = list(range(0, slices - _width(t) + 1, GROUP))
    if t.role is not Role.STATE:
        return starts
    below = [f for f in starts if f + _width(t) <= slices - band]
    return [f for f in starts if f not in below] + below[::-1]


def kept(graph: ChipGraph, placed: dict[str, Tensor]) -> dict[str, Tensor]:
    """The part of a placement that outlives a program: weights, constants and state."""
    return {n: t for n, t in placed.items() if graph.tensors[n].role in KEPT}


def _tensor(t: TensorDef, first_slice: int, address: int) -> Tensor:
    return Tensor(name=t.name, dtype=t.dtype, rows=t.rows, cols=t.cols,
                  placement=Placement(hemisphere=t.hemisphere, first_slice=first_slice, address=address,
                                      interleave=t.interleave))


def used_bytes(placed: dict[str, Tensor], chip: Chip) -> int:
    """SRAM the placement occupies: per slice, addresses up to the highest one any tensor uses, in bytes."""
    lanes = chip.lanes.lanes
    high: dict[tuple[Hemisphere, int], int] = defaultdict(int)
    for t in placed.values():
        for s in t.slices_used():
            key = (t.placement.hemisphere, s)
            high[key] = max(high[key], t.addresses_used(lanes).stop)
    return sum(high.values()) * lanes


def check(graph: ChipGraph, placed: dict[str, Tensor], chip: Chip) -> None:
    """The placement verifier: every tensor inside the SRAM, and no two tensors that are live at the same time
    share an address of a slice. Raises InternalError (a compiler bug) naming both."""
    lanes, life = chip.lanes.lanes, lifetimes(graph)
    missing = {n for n, t in graph.tensors.items() if t.role is not Role.STREAM} - set(placed)
    if missing:
        raise InternalError(f"chip {graph.index}: tensors {sorted(missing)[:3]} were not placed")
    items = [(t, t.slices_used(), t.addresses_used(lanes), life[n]) for n, t in placed.items()]
    for t, s, a, _ in items:
        if s.stop > chip.mem.slices_per_hemisphere or a.stop > chip.mem.addresses_per_slice:
            raise InternalError(f"chip {graph.index}: {t.name} falls outside the SRAM (slices {s}, addresses {a})")
    if not items:
        return
    items.sort(key=lambda x: (x[0].placement.hemisphere.value, x[2].start))
    # in that order: for each tensor, the later ones in its hemisphere that start below its end, all at once
    sides = sorted({t.placement.hemisphere.value for t, *_ in items})
    side = np.array([sides.index(t.placement.hemisphere.value) for t, *_ in items], np.int64)
    s0, s1, a0, a1, l0, l1 = (np.array(column, np.int64).reshape(-1) for column in zip(
        *((s.start, s.stop, a.start, a.stop, life[0], life[1]) for _, s, a, life in items)))
    key = side * (1 << 40) + a0  # ascending
    for i, (t, _, _, (t0, t1)) in enumerate(items):
        later = np.arange(i + 1, np.searchsorted(key, side[i] * (1 << 40) + a1[i]))
        clash = later[(s0[i] < s1[later]) & (s0[later] < s1[i]) & (t0 <= l1[later]) & (l0[later] <= t1)]
        if len(clash):
            u, (u0, u1) = items[clash[0]][0], items[clash[0]][3]
            raise InternalError(f"chip {graph.index}: {t.name} and {u.name} share SRAM while both are live "
                                f"(operations {max(t0, u0)}..{min(t1, u1)})")
