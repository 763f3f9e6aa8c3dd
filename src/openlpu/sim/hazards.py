"""Timing checks that need no data, and the dependency edges that let the engine batch independent events.

For every event, `first_use` is the earliest issue cycle of an event that consumes its result (stream value,
SRAM word, MXM weights or accumulator). Events issued before that cycle cannot depend on it, which is what lets
the engine execute long runs of events as one NumPy step.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from openlpu.errors import ScheduleError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Geometry
from openlpu.isa.opcodes import Opcode
from openlpu.isa.types import DType, Unit
from openlpu.sim.events import Events

NEVER = np.iinfo(np.int64).max
Describe = Callable[[int], str]


def mem_fields(ev: Events, chip: Chip) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(is_mem, global slice, address) per event."""
    geo = Geometry.of(chip)
    tslice = np.array(
        [geo.global_slice(t.queue.hemisphere, t.queue.index) if t.queue.unit is Unit.MEM else -1
         for t in ev.templates], dtype=np.int64)
    slices = tslice[ev.template] if len(ev) else np.zeros(0, np.int64)
    return slices >= 0, slices, ev.operand("addr")


def check_mem(ev: Events, chip: Chip, ops: np.ndarray, first_use: np.ndarray, describe: Describe) -> None:
    is_mem, slices, addr = mem_fields(ev, chip)
    bad = np.flatnonzero(is_mem & ((addr < 0) | (addr >= chip.mem.addresses_per_slice)))
    if len(bad):
        e = bad[0]
        raise ScheduleError(
            f"address {addr[e]} out of range 0..{chip.mem.addresses_per_slice - 1} (after Repeat advanced it) "
            f"at {describe(e)}"
        )
    code = {op: i for i, op in enumerate(Opcode)}
    is_write = np.isin(ops, [code[Opcode.WRITE], code[Opcode.SCATTER]])
    is_wide = np.isin(ops, [code[Opcode.GATHER], code[Opcode.SCATTER]])
    mem = np.flatnonzero(is_mem)
    when = ev.cycle[mem] + np.where(is_write[mem], chip.mem.write_latency_cycles, 0)
    _check_banks(mem, slices[mem], when, np.where(is_wide[mem], -1, addr[mem] % chip.mem.banks_per_slice),
                 describe)
    _mem_dependencies(mem, slices[mem], addr[mem], when, is_write[mem], is_wide[mem], ev.cycle, first_use, chip)


def _check_banks(mem: np.ndarray, slices: np.ndarray, when: np.ndarray, bank: np.ndarray, describe: Describe) -> None:
    key = slices * (1 << 40) + when
    order = np.argsort(key, kind="stable")
    k = key[order]
    same = np.flatnonzero(k[1:] == k[:-1])
    for i in same:
        a, b = order[i], order[i + 1]
        if bank[a] == bank[b] or bank[a] < 0 or bank[b] < 0:
            raise ScheduleError(
                f"bank conflict in cycle {when[a]}: {describe(mem[a])} and {describe(mem[b])} both access the same "
                "bank of one MEM slice (a slice reads one bank and writes the other in a cycle); move one by a "
                "cycle or put the data in the other bank (odd/even address)"
            )


def _mem_dependencies(mem, slices, addr, when, is_write, is_wide, cycle, first_use, chip) -> None:
    """Each write's first_use: the next read of its word (any read of its slice for Gather/Scatter)."""
    span = chip.mem.addresses_per_slice
    w, r = np.flatnonzero(is_write), np.flatnonzero(~is_write)
    if not len(w) or not len(r):
        return
    word_w = np.where(is_wide[w], -1, slices[w] * span + addr[w])
    word_r = np.where(is_wide[r], -1, slices[r] * span + addr[r])
    # Exact words: the last write to the word committed at or before the read.
    order = np.lexsort((when[w], word_w))
    wk = word_w[order] * (1 << 40) + when[w][order]
    rk = word_r * (1 << 40) + when[r]
    hit = np.searchsorted(wk, rk, side="right") - 1
    ok = (hit >= 0) & (word_w[order][np.maximum(hit, 0)] == word_r) & (word_r >= 0)
    np.minimum.at(first_use, mem[w[order[hit[ok]]]], cycle[mem[r[ok]]])
    _wide_dependencies(mem, slices, when, w, r, is_wide, cycle, first_use)


def _wide_dependencies(mem, slices, when, w, r, is_wide, cycle, first_use) -> None:
    """Gather reads and Scatter writes touch unknown words: link them to every access of their slice."""
    wide_w = w[is_wide[w]]
    wide_r = r[is_wide[r]]
    for writers, readers in ((wide_w, r), (w, wide_r)):
        for s in np.unique(slices[writers]) if len(readers) else []:
            rs = readers[slices[readers] == s]
            rs = rs[np.argsort(when[rs], kind="stable")]
            ws = writers[slices[writers] == s]
            nxt = np.searchsorted(when[rs], when[ws], side="left")
            ok = nxt < len(rs)
            np.minimum.at(first_use, mem[ws[ok]], cycle[mem[rs[nxt[ok]]]])


