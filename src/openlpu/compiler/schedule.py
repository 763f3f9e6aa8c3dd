"""Scheduling and emission: a placed chip graph becomes one program, every instruction at an exact cycle.

Each operation is emitted as if it ran alone, from the cycle at which everything before it has landed (the
emitters return that cycle), and is then moved as early as what is already placed allows (`overlap`): every SRAM
word, queue, bank, stream and stateful unit used as the simulator's verifier demands. So an operation starts while
the one before it is still landing its last rows, and independent work (a query's attention in a prefill next to
the previous query's) runs side by side. A consumer's read train cannot run beside its producer's write train on
the same slices, though: a slice's queue issues one instruction per cycle. The program's cycle count is known
before it runs.

A `Pair` is two matmuls that start together, one on each hemisphere's MXM, each on its own hemisphere's slices and
streams; a `Chain` is one operation whose steps run in one pass through the VXM's ALU ranks (`emit_chain`).
Inside an operation the emitters overlap what the hardware allows (the matmul loads the next weight tile while
the current one multiplies; reads stream one vector per cycle).

Chip-to-chip: `Send` reads each byte plane of its tensor onto an eastward stream to reach the east link one
serialisation time apart; `Receive` takes each vector as soon as it has arrived over the link (the sender's
cycles are known, so the receiver's schedule is too) and writes it in place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from openlpu.compiler.chipgraph import (
    Chain,
    ChipGraph,
    InvRms,
    LaneMix,
    Matmul,
    Pair,
    Receive,
    RmsNorm,
    Role,
    Scatter,
    Send,
    TokenScale,
    Vxm,
)
from openlpu.compiler.overlap import Overlap
from openlpu.errors import InternalError
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import Opcode
from openlpu.isa.program import Program, Tensor
from openlpu.isa.types import Direction, DType, QueueId, StreamRef, Unit
from openlpu.kernels.builder import ProgramBuilder, mem_queue
from openlpu.kernels.lanemix import Term, emit_lane_mix
from openlpu.kernels.matmul import emit_matmul
from openlpu.kernels.quantize import emit_token_scale
from openlpu.kernels.rmsnorm import emit_inv_rms, emit_rmsnorm
from openlpu.kernels.vectors import ChainStep, View, emit_chain, emit_scatter, emit_vxm, read_view

EAST_LINK, WEST_LINK = QueueId(Unit.C2C, Hemisphere.E, 0), QueueId(Unit.C2C, Hemisphere.W, 0)


@dataclass(frozen=True)
class Scheduled:
    """A chip's program, its cycle count, each operation's (start, done) cycles, and when its sent vectors
    leave (for the next chip's receives). `program` is None when a compiled model was loaded without its
    listings (`compile_model(programs=False)`)."""

    program: Program | None
    predicted_cycles: int
    spans: tuple[tuple[int, int], ...]
    sent: tuple[int, ...]


def schedule(graph: ChipGraph, placed: dict[str, Tensor], chip: Chip, *, arrivals: tuple[int, ...] = (),
             name: str = "step") -> Scheduled:
    """Emit `graph` on `chip`. `arrivals`: the cycles at which the vectors this chip receives arrive."""
    b = ProgramBuilder(chip, f"{name}.chip{graph.index}")
    # Activations share addresses over time, so only what outlives the step is declared (loaded, read back).
    b.tensors += [placed[t.name] for t in graph.tensors.values() if t.role not in (Role.ACT, Role.STREAM)]
    lanes = chip.lanes.lanes
    t, spans, sent = 0, [], ()

    def view(ref) -> View:
        tensor = placed[ref.name]
        nb = tensor.column_blocks(lanes) - ref.block0 if ref.blocks is None else ref.blocks
        rows = tensor.rows if ref.rows is None else ref.rows
        return View(tensor, ref.block0, nb, ref.row0, rows, ref.step, ref.block_step)

    overlap = Overlap(chip)
    for op in graph.ops:
        emitted: dict[str, tuple[int, ...] | None] = {}

        def emit(pb: ProgramBuilder, start: int, op=op, emitted=emitted) -> int:
            done, emitted["sent"] = _emit(pb, op, graph, placed, view, arrivals, start)
            return done

        start, done = overlap.place(b, emit, t, movable=not isinstance(op, (Send, Receive)))
        if emitted["sent"] is not None:  # a Send's cycles, as emitted: transfers never move
            sent = emitted["sent"]
        spans.append((start, done))
        t = max(t, done)
    return Scheduled(b.build(), b.predicted_cycles(), tuple(spans), sent)


def _emit(b: ProgramBuilder, op, graph: ChipGraph, placed: dict[str, Tensor], view, arrivals: tuple[int, ...],
          t: int) -> tuple[int, tuple[int, ...] | None]:
    """Place `op` alone from cycle `t`; returns the cycle everything it wrote has landed, and its sent cycles
    (a Send's)."""
    sent, lanes = None, b.chip.lanes.lanes
    if isinstance(op, Vxm):
        t = emit_vxm(b, op.op, op.dtype, [view(r) for r in op.ins], view(op.out), t, imm=op.imm, to=op.to)
    elif isinstance(op, Chain):
        t = emit_chain(b, _chain_steps(op, graph, view), t)
    elif isinstance(op, Matmul):
        t = emit_matmul(b, placed[op.a], placed[op.w], placed[op.c], t, skip=op.skip)
    elif isinstance(op, Pair):
        t = _pair(b, op, placed, t)
    elif isinstance(op, RmsNorm):
        inv, p0, p1 = (placed[s] for s in op.scratch)
        t = emit_rmsnorm(b, placed[op.x], placed[op.w], placed[op.y], inv, (p0, p1), op.n, op.eps, t)
    elif isinstance(op, InvRms):
        p0, p1 = (placed[s] for s in op.scratch)
        t = emit_inv_rms(b, placed[op.x], placed[op.y], (p0, p1), op.n, op.eps, t)
    elif isinstance(op, TokenScale):
        p0, p1 = (placed[s] for s in op.scratch)
        t = emit_token_scale(b, placed[op.x], placed[op.y], (p0, p1), t)
    elif isinstance(op, LaneMix):
        t = emit_lane_mix(b, view(op.x), [Term(r, view(m)) for r, m in op.terms], view(op.out), t)
    elif isinstance(op, Scatter):
        t = emit_scatter(b, view(op.src), placed[op.dst], View.of(placed[op.index], lanes), t)
    elif isinstance(op, Send):
        t, sent = _send(b, placed[op.src], t)
    elif isinstance(op, Receive):
        t = _receive(b, placed[op.dst], arrivals, t)
    else:
        raise InternalError(f"no emitter for {op!r}")
    return t, sent


def _chain_steps(op: Chain, graph: ChipGraph, view) -> list[ChainStep]:
    """The chain's steps for its emitter: an input made by an earlier step by that step's index, a STREAM result
    unwritten."""
    made = {s.out.name: i for i, s in enumerate(op.steps)}
    return [ChainStep(s.op, s.dtype, tuple(made[r.name] if r.name in made else view(r) for r in s.ins),
                      None if graph.tensors[s.out.name].role is Role.STREAM else view(s.out), s.imm, s.to)
            for s in op.steps]


def _pair(b: ProgramBuilder, op: Pair, placed: dict[str, Tensor], start: int) -> int:
    """Both matmuls from `start`, one on each MXM: each reads and writes only its own hemisphere's slices, on its
    own MXM's inbound and outbound streams, which never reach the other hemisphere's slices in use (as the matmul
    kernel runs its two halves)."""
    done = start
    for m, h in ((op.west, Hemisphere.W), (op.east, Hemisphere.E)):
        tensors = [placed[n] for n in (m.a, m.w, m.c)]
        if any(t.placement.hemisphere is not h for t in tensors):
            raise InternalError(f"{op}: the {h.value} matmul's tensors must all sit in the {h.value} hemisphere")
        done = max(done, emit_matmul(b, *tensors, start, skip=m.skip))
    return done


def _planes(t: Tensor, lanes: int) -> list[tuple[int, int]]:
    """(address, byte) of every stream-vector of a row-major tensor, in the order links carry them."""
    if t.placement.interleave != 1:
        raise InternalError(f"{t.name}: only row-major tensors cross chips")
    return [(t.placement.address + a, byte) for a in range(t.column_blocks(lanes) * t.rows)
            for byte in range(t.dtype.width_bytes)]


def _send(b: ProgramBuilder, t: Tensor, start: int) -> tuple[int, tuple[int, ...]]:
    """Each byte plane of each vector of `t` (west) to the east link, one per serialisation time."""
    chip, lanes = b.chip, b.chip.lanes.lanes
    target, gap = b.position(EAST_LINK), chip.serialisation_cycles
    far = max(abs(target - b.position(mem_queue(t.placement.hemisphere, s))) for s in t.slices_used())
    first = start + far + chip.mem.read_latency_cycles
    sent = []
    for k, (addr, byte) in enumerate(_planes(t, lanes)):
        cycle = first + k * gap
        plane = View(_byte_plane(t, byte, addr), 0, 1, 0, 1)
        read_view(b, plane, StreamRef(Direction.E, 0), target, cycle)
        b.place(EAST_LINK, cycle, Instruction(op=Opcode.SEND, a=StreamRef(Direction.E, 0)))
        sent.append(cycle)
    return sent[-1] + 1, tuple(sent)


def _receive(b: ProgramBuilder, t: Tensor, arrivals: tuple[int, ...], start: int) -> int:
    """Take each vector off the west link as soon as it has arrived and write it to its plane of `t`."""
    chip, lanes = b.chip, b.chip.lanes.lanes
    planes = _planes(t, lanes)
    if len(arrivals) != len(planes):
        raise InternalError(f"{t.name}: {len(planes)} vectors to receive, {len(arrivals)} sent")
    here, cycle, done = b.position(WEST_LINK), start, start
    out = StreamRef(Direction.E, 0)
    for (addr, byte), arrive in zip(planes, arrivals):
        cycle = max(cycle, arrive)
        b.place(WEST_LINK, cycle, Instruction(op=Opcode.RECEIVE, out=out))
        q = mem_queue(t.placement.hemisphere, t.placement.first_slice + byte)
        at = cycle + chip.c2c.receive_latency_cycles + abs(b.position(q) - here)
        b.place(q, at, Instruction(op=Opcode.WRITE, addr=addr, a=out))
        done = max(done, at + chip.mem.write_latency_cycles + 1)
        cycle += 1
    return done


def _byte_plane(t: Tensor, byte: int, address: int) -> Tensor:
    """One vector of byte plane `byte` of t, as a one-vector int8 tensor (read onto one stream)."""
    p = t.placement
    return replace(t, dtype=DType.INT8, rows=1, cols=1,
                   placement=replace(p, first_slice=p.first_slice + byte, address=address))


def link_arrivals(chip: Chip, sent: tuple[int, ...]) -> tuple[int, ...]:
    """When vectors sent at `sent` are in the peer's receive buffer."""
    return tuple(s + chip.serialisation_cycles + chip.c2c.link_latency_cycles for s in sent)
