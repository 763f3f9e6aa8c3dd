"""Timing checks that need no data, and the data dependencies between events.

Everything here follows from issue cycles alone, so it is computed once, over whole arrays, before any value is.
Besides raising the errors a compiler can cause, it records for every event what it consumes:

- a MEM read: the write whose value it sees (or the initial SRAM);
- an LW: the IW that will install its rows; an ABC: the IW whose weights it multiplies;
- an ACC: the ABC products that have landed in its slot since the slot was last reset, in landing order;

and the matching dependency edges (producer -> consumer). With them the engine evaluates the program as a
dataflow graph, one NumPy step per opcode and dependency level, however many cycles it spans.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Geometry
from openlpu.isa.opcodes import Opcode
from openlpu.isa.types import DType, Unit
from openlpu.sim.events import Events

Describe = Callable[[int], str]
Violation = tuple[int, str]  # (cycle, message): the engine raises the earliest
OP_CODE = {op: i for i, op in enumerate(Opcode)}


@dataclass
class Edges:
    """Dependency edges, producer -> consumer, collected as arrays."""

    src: list[np.ndarray] = field(default_factory=list)
    dst: list[np.ndarray] = field(default_factory=list)

    def add(self, src, dst) -> None:
        self.src.append(np.asarray(src, dtype=np.int64).ravel())
        self.dst.append(np.asarray(dst, dtype=np.int64).ravel())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.src:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(self.src), np.concatenate(self.dst)


def mem_fields(ev: Events, chip: Chip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is_mem, global slice, address) per event."""
    geo = Geometry.of(chip)
    tslice = np.array(
        [geo.global_slice(t.queue.hemisphere, t.queue.index) if t.queue.unit is Unit.MEM else -1
         for t in ev.templates], dtype=np.int64)
    slices = tslice[ev.template] if len(ev) else np.zeros(0, np.int64)
    return slices >= 0, slices, ev.operand("addr")


@dataclass
class MemPlan:
    """Per event: the write a MEM read sees (-1: the initial SRAM), and whether the event's slice is `ordered`
    (touched by Gather/Scatter, whose addresses are data: such slices execute strictly in time order)."""

    source: np.ndarray
    ordered: np.ndarray


def earliest(*found: Violation | None) -> Violation | None:
    real = [v for v in found if v is not None]
    return min(real, key=lambda v: v[0]) if real else None


def check_mem(ev: Events, chip: Chip, ops: np.ndarray, edges: Edges, describe: Describe
              ) -> tuple[MemPlan, Violation | None]:
    """SRAM address and bank checks (the earliest violation, if any) and the plan of who reads what."""
    is_mem, slices, addr = mem_fields(ev, chip)
    bad = np.flatnonzero(is_mem & ((addr < 0) | (addr >= chip.mem.addresses_per_slice)))
    out_of_range = None
    if len(bad):
        e = bad[np.argmin(ev.cycle[bad])]
        out_of_range = (int(ev.cycle[e]), f"address {addr[e]} out of range 0..{chip.mem.addresses_per_slice - 1} "
                        f"(after Repeat advanced it) at {describe(e)}")
    is_write = np.isin(ops, [OP_CODE[Opcode.WRITE], OP_CODE[Opcode.SCATTER]])
    is_wide = np.isin(ops, [OP_CODE[Opcode.GATHER], OP_CODE[Opcode.SCATTER]])
    mem = np.flatnonzero(is_mem)
    when = ev.cycle[mem] + np.where(is_write[mem], chip.mem.write_latency_cycles, 0)
    bank = _check_banks(mem, slices[mem], when, np.where(is_wide[mem], -1, addr[mem] % chip.mem.banks_per_slice),
                        describe)
    ordered_slices = np.unique(slices[mem][is_wide[mem]])
    ordered = is_mem & np.isin(slices, ordered_slices)
    source = np.full(len(ev), -1, np.int64)
    plain = mem[~ordered[mem]]
    _link_words(plain, slices, addr, ev.cycle, is_write, chip, source, edges)
    _chain_ordered(np.flatnonzero(ordered), slices, ev.cycle, is_write, chip, edges)
    return MemPlan(source, ordered), earliest(out_of_range, bank)


