"""Overlap: how early an operation may start while the ones before it are still running.

The scheduler emits each operation as if it ran alone (from the cycle at which everything before it has landed),
then asks `Overlap.shift` how far earlier the whole operation can move. A shift is taken only if, at the shifted
cycles, every rule the simulator's verifier enforces still holds against what is already placed:

- SRAM, word by word: every read issues at or after the commit of the last write to its word (a consumer may
  read a row as soon as it is committed), no write commits before an earlier read of or write to its word, and no
  two accesses hit one bank of one slice in one cycle;
- queues: no two bursts of one queue overlap;
- streams: on every diagonal of every stream, the stretch of positions an operation uses (from where it writes a
  value to where it last reads it) meets no other operation's stretch, so every read still sees its own
  operation's value;
- units with state (an MXM's weight buffers and accumulators, the chip-to-chip links): an operation that uses
  one starts after the last operation that used it has finished. The VXM's ALUs and the SXM keep nothing between
  instructions, so their queues and streams are all there is to check.

Gather and Scatter (data-dependent addresses) and chip-to-chip transfers never move; a Scatter's slices count as
written in full. An operation may start before the one emitted before it, but never more than `HORIZON` cycles
before the cycle it was emitted at.

The search tries the most negative shift the SRAM words allow and steps forward past each conflict (a queue
conflict jumps to the end of the burst in the way); shift 0, the operation run alone, is always legal.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Geometry
from openlpu.isa.opcodes import Opcode
from openlpu.isa.types import Direction, QueueId, Unit
from openlpu.kernels.builder import ProgramBuilder
from openlpu.sim import hazards, semantics
from openlpu.sim.events import expand, template_key

NEVER = -(1 << 40)
SLICE_SPAN = 1 << 11  # more than a chip's MEM slices (at most 2 x 1024)
STATEFUL = (Unit.MXM, Unit.C2C)
HORIZON = 4096  # the most cycles an operation moves earlier
MAX_TRIES = 256  # conflicts stepped past before an operation simply runs alone
_WRITES = (hazards.OP_CODE[Opcode.WRITE], hazards.OP_CODE[Opcode.SCATTER])
_WIDE = (hazards.OP_CODE[Opcode.GATHER], hazards.OP_CODE[Opcode.SCATTER])
_SCATTER = hazards.OP_CODE[Opcode.SCATTER]


@dataclass(frozen=True)
class Footprint:
    """What one operation, emitted alone, touches and when (absolute cycles of that emission)."""

    read_word: np.ndarray  # SRAM reads: global word (slice * addresses + address) and issue cycle
    read_cycle: np.ndarray
    write_word: np.ndarray  # SRAM writes: word and commit cycle
    write_commit: np.ndarray
    bank_key: np.ndarray  # (cycle the bank is used, slice) as when * SLICE_SPAN + slice, sorted; the bank (-1: both)
    bank: np.ndarray
    queue: np.ndarray  # per burst: queue id, first and last issue cycle
    first: np.ndarray
    last: np.ndarray
    line: np.ndarray  # per stream diagonal used: its key (cycle-shiftable), lowest and highest position
    low: np.ndarray
    high: np.ndarray
    units: frozenset  # stateful (unit, hemisphere) used
    wide_slices: np.ndarray  # slices a Gather or Scatter touches
    fixed: bool  # never moves (Gather, Scatter)
    cycles: tuple[int, int]  # the first issue and the last cycle anything lands or flows


@dataclass
class Overlap:
    """What is already placed, as far as later operations can still run into it."""

    chip: Chip
    queue_ids: dict[QueueId, int] = field(default_factory=dict)
    commit: np.ndarray = field(init=False)
    last_read: np.ndarray = field(init=False)
    unit_done: dict = field(default_factory=dict)
    busy: dict = field(default_factory=dict)  # queue id -> ([first issue], [last issue]) of its bursts, in order
    parts: dict = field(default_factory=dict)  # `_Parts` by `template_key`
    live: list = field(default_factory=list)  # (done, shifted footprint) of operations that may still overlap

    def __post_init__(self) -> None:
        words = 2 * self.chip.mem.slices_per_hemisphere * self.chip.mem.addresses_per_slice
        self.commit = np.full(words, NEVER, np.int64)
        self.last_read = np.full(words, NEVER, np.int64)

    def place(self, b: ProgramBuilder, emit: Callable[[ProgramBuilder, int], int], start: int,
              movable: bool = True) -> tuple[int, int]:
        """Emit an operation alone from `start` (`emit(builder, start)` returns when it has landed), then add it
        to `b` as early as it can go; returns its (start, done) there."""
        pb = ProgramBuilder(b.chip, b.name, _positions=b._positions)
        done = emit(pb, start)
        fp = footprint(pb, self.chip, self.queue_ids, self.parts)
        d = self.shift(fp, start, movable)
        b.merge(pb, d)
        self.add(fp, start, done, d)
        return start + d, done + d

    def shift(self, fp: Footprint, start: int, movable: bool = True) -> int:
        """The most negative legal shift (<= 0) of an operation emitted alone from `start`."""
        if not movable or fp.fixed:
            return 0
        d = max(-HORIZON, -int(fp.first.min(initial=start)), _mem_bound(self, fp),
                max((self.unit_done.get(u, NEVER) - start for u in fp.units), default=NEVER))
        live = [f for done, f in self.live if done > start + d]
        for _ in range(MAX_TRIES):
            if d >= 0:
                return 0
            step = _queue_step(self.busy, fp, d)
            if step is None:
                step = _conflict(fp, live, d)
            if step is None:
                return d
            d = step
        return 0

    def add(self, fp: Footprint, start: int, done: int, d: int) -> None:
        """Record the operation emitted from `start` (landed by `done`) as placed `d` cycles earlier."""
        if len(fp.read_word):
            np.maximum.at(self.last_read, fp.read_word, fp.read_cycle + d)
        if len(fp.write_word):
            np.maximum.at(self.commit, fp.write_word, fp.write_commit + d)
        span = self.chip.mem.addresses_per_slice
        for s in fp.wide_slices:  # data-dependent addresses: the whole slice counts as read and written
            rows = slice(int(s) * span, (int(s) + 1) * span)
            self.commit[rows] = np.maximum(self.commit[rows], done + d)
            self.last_read[rows] = np.maximum(self.last_read[rows], done + d)
        for u in fp.units:
            self.unit_done[u] = done + d
        for q, a, b in zip(fp.queue.tolist(), (fp.first + d).tolist(), (fp.last + d).tolist()):
            firsts, lasts = self.busy.setdefault(q, ([], []))
            i = bisect.bisect(firsts, a)
            firsts.insert(i, a)
            lasts.insert(i, b)
        self.live = [(dn, f) for dn, f in self.live if dn > start - HORIZON] + [(done + d, _shifted(fp, d))]


@dataclass(frozen=True, slots=True)
class _Parts:
    """What every issue of one instruction on one queue touches, whatever its address: the MEM slice (-1: not a
    MEM queue) and access kind, how far Repeat advances the address, and its stream accesses as (line base,
    position offset, delay): the diagonal of an access at cycle c is c + delay + offset."""

    slice: int
    kind: int  # 0 no SRAM, 1 read, 2 write, 3 gather, 4 scatter
    step: int
    lines: tuple[tuple[int, int, int], ...]
    position: int


def _parts(chip: Chip, geo: Geometry, q: QueueId, ins) -> _Parts:
    position = semantics.position(geo, chip, q)
    east_off, west_off = -position + geo.positions + 1, position + geo.positions + 1
    latency = semantics.latency(chip, ins.op)
    lines = tuple(((0 if d is Direction.E else 1) * 256 + s << 34, east_off if d is Direction.E else west_off, delay)
                  for accesses, delay in ((semantics.stream_reads(chip, q, ins), 0),
                                          (semantics.stream_writes(ins), latency))
                  for d, s in accesses)
    code = hazards.OP_CODE[ins.op]
    kind = 0 if q.unit is not Unit.MEM else 4 if code == _SCATTER else 3 if code in _WIDE else 2 if code in _WRITES \
        else 1
    return _Parts(geo.global_slice(q.hemisphere, q.index) if q.unit is Unit.MEM else -1, kind,
                  semantics.advance_step(chip, ins), lines, position)


def footprint(pb: ProgramBuilder, chip: Chip, queue_ids: dict[QueueId, int], cache: dict) -> Footprint:
    """The footprint of what `pb` holds (one operation), from its bursts; `cache` keeps `_Parts` between calls."""
    geo = Geometry.of(chip)
    rows, parts = [], []
    for q, bursts in pb.bursts.items():
        qid = queue_ids.setdefault(q, len(queue_ids))
        for b in bursts:
            ins = b.instruction
            key = template_key(q, ins)
            p = cache.get(key)
            if p is None:
                p = cache[key] = _parts(chip, geo, q, ins)
            parts.append(p)
            rows.append((qid, b.cycle, b.count, b.interval, -1 if ins.addr is None else ins.addr, p.step, p.slice,
                         p.kind))
    if not rows:
        empty = np.zeros(0, np.int64)
        return Footprint(*[empty] * 12, frozenset(), empty, False, (0, 0))
    qid, c0, count, interval, addr0, step, slc, kind = np.array(rows, np.int64).T
    mem = _mem_events(c0, count, interval, addr0, step, slc, kind, chip)
    line, low, high = _lines(parts, c0, count, interval)
    return Footprint(
        *mem, queue=qid, first=c0, last=c0 + (count - 1) * interval, line=line, low=low, high=high,
        units=frozenset((q.unit, q.hemisphere) for q in pb.bursts if q.unit in STATEFUL),
        wide_slices=np.unique(slc[kind >= 3]), fixed=bool(np.any(kind >= 3)),
        cycles=(int(c0.min()), pb.done_since(0) + geo.positions),
    )


def _mem_events(c0, count, interval, addr0, step, slc, kind, chip: Chip) -> tuple[np.ndarray, ...]:
    """(read word, read cycle, write word, write commit, bank key, bank) of every SRAM access."""
    sel = np.flatnonzero(kind > 0)
    burst, k = expand(count[sel])
    burst = sel[burst]
    cycle, addr, kd, sl = c0[burst] + k * interval[burst], addr0[burst] + k * step[burst], kind[burst], slc[burst]
    word = sl * chip.mem.addresses_per_slice + addr
    r, w = kd == 1, kd == 2
    wl = chip.mem.write_latency_cycles
    when = np.where((kd == 2) | (kd == 4), cycle + wl, cycle)  # a bank is written when the write commits
    bank = np.where(kd >= 3, -1, addr % chip.mem.banks_per_slice)
    key = when * SLICE_SPAN + sl
    order = np.argsort(key, kind="stable")
    return word[r], cycle[r], word[w], cycle[w] + wl, key[order], bank[order]


def _lines(parts: list[_Parts], c0, count, interval) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every stream diagonal the operation uses, with the lowest and highest position it uses it at."""
    per = [(i, base, off + delay, p.position) for i, p in enumerate(parts) for base, off, delay in p.lines]
    if not per:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    burst, base, shift, position = np.array(per, np.int64).T
    idx, k = expand(count[burst])
    key = base[idx] + c0[burst][idx] + k * interval[burst][idx] + shift[idx]
    position = position[idx]
    order = np.lexsort((position, key))
    key, position = key[order], position[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)] - 1
    return key[starts], position[starts], position[ends]


