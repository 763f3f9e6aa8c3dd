"""The compiled MXM passes against `numerics.mxm_pass`, the spec: bit for bit, ties and zeros included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openlpu.compiler import fastmxm
from openlpu.isa.types import DType
from openlpu.sim import numerics as nx

LANES = fastmxm.LANES


def spec(acts: np.ndarray, weights: np.ndarray, dtype: DType) -> np.ndarray:
    """Each 320-deep pass by `mxm_pass`, stacked [K tiles, rows, N]."""
    return np.stack([nx.mxm_pass(acts[:, k * LANES:(k + 1) * LANES], weights[k * LANES:(k + 1) * LANES], dtype)
                     for k in range(weights.shape[0] // LANES)])


def passes(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    packed = fastmxm.pack(w, DType.FP16)
    return fastmxm.fp16_passes(a, packed, fastmxm.column_norms(packed))


def bits(x: np.ndarray) -> np.ndarray:
    return x.view(f"u{x.itemsize}")


def fp16_values(rng: np.random.Generator, shape: tuple[int, ...], spread: int) -> np.ndarray:
    """fp16 values with exponents spread over 2^-spread .. 2^spread, subnormals included, signs mixed."""
    x = rng.standard_normal(shape) * 2.0 ** rng.integers(-spread, spread + 1, shape)
    return np.clip(x, -65504, 65504).astype(np.float16)


def test_pack_puts_one_k_tile_column_in_consecutive_lanes():
    w = np.arange(640 * 3, dtype=np.float16).reshape(640, 3)
    packed = fastmxm.pack(w, DType.FP16)
    assert packed.shape == (2, 3, LANES) and packed.dtype == np.uint16 and packed.flags.c_contiguous
    assert packed[1, 2, 5] == w[LANES + 5, 2].view(np.uint16)


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("spread", [2, 12])
def test_fp16_passes_are_mxm_pass_bit_for_bit(rows, spread):
    rng = np.random.default_rng(rows * 100 + spread)
    w = fp16_values(rng, (640, 700), spread)
    a = fp16_values(rng, (rows, 640), spread)
    got = passes(a, w)
    assert np.array_equal(bits(got), bits(spec(a, w, DType.FP16)))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_fp16_passes_match_mxm_pass_on_sums_that_cancel(seed):
    """Columns made to cancel to a few ulps of the terms, where the fp64 sum alone cannot decide the rounding."""
    rng = np.random.default_rng(seed)
    w = fp16_values(rng, (LANES, 64), 6)
    a = fp16_values(rng, (1, LANES), 6)
    partner = -w[0::2].astype(np.float32) * a[0, 0::2, None] / a[0, 1::2, None]
    w[1::2] = np.clip(partner, -65504, 65504).astype(np.float16)
    got = passes(a, w)
    assert np.array_equal(bits(got), bits(spec(a, w, DType.FP16)))


@pytest.mark.parametrize(("third", "expected"), [(2.0**-10, 1 + 2.0**-23), (-(2.0**-10), 1.0), (0.0, 1.0)])
def test_a_sum_on_an_fp32_tie_is_rounded_by_what_lies_past_it(third, expected):
    """1 + 2^-24 sits halfway between two fp32 values: a 2^-34 past it decides, and alone it ties to even."""
    a = np.zeros((1, LANES), np.float16)
    a[0, :3] = [1.0, 1.0, third]
    w = np.zeros((LANES, 1), np.float16)
    w[:3, 0] = [1.0, 2.0**-24, 2.0**-24]
    got = passes(a, w)
    assert got[0, 0, 0] == np.float32(expected)
    assert bits(got) == bits(spec(a, w, DType.FP16))


def test_a_tie_that_fp64_cannot_see_past_takes_the_exact_sum():
    """2^30 + 2^6 is an fp32 tie (ties to even: 2^30); the 2^-48 past it is below fp64's precision there, so only
    the exact sum rounds up to 2^30 + 2^7, as `mxm_pass` does."""
    a = np.zeros((1, LANES), np.float16)
    a[0, :3] = [2.0**15, 2.0**3, 2.0**-24]
    w = np.zeros((LANES, 1), np.float16)
    w[:3, 0] = [2.0**15, 2.0**3, 2.0**-24]
    got = passes(a, w)
    assert got[0, 0, 0] == np.float32(2.0**30 + 2.0**7)
    assert bits(got) == bits(spec(a, w, DType.FP16))


def test_an_exact_zero_sum_is_plus_zero():
    a = np.zeros((1, LANES), np.float16)
    a[0, :2] = [-1.0, 1.0]
    w = np.zeros((LANES, 2), np.float16)
    w[:2, 0] = [1.0, 1.0]  # -1 + 1
    w[:2, 1] = [-0.0, -0.0]  # -0 products only
    got = passes(a, w)
    assert (bits(got) == 0).all()


def test_an_infinite_activation_propagates_as_ieee_says():
    rng = np.random.default_rng(3)
    w = fp16_values(rng, (LANES, 8), 2)
    a = fp16_values(rng, (1, LANES), 2)
    a[0, 7] = np.inf
    got = passes(a, w)
    assert np.array_equal(bits(got), bits(spec(a, w, DType.FP16)))


def test_weights_with_an_inf_or_a_nan_are_left_to_numpy():
    w = np.ones((LANES, 4), np.float16)
    assert fastmxm.pack(w, DType.FP16) is not None
    w[3, 1] = np.inf
    assert fastmxm.pack(w, DType.FP16) is None


@pytest.mark.parametrize("rows", [1, 2])
def test_int8_passes_are_exact_at_the_extremes(rows):
    rng = np.random.default_rng(rows)
    w = rng.integers(-128, 128, (960, 50)).astype(np.int8)
    a = rng.integers(-128, 128, (rows, 960)).astype(np.int8)
    w[:, 0], a[:, :] = -128, np.where(np.arange(960) % 2, a, -128)  # -128 * -128 in every other lane of column 0
    got = fastmxm.int8_passes(a, fastmxm.pack(w, DType.INT8))
    assert got.dtype == np.int32 and np.array_equal(got, spec(a, w, DType.INT8))
