"""The reference simulator against the fast engine: kernels, every opcode, every error class, random programs.

`agree(program)` runs both. Legal programs must give the same cycles, events, utilisation, check outcomes and
bit-identical tensors. Illegal ones must raise the same error class; for a ScheduleError, the fast engine's
violation (kind and cycle, read from its message) must be one the reference found (with `keep_going` it lists
them all). The DISCREPANCIES cases at the end reproduce disagreements once found between the two (int32 and fp32
accumulators in one batch, more installs in flight than the engine looked at, more than 64 streams, Repeat past
the last slot or row, the order errors were reported in); the fast engine was fixed and they now guard it.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sim_engine import COPY as ENGINE_COPY

import openlpu.kernels
from openlpu.errors import OpenLPUError, ProgramError, ScheduleError
from openlpu.hardware import Hemisphere, load_chip
from openlpu.isa.asm import parse_program
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import VXM_LARGE_ONLY, VXM_TRANSCENDENTAL, Opcode
from openlpu.isa.program import Placement, Program, Tensor, make_program
from openlpu.isa.types import Direction, DType, QueueId, StreamRef, Unit
from openlpu.kernels.builder import ProgramBuilder, mem_queue, mxm_queue, vxm_queue
from openlpu.sim import simulate
from openlpu.sim.reference import Kind, simulate_reference
from openlpu.sim.semantics import latency
from openlpu.sim.validate import inbound, lw_rows, outbound

CHIP = load_chip("groqchip1")
W, E = Hemisphere.W, Hemisphere.E
DE, DW = Direction.E, Direction.W
F16, F32, I8, I16, I32 = DType.FP16, DType.FP32, DType.INT8, DType.INT16, DType.INT32
READ_LAT = CHIP.mem.read_latency_cycles
EXAMPLES = Path(__file__).parents[1] / "src" / "openlpu" / "examples"


# -- running both --------------------------------------------------------------------------------------------

def _fast(program, chip, inputs):
    try:
        return simulate(program, chip, inputs)
    except Exception as e:
        return e


def _reference(program, chip, inputs):
    try:
        return simulate_reference(program, chip, inputs, keep_going=True)
    except OpenLPUError as e:
        return e


#: The fast engine's ScheduleError messages by kind; groups hold the cycle (CLOBBERED: written, overwritten).
FAST_MESSAGES = [
    (Kind.TWO_WRITERS, r"^two producers write stream \S+ at .*? in cycle (\d+)"),
    (Kind.NO_VALUE, r"^read of stream \S+ holding no value at .*? in cycle (\d+)"),
    (Kind.CLOBBERED, r"the value written in cycle (\d+) .*?is overwritten at .*? in cycle (\d+)"),
    (Kind.BANK, r"^bank conflict in cycle (\d+)"),
    (Kind.ADDRESS, r"^address -?\d+ out of range .*? at cycle (\d+),"),
    (Kind.LANE_ADDRESS, r"^cycle (\d+), .*a lane address from the map stream"),
    (Kind.NO_WEIGHTS, r"^cycle (\d+), .*used before\s+weights are installed"),
    (Kind.WEIGHTS_DTYPE, r"^cycle (\d+), .*activations into"),
    (Kind.SHADOW_DTYPE, r"^cycle (\d+), .*rows into a shadow buffer"),
    (Kind.ABC_INTERVAL, r"^cycle (\d+), .*after the\s+previous one on this plane"),
    (Kind.ACC_EMPTY, r"^cycle (\d+), .*holds no completed\s+ABC result"),
    (Kind.IW_EMPTY, r"^cycle (\d+), .*installs an empty shadow buffer"),
    (Kind.PARKED, r"`sync` at cycle (\d+): the queue stays parked forever"),
]


def fast_violation(error: ScheduleError) -> tuple[Kind, tuple[int, ...]] | None:
    """(kind, cycles) of the fast engine's error, or None if its message is not one we know."""
    for kind, pattern in FAST_MESSAGES:
        m = re.search(pattern, str(error), re.DOTALL)
        if m:
            return kind, tuple(int(g) for g in m.groups())
    return None


def _same(violation, kind: Kind, cycles: tuple[int, ...]) -> bool:
    if kind is Kind.CLOBBERED:
        return violation.kind is kind and (violation.written, violation.cycle) == cycles
    return violation.kind is kind and violation.cycle == cycles[0]


def agree(program: Program, chip=CHIP, inputs=None):
    """Run both simulators and assert they agree; returns the reference's Result or error."""
    fast, ref = _fast(program, chip, inputs), _reference(program, chip, inputs)
    if isinstance(fast, Exception) or isinstance(ref, Exception):
        assert type(fast) is type(ref), f"fast engine: {fast!r}\nreference: {ref!r}"
        if isinstance(fast, ScheduleError):
            _assert_reference_found(fast, ref)
        return ref
    assert fast.cycles == ref.cycles
    assert (fast.events, fast.instructions) == (ref.events, ref.instructions)
    assert fast.utilisation == pytest.approx(ref.utilisation)
    assert [c.passed for c in fast.checks] == [c.passed for c in ref.checks]
    assert sorted(fast.tensors) == sorted(ref.tensors)
    for name in ref.tensors:
        a, b = np.ascontiguousarray(fast.tensors[name]), np.ascontiguousarray(ref.tensors[name])
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)), f"{name} differs"
    return ref


def _assert_reference_found(fast: ScheduleError, ref: ScheduleError) -> None:
    found = fast_violation(fast)
    if found is None:  # a message we cannot parse: one cycle it names must be a violation's
        cycles = {int(c) for c in re.findall(r"cycle (\d+)", str(fast))}
        assert cycles & {v.cycle for v in ref.violations}, f"fast: {fast}\nreference: {ref.violations}"
    else:
        assert any(_same(v, *found) for v in ref.violations), \
            f"fast engine reports {found}, unknown to the reference:\n{fast}\n\nreference: {ref.violations}"


def run_legal(program: Program, chip=CHIP, inputs=None):
    """`agree`, for a program that must run without error."""
    ref = agree(program, chip, inputs)
    assert not isinstance(ref, Exception), ref
    return ref


def first_violation(error: ScheduleError) -> tuple[Kind, int]:
    return error.violations[0].kind, error.violations[0].cycle


# -- building programs ---------------------------------------------------------------------------------------

def tensor(name, dtype, rows, h, first_slice, address=0, interleave=1, cols=CHIP.lanes.lanes) -> Tensor:
    place = Placement(hemisphere=h, first_slice=first_slice, address=address, interleave=interleave)
    return Tensor(name=name, dtype=dtype, rows=rows, cols=cols, placement=place)


def feed(b: ProgramBuilder, t: Tensor, d: Direction, stream: int, target: int, arrive: int, count: int = 1,
         interval: int = 1) -> None:
    """Read `count` vectors of every slice of `t` (slice j onto stream `stream + j`) to reach `target`."""
    for j in range(len(t.slices_used())):
        q = mem_queue(t.placement.hemisphere, t.placement.first_slice + j)
        ins = Instruction(op=Opcode.READ, addr=t.placement.address, out=StreamRef(d, stream + j))
        b.place(q, b.issue_to_arrive(q, READ_LAT, target, arrive), ins, count, interval)


