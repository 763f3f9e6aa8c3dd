"""Row-level overlap: operations placed early run side by side and still compute what they would alone, in the
cycles the builder predicts; what must not move does not."""

from __future__ import annotations

import numpy as np
import pytest
from frontend_refs import truncated_path

from openlpu.compiler import overlap as ov
from openlpu.compiler.overlap import Overlap
from openlpu.compiler.pipeline import compile_model
from openlpu.errors import ScheduleError
from openlpu.hardware.chip import load_chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.opcodes import Opcode
from openlpu.isa.program import Placement, Tensor
from openlpu.isa.types import DType
from openlpu.kernels.builder import ProgramBuilder
from openlpu.kernels.vectors import View, emit_scatter, emit_vxm
from openlpu.sim import numerics as nx
from openlpu.sim.engine import simulate

CHIP = load_chip("groqchip1")
F32 = DType.FP32
W, E = Hemisphere.W, Hemisphere.E
ROWS = 64


def _tensor(name: str, h: Hemisphere, first: int, rows: int = ROWS, dtype: DType = F32) -> Tensor:
    return Tensor(name=name, dtype=dtype, rows=rows, cols=320, placement=Placement(hemisphere=h, first_slice=first,
                                                                                  address=0))


def _op(op: Opcode, ins: list[Tensor], out: Tensor, imm=None):
    def emit(b: ProgramBuilder, start: int) -> int:
        return emit_vxm(b, op, F32, [View.of(t, 320) for t in ins], View.of(out, 320), start, imm=imm)

    return emit


def _run(ops, tensors: list[Tensor], inputs: dict[str, np.ndarray]):
    """Place `ops` one after another through an Overlap, as the scheduler does; (spans, lengths alone, result)."""
    b = ProgramBuilder(CHIP, "overlap")
    b.tensors += tensors
    o, t, spans, alone = Overlap(CHIP), 0, [], []
    for emit in ops:
        alone.append(emit(ProgramBuilder(CHIP, "alone"), 0))
        start, done = o.place(b, emit, t)
        spans.append((start, done))
        t = max(t, done)
    result = simulate(b.build(), CHIP, inputs)
    assert result.cycles == b.predicted_cycles()
    return spans, alone, result


def test_a_consumer_starts_before_its_producer_has_landed_and_reads_what_it_wrote():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(ROWS, 320)).astype(np.float32)
    tx, ty, tz = _tensor("x", W, 0), _tensor("y", E, 0), _tensor("z", W, 4)
    spans, alone, result = _run([_op(Opcode.ADD, [tx], ty, imm=1.0), _op(Opcode.MUL, [ty], tz, imm=2.0)],
                                [tx, ty, tz], {"x": x})
    (a0, a1), (b0, b1) = spans
    assert b0 < a1  # started while the producer was still landing
    assert b1 - b0 == alone[1]  # moved whole, not stretched
    assert np.array_equal(result.tensors["z"], (x + np.float32(1)) * np.float32(2))


def test_independent_operations_run_side_by_side():
    rng = np.random.default_rng(2)
    x, u = rng.normal(size=(ROWS, 320)).astype(np.float32), rng.normal(size=(ROWS, 320)).astype(np.float32)
    tx, ty, tu, tv = _tensor("x", W, 0), _tensor("y", E, 0), _tensor("u", W, 8), _tensor("v", E, 8)
    spans, alone, result = _run([_op(Opcode.ADD, [tx], ty, imm=1.0), _op(Opcode.NEG, [tu], tv)],
                                [tx, ty, tu, tv], {"x": x, "u": u})
    (a0, a1), (b0, b1) = spans
    # both trains on ALU 1: the second's issue burst follows the first's, before the first has landed
    assert a0 < b0 < a1 and b1 < a1 + alone[1]
    assert np.array_equal(result.tensors["y"], x + np.float32(1))
    assert np.array_equal(result.tensors["v"], -u)


