"""Executors: one function per opcode class, each running a whole batch of independent events with NumPy."""

from __future__ import annotations

import numpy as np

from openlpu.errors import ScheduleError
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import VXM_BINARY, VXM_UNARY, Opcode
from openlpu.isa.types import DType
from openlpu.sim import numerics as nx


class Machine:
    """Architectural state (SRAM, stream values, MXM buffers) and the batch executors that change it."""

    def __init__(self, sim) -> None:  # sim: openlpu.sim.engine._Run (events, plans, pool, SRAM)
        self.s = sim
        self.lanes = sim.chip.lanes.lanes
        rows = sim.chip.mxm.plane_rows
        self.tiles: dict[int, np.ndarray] = {}  # IW event -> the weight tile it installs
        self.products: dict[int, np.ndarray] = {}  # ABC event -> its product vector
        self.splits: dict = {}  # IW event -> its fp16 tile split for exact MXM passes
        self.rows = rows

    # -- stream plumbing -------------------------------------------------------------------------------------
    def inputs(self, events: np.ndarray, first: int, count: int) -> np.ndarray:
        """[events, count, lanes] byte planes of reads first..first+count-1 of each event."""
        idx = self.s.ev.read_base[events][:, None] + np.arange(first, first + count)
        return self.s.pool[self.s.source[idx]]

    def values(self, events: np.ndarray, first: int, dtype: DType) -> np.ndarray:
        return nx.planes_to_values(self.inputs(events, first, dtype.width_bytes), dtype)

    def output(self, events: np.ndarray, planes: np.ndarray) -> None:
        base = self.s.ev.write_base[events]
        width = planes.shape[1]
        if len(base) and base[-1] - base[0] == (len(base) - 1) * width and np.all(np.diff(base) == width):
            self.s.pool[base[0]: base[-1] + width] = planes.reshape(-1, planes.shape[-1])  # one burst, in order
            return
        self.s.pool[base[:, None] + np.arange(width)] = planes

    # -- MEM -------------------------------------------------------------------------------------------------
    def read(self, events: np.ndarray, ins: Instruction) -> None:
        """A read sees the write it was linked to (its value is the stream plane that write consumed), or the
        SRAM as loaded; slices with Gather/Scatter run in time order against the live SRAM."""
        data = self.s.sram[self.s.slice[events], self.s.addr[events]]
        writer = self.s.mem.source[events]
        linked = np.flatnonzero((writer >= 0) & ~self.s.mem.ordered[events])
        if len(linked):
            data[linked] = self.s.pool[self.s.source[self.s.ev.read_base[writer[linked]]]]
        self.output(events, data[:, None, :])

    def write(self, events: np.ndarray, ins: Instruction) -> None:
        ordered = events[self.s.mem.ordered[events]]
        if len(ordered):
            self.s.sram[self.s.slice[ordered], self.s.addr[ordered]] = self.inputs(ordered, 0, 1)[:, 0]

    def commit_writes(self) -> None:
        """Apply every plain write to the SRAM in commit order (the last write to a word wins)."""
        ev, s = self.s.ev, self.s
        writes = np.flatnonzero((s.ops == s.op_index[Opcode.WRITE]) & ~s.mem.ordered)
        writes = writes[np.argsort(ev.cycle[writes], kind="stable")]
        if len(writes):
            s.sram[s.slice[writes], s.addr[writes]] = self.inputs(writes, 0, 1)[:, 0]

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
        """Rows go into the tile of the IW that will install them (`hazards.MxmChecker` links them)."""
        planes = self.inputs(events, 0, self.s.chip.streams.streams_per_direction)
        if ins.dtype is DType.INT8:
            rows = planes.view(np.int8)
        else:
            rows = nx.planes_to_values(planes.reshape(len(events), -1, 2, self.lanes), DType.FP16)
        for e, block in zip(events.tolist(), rows):
            iw, row = int(self.s.mxm.install_of[e]), int(self.s.row[e])
            if iw >= 0:
                tile = self.tiles.setdefault(iw, np.zeros((self.rows, self.lanes), ins.dtype.numpy))
                tile[row: row + len(block)] = block

    def iw(self, events: np.ndarray, ins: Instruction) -> None:
        """Nothing to move: each ABC reads the tile of the IW it was linked to."""

    def abc(self, events: np.ndarray, ins: Instruction) -> None:
        """Multiply with the weights installed at issue; the product is kept until an ACC folds it in."""
        acts = self.values(events, 0, ins.dtype)
        install = self.s.mxm.install_of[events]
        for iw in np.unique(install).tolist():
            mine = np.flatnonzero(install == iw)
            tile = self.tiles[iw]
            split = None
            if ins.dtype is DType.FP16 and np.isfinite(tile).all():
                split = self.splits.get(iw) or self.splits.setdefault(iw, nx.split_weights(tile))
            for e, r in zip(events[mine].tolist(), nx.mxm_pass(acts[mine], tile, ins.dtype, split)):
                self.products[e] = r

    def acc_(self, events: np.ndarray, ins: Instruction) -> None:
        """The slot's value: the products landed since its last reset, accumulated in landing order; int32 for
        int8 products, fp32 for fp16 ones."""
        for e in events.tolist():
            used = self.s.mxm.landed[e]
            dtype = self.s.ev.templates[self.s.ev.template[used[0]]].instruction.dtype
            value = self.products[used[0]]
            for a in used[1:]:
                value = nx.accumulate(value, self.products[a], dtype)
            out = DType.INT32 if dtype is DType.INT8 else DType.FP32
            self.output(np.array([e]), nx.values_to_planes(value[None, :], out))

    # -- C2C ---------------------------------------------------------------------------------------------------
    def send(self, events: np.ndarray, ins: Instruction) -> None:
        """The vector leaves on the link; the system simulation delivers it to the peer's receive."""
        self.s.sent_planes[events] = self.inputs(events, 0, 1)[:, 0]

    def receive(self, events: np.ndarray, ins: Instruction) -> None:
        self.output(events, self.s.received_planes[events][:, None, :])
