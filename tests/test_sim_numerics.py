"""The fp16 MXM pass: the fast certified form equals the exact one bit for bit, ties and cancellation included."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from openlpu.isa.opcodes import Opcode
from openlpu.isa.types import DType
from openlpu.sim import numerics as nx


def exact(acts: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Each entry's exact sum (rationals), rounded to fp32 nearest-even."""
    out = np.empty((acts.shape[0], w.shape[1]), np.float32)
    for i in range(acts.shape[0]):
        for j in range(w.shape[1]):
            total = sum((Fraction(float(a)) * Fraction(float(b)) for a, b in zip(acts[i], w[:, j])), Fraction(0))
            r = np.float32(float(total))
            near = [np.nextafter(r, np.float32(-np.inf)), r, np.nextafter(r, np.float32(np.inf))]
            out[i, j] = min(near, key=lambda c: (abs(Fraction(float(c)) - total), int(c.view(np.uint32)) & 1))
    return out


def fast(acts: np.ndarray, w: np.ndarray) -> np.ndarray:
    w64 = w.astype(np.float64)
    return nx.mxm_pass_fp16(acts, w64, nx.column_norms(w64))


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("seed", range(4))
def test_random_wide_range_passes_agree_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    acts = (rng.normal(size=(3, 320)) * 2.0 ** rng.integers(-20, 12, (3, 320))).astype(np.float16)
    w = (rng.normal(size=(320, 40)) * 2.0 ** rng.integers(-20, 12, (320, 40))).astype(np.float16)
    assert same_bits(fast(acts, w), nx.mxm_pass(acts, w, DType.FP16))


def test_a_sum_on_an_fp32_tie_rounds_to_even_like_the_exact_pass():
    acts = np.zeros((1, 320), np.float16)
    w = np.zeros((320, 3), np.float16)
    acts[0, :3] = [4096, 1, 2.0**-24]
    w[:2, 0] = [4096, 1]  # 2^24 + 1: halfway between two fp32 values -> 2^24
    w[:2, 1] = [4096, 3]  # 2^24 + 3 -> 2^24 + 4
    w[:3, 2] = [4096, 1, 1]  # 2^24 + 1 + 2^-24: just above the tie -> 2^24 + 2
    got = fast(acts, w)
    assert same_bits(got, exact(acts, w)) and same_bits(got, nx.mxm_pass(acts, w, DType.FP16))
    assert got[0].tolist() == [2.0**24, 2.0**24 + 4, 2.0**24 + 2]


def test_cancellation_and_exact_zeros_follow_the_exact_pass():
    acts = np.zeros((2, 320), np.float16)
    w = np.zeros((320, 2), np.float16)
    acts[0, :3] = [60000, -60000, 2.0**-24]
    acts[1, :2] = [-0.0, 0.0]
    w[:3, 0] = [60000, 60000, 2.0**-14]  # huge terms cancel, a subnormal-sized remainder stays
    w[:2, 1] = [1, 1]
    got = fast(acts, w)
    assert same_bits(got, nx.mxm_pass(acts, w, DType.FP16)) and same_bits(got, exact(acts, w))


def test_a_mostly_zero_tile_summed_block_by_block_agrees_bit_for_bit():
    """The attention's head-sum matrix: the fast path sums only its nonzero 64 x 64 blocks."""
    from openlpu.compiler.fast import nonzero_blocks

    rng = np.random.default_rng(7)
    acts = (rng.normal(size=(5, 320)) * 2.0 ** rng.integers(-20, 12, (5, 320))).astype(np.float16)
    acts[0, :3] = [4096, 1, 2.0**-24]  # a tie and a near-tie, as above, in the first block
    w = np.zeros((320, 640), np.float16)
    for h in range(5):
        w[64 * h:64 * (h + 1), 64 * h:64 * (h + 1)] = 1
    w[0, 0], w[1, 0], w[2, 1] = 4096, 1, 1
    w[300, :576] = 1  # a row of ones across many blocks
    w64 = w.astype(np.float64)
    blocks = nonzero_blocks(w64)
    assert blocks is not None and len(blocks) < 11
    assert {b.ones for b in blocks} == {True, False}  # head blocks of ones are summed as rows, the others multiplied
    assert nonzero_blocks(np.ones((320, 640))) is None
    got = nx.mxm_pass_fp16(acts, w64, nx.column_norms(w64), blocks)
    assert same_bits(got, nx.mxm_pass(acts, w, DType.FP16))


