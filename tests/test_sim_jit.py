"""The compiled fp16 conversions against NumPy's, bit for bit."""

from __future__ import annotations

import numpy as np
from numba import njit

from openlpu.sim import jit
from openlpu.sim import numerics as nx

EVERY_FP16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16)


def bits(x: np.ndarray) -> np.ndarray:
    return x.view(f"u{x.itemsize}")


@njit
def _scalar_widen(h):
    out = np.empty(h.size)
    for i in range(h.size):
        out[i] = jit.half_to_f64(h[i])
    return out


def test_every_finite_fp16_bit_pattern_widens_exactly_one_by_one():
    want = EVERY_FP16.astype(np.float64)
    finite = np.isfinite(want)
    assert np.array_equal(bits(_scalar_widen(EVERY_FP16.view(np.uint16))[finite]), bits(want[finite]))


def test_every_fp16_bit_pattern_widens_to_numpy_s_bits_nans_included():
    for to in (np.float32, np.float64):
        table = EVERY_FP16.astype(to)
        got = jit.fp16_widen(EVERY_FP16.reshape(256, 256), table)
        assert got.shape == (256, 256) and np.array_equal(bits(got).reshape(-1), bits(table))


def edges() -> np.ndarray:
    """fp32 values at every rounding edge of fp16: each fp16 value, the fp32 values on either side of each
    midpoint between neighbours and the midpoints themselves (ties to even), the overflow threshold 65520, fp32
    subnormals, zeros and infinities, both signs."""
    f = EVERY_FP16[np.isfinite(EVERY_FP16)].astype(np.float64)
    f = np.unique(f)
    mids = ((f[:-1] + f[1:]) / 2).astype(np.float32)
    near = np.concatenate([mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))])
    special = np.array([65504, 65519.996, 65520, 65536, 1e38, np.inf, 0.0, 1e-45, 1e-40, 2.0**-25, 2.0**-24],
                       np.float32)
    x = np.concatenate([f.astype(np.float32), near, special])
    return np.concatenate([x, -x])


def test_fp32_to_fp16_is_numpy_s_conversion_at_every_edge():
    x = edges()
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    assert np.array_equal(bits(jit.fp32_to_fp16(x)), bits(want))


def test_fp32_to_fp16_is_numpy_s_conversion_on_random_bit_patterns():
    x = np.random.default_rng(0).integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[~np.isnan(x)].reshape(-1)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    assert np.array_equal(bits(jit.fp32_to_fp16(x)), bits(want))


def test_the_numerics_take_the_compiled_conversion_for_large_arrays_and_leave_nans_to_numpy():
    x = np.linspace(-70000, 70000, nx.JIT_SIZE * 2, dtype=np.float32).reshape(-1, 64)
    with np.errstate(over="ignore"):
        assert np.array_equal(bits(nx.fp32_to_fp16(x)), bits(x.astype(np.float16)))
        x[3, 5] = np.frombuffer(np.uint32(0x7FA00001).tobytes(), np.float32)[0]  # a signalling NaN with a payload
        assert np.array_equal(bits(nx.fp32_to_fp16(x)), bits(x.astype(np.float16)))
        h = x.astype(np.float16)
    assert np.array_equal(bits(nx.from_fp16(h, np.float32)), bits(h.astype(np.float32)))