def drain(b: ProgramBuilder, t: Tensor, d: Direction, stream: int, source: int, produced: int, count: int = 1,
          interval: int = 1) -> None:
    """Write what is produced at position `source` in cycle `produced` (stream `stream + j` into slice j)."""
    for j in range(len(t.slices_used())):
        q = mem_queue(t.placement.hemisphere, t.placement.first_slice + j)
        ins = Instruction(op=Opcode.WRITE, addr=t.placement.address, a=StreamRef(d, stream + j))
        b.place(q, b.arrival(source, produced, q), ins, count, interval)


def values(rng, dtype: DType, shape) -> np.ndarray:
    """Random values of `dtype`, with awkward ones (NaN, infinities, signed zeros, huge) among the floats."""
    if not dtype.is_float:
        info = np.iinfo(dtype.numpy)
        return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype.numpy)
    x = rng.normal(0, 3, shape)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 70000.0, -1e-8, 1e30 if dtype is F32 else 6e4])
    mask = rng.random(shape) < 0.05
    x[mask] = rng.choice(specials, mask.sum())
    with np.errstate(over="ignore"):
        return x.astype(dtype.numpy)


def with_config_and_sync(program: Program, notify_at: int = 3) -> Program:
    """Every queue first parks at a Sync; a notifier queue releases them all in `notify_at` after a Config."""
    queues = {q: (Instruction(op=Opcode.SYNC),) + instrs for q, instrs in program.queues}
    queues[QueueId(Unit.SXM, E, 13)] = (Instruction(op=Opcode.NOP, n=notify_at - 1),
                                        Instruction(op=Opcode.CONFIG, superlanes=20),
                                        Instruction(op=Opcode.NOTIFY))
    return make_program(program.name, queues, program.tensors, program.checks, chip=program.chip)


def edited(program: Program, edit) -> Program:
    """`program` with `edit(queues)` applied to its queues (a dict of instruction lists)."""
    queues = {q: list(instrs) for q, instrs in program.queues}
    edit(queues)
    return make_program(program.name, queues, program.tensors, program.checks, chip=program.chip)


def _find(instrs, op) -> int:
    return next(i for i, ins in enumerate(instrs) if ins.op is op)


# -- kernels -------------------------------------------------------------------------------------------------

def _matmul_cases():
    from openlpu.kernels.matmul import matmul

    rng = np.random.default_rng(1)
    for m, k, n in [(3, 100, 50), (2, 400, 340)]:
        a, b = rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n))
        yield f"int8-{m}x{k}x{n}", matmul(CHIP, a, b, I8)
        a, b = rng.uniform(-2, 2, (m, k)).astype(np.float16), rng.uniform(-2, 2, (k, n)).astype(np.float16)
        yield f"fp16-{m}x{k}x{n}", matmul(CHIP, a, b, F16)


def _chain_cases():
    from openlpu.kernels.chain import Step, vxm_chain

    x = np.random.default_rng(2).normal(0, 2, (5, 300)).astype(np.float32)
    steps = [Step(Opcode.MUL, 1.5), Step(Opcode.TANH), Step(Opcode.ADD, -0.25), Step(Opcode.EXP),
             Step(Opcode.SILU), Step(Opcode.MAX, 0.5)]
    yield "six-steps", vxm_chain(CHIP, x, steps)
    yield "one-step", vxm_chain(CHIP, np.abs(x[:1]) + 0.1, [Step(Opcode.RSQRT)])


def _elementwise_cases():
    from openlpu.kernels.elementwise import binary, binary_scalar, unary

    rng = np.random.default_rng(3)
    yield "exp-fp16", unary(CHIP, Opcode.EXP, rng.normal(0, 2, (9, 700)), F16)
    yield "relu-fp32", unary(CHIP, Opcode.RELU, rng.normal(0, 2, (3, 50)), F32)
    yield "add-int8", binary(CHIP, Opcode.ADD, values(rng, I8, (7, 400)), values(rng, I8, (7, 400)), I8)
    yield "mul-fp32", binary(CHIP, Opcode.MUL, rng.normal(0, 2, (5, 320)), rng.normal(0, 2, (5, 320)), F32)
    yield "max-scalar-int16", binary_scalar(CHIP, Opcode.MAX, values(rng, I16, (4, 330)), -7, I16)


def _reduce_cases():
    from openlpu.kernels.reduce import rowmax, rowsum

    rng = np.random.default_rng(4)
    yield "rowsum-3x700", rowsum(CHIP, rng.normal(0, 2, (3, 700)).astype(np.float32))
    yield "rowmax-2x100", rowmax(CHIP, rng.normal(0, 2, (2, 100)).astype(np.float32))


def _quantize_cases():
    from openlpu.kernels.quantize import token_scale

    yield "2x700", token_scale(CHIP, np.random.default_rng(8).normal(0, 2, (2, 700)).astype(np.float32))


def _lanemix_cases():
    from openlpu.kernels.lanemix import lane_mix

    rng = np.random.default_rng(9)
    x = rng.normal(0, 1, (2, 640)).astype(np.float32)
    terms = [(r, rng.normal(0, 1, x.shape).astype(np.float32)) for r in (0, -32, 32)]
    yield "rope-like-west", lane_mix(CHIP, x, terms)
    yield "east-shared-slices-waves", lane_mix(CHIP, np.tile(x, (30, 1)), [(r, np.tile(m, (30, 1))) for r, m in terms],
                                               source=Hemisphere.E, share=1)


def _softmax_cases():
    from openlpu.kernels.softmax import softmax

    yield "3x400", softmax(CHIP, np.random.default_rng(5).normal(0, 3, (3, 400)).astype(np.float32))


def _rmsnorm_cases():
    from openlpu.kernels.rmsnorm import rmsnorm

    rng = np.random.default_rng(6)
    x, w = rng.normal(0, 3, (2, 500)).astype(np.float32), rng.normal(1, 0.2, 500).astype(np.float32)
    yield "2x500", rmsnorm(CHIP, x, w)


def _relayout_cases():
    from openlpu.hardware import Hemisphere
    from openlpu.kernels.relayout import Step, relayout

    x = np.random.default_rng(7).normal(0, 2, (3, 500)).astype(np.float32)
    steps = [Step(Opcode.RELU, F32), Step(Opcode.CAST, F32, F16)]
    yield "west-to-east", relayout(CHIP, x, steps, Hemisphere.W, Hemisphere.E)
    yield "east-to-east", relayout(CHIP, x, steps, Hemisphere.E, Hemisphere.E)


def _vectors_cases():
    from openlpu.kernels.vectors import row_binary, scatter_row

    rng = np.random.default_rng(8)
    x, y = rng.normal(0, 1, (6, 700)).astype(np.float32), rng.normal(0, 1, (1, 700)).astype(np.float32)
    yield "row-broadcast-interleaved", row_binary(CHIP, Opcode.MUL, x, y, F32, interleave=2)
    yield "row-broadcast-fp16", row_binary(CHIP, Opcode.SUB, x, y, F16, interleave=1)
    yield "scatter-row", scatter_row(CHIP, rng.normal(0, 1, (9, 400)), rng.normal(0, 1, (1, 400)), 5, F32)