def _mem_bound(o: Overlap, fp: Footprint) -> int:
    """The smallest shift at which every SRAM word the operation touches is in the state it expects."""
    d = NEVER
    if len(fp.read_word):
        d = max(d, int((o.commit[fp.read_word] - fp.read_cycle).max()))
    if len(fp.write_word):
        d = max(d, int((o.last_read[fp.write_word] - fp.write_commit).max()) + 1,
                int((o.commit[fp.write_word] - fp.write_commit).max()) + 1)
    return d


def _shifted(fp: Footprint, d: int) -> Footprint:
    return Footprint(fp.read_word, fp.read_cycle + d, fp.write_word, fp.write_commit + d, fp.bank_key + d * SLICE_SPAN,
                     fp.bank, fp.queue, fp.first + d, fp.last + d, fp.line + d, fp.low, fp.high, fp.units,
                     fp.wide_slices, fp.fixed, (fp.cycles[0] + d, fp.cycles[1] + d))


def _conflict(fp: Footprint, live: list[Footprint], d: int) -> int | None:
    """None if `fp` shifted by `d` meets no bank or stream stretch of what is placed, else the next shift to try."""
    lo, hi = fp.cycles[0] + d, fp.cycles[1] + d
    for other in live:
        if other.cycles[1] < lo or hi < other.cycles[0]:
            continue
        if _bank_clash(fp, other, d) or _line_clash(fp, other, d):
            return d + 1
    return None


