"""Row-level overlap: how early an operation may start while the ones before it are still running.

The scheduler emits each operation as if it ran alone (from the cycle at which everything before it has landed),
then asks `Overlap.shift` how far earlier the whole operation can move. A shift is taken only if, at the shifted
cycles, every rule the simulator's verifier enforces still holds against what is already placed:

- SRAM, word by word: every read issues at or after the commit of the last write to its word (so a consumer
  train may start while its producer is still writing later rows), no write commits before an earlier read of or
  write to its word, and no two accesses hit one bank of one slice in one cycle;
- queues: no two bursts of one queue overlap;
- streams: on every diagonal of every stream, the stretch of positions an operation uses (from where it writes a
  value to where it last reads it) meets no other operation's stretch, so every read still sees its own
  operation's value;
- units with state (an MXM's weight buffers and accumulators, the SXM, the chip-to-chip links): an operation
  that uses one starts after the last operation that used it has finished.

Gather and Scatter (data-dependent addresses) and chip-to-chip transfers never move; a Scatter's slices count as
written in full. Operations keep their order: none starts before the one before it.

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
from openlpu.isa.types import QueueId, Unit
from openlpu.kernels.builder import ProgramBuilder
from openlpu.sim import events as ev_mod
from openlpu.sim import hazards
from openlpu.sim.timing import Issue, Timeline

NEVER = -(1 << 40)
SLICE_SPAN = 1 << 11  # more than a chip's MEM slices (at most 2 x 1024)
STATEFUL = (Unit.MXM, Unit.SXM, Unit.C2C)
HORIZON = 4096  # the most cycles an operation moves earlier
MAX_TRIES = 256  # conflicts stepped past before an operation simply runs alone
_WRITES = (hazards.OP_CODE[Opcode.WRITE], hazards.OP_CODE[Opcode.SCATTER])
_WIDE = (hazards.OP_CODE[Opcode.GATHER], hazards.OP_CODE[Opcode.SCATTER])


@dataclass(frozen=True)
class Footprint:
    """What one operation, emitted alone, touches and when (absolute cycles of that emission)."""

    read_word: np.ndarray  # SRAM reads: global word (slice * addresses + address) and issue cycle
    read_cycle: np.ndarray
    write_word: np.ndarray  # SRAM writes: word and commit cycle
    write_commit: np.ndarray
    bank_key: np.ndarray  # (cycle the bank is used, slice) as when * SLICE_SPAN + slice, and the bank (-1: both)
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
    templates: dict = field(default_factory=dict)  # the event tables' templates, by (queue, instruction)
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
        fp = footprint(pb, self.chip, self.queue_ids, self.templates)
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


def footprint(pb: ProgramBuilder, chip: Chip, queue_ids: dict[QueueId, int], templates: dict | None = None
              ) -> Footprint:
    issues = [Issue(q, i, b.instruction, b.cycle, b.count, b.interval)
              for q, bs in pb.bursts.items() for i, b in enumerate(bs)]
    ev = ev_mod.build(Timeline(issues, {}, []), chip, templates)
    ops = np.array([hazards.OP_CODE[t.instruction.op] for t in ev.templates], np.int64)[ev.template]
    is_mem, slices, addr = hazards.mem_fields(ev, chip)
    word = slices * chip.mem.addresses_per_slice + addr
    is_write, is_wide = np.isin(ops, _WRITES), np.isin(ops, _WIDE)
    r, w = np.flatnonzero(is_mem & ~is_write & ~is_wide), np.flatnonzero(is_mem & is_write & ~is_wide)
    mem = np.flatnonzero(is_mem)
    when = ev.cycle[mem] + np.where(is_write[mem], chip.mem.write_latency_cycles, 0)
    bursts = [(q, b) for q, bs in pb.bursts.items() for b in bs]
    positions = Geometry.of(chip).positions
    line, low, high = _lines(ev, positions)
    return Footprint(
        read_word=word[r], read_cycle=ev.cycle[r],
        write_word=word[w], write_commit=ev.cycle[w] + chip.mem.write_latency_cycles,
        bank_key=when * SLICE_SPAN + slices[mem],
        bank=np.where(is_wide[mem], -1, addr[mem] % chip.mem.banks_per_slice),
        queue=np.array([queue_ids.setdefault(q, len(queue_ids)) for q, _ in bursts], np.int64),
        first=np.array([b.cycle for _, b in bursts], np.int64),
        last=np.array([b.last for _, b in bursts], np.int64),
        line=line, low=low, high=high,
        units=frozenset((q.unit, q.hemisphere) for q in pb.bursts if q.unit in STATEFUL),
        wide_slices=np.unique(slices[is_mem & is_wide]),
        fixed=bool(np.any(is_mem & is_wide)),
        cycles=(min(b.cycle for _, b in bursts), pb.done_since(0) + positions) if bursts else (0, 0),
    )


def _lines(ev, positions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every stream diagonal the operation uses, with the lowest and highest position it uses it at."""
    acc = [a for a in (ev.reads, ev.writes) if len(a.cycle)]
    if not acc:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    direction = np.concatenate([a.direction for a in acc])
    stream = np.concatenate([a.stream for a in acc])
    position = np.concatenate([a.position for a in acc])
    cycle = np.concatenate([a.cycle for a in acc])
    diagonal = np.where(direction == 0, cycle - position, cycle + position) + positions + 1
    key = (direction * 256 + stream) * (1 << 34) + diagonal
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
    order = np.argsort(other.bank_key, kind="stable")
    sk = other.bank_key[order]
    lo, hi = np.searchsorted(sk, keys, "left"), np.searchsorted(sk, keys, "right")
    for i in np.flatnonzero(hi > lo):
        banks = other.bank[order[lo[i]:hi[i]]]
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