#: module of openlpu.kernels -> its cases (name, Kernel). Every kernel module must have an entry.
KERNEL_CASES = {"matmul": _matmul_cases, "chain": _chain_cases, "elementwise": _elementwise_cases,
                "reduce": _reduce_cases, "softmax": _softmax_cases, "rmsnorm": _rmsnorm_cases,
                "relayout": _relayout_cases, "vectors": _vectors_cases, "quantize": _quantize_cases,
                "lanemix": _lanemix_cases}
_NOT_KERNELS = {"builder", "kernel"}


def test_every_kernel_module_has_reference_cases():
    modules = {m.name for m in pkgutil.iter_modules(openlpu.kernels.__path__)} - _NOT_KERNELS
    assert modules <= set(KERNEL_CASES), f"add cases for kernel modules {sorted(modules - set(KERNEL_CASES))}"


def _kernel_params():
    for module, cases in KERNEL_CASES.items():
        try:
            importlib.import_module(f"openlpu.kernels.{module}")
        except ImportError:
            continue
        for name, kernel in cases():
            yield pytest.param(kernel, id=f"{module}-{name}")


@pytest.mark.parametrize("kernel", list(_kernel_params()))
def test_kernel_matches_fast_engine(kernel):
    ref = run_legal(kernel.program, CHIP, kernel.inputs)
    assert ref.cycles == kernel.predicted_cycles
    assert ref.checks_passed, [c.describe() for c in ref.checks]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.s")), ids=lambda p: p.stem)
def test_examples_match_fast_engine(path):
    assert run_legal(parse_program(path.read_text())).checks_passed


# -- every VXM opcode ----------------------------------------------------------------------------------------

_BINARY = {Opcode.ADD, Opcode.SUB, Opcode.MUL, Opcode.MAX, Opcode.MIN, Opcode.CMP_EQ, Opcode.CMP_LT,
           Opcode.CMP_LE}
VXM_CASES = [
    (Opcode.COPY, I8, {}), (Opcode.NEG, I16, {}), (Opcode.ABS, F16, {}), (Opcode.RELU, F32, {}),
    (Opcode.EXP, F16, {}), (Opcode.RECIP, F32, {}), (Opcode.RSQRT, F32, {}), (Opcode.TANH, F16, {}),
    (Opcode.SIGMOID, F32, {}), (Opcode.SILU, F16, {}),
    (Opcode.ADD, I8, {}), (Opcode.SUB, I32, {}), (Opcode.MUL, F16, {}), (Opcode.MAX, F32, {}),
    (Opcode.MIN, I16, {}), (Opcode.CMP_EQ, I8, {}), (Opcode.CMP_LT, F32, {}), (Opcode.CMP_LE, F16, {}),
    (Opcode.ADD, F32, {"imm": 0.5}), (Opcode.MUL, I16, {"imm": -3}), (Opcode.MAX, I8, {"imm": 100}),
    (Opcode.SELECT, F32, {}), (Opcode.SELECT, I8, {}),
    (Opcode.CAST, F32, {"to": F16}), (Opcode.CAST, F16, {"to": I8}), (Opcode.CAST, I32, {"to": I16}),
    (Opcode.CAST, I8, {"to": F32}), (Opcode.CAST, F16, {"to": I32}),
]


def vxm_program(op: Opcode, dtype: DType, extra: dict, *, rows: int = 4, alu: int = 5, source: Hemisphere = W,
                t0: int = 20) -> tuple[Program, dict]:
    """Rows of 1-3 operand tensors streamed from `source` through one VXM instruction to the other side."""
    rng = np.random.default_rng(0)
    b = ProgramBuilder(CHIP, f"{op.value}-{dtype.value}")
    d = DE if source is W else DW
    target = b.position(vxm_queue(alu))
    arity = 3 if op is Opcode.SELECT else 2 if op in _BINARY and "imm" not in extra else 1
    out_dt = extra.get("to", dtype)
    inputs = {}
    for i, name in enumerate("abc"[:arity]):
        t = tensor(name, dtype, rows, source, 4 * i)
        b.tensors.append(t)
        mask = op is Opcode.SELECT and i == 0
        inputs[name] = rng.integers(0, 2, (rows, t.cols)).astype(dtype.numpy) if mask else \
            values(rng, dtype, (rows, t.cols))
        feed(b, t, d, 4 * i, target, t0, rows)
    out = tensor("out", out_dt, rows, E if source is W else W, 0)
    b.tensors.append(out)
    inputs["out"] = values(rng, out_dt, (rows, out.cols))
    streams = {name: StreamRef(d, 4 * i) for i, name in enumerate("abc"[:arity])}
    ins = Instruction(op=op, dtype=dtype, out=StreamRef(d, 16), **streams, **extra)
    b.place(vxm_queue(alu), t0, ins, rows)
    drain(b, out, d, 16, target, t0 + latency(CHIP, op), rows)
    return b.build(), inputs


@pytest.mark.parametrize("op, dtype, extra", VXM_CASES, ids=lambda x: getattr(x, "value", None) or str(x))
def test_vxm_opcode(op, dtype, extra):
    program, inputs = vxm_program(op, dtype, extra)
    run_legal(program, CHIP, inputs)


def test_vxm_westward_on_a_small_alu():
    program, inputs = vxm_program(Opcode.ADD, I16, {}, alu=3, source=E)
    out = run_legal(program, CHIP, inputs).tensors["out"]
    assert np.array_equal(out, (inputs["a"].astype(np.int64) + inputs["b"]).astype(np.int16))


def test_copy_moves_the_data():
    program, inputs = vxm_program(Opcode.COPY, F32, {})
    out = run_legal(program, CHIP, inputs).tensors["out"]
    assert np.array_equal(out.view(np.uint32), inputs["a"].view(np.uint32))


# -- every SXM opcode ----------------------------------------------------------------------------------------

def sxm_program(ins: Instruction, in_group: int, out_group: int, count: int = 3, t0: int = 50):
    """Vectors from west slices 0.. (westward, `in_group` rows per vector group) through sxm.w.0 and back east
    into west slices 20.. (`out_group` rows per group)."""
    rng = np.random.default_rng(3)
    dt = ins.dtype or I8
    b = ProgramBuilder(CHIP, ins.op.value)
    sxm = QueueId(Unit.SXM, W, 0)
    target = b.position(sxm)
    src = tensor("x", dt, in_group * count, W, 0, interleave=in_group)
    dst = tensor("y", dt, out_group * count, W, 20, interleave=out_group)
    b.tensors += [src, dst]
    feed(b, src, DW, ins.a.index, target, t0, count)
    b.place(sxm, t0, ins, count)
    drain(b, dst, DE, ins.out.index, target, t0 + latency(CHIP, ins.op), count)
    return b.build(), {"x": values(rng, dt, (src.rows, src.cols)), "y": values(rng, dt, (dst.rows, dst.cols))}


def _sxm(op, a=0, out=4, **kw) -> Instruction:
    return Instruction(op=op, a=StreamRef(DW, a), out=StreamRef(DE, out), **kw)


