"""The reference simulator: slow, obvious, one cycle at a time. It is the specification `engine.simulate` must
match bit for bit (same cycles, same tensors, the same error class at the same cycle).

It shares no code with the fast path's timing, wiring, hazard or execution steps (`timing`, `events`, `streams`,
`hazards`, `execute`). It reuses only the tables (`semantics`), the numerics (`numerics`), the SRAM layout
(`memory`), the static checks (`validate`) and the `.check` evaluation (`checks`).

State is explicit: per queue a program counter and the next cycle it may issue in; a stream register file holding,
for every direction, stream and position, which write's byte plane sits there (each write remembers how often it
was read); the SRAM; per MXM plane a shadow buffer, the active weights and the accumulator slots; and the state
updates and stream writes still in flight, keyed by the cycle they land in. Each cycle c runs these steps in order:

1. Streams move: every value on an eastward stream register moves from position p to p + 1 (westward: p - 1);
   values leaving the chip edge are gone.
2. State updates due in cycle c land: SRAM writes commit (`mem.write_latency` after issue), IW weights become
   active (`mxm.iw_latency`), ABC products reach their accumulator slot (`mxm.abc_latency`; `accumulate=true`
   adds to the slot's value at landing, fp32 or int32).
3. Each queue issues at most one instruction. `nop n` idles n cycles; `repeat n d` re-issues the previous
   instruction n more times d cycles apart (the first d cycles after its last issue), advancing its address, row
   or slot by `semantics.advance_step`; `config` takes one cycle; `sync` parks the queue; `notify` takes one cycle
   and releases every parked queue (their Syncs issued at or before c), which resume at c + `icu.notify_latency`.
4. Issue-time checks: MEM addresses, LW rows and ABC/ACC slots in range after Repeat advanced them; per MEM slice, the read issued in c and the write committing in c
   must use different banks (address % banks); a Gather or Scatter conflicts with any other access.
5. Every issued instruction reads its stream operands at its own position, marking each value read. A value
   written in cycle c is not there yet (step 7), so a value written at p in cycle T is read at a position q
   strictly downstream in cycle T + |q - p|, never at p itself.
6. Instructions execute in `semantics.PHASE` order (readers of a state before its writers: MEM reads, VXM, SXM,
   ACC, ABC, IW, LW, MEM writes), then in the program's queue order. MEM reads and ACC read their state at issue,
   ABC multiplies at issue by the weights active then, IW takes the shadow buffer at issue (emptying it), LW writes
   the shadow buffer at issue. Results are scheduled `semantics.latency` cycles later.
7. Stream writes due in cycle c are placed in the register at their producer's position. Two writes to one place
   in one cycle, or replacing a value nobody read (it was overwritten downstream of its producer), is an error.

Violations (`Kind`) are ScheduleErrors. By default the first one raises at once; with `keep_going=True` the run
continues (a missing value reads as zeros, an out-of-range access is skipped) and the first is raised at the end
with every violation found attached as `error.violations`: a tool for comparing error reports with the fast path.

Cycles: (the last cycle in which anything lands at superlane 0: a stream write, an SRAM commit, a weight install,
an accumulator update, an LW, or a queue's last busy cycle) + `superlanes`, as `engine` defines it. Utilisation
uses the engine's definitions; the engine's count of execution steps (`levels`) is here the number of cycles
stepped (the reference runs one cycle per step).
"""

from __future__ import annotations

import enum
from collections import defaultdict
from dataclasses import dataclass, field, fields
from typing import Callable

import numpy as np

from openlpu.errors import ProgramError, ScheduleError
from openlpu.hardware.chip import Chip, load_chip
from openlpu.hardware.geometry import Geometry
from openlpu.isa.asm import format_instruction
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import ICU_OPS, MEM_OPS, VXM_BINARY, VXM_UNARY, Opcode
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
    REPEAT_LATE = "Repeat due before the queue reached it"


@dataclass(frozen=True, slots=True)
class Violation:
    kind: Kind
    cycle: int  # the cycle the rule is broken in (for CLOBBERED: the overwrite)
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
    """Run `program` one cycle at a time; the same contract as `engine.simulate`."""
    chip = chip or load_chip(program.chip or "groqchip1")
    _validate(program, chip)
    machine = _Machine(program, chip, keep_going)
    initial = machine.load(inputs or {})
    machine.run()
    return machine.result(initial if run_checks else None)


