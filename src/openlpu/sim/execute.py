"""Executors: one function per opcode class, each running a whole batch of independent events with NumPy."""

from __future__ import annotations

import heapq

import numpy as np

from openlpu.errors import ScheduleError
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import VXM_BINARY, VXM_UNARY, Opcode
from openlpu.isa.types import DType
from openlpu.sim import numerics as nx


class Machine:
    """Architectural state (SRAM, stream values, MXM buffers) and the batch executors that change it."""

    def __init__(self, sim) -> None:  # sim: openlpu.sim.engine._Run
        self.s = sim
        self.lanes = sim.chip.lanes.lanes
        rows = sim.chip.mxm.plane_rows
        self.shadow: dict = {}  # plane -> weights [rows, cols] being loaded
        self.active: dict = {}  # plane -> installed weights
        self.acc: dict = {}  # plane -> {slot: landed accumulator vector (int32 or fp32)}
        self.pending: dict = {}  # plane -> heap of ABC products still in flight
        self.rows = rows

    # -- stream plumbing -------------------------------------------------------------------------------------
    def inputs(self, events: np.ndarray, first: int, count: int) -> np.ndarray:
        """[events, count, lanes] byte planes of reads first..first+count-1 of each event."""
        idx = self.s.ev.read_base[events][:, None] + np.arange(first, first + count)
        return self.s.pool[self.s.source[idx]]

    def values(self, events: np.ndarray, first: int, dtype: DType) -> np.ndarray:
        return nx.planes_to_values(self.inputs(events, first, dtype.width_bytes), dtype)

    def output(self, events: np.ndarray, planes: np.ndarray) -> None:
        idx = self.s.ev.write_base[events][:, None] + np.arange(planes.shape[1])
        self.s.pool[idx] = planes

    # -- MEM -------------------------------------------------------------------------------------------------
    def read(self, events: np.ndarray, ins: Instruction) -> None:
        self.output(events, self.s.sram[self.s.slice[events], self.s.addr[events]][:, None, :])

    def write(self, events: np.ndarray, ins: Instruction) -> None:
        self.s.sram[self.s.slice[events], self.s.addr[events]] = self.inputs(events, 0, 1)[:, 0]

    def _lane_addresses(self, events: np.ndarray) -> np.ndarray:
        planes = self.inputs(events, 0, 2).astype(np.int64)
        addrs = self.s.addr[events][:, None] + planes[:, 0] + 256 * planes[:, 1]
        limit = self.s.chip.mem.addresses_per_slice
        bad = np.flatnonzero(((addrs < 0) | (addrs >= limit)).any(axis=1))
        if len(bad):
            e = events[bad[0]]
            raise ScheduleError(f"{self.s.describe(e)}: a lane address from the map stream is outside 0..{limit - 1}")
        return addrs

    def gather(self, events: np.ndarray, ins: Instruction) -> None:
        addrs = self._lane_addresses(events)
        planes = self.s.sram[self.s.slice[events][:, None], addrs, np.arange(self.lanes)[None, :]]
        self.output(events, planes[:, None, :])

    def scatter(self, events: np.ndarray, ins: Instruction) -> None:
        addrs = self._lane_addresses(events)
        data = self.inputs(events, 2, 1)[:, 0]
        self.s.sram[self.s.slice[events][:, None], addrs, np.arange(self.lanes)[None, :]] = data

    # -- VXM -------------------------------------------------------------------------------------------------
    def vxm(self, events: np.ndarray, ins: Instruction) -> None:
        op, dt = ins.op, ins.dtype
        a = self.values(events, 0, dt)
        if op in VXM_UNARY:
            out, out_dt = nx.vxm_unary(op, a, dt), dt
        elif op in VXM_BINARY:
            b = self.values(events, dt.width_bytes, dt) if ins.b is not None else self._imm(events, dt)
            out, out_dt = nx.vxm_binary(op, a, b, dt), dt
        elif op is Opcode.SELECT:
            w = dt.width_bytes
            out, out_dt = nx.vxm_select(a, self.values(events, w, dt), self.values(events, 2 * w, dt)), dt
        else:
            out, out_dt = nx.convert(a, dt, ins.to), ins.to
        self.output(events, nx.values_to_planes(out, out_dt))

    def _imm(self, events: np.ndarray, dt: DType) -> np.ndarray:
        imm = np.array([self.s.ev.templates[t].instruction.imm for t in self.s.ev.template[events]])
        return nx.narrow(imm.astype(np.float64 if dt.is_float else np.int64), dt)[:, None]

    # -- SXM -------------------------------------------------------------------------------------------------
    def sxm(self, events: np.ndarray, ins: Instruction) -> None:
        op = ins.op
        if op is Opcode.ROTATE:
            x = self.inputs(events, 0, ins.n)
            order = [(i + r) % ins.n for r in range(ins.n) for i in range(ins.n)]
            return self.output(events, x[:, order])
        if op is Opcode.TRANSPOSE:
            x = self.inputs(events, 0, 16)
            blocks = x.reshape(len(events), 16, -1, 16)  # [e, stream, superlane, lane]
            return self.output(events, blocks.transpose(0, 3, 2, 1).reshape(len(events), 16, -1))
        x = self.inputs(events, 0, ins.dtype.width_bytes)
        self.output(events, self._move_lanes(x, ins))

    def _move_lanes(self, x: np.ndarray, ins: Instruction) -> np.ndarray:
        if ins.op is Opcode.PERMUTE:
            return np.roll(x, ins.rotate, axis=-1)
        if ins.op is Opcode.SHIFT:
            out = np.zeros_like(x)
            k = ins.lanes
            if k >= 0:
                out[..., k:] = x[..., : self.lanes - k]
            else:
                out[..., :k] = x[..., -k:]
            return out
        per = len(ins.map16)
        grouped = x.reshape(*x.shape[:-1], -1, per)
        src = np.array([m if m >= 0 else 0 for m in ins.map16])
        out = grouped[..., src] * (np.array(ins.map16) >= 0).astype(np.uint8)
        return out.reshape(x.shape)

    # -- MXM (few events; per-event Python is fine and keeps the state rules obvious) ------------------------
    def lw(self, events: np.ndarray, ins: Instruction) -> None:
        planes = self.inputs(events, 0, self.s.chip.streams.streams_per_direction)
        if ins.dtype is DType.INT8:
            rows = planes.view(np.int8)
        else:
            rows = nx.planes_to_values(planes.reshape(len(events), -1, 2, self.lanes), DType.FP16)
        for e, block in zip(events.tolist(), rows):
            key, row = self.s.plane_of(e), int(self.s.row[e])
            buf = self.shadow.setdefault(key, np.zeros((self.rows, self.lanes), ins.dtype.numpy))
            buf[row: row + len(block)] = block

    def iw(self, events: np.ndarray, ins: Instruction) -> None:
        for e in events.tolist():
            key = self.s.plane_of(e)
            self.active[key] = self.shadow.pop(key)

    def abc(self, events: np.ndarray, ins: Instruction) -> None:
        """Multiply at issue with the weights installed then; the product lands in its slot `abc_latency` later."""
        acts = self.values(events, 0, ins.dtype)
        planes = [self.s.plane_of(e) for e in events.tolist()]
        latency = self.s.chip.mxm.abc_latency_cycles
        for key in dict.fromkeys(planes):
            mine = np.flatnonzero(np.array([p == key for p in planes]))
            result = nx.mxm_pass(acts[mine], self.active[key], ins.dtype)
            pending = self.pending.setdefault(key, [])
            for e, r in zip(events[mine].tolist(), result):
                add = bool(self.s.ev.templates[self.s.ev.template[e]].instruction.accumulate)
                heapq.heappush(pending, (int(self.s.ev.cycle[e]) + latency, e, int(self.s.slot[e]), add, r, ins.dtype))

    def _land(self, key, cycle: int) -> dict:
        """Apply, in landing order, every pending ABC product of plane `key` that has landed by `cycle`."""
        acc, pending = self.acc.setdefault(key, {}), self.pending.setdefault(key, [])
        while pending and pending[0][0] <= cycle:
            _, _, slot, add, r, dtype = heapq.heappop(pending)
            acc[slot] = nx.accumulate(acc[slot], r, dtype) if add and slot in acc else r
        return acc

    def acc_(self, events: np.ndarray, ins: Instruction) -> None:
        values = np.stack([self._land(self.s.plane_of(e), int(self.s.ev.cycle[e]))[int(self.s.slot[e])]
                           for e in events.tolist()])
        dt = DType.INT32 if values.dtype == np.int32 else DType.FP32
        self.output(events, nx.values_to_planes(values, dt))
