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
from openlpu.isa.types import Direction, QueueId, Unit
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
    ids: dict[tuple[QueueId, int], int] = {}
    templates: list[Template] = []
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("t", "c", "k", "rd", "rs", "rp", "rc", "wd", "ws", "wp", "wc")}
    for issue in timeline.issues:
        key = (issue.queue, issue.index)
        if key not in ids:
            ids[key] = len(templates)
            templates.append(_template(chip, geo, issue.queue, issue.index, issue.instruction))
        _append(parts, ids[key], templates[ids[key]], issue.cycles, issue.ks)
    cat = {k: (np.concatenate(v) if v else np.zeros(0, np.int64)) for k, v in parts.items()}
    n_in = np.array([len(t.reads) for t in templates], dtype=np.int64)[cat["t"]] if templates else cat["t"]
    n_out = np.array([len(t.writes) for t in templates], dtype=np.int64)[cat["t"]] if templates else cat["t"]
    events_so_far = np.arange(len(cat["t"]))
    event_of = lambda counts: np.repeat(events_so_far, counts)  # noqa: E731
    reads = Accesses(cat["rd"], cat["rs"], cat["rp"], cat["rc"], event_of(n_in))
    writes = Accesses(cat["wd"], cat["ws"], cat["wp"], cat["wc"], event_of(n_out))
    return Events(
        templates, cat["t"], cat["c"], cat["k"],
        np.concatenate([[0], np.cumsum(n_in)[:-1]]).astype(np.int64) if len(n_in) else n_in,
        np.concatenate([[0], np.cumsum(n_out)[:-1]]).astype(np.int64) if len(n_out) else n_out,
        reads, writes,
    )


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


def _append(parts: dict[str, list[np.ndarray]], tid: int, t: Template, cycles: np.ndarray, ks: np.ndarray) -> None:
    n = len(cycles)
    parts["t"].append(np.full(n, tid, dtype=np.int64))
    parts["c"].append(cycles.astype(np.int64))
    parts["k"].append(ks.astype(np.int64))
    for prefix, accesses, shift in (("r", t.reads, 0), ("w", t.writes, t.latency)):
        m = len(accesses)
        if not m:
            continue
        dirs = np.array([0 if d is Direction.E else 1 for d, _ in accesses], dtype=np.int64)
        streams = np.array([s for _, s in accesses], dtype=np.int64)
        parts[prefix + "d"].append(np.tile(dirs, n))
        parts[prefix + "s"].append(np.tile(streams, n))
        parts[prefix + "p"].append(np.full(n * m, t.position, dtype=np.int64))
        parts[prefix + "c"].append(np.repeat(cycles.astype(np.int64) + shift, m))


def is_unit(t: Template, unit: Unit) -> bool:
    return t.queue.unit is unit
