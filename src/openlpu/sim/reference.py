"""The reference simulator: slow, obvious, one cycle at a time. It is the specification `engine.simulate` must
match bit for bit: the same cycles and tensors, or the same error class at the same cycle.

It shares no code with the fast path's timing, wiring, hazard or execution steps (`timing`, `events`,
`streams`, `hazards`, `execute`); it reuses only the tables (`semantics`), the numerics (`numerics`), the SRAM
layout (`memory`), the static checks (`validate`) and the `.check` evaluation (`checks`).

State is explicit: per queue a program counter and the next cycle it may issue in; a stream register file that
holds, for every direction, stream and position, which write's byte plane sits there (each write counts its
reads); the SRAM; per MXM plane a shadow buffer, the active weights and the accumulator slots; and the state
updates and stream writes in flight, keyed by the cycle they land in. Each cycle c runs these steps in order:

1. Streams move: a value on an eastward stream register moves from position p to p + 1 (westward: p - 1);
   values leaving the chip edge are gone.
2. State updates due in c land: SRAM writes commit (`mem.write_latency` after issue), IW weights become active
   (`mxm.iw_latency`), ABC products reach their accumulator slot (`mxm.abc_latency`; `accumulate=true` adds to
   the slot's value then, in the product's accumulator type).
3. Each queue issues at most one instruction. `nop n` idles n cycles; `repeat n d` re-issues the previous
   instruction n more times d cycles apart (the first d cycles after its last issue, or when the queue reaches
   the Repeat if a NOP or Sync in between kept it longer), advancing its address, row or slot by
   `semantics.advance_step`; `config` takes a cycle; `sync` parks the queue; `notify` takes a cycle and
   releases every parked queue (their Syncs issued at or before c) to resume at c + notify_latency.
4. Issue-time checks: MEM addresses, LW rows and ABC/ACC slots in range after Repeat advanced them; per MEM
   slice, the read issued in c and the write committing in c use different banks (address % banks), and a
   Gather or Scatter conflicts with any other access.
5. Every issued instruction reads its stream operands at its own position, counting each value read. A value
   written in c is not there yet (step 7), so a value written at p in cycle T is read at a position q strictly
   downstream in cycle T + |q - p|, and never at p.
6. Instructions execute in `semantics.PHASE` order (readers of a state before its writers: MEM reads, VXM,
   SXM, ACC, ABC, IW, LW, MEM writes), then in program queue order. MEM reads and ACC read their state at
   issue, ABC multiplies by the weights active at issue, IW takes (and empties) the shadow buffer at issue, LW
   writes it at issue. Results are scheduled `semantics.latency` cycles after issue.
7. Stream writes due in c go into the register at their producer's position. Two writes to one place in one
   cycle is an error, and so is replacing a value nobody read (overwritten downstream of its producer).

Violations (`Kind`) are ScheduleErrors. By default the first raises at once. With `keep_going=True` the run
goes on (a missing value reads as zeros, an out-of-range access is skipped) and the first is raised at the end
with every violation attached as `error.violations`: for comparing error reports with the fast engine.

Cycles: (the last cycle in which anything lands at superlane 0: a stream write, an SRAM commit, a weight
install, an accumulator update, an LW, or a queue's last busy cycle) + `superlanes`, as `engine` defines it.
Utilisation follows the engine's definitions; its count of execution steps (`levels`) is here the number of
cycles stepped.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from dataclasses import dataclass, field, fields

import numpy as np

from openlpu.errors import ProgramError, ScheduleError
from openlpu.hardware.chip import Chip, load_chip
from openlpu.hardware.geometry import Geometry
from openlpu.isa.asm import format_instruction
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import C2C_OPS, ICU_OPS, MEM_OPS, VXM_BINARY, VXM_UNARY, Opcode
from openlpu.isa.program import Program
from openlpu.isa.types import Direction, DType, QueueId, Unit
from openlpu.sim import checks, memory, semantics, validate
from openlpu.sim import numerics as nx
from openlpu.sim.engine import Result


class Kind(enum.Enum):
    """Every way a program's timing can be illegal."""

    TWO_WRITERS = "two producers write one stream position in one cycle"
    NO_VALUE = "read of a stream position holding no value"
    CLOBBERED = "a value overwritten before any instruction read it"
    BANK = "bank conflict"
    ADDRESS = "MEM address out of range"
    MXM_RANGE = "LW row or accumulator slot out of range"
    LANE_ADDRESS = "Gather/Scatter lane address out of range"
    NO_WEIGHTS = "ABC before weights are installed"
    WEIGHTS_DTYPE = "ABC type differs from the installed weights"
    SHADOW_DTYPE = "LW type differs from the shadow buffer's"
    ABC_INTERVAL = "ABC issue interval"
    ACC_EMPTY = "ACC of a slot with no completed ABC"
    IW_EMPTY = "IW of an empty shadow buffer"
    PARKED = "a queue parked forever"


