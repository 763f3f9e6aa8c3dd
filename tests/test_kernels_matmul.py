"""Matrix x matrix on the MXM against NumPy: int8 exact, fp16 within the stated bound; cycles as predicted."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from openlpu.errors import ProgramError
from openlpu.hardware import load_chip
from openlpu.isa import DType
from openlpu.kernels import matmul
from openlpu.kernels.matmul import zero_tiles

CHIP = load_chip("groqchip1")
SHAPES = [(1, 1, 1), (3, 100, 50), (2, 320, 320), (4, 700, 650), (2, 333, 961), (330, 40, 30)]


def _inputs(rng, m, k, n, dtype):
    if dtype is DType.INT8:
        return rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (k, n))
    return rng.uniform(-2, 2, (m, k)).astype(np.float16), rng.uniform(-2, 2, (k, n)).astype(np.float16)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [DType.INT8, DType.FP16], ids=lambda d: d.value)
def test_matmul_matches_numpy_and_prediction(shape, dtype):
    m, k, n = shape
    rng = np.random.default_rng(zlib.crc32(repr((shape, dtype.value)).encode()))
    a, b = _inputs(rng, m, k, n, dtype)
    kernel = matmul(CHIP, a, b, dtype)
    out, result = kernel.run(CHIP)
    assert out.shape == (m, n)
    assert result.cycles == kernel.predicted_cycles
    assert result.checks_passed, [c.describe() for c in result.checks]
    if dtype is DType.INT8:
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32))
    else:
        exact = a.astype(np.float64) @ b.astype(np.float64)
        bound = 2 * -(-k // 320) * 2.0**-24 * (np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)))
        assert out.dtype == np.float32
        assert np.all(np.abs(out - exact) <= bound)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [DType.INT8, DType.FP16], ids=lambda d: d.value)
def test_fast_path_is_bit_identical(shape, dtype):
    m, k, n = shape
    rng = np.random.default_rng(zlib.crc32(repr((shape, dtype.value, "fast")).encode()))
    kernel = matmul(CHIP, *_inputs(rng, m, k, n, dtype), dtype)
    (fast, cycles), (exact, result) = kernel.run_fast(), kernel.run(CHIP)
    assert cycles == result.cycles
    assert fast.dtype == exact.dtype and fast.shape == exact.shape
    assert np.ascontiguousarray(fast).tobytes() == np.ascontiguousarray(exact).tobytes()


def test_int8_accumulation_wraps_like_int32():
    a = np.full((1, 640), 127)
    b = np.full((640, 1), 127)
    out, _ = matmul(CHIP, a, b, DType.INT8).run(CHIP)
    assert out[0, 0] == 640 * 127 * 127


def test_fp16_matmul_is_deterministic():
    rng = np.random.default_rng(7)
    a, b = _inputs(rng, 3, 500, 400, DType.FP16)
    k = matmul(CHIP, a, b, DType.FP16)
    first, second = k.run(CHIP)[0], k.run(CHIP)[0]
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize(
    "a, b, dtype, message",
    [
        (np.ones((2, 3)), np.ones((4, 5)), DType.INT8,
         "matmul: shapes (2, 3) and (4, 5) do not chain as [M, K] x [K, N]"),
        (np.ones((2, 3)), np.ones((3, 5)), DType.FP32, "matmul: the MXM multiplies int8 or fp16, not fp32"),
    ],
)
def test_bad_matmul_requests(a, b, dtype, message):
    with pytest.raises(ProgramError) as info:
        matmul(CHIP, a, b, dtype)
    assert str(info.value) == message


def test_matmul_on_a_chip_with_too_few_slices():
    import dataclasses

    small = dataclasses.replace(CHIP, mem=dataclasses.replace(CHIP.mem, slices_per_hemisphere=30))
    with pytest.raises(ProgramError) as info:
        matmul(small, np.ones((1, 8)), np.ones((8, 4)), DType.INT8)
    assert str(info.value) == ("matmul: a hemisphere needs 40 MEM slices (a, c, then 32 weight streams), chip "
                               "groqchip1 has 30")


@pytest.mark.parametrize("dtype", [DType.INT8, DType.FP16], ids=lambda d: d.value)
def test_all_zero_tiles_are_skipped_exactly_and_cost_no_cycles(dtype):
    rng = np.random.default_rng(5)
    a, b = _inputs(rng, 3, 960, 640, dtype)
    b = np.array(b)
    b[320:640, :320] = 0  # K tile 1 of N tile 0
    b[:320, 320:] = 0  # K tile 0 of N tile 1: its sum starts at K tile 1
    assert zero_tiles(b) == {(1, 0), (0, 1)}
    dense, sparse = matmul(CHIP, a, b, dtype), matmul(CHIP, a, b, dtype, skip_zero_tiles=True)
    (fast, cycles), (exact, result) = sparse.run_fast(), sparse.run(CHIP)
    assert result.checks_passed and result.cycles == cycles
    assert np.array_equal(fast, exact)
    assert cycles < dense.predicted_cycles


def test_an_n_tile_with_every_k_tile_skipped_is_refused():
    with pytest.raises(ProgramError, match="every K tile of an N tile is skipped"):
        matmul(CHIP, np.ones((1, 320)), np.zeros((320, 320)), DType.FP16, skip_zero_tiles=True)