class MxmChecker:
    """Walks MXM events in issue order per plane: weights installed before use, the fp16 issue interval respected,
    accumulator slots holding a completed result when an ACC reads them; records dependency edges.

    An ABC reads its activation and the installed weights at issue and lands in its accumulator slot
    `mxm.abc_latency_cycles` later; an ACC reads the slot at issue. So an ACC sees exactly the ABCs that completed
    by then, and may legally read a slot while the next ABC into it is still in flight.
    """

    def __init__(self, chip: Chip, ev: Events, first_use: np.ndarray, describe: Describe) -> None:
        self.chip, self.ev, self.first_use, self.describe = chip, ev, first_use, describe
        self.shadow: dict = {}  # plane -> (dtype, [lw events])
        self.installed: dict = {}  # plane -> list of (effective cycle, dtype, iw event), in issue order
        self.last_abc: dict = {}  # plane -> cycle
        self.abcs: dict = {}  # (plane, slot) -> list of (completes, event)
        self.accs: list = []  # (plane, slot, cycle, event)

    def run(self, events: np.ndarray, slot: np.ndarray) -> None:
        for e in events.tolist():
            t = self.ev.templates[self.ev.template[e]]
            plane = (t.queue.hemisphere, t.instruction.plane)
            getattr(self, "_" + t.instruction.op.value)(e, plane, t.instruction, int(self.ev.cycle[e]),
                                                        int(slot[e]))
        self._link_accumulators()

    def _lw(self, e, plane, ins, cycle, _slot) -> None:
        dtype, lws = self.shadow.get(plane, (ins.dtype, []))
        if dtype is not ins.dtype:
            raise ScheduleError(f"{self.describe(e)}loads {ins.dtype.value} rows into a shadow buffer that "
                                f"already holds {dtype.value} rows; install (IW) them first")
        self.shadow[plane] = (dtype, lws + [e])

    def _iw(self, e, plane, ins, cycle, _slot) -> None:
        if plane not in self.shadow:
            raise ScheduleError(f"{self.describe(e)}installs an empty shadow buffer; load weights with LW first")
        dtype, lws = self.shadow.pop(plane)
        np.minimum.at(self.first_use, np.array(lws), cycle)
        self.installed.setdefault(plane, []).append((cycle + self.chip.mxm.iw_latency_cycles, dtype, e))

    def _abc(self, e, plane, ins, cycle, slot) -> None:
        active = [i for i in self.installed.get(plane, [])[-2:] if i[0] <= cycle]
        if not active:
            raise ScheduleError(f"{self.describe(e)}MXM plane {plane[1]} ({plane[0].value}) is used before "
                                "weights are installed; issue LW and IW, and the ABC at least "
                                f"{self.chip.mxm.iw_latency_cycles} cycle(s) after the IW")
        _, dtype, iw = active[-1]
        if dtype is not ins.dtype:
            raise ScheduleError(f"{self.describe(e)}streams {ins.dtype.value} activations into "
                                f"{dtype.value} weights")
        self.first_use[iw] = min(self.first_use[iw], cycle)
        gap = self.chip.mxm.fp16_issue_interval_cycles if dtype is DType.FP16 else 1
        if plane in self.last_abc and cycle - self.last_abc[plane] < gap:
            raise ScheduleError(f"{self.describe(e)}ABC issued {cycle - self.last_abc[plane]} cycle(s) after the "
                                f"previous one on this plane; {dtype.value} takes one every {gap}")
        self.last_abc[plane] = cycle
        self.abcs.setdefault((plane, slot), []).append((cycle + self.chip.mxm.abc_latency_cycles, e))

    def _acc(self, e, plane, ins, cycle, slot) -> None:
        self.accs.append((plane, slot, cycle, e))

    def _link_accumulators(self) -> None:
        """Each ACC needs a completed ABC in its slot; each ABC is first used by the next ACC after it lands."""
        for plane, slot, cycle, e in self.accs:
            landed = [(done, a) for done, a in self.abcs.get((plane, slot), []) if done <= cycle]
            if not landed:
                pending = self.abcs.get((plane, slot))
                hint = (f"; the first ABC into it lands at cycle {pending[0][0]}, so issue the ACC "
                        f"{pending[0][0] - cycle} cycle(s) later") if pending else ""
                raise ScheduleError(f"{self.describe(e)}reads accumulator slot {slot}, which holds no completed "
                                    f"ABC result at cycle {cycle}{hint}")
        by_slot: dict = {}
        for plane, slot, cycle, _ in self.accs:
            by_slot.setdefault((plane, slot), []).append(cycle)
        for key, abcs in self.abcs.items():
            reads = np.sort(np.array(by_slot.get(key, []), dtype=np.int64))
            if not len(reads):
                continue
            done = np.array([d for d, _ in abcs], dtype=np.int64)
            nxt = np.searchsorted(reads, done, side="left")
            ok = nxt < len(reads)
            ev = np.array([a for _, a in abcs], dtype=np.int64)
            np.minimum.at(self.first_use, ev[ok], reads[nxt[ok]])
