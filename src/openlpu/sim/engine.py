"""The cycle-exact simulator.

`simulate(program)` runs in four steps, each over whole arrays rather than one cycle at a time:

1. timing: the issue cycle of every instruction of every queue (NOP, Repeat, Sync/Notify);
2. wiring: which stream write each stream read sees, and every stream conflict (`streams`);
3. hazards: SRAM address, bank and MXM ordering checks, and the dependency edges between events (`hazards`);
4. execution: the events form a dataflow graph (`hazards` records each event's producers); events are grouped
   by dependency level, and each level runs as one NumPy call per opcode class (`execute`). A pipeline of
   thousands of cycles is a handful of levels.

Time is the issue cycle at superlane 0. An instruction reaches superlane k k cycles later and all traffic within a
superlane is shifted alike, so the stagger is paid where data crosses superlanes (MXM and SXM latencies) and once
at the end: a program takes (last cycle in which anything lands at superlane 0) + superlanes cycles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from openlpu.errors import ProgramError, ScheduleError
from openlpu.hardware.chip import Chip, load_chip
from openlpu.hardware.geometry import Geometry
from openlpu.isa.opcodes import MXM_OPS, SXM_OPS, VXM_OPS, Opcode
from openlpu.isa.program import Program
from openlpu.isa.types import DType, Unit
from openlpu.sim import checks as checks_mod
from openlpu.sim import events as events_mod
from openlpu.sim import hazards, memory, streams, timing, validate
from openlpu.sim.execute import Machine
from openlpu.sim.semantics import PHASE, Phase

OPCODES = list(Opcode)
OP_INDEX = {op: i for i, op in enumerate(OPCODES)}


@dataclass(frozen=True)
class Result:
    program: str
    chip: Chip = field(repr=False)
    cycles: int
    instructions: int
    events: int
    levels: int
    utilisation: dict[str, float]
    checks: tuple[checks_mod.CheckResult, ...]
    tensors: Mapping[str, np.ndarray] = field(repr=False)
    sent: dict = field(default_factory=dict, repr=False)  # C2C queue -> [vectors, lanes] uint8, in send order

    @property
    def seconds(self) -> float:
        return self.cycles / self.chip.clock_hz

    @property
    def checks_passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict:
        return {
            "program": self.program,
            "chip": self.chip.name,
            "cycles": self.cycles,
            "seconds": self.seconds,
            "instructions": self.instructions,
            "events": self.events,
            "utilisation": self.utilisation,
            "checks_passed": self.checks_passed,
            "checks": [c.describe() for c in self.checks],
        }


def simulate(
    program: Program,
    chip: Chip | None = None,
    inputs: dict[str, np.ndarray] | None = None,
    *,
    run_checks: bool = True,
) -> Result:
    """Run `program` cycle-exactly. `inputs` overrides tensors' initial contents by name; `run_checks=False`
    skips evaluating the program's `.check` references (benchmarks time the machine, not the reference)."""
    chip = chip or load_chip(program.chip or "groqchip1")
    run = _Run(program, chip)
    if run.c2c_queues(Opcode.RECEIVE) or run.c2c_queues(Opcode.SEND):
        raise ProgramError(f"program {program.name} sends or receives over chip-to-chip links; run it as part of a "
                           "system with openlpu.system.simulate_system")
    return run.run(inputs or {}, run_checks)


@dataclass(frozen=True)
class Verified:
    """What a program's timing alone determines: its length and unit use. Its data was not computed."""

    program: str
    chip: Chip = field(repr=False)
    cycles: int
    instructions: int
    events: int
    utilisation: dict[str, float]

    @property
    def seconds(self) -> float:
        return self.cycles / self.chip.clock_hz

    def to_json(self) -> dict:
        return {"program": self.program, "chip": self.chip.name, "cycles": self.cycles, "seconds": self.seconds,
                "instructions": self.instructions, "events": self.events, "utilisation": self.utilisation}


