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
    """Walks MXM events in issue order per plane: weights installed before use, accumulators ready before read,
    the fp16 issue interval respected; records dependency edges."""

    def __init__(self, chip: Chip, ev: Events, first_use: np.ndarray, describe: Describe) -> None:
        self.chip, self.ev, self.first_use, self.describe = chip, ev, first_use, describe
        self.shadow: dict = {}  # plane -> (dtype, [lw events])
        self.installs: dict = {}  # plane -> list of (effective cycle, dtype, iw event)
        self.last_abc: dict = {}  # plane -> cycle
        self.slots: dict = {}  # (plane, slot) -> (event, completes)

    def run(self, events: np.ndarray, slot: np.ndarray) -> None:
        for e in events.tolist():
            t = self.ev.templates[self.ev.template[e]]
            plane = (t.queue.hemisphere, t.instruction.plane)
            getattr(self, "_" + t.instruction.op.value)(e, plane, t.instruction, int(self.ev.cycle[e]),
                                                        int(slot[e]))

    def _lw(self, e, plane, ins, cycle, _slot) -> None:
        dtype, lws = self.shadow.get(plane, (ins.dtype, []))
        if dtype is not ins.dtype:
            raise ScheduleError(f"{self.describe(e)}: loads {ins.dtype.value} rows into a shadow buffer that "
                                f"already holds {dtype.value} rows; install (IW) them first")
        self.shadow[plane] = (dtype, lws + [e])

    def _iw(self, e, plane, ins, cycle, _slot) -> None:
        if plane not in self.shadow:
            raise ScheduleError(f"{self.describe(e)}: installs an empty shadow buffer; load weights with LW first")
        dtype, lws = self.shadow.pop(plane)
        np.minimum.at(self.first_use, np.array(lws), cycle)
        self.installs.setdefault(plane, []).append((cycle + self.chip.mxm.iw_latency_cycles, dtype, e))

    def _abc(self, e, plane, ins, cycle, slot) -> None:
        active = [i for i in self.installs.get(plane, []) if i[0] <= cycle]
        if not active:
            raise ScheduleError(f"{self.describe(e)}: MXM plane {plane[1]} ({plane[0].value}) is used before "
                                "weights are installed; issue LW and IW, and ABC at least iw latency later")
        _, dtype, iw = active[-1]
        if dtype is not ins.dtype:
            raise ScheduleError(f"{self.describe(e)}: streams {ins.dtype.value} activations into "
                                f"{dtype.value} weights")
        self.first_use[iw] = min(self.first_use[iw], cycle)
        gap = self.chip.mxm.fp16_issue_interval_cycles if dtype is DType.FP16 else 1
        if plane in self.last_abc and cycle - self.last_abc[plane] < gap:
            raise ScheduleError(f"{self.describe(e)}: fp16 ABC issued {cycle - self.last_abc[plane]} cycle(s) "
                                f"after the previous one on this plane pair; the pair takes one every {gap}")
        self.last_abc[plane] = cycle
        self._touch_slot(e, plane, slot, cycle)
        self.slots[(plane, slot)] = (e, cycle + self.chip.mxm.abc_latency_cycles)

    def _acc(self, e, plane, ins, cycle, slot) -> None:
        if (plane, slot) not in self.slots:
            raise ScheduleError(f"{self.describe(e)}: reads accumulator slot {slot}, which no ABC has written")
        _, done = self.slots[(plane, slot)]
        if done > cycle:
            raise ScheduleError(f"{self.describe(e)}: reads accumulator slot {slot} at cycle {cycle}, but the ABC "
                                f"writing it completes at cycle {done}; issue the ACC {done - cycle} cycle(s) later")
        self._touch_slot(e, plane, slot, cycle)

    def _touch_slot(self, e, plane, slot, cycle) -> None:
        prev = self.slots.get((plane, slot))
        if prev is not None:
            self.first_use[prev[0]] = min(self.first_use[prev[0]], cycle)