def _queue_step(busy: dict, fp: Footprint, d: int) -> int | None:
    """If a burst, shifted by `d`, overlaps one already on its queue: the shift that puts it just past that one.
    A queue's bursts never overlap, so ordered by first issue they are ordered by last issue too."""
    step = None
    for q, a, b in zip(fp.queue.tolist(), fp.first.tolist(), fp.last.tolist()):
        if q not in busy:
            continue
        firsts, lasts = busy[q]
        i = bisect.bisect_right(firsts, b + d) - 1  # the last burst starting by this one's end
        if i >= 0 and lasts[i] >= a + d:
            step = max(step if step is not None else d, d + lasts[i] - (a + d) + 1)
    return step


def _bank_clash(fp: Footprint, other: Footprint, d: int) -> bool:
    if not len(fp.bank_key) or not len(other.bank_key):
        return False
    keys = fp.bank_key + d * SLICE_SPAN
    lo, hi = np.searchsorted(other.bank_key, keys, "left"), np.searchsorted(other.bank_key, keys, "right")
    for i in np.flatnonzero(hi > lo):
        banks = other.bank[lo[i]:hi[i]]
        if fp.bank[i] < 0 or np.any((banks < 0) | (banks == fp.bank[i])):
            return True
    return False


def _line_clash(fp: Footprint, other: Footprint, d: int) -> bool:
    if not len(fp.line) or not len(other.line):
        return False
    lines = fp.line + d
    lo, hi = np.searchsorted(other.line, lines, "left"), np.searchsorted(other.line, lines, "right")
    i = np.flatnonzero(hi > lo)  # one stretch per diagonal and operation, so hi - lo is 0 or 1
    j = lo[i]
    return bool(np.any((fp.low[i] <= other.high[j]) & (other.low[j] <= fp.high[i])))
