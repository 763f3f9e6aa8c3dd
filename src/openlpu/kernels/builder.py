"""Placing instructions at exact cycles, and the stream arithmetic kernels need to do it.

A kernel decides *when* every instruction issues; `ProgramBuilder` turns those absolute cycles into per-queue
instruction streams (NOP gaps, Repeat bursts) and knows, before anything runs, the cycle count the simulator must
report: the last cycle in which an instruction's result lands at superlane 0, plus the superlane stagger.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from openlpu.errors import ProgramError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Geometry, Hemisphere
from openlpu.isa.instruction import Instruction, nop, repeat
from openlpu.isa.program import Check, Program, Tensor, make_program
from openlpu.isa.types import QueueId, Unit
from openlpu.sim import semantics


@dataclass(frozen=True, slots=True)
class Burst:
    cycle: int
    instruction: Instruction
    count: int = 1
    interval: int = 1

    @property
    def last(self) -> int:
        return self.cycle + (self.count - 1) * self.interval


@dataclass
class ProgramBuilder:
    chip: Chip
    name: str
    bursts: dict[QueueId, list[Burst]] = field(default_factory=dict)
    tensors: list[Tensor] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    last_effect: int = -1
    effects: list[int] = field(default_factory=list)  # per placed burst: the cycle its last result lands
    _positions: dict[QueueId, int] = field(default_factory=dict, repr=False)

    @property
    def geo(self) -> Geometry:
        return Geometry.of(self.chip)

    def place(self, queue: QueueId, cycle: int, ins: Instruction, count: int = 1, interval: int = 1) -> Burst:
        """Issue `ins` on `queue` at `cycle`, then `count - 1` repeats `interval` cycles apart."""
        if cycle < 0:
            raise ProgramError(f"{self.name}: {queue} `{ins.op.value}` would issue at cycle {cycle} < 0; start later")
        burst = Burst(cycle, ins, count, interval)
        self.bursts.setdefault(queue, []).append(burst)
        self.effects.append(burst.last + semantics.latency(self.chip, ins.op))
        self.last_effect = max(self.last_effect, self.effects[-1])
        return burst

    def merge(self, other: ProgramBuilder, shift: int = 0) -> None:
        """Add everything placed on `other` (a builder for the same chip), `shift` cycles later."""
        for q, bursts in other.bursts.items():
            mine = self.bursts.setdefault(q, [])
            mine += [Burst(b.cycle + shift, b.instruction, b.count, b.interval) for b in bursts] if shift else bursts
        self.effects += [e + shift for e in other.effects]
        if other.effects:
            self.last_effect = max(self.last_effect, other.last_effect + shift)

    def mark(self) -> int:
        """A point in the emission: `done_since(mark)` is when what was placed after it has all landed."""
        return len(self.effects)

    def done_since(self, mark: int) -> int:
        """The first cycle after every result placed since `mark` has landed (streams quiet, SRAM written)."""
        return max(self.effects[mark:], default=-1) + 1

    def predicted_cycles(self) -> int:
        """The cycle count the simulator will report for the built program."""
        return self.last_effect + self.chip.lanes.superlanes if self.last_effect >= 0 else 0

    def build(self) -> Program:
        queues = {q: _stream(q, sorted(bs, key=lambda b: b.cycle)) for q, bs in self.bursts.items()}
        return make_program(self.name, queues, self.tensors, self.checks, chip=self.chip.name)

    # -- stream arithmetic -----------------------------------------------------------------------------------
    def position(self, queue: QueueId) -> int:
        if queue not in self._positions:
            self._positions[queue] = semantics.position(self.geo, self.chip, queue)
        return self._positions[queue]

    def issue_to_arrive(self, queue: QueueId, op_latency: int, target: int, arrive: int) -> int:
        """Issue cycle for an instruction on `queue` whose result must reach position `target` at `arrive`."""
        return arrive - op_latency - abs(target - self.position(queue))

    def arrival(self, source: int, produced: int, queue: QueueId) -> int:
        """Cycle at which a value produced at position `source` in cycle `produced` reaches `queue`'s unit."""
        return produced + abs(self.position(queue) - source)


def _stream(q: QueueId, bursts: list[Burst]) -> list[Instruction]:
    out: list[Instruction] = []
    t = 0
    for b in bursts:
        if b.cycle < t:
            raise ProgramError(f"{q}: `{b.instruction.op.value}` placed at cycle {b.cycle}, but the queue is busy "
                               f"until cycle {t - 1}; a queue issues one instruction per cycle")
        if b.cycle > t:
            out.append(nop(b.cycle - t))
        out.append(b.instruction)
        if b.count > 1:
            out.append(repeat(b.count - 1, b.interval))
        t = b.last + 1
    return out


def mem_queue(h: Hemisphere, slice_index: int) -> QueueId:
    return QueueId(Unit.MEM, h, slice_index)


def vxm_queue(alu: int) -> QueueId:
    return QueueId(Unit.VXM, None, alu)


def mxm_queue(h: Hemisphere, index: int = 0) -> QueueId:
    return QueueId(Unit.MXM, h, index)