@dataclass(frozen=True, slots=True)
class Violation:
    kind: Kind
    cycle: int  # the cycle the rule is broken in (CLOBBERED: the overwrite)
    message: str
    written: int | None = None  # CLOBBERED: the cycle the lost value was written


def simulate_reference(
    program: Program,
    chip: Chip | None = None,
    inputs: dict[str, np.ndarray] | None = None,
    *,
    run_checks: bool = True,
    keep_going: bool = False,
) -> Result:
    """Run `program` one cycle at a time; the contract of `engine.simulate`."""
    chip = chip or load_chip(program.chip or "groqchip1")
    _validate(program, chip)
    if any(ins.op in C2C_OPS for _, instrs in program.queues for ins in instrs):
        raise ProgramError(f"program {program.name} sends or receives over chip-to-chip links; the reference "
                           "simulates one chip")
    machine = _Machine(program, chip, keep_going)
    initial = machine.load(inputs or {})
    machine.run()
    return machine.result(initial if run_checks else None)


# -- records -------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Instance:
    """One issue of an instruction: queue, index, repeat counter k, issue cycle and the unit's position."""

    queue: QueueId
    index: int
    ins: Instruction
    cycle: int
    k: int
    position: int
    step: int  # what Repeat advances addr / row / slot by

    def operand(self, name: str) -> int:
        return getattr(self.ins, name) + self.k * self.step

    def describe(self) -> str:
        rep = f" (repeat {self.k})" if self.k else ""
        text = format_instruction(self.ins)
        return f"cycle {self.cycle}, {self.queue} instruction {self.index}{rep} `{text}`"


@dataclass(slots=True)
class _Write:
    """A value put on a stream: its byte plane, where and when, who wrote it and how often it was read."""

    plane: np.ndarray
    writer: _Instance
    direction: Direction
    stream: int
    position: int
    cycle: int
    reads: int = 0


@dataclass(frozen=True, slots=True)
class _Commit:
    """An SRAM write landing: one byte per lane at its lane's address."""

    writer: _Instance
    slice: int
    addresses: np.ndarray
    plane: np.ndarray


@dataclass(frozen=True, slots=True)
class _Install:
    plane: tuple
    weights: tuple[DType, np.ndarray]


@dataclass(frozen=True, slots=True)
class _Product:
    plane: tuple
    slot: int
    value: np.ndarray
    accumulate: bool
    dtype: DType


@dataclass(slots=True)
class _Plane:
    shadow: tuple[DType, np.ndarray] | None = None  # rows loaded by LW
    active: tuple[DType, np.ndarray] | None = None  # weights ABC multiplies by
    slots: dict[int, np.ndarray] = field(default_factory=dict)  # landed accumulator vectors
    last_abc: int | None = None


# -- an instruction queue ------------------------------------------------------------------------------------

Issue = tuple[int, Instruction, int]  # index, instruction, repeat counter


