"""Per-token int8 scales: max|x| / 127 per row within the stated bound, the fast path bit for bit, cycles as
predicted, all-zero rows kept finite."""

from __future__ import annotations

import numpy as np
import pytest

from openlpu.errors import ProgramError
from openlpu.hardware import load_chip
from openlpu.isa.opcodes import Opcode
from openlpu.isa.types import DType
from openlpu.kernels.quantize import FLOOR, INT8_MAX, token_scale
from openlpu.sim import numerics as nx

CHIP = load_chip("groqchip1")
LANES = CHIP.lanes.lanes
#: One block, N not a multiple of 320 with M > 1, five blocks, and two waves of rows.
SHAPES = [(1, 320), (3, 576), (2, 1500), (101, 330)]


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_scale_is_the_row_max_over_127_in_every_lane_and_the_fast_path_matches(shape):
    rng = np.random.default_rng(90 + SHAPES.index(shape))
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 50, (shape[0], 1))).astype(np.float32)
    kernel = token_scale(CHIP, x)
    (fast, cycles), (exact, result) = kernel.run_fast(), kernel.run(CHIP)
    assert result.cycles == cycles == kernel.predicted_cycles
    assert result.checks_passed, [c.describe() for c in result.checks]
    assert np.array_equal(_bits(fast), _bits(exact))
    want = np.abs(x.astype(np.float64)).max(axis=1, keepdims=True) / INT8_MAX
    assert np.all(np.abs(exact - want) <= 2.0**-23 * want)
    assert np.all(exact == exact[:, :1])


def test_quantised_rows_stay_within_127():
    x = np.random.default_rng(3).standard_normal((4, 700)).astype(np.float32) * 1000
    scale = token_scale(CHIP, x).run_fast()[0]
    inverse = nx.vxm_unary(Opcode.RECIP, scale[:, :1], DType.FP32)
    q = nx.convert(nx.vxm_binary(Opcode.MUL, x, inverse, DType.FP32), DType.FP32, DType.INT8)
    assert np.abs(q).max() == INT8_MAX


def test_an_all_zero_row_gets_the_floor_and_quantises_to_zeros():
    x = np.zeros((2, 400), np.float32)
    x[1, 5] = -3.0
    exact, result = token_scale(CHIP, x).run(CHIP)
    assert exact[0, 0] == np.float32(np.float32(FLOOR) * np.float32(1 / INT8_MAX))
    assert np.isfinite(1 / exact[0, 0]) and exact[1, 0] == np.float32(np.float32(3.0) * np.float32(1 / INT8_MAX))


def test_x_must_be_fp32_rows():
    with pytest.raises(ProgramError, match="non-empty"):
        token_scale(CHIP, np.zeros((0, 5), np.float32))