SXM_CASES = {
    "shift-int16": (_sxm(Opcode.SHIFT, dtype=I16, lanes=5), 1, 1),
    "shift-fp32": (_sxm(Opcode.SHIFT, dtype=F32, lanes=-7), 1, 1),
    "permute": (_sxm(Opcode.PERMUTE, dtype=I8, rotate=17), 1, 1),
    "distribute": (_sxm(Opcode.DISTRIBUTE, dtype=I16, map16=(3, 3, -1, 0, 15, 14, 2, -1, 1, 1, 1, 9, 8, 7, 6,
                                                                5)), 1, 1),
    "rotate": (_sxm(Opcode.ROTATE, n=3), 3, 9),
    "transpose": (_sxm(Opcode.TRANSPOSE, a=16, out=0), 16, 16),
}


@pytest.mark.parametrize("name", SXM_CASES)
def test_sxm_opcode(name):
    program, inputs = sxm_program(*SXM_CASES[name])
    run_legal(program, CHIP, inputs)


def test_transpose_swaps_streams_and_lanes():
    program, inputs = sxm_program(*SXM_CASES["transpose"], count=1)
    out = run_legal(program, CHIP, inputs).tensors["y"]
    assert out[3, 16 * 5 + 7] == inputs["x"][7, 16 * 5 + 3]


# -- Gather and Scatter --------------------------------------------------------------------------------------

def gather_scatter_program(op: Opcode, rows: int = 3, bad_lane: bool = False):
    """A map (int16 offsets, west slices 20-21) meets a Gather/Scatter on west slice 10, whose table has 8
    rows; the Gather/Scatter issues in cycles 30..32."""
    rng = np.random.default_rng(4)
    b = ProgramBuilder(CHIP, op.value)
    q = mem_queue(W, 10)
    target, t0 = b.position(q), 30
    table, offsets = tensor("table", I8, 8, W, 10), tensor("map", I16, rows, W, 20)
    b.tensors += [table, offsets]
    inputs = {"table": values(rng, I8, (8, table.cols)),
              "map": rng.integers(0, 8 - rows, (rows, table.cols)).astype(np.int16)}
    if bad_lane:
        inputs["map"][1, 17] = CHIP.mem.addresses_per_slice - 1  # + base address 1: one past the last
    feed(b, offsets, DE, 2, target, t0, rows)
    if op is Opcode.GATHER:
        out = tensor("out", I8, rows, E, 0)
        b.tensors.append(out)
        b.place(q, t0, Instruction(op=op, addr=0, map=StreamRef(DE, 2), out=StreamRef(DE, 8)), rows)
        drain(b, out, DE, 8, target, t0 + READ_LAT, rows)
    else:
        data = tensor("data", I8, rows, W, 30)
        b.tensors.append(data)
        inputs["data"] = values(rng, I8, (rows, table.cols))
        feed(b, data, DE, 8, target, t0, rows)
        b.place(q, t0, Instruction(op=op, addr=0, map=StreamRef(DE, 2), a=StreamRef(DE, 8)), rows)
    return b.build(), inputs


@pytest.mark.parametrize("op", [Opcode.GATHER, Opcode.SCATTER], ids=lambda o: o.value)
def test_gather_and_scatter(op):
    program, inputs = gather_scatter_program(op)
    ref = run_legal(program, CHIP, inputs)
    if op is Opcode.GATHER:
        lane = np.arange(CHIP.lanes.lanes)
        assert np.array_equal(ref.tensors["out"][1], inputs["table"][1 + inputs["map"][1], lane])


@pytest.mark.parametrize("op", [Opcode.GATHER, Opcode.SCATTER], ids=lambda o: o.value)
def test_lane_address_out_of_range(op):
    program, inputs = gather_scatter_program(op, bad_lane=True)
    ref = agree(program, CHIP, inputs)
    assert first_violation(ref) == (Kind.LANE_ADDRESS, 31)


@pytest.mark.parametrize("op", [Opcode.GATHER, Opcode.SCATTER], ids=lambda o: o.value)
def test_gather_and_scatter_conflict_with_any_access_of_their_slice(op):
    """Bank 1 (address 5) next to a Gather's read or a Scatter's commit, which may touch either bank."""
    program, inputs = gather_scatter_program(op)

    def edit(queues):  # mem.w.10: nop 30, gather/scatter in 30..32 (a Scatter commits in 31..33), repeat
        q = queues[mem_queue(W, 10)]
        if op is Opcode.GATHER:
            write = Instruction(op=Opcode.WRITE, addr=5, a=StreamRef(DE, 9))
            q[:1] = [Instruction(op=Opcode.NOP, n=29), write]
        else:
            q.append(Instruction(op=Opcode.READ, addr=5, out=StreamRef(DW, 9)))

    ref = agree(edited(program, edit), CHIP, inputs)
    assert (Kind.BANK, 30 if op is Opcode.GATHER else 33) in [(v.kind, v.cycle) for v in ref.violations]


# -- MXM -----------------------------------------------------------------------------------------------------

def load_weights(b: ProgramBuilder, h: Hemisphere, weights: Tensor, t: int) -> int:
    """LW a whole plane 0 from `weights` (interleaved over 32 slices) from cycle t; returns the IW's cycle."""
    count = b.chip.mxm.plane_rows // lw_rows(b.chip, weights.dtype)
    mxm = mxm_queue(h, 0)
    feed(b, weights, inbound(h), 0, b.position(mxm), t, count)
    b.place(mxm, t, Instruction(op=Opcode.LW, plane=0, dtype=weights.dtype, row=0), count)
    return t + count