class _Queue:
    """Program counter and next issue cycle of one queue, stepped once per cycle."""

    def __init__(self, queue: QueueId, instrs: tuple[Instruction, ...]) -> None:
        self.queue, self.instrs = queue, instrs
        self.pc = 0
        self.next_cycle = 0
        self.last: tuple[int, Instruction, int, int] | None = None  # index, instruction, cycle, k
        self.repeats: list[tuple[int, int]] = []  # (cycle, k) of re-issues still due from the current Repeat
        self.parked_at: int | None = None  # cycle of the Sync the queue waits at

    @property
    def done(self) -> bool:
        return self.pc == len(self.instrs) and not self.repeats and self.parked_at is None

    @property
    def busy(self) -> bool:
        """Not finished and not parked: it will issue or idle again."""
        return not self.done and self.parked_at is None

    def step(self, c: int) -> Issue | Opcode | None:
        """Cycle c: an issue, Opcode.NOTIFY, or nothing."""
        if self.parked_at is not None:
            return None
        if self.repeats:
            return self._reissue(c)
        while self.pc < len(self.instrs) and self.next_cycle <= c:
            ins = self.instrs[self.pc]
            self.pc += 1
            match ins.op:
                case Opcode.NOP:
                    self.next_cycle += ins.n
                case Opcode.SYNC:
                    self.parked_at = c
                    return None
                case Opcode.NOTIFY | Opcode.CONFIG:
                    self.next_cycle = c + 1
                    return Opcode.NOTIFY if ins.op is Opcode.NOTIFY else None
                case Opcode.REPEAT:
                    return self._start_repeat(c, ins)
                case _:
                    self.last = (self.pc - 1, ins, c, 0)
                    self.next_cycle = c + 1
                    return self.pc - 1, ins, 0
        return None

    def _start_repeat(self, c: int, ins: Instruction) -> Issue | None:
        """The first re-issue comes d cycles after the last issue, or now if a NOP, Config, Sync or Notify in
        between kept the queue busy past that cycle; the others follow d cycles apart."""
        index, _, t_last, k_last = self.last  # `_validate` made sure an instruction precedes every Repeat
        first = max(t_last + ins.d, c)
        self.repeats = [(first + ins.d * j, k_last + 1 + j) for j in range(ins.n)]
        return self._reissue(c)

    def _reissue(self, c: int) -> Issue | None:
        cycle, k = self.repeats[0]
        if cycle > c:
            return None
        self.repeats.pop(0)
        index, ins, _, _ = self.last
        self.last = (index, ins, c, k)
        self.next_cycle = c + 1
        return index, ins, k

    def resume(self, cycle: int) -> None:
        self.parked_at, self.next_cycle = None, cycle


# -- the stream register file --------------------------------------------------------------------------------

_DIR = {Direction.E: 0, Direction.W: 1}


class _Streams:
    def __init__(self, streams: int, positions: int) -> None:
        # cell[direction, stream, position]: index into `writes` of the value held there, -1 when empty
        self.cell = np.full((2, streams, positions), -1, np.int64)
        self.writes: list[_Write] = []

    def shift(self) -> None:
        east, west = self.cell[0], self.cell[1]
        east[:, 1:] = east[:, :-1].copy()
        east[:, 0] = -1
        west[:, :-1] = west[:, 1:].copy()
        west[:, -1] = -1

    def at(self, direction: Direction, stream: int, position: int) -> _Write | None:
        i = self.cell[_DIR[direction], stream, position]
        return self.writes[i] if i >= 0 else None

    def put(self, w: _Write) -> None:
        self.cell[_DIR[w.direction], w.stream, w.position] = len(self.writes)
        self.writes.append(w)


# -- the machine ---------------------------------------------------------------------------------------------