def test_a_head_sum_tile_is_summed_exactly_without_a_bound():
    """0/1 weights: every product is an fp16 activation, so the fp64 sum of a head's lanes is exact and no
    certainty test is needed — even where the sum cancels to almost nothing."""
    w = np.zeros((320, 320), np.float16)
    for h in range(5):
        w[64 * h:64 * (h + 1), 64 * h:64 * (h + 1)] = 1
    w64 = w.astype(np.float64)
    bound = nx.exact_below(w64)
    assert bound == 2.0**29 / 64  # q = 1: a column sums at most 64 activations below 2^53 2^-24
    rng = np.random.default_rng(3)
    acts = (rng.normal(size=(4, 320)) * 2.0 ** rng.integers(-24, 15, (4, 320))).astype(np.float16)
    acts[0, :4] = [60000, -60000, 2.0**-24, 2.0**-14]  # cancels down to the last bits
    acts[1, 64:67] = [4096, 1, 2.0**-24]  # 2^24 + 1 + 2^-24: just above an fp32 tie
    assert np.abs(acts.astype(np.float64)).max() < bound
    got = nx.mxm_pass_fp16(acts, w64, nx.column_norms(w64), None, bound)
    assert same_bits(got, nx.mxm_pass(acts, w, DType.FP16)) and same_bits(got[:2, :80], exact(acts[:2], w[:, :80]))


def test_the_exact_bound_follows_the_weights_smallest_bit_and_largest_column():
    w = np.zeros((320, 2))
    w[:3, 0] = [0.5, 0.25, 2.0**-10 * 3]  # smallest bit 2^-10
    w[:2, 1] = [1.0, 1.0]
    assert nx.exact_below(w) == 2.0**29 * 2.0**-10 / 2.0
    assert nx.exact_below(np.zeros((320, 4))) == np.inf  # every sum is an exact zero
    w[5, 1] = np.inf
    assert nx.exact_below(w) == 0.0


def test_activations_past_the_exact_bound_take_the_certified_path():
    w = np.zeros((320, 1), np.float16)
    w[:3, 0] = [1, 1, 1]
    w64 = w.astype(np.float64)
    acts = np.zeros((1, 320), np.float16)
    acts[0, :3] = [4096, 1, 2.0**-24]
    got = nx.mxm_pass_fp16(acts, w64, nx.column_norms(w64), None, exact_below=1000.0)  # a false bound is not used
    assert same_bits(got, exact(acts, w))


