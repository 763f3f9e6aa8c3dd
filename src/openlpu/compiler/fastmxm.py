"""The fast path's MXM passes for a decode step's one or two rows, compiled with Numba.

A decode step multiplies one activation row by every weight of the model, so its time is the time to read the
weights: NumPy's fp64 product (`numerics.mxm_pass_fp16`) reads 8 bytes per fp16 weight, and certifying its
rounding takes more passes. Here each weight is read once, as its own 2 bytes (fp16) or 1 (int8), and one pass
computes what `mxm_pass_fp16` and `fast.matmul_int8` compute, bit for bit:

- fp16: per 320-deep pass, the fp64 sum s of the exact products, in any order (SIMD lanes: the bound allows
  it). Where s - E and s + E round to one fp32 value, E = 1.01 * 2 K 2^-53 sum |a w| (`mxm_pass_fp16`'s bound,
  with sum |a w| bounded first by the norms of a and of the weight's column, then computed where that is not
  enough), fp32(s) is the correctly rounded exact sum; the entries still open (rare) take the exact sum of
  integer halves, as `mxm_pass` does.
- int8: per pass, the exact int32 sum of the int8 products (at most 320 * 128^2 < 2^31).

Weights are packed once per session as [K tiles, N, 320] (`pack`): one column of one K tile is contiguous, which
is what lets the inner loop run in SIMD lanes. fp16 weights stay 2 bytes (their bits, widened to fp64 by the CPU's
own conversion, `jit.half_to_f64`): the passes are bound by reading them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from openlpu.isa.types import DType
from openlpu.sim import numerics as nx
from openlpu.sim.jit import half_to_f64

LANES = 320
ROWS = 2
"""The most activation rows the compiled passes take; more rows (a prefill) go through NumPy's matrix product,
which reuses each weight across rows."""
BOUND = 1.01 * 2 * LANES * 2.0**-53
"""E / sum |a w|: `mxm_pass_fp16`'s bound on the fp64 sum's error, for a K = 320 pass."""


def pack(weights: np.ndarray, dtype: DType) -> np.ndarray | None:
    """A weight [K, N] (K a multiple of 320) as [K / 320, N, 320]: fp16 as its bits (uint16), int8 as is. None for
    fp16 weights with an inf or a nan, which the compiled passes do not take."""
    if dtype is DType.FP16 and not np.isfinite(weights).all():
        return None
    k, n = weights.shape
    target = np.float16 if dtype is DType.FP16 else np.int8
    packed = np.ascontiguousarray(weights.reshape(k // LANES, LANES, n).transpose(0, 2, 1), dtype=target)
    return packed.view(np.uint16) if dtype is DType.FP16 else packed


@njit(fastmath={"reassoc", "contract"}, parallel=True, cache=True, boundscheck=False)
def _fp16_passes(a, a_norm, w, w_norm, out):  # pragma: no cover - compiled; tested via fp16_passes
    """out[k, r, j] = the exact sum of a[r, k, i] w[k, j, i] over i, rounded once to fp32. The fp64 sum here may
    be taken in any order (SIMD lanes); `_settle` decides, without reordering, whether that is close enough."""
    tiles, n, lanes = w.shape
    for j in prange(n):
        for k in range(tiles):
            col = w[k, j]
            for r in range(a.shape[0]):
                ar = a[r, k]
                total = 0.0
                for i in range(lanes):
                    total += ar[i] * half_to_f64(col[i])
                out[k, r, j] = _settle(total, a_norm[r, k] * w_norm[k, j], ar, col)


@njit(cache=True)
def _settle(s, norms, a, col):  # pragma: no cover - compiled
    """fp32 of the exact sum of a * col, given its fp64 sum s: fp32(s) where the interval s -+ E rounds to one
    fp32 value, E = BOUND * sum |a col|, bounded first by the product of the norms (Cauchy-Schwarz), then, where
    that leaves it open, computed; else the exact sum (`_exact`). An exact zero is +0 (fixed-point accumulator)."""
    r = np.float32(s)
    if not _certain(s, r, norms * BOUND):
        size = 0.0
        for i in range(len(col)):
            size += abs(a[i]) * abs(half_to_f64(col[i]))
        if not _certain(s, r, size * BOUND):
            r = _exact(a, col)
    return np.float32(0.0) if r == 0 else r


@njit(cache=True)
def _certain(s, r, e):  # pragma: no cover - compiled
    """`numerics._certain` for one value: s - e and s + e round to r's fp32 value."""
    return np.isfinite(r) and np.float32(s - e) == np.float32(s + e)