def mxm_program(dtype: DType = I8, second_weights: bool = False, h: Hemisphere = W):
    """Weights into plane 0 of one MXM; ABCs into slot 0 (fresh), slot 1 (accumulating into an empty slot) and
    slot 0 (accumulating); ACCs read slot 0 before and after its second product lands; optionally a second IW
    installs other weights for a fourth ABC. Tensors w_H (and v_H), a_H, c_H for hemisphere H."""
    rng = np.random.default_rng(5)
    m = CHIP.mxm
    b = ProgramBuilder(CHIP, f"mxm-{dtype.value}")
    d_in, d_out, x = inbound(h), outbound(h), h.value
    rows, out_dt = lw_rows(CHIP, dtype), I32 if dtype is I8 else F32
    wt, acts = tensor(f"w_{x}", dtype, 320, h, 12, interleave=rows), tensor(f"a_{x}", dtype, 4, h, 0)
    c = tensor(f"c_{x}", out_dt, 4, h, 4)
    b.tensors += [wt, acts, c]
    fill = (lambda shape: values(rng, I8, shape)) if dtype is I8 else \
        (lambda shape: rng.normal(0, 1, shape).astype(np.float16))
    inputs = {wt.name: fill((320, 320)), acts.name: fill((4, 320))}
    mxm, acc_q = mxm_queue(h, 0), mxm_queue(h, 1)
    iw = load_weights(b, h, wt, 45)
    b.place(mxm, iw, Instruction(op=Opcode.IW, plane=0))
    gap = m.fp16_issue_interval_cycles if dtype is F16 else 1
    start = iw + m.iw_latency_cycles
    feed(b, acts, d_in, 0, b.position(mxm), start, 3, gap)
    for i, (slot, add) in enumerate([(0, False), (1, True), (0, True)]):
        ins = Instruction(op=Opcode.ABC, plane=0, dtype=dtype, a=StreamRef(d_in, 0), slot=slot,
                          accumulate=add)
        b.place(mxm, start + i * gap, ins)
    landed = start + m.abc_latency_cycles  # the first product's landing
    for i, (cycle, slot) in enumerate([(landed, 0), (landed + gap, 1), (landed + 2 * gap, 0)]):
        b.place(acc_q, cycle, Instruction(op=Opcode.ACC, plane=0, slot=slot, out=StreamRef(d_out, 0)))
        row = tensor(c.name, out_dt, 4, h, 4, address=i)
        drain(b, row, d_out, 0, b.position(acc_q), cycle + m.acc_latency_cycles)
    if second_weights:
        other = tensor(f"v_{x}", dtype, 320, h, 12, address=320 // rows, interleave=rows)
        b.tensors.append(other)
        inputs[other.name] = fill((320, 320))
        t = load_weights(b, h, other, start + 3 * gap + 40)
        b.place(mxm, t, Instruction(op=Opcode.IW, plane=0))
        t += m.iw_latency_cycles
        feed(b, tensor(acts.name, dtype, 4, h, 0, address=3), d_in, 0, b.position(mxm), t)
        b.place(mxm, t, Instruction(op=Opcode.ABC, plane=0, dtype=dtype, a=StreamRef(d_in, 0), slot=2))
        t += m.abc_latency_cycles
        b.place(acc_q, t, Instruction(op=Opcode.ACC, plane=0, slot=2, out=StreamRef(d_out, 0)))
        row = tensor(c.name, out_dt, 4, h, 4, address=3)
        drain(b, row, d_out, 0, b.position(acc_q), t + m.acc_latency_cycles)
    return b.build(), inputs


def _int8_products(inputs: dict, x: str) -> np.ndarray:
    a, w = inputs[f"a_{x}"].astype(np.int64), inputs[f"w_{x}"].astype(np.int64)
    return np.stack([a[0] @ w, a[1] @ w, a[0] @ w + a[2] @ w]).astype(np.int32)


@pytest.mark.parametrize("h", [W, E], ids=["west", "east"])
@pytest.mark.parametrize("dtype", [I8, F16], ids=lambda d: d.value)
@pytest.mark.parametrize("second", [False, True], ids=["one-install", "two-installs"])
def test_mxm_load_install_multiply_accumulate(dtype, second, h):
    program, inputs = mxm_program(dtype, second, h)
    c = run_legal(program, CHIP, inputs).tensors[f"c_{h.value}"]
    if dtype is I8:
        assert np.array_equal(c[:3], _int8_products(inputs, h.value))
        if second:
            v = inputs[f"v_{h.value}"].astype(np.int64)
            assert np.array_equal(c[3], (inputs[f"a_{h.value}"][3].astype(np.int64) @ v).astype(np.int32))


def _abc_before_iw(queues):  # an ABC in the IW's cycle: no weights are active yet
    q = queues[mxm_queue(W, 0)]
    q.insert(_find(q, Opcode.IW), Instruction(op=Opcode.ABC, plane=0, dtype=I8, a=StreamRef(DW, 0), slot=5))


def _fp16_abc(queues):  # fp16 activations into int8 weights
    q = queues[mxm_queue(W, 0)]
    i = _find(q, Opcode.ABC)
    q[i] = q[i].with_(dtype=F16)


def _double_abc(queues):  # a second queue issues an ABC into the same plane in the same cycle
    q = queues[mxm_queue(W, 0)]
    i = _find(q, Opcode.ABC)
    queues[mxm_queue(W, 2)] = [Instruction(op=Opcode.NOP, n=_issue_cycle(q, i)), q[i].with_(slot=9)]


def _issue_cycle(instrs, index: int) -> int:
    t, last = 0, 0
    for i, ins in enumerate(instrs):
        if i == index:
            return t
        if ins.op is Opcode.NOP:
            t += ins.n
        elif ins.op is Opcode.REPEAT:
            last += ins.d * ins.n
            t = last + 1
        else:
            last, t = t, t + 1
    return t


def _early_acc(queues):  # every ACC a cycle early: the first reads slot 0 before its product lands
    q = queues[mxm_queue(W, 1)]
    q[0] = q[0].with_(n=q[0].n - 1)


def _mixed_lw(queues):  # fp16 rows into a shadow buffer holding int8 rows
    q = queues[mxm_queue(W, 0)]
    q.insert(_find(q, Opcode.LW) + 1, Instruction(op=Opcode.LW, plane=0, dtype=F16, row=0))


@pytest.mark.parametrize("edit, kind", [
    (_abc_before_iw, Kind.NO_WEIGHTS), (_fp16_abc, Kind.WEIGHTS_DTYPE), (_double_abc, Kind.ABC_INTERVAL),
    (_early_acc, Kind.ACC_EMPTY), (_mixed_lw, Kind.SHADOW_DTYPE),
], ids=lambda x: getattr(x, "__name__", None) or x.name)
def test_mxm_conflict(edit, kind):
    program, inputs = mxm_program(I8)
    ref = agree(edited(program, edit), CHIP, inputs)
    assert kind in [v.kind for v in ref.violations]


def test_fp16_abcs_one_cycle_apart():
    program, inputs = mxm_program(F16)

    def edit(queues):
        q = queues[mxm_queue(W, 0)]
        i = _find(q, Opcode.ABC)
        q[i + 1] = q[i + 1].with_(n=0)  # the NOP between the first two ABCs

    ref = agree(edited(program, edit), CHIP, inputs)
    assert Kind.ABC_INTERVAL in [v.kind for v in ref.violations]


# -- ICU: NOP, Repeat, Sync, Notify, Config ------------------------------------------------------------------

def test_sync_notify_config_shift_everything():
    program, inputs = vxm_program(Opcode.ADD, F32, {})
    base = run_legal(program, CHIP, inputs)
    synced = run_legal(with_config_and_sync(program, notify_at=5), CHIP, inputs)
    assert synced.cycles == base.cycles + 5 + CHIP.icu.notify_latency_cycles
    assert np.array_equal(synced.tensors["out"].view(np.uint32), base.tensors["out"].view(np.uint32))


def test_sync_notify_on_the_mxm():
    program, inputs = mxm_program(I8)
    run_legal(with_config_and_sync(program, notify_at=2), CHIP, inputs)


ICU_TEXT = """.program icu
.tensor x int8 6x320 @ w:1 addr=0 = random(1, -100, 100)
.tensor y int8 6x320 @ e:0 addr=0
.queue mem.w.1
    read addr=0 out=E0 stride=2
    repeat n=2 d=3
    repeat n=1 d=1
    nop n=0
    sync
    read addr=1 out=E0
    nop n=6
    notify
.queue vxm.0
    nop n=4
    copy dtype=int8 a=E0 out=E4
    repeat n=2 d=3
    repeat n=1 d=1
    sync
    nop n=4
    copy dtype=int8 a=E0 out=E4
.queue mem.e.0
    config superlanes=4
    nop n=9
    write addr=0 a=E4
    repeat n=2 d=3
    repeat n=1 d=1
    sync
    nop n=2
    write addr=5 a=E4
.queue sxm.w.0
    nop n=12
    notify
"""


def test_repeat_of_repeat_and_notify_release_order():
    # mem.w.1 reads in 0, 3, 6 (addresses 0, 2, 4) and 7 (address 6, past the tensor), and parks in 8;
    # vxm.0 copies in 4, 7, 10, 11 and parks in 12, the cycle of the first Notify, which releases both (they
    # resume in 13); mem.e.0 writes in 10, 13, 16, 17 and parks in 18 until mem.w.1's Notify in 20; the row
    # read in 13 is copied in 17 and written in 23.
    ref = run_legal(parse_program(ICU_TEXT))
    x = simulate_reference(parse_program(ICU_TEXT)).tensors["x"]
    assert np.array_equal(ref.tensors["y"], np.stack([x[0], x[2], x[4], 0 * x[0], 0 * x[0], x[1]]))
    assert ref.cycles == 23 + CHIP.mem.write_latency_cycles + CHIP.lanes.superlanes


REPEAT_AFTER_SYNC = """.program p
.tensor x int8 4x320 @ w:0 addr=0 = random(1, -128, 127)
.tensor y int8 4x320 @ e:0 addr=0
.queue mem.w.0
    read addr=0 out=E0
    sync
    repeat n=2 d=1
.queue vxm.0
    nop n=9
    notify
.queue mem.e.0
    nop n=7
    write addr=0 a=E0
    sync
    nop n=7
    write addr=1 a=E0
    repeat n=1 d=1
"""

REPEAT_AFTER_NOP = """.program p
.tensor x int8 4x320 @ w:0 addr=0 = random(1, -128, 127)
.tensor y int8 4x320 @ e:0 addr=0
.queue mem.w.0
    read addr=0 out=E0
    nop n=5
    repeat n=2 d=1
.queue mem.e.0
    nop n=7
    write addr=0 a=E0
    nop n=5
    write addr=1 a=E0
    repeat n=1 d=1
"""


@pytest.mark.parametrize("text", [REPEAT_AFTER_SYNC, REPEAT_AFTER_NOP], ids=["after-sync", "after-nop"])
def test_repeat_after_a_sync_or_nop_starts_when_the_queue_reaches_it(text):
    # mem.w.0 reads in 0, then (released in 10 by the Notify in 9 / idle until 6) in 10, 11 / 6, 7; each value
    # reaches mem.e.0 seven cycles after its read, where a write stores it
    ref = run_legal(parse_program(text))
    assert np.array_equal(ref.tensors["y"][:3], ref.tensors["x"][:3])


def test_parked_forever():
    ref = agree(parse_program(".program p\n.queue vxm.0\n    nop n=3\n    sync\n.queue vxm.1\n    notify\n"))
    assert [(v.kind, v.cycle) for v in ref.violations] == [(Kind.PARKED, 3)]


def test_repeat_with_nothing_before_it():
    assert isinstance(agree(parse_program(".program p\n.queue vxm.0\n    nop n=1\n    repeat n=2 d=1\n")),
                      ProgramError)


def test_empty_program():
    assert run_legal(parse_program(".program p\n.tensor x int8 1x320 @ w:0 addr=0\n")).cycles == 0


# -- stream timing: the documented rule, and every stream and bank conflict ----------------------------------

COPY = ENGINE_COPY  # the engine tests' two-row copy program


def test_value_arrives_after_latency_plus_hops():
    # the read in 0 lands on E0 at mem.w.1 (position 44) in 2 and reaches VXM rank 0 (position 46) in 4
    ref = run_legal(parse_program(COPY))
    assert ref.checks_passed
    assert ref.cycles == 11 + CHIP.mem.write_latency_cycles + CHIP.lanes.superlanes


@pytest.mark.parametrize("nop, cycle", [(3, 3), (5, 6)])
def test_one_cycle_early_or_late_reads_nothing(nop, cycle):
    # early: the first row reaches the ALU in 4; late: the ALU reads the second row, then nothing
    ref = agree(parse_program(COPY.replace("    nop n=4\n", f"    nop n={nop}\n")))
    assert first_violation(ref) == (Kind.NO_VALUE, cycle)


def test_a_unit_cannot_read_its_own_output():
    text = """.program p
.tensor x int8 1x320 @ w:0 addr=0 = const(1)
.queue mem.w.0
    read addr=0 out=E0
.queue vxm.0
    nop n=3
    copy dtype=int8 a=E0 out=E4
.queue vxm.4
    nop n=5
    copy dtype=int8 a=E4 out=E8
"""
    assert first_violation(agree(parse_program(text))) == (Kind.NO_VALUE, 5)


def test_the_next_rank_reads_the_output_one_hop_later():
    text = """.program p
.tensor x int8 1x320 @ w:0 addr=0 = const(3)
.tensor y int8 1x320 @ e:0 addr=0
.check y == -x
.queue mem.w.0
    read addr=0 out=E0
.queue vxm.0
    nop n=3
    copy dtype=int8 a=E0 out=E4
.queue vxm.1
    nop n=6
    neg dtype=int8 a=E4 out=E8
.queue mem.e.0
    nop n=11
    write addr=0 a=E8
"""
    assert run_legal(parse_program(text)).checks_passed


TWO_WRITERS = """.program p
.tensor x int8 1x320 @ w:0 addr=0 = const(1)
.queue mem.w.0
    read addr=0 out=E0
.queue vxm.0
    nop n=3
    copy dtype=int8 a=E0 out=E4
.queue vxm.4
    nop n=3
    copy dtype=int8 a=E0 out=E4
"""

CLOBBERED = """.program p
.tensor x int8 1x320 @ w:1 addr=0 = const(1)
.queue mem.w.1
    read addr=0 out=E0
.queue mem.w.0
    nop n=1
    read addr=0 out=E0
"""

BANK = """.program p
.tensor x int8 4x320 @ w:0 addr=0 = const(1)
.queue mem.w.1
    read addr=0 out=E0
.queue mem.w.0
    nop n=3
    write addr=2 a=E0
    read addr=0 out=E4
"""


@pytest.mark.parametrize("text, violation", [
    (TWO_WRITERS, (Kind.TWO_WRITERS, 5)),
    (CLOBBERED, (Kind.CLOBBERED, 3)),
    (BANK, (Kind.BANK, 4)),
    (BANK.replace("write addr=2", "write addr=3"), None),
    (".program p\n.queue mem.w.0\n    read addr=8190 out=E0 stride=1\n    repeat n=3 d=1\n",
     (Kind.ADDRESS, 2)),
    (".program p\n.queue mxm.w.0\n    iw plane=0\n", (Kind.IW_EMPTY, 0)),
], ids=["two-writers", "clobbered", "bank", "other-bank", "address", "iw-empty"])
def test_conflict(text, violation):
    ref = agree(parse_program(text))
    assert (first_violation(ref) if isinstance(ref, ScheduleError) else None) == violation


# -- random programs: MEM reads -> a VXM op -> MEM writes ----------------------------------------------------

_OPS = [Opcode.COPY, Opcode.NEG, Opcode.RELU, Opcode.EXP, Opcode.ADD, Opcode.MUL, Opcode.MAX, Opcode.CMP_LT,
        Opcode.SELECT, Opcode.CAST]
_LARGE, _SMALL = (0, 2, 5, 7, 8, 10, 13, 15), (1, 3, 4, 6, 9, 11, 12, 14)
_JITTER = st.sampled_from([0] * 10 + [-1, 1])


@st.composite
def pipelines(draw):
    """A few MEM reads -> one VXM instruction (repeated) -> MEM writes. Half are on time; the others may
    have a read, the op or a write a cycle off. Sometimes operands share streams, a second ALU of the same
    rank writes too, an ALU is too small, a probe read meets a write's bank, an address runs out, or every
    queue first waits at a Sync."""
    off = _JITTER if draw(st.booleans()) else st.just(0)
    op = draw(st.sampled_from(_OPS))
    dtype = draw(st.sampled_from([F16, F32] if op in VXM_TRANSCENDENTAL else [I8, I16, I32, F16, F32]))
    large_only = op in VXM_LARGE_ONLY and draw(st.integers(0, 9)) > 0
    alu = draw(st.sampled_from(_LARGE if large_only else _LARGE + _SMALL))
    source = draw(st.sampled_from([W, E]))
    d = DE if source is W else DW
    rows, interval = draw(st.integers(1, 3)), draw(st.sampled_from([1, 1, 2]))
    imm = draw(st.sampled_from([None, None, None, 3, -2.5])) if op in _BINARY else None
    arity = 3 if op is Opcode.SELECT else 2 if op in _BINARY and imm is None else 1
    to = draw(st.sampled_from([I8, I16, F16, F32])) if op is Opcode.CAST else None
    out_dt = to or dtype
    b = ProgramBuilder(CHIP, "random")
    target, t0 = b.position(vxm_queue(alu)), 20
    streams = draw(st.permutations([0, 4, 8, 12]))[:arity]
    if arity > 1 and draw(st.integers(0, 5)) == 0:
        streams[1] = streams[0]
    for i in range(arity):
        b.tensors.append(tensor("abc"[i], dtype, 4, source, 4 * i))
        addr = draw(st.sampled_from([0, 0, 0, 1, 8190]))
        for j in range(dtype.width_bytes):
            q = mem_queue(source, 4 * i + j)
            ins = Instruction(op=Opcode.READ, addr=addr, out=StreamRef(d, streams[i] + j))
            b.place(q, b.issue_to_arrive(q, READ_LAT, target, t0) + draw(off), ins, rows, interval)
    out_stream = draw(st.sampled_from([16, 16, 16, 16, 0, 4]))
    operands = {name: StreamRef(d, s) for name, s in zip("abc", streams)}
    extra = {"to": to} if to else {"imm": imm} if imm is not None else {}
    ins = Instruction(op=op, dtype=dtype, out=StreamRef(d, out_stream), **operands, **extra)
    b.place(vxm_queue(alu), t0 + draw(off), ins, rows, interval)
    if draw(st.integers(0, 5)) == 0:  # a second ALU of the same rank copies operand a
        twin = vxm_queue((alu + 4 * draw(st.integers(1, 3))) % CHIP.vxm.alus)
        out = StreamRef(d, draw(st.sampled_from([out_stream, 20, 24])))
        copy = Instruction(op=Opcode.COPY, dtype=dtype, a=operands["a"], out=out)
        b.place(twin, t0 + draw(off), copy, rows, interval)
    out = tensor("out", out_dt, 6, E if source is W else W, 0)
    b.tensors.append(out)
    produced, addr = t0 + latency(CHIP, op), draw(st.sampled_from([0, 0, 1, 2]))
    for j in range(out_dt.width_bytes):
        q = mem_queue(out.placement.hemisphere, j)
        ins = Instruction(op=Opcode.WRITE, addr=addr, a=StreamRef(d, out_stream + j))
        b.place(q, b.arrival(target, produced, q) + draw(off), ins, rows, interval)
    if draw(st.integers(0, 2)) == 0:  # a probe read on an output slice, next to the writes' last commit
        q = mem_queue(out.placement.hemisphere, 0)
        when = max(bu.last for bu in b.bursts[q]) + CHIP.mem.write_latency_cycles + draw(st.integers(-1, 1))
        if all(not bu.cycle <= when <= bu.last for bu in b.bursts[q]):
            b.place(q, when, Instruction(op=Opcode.READ, addr=draw(st.integers(0, 5)), out=StreamRef(d, 28)))
    program = b.build()
    if draw(st.integers(0, 5)) == 0:
        program = with_config_and_sync(program, notify_at=draw(st.integers(1, 4)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    mask = lambda t: op is Opcode.SELECT and t.name == "a"
    inputs = {t.name: rng.integers(0, 2, (t.rows, t.cols)).astype(t.dtype.numpy) if mask(t) else
              values(rng, t.dtype, (t.rows, t.cols)) for t in program.tensors}
    return program, inputs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipelines())
def test_random_pipelines_agree(case):
    program, inputs = case
    agree(program, CHIP, inputs)


# -- discrepancies: where, reading the documented semantics, the fast engine is wrong ------------------------

BEYOND_64_STREAMS = """.program p
.tensor x int8 1x320 @ w:0 addr=0 = const(5)
.tensor y int8 1x320 @ e:0 addr=0
.queue vxm.0
    copy dtype=int8 a=W0 out=E4
.queue mem.w.0
    nop n=89
    read addr=0 out=E64
.queue mem.e.0
    nop n=6
    write addr=0 a=E4
"""


def _chip(**sections):
    changed = {name: dataclasses.replace(getattr(CHIP, name), **fields) for name, fields in sections.items()}
    return dataclasses.replace(CHIP, **changed)


IW_LATENCY_4 = _chip(mxm={"iw_latency_cycles": 4})
STREAMS_80 = _chip(streams={"streams_per_direction": 80})


def _int32_and_fp32_accs():
    """The int8 MXM program in the west and the fp16 one in the east: their ACCs share dependency levels."""
    (pw, iw), (pe, ie) = mxm_program(I8, h=W), mxm_program(F16, h=E)
    queues = {**dict(pw.queues), **dict(pe.queues)}
    return make_program("two-mxms", queues, pw.tensors + pe.tensors), {**iw, **ie}


def _three_installs_in_flight():
    """iw_latency 4: IWs in cycles 55, 56 and 57 (LWs refill the shadow buffer in between); the ABC in 59 uses
    the weights of the first IW, the only one active by then."""
    b = ProgramBuilder(IW_LATENCY_4, "iws")
    rng = np.random.default_rng(0)
    wt, acts = tensor("w", I8, 384, W, 12, interleave=32), tensor("a", I8, 1, W, 0)
    c = tensor("c", I32, 1, W, 4)
    b.tensors += [wt, acts, c]
    mxm, iwq, accq, t = mxm_queue(W, 0), mxm_queue(W, 2), mxm_queue(W, 1), 45
    feed(b, wt, DW, 0, 0, t, 12)
    b.place(mxm, t, Instruction(op=Opcode.LW, plane=0, dtype=I8, row=0), 10)
    for k in range(2):
        b.place(mxm, t + 10 + k, Instruction(op=Opcode.LW, plane=0, dtype=I8, row=0))
    b.place(iwq, t + 10, Instruction(op=Opcode.IW, plane=0), 3)
    s = t + 10 + IW_LATENCY_4.mxm.iw_latency_cycles
    feed(b, acts, DW, 0, 0, s)
    b.place(mxm, s, Instruction(op=Opcode.ABC, plane=0, dtype=I8, a=StreamRef(DW, 0), slot=0))
    s += IW_LATENCY_4.mxm.abc_latency_cycles
    b.place(accq, s, Instruction(op=Opcode.ACC, plane=0, slot=0, out=StreamRef(DE, 0)))
    drain(b, c, DE, 0, 0, s + IW_LATENCY_4.mxm.acc_latency_cycles)
    return b.build(), {"w": values(rng, I8, (384, 320)), "a": values(rng, I8, (1, 320))}


def _slot_past_the_end():
    """ABC and ACC into slot 319, each repeated once: the repeat uses slot 320 of a 320-slot accumulator."""
    program, inputs = mxm_program(I8)

    def edit(queues):
        for q in (queues[mxm_queue(W, 0)], queues[mxm_queue(W, 1)]):
            i = next(i for i, ins in enumerate(q) if ins.op in (Opcode.ABC, Opcode.ACC))
            q[i:i + 2] = [q[i].with_(slot=319), Instruction(op=Opcode.REPEAT, n=1, d=1)]

    return edited(program, edit), inputs


def _lw_rows_past_the_end():
    """An LW of rows 288..319, repeated once: the repeat loads rows 320..351 of a 320-row plane."""
    b = ProgramBuilder(CHIP, "rows")
    wt = tensor("w", I8, 64, W, 12, interleave=32)
    b.tensors.append(wt)
    feed(b, wt, DW, 0, 0, 45, 2)
    b.place(mxm_queue(W, 0), 45, Instruction(op=Opcode.LW, plane=0, dtype=I8, row=288), 2)
    return b.build(), None


#: name -> (program and inputs, chip)
DISCREPANCIES = {
    "int32-and-fp32-accs-in-one-level": (_int32_and_fp32_accs, CHIP),
    "three-installs-in-flight": (_three_installs_in_flight, IW_LATENCY_4),
    "more-than-64-streams": (lambda: (parse_program(BEYOND_64_STREAMS), None), STREAMS_80),
    "slot-past-the-end": (_slot_past_the_end, CHIP),
    "lw-rows-past-the-end": (_lw_rows_past_the_end, CHIP),
}


@pytest.mark.parametrize("name, kind", [
    ("more-than-64-streams", Kind.NO_VALUE), ("slot-past-the-end", Kind.MXM_RANGE),
    ("lw-rows-past-the-end", Kind.MXM_RANGE),
])
def test_discrepancy_reference_rejects(name, kind):
    make, chip = DISCREPANCIES[name]
    program, inputs = make()
    with pytest.raises(ScheduleError) as info:
        simulate_reference(program, chip, inputs)
    assert info.value.violations[0].kind is kind


def test_discrepancy_reference_keeps_int32_and_fp32_accumulators_apart():
    program, inputs = _int32_and_fp32_accs()
    ref = simulate_reference(program, CHIP, inputs)
    assert np.array_equal(ref.tensors["c_w"][:3], _int8_products(inputs, "w"))


def test_discrepancy_reference_uses_the_one_active_install():
    program, inputs = _three_installs_in_flight()
    c = simulate_reference(program, IW_LATENCY_4, inputs).tensors["c"]
    first = inputs["w"][:320].astype(np.int64)
    assert np.array_equal(c[0], (inputs["a"][0].astype(np.int64) @ first).astype(np.int32))


@pytest.mark.parametrize("name", DISCREPANCIES)
def test_discrepancy_fast_engine_agrees(name):
    make, chip = DISCREPANCIES[name]
    program, inputs = make()
    agree(program, chip, inputs)


EARLIER_ADDRESS_IN_A_LATER_QUEUE = """.program p
.queue mem.w.0
    nop n=9
    read addr=8191 out=E0
    repeat n=1 d=1
.queue mem.w.1
    read addr=8191 out=E1
    repeat n=1 d=1
"""

EARLIER_READ_LATER_BANK = """.program p
.tensor x int8 4x320 @ w:0 addr=0 = const(1)
.queue vxm.0
    copy dtype=int8 a=E0 out=E4
.queue mem.w.1
    read addr=0 out=E0
.queue mem.w.0
    nop n=3
    write addr=2 a=E0
    read addr=0 out=E4
"""


@pytest.mark.parametrize("text, first", [(EARLIER_ADDRESS_IN_A_LATER_QUEUE, (Kind.ADDRESS, 1)),
                                         (EARLIER_READ_LATER_BANK, (Kind.NO_VALUE, 0))],
                         ids=["address-in-a-later-queue", "stream-before-bank"])
def test_fast_engine_reports_the_earliest_violation(text, first):
    program = parse_program(text)
    assert first_violation(agree(program)) == first
    kind, cycles = fast_violation(_fast(program, CHIP, None))
    assert (kind, cycles[-1]) == first


# -- random instruction streams: NOP, Repeat, Sync, Notify and Config timing ---------------------------------

_STREAM_OPS = [Opcode.READ, Opcode.READ, Opcode.NOP, Opcode.REPEAT, Opcode.SYNC, Opcode.NOTIFY, Opcode.CONFIG]


@st.composite
def icu_programs(draw):
    """Up to four MEM queues, each reading onto its own stream, with NOPs, Repeats, Configs, Syncs and
    Notifies in between; every value falls off the chip edge unread."""
    queues = {}
    for k in range(draw(st.integers(1, 4))):
        instrs: list[Instruction] = []
        for _ in range(draw(st.integers(1, 6))):
            op = draw(st.sampled_from(_STREAM_OPS))
            if op is Opcode.REPEAT and any(i.op is Opcode.READ for i in instrs):
                ins = Instruction(op=op, n=draw(st.integers(1, 3)), d=draw(st.integers(1, 3)))
            elif op in (Opcode.READ, Opcode.REPEAT):
                ins = Instruction(op=Opcode.READ, addr=draw(st.integers(0, 3)), out=StreamRef(DE, k))
            elif op is Opcode.NOP:
                ins = Instruction(op=op, n=draw(st.integers(0, 4)))
            elif op is Opcode.CONFIG:
                ins = Instruction(op=op, superlanes=20)
            else:
                ins = Instruction(op=op)
            instrs.append(ins)
        queues[mem_queue(W, k)] = instrs
    return make_program("icu", queues), _chip(icu={"notify_latency_cycles": draw(st.integers(1, 3))})


@settings(max_examples=60, deadline=None)
@given(icu_programs())
def test_random_instruction_streams_agree(case):
    program, chip = case
    agree(program, chip)