def _check_banks(mem: np.ndarray, slices: np.ndarray, when: np.ndarray, bank: np.ndarray,
                 describe: Describe) -> Violation | None:
    key = when * (1 << 20) + slices  # time-major, so the first clash found is the earliest
    order = np.argsort(key, kind="stable")
    k = key[order]
    for i in np.flatnonzero(k[1:] == k[:-1]):
        a, b = order[i], order[i + 1]
        if bank[a] == bank[b] or bank[a] < 0 or bank[b] < 0:
            return int(when[a]), (
                f"bank conflict in cycle {when[a]}: {describe(mem[a])} and {describe(mem[b])} both access the same "
                "bank of one MEM slice (a slice reads one bank and writes the other in a cycle); move one by a "
                "cycle or put the data in the other bank (odd/even address)"
            )
    return None


def _link_words(events, slices, addr, cycle, is_write, chip, source, edges: Edges) -> None:
    """Each read sees the last write to its word committed at or before its issue cycle."""
    w = events[is_write[events]]
    r = events[~is_write[events]]
    if not len(w) or not len(r):
        return
    span = chip.mem.addresses_per_slice
    commit = cycle[w] + chip.mem.write_latency_cycles
    word_w, word_r = slices[w] * span + addr[w], slices[r] * span + addr[r]
    order = np.lexsort((commit, word_w))
    wk = word_w[order] * (1 << 40) + commit[order]
    hit = np.searchsorted(wk, word_r * (1 << 40) + cycle[r], side="right") - 1
    ok = (hit >= 0) & (word_w[order][np.maximum(hit, 0)] == word_r)
    source[r[ok]] = w[order[hit[ok]]]
    edges.add(w[order[hit[ok]]], r[ok])


def _chain_ordered(events, slices, cycle, is_write, chip, edges: Edges) -> None:
    """Gather/Scatter slices: every access after the previous one in time (writes at their commit cycle)."""
    if not len(events):
        return
    when = cycle[events] * 2 + np.where(is_write[events], 2 * chip.mem.write_latency_cycles + 1, 0)
    order = events[np.lexsort((when, slices[events]))]
    same = slices[order[1:]] == slices[order[:-1]]
    edges.add(order[:-1][same], order[1:][same])


