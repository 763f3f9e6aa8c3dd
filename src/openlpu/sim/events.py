"""The event table: every issued instruction instance as a row of parallel arrays, plus its stream accesses.

Built from the issue timeline one burst at a time (a Python step per burst, NumPy per event), so a Repeat of
thousands of reads costs one step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Geometry
from openlpu.isa.instruction import Instruction
from openlpu.isa.types import Direction, QueueId
from openlpu.sim import semantics
from openlpu.sim.streams import Accesses
from openlpu.sim.timing import Timeline


@dataclass(frozen=True, slots=True)
class Template:
    """One instruction of one queue; all its repeats are events of this template."""

    queue: QueueId
    index: int
    instruction: Instruction
    position: int
    latency: int
    reads: tuple[tuple[Direction, int], ...]
    writes: tuple[tuple[Direction, int], ...]
    step: int


@dataclass
class Events:
    templates: list[Template]
    template: np.ndarray  # per event: template id
    cycle: np.ndarray  # issue cycle
    k: np.ndarray  # repeat counter (0 for the first issue)
    read_base: np.ndarray  # first index of this event's reads in `reads`
    write_base: np.ndarray  # first index of this event's writes in `writes`
    reads: Accesses = field(repr=False)
    writes: Accesses = field(repr=False)

    def __len__(self) -> int:
        return len(self.cycle)

    def operand(self, name: str) -> np.ndarray:
        """Per-event value of an advancing operand (addr, row, slot): base + k * step; -1 where absent."""
        base = np.array([_or(getattr(t.instruction, name), -1) for t in self.templates], dtype=np.int64)
        step = np.array([t.step for t in self.templates], dtype=np.int64)
        return base[self.template] + self.k * step[self.template]


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def build(timeline: Timeline, chip: Chip) -> Events:
    geo = Geometry.of(chip)
    cache: dict[tuple, Template] = {}  # most instructions differ from others on their queue only in addresses
    ids: dict[tuple[QueueId, int], int] = {}
    templates: list[Template] = []
    bursts = []  # per issue: template, first cycle, count, interval, first k
    for issue in timeline.issues:
        key = (issue.queue, issue.index)
        if key not in ids:
            ids[key] = len(templates)
            templates.append(_cached(cache, chip, geo, issue.queue, issue.index, issue.instruction))
        bursts.append((ids[key], issue.first, issue.count, issue.interval, issue.k0))
    if not templates:
        empty = np.zeros(0, np.int64)
        none = Accesses(empty, empty, empty, empty, empty)
        return Events(templates, empty, empty, empty, empty, empty, none, none)
    ids_, firsts, counts, intervals, k0s = np.array(bursts, dtype=np.int64).T
    burst, offset = expand(counts)
    template = ids_[burst]
    cycle = firsts[burst] + intervals[burst] * offset
    k = k0s[burst] + offset
    reads, read_base = _accesses(templates, template, cycle, lambda t: t.reads, lambda t: 0)
    writes, write_base = _accesses(templates, template, cycle, lambda t: t.writes, lambda t: t.latency)
    return Events(templates, template, cycle, k, read_base, write_base, reads, writes)


def expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(burst index, j within the burst) of every issue of bursts issued `counts` times each, in order."""
    burst = np.repeat(np.arange(len(counts)), counts)
    return burst, np.arange(len(burst)) - np.repeat(np.cumsum(counts) - counts, counts)


def _accesses(templates, template, cycle, pick, shift) -> tuple[Accesses, np.ndarray]:
    """Expand every event's stream accesses (per-template lists) into flat arrays, event-major, in one go."""
    counts = np.array([len(pick(t)) for t in templates], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    flat = [a for t in templates for a in pick(t)]
    dirs = np.array([0 if d is Direction.E else 1 for d, _ in flat], dtype=np.int64)
    streams = np.array([s for _, s in flat], dtype=np.int64)
    position = np.array([t.position for t in templates], dtype=np.int64)
    delay = np.array([shift(t) for t in templates], dtype=np.int64)
    per_event = counts[template]
    base = np.concatenate([[0], np.cumsum(per_event)[:-1]]).astype(np.int64)
    event = np.repeat(np.arange(len(template)), per_event)
    j = np.arange(len(event)) - base[event]
    tmpl = template[event]
    item = offsets[tmpl] + j
    return Accesses(dirs[item], streams[item], position[tmpl], cycle[event] + delay[tmpl], event), base


def template_key(q: QueueId, ins: Instruction) -> tuple:
    """What an instruction's position, latency, stream accesses and Repeat step depend on: its queue, opcode,
    types, stream operands, `n` and stride (not its address, row, slot, immediate or lane arguments)."""
    return q, ins.op, ins.dtype, ins.to, ins.a, ins.b, ins.c, ins.out, ins.map, ins.n, ins.stride


def _cached(cache: dict, chip: Chip, geo: Geometry, q: QueueId, index: int, ins: Instruction) -> Template:
    """`_template`, its parts looked up by `template_key`."""
    key = template_key(q, ins)
    t = cache.get(key)
    if t is None:
        t = cache[key] = _template(chip, geo, q, index, ins)
    return Template(q, index, ins, t.position, t.latency, t.reads, t.writes, t.step)


def _template(chip: Chip, geo: Geometry, q: QueueId, index: int, ins: Instruction) -> Template:
    return Template(
        queue=q,
        index=index,
        instruction=ins,
        position=semantics.position(geo, chip, q),
        latency=semantics.latency(chip, ins.op),
        reads=tuple(semantics.stream_reads(chip, q, ins)),
        writes=tuple(semantics.stream_writes(ins)),
        step=semantics.advance_step(chip, ins),
    )