class _Machine:
    def __init__(self, program: Program, chip: Chip, keep_going: bool) -> None:
        self.program, self.chip, self.keep_going = program, chip, keep_going
        self.geo = Geometry.of(chip)
        self.lanes = chip.lanes.lanes
        self.streams = _Streams(chip.streams.streams_per_direction, self.geo.positions)
        self.queues = [_Queue(q, instrs) for q, instrs in program.queues]
        self.queue_order = {q: i for i, (q, _) in enumerate(program.queues)}
        self.planes: dict[tuple, _Plane] = defaultdict(_Plane)
        self.landing: dict[int, list[_Commit | _Install | _Product]] = defaultdict(list)
        self.arriving: dict[int, list[_Write]] = defaultdict(list)
        self.violations: list[Violation] = []
        self.issued: list[_Instance] = []
        self.last_effect = -1
        self.stepped = 0

    def violate(self, kind: Kind, cycle: int, message: str, written: int | None = None) -> None:
        self.violations.append(Violation(kind, cycle, message, written))
        if not self.keep_going:
            raise self.error()

    def error(self) -> ScheduleError:
        more = len(self.violations) - 1
        tail = f"\n(and {more} more violation(s))" if more else ""
        e = ScheduleError(self.violations[0].message + tail)
        e.violations = tuple(self.violations)
        return e

    def effect(self, cycle: int) -> None:
        self.last_effect = max(self.last_effect, cycle)

    def load(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.sram, initial = memory.load_program(self.program, self.chip, inputs)
        return initial

    def run(self) -> None:
        c = 0
        while self.landing or self.arriving or any(q.busy for q in self.queues):
            self.step(c)
            c += 1
        self.stepped = c
        for q in self.queues:
            if q.parked_at is not None:
                self.violate(Kind.PARKED, q.parked_at, (
                    f"{q.queue} instruction {q.pc - 1} `sync` at cycle {q.parked_at}: the queue stays parked "
                    "forever because no `notify` issues at or after that cycle; add a `notify` on some queue "
                    "after it"))
        if self.violations:
            raise self.error()

    def step(self, c: int) -> None:
        self.streams.shift()
        commits = self.land(c)
        issued = self.issue(c)
        self.check_mem(c, issued, commits)
        self.check_mxm_ranges(issued)
        operands = [self.read_operands(inst) for inst in issued]
        for i in sorted(range(len(issued)), key=lambda i: (semantics.PHASE[issued[i].ins.op],
                                                           self.queue_order[issued[i].queue])):
            _EXECUTE[issued[i].ins.op](self, issued[i], operands[i])
        self.place(c)

    # -- step 2: state updates -------------------------------------------------------------------------------
    def land(self, c: int) -> list[_Commit]:
        """Apply the state updates due in cycle c; returns the SRAM commits, for the bank check."""
        commits = []
        for update in self.landing.pop(c, []):
            self.effect(c)
            match update:
                case _Commit():
                    self.sram[update.slice, update.addresses, np.arange(self.lanes)] = update.plane
                    commits.append(update)
                case _Install():
                    self.planes[update.plane].active = update.weights
                case _Product():
                    slots = self.planes[update.plane].slots
                    old = slots.get(update.slot)
                    slots[update.slot] = nx.accumulate(old, update.value, update.dtype) \
                        if update.accumulate and old is not None else update.value
        return commits

    # -- step 3: issue ---------------------------------------------------------------------------------------
    def issue(self, c: int) -> list[_Instance]:
        issued, notified = [], False
        for q in self.queues:
            what = q.step(c)
            if what is Opcode.NOTIFY:
                notified = True
            elif what is not None:
                index, ins, k = what
                position = semantics.position(self.geo, self.chip, q.queue)
                step = semantics.advance_step(self.chip, ins)
                issued.append(_Instance(q.queue, index, ins, c, k, position, step))
        if notified:  # every Sync of this cycle was reached above, so all parked queues are released
            for q in self.queues:
                if q.parked_at is not None:
                    q.resume(c + self.chip.icu.notify_latency_cycles)
        self.issued += issued
        return issued

    # -- step 4: ranges and banks ----------------------------------------------------------------------------
    def check_mem(self, c: int, issued: list[_Instance], commits: list[_Commit]) -> None:
        limit = self.chip.mem.addresses_per_slice
        per_slice: dict[int, list[tuple[int | None, str]]] = defaultdict(list)
        for inst in issued:
            if inst.ins.op not in MEM_OPS:
                continue
            if not self.mem_ok(inst):
                self.violate(Kind.ADDRESS, c, f"address {inst.operand('addr')} out of range 0..{limit - 1} "
                                              f"(after Repeat advanced it) at {inst.describe()}")
            elif inst.ins.op in (Opcode.READ, Opcode.GATHER):
                per_slice[self.slice_of(inst)].append((self.bank(inst), inst.describe()))
        for commit in commits:
            who = f"the write from {commit.writer.describe()}"
            per_slice[commit.slice].append((self.bank(commit.writer), who))
        for accesses in per_slice.values():
            for i, (bank_a, who_a) in enumerate(accesses):
                for bank_b, who_b in accesses[i + 1:]:
                    if bank_a is None or bank_b is None or bank_a == bank_b:
                        self.violate(Kind.BANK, c, (
                            f"bank conflict in cycle {c}: {who_a} and {who_b} use the same bank of one MEM "
                            "slice; move one by a cycle or use the other bank (odd/even address)"))

    def check_mxm_ranges(self, issued: list[_Instance]) -> None:
        """Repeat advances LW rows and ABC/ACC slots as it advances addresses; they must stay on the plane."""
        m = self.chip.mxm
        for inst in issued:
            if inst.ins.op is Opcode.LW:
                row, rows = inst.operand("row"), validate.lw_rows(self.chip, inst.ins.dtype)
                if row + rows > m.plane_rows:
                    self.violate(Kind.MXM_RANGE, inst.cycle, (
                        f"{inst.describe()}: rows {row}..{row + rows - 1} (after Repeat advanced them) are "
                        f"outside the plane's 0..{m.plane_rows - 1}"))
            elif inst.ins.op in (Opcode.ABC, Opcode.ACC) and inst.operand("slot") >= m.accumulator_vectors:
                self.violate(Kind.MXM_RANGE, inst.cycle, (
                    f"{inst.describe()}: slot {inst.operand('slot')} (after Repeat advanced it) is outside "
                    f"0..{m.accumulator_vectors - 1}"))

    def mem_ok(self, inst: _Instance) -> bool:
        return 0 <= inst.operand("addr") < self.chip.mem.addresses_per_slice

    def bank(self, inst: _Instance) -> int | None:
        """The bank an access uses; None for Gather and Scatter, whose lanes may touch either."""
        if inst.ins.op in (Opcode.GATHER, Opcode.SCATTER):
            return None
        return inst.operand("addr") % self.chip.mem.banks_per_slice

    def slice_of(self, inst: _Instance) -> int:
        return self.geo.global_slice(inst.queue.hemisphere, inst.queue.index)

    # -- step 5: operand reads -------------------------------------------------------------------------------
    def read_operands(self, inst: _Instance) -> np.ndarray:
        """[streams read, lanes] byte planes of the instruction's stream operands, in `stream_reads` order."""
        reads = semantics.stream_reads(self.chip, inst.queue, inst.ins)
        planes = np.zeros((len(reads), self.lanes), np.uint8)
        for i, (direction, stream) in enumerate(reads):
            w = self.streams.at(direction, stream, inst.position)
            if w is None:
                self.violate(Kind.NO_VALUE, inst.cycle, (
                    f"read of stream {direction.value}{stream} holding no value at "
                    f"{self.geo.name(inst.position)} in cycle {inst.cycle}: {inst.describe()}; nothing "
                    "written upstream arrives here then"))
                continue
            w.reads += 1
            planes[i] = w.plane
        return planes

    # -- step 7: stream writes -------------------------------------------------------------------------------
    def send(self, inst: _Instance, planes: np.ndarray) -> None:
        """Schedule result planes onto the instruction's output streams, `latency` cycles after issue."""
        when = inst.cycle + semantics.latency(self.chip, inst.ins.op)
        for plane, (direction, stream) in zip(planes, semantics.stream_writes(inst.ins), strict=True):
            self.arriving[when].append(_Write(plane.copy(), inst, direction, stream, inst.position, when))

    def place(self, c: int) -> None:
        taken: dict[tuple, _Write] = {}
        for w in self.arriving.pop(c, []):
            self.effect(c)
            where = (w.direction, w.stream, w.position)
            name = f"stream {w.direction.value}{w.stream} at {self.geo.name(w.position)}"
            if where in taken:
                first = taken[where].writer.describe()
                self.violate(Kind.TWO_WRITERS, c, f"two producers write {name} in cycle {c}: {first} and "
                                                  f"{w.writer.describe()}")
                continue
            old = self.streams.at(*where)
            if old is not None and old.reads == 0:
                self.violate(Kind.CLOBBERED, c, (
                    f"{name}: the value written in cycle {old.cycle} at {self.geo.name(old.position)} by "
                    f"{old.writer.describe()} is overwritten in cycle {c} by {w.writer.describe()} before "
                    "any instruction read it"), written=old.cycle)
            taken[where] = w
            self.streams.put(w)

    # -- step 6: executors, one per opcode class -------------------------------------------------------------
    def lane_addresses(self, inst: _Instance, map_planes: np.ndarray) -> np.ndarray | None:
        """A Gather/Scatter's per-lane addresses: addr + the map's unsigned 16-bit offset (low byte first)."""
        if not self.mem_ok(inst):
            return None
        offsets = map_planes[0].astype(np.int64) + 256 * map_planes[1].astype(np.int64)
        addresses = inst.operand("addr") + offsets
        limit = self.chip.mem.addresses_per_slice
        if (addresses >= limit).any():
            self.violate(Kind.LANE_ADDRESS, inst.cycle, f"{inst.describe()}: a lane address from the map "
                                                        f"stream is outside 0..{limit - 1}")
            return None
        return addresses

    def commit(self, inst: _Instance, addresses: np.ndarray, plane: np.ndarray) -> None:
        when = inst.cycle + self.chip.mem.write_latency_cycles
        self.landing[when].append(_Commit(inst, self.slice_of(inst), addresses, plane.copy()))

    def exec_read(self, inst: _Instance, _planes: np.ndarray) -> None:
        out = np.zeros((1, self.lanes), np.uint8)
        if self.mem_ok(inst):
            out[0] = self.sram[self.slice_of(inst), inst.operand("addr")]
        self.send(inst, out)

    def exec_write(self, inst: _Instance, planes: np.ndarray) -> None:
        if self.mem_ok(inst):
            self.commit(inst, np.full(self.lanes, inst.operand("addr")), planes[0])

    def exec_gather(self, inst: _Instance, planes: np.ndarray) -> None:
        addresses = self.lane_addresses(inst, planes[:2])
        out = np.zeros((1, self.lanes), np.uint8)
        if addresses is not None:
            out[0] = self.sram[self.slice_of(inst), addresses, np.arange(self.lanes)]
        self.send(inst, out)

    def exec_scatter(self, inst: _Instance, planes: np.ndarray) -> None:
        addresses = self.lane_addresses(inst, planes[:2])
        if addresses is not None:
            self.commit(inst, addresses, planes[2])

    def exec_vxm(self, inst: _Instance, planes: np.ndarray) -> None:
        ins, dt = inst.ins, inst.ins.dtype
        w = dt.width_bytes
        x = [nx.planes_to_values(planes[i * w:(i + 1) * w], dt) for i in range(len(planes) // w)]
        out_dt = dt
        if ins.op in VXM_UNARY:
            out = nx.vxm_unary(ins.op, x[0], dt)
        elif ins.op in VXM_BINARY:
            out = nx.vxm_binary(ins.op, x[0], x[1] if ins.b is not None else _immediate(ins.imm, dt), dt)
        elif ins.op is Opcode.SELECT:
            out = nx.vxm_select(*x)
        else:  # CAST
            out, out_dt = nx.convert(x[0], dt, ins.to), ins.to
        self.send(inst, nx.values_to_planes(np.broadcast_to(out, (self.lanes,)), out_dt))

    def exec_sxm(self, inst: _Instance, planes: np.ndarray) -> None:
        self.send(inst, _SXM[inst.ins.op](inst.ins, planes, self.chip.lanes.lanes_per_superlane))

    def exec_lw(self, inst: _Instance, planes: np.ndarray) -> None:
        self.effect(inst.cycle)  # latency 0: the shadow buffer changes at issue
        ins, plane = inst.ins, self.planes[(inst.queue.hemisphere, inst.ins.plane)]
        if plane.shadow is not None and plane.shadow[0] is not ins.dtype:
            self.violate(Kind.SHADOW_DTYPE, inst.cycle, (
                f"{inst.describe()}: loads {ins.dtype.value} rows into a shadow buffer holding "
                f"{plane.shadow[0].value} rows; install (IW) them first"))
            return
        if plane.shadow is None:
            plane.shadow = (ins.dtype, np.zeros((self.chip.mxm.plane_rows, self.lanes), ins.dtype.numpy))
        rows = nx.planes_to_values(planes.reshape(-1, ins.dtype.width_bytes, self.lanes), ins.dtype)
        row = inst.operand("row")
        fits = max(0, min(len(rows), self.chip.mxm.plane_rows - row))  # short only after MXM_RANGE
        plane.shadow[1][row:row + fits] = rows[:fits]

    def exec_iw(self, inst: _Instance, _planes: np.ndarray) -> None:
        key = (inst.queue.hemisphere, inst.ins.plane)
        if self.planes[key].shadow is None:
            self.violate(Kind.IW_EMPTY, inst.cycle, f"{inst.describe()}: installs an empty shadow buffer; "
                                                    "load weights with LW first")
            return
        weights, self.planes[key].shadow = self.planes[key].shadow, None
        self.landing[inst.cycle + self.chip.mxm.iw_latency_cycles].append(_Install(key, weights))

    def exec_abc(self, inst: _Instance, planes: np.ndarray) -> None:
        ins, c = inst.ins, inst.cycle
        key = (inst.queue.hemisphere, ins.plane)
        plane = self.planes[key]
        if plane.active is None:
            self.violate(Kind.NO_WEIGHTS, c, (
                f"{inst.describe()}: MXM plane {ins.plane} ({key[0].value}) is used before weights are "
                "installed; issue LW and IW, and the ABC at least "
                f"{self.chip.mxm.iw_latency_cycles} cycle(s) after the IW"))
        elif plane.active[0] is not ins.dtype:
            self.violate(Kind.WEIGHTS_DTYPE, c, f"{inst.describe()}: streams {ins.dtype.value} activations "
                                                f"into {plane.active[0].value} weights")
        gap = self.chip.mxm.fp16_issue_interval_cycles if ins.dtype is DType.FP16 else 1
        if plane.last_abc is not None and c - plane.last_abc < gap:
            self.violate(Kind.ABC_INTERVAL, c, (
                f"{inst.describe()}: ABC issued {c - plane.last_abc} cycle(s) after the previous one on this "
                f"plane; {ins.dtype.value} takes one every {gap}"))
        plane.last_abc = c
        if plane.active is not None and plane.active[0] is ins.dtype:
            acts = nx.planes_to_values(planes, ins.dtype)[None, :]
            product = nx.mxm_pass(acts, plane.active[1], ins.dtype)[0]
            self.landing[c + self.chip.mxm.abc_latency_cycles].append(
                _Product(key, inst.operand("slot"), product, bool(ins.accumulate), ins.dtype))

    def exec_acc(self, inst: _Instance, _planes: np.ndarray) -> None:
        slot = inst.operand("slot")
        value = self.planes[(inst.queue.hemisphere, inst.ins.plane)].slots.get(slot)
        if value is None:
            self.violate(Kind.ACC_EMPTY, inst.cycle, (
                f"{inst.describe()}: reads accumulator slot {slot}, which holds no completed ABC result at "
                f"cycle {inst.cycle}"))
            value = np.zeros(self.lanes, np.int32)
        self.send(inst, nx.values_to_planes(value, DType.INT32 if value.dtype == np.int32 else DType.FP32))

    # -- the result ------------------------------------------------------------------------------------------
    def cycles(self) -> int:
        last = max(max([q.next_cycle for q in self.queues], default=0) - 1, self.last_effect)
        return last + self.chip.lanes.superlanes if last >= 0 else 0

    def result(self, initial: dict[str, np.ndarray] | None) -> Result:
        tensors = {t.name: memory.load(self.sram, t, self.chip) for t in self.program.tensors}
        results = ()
        if initial is not None:
            env = checks.reference_env(self.program.tensors, initial)
            results = tuple(checks.run_check(c, self.program.tensor(c.target), tensors[c.target], env)
                            for c in self.program.checks)
        values = dict(program=self.program.name, chip=self.chip, cycles=self.cycles(),
                      instructions=self.program.instruction_count, events=len(self.issued),
                      utilisation=self.utilisation(), checks=results, tensors=tensors)
        steps = {f.name: self.stepped for f in fields(Result) if f.name not in values}  # `levels`
        return Result(**values, **steps)

    def utilisation(self) -> dict[str, float]:
        """Issues per queue per cycle for MEM slices, VXM ALUs and SXM queues; MXM MACs over the int8 peak, an
        fp16 pass holding its plane pair for `fp16_issue_interval_cycles`."""
        c, cycles = self.chip, max(self.cycles(), 1)
        queues = {Unit.MEM: c.mem_slices, Unit.VXM: c.vxm.alus, Unit.SXM: 2 * c.sxm.queues_per_hemisphere}
        out = {u.value: sum(i.queue.unit is u for i in self.issued) / (cycles * n) for u, n in queues.items()}
        passes = sum(2 * c.mxm.fp16_issue_interval_cycles if i.ins.dtype is DType.FP16 else 1
                     for i in self.issued if i.ins.op is Opcode.ABC)
        out["mxm_macs"] = passes * c.mxm.plane_rows * c.mxm.plane_columns / (cycles * c.macs_per_cycle_int8)
        return out


def _immediate(imm: float | int, dt: DType) -> np.ndarray:
    """An immediate as one element of `dt`: taken in the compute type (truncated for integer types), then
    narrowed like a result. The ISA docs leave this open; it is the fast engine's reading."""
    return nx.narrow(np.array([imm]).astype(np.float64 if dt.is_float else np.int64), dt)


# -- SXM lane movement, the same on every byte plane: [planes, lanes] -> [planes, lanes] ---------------------

def _shift(ins: Instruction, x: np.ndarray, _per: int) -> np.ndarray:
    """Lane i moves to lane i + lanes (north is up); lanes shifted in are zero."""
    out, n = np.zeros_like(x), x.shape[-1]
    for i in range(n):
        if 0 <= i + ins.lanes < n:
            out[:, i + ins.lanes] = x[:, i]
    return out


def _permute(ins: Instruction, x: np.ndarray, _per: int) -> np.ndarray:
    """Lane i moves to lane (i + rotate) mod lanes."""
    out, n = np.empty_like(x), x.shape[-1]
    for i in range(n):
        out[:, (i + ins.rotate) % n] = x[:, i]
    return out


def _distribute(ins: Instruction, x: np.ndarray, per: int) -> np.ndarray:
    """Within each superlane, output lane j takes input lane map16[j] (-1: zero)."""
    out = np.zeros_like(x)
    for base in range(0, x.shape[-1], per):
        for j, m in enumerate(ins.map16):
            if m >= 0:
                out[:, base + j] = x[:, base + m]
    return out


def _rotate(ins: Instruction, x: np.ndarray, _per: int) -> np.ndarray:
    """n streams in, n*n out: rotation r (streams r*n .. r*n+n-1) has input stream (i + r) mod n at i."""
    return np.stack([x[(i + r) % ins.n] for r in range(ins.n) for i in range(ins.n)])


def _transpose(ins: Instruction, x: np.ndarray, _per: int) -> np.ndarray:
    """Each 16-stream x 16-lane block swaps rows and columns: out[s][16 g + l] = in[l][16 g + s]."""
    out = np.empty_like(x)
    for g in range(0, x.shape[-1], 16):
        for s in range(16):
            for lane in range(16):
                out[s, g + lane] = x[lane, g + s]
    return out


_SXM = {
    Opcode.SHIFT: _shift,
    Opcode.PERMUTE: _permute,
    Opcode.DISTRIBUTE: _distribute,
    Opcode.ROTATE: _rotate,
    Opcode.TRANSPOSE: _transpose,
}

_EXECUTE = {
    Opcode.READ: _Machine.exec_read,
    Opcode.WRITE: _Machine.exec_write,
    Opcode.GATHER: _Machine.exec_gather,
    Opcode.SCATTER: _Machine.exec_scatter,
    **{op: _Machine.exec_vxm for op in VXM_UNARY | VXM_BINARY | {Opcode.SELECT, Opcode.CAST}},
    **{op: _Machine.exec_sxm for op in _SXM},
    Opcode.LW: _Machine.exec_lw,
    Opcode.IW: _Machine.exec_iw,
    Opcode.ABC: _Machine.exec_abc,
    Opcode.ACC: _Machine.exec_acc,
}

assert set(_EXECUTE) == set(Opcode) - ICU_OPS - C2C_OPS  # chip-to-chip traffic runs in openlpu.system only


def _validate(program: Program, chip: Chip) -> None:
    """The engine's static checks, plus: every Repeat follows an instruction it can re-issue."""
    validate.check_program(program, chip)
    for q, instrs in program.queues:
        issued = False
        for i, ins in enumerate(instrs):
            if ins.op is Opcode.REPEAT and not issued:
                raise ProgramError(f"{q} instruction {i} `repeat`: nothing to repeat; put it after the "
                                   "instruction it re-issues")
            issued |= ins.op not in ICU_OPS
