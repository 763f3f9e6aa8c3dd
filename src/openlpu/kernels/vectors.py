"""Vector-train emitters on tensors the compiler has placed: views, reads, writes, one VXM op, a scatter.

The compiler's programs are sequences of operations on placed tensors. Each operation here streams a train of
vectors — one per cycle — from MEM slices, through one unit, into MEM slices (for a scatter, into the other
hemisphere's SRAM at an address the data picks). A VXM operation's inputs flow to the VXM from their own
hemispheres (an ALU taps streams of both directions) and its result flows on into the output's:

    inputs (hemisphere H, or both)  --reads, one vector a cycle-->  ALU  --result-->  output (the other one)

A `View` names which vectors of a tensor a train carries and in what order: a range of column blocks (block step 0
re-reads one block), and in each block rows `row0, row0 + step, ...` (step 0 re-reads one row: a broadcast). Reads
and writes are grouped into Repeat bursts wherever the address and issue cycle advance evenly, whatever the tensor's
interleave.

Every emitter takes `start` (no instruction issues before it) and returns the first cycle after all its results
have landed. An emitter schedules its operation as if it ran alone; the compiler then moves it earlier only where
nothing of it meets what is already placed (`openlpu.compiler.overlap`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from openlpu.errors import ProgramError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import VXM_LARGE_ONLY, Opcode
from openlpu.isa.program import Check, CheckMode, Placement, Tensor
from openlpu.isa.types import Direction, DType, QueueId, StreamRef
from openlpu.kernels.builder import ProgramBuilder, mem_queue, vxm_queue
from openlpu.kernels.elementwise import BINARY_EXPR
from openlpu.kernels.kernel import Kernel
from openlpu.sim import numerics as nx
from openlpu.sim import semantics

W, E = Hemisphere.W, Hemisphere.E


@dataclass(frozen=True, slots=True)
class View:
    """Vectors of `tensor`: `blocks` column blocks from `block0` by `block_step` (0: the same block every time),
    in each block `rows` rows from `row0` by `step` (0: the same row every time). Vector k is block
    `block0 + (k // rows) * block_step`, row `row0 + (k % rows) * step`."""

    tensor: Tensor
    block0: int
    blocks: int
    row0: int
    rows: int
    step: int = 1
    block_step: int = 1

    @classmethod
    def of(cls, t: Tensor, lanes: int, block0: int = 0, blocks: int | None = None) -> View:
        """All rows of blocks `block0 ..` of `t`, row by row within a block."""
        nb = t.column_blocks(lanes) - block0 if blocks is None else blocks
        return cls(t, block0, nb, 0, t.rows)

    def broadcast(self, rows: int) -> View:
        """This one-row view repeated `rows` times per block."""
        if self.rows != 1 or self.step != 1:
            raise ProgramError(f"only a one-row view of {self.tensor.name} can be broadcast")
        return View(self.tensor, self.block0, self.blocks, self.row0, rows, 0, self.block_step)

    @property
    def count(self) -> int:
        return self.blocks * self.rows

    @property
    def hemisphere(self) -> Hemisphere:
        return self.tensor.placement.hemisphere

    @property
    def dtype(self) -> DType:
        return self.tensor.dtype

    def at(self, k: int) -> tuple[int, int]:
        """(way, address) of vector k: the slice group it lives in and its address there."""
        p = self.tensor.placement
        block = self.block0 + (k // self.rows) * self.block_step
        row = self.row0 + (k % self.rows) * self.step
        return row % p.interleave, p.address + block * self.tensor.rows_per_group() + row // p.interleave

    def slice_of(self, way: int, byte: int) -> int:
        return self.tensor.placement.first_slice + way * self.dtype.width_bytes + byte


def _bursts(points: list[tuple[int, int]] | np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """Split (cycle, address) points, in cycle order, into runs whose cycle and address advance evenly:
    (first cycle, first address, count, interval, stride). Greedy from the first point: a run takes every
    following point that keeps its first step."""
    pts = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    n = len(pts)
    steps = np.diff(pts, axis=0)  # step m: from point m to m + 1
    changes = np.flatnonzero((steps[1:] != steps[:-1]).any(axis=1)) + 1  # steps that differ from the one before
    runs: list[tuple[int, int, int, int, int]] = []
    i = 0
    while i < n:
        c0, a0 = int(pts[i, 0]), int(pts[i, 1])
        if i == n - 1:
            runs.append((c0, a0, 1, 1, 1))
            break
        k = np.searchsorted(changes, i + 1)  # the first step after step i that differs from it
        last = int(changes[k]) if k < len(changes) else n - 1
        runs.append((c0, a0, last - i + 1, int(steps[i, 0]), int(steps[i, 1])))
        i = last + 1
    return runs


def _place_mem(b: ProgramBuilder, q: QueueId, points: np.ndarray, make) -> None:
    for cycle, addr, count, interval, stride in _bursts(points):
        b.place(q, cycle, make(addr, None if stride == 1 else stride), count, interval)


def _ways(view: View, part: tuple[int, int] | None = None) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Per slice group (way) the view touches: (way, offsets k - k0 of its vectors k in `part` (all: k0 = 0),
    their addresses)."""
    p, t = view.tensor.placement, view.tensor
    k0, k1 = part or (0, view.count)
    k = np.arange(k0, k1)
    block = view.block0 + (k // view.rows) * view.block_step
    row = view.row0 + (k % view.rows) * view.step
    way = row % p.interleave
    addr = p.address + block * t.rows_per_group() + row // p.interleave
    return [(w, k[way == w] - k0, addr[way == w]) for w in np.unique(way).tolist()]


def read_view(b: ProgramBuilder, view: View, ref: StreamRef, target: int, arrive: int,
              part: tuple[int, int] | None = None) -> None:
    """Read `view` onto stream group `ref` so that vector k reaches position `target` in cycle `arrive + k`
    (with `part` = (k0, k1): only vectors k0 .. k1 - 1, vector k in cycle `arrive + k - k0`)."""
    lat = b.chip.mem.read_latency_cycles
    for way, ks, addrs in _ways(view, part):
        for byte in range(view.dtype.width_bytes):
            q = mem_queue(view.hemisphere, view.slice_of(way, byte))
            cycles = b.issue_to_arrive(q, lat, target, arrive) + ks
            out = StreamRef(ref.direction, ref.index + byte)
            _place_mem(b, q, np.stack([cycles, addrs], axis=1),
                       lambda addr, stride, out=out: Instruction(op=Opcode.READ, addr=addr, out=out, stride=stride))


def write_view(b: ProgramBuilder, ref: StreamRef, diagonal: int, view: View,
               part: tuple[int, int] | None = None) -> int:
    """Write a train on `ref` into `view`: vector k is at position q in cycle `diagonal + q * step + k` (with
    `part` = (k0, k1): vectors k0 .. k1 - 1 only, vector k in cycle `diagonal + q * step + k - k0`). Returns the
    first cycle after the last commit."""
    step, done = ref.direction.step, 0
    for way, ks, addrs in _ways(view, part):
        for byte in range(view.dtype.width_bytes):
            q = mem_queue(view.hemisphere, view.slice_of(way, byte))
            cycles = diagonal + b.position(q) * step + ks
            a = StreamRef(ref.direction, ref.index + byte)
            _place_mem(b, q, np.stack([cycles, addrs], axis=1),
                       lambda addr, stride, a=a: Instruction(op=Opcode.WRITE, addr=addr, a=a, stride=stride))
            done = max(done, int(cycles[-1]) + b.chip.mem.write_latency_cycles + 1)
    return done


def toward(h: Hemisphere) -> Direction:
    """The direction data flows from hemisphere `h` to the other one."""
    return Direction.E if h is Hemisphere.W else Direction.W


def stream_groups(widths: list[int]) -> list[int]:
    """First stream of consecutive groups of the given widths, each aligned to its width."""
    out, nxt = [], 0
    for w in widths:
        nxt = -(-nxt // w) * w
        out.append(nxt)
        nxt += w
    return out


def far_read(b: ProgramBuilder, views: list[View], target: int) -> int:
    """Cycles from a read's issue to its vector reaching `target`, for the slowest slice of `views`."""
    far = 0
    for v in views:
        for way in range(min(v.tensor.placement.interleave, v.tensor.rows)):
            for byte in range(v.dtype.width_bytes):
                far = max(far, abs(target - b.position(mem_queue(v.hemisphere, v.slice_of(way, byte)))))
    return far + b.chip.mem.read_latency_cycles


def emit_vxm(b: ProgramBuilder, op: Opcode, dtype: DType, inputs: list[View], out: View, start: int, *,
             imm: float | int | None = None, to: DType | None = None) -> int:
    """out = op(inputs...) vector by vector on one ALU (a large one where `op` needs it). Each input flows to the
    VXM from its own hemisphere (an ALU reads streams of both directions); the result flows on into `out`'s
    hemisphere, which holds no input (a slice reads or writes once a cycle) unless an input there is read on
    other slices. Every view has the same number of vectors."""
    where = f"{op.value} -> {out.tensor.name}"
    if any(v.count != out.count for v in inputs):
        raise ProgramError(f"{where}: views carry {[v.count for v in inputs]} vectors, output {out.count}")
    if all(v.hemisphere is out.hemisphere for v in inputs):
        raise ProgramError(f"{where}: the inputs and the output all sit in the {out.hemisphere.value} hemisphere; "
                           "put the output in the other one")
    alu = min(b.chip.vxm.large_alus) if op in VXM_LARGE_ONLY else 1
    here = b.position(vxm_queue(alu))
    d_out = Direction.W if out.hemisphere is W else Direction.E
    flows = [(toward(v.hemisphere), v.dtype.width_bytes) for v in inputs] + [(d_out, (to or dtype).width_bytes)]
    refs: list[StreamRef] = [None] * len(flows)  # type: ignore[list-item]
    for d in {f[0] for f in flows}:  # stream groups per direction, in operand order
        mine = [i for i, f in enumerate(flows) if f[0] is d]
        for i, first in zip(mine, stream_groups([flows[i][1] for i in mine])):
            refs[i] = StreamRef(d, first)
    issue = start + far_read(b, inputs, here)
    for v, ref in zip(inputs, refs):
        read_view(b, v, ref, here, issue)
    operands = dict(zip(("a", "b"), refs[:-1]))
    b.place(vxm_queue(alu), issue, Instruction(op=op, dtype=dtype, to=to, imm=imm, out=refs[-1], **operands),
            out.count)
    produced = issue + semantics.latency(b.chip, op)
    return write_view(b, refs[-1], produced - here * d_out.step, out)


@dataclass(frozen=True, slots=True)
class ChainStep:
    """One step of `emit_chain`: `op` on inputs that are SRAM views or earlier steps' results (by index, flowing
    on their streams), its result written to `out` or, with `out` None, only flowing on."""

    op: Opcode
    dtype: DType
    ins: tuple[View | int, ...]
    out: View | None
    imm: float | int | None = None
    to: DType | None = None


def emit_chain(b: ProgramBuilder, steps: list[ChainStep], start: int) -> int:
    """Every step on its own ALU, in one pass toward the hemisphere its result is written in (a result that is
    only read on flows the way its readers do, so independent steps may flow either way at once): a step that
    reads no earlier step sits in the first rank its pass crosses, the others one rank past the last step they
    read, and each reads its stream operands in the cycle they arrive (they must arrive together: give the paths
    equal latencies). SRAM inputs are read to arrive just then. Returns the first cycle after the last write
    landed."""
    where = "chain " + " ; ".join(s.op.value for s in steps)
    counts = {v.count for s in steps for v in (*s.ins, s.out) if isinstance(v, View)}
    if len(counts) != 1:
        raise ProgramError(f"{where}: views carry {sorted(counts)} vectors; every step streams the same number")
    count = counts.pop()
    levels = _levels(steps, b.chip.vxm.ranks, where)
    flow = _directions(steps, where)
    alus = _chain_alus(b.chip, steps, levels, flow, where)
    here = [b.position(vxm_queue(a)) for a in alus]
    refs = _chain_streams(b.chip, steps, flow, where)
    # issue cycles relative to the first rank's, then shifted so that no read issues before `start`
    rel: list[int] = []
    for i, s in enumerate(steps):
        arrive = {rel[j] + semantics.latency(b.chip, steps[j].op) + abs(here[i] - here[j])
                  for j in s.ins if isinstance(j, int)}
        if len(arrive) > 1:
            raise ProgramError(f"{where}: step {i} ({s.op.value}) gets its stream operands in cycles "
                               f"{sorted(arrive)} after the pass starts; they must arrive together")
        rel.append(arrive.pop() if arrive else 0)
    t0 = max((start + far_read(b, [v], here[i]) - rel[i] for i, s in enumerate(steps) for v in s.ins
              if isinstance(v, View)), default=start)
    done = t0
    for i, s in enumerate(steps):
        issue = t0 + rel[i]
        operands = []
        for k, v in enumerate(s.ins):
            if isinstance(v, int):
                operands.append(refs[v][0])
            else:
                read_view(b, v, refs[i][1 + k], here[i], issue)
                operands.append(refs[i][1 + k])
        out = refs[i][0]
        b.place(vxm_queue(alus[i]), issue, Instruction(op=s.op, dtype=s.dtype, to=s.to, imm=s.imm, out=out,
                                                       **dict(zip(("a", "b"), operands))), count)
        if s.out is not None:
            produced = issue + semantics.latency(b.chip, s.op)
            done = max(done, write_view(b, out, produced - here[i] * flow[i].step, s.out))
    return done


def _levels(steps: list[ChainStep], ranks: int, where: str) -> list[int]:
    """Each step's rank in the order its pass crosses them: 0 without stream operands, else one past theirs."""
    levels: list[int] = []
    for i, s in enumerate(steps):
        earlier = [j for j in s.ins if isinstance(j, int)]
        if any(not 0 <= j < i for j in earlier):
            raise ProgramError(f"{where}: step {i} reads a step that does not come before it: {earlier}")
        level = 1 + max((levels[j] for j in earlier), default=-1)
        if level >= ranks:
            raise ProgramError(f"{where}: step {i} would sit in rank {level} of the pass; the VXM has {ranks}")
        levels.append(level)
    return levels


def _directions(steps: list[ChainStep], where: str) -> list[Direction]:
    """The way each step's result flows: toward its output's hemisphere, or, unwritten, the way its readers'
    results flow (all of them the same way)."""
    flow: list[Direction | None] = [None if s.out is None else Direction.W if s.out.hemisphere is W else Direction.E
                                    for s in steps]
    for i in reversed(range(len(steps))):
        if flow[i] is None:  # read by no step and not written: reported below
            continue
        for j in (j for j in steps[i].ins if isinstance(j, int)):
            if flow[j] is None and steps[j].out is None:
                flow[j] = flow[i]
            if flow[j] is not flow[i]:
                raise ProgramError(f"{where}: step {j} ({steps[j].op.value}) feeds results written to both "
                                   "hemispheres; a stream flows one way")
    if None in flow:
        raise ProgramError(f"{where}: step {flow.index(None)} is neither written nor read; drop it")
    return flow  # type: ignore[return-value]


def _chain_alus(chip: Chip, steps: list[ChainStep], levels: list[int], flow: list[Direction],
                where: str) -> list[int]:
    """An ALU for each step in its rank (its level counted the way it flows), large ones for the operations that
    need them, small ones first for the others."""
    ranks = chip.vxm.ranks
    rank = [lv if d is Direction.E else ranks - 1 - lv for lv, d in zip(levels, flow)]
    free = {r: [a for a in range(chip.vxm.alus) if a % ranks == r] for r in range(ranks)}
    out: list[int] = [-1] * len(steps)
    for i in sorted(range(len(steps)), key=lambda i: steps[i].op not in VXM_LARGE_ONLY):
        large = steps[i].op in VXM_LARGE_ONLY
        fits = [a for a in free[rank[i]] if a in chip.vxm.large_alus] if large else \
            sorted(free[rank[i]], key=lambda a: a in chip.vxm.large_alus)
        if not fits:
            raise ProgramError(f"{where}: rank {rank[i]} has no {'large ' if large else ''}ALU left for step {i} "
                               f"({steps[i].op.value})")
        out[i] = fits[0]
        free[rank[i]].remove(fits[0])
    return out


def _chain_streams(chip: Chip, steps: list[ChainStep], flow: list[Direction],
                   where: str) -> list[list[StreamRef | None]]:
    """Per step: its result's stream group (flowing with its pass), then one per operand (an SRAM view's flows
    from its hemisphere to the VXM; a stream operand's is None). Groups per direction, widest first."""
    wanted: list[tuple[int, int, Direction, int]] = []  # (step, slot, direction, width)
    for i, s in enumerate(steps):
        wanted.append((i, 0, flow[i], (s.to or s.dtype).width_bytes))
        wanted += [(i, 1 + k, toward(v.hemisphere), v.dtype.width_bytes) for k, v in enumerate(s.ins)
                   if isinstance(v, View)]
    refs: list[list[StreamRef | None]] = [[None] * (1 + len(s.ins)) for s in steps]
    for direction in Direction:
        mine = sorted((w for w in wanted if w[2] is direction), key=lambda w: -w[3])
        firsts = stream_groups([w[3] for w in mine])
        if mine and firsts[-1] + mine[-1][3] > chip.streams.streams_per_direction:
            raise ProgramError(f"{where}: needs {firsts[-1] + mine[-1][3]} {direction.value}ward streams; "
                               f"there are {chip.streams.streams_per_direction}")
        for (i, slot, _, _), first in zip(mine, firsts):
            refs[i][slot] = StreamRef(direction, first)
    return refs


def emit_scatter(b: ProgramBuilder, src: View, dst: Tensor, index: View, start: int) -> int:
    """Write the vectors of `src` (one row, block j for j = 0, 1, ...) into row `index[lane]` of block j of the
    row-major tensor `dst`, in the other hemisphere. `index` is a one-row int16 view, every lane the row."""
    d = toward(src.hemisphere)
    if dst.placement.hemisphere is src.hemisphere or index.hemisphere is not src.hemisphere:
        raise ProgramError(f"scatter {src.tensor.name} -> {dst.name}: the source and index sit in one hemisphere, "
                           "the destination in the other")
    if dst.placement.interleave != 1 or dst.dtype is not src.dtype or src.rows != 1:
        raise ProgramError(f"scatter {src.tensor.name} -> {dst.name}: needs a one-row source of the "
                           "destination's type and a row-major destination")
    width = src.dtype.width_bytes
    first_data, first_map = stream_groups([width, 2])
    slices = [dst.placement.first_slice + byte for byte in range(width)]
    target = min((b.position(mem_queue(dst.placement.hemisphere, s)) for s in slices), key=lambda p: p * d.step)
    arrive = start + far_read(b, [src, index], target)
    read_view(b, src, StreamRef(d, first_data), target, arrive)
    read_view(b, index.broadcast(src.count) if index.count == 1 else index, StreamRef(d, first_map), target, arrive)
    done = 0
    for byte, s in enumerate(slices):
        q = mem_queue(dst.placement.hemisphere, s)
        issue = arrive + abs(b.position(q) - target)
        ins = Instruction(op=Opcode.SCATTER, addr=dst.placement.address,
                          map=StreamRef(d, first_map), a=StreamRef(d, first_data + byte),
                          stride=None if dst.rows_per_group() == 1 else dst.rows_per_group())
        b.place(q, issue, ins, src.count)
        done = max(done, issue + src.count - 1 + b.chip.mem.write_latency_cycles + 1)
    return done


# -- stand-alone kernels (the compiler calls the emitters directly) ----------------------------------------------


def row_binary(chip: Chip, op: Opcode, x: np.ndarray, y: np.ndarray, dtype: DType, *, interleave: int = 2,
               name: str = "row_binary") -> Kernel:
    """z = x op y for x [M, N] (interleaved by `interleave` in the west) and one row y [1, N] read again for
    every row of x, z row-major in the east: the broadcast pattern of the compiler's attention."""
    if op not in BINARY_EXPR or np.ndim(x) != 2 or np.shape(y) != (1, np.shape(x)[1]):
        raise ProgramError(f"{name}: needs a binary op ({[o.value for o in BINARY_EXPR]}), x [M, N] and y [1, N]")
    m, n = x.shape
    b = ProgramBuilder(chip, name)
    width = dtype.width_bytes

    def tensor(t: str, h: Hemisphere, first_slice: int, rows: int, il: int = 1) -> Tensor:
        return Tensor(name=t, dtype=dtype, rows=rows, cols=n,
                      placement=Placement(hemisphere=h, first_slice=first_slice, address=0, interleave=il))

    tx, ty, tz = tensor("x", W, 0, m, interleave), tensor("y", W, interleave * width, 1), tensor("z", E, 0, m)
    b.tensors += [tx, ty, tz]
    lanes = chip.lanes.lanes
    emit_vxm(b, op, dtype, [View.of(tx, lanes), View.of(ty, lanes).broadcast(m)], View.of(tz, lanes), 0)
    b.checks.append(Check(target="z", mode=CheckMode.EXACT, expr=BINARY_EXPR[op].format(a="x", b="y")))
    inputs = {"x": np.asarray(x).astype(dtype.numpy), "y": np.asarray(y).astype(dtype.numpy)}
    return Kernel(program=b.build(), predicted_cycles=b.predicted_cycles(), inputs=inputs,
                  assemble=lambda t: t["z"], fast=lambda i: nx.vxm_binary(op, i["x"], i["y"], dtype))


def scatter_row(chip: Chip, table: np.ndarray, row: np.ndarray, position: int, dtype: DType, *,
                name: str = "scatter_row") -> Kernel:
    """table[position] = row, the position given as data (an int16 row in SRAM): the KV-cache append."""
    m, n = np.shape(table)
    if np.shape(row) != (1, n) or not 0 <= position < m:
        raise ProgramError(f"{name}: needs row [1, {n}] and 0 <= position < {m}")
    b = ProgramBuilder(chip, name)
    lanes = chip.lanes.lanes
    src = Tensor(name="row", dtype=dtype, rows=1, cols=n, placement=Placement(hemisphere=W, first_slice=0, address=0))
    pos = Tensor(name="pos", dtype=DType.INT16, rows=1, cols=lanes,
                 placement=Placement(hemisphere=W, first_slice=4, address=0))
    dst = Tensor(name="table", dtype=dtype, rows=m, cols=n, placement=Placement(hemisphere=E, first_slice=0,
                                                                               address=0))
    b.tensors += [src, pos, dst]
    emit_scatter(b, View.of(src, lanes), dst, View.of(pos, lanes), 0)
    inputs = {"row": np.asarray(row).astype(dtype.numpy), "pos": np.full((1, lanes), position, np.int16),
              "table": np.asarray(table).astype(dtype.numpy)}

    def fast(i: dict[str, np.ndarray]) -> np.ndarray:
        out = i["table"].copy()
        out[int(i["pos"][0, 0])] = i["row"][0]
        return out

    return Kernel(program=b.build(), predicted_cycles=b.predicted_cycles(), inputs=inputs,
                  assemble=lambda t: t["table"], fast=fast)
