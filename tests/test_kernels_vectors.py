"""Vector-train emitters: reads and writes grouped into Repeat bursts, broadcast and interleaved views, scatter."""

from __future__ import annotations

import numpy as np
import pytest

from openlpu.errors import ProgramError
from openlpu.hardware.chip import load_chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.opcodes import Opcode
from openlpu.isa.program import Placement, Tensor
from openlpu.isa.types import DType
from openlpu.kernels.builder import ProgramBuilder
from openlpu.kernels.vectors import (
    ChainStep,
    View,
    _bursts,
    emit_chain,
    emit_vxm,
    row_binary,
    scatter_row,
    stream_groups,
)
from openlpu.sim.engine import simulate

CHIP = load_chip("groqchip1")
F32 = DType.FP32


def test_points_group_into_even_runs():
    points = [(10, 0), (11, 1), (12, 2), (20, 7), (22, 7), (24, 7), (30, 1)]
    assert _bursts(points) == [(10, 0, 3, 1, 1), (20, 7, 3, 2, 0), (30, 1, 1, 1, 1)]


def test_stream_groups_align_to_each_width():
    assert stream_groups([4, 2, 4]) == [0, 4, 8]
    assert stream_groups([2, 4]) == [0, 4]


@pytest.mark.parametrize("interleave", [1, 2])
def test_row_broadcast_matches_its_fast_path_in_the_predicted_cycles(interleave):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 500)), rng.normal(size=(1, 500))
    k = row_binary(CHIP, Opcode.MUL, x, y, F32, interleave=interleave)
    got, result = k.run(CHIP)
    assert result.cycles == k.predicted_cycles and result.checks_passed
    assert np.array_equal(got.view(np.uint32), k.run_fast()[0].view(np.uint32))


def test_scatter_writes_the_row_the_data_names():
    rng = np.random.default_rng(2)
    table, row = rng.normal(size=(12, 330)), rng.normal(size=(1, 330))
    k = scatter_row(CHIP, table, row, 7, F32)
    got, result = k.run(CHIP)
    assert result.cycles == k.predicted_cycles
    want = table.astype(np.float32)
    want[7] = row[0]
    assert np.array_equal(got, want) and np.array_equal(got, k.run_fast()[0])


def test_an_output_in_the_inputs_hemisphere_is_refused():
    def t(name: str, h: Hemisphere, first: int) -> Tensor:
        return Tensor(name=name, dtype=F32, rows=2, cols=320,
                      placement=Placement(hemisphere=h, first_slice=first, address=0))

    b = ProgramBuilder(CHIP, "bad")
    x, z = t("x", Hemisphere.W, 0), t("z", Hemisphere.W, 4)
    with pytest.raises(ProgramError, match="put the output in the other one"):
        emit_vxm(b, Opcode.COPY, F32, [View.of(x, 320)], View.of(z, 320), 0)


@pytest.mark.parametrize("out_side", [Hemisphere.W, Hemisphere.E])
def test_an_alu_takes_one_operand_from_each_hemisphere(out_side):
    """x flows east from the west, y west from the east; the sum lands on either side (beside y when east)."""
    rng = np.random.default_rng(3)
    x, y = (rng.normal(size=(6, 640)).astype(np.float32) for _ in range(2))

    def t(name: str, h: Hemisphere, first: int) -> Tensor:
        return Tensor(name=name, dtype=F32, rows=6, cols=640,
                      placement=Placement(hemisphere=h, first_slice=first, address=0))

    b = ProgramBuilder(CHIP, "both_sides")
    tx, ty, tz = t("x", Hemisphere.W, 0), t("y", Hemisphere.E, 0), t("z", out_side, 8)
    b.tensors += [tx, ty, tz]
    done = emit_vxm(b, Opcode.ADD, F32, [View.of(tx, 320), View.of(ty, 320)], View.of(tz, 320), 5)
    result = simulate(b.build(), CHIP, {"x": x, "y": y})
    assert result.cycles == b.predicted_cycles() <= done + CHIP.lanes.superlanes
    assert np.array_equal(result.tensors["z"], x + y)


