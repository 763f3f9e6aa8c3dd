"""Which stream write every stream read sees, and the stream conflicts a compiler can cause.

A value written at position p in cycle T on an eastward stream is at position q > p in cycle T + (q - p) (westward:
q < p, T + (p - q)), until a slice downstream overwrites that stream. So a write and a read meet exactly when they
lie on the same diagonal: `cycle - position` eastward, `cycle + position` westward. A read at position q sees the
nearest write upstream of q on its diagonal. Streams carry no tags and nothing reacts, so the simulator reports:

- two writes to one stream at one position in one cycle (two producers);
- a read of a stream position that holds no value;
- a value overwritten downstream before any instruction read it (a producer's work silently lost).

All of it is a few sorts and binary searches over every stream access: no per-cycle loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Accesses:
    """Stream accesses as parallel arrays: direction (0 = E, 1 = W), stream index, position, cycle, event."""

    direction: np.ndarray
    stream: np.ndarray
    position: np.ndarray
    cycle: np.ndarray
    event: np.ndarray


@dataclass(frozen=True, slots=True)
class Conflict:
    kind: str  # "two-writers", "no-value", "clobbered"
    first: int  # index into writes (or reads for "no-value")
    second: int  # index into writes, or -1


def _keys(a: Accesses, positions: int, cycle_offset: int) -> tuple[np.ndarray, np.ndarray]:
    east = a.direction == 0
    diagonal = np.where(east, a.cycle - a.position, a.cycle + a.position) + cycle_offset
    upstream = np.where(east, a.position, positions - a.position)  # grows downstream
    line = (a.direction.astype(np.int64) * 256 + a.stream) * (1 << 34) + diagonal  # chips have <= 256 streams
    return line, line * (2 * positions + 2) + upstream


def resolve(writes: Accesses, reads: Accesses, positions: int) -> tuple[np.ndarray, list[Conflict]]:
    """For each read, the index of the write it sees (-1 if none), and the conflicts found (earliest few of each
    kind)."""
    offset = positions + 1
    w_line, w_key = _keys(writes, positions, offset)
    r_line, r_key = _keys(reads, positions, offset)
    order = np.argsort(w_key, kind="stable")
    sorted_key = w_key[order]
    conflicts: list[Conflict] = []
    dup = np.flatnonzero(sorted_key[1:] == sorted_key[:-1])
    dup = dup[np.argsort(writes.cycle[order[dup]], kind="stable")]
    conflicts += [Conflict("two-writers", int(order[i]), int(order[i + 1])) for i in dup[:3]]
    slot = np.searchsorted(sorted_key, r_key, side="left") - 1
    valid = slot >= 0
    found = np.where(valid, order[np.maximum(slot, 0)], -1)
    valid &= w_line[np.maximum(found, 0)] == r_line
    found = np.where(valid, found, -1)
    empty = np.flatnonzero(~valid)
    empty = empty[np.argsort(reads.cycle[empty], kind="stable")]
    conflicts += [Conflict("no-value", int(i), -1) for i in empty[:3]]
    conflicts += _clobbered(found, order, w_line, writes.cycle)
    return found, conflicts


def _clobbered(found: np.ndarray, order: np.ndarray, w_line: np.ndarray, cycle: np.ndarray) -> list[Conflict]:
    """Writes followed downstream on their diagonal by another write, with no read in between."""
    reads_per_write = np.bincount(found[found >= 0], minlength=len(cycle))
    same_line_next = w_line[order[1:]] == w_line[order[:-1]]
    lost = np.flatnonzero(same_line_next & (reads_per_write[order[:-1]] == 0))
    lost = lost[np.argsort(cycle[order[lost]], kind="stable")]
    return [Conflict("clobbered", int(order[i]), int(order[i + 1])) for i in lost[:3]]