# -- one issued instruction --------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Instance:
    queue: QueueId
    index: int
    ins: Instruction
    cycle: int
    k: int  # repeat counter: 0 for the first issue
    position: int
    step: int  # what Repeat advances addr / row / slot by

    def operand(self, name: str) -> int:
        return getattr(self.ins, name) + self.k * self.step

    def describe(self) -> str:
        rep = f" (repeat {self.k})" if self.k else ""
        return f"cycle {self.cycle}, {self.queue} instruction {self.index}{rep} `{format_instruction(self.ins)}`"


# -- an instruction queue ----------------------------------------------------------------------------------------

class _Queue:
    """Program counter and next issue cycle of one queue, stepped once per cycle."""

    def __init__(self, queue: QueueId, instrs: tuple[Instruction, ...]) -> None:
        self.queue, self.instrs = queue, instrs
        self.pc = 0
        self.next_cycle = 0
        self.last: tuple[int, Instruction, int, int] | None = None  # index, instruction, cycle, k of last issue
        self.repeats: list[tuple[int, int]] = []  # (cycle, k) of re-issues still due from the current Repeat
        self.parked_at: int | None = None  # issue cycle of the Sync the queue waits at

    @property
    def done(self) -> bool:
        return self.pc == len(self.instrs) and not self.repeats and self.parked_at is None

    def step(self, c: int, late: Callable[[str], None]) -> tuple[int, Instruction, int] | Opcode | None:
        """Cycle c: issue (index, instruction, k), Opcode.NOTIFY, or nothing. `late(message)` reports a Repeat
        whose first re-issue falls before the cycle the queue reaches it."""
        if self.parked_at is not None:
            return None
        if self.repeats:
            return self._reissue(c)
        while self.pc < len(self.instrs) and self.next_cycle <= c:
            ins = self.instrs[self.pc]
            self.pc += 1
            if ins.op is Opcode.NOP:
                self.next_cycle += ins.n
            elif ins.op is Opcode.SYNC:
                self.parked_at = c
                return None
            elif ins.op in (Opcode.NOTIFY, Opcode.CONFIG):
                self.next_cycle = c + 1
                return Opcode.NOTIFY if ins.op is Opcode.NOTIFY else None
            elif ins.op is Opcode.REPEAT:
                return self._start_repeat(c, ins, late)
            else:
                self.last = (self.pc - 1, ins, c, 0)
                self.next_cycle = c + 1
                return self.pc - 1, ins, 0
        return None

    def _start_repeat(self, c: int, ins: Instruction, late: Callable[[str], None]) -> tuple[int, Instruction, int] | None:
        index, prev, t_last, k_last = self.last  # `_validate` made sure something precedes every Repeat
        first = t_last + ins.d
        if first < c:
            late(f"{self.queue} instruction {self.pc - 1} `repeat n={ins.n} d={ins.d}` at cycle {c}: its first "
                 f"re-issue of instruction {index} is due in cycle {first}, d={ins.d} cycle(s) after that "
                 f"instruction's last issue in cycle {t_last}, but a nop, config, sync or notify in between kept "
                 "the queue busy until now; put the repeat directly after the instruction it re-issues")
            first = c
        self.repeats = [(first + ins.d * j, k_last + 1 + j) for j in range(ins.n)]
        return self._reissue(c)

    def _reissue(self, c: int) -> tuple[int, Instruction, int] | None:
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


# -- the stream register file ------------------------------------------------------------------------------------

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


_DIR = {Direction.E: 0, Direction.W: 1}


# -- MXM state ---------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Plane:
    shadow: tuple[DType, np.ndarray] | None = None  # weights being loaded by LW
    active: tuple[DType, np.ndarray] | None = None  # weights ABC multiplies by
    slots: dict[int, np.ndarray] = field(default_factory=dict)  # landed accumulator vectors
    last_abc: int | None = None


# -- the machine -------------------------------------------------------------------------------------------------