@njit(cache=True)
def _exact(a, col):  # pragma: no cover - compiled
    """`mxm_pass`'s exact sum of a * col: fp16 values scaled by 2^24 are integers hi 2^20 + lo (`_halves`); each
    half-product sum is an integer below 2^53, so fp64 holds it exactly in any order; then one correct rounding."""
    hh = 0.0
    mid = 0.0
    ll = 0.0
    for i in range(len(col)):
        a_hi, a_lo = _halves(a[i])
        w_hi, w_lo = _halves(half_to_f64(col[i]))
        hh += a_hi * w_hi
        mid += a_hi * w_lo + a_lo * w_hi
        ll += a_lo * w_lo
    return _round_sum(hh * 2.0**-8, mid * 2.0**-28, ll * 2.0**-48)


@njit(cache=True)
def _halves(x):  # pragma: no cover - compiled
    """`numerics._split` for one fp16 value (held as fp64): x 2^24 = hi 2^20 + lo, |hi| <= 2^20, |lo| < 2^20."""
    scaled = x * 2.0**24
    hi = np.trunc(scaled * 2.0**-20)
    return hi, scaled - hi * 2.0**20


@njit(cache=True)
def _two_sum(a, b):  # pragma: no cover - compiled
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@njit(cache=True)
def _round_sum(x, y, z):  # pragma: no cover - compiled
    """`numerics._round_sum_to_fp32` for one value: fp32 nearest-even of the exact x + y + z."""
    s1, e1 = _two_sum(x, y)
    u, e2 = _two_sum(s1, z)
    rest = e1 + e2
    r = np.float32(u)
    toward = np.float32(np.inf) if u > r else np.float32(-np.inf)
    other = np.nextafter(r, toward)
    tie = u != r and u == (np.float64(r) + np.float64(other)) / 2 and rest != 0
    if tie and np.sign(rest) == np.sign(np.float64(other) - u):
        return other
    return r


@njit(parallel=True, cache=True, boundscheck=False)
def _int8_sums(a, w, out):  # pragma: no cover - compiled; tested through int8_passes
    """out[k, r, j] = sum_i a[r, k, i] w[k, j, i], exact in int32."""
    tiles, n, lanes = w.shape
    for j in prange(n):
        for k in range(tiles):
            col = w[k, j]
            for r in range(a.shape[0]):
                ar = a[r, k]
                total = np.int32(0)
                for i in range(lanes):
                    total += np.int32(ar[i]) * np.int32(col[i])
                out[k, r, j] = total


def fp16_passes(acts: np.ndarray, packed: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Every 320-deep pass of acts [m, K] (fp16 values, as fp16 or fp64) by the packed fp16 weight, whose
    columns' norms are `norms` (`column_norms(packed)`): [K / 320, m, N] fp32, each `mxm_pass(acts_k, W_k, FP16)`
    bit for bit."""
    a64 = nx.from_fp16(acts, np.float64) if acts.dtype == np.float16 else acts.astype(np.float64, copy=False)
    m, tiles, n = len(a64), packed.shape[0], packed.shape[1]
    if not np.isfinite(a64).all():  # an inf or a nan: IEEE propagation, pass by pass
        return np.stack([nx.mxm_pass(a64[:, k * LANES:(k + 1) * LANES], packed[k].T.view(np.float16), DType.FP16)
                         for k in range(tiles)])
    a3 = np.ascontiguousarray(a64.reshape(m, tiles, LANES))
    out = np.empty((tiles, m, n), np.float32)
    _fp16_passes(a3, np.sqrt(np.einsum("rki,rki->rk", a3, a3)), packed, norms, out)
    return out


def column_norms(packed: np.ndarray) -> np.ndarray:
    """The Euclidean norm of each column of each K tile of a packed fp16 weight, [K / 320, N] fp64."""
    norms = np.empty(packed.shape[:2])
    for k, tile in enumerate(packed):  # a K tile at a time: a whole weight in fp64 would be twice the packing
        w64 = tile.view(np.float16).astype(np.float64)
        norms[k] = np.sqrt(np.einsum("ji,ji->j", w64, w64))
    return norms


def int8_passes(acts: np.ndarray, packed: np.ndarray) -> np.ndarray:
    """Every 320-deep pass of int8 acts [m, K] by the packed int8 weight: [K / 320, m, N] int32, exact."""
    m, tiles, n = len(acts), packed.shape[0], packed.shape[1]
    out = np.empty((tiles, m, n), np.int32)
    _int8_sums(np.ascontiguousarray(acts.reshape(m, tiles, LANES), dtype=np.int8), packed, out)
    return out