def test_an_operation_that_overwrites_a_word_waits_for_every_earlier_read_of_it():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(ROWS, 320)).astype(np.float32)
    tx, ty, tz = _tensor("x", W, 0), _tensor("y", E, 0), _tensor("z", E, 8)
    # y = x + 1 reads x; then x is overwritten (x = z * 3, z zero) while y's reads may still be in flight
    spans, _, result = _run([_op(Opcode.ADD, [tx], ty, imm=1.0), _op(Opcode.MUL, [tz], tx, imm=3.0)],
                            [tx, ty, tz], {"x": x, "z": np.zeros_like(x)})
    assert np.array_equal(result.tensors["y"], x + np.float32(1))
    assert np.array_equal(result.tensors["x"], np.zeros_like(x))


def test_a_scatter_never_moves():
    table = _tensor("table", W, 12, rows=8)
    row, pos = _tensor("row", E, 12, rows=1), _tensor("pos", E, 20, rows=1, dtype=DType.INT16)
    tx, ty = _tensor("x", W, 0), _tensor("y", E, 0)

    def scatter(b: ProgramBuilder, start: int) -> int:
        return emit_scatter(b, View.of(row, 320), table, View.of(pos, 320), start)

    o, b = Overlap(CHIP), ProgramBuilder(CHIP, "scatter")
    _, done = o.place(b, _op(Opcode.ADD, [tx], ty, imm=1.0), 0)
    start, _ = o.place(b, scatter, done)
    assert start == done


@pytest.mark.parametrize("rule", [None, "_line_clash"])
def test_trains_on_two_alus_keep_off_each_others_streams(monkeypatch, rule):
    """An add (ALU 1) and an exp (a large ALU) read and write the same stream groups: side by side they may run
    only where the values' diagonals do not meet. Without the stream rule the simulator finds the clash."""
    if rule:
        monkeypatch.setattr(ov, rule, lambda *a: False)
    rng = np.random.default_rng(4)
    x, u = rng.normal(size=(ROWS, 320)).astype(np.float32), rng.normal(size=(ROWS, 320)).astype(np.float32)
    tx, ty, tu, tv = _tensor("x", W, 0), _tensor("y", E, 0), _tensor("u", W, 8), _tensor("v", E, 8)
    ops = [_op(Opcode.ADD, [tx], ty, imm=1.0), _op(Opcode.EXP, [tu], tv)]
    if rule:
        with pytest.raises(ScheduleError, match="stream"):
            _run(ops, [tx, ty, tu, tv], {"x": x, "u": u})
        return
    spans, alone, result = _run(ops, [tx, ty, tu, tv], {"x": x, "u": u})
    (a0, a1), (b0, b1) = spans
    assert b0 < a1 and b1 < a1 + alone[1]
    assert np.array_equal(result.tensors["y"], x + np.float32(1))
    assert np.array_equal(result.tensors["v"], nx.vxm_unary(Opcode.EXP, u, F32))


def test_a_compiled_step_overlaps_its_operations(monkeypatch):
    monkeypatch.setenv("OPENLPU_NO_CACHE", "1")
    c = compile_model(truncated_path(1), CHIP, context=16)
    spans = c.scheduled[0].spans
    alone = sum(b - a for a, b in spans)
    assert c.scheduled[0].predicted_cycles < alone
    assert sum(b0 < a1 for (_, a1), (b0, _) in zip(spans, spans[1:])) > len(spans) // 2


@pytest.mark.parametrize("rule", [None, "_mem_bound"])
def test_a_read_of_the_last_row_waits_for_its_write(monkeypatch, rule):
    """A one-row relu (on a large ALU, so not queued behind the add's ALU) would fit on the producer's slices
    before the producer's write train: only the word rule keeps it after the write of that row."""
    if rule:
        monkeypatch.setattr(ov, rule, lambda o, fp: ov.NEVER)
    x = np.arange(ROWS * 320, dtype=np.float32).reshape(ROWS, 320)
    tx, ty, tz = _tensor("x", W, 0), _tensor("y", E, 0), _tensor("z", W, 4, rows=1)

    def last_row(b: ProgramBuilder, start: int) -> int:
        return emit_vxm(b, Opcode.RELU, F32, [View(ty, 0, 1, ROWS - 1, 1)], View.of(tz, 320), start)

    _, _, result = _run([_op(Opcode.ADD, [tx], ty, imm=1.0), last_row], [tx, ty, tz], {"x": x})
    want = x[-1:] + np.float32(1)
    assert np.array_equal(result.tensors["z"], want) is (rule is None)