class _Machine:
    def __init__(self, program: Program, chip: Chip, keep_going: bool) -> None:
        self.program, self.chip, self.keep_going = program, chip, keep_going
        self.geo = Geometry.of(chip)
        self.lanes = chip.lanes.lanes
        self.streams = _Streams(chip.streams.streams_per_direction, self.geo.positions)
        self.queues = [_Queue(q, instrs) for q, instrs in program.queues]
        self.queue_order = {q: i for i, (q, _) in enumerate(program.queues)}
        self.planes: dict[tuple, _Plane] = defaultdict(_Plane)
        self.landing: dict[int, list[tuple]] = defaultdict(list)  # cycle -> state updates (kind, ...)
        self.arriving: dict[int, list[_Write]] = defaultdict(list)  # cycle -> stream writes
        self.violations: list[Violation] = []
        self.issued: list[_Instance] = []
        self.last_effect = -1
        self.stepped = 0

    # -- reporting -------------------------------------------------------------------------------------------
    def violate(self, kind: Kind, cycle: int, message: str, written: int | None = None) -> None:
        self.violations.append(Violation(kind, cycle, message, written))
        if not self.keep_going:
            raise self.error()

    def error(self) -> ScheduleError:
        first = self.violations[0]
        more = len(self.violations) - 1
        e = ScheduleError(first.message + (f"\n(and {more} more violation(s))" if more and self.keep_going else ""))
        e.violations = tuple(self.violations)
        return e

    def effect(self, cycle: int) -> None:
        self.last_effect = max(self.last_effect, cycle)

    # -- setup and the cycle loop ----------------------------------------------------------------------------
    def load(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = sorted(set(inputs) - {t.name for t in self.program.tensors})
        if unknown:
            raise ProgramError(f"inputs {unknown} name no tensor of program {self.program.name}")
        self.sram = memory.new_sram(self.chip)
        initial = {}
        for t in self.program.tensors:
            value = np.asarray(inputs[t.name]) if t.name in inputs else memory.init_values(t)
            if value.shape != (t.rows, t.cols):
                raise ProgramError(f"input {t.name}: shape {value.shape} but the tensor is {t.rows}x{t.cols}")
            initial[t.name] = value.astype(t.dtype.numpy)
            memory.store(self.sram, t, initial[t.name], self.chip)
        return initial

    def run(self) -> None:
        c = 0
        while self.landing or self.arriving or not all(q.done or q.parked_at is not None for q in self.queues):
            self.step(c)
            c += 1
        self.stepped = c
        for q in self.queues:
            if q.parked_at is not None:
                self.violate(Kind.PARKED, q.parked_at, (
                    f"{q.queue} instruction {q.pc - 1} `sync` at cycle {q.parked_at}: the queue stays parked forever "
                    "because no `notify` issues at or after that cycle; add a `notify` on some queue after it"))
        if self.violations:
            raise self.error()

    def step(self, c: int) -> None:
        self.streams.shift()
        commits = self.land(c)
        issued = self.issue(c)
        self.check_mem(c, issued, commits)
        self.check_mxm_ranges(issued)
        operands = [self.read_operands(inst) for inst in issued]
        order = sorted(range(len(issued)), key=lambda i: (semantics.PHASE[issued[i].ins.op],
                                                          self.queue_order[issued[i].queue]))
        for i in order:
            _EXECUTE[issued[i].ins.op](self, issued[i], operands[i])
        self.place(c)

    # -- step 2: state updates landing ------------------------------------------------------------------------
    def land(self, c: int) -> list[tuple]:
        """Apply the state updates due in cycle c; returns the SRAM commits (for the bank check)."""
        commits = []
        for update in self.landing.pop(c, []):
            self.effect(c)
            kind, *rest = update
            if kind == "commit":
                inst, slice_, addresses, plane = rest
                self.sram[slice_, addresses, np.arange(self.lanes)] = plane
                commits.append(update)
            elif kind == "install":
                key, weights = rest
                self.planes[key].active = weights
            else:  # "product"
                key, slot, product, add, dtype = rest
                old = self.planes[key].slots.get(slot)
                self.planes[key].slots[slot] = nx.accumulate(old, product, dtype) if add and old is not None \
                    else product
        return commits

    # -- step 3: issue ---------------------------------------------------------------------------------------
    def issue(self, c: int) -> list[_Instance]:
        issued, notified = [], False
        for q in self.queues:
            late = lambda message, q=q: self.violate(Kind.REPEAT_LATE, c, message)  # noqa: E731
            what = q.step(c, late)
            if what is Opcode.NOTIFY:
                notified = True
            elif what is not None:
                index, ins, k = what
                issued.append(_Instance(q.queue, index, ins, c, k, semantics.position(self.geo, self.chip, q.queue),
                                        semantics.advance_step(self.chip, ins)))
        if notified:
            for q in self.queues:
                if q.parked_at is not None:
                    q.resume(c + self.chip.icu.notify_latency_cycles)
        self.issued += issued
        return issued

    # -- step 4: MEM addresses and banks ---------------------------------------------------------------------
    def check_mem(self, c: int, issued: list[_Instance], commits: list[tuple]) -> None:
        limit = self.chip.mem.addresses_per_slice
        per_slice: dict[int, list[tuple[int | None, str]]] = defaultdict(list)
        for inst in issued:
            if inst.ins.op not in MEM_OPS:
                continue
            addr = inst.operand("addr")
            if not 0 <= addr < limit:
                self.violate(Kind.ADDRESS, c, f"address {addr} out of range 0..{limit - 1} (after Repeat advanced "
                                              f"it) at {inst.describe()}")
            elif inst.ins.op in (Opcode.READ, Opcode.GATHER):
                per_slice[self.slice_of(inst)].append((self.bank(inst, addr), inst.describe()))
        for _, inst, slice_, _, _ in commits:
            per_slice[slice_].append((self.bank(inst, inst.operand("addr")), f"the write committing from "
                                                                             f"{inst.describe()}"))
        for accesses in per_slice.values():
            for i, (bank_a, who_a) in enumerate(accesses):
                for bank_b, who_b in accesses[i + 1:]:
                    if bank_a is None or bank_b is None or bank_a == bank_b:
                        self.violate(Kind.BANK, c, f"bank conflict in cycle {c}: {who_a} and {who_b} use the same "
                                                   "bank of one MEM slice; move one by a cycle or use the other "
                                                   "bank (odd/even address)")

    def check_mxm_ranges(self, issued: list[_Instance]) -> None:
        """Repeat advances LW rows and ABC/ACC slots as it advances MEM addresses; they must stay on the plane."""
        m = self.chip.mxm
        for inst in issued:
            if inst.ins.op is Opcode.LW:
                row, rows = inst.operand("row"), validate.lw_rows(self.chip, inst.ins.dtype)
                if row + rows > m.plane_rows:
                    self.violate(Kind.MXM_RANGE, inst.cycle, f"{inst.describe()}: rows {row}..{row + rows - 1} "
                                                             f"(after Repeat advanced them) are outside the plane's "
                                                             f"0..{m.plane_rows - 1}")
            elif inst.ins.op in (Opcode.ABC, Opcode.ACC) and inst.operand("slot") >= m.accumulator_vectors:
                self.violate(Kind.MXM_RANGE, inst.cycle, f"{inst.describe()}: slot {inst.operand('slot')} (after "
                                                         f"Repeat advanced it) is outside 0..{m.accumulator_vectors - 1}")

    def bank(self, inst: _Instance, addr: int) -> int | None:
        """The bank an access uses; None for Gather and Scatter, which may touch either."""
        if inst.ins.op in (Opcode.GATHER, Opcode.SCATTER):
            return None
        return addr % self.chip.mem.banks_per_slice

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
                    f"read of stream {direction.value}{stream} holding no value at {self.geo.name(inst.position)} "
                    f"in cycle {inst.cycle}: {inst.describe()}; nothing written upstream arrives here in this cycle"))
                continue
            w.reads += 1
            planes[i] = w.plane
        return planes

    def send(self, inst: _Instance, planes: np.ndarray) -> None:
        """Schedule the result planes onto the instruction's output streams `latency` cycles after issue."""
        when = inst.cycle + semantics.latency(self.chip, inst.ins.op)
        for plane, (direction, stream) in zip(planes, semantics.stream_writes(inst.ins), strict=True):
            self.arriving[when].append(_Write(plane.copy(), inst, direction, stream, inst.position, when))

    # -- step 7: stream writes -------------------------------------------------------------------------------
    def place(self, c: int) -> None:
        taken: dict[tuple, _Write] = {}
        for w in self.arriving.pop(c, []):
            self.effect(c)
            where = (w.direction, w.stream, w.position)
            name = f"stream {w.direction.value}{w.stream} at {self.geo.name(w.position)}"
            if where in taken:
                self.violate(Kind.TWO_WRITERS, c, f"two producers write {name} in cycle {c}: "
                                                  f"{taken[where].writer.describe()} and {w.writer.describe()}")
                continue
            old = self.streams.at(*where)
            if old is not None and old.reads == 0:
                self.violate(Kind.CLOBBERED, c, (
                    f"{name}: the value written in cycle {old.cycle} at {self.geo.name(old.position)} by "
                    f"{old.writer.describe()} is overwritten in cycle {c} by {w.writer.describe()} before any "
                    "instruction read it"), written=old.cycle)
            taken[where] = w
            self.streams.put(w)

    # -- step 6: executors -----------------------------------------------------------------------------------
    def lane_addresses(self, inst: _Instance, map_planes: np.ndarray) -> np.ndarray | None:
        """Per-lane addresses of a Gather/Scatter: addr + the 16-bit offset on the map streams (low byte first)."""
        addresses = inst.operand("addr") + map_planes[0].astype(np.int64) + 256 * map_planes[1].astype(np.int64)
        limit = self.chip.mem.addresses_per_slice
        if ((addresses < 0) | (addresses >= limit)).any():
            self.violate(Kind.LANE_ADDRESS, inst.cycle, f"{inst.describe()}: a lane address from the map stream is "
                                                        f"outside 0..{limit - 1}")
            return None
        return addresses

    def commit(self, inst: _Instance, addresses: np.ndarray, plane: np.ndarray) -> None:
        when = inst.cycle + self.chip.mem.write_latency_cycles
        self.landing[when].append(("commit", inst, self.slice_of(inst), addresses, plane.copy()))

    def mem_ok(self, inst: _Instance) -> bool:
        return 0 <= inst.operand("addr") < self.chip.mem.addresses_per_slice

    def exec_read(self, inst: _Instance, _planes: np.ndarray) -> None:
        plane = self.sram[self.slice_of(inst), inst.operand("addr")] if self.mem_ok(inst) else 0
        self.send(inst, np.zeros((1, self.lanes), np.uint8) + plane)

    def exec_write(self, inst: _Instance, planes: np.ndarray) -> None:
        if self.mem_ok(inst):
            self.commit(inst, np.full(self.lanes, inst.operand("addr")), planes[0])

    def exec_gather(self, inst: _Instance, planes: np.ndarray) -> None:
        addresses = self.lane_addresses(inst, planes[:2]) if self.mem_ok(inst) else None
        out = np.zeros((1, self.lanes), np.uint8)
        if addresses is not None:
            out[0] = self.sram[self.slice_of(inst), addresses, np.arange(self.lanes)]
        self.send(inst, out)

    def exec_scatter(self, inst: _Instance, planes: np.ndarray) -> None:
        addresses = self.lane_addresses(inst, planes[:2]) if self.mem_ok(inst) else None
        if addresses is not None:
            self.commit(inst, addresses, planes[2])

    def exec_vxm(self, inst: _Instance, planes: np.ndarray) -> None:
        ins, dt = inst.ins, inst.ins.dtype
        w = dt.width_bytes
        operand = [nx.planes_to_values(planes[i * w:(i + 1) * w], dt) for i in range(len(planes) // w)]
        out_dt = dt
        if ins.op in VXM_UNARY:
            out = nx.vxm_unary(ins.op, operand[0], dt)
        elif ins.op in VXM_BINARY:
            second = operand[1] if ins.b is not None else _immediate(ins.imm, dt)
            out = nx.vxm_binary(ins.op, operand[0], second, dt)
        elif ins.op is Opcode.SELECT:
            out = nx.vxm_select(*operand)
        else:  # CAST
            out, out_dt = nx.convert(operand[0], dt, ins.to), ins.to
        self.send(inst, nx.values_to_planes(np.broadcast_to(out, (self.lanes,)), out_dt))

    def exec_sxm(self, inst: _Instance, planes: np.ndarray) -> None:
        self.send(inst, _SXM[inst.ins.op](inst.ins, planes, self.chip.lanes.lanes_per_superlane))

    def exec_lw(self, inst: _Instance, planes: np.ndarray) -> None:
        self.effect(inst.cycle)  # LW's latency is 0: the shadow buffer changes at issue
        ins, plane = inst.ins, self.planes[(inst.queue.hemisphere, inst.ins.plane)]
        if plane.shadow is not None and plane.shadow[0] is not ins.dtype:
            self.violate(Kind.SHADOW_DTYPE, inst.cycle, f"{inst.describe()}: loads {ins.dtype.value} rows into a "
                                                        f"shadow buffer holding {plane.shadow[0].value} rows; "
                                                        "install (IW) them first")
            return
        if plane.shadow is None:
            plane.shadow = (ins.dtype, np.zeros((self.chip.mxm.plane_rows, self.lanes), ins.dtype.numpy))
        w = ins.dtype.width_bytes
        rows = nx.planes_to_values(planes.reshape(-1, w, self.lanes), ins.dtype)  # row i = streams i*w..i*w+w-1
        row = inst.operand("row")
        plane.shadow[1][row:row + len(rows)] = rows

    def exec_iw(self, inst: _Instance, _planes: np.ndarray) -> None:
        key = (inst.queue.hemisphere, inst.ins.plane)
        if self.planes[key].shadow is None:
            self.violate(Kind.IW_EMPTY, inst.cycle, f"{inst.describe()}: installs an empty shadow buffer; load "
                                                    "weights with LW first")
            return
        weights, self.planes[key].shadow = self.planes[key].shadow, None
        self.landing[inst.cycle + self.chip.mxm.iw_latency_cycles].append(("install", key, weights))

    def exec_abc(self, inst: _Instance, planes: np.ndarray) -> None:
        ins, c = inst.ins, inst.cycle
        key = (inst.queue.hemisphere, ins.plane)
        plane = self.planes[key]
        weights_ok = plane.active is not None and plane.active[0] is ins.dtype
        if plane.active is None:
            self.violate(Kind.NO_WEIGHTS, c, f"{inst.describe()}: MXM plane {ins.plane} ({key[0].value}) is used "
                                             "before weights are installed; issue LW and IW, and the ABC at least "
                                             f"{self.chip.mxm.iw_latency_cycles} cycle(s) after the IW")
        elif not weights_ok:
            self.violate(Kind.WEIGHTS_DTYPE, c, f"{inst.describe()}: streams {ins.dtype.value} activations into "
                                                f"{plane.active[0].value} weights")
        gap = self.chip.mxm.fp16_issue_interval_cycles if ins.dtype is DType.FP16 else 1
        if plane.last_abc is not None and c - plane.last_abc < gap:
            self.violate(Kind.ABC_INTERVAL, c, f"{inst.describe()}: ABC issued {c - plane.last_abc} cycle(s) after "
                                               f"the previous one on this plane; {ins.dtype.value} takes one every "
                                               f"{gap}")
        plane.last_abc = c
        if weights_ok:
            acts = nx.planes_to_values(planes, ins.dtype)
            product = nx.mxm_pass(acts[None, :], plane.active[1], ins.dtype)[0]
            self.landing[c + self.chip.mxm.abc_latency_cycles].append(
                ("product", key, inst.operand("slot"), product, bool(ins.accumulate), ins.dtype))

    def exec_acc(self, inst: _Instance, _planes: np.ndarray) -> None:
        slot = inst.operand("slot")
        value = self.planes[(inst.queue.hemisphere, inst.ins.plane)].slots.get(slot)
        if value is None:
            self.violate(Kind.ACC_EMPTY, inst.cycle, f"{inst.describe()}: reads accumulator slot {slot}, which "
                                                     f"holds no completed ABC result at cycle {inst.cycle}")
            value = np.zeros(self.lanes, np.int32)
        self.send(inst, nx.values_to_planes(value, DType.INT32 if value.dtype == np.int32 else DType.FP32))

    # -- the result ------------------------------------------------------------------------------------------
    def cycles(self) -> int:
        last = max([q.next_cycle for q in self.queues], default=0) - 1
        last = max(last, self.last_effect)
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
        # the engine's count of execution steps (`levels`, formerly `batches`): here, the cycles stepped
        steps = {f.name: self.stepped for f in fields(Result) if f.name not in values}
        return Result(**values, **steps)

    def utilisation(self) -> dict[str, float]:
        """Issues per queue per cycle for MEM slices, VXM ALUs and SXM queues; MXM MACs over the int8 peak."""
        c, cycles = self.chip, max(self.cycles(), 1)
        queues = {Unit.MEM: c.mem_slices, Unit.VXM: c.vxm.alus, Unit.SXM: 2 * c.sxm.queues_per_hemisphere}
        out = {u.value: sum(i.queue.unit is u for i in self.issued) / (cycles * n) for u, n in queues.items()}
        passes = sum(2 * c.mxm.fp16_issue_interval_cycles if i.ins.dtype is DType.FP16 else 1
                     for i in self.issued if i.ins.op is Opcode.ABC)  # an fp16 pass holds a plane pair that long
        out["mxm_macs"] = passes * c.mxm.plane_rows * c.mxm.plane_columns / (cycles * c.macs_per_cycle_int8)
        return out


def _immediate(imm: float | int, dt: DType) -> np.ndarray:
    """An immediate operand as one element of `dt`: taken in the compute type (truncated for integer types) and
    narrowed like a result. The ISA docs leave this open; this is the fast path's reading."""
    return nx.narrow(np.array([imm]).astype(np.float64 if dt.is_float else np.int64), dt)


# -- SXM lane movement, per byte plane: [planes, lanes] -> [planes, lanes] ---------------------------------------

def _shift(ins: Instruction, x: np.ndarray, _per: int) -> np.ndarray:
    """Lane i moves to lane i + lanes (north is up); lanes shifted in are zero."""
    out = np.zeros_like(x)
    n = x.shape[-1]
    for i in range(n):
        if 0 <= i + ins.lanes < n:
            out[:, i + ins.lanes] = x[:, i]
    return out


def _permute(ins: Instruction, x: np.ndarray, _per: int) -> np.ndarray:
    """Lane i moves to lane (i + rotate) mod lanes."""
    n = x.shape[-1]
    out = np.empty_like(x)
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
    """n input streams -> n*n output streams: rotation r (streams r*n .. r*n+n-1) is input (i + r) mod n at i."""
    n = ins.n
    return np.stack([x[(i + r) % n] for r in range(n) for i in range(n)])


def _transpose(ins: Instruction, x: np.ndarray, _per: int) -> np.ndarray:
    """16 streams x 16 lanes blocks swap rows and columns: out[s][16 g + l] = in[l][16 g + s]."""
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

assert set(_EXECUTE) == set(Opcode) - ICU_OPS


def _validate(program: Program, chip: Chip) -> None:
    """The static checks `engine.simulate` makes, plus: every Repeat follows an instruction it can re-issue."""
    for q, instrs in program.queues:
        validate.check_queue(chip, q)
        issued = False
        for i, ins in enumerate(instrs):
            validate.check_instruction(chip, q, i, ins)
            if ins.op is Opcode.REPEAT and not issued:
                raise ProgramError(f"{q} instruction {i} `repeat`: nothing to repeat; put it after the instruction "
                                   "it re-issues")
            issued |= ins.op not in ICU_OPS
    names = [t.name for t in program.tensors]
    if len(set(names)) != len(names):
        raise ProgramError(f"program {program.name}: tensor names repeat: {names}")
    for t in program.tensors:
        memory.check_tensor(t, chip)
    clash = memory.overlaps(program.tensors, chip)
    if clash:
        raise ProgramError(f"tensors {clash[0]} and {clash[1]} overlap in SRAM; move one to other slices/addresses")
    for c in program.checks:
        if c.target not in names:
            raise ProgramError(f"check on unknown tensor {c.target!r}; tensors are {names}")