def verify(program: Program, chip: Chip | None = None) -> Verified:
    """Check `program` without running it: every static rule and every timing rule (streams, banks, MXM order,
    latencies) — everything `simulate` checks except data-dependent Gather/Scatter addresses. Raises the first
    violation; returns the cycle count and utilisation, which timing alone decides."""
    chip = chip or load_chip(program.chip or "groqchip1")
    run = _Run(program, chip)
    run.verify()
    return Verified(program=program.name, chip=chip, cycles=run._cycles(), instructions=program.instruction_count,
                    events=len(run.ev), utilisation=run._utilisation())


class _Tensors(Mapping):
    """The program's tensors read back from the final SRAM, each on first access."""

    def __init__(self, program: Program, sram: np.ndarray, chip: Chip) -> None:
        self._program, self._sram, self._chip, self._cache = program, sram, chip, {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = memory.load(self._sram, self._program.tensor(name), self._chip)
        return self._cache[name]

    def __iter__(self):
        return iter(t.name for t in self._program.tensors)

    def __len__(self) -> int:
        return len(self._program.tensors)


class _Run:
    op_index = OP_INDEX

    def __init__(self, program: Program, chip: Chip) -> None:
        self.program, self.chip = program, chip
        validate.check_program(program, chip)
        self.timeline = timing.expand(program, chip)
        self.ev = events_mod.build(self.timeline, chip)
        self.ops = np.array([OP_INDEX[t.instruction.op] for t in self.ev.templates], np.int64)[self.ev.template] \
            if len(self.ev) else np.zeros(0, np.int64)
        _, self.slice, self.addr = hazards.mem_fields(self.ev, chip)
        self.row, self.slot = self.ev.operand("row"), self.ev.operand("slot")

    # -- helpers used by executors and error messages ---------------------------------------------------------
    def plane_of(self, e: int) -> tuple:
        t = self.ev.templates[self.ev.template[e]]
        return (t.queue.hemisphere, t.instruction.plane)

    def describe(self, e: int) -> str:
        t = self.ev.templates[self.ev.template[e]]
        listing = self.program.stream(t.queue)
        lo, hi = max(0, t.index - 2), min(len(listing), t.index + 3)
        context = "\n".join(
            f"    {'>' if i == t.index else ' '} {i:4d}  {_text(listing[i])}" for i in range(lo, hi)
        )
        rep = f" (repeat {self.ev.k[e]})" if self.ev.k[e] else ""
        return f"cycle {self.ev.cycle[e]}, {t.queue} instruction {t.index}{rep} `{_text(t.instruction)}`\n{context}\n"

    # -- the four steps --------------------------------------------------------------------------------------
    def c2c_queues(self, op: Opcode) -> dict:
        """C2C queue -> issue cycles of its `op` events, in order."""
        out: dict = {}
        for e in np.flatnonzero(self.ops == OP_INDEX[op]).tolist():
            out.setdefault(self.ev.templates[self.ev.template[e]].queue, []).append(e)
        return {q: np.array(sorted(es, key=lambda e: self.ev.cycle[e])) for q, es in out.items()}

    def verify(self) -> hazards.Edges:
        """Every timing check (raising the earliest violation), and the dependency edges between events."""
        edges = hazards.Edges()
        self.mem, mem_violation = hazards.check_mem(self.ev, self.chip, self.ops, edges, self.describe)
        mxm = np.flatnonzero(np.isin(self.ops, [OP_INDEX[o] for o in MXM_OPS]))
        mxm = mxm[np.lexsort((self._phase()[mxm], self.ev.cycle[mxm]))]
        self.mxm = hazards.MxmChecker(self.chip, self.ev, edges, self.describe)
        self.mxm.run(mxm, self.slot, self.row)
        self.source, stream_violation = self._wire(edges)
        first = hazards.earliest(mem_violation, self.mxm.violation, stream_violation)
        if first is not None:
            raise ScheduleError(first[1], cycle=first[0])
        return edges

    def run(self, inputs: dict[str, np.ndarray], run_checks: bool, received: dict | None = None) -> Result:
        """`received`: C2C queue -> [vectors, lanes] uint8 delivered to its receives, in order (systems only)."""
        self.received_planes = np.zeros((len(self.ev), self.chip.lanes.lanes), np.uint8)
        for q, events in self.c2c_queues(Opcode.RECEIVE).items():
            self.received_planes[events] = received[q]
        self.sent_planes = np.zeros((len(self.ev), self.chip.lanes.lanes), np.uint8)
        edges = self.verify()
        level = _levels(len(self.ev), *edges.arrays())
        self.sram, initial = memory.load_program(self.program, self.chip, inputs)
        self.pool = np.zeros((len(self.ev.writes.cycle), self.chip.lanes.lanes), np.uint8)
        machine = Machine(self)
        self._execute(machine, level)
        machine.commit_writes()
        result = self._result(initial if run_checks else None, int(level.max()) + 1 if len(level) else 0)
        result.sent.update({q: self.sent_planes[e] for q, e in self.c2c_queues(Opcode.SEND).items()})
        return result

    def _wire(self, edges: hazards.Edges) -> tuple[np.ndarray, hazards.Violation | None]:
        positions = Geometry.of(self.chip).positions
        source, conflicts = streams.resolve(self.ev.writes, self.ev.reads, positions)
        if conflicts:
            def when(c: streams.Conflict) -> int:
                if c.kind == "no-value":
                    return int(self.ev.reads.cycle[c.first])
                return int(self.ev.writes.cycle[c.second if c.kind == "clobbered" else c.first])

            c = min(conflicts, key=when)
            return source, (when(c), self._conflict_message(c))
        edges.add(self.ev.writes.event[source], self.ev.reads.event)
        return source, None

    def _conflict_message(self, c: streams.Conflict) -> str:
        w, r = self.ev.writes, self.ev.reads
        at = Geometry.of(self.chip).name
        if c.kind == "no-value":
            name = f"{'EW'[r.direction[c.first]]}{r.stream[c.first]}"
            return (f"read of stream {name} holding no value at {at(r.position[c.first])} in cycle "
                    f"{r.cycle[c.first]}: {self.describe(r.event[c.first])}no instruction wrote that stream "
                    "so that it arrives here in this cycle; check the producer's issue cycle and latency")
        name = f"{'EW'[w.direction[c.first]]}{w.stream[c.first]}"
        a, b = w.event[c.first], w.event[c.second]
        if c.kind == "two-writers":
            return (f"two producers write stream {name} at {at(w.position[c.first])} in cycle "
                    f"{w.cycle[c.first]}:\n{self.describe(a)}{self.describe(b)}move one to another stream or cycle")
        return (f"stream {name}: the value written in cycle {w.cycle[c.first]} at {at(w.position[c.first])} "
                f"by {self.describe(a)}is overwritten at {at(w.position[c.second])} in cycle "
                f"{w.cycle[c.second]} by {self.describe(b)}before any instruction read it")

    def _phase(self) -> np.ndarray:
        table = np.array([PHASE.get(op, Phase.MEM_READ) for op in OPCODES], np.int64)
        return table[self.ops]

    def _execute(self, machine: Machine, level: np.ndarray) -> None:
        group = self._group_keys()
        order = np.lexsort((self.ev.cycle, group, self._phase(), level))
        keys = np.stack([level[order], group[order]])
        cuts = np.flatnonzero((keys[:, 1:] != keys[:, :-1]).any(axis=0)) + 1
        for run in np.split(order, cuts):
            if len(run):
                ins = self.ev.templates[self.ev.template[run[0]]].instruction
                _EXECUTORS[ins.op](machine, run, ins)

    def _group_keys(self) -> np.ndarray:
        """Events that can run in one NumPy call share a key: same opcode and types (and, for SXM, operands)."""
        ids: dict = {}
        per_template = []
        for i, t in enumerate(self.ev.templates):
            ins = t.instruction
            key = (i,) if ins.op in SXM_OPS else (ins.op, ins.dtype, ins.to, ins.b is None, ins.c is None)
            per_template.append(ids.setdefault(key, len(ids)))
        return np.array(per_template, np.int64)[self.ev.template] if len(self.ev) else np.zeros(0, np.int64)

    def _result(self, initial: dict[str, np.ndarray] | None, levels: int) -> Result:
        tensors = _Tensors(self.program, self.sram, self.chip)
        results = ()
        if initial is not None:
            env = checks_mod.reference_env(self.program.tensors, initial)
            results = tuple(
                checks_mod.run_check(c, self.program.tensor(c.target), tensors[c.target], env)
                for c in self.program.checks
            )
        return Result(
            program=self.program.name, chip=self.chip, cycles=self._cycles(),
            instructions=self.program.instruction_count, events=len(self.ev), levels=levels,
            utilisation=self._utilisation(), checks=results, tensors=tensors,
        )

    def _cycles(self) -> int:
        last = max(self.timeline.queue_end_cycles.values(), default=0) - 1
        if len(self.ev):
            done = self.ev.cycle + np.array([t.latency for t in self.ev.templates])[self.ev.template]
            last = max(last, int(done.max()))
        if len(self.ev.writes.cycle):
            last = max(last, int(self.ev.writes.cycle.max()))
        return last + self.chip.lanes.superlanes if last >= 0 else 0

    def _utilisation(self) -> dict[str, float]:
        cycles = max(self._cycles(), 1)
        c = self.chip
        queues = {Unit.MEM: c.mem_slices, Unit.VXM: c.vxm.alus, Unit.SXM: 2 * c.sxm.queues_per_hemisphere}
        units = np.array([list(Unit).index(t.queue.unit) for t in self.ev.templates], np.int64)
        per_event = units[self.ev.template] if len(self.ev) else np.zeros(0, np.int64)
        out = {u.value: float(np.sum(per_event == list(Unit).index(u))) / (cycles * n) for u, n in queues.items()}
        out["mxm_macs"] = self._mxm_macs() / (cycles * c.macs_per_cycle_int8)
        return out

    def _mxm_macs(self) -> int:
        """MACs in int8-plane units: an fp16 pass occupies a plane pair for `fp16_issue_interval_cycles`."""
        abc = self.ops == OP_INDEX[Opcode.ABC]
        fp16 = np.array([t.instruction.dtype is DType.FP16 for t in self.ev.templates], bool)[self.ev.template]
        cost = np.where(fp16[abc], 2 * self.chip.mxm.fp16_issue_interval_cycles, 1)
        return int(cost.sum()) * self.chip.mxm.plane_rows * self.chip.mxm.plane_columns


def _text(ins) -> str:
    from openlpu.isa.asm import format_instruction

    return format_instruction(ins)


def _levels(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Dependency level of every event: 0 with no producer, else one more than its deepest producer.

    Kahn's algorithm a level at a time: each edge is visited once, and there is one NumPy step per level."""
    level = np.zeros(n, np.int64)
    if not len(src):
        return level
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    start = np.searchsorted(src, np.arange(n + 1))
    waiting = np.bincount(dst, minlength=n)
    frontier, depth = np.flatnonzero(waiting == 0), 0
    while len(frontier):
        level[frontier] = depth
        counts = start[frontier + 1] - start[frontier]
        offsets = start[frontier] - np.concatenate([[0], np.cumsum(counts)[:-1]])
        idx = np.repeat(offsets, counts) + np.arange(counts.sum())  # every out-edge of the frontier
        targets = dst[idx]
        waiting -= np.bincount(targets, minlength=n)
        frontier = np.unique(targets[waiting[targets] == 0])
        depth += 1
    return level


_EXECUTORS = {
    Opcode.READ: Machine.read,
    Opcode.WRITE: Machine.write,
    Opcode.GATHER: Machine.gather,
    Opcode.SCATTER: Machine.scatter,
    **{op: Machine.vxm for op in VXM_OPS},
    **{op: Machine.sxm for op in SXM_OPS},
    Opcode.LW: Machine.lw,
    Opcode.IW: Machine.iw,
    Opcode.ABC: Machine.abc,
    Opcode.ACC: Machine.acc_,
    Opcode.SEND: Machine.send,
    Opcode.RECEIVE: Machine.receive,
}