def test_a_block_step_of_zero_rereads_one_block_row_by_row():
    t = Tensor(name="s", dtype=F32, rows=3, cols=960, placement=Placement(hemisphere=Hemisphere.W, first_slice=0,
                                                                          address=40))
    view = View(t, 1, 2, 0, 3, 1, 0)  # block 1, twice
    assert view.count == 6
    assert [view.at(k) for k in range(6)] == [(0, 43), (0, 44), (0, 45)] * 2


def _split_chain(b: ProgramBuilder, rows: int) -> tuple[list[ChainStep], dict[str, Tensor]]:
    """hi = fp16(k * q), rest = k * q - fp32(hi): k east, q one row west, both results west (the scores' split)."""
    def t(name: str, h: Hemisphere, first: int, n: int, dtype: DType = F32) -> Tensor:
        return Tensor(name=name, dtype=dtype, rows=n, cols=640,
                      placement=Placement(hemisphere=h, first_slice=first, address=0))

    ts = {"k": t("k", Hemisphere.E, 0, rows), "q": t("q", Hemisphere.W, 8, 1),
          "hi": t("hi", Hemisphere.W, 0, rows, DType.FP16), "rest": t("rest", Hemisphere.W, 4, rows)}
    b.tensors += list(ts.values())
    v = {n: View.of(x, 320) for n, x in ts.items()}
    cast = Opcode.CAST
    steps = [ChainStep(Opcode.MUL, F32, (v["k"], v["q"].broadcast(rows)), None),
             ChainStep(cast, F32, (0,), v["hi"], to=DType.FP16),
             ChainStep(cast, F32, (0,), None, to=F32),
             ChainStep(cast, DType.FP16, (1,), None, to=F32),
             ChainStep(cast, F32, (2,), None, to=F32),
             ChainStep(Opcode.SUB, F32, (4, 3), v["rest"])]
    return steps, ts


def test_a_chain_runs_dependent_steps_in_one_pass_through_the_ranks():
    rows = 64
    rng = np.random.default_rng(4)
    k, q = rng.normal(size=(rows, 640)).astype(np.float32), rng.normal(size=(1, 640)).astype(np.float32)
    b = ProgramBuilder(CHIP, "split")
    steps, _ = _split_chain(b, rows)
    done = emit_chain(b, steps, 3)
    result = simulate(b.build(), CHIP, {"k": k, "q": q})
    assert result.cycles == b.predicted_cycles() <= done + CHIP.lanes.superlanes
    prod = k * q
    hi = prod.astype(np.float16)
    assert np.array_equal(result.tensors["hi"].view(np.uint16), hi.view(np.uint16))
    assert np.array_equal(result.tensors["rest"], prod - hi.astype(np.float32))
    # one pass: about one train's length, where the same steps one train each take four (the copies are free)
    assert done - 3 < 2 * 2 * rows


def test_a_chain_step_whose_operands_arrive_apart_is_refused():
    b = ProgramBuilder(CHIP, "apart")
    steps, _ = _split_chain(b, 4)
    # without the two delaying casts, the product reaches the subtraction two ranks before fp32(hi) does
    steps = [*steps[:2], steps[3], ChainStep(Opcode.SUB, F32, (0, 2), steps[-1].out)]
    with pytest.raises(ProgramError, match="must arrive together"):
        emit_chain(b, steps, 0)


def test_a_chain_step_nothing_uses_is_refused():
    b = ProgramBuilder(CHIP, "unused")
    steps, _ = _split_chain(b, 4)
    steps.append(ChainStep(Opcode.NEG, F32, (0,), None))
    with pytest.raises(ProgramError, match="step 6 is neither written nor read; drop it"):
        emit_chain(b, steps, 0)


def test_a_chain_deeper_than_the_ranks_is_refused():
    b = ProgramBuilder(CHIP, "deep")
    steps, _ = _split_chain(b, 4)
    steps.append(ChainStep(Opcode.CAST, F32, (5,), None, to=DType.FP16))
    with pytest.raises(ProgramError, match="rank 4 of the pass; the VXM has 4"):
        emit_chain(b, steps, 0)
