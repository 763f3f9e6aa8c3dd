"""Issue timing: when every instruction of every queue issues, with NOP, Repeat, Sync and Notify applied.

Each queue issues at most one instruction per cycle. `NOP n` idles n cycles; `Repeat n, d` re-issues the previous
instruction n more times, d cycles apart, advancing its address / row / slot (see `semantics.advance_step`); the
first re-issue comes d cycles after the previous issue, or when the queue reaches the Repeat if NOPs or a Sync
came between;
`Sync` parks the queue until a `Notify` issued at or after that cycle, and the queue resumes
`icu.notify_latency_cycles` after the Notify. Queues only meet at Sync/Notify, so between them each queue runs
free; a heap orders the meeting points. Cost: one Python step per instruction, never one per cycle.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import NamedTuple

from openlpu.errors import ProgramError, ScheduleError
from openlpu.hardware.chip import Chip
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import Opcode
from openlpu.isa.program import Program
from openlpu.isa.types import QueueId


class Issue(NamedTuple):
    """A burst: instruction `index` of queue `queue` issued `count` times, from cycle `first` every `interval`
    cycles, with repeat counters k0, k0 + 1, ..."""

    queue: QueueId
    index: int
    instruction: Instruction
    first: int
    count: int = 1
    interval: int = 1
    k0: int = 0


@dataclass(frozen=True, slots=True)
class Timeline:
    issues: list[Issue]
    queue_end_cycles: dict[QueueId, int]
    notify_cycles: list[int]


class _Walker:
    """Walks one queue's stream between meeting points, collecting bursts."""

    def __init__(self, queue: QueueId, instrs: tuple[Instruction, ...]) -> None:
        self.queue, self.instrs = queue, instrs
        self.pc, self.t = 0, 0
        self.last: tuple[int, Instruction, int, int] | None = None  # index, instruction, last cycle, last k
        self.issues: list[Issue] = []

    def run_until_meeting(self) -> Opcode | None:
        """Advance until the next Sync/Notify (returned, not yet executed) or the end (None)."""
        while self.pc < len(self.instrs):
            ins = self.instrs[self.pc]
            if ins.op in (Opcode.SYNC, Opcode.NOTIFY):
                return ins.op
            self._step(ins)
            self.pc += 1
        return None

    def _step(self, ins: Instruction) -> None:
        if ins.op is Opcode.NOP:
            self.t += ins.n
        elif ins.op is Opcode.REPEAT:
            self._repeat(ins)
        elif ins.op is Opcode.CONFIG:
            self.t += 1
        else:
            self.issues.append(Issue(self.queue, self.pc, ins, self.t))
            self.last = (self.pc, ins, self.t, 0)
            self.t += 1

    def _repeat(self, ins: Instruction) -> None:
        if self.last is None:
            raise ProgramError(
                f"{self.queue} instruction {self.pc} `repeat`: nothing to repeat; put it after the instruction "
                "it re-issues"
            )
        index, prev, t_last, k_last = self.last
        first = max(t_last + ins.d, self.t)  # never before the queue reaches the Repeat (after NOPs or a Sync)
        self.issues.append(Issue(self.queue, index, prev, first, ins.n, ins.d, k_last + 1))
        last = first + ins.d * (ins.n - 1)
        self.last = (index, prev, last, k_last + ins.n)
        self.t = last + 1


def expand(program: Program, chip: Chip) -> Timeline:
    """Issue cycles of every instruction; raises ScheduleError if a queue stays parked forever."""
    walkers = [_Walker(q, instrs) for q, instrs in program.queues]
    heap: list[tuple[int, int, int]] = []  # (cycle, 0 = sync / 1 = notify, walker)
    parked: list[int] = []
    notifies: list[int] = []
    for w_id, w in enumerate(walkers):
        _advance(w, w_id, heap)
    while heap:
        t, kind, w_id = heapq.heappop(heap)
        w = walkers[w_id]
        w.pc += 1
        if kind == 0:
            parked.append(w_id)
            continue
        notifies.append(t)
        w.t = t + 1
        for p in parked:
            walkers[p].t = t + chip.icu.notify_latency_cycles
            _advance(walkers[p], p, heap)
        parked = []
        _advance(w, w_id, heap)
    if parked:
        w = walkers[parked[0]]
        raise ScheduleError(
            f"{w.queue} instruction {w.pc - 1} `sync` at cycle {w.t}: the queue stays parked forever because no "
            "`notify` issues at or after that cycle; add a `notify` on some queue after it"
        )
    issues = [i for w in walkers for i in w.issues]
    return Timeline(issues, {w.queue: w.t for w in walkers}, notifies)


def _advance(w: _Walker, w_id: int, heap: list[tuple[int, int, int]]) -> None:
    meeting = w.run_until_meeting()
    if meeting is not None:
        heapq.heappush(heap, (w.t, 0 if meeting is Opcode.SYNC else 1, w_id))