def test_fp32_rounds_to_fp16_as_fp64_does_ties_subnormals_saturation_and_nans_included():
    rng = np.random.default_rng(11)
    x = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edges = np.array([65504, 65519.996, 65520, 65536, 1e30, np.inf, 2.0**-25, 2.0**-25 * 3, 2.0**-24 * 1.5,
                      2.0**-14 - 2.0**-25, 1 + 2.0**-11, 1 + 3 * 2.0**-11], np.float32)
    numbers = np.concatenate([x[~np.isnan(x)], edges, -edges])  # fp32 values round on the direct route

    def both(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore"):  # signalling NaNs among the random bits
            return nx.convert(v, DType.FP32, DType.FP16), nx.convert(v.astype(np.float64), DType.FP32, DType.FP16)

    for values in (numbers, x):  # x holds NaNs: their payloads are as the fp64 route makes them
        # whole, and in pieces small enough to be converted first and checked after (numbers' ends at its end)
        for part in (values, values[-nx.SMALL_CAST:], values[:nx.SMALL_CAST]):
            via32, via64 = both(part)
            assert np.array_equal(via32.view(np.uint16), via64.view(np.uint16))
    via32, _ = both(edges)
    assert via32[:5].tolist() == [65504] * 5 and np.isinf(via32[5]) and via32[6:10].tolist() == [
        0, 2.0**-23, 2.0**-23, 2.0**-14] and via32[10:].tolist() == [1, 1 + 2.0**-9]


def test_all_ones_blocks_also_sum_as_rows_on_the_certified_path():
    from openlpu.compiler.fast import nonzero_blocks

    w = np.zeros((320, 320), np.float16)
    w[:64, :64] = 1
    w[64:128, 64:128] = 2.0**-24  # the smallest fp16 step: the exact bound drops below the activations
    w64 = w.astype(np.float64)
    blocks = nonzero_blocks(w64)
    assert [b.ones for b in blocks] == [True, False]
    rng = np.random.default_rng(5)
    acts = (rng.normal(size=(6, 320)) * 2.0 ** rng.integers(-24, 15, (6, 320))).astype(np.float16)
    acts[0, :3] = [60000, -60000, 2.0**-24]  # cancels to the last bit
    acts[1, :3] = [4096, 1, 2.0**-24]  # just above an fp32 tie
    bound = nx.exact_below(w64)
    assert np.abs(acts.astype(np.float64)).max() >= bound
    got = nx.mxm_pass_fp16(acts, w64, nx.column_norms(w64), blocks, bound)
    assert same_bits(got, nx.mxm_pass(acts, w, DType.FP16)) and same_bits(got[:2, :2], exact(acts[:2], w[:, :2]))


def test_fp16_widens_by_table_to_the_bits_numpy_gives_every_pattern_nans_included():
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    for to in (np.float32, np.float64):
        got = nx.from_fp16(every[:, ::3], to)  # a strided view, as the fast path passes
        assert got.dtype == to and np.array_equal(got.view(np.uint8), every[:, ::3].astype(to).view(np.uint8))
    assert np.array_equal(nx.widen(every, DType.FP16).view(np.uint32), every.astype(np.float32).view(np.uint32))
    assert np.array_equal(nx.convert(every, DType.FP16, DType.FP32).view(np.uint32),
                          every.astype(np.float32).view(np.uint32))


def test_the_attention_head_sum_tile_agrees_with_the_exact_pass_mask_row_included():
    """A head-sum matrix's second K tile: four heads' 64 x 64 ones blocks, summed at once, and a row of ones
    across every head (a one-row block: an earlier mask lane); on the exact path and on the certified one."""
    from openlpu.compiler.fast import nonzero_blocks

    w = np.zeros((320, 640), np.float16)
    for h in range(4):
        w[64 * h:64 * (h + 1), 320 + 64 * h:320 + 64 * (h + 1)] = 1
    w[280, :576] = 1
    w64 = w.astype(np.float64)
    blocks = nonzero_blocks(w64)
    assert blocks[-1] == nx.Block(slice(280, 281), slice(0, 576), True) and all(b.ones for b in blocks)
    rng = np.random.default_rng(9)
    acts = (rng.normal(size=(8, 320)) * 2.0 ** rng.integers(-24, 14, (8, 320))).astype(np.float16)
    acts[:, 256:] = 0
    acts[:4, 280] = -30000  # masked rows
    acts[4, :3] = [60000, -60000, 2.0**-24]  # cancels to the last bit
    bound = nx.exact_below(w64)
    for below in (bound, 0.0):  # exact, and (told nothing) certified
        got = nx.mxm_pass_fp16(acts, w64, nx.column_norms(w64), blocks, below)
        assert same_bits(got, nx.mxm_pass(acts, w, DType.FP16))
    assert same_bits(got[4:6, 320:322], exact(acts[4:6], w[:, 320:322]))


def test_fp32_to_fp16_gives_numpys_bits_at_every_rounding_edge_and_on_strided_views():
    """Every finite fp16 value as fp32, the midpoints between neighbours (ties to even) and the fp32 values one
    step either side of them, both signs: subnormals, binade carries, overflow and infinities."""
    h = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)  # 0 .. 65504
    mid = ((h[:-1].astype(np.float64) + h[1:]) / 2).astype(np.float32)  # exact: 12 bits
    up, down = np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(0))
    big = np.array([65519.996, 65520, 65536, 1e30, np.inf, 2.0**-150, 1e-45], np.float32)
    x = np.concatenate([h, mid, up, down, big])
    x = np.concatenate([x, -x])
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
        bits = x.view(np.uint32)
        assert np.array_equal(nx._fp16_by_bits(bits, bits & 0x7FFFFFFF).view(np.uint16), want)  # every value
        assert np.array_equal(nx.fp32_to_fp16(x).view(np.uint16), want)
        for part in (x[np.abs(x) < 2.0**-13], x[np.abs(x) > 2.0**-13]):  # each side of the choice of method
            grid = part[: len(part) // 2 * 2].reshape(-1, 2)[:, ::-1][::3]  # strided, as the fast path passes
            assert np.array_equal(nx.fp32_to_fp16(grid).view(np.uint16), grid.astype(np.float16).view(np.uint16))
    assert nx.fp32_to_fp16(mid[:2]).tolist() == [0, 2.0**-23]  # 2^-25 ties down to 0, 3 * 2^-25 up to 2^-23
    for nan in ([np.nan, 1.0], [-np.nan] + [2.0**-20] * 7):  # NumPy's own conversion, payload and all
        nan = np.array(nan, np.float32)
        assert np.array_equal(nx.fp32_to_fp16(nan).view(np.uint16), nan.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("dtype", [DType.FP32, DType.FP16])
def test_exp_skips_only_what_rounds_to_zero(dtype):
    """Below `EXP_UNDERFLOW` exp rounds to +0 and is not computed; at and above it, and for NaN and inf, it is
    np.exp in fp64 rounded once, as before."""
    cut = nx.EXP_UNDERFLOW[dtype]
    x = np.concatenate([np.linspace(cut - 3, cut + 3, 6001), [-np.inf, np.inf, np.nan, -30000, 0]])
    x = x.astype(dtype.numpy)
    got = nx.vxm_unary(Opcode.EXP, x, dtype)
    with np.errstate(all="ignore"):
        want = nx.narrow(np.exp(x.astype(np.float64)), dtype)
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8))
    assert (got[x.astype(np.float64) < cut] == 0).all() and np.isnan(got[-3])
