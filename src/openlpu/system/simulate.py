"""Simulating a system: each chip cycle-exactly, and every chip-to-chip transfer checked against the links.

Links have no flow control (reference 4.4): a vector sent at cycle t occupies the sender's link for the
serialisation time and lands in the peer's receive buffer at t + serialisation + link latency. The schedule must
match: receives in the order vectors were sent, none before its vector arrives, none without a vector, no vector
left unreceived, and no two sends on a link closer than the serialisation time. All chips start together (the
one-time clock alignment before a run is not counted). Chips run in the order data flows between them; traffic in
a cycle of chips is not supported yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from openlpu.errors import ProgramError, ScheduleError
from openlpu.isa.opcodes import Opcode
from openlpu.isa.program import Program
from openlpu.sim.engine import Result, _Run
from openlpu.system.topology import Endpoint, System


@dataclass(frozen=True)
class SystemResult:
    results: tuple[Result, ...]
    clock_hz: int

    @property
    def cycles(self) -> int:
        return max(r.cycles for r in self.results)

    @property
    def seconds(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def checks_passed(self) -> bool:
        return all(r.checks_passed for r in self.results)


def simulate_system(system: System, programs: list[Program], inputs: list[dict] | None = None, *,
                    run_checks: bool = True) -> SystemResult:
    """Run one program per chip of `system` (chip i runs `programs[i]`)."""
    if len(programs) != len(system.chips):
        raise ProgramError(f"the system has {len(system.chips)} chips but {len(programs)} programs were given")
    runs = [_Run(p, c) for p, c in zip(programs, system.chips)]
    transfers = _match_transfers(system, runs)
    order = _data_order(len(runs), transfers)
    results: dict[int, Result] = {}
    for i in order:
        received = {recv.queue: results[send.chip].sent[send.queue] for send, recv in transfers if recv.chip == i}
        results[i] = runs[i].run((inputs or [{}] * len(runs))[i], run_checks, received)
    return SystemResult(tuple(results[i] for i in range(len(runs))), system.chips[0].clock_hz)


def _match_transfers(system: System, runs: list[_Run]) -> list[tuple[Endpoint, Endpoint]]:
    """Check every link's sends against the peer's receives; returns the (sender, receiver) pairs in use."""
    pairs = []
    receives = {Endpoint(i, q): r.ev.cycle[e] for i, r in enumerate(runs)
                for q, e in r.c2c_queues(Opcode.RECEIVE).items()}
    for i, run in enumerate(runs):
        for q, events in run.c2c_queues(Opcode.SEND).items():
            send = Endpoint(i, q)
            recv = system.peer(send)
            if recv is None:
                raise ProgramError(f"{send} sends, but that link is not wired to any chip")
            _check_link(run, send, run.ev.cycle[events], recv, receives.pop(recv, np.zeros(0, np.int64)))
            pairs.append((send, recv))
    for recv, cycles in receives.items():
        raise ScheduleError(f"{recv} receives at cycle {cycles[0]}, but nothing is ever sent to it",
                            cycle=int(cycles[0]))
    return pairs


def _check_link(run: _Run, send: Endpoint, sent: np.ndarray, recv: Endpoint, got: np.ndarray) -> None:
    chip = run.chip
    busy = chip.serialisation_cycles
    gaps = np.flatnonzero(np.diff(sent) < busy)
    if len(gaps):
        t = int(sent[gaps[0] + 1])
        raise ScheduleError(f"{send} sends at cycle {t} while the link still carries the vector sent at cycle "
                            f"{sent[gaps[0]]}; a vector occupies a link {busy} cycles", cycle=t)
    if len(got) != len(sent):
        raise ScheduleError(f"{send} sends {len(sent)} vector(s) but {recv} receives {len(got)}; every vector "
                            "must be received exactly once")
    arrive = sent + busy + chip.c2c.link_latency_cycles
    early = np.flatnonzero(got < arrive)
    if len(early):
        k = early[0]
        raise ScheduleError(f"{recv} receives at cycle {got[k]}, but the vector {send} sent at cycle {sent[k]} "
                            f"arrives at cycle {arrive[k]}; issue the receive {arrive[k] - got[k]} cycle(s) later",
                            cycle=int(got[k]))


def _data_order(n: int, transfers: list[tuple[Endpoint, Endpoint]]) -> list[int]:
    """Chips in an order where every sender runs before its receivers."""
    after = {i: {r.chip for s, r in transfers if s.chip == i and r.chip != i} for i in range(n)}
    order, done = [], set()
    while len(order) < n:
        ready = [i for i in range(n) if i not in done and not any(i in after[j] for j in range(n) if j not in done)]
        if not ready:
            raise ProgramError("chips exchange data in a cycle (A sends to B and B, maybe through others, to A); "
                               "only one-way chip-to-chip traffic is supported yet")
        order.append(ready[0])
        done.add(ready[0])
    return order