class MxmChecker:
    """Walks MXM events in issue order: weights installed before use, the fp16 issue interval respected,
    accumulator slots holding a completed result when an ACC reads them.

    An ABC reads its activation and the installed weights at issue and lands in its accumulator slot
    `mxm.abc_latency_cycles` later; an ACC reads the slot at issue. So an ACC sees exactly the ABCs that landed
    by then, and may legally read a slot while the next ABC into it is still in flight.
    """

    def __init__(self, chip: Chip, ev: Events, edges: Edges, describe: Describe) -> None:
        self.chip, self.ev, self.edges, self.describe = chip, ev, edges, describe
        n = len(ev)
        self.install_of = np.full(n, -1, np.int64)  # LW -> the IW installing its rows; ABC -> the IW it uses
        self.landed: dict[int, list[int]] = {}  # ACC -> ABCs folded into the value it reads, in landing order
        self.shadow: dict = {}  # plane -> (dtype, [lw events])
        self.installed: dict = {}  # plane -> [(effective cycle, dtype, iw event)]
        self.last_abc: dict = {}  # plane -> cycle
        self.abcs: dict = {}  # (plane, slot) -> [(lands, event, accumulate, dtype)], in issue order
        self.starts: dict = {}  # (plane, slot) -> per ABC of `abcs`, the index of the last non-accumulating one
        self.accs: list = []  # (plane, slot, cycle, event)
        self.violation: Violation | None = None

    def fail(self, e: int, message: str) -> None:
        self.violation = earliest(self.violation, (int(self.ev.cycle[e]), f"{self.describe(e)}{message}"))

    def run(self, events: np.ndarray, slot: np.ndarray, row: np.ndarray) -> None:
        self.row = row
        for e in events.tolist():
            t = self.ev.templates[self.ev.template[e]]
            plane = (t.queue.hemisphere, t.instruction.plane)
            getattr(self, "_" + t.instruction.op.value)(e, plane, t.instruction, int(self.ev.cycle[e]),
                                                        int(slot[e]))
        self._link_accumulators()

    def _lw(self, e, plane, ins, cycle, _slot) -> None:
        dtype, lws = self.shadow.get(plane, (ins.dtype, []))
        if dtype is not ins.dtype:
            return self.fail(e, f"loads {ins.dtype.value} rows into a shadow buffer that already holds "
                                f"{dtype.value} rows; install (IW) them first")
        rows = self.chip.streams.streams_per_direction // ins.dtype.width_bytes
        row = int(self.row[e])
        if row + rows > self.chip.mxm.plane_rows:
            return self.fail(e, f"loads rows {row}..{row + rows - 1} (after Repeat advanced the row) but a plane "
                                f"has rows 0..{self.chip.mxm.plane_rows - 1}")
        self.shadow[plane] = (dtype, lws + [e])

    def _iw(self, e, plane, ins, cycle, _slot) -> None:
        if plane not in self.shadow:
            return self.fail(e, "installs an empty shadow buffer; load weights with LW first")
        dtype, lws = self.shadow.pop(plane)
        self.install_of[lws] = e
        self.edges.add(lws, np.full(len(lws), e))
        self.installed.setdefault(plane, []).append((cycle + self.chip.mxm.iw_latency_cycles, dtype, e))

    def _abc(self, e, plane, ins, cycle, slot) -> None:
        installs = self.installed.get(plane, [])
        active = bisect.bisect_right(installs, cycle, key=lambda i: i[0]) - 1
        if active < 0:
            return self.fail(e, f"MXM plane {plane[1]} ({plane[0].value}) is used before weights are installed; "
                                "issue LW and IW, and the ABC at least "
                                f"{self.chip.mxm.iw_latency_cycles} cycle(s) after the IW")
        _, dtype, iw = installs[active]
        if dtype is not ins.dtype:
            return self.fail(e, f"streams {ins.dtype.value} activations into {dtype.value} weights")
        if not 0 <= slot < self.chip.mxm.accumulator_vectors:
            return self.fail(e, f"slot {slot} (after Repeat advanced it) is outside "
                                f"0..{self.chip.mxm.accumulator_vectors - 1}")
        gap = self.chip.mxm.fp16_issue_interval_cycles if dtype is DType.FP16 else 1
        if plane in self.last_abc and cycle - self.last_abc[plane] < gap:
            self.fail(e, f"ABC issued {cycle - self.last_abc[plane]} cycle(s) after the previous one on this "
                         f"plane; {dtype.value} takes one every {gap}")
        history = self.abcs.setdefault((plane, slot), [])
        if ins.accumulate and history and history[-1][3] is not dtype:
            self.fail(e, f"accumulates {dtype.value} products into slot {slot}, which holds "
                         f"{history[-1][3].value} results; start the slot with accumulate=false")
        self.last_abc[plane] = cycle
        self.install_of[e] = iw
        self.edges.add([iw], [e])
        history.append((cycle + self.chip.mxm.abc_latency_cycles, e, bool(ins.accumulate), dtype))
        starts = self.starts.setdefault((plane, slot), [])
        if ins.accumulate:
            starts.append(starts[-1] if starts else 0)
        else:
            starts.append(len(history) - 1)

    def _acc(self, e, plane, ins, cycle, slot) -> None:
        if not 0 <= slot < self.chip.mxm.accumulator_vectors:
            return self.fail(e, f"slot {slot} (after Repeat advanced it) is outside "
                                f"0..{self.chip.mxm.accumulator_vectors - 1}")
        self.accs.append((plane, slot, cycle, e))

    def _link_accumulators(self) -> None:
        """An ACC reads the fold of the products landed in its slot since the last non-accumulating one."""
        for plane, slot, cycle, e in self.accs:
            history = self.abcs.get((plane, slot), [])
            # ABCs land a fixed latency after issue and are walked in issue order: the landed ones are a prefix
            landed = bisect.bisect_right(history, cycle, key=lambda h: h[0])
            if not landed:
                hint = (f"; the first ABC into it lands at cycle {history[0][0]}, so issue the ACC "
                        f"{history[0][0] - cycle} cycle(s) later") if history else ""
                self.fail(e, f"reads accumulator slot {slot}, which holds no completed ABC result at cycle "
                             f"{cycle}{hint}")
                continue
            used = [a for _, a, _, _ in history[self.starts[(plane, slot)][landed - 1]:landed]]
            self.landed[e] = used
            self.edges.add(used, np.full(len(used), e))
