"""Numerics as the hardware does them: byte planes on streams, conversions, VXM functions and MXM dot products.

- Streams carry one byte per lane; a w-byte element is w byte planes (little-endian: the first stream holds the
  low byte), as the chip's byte-planar ("STRIDED") layout does.
- VXM arithmetic runs in fp32 / int32 (reference 1.4). fp16 operands are widened to fp32 and the result rounded
  back to the element type. Integer add/sub/mul wrap around in the element width.
- Transcendentals are computed in fp64 and rounded once to the element type: correctly rounded in practice, and
  the same on every machine.
- Conversions round to nearest, ties to even; float -> int and wide -> narrow int saturate; fp32 -> fp16
  saturates to +-65504 instead of overflowing to infinity (reference 7 #14, `cast(fp16_inf=False)`); NaN -> int
  gives 0.
- MXM: int8 x int8 products summed exactly into int32 (wrapping); fp16 x fp16 products summed exactly and rounded
  once to fp32 per 320-deep pass (TruePoint modelled as lossless accumulation, reference 5.2 and 7 #14);
  accumulation across passes in the accumulator is fp32 (int32 for int8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from openlpu.isa.opcodes import Opcode
from openlpu.isa.types import DType
from openlpu.sim import jit

FP16_MAX = 65504.0
INT_LIMITS = {DType.INT8: (-128, 127), DType.INT16: (-32768, 32767), DType.INT32: (-(2**31), 2**31 - 1)}
COMPUTE_TYPE = {DType.INT8: np.int32, DType.INT16: np.int32, DType.INT32: np.int32,
                DType.FP16: np.float32, DType.FP32: np.float32}


def planes_to_values(planes: np.ndarray, dtype: DType) -> np.ndarray:
    """[..., w, lanes] uint8 byte planes -> [..., lanes] values of `dtype`."""
    w = dtype.width_bytes
    if w == 1:
        return planes[..., 0, :].view(dtype.numpy)
    raw = np.empty(planes.shape[:-2] + (planes.shape[-1], w), np.uint8)
    for b in range(w):
        raw[..., b] = planes[..., b, :]
    return raw.view(dtype.numpy)[..., 0]


def values_to_planes(values: np.ndarray, dtype: DType) -> np.ndarray:
    """[..., lanes] values -> [..., w, lanes] uint8 byte planes."""
    w = dtype.width_bytes
    raw = np.ascontiguousarray(values.astype(dtype.numpy)).view(np.uint8).reshape(*values.shape, w)
    out = np.empty(values.shape[:-1] + (w, values.shape[-1]), np.uint8)
    for b in range(w):
        out[..., b, :] = raw[..., b]
    return out


def widen(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Element type -> the VXM compute type (fp32 or int32)."""
    if values.dtype == np.float16:
        return from_fp16(values, np.float32)
    return values.astype(COMPUTE_TYPE[dtype])


_FP16_TABLES: dict[type, np.ndarray] = {}


def from_fp16(values: np.ndarray, to: type) -> np.ndarray:
    """fp16 values as fp32 or fp64 (exact), by looking each bit pattern up in a table of all 65,536 of them made by
    NumPy's own conversion: the same values, NaN payloads included (measured here: 90 against 232 µs for
    [128, 640])."""
    table = _FP16_TABLES.get(to)
    if table is None:
        table = _FP16_TABLES[to] = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(to)
    if values.size >= JIT_SIZE:
        return jit.fp16_widen(values, table)
    return np.take(table, values.view(np.uint16))


JIT_SIZE = 4096
"""From this many values on, the fp16 conversions take `jit`'s compiled loops (the CPU's conversions, the same
bits). Below it they gain little (measured here: 640 values 1.2 against 1.3 µs narrowing, 1.5 against 1.7
widening; 4,096 values 1.4 against 6.9 and 3.6 against 4.0), and the one-row casts keep their own paths."""


def narrow(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Result -> element type, rounding once: floats to nearest even (fp16 saturating); ints wrap. An fp32 result
    that is already fp32 comes back as itself, not a copy."""
    if dtype is DType.FP16:
        return _saturate_fp16(values)
    if dtype is DType.FP32:
        return values.astype(np.float32, copy=False)
    return values.astype(np.int64).astype(dtype.numpy)  # two's-complement wrap


FP16_OVERFLOW = 65520.0
"""The least magnitude that rounds to infinity in fp16: halfway between 65504 and 2^16, a tie that goes to the even
2^16."""


def fp32_to_fp16(x: np.ndarray) -> np.ndarray:
    """fp32 -> fp16, to nearest even, overflowing to infinity: NumPy's own conversion, bit for bit (checked here
    on all 2^32 inputs; the tests check every rounding edge). NumPy converts element by element and raises the
    underflow flag for each fp16 subnormal it makes (measured here: 80-90 ns each, 13-20 times a normal one); the
    attention scores' lo halves are mostly subnormal, so a large array without NaNs takes the CPU's own conversion
    (`jit`, from `JIT_SIZE` values), and a smaller one with many subnormals whole-array integer arithmetic; a NaN
    stays with NumPy's conversion, which keeps its payload."""
    if x.size >= JIT_SIZE and not np.isnan(x).any():
        return jit.fp32_to_fp16(x)
    bits = np.ascontiguousarray(x).view(np.uint32)
    mag = bits & 0x7FFFFFFF
    if np.count_nonzero((mag - 1) < 0x387FFFFF) * 8 < mag.size or (mag > 0x7F800000).any():
        with np.errstate(over="ignore"):  # few in 0 < |x| < 2^-14, where NumPy is as fast; or a NaN
            return x.astype(np.float16)
    return _fp16_by_bits(bits, mag)


def _fp16_by_bits(bits: np.ndarray, mag: np.ndarray) -> np.ndarray:
    """`fp32_to_fp16` of the non-NaN fp32 values whose bits (uint32) and bits without the sign are given."""
    x = bits.view(np.float32)
    # normal: drop 13 fraction bits to nearest even (a carry runs on into the exponent, as rounding up into the
    # next binade should) and rebias the exponent from 127 to 15; from 65520 up that is >= 0x7C00, infinity
    h = (mag + (0xFFF + ((mag >> 13) & 1)) - (112 << 23)) >> 13
    np.minimum(h, 0x7C00, out=h)
    # below 2^-14, zero included: |x| + 0.5 rounds |x| to a multiple of 2^-24 (0.5's ulp), to nearest even, and
    # its low bits count them (2^-14 itself: 1024, the least normal's bits)
    small = (np.abs(x) + np.float32(0.5)).view(np.uint32) - 0x3F000000
    np.copyto(h, small, where=mag < 0x38800000)
    h |= (bits >> 16) & 0x8000
    return h.astype(np.uint16).view(np.float16)


def _saturate_fp16(x: np.ndarray) -> np.ndarray:
    """Round (fp32 or fp64) to fp16 once, to nearest even; finite values beyond the range saturate to +-65504."""
    if x.dtype == np.float32:
        h = fp32_to_fp16(x)
    else:
        with np.errstate(over="ignore"):
            h = x.astype(np.float16)
    if not (np.abs(x) >= FP16_OVERFLOW).any():  # nothing finite rounded to infinity (nan compares false)
        return h
    over = np.isinf(h) & np.isfinite(x)
    if over.any():
        h = np.where(over, np.copysign(np.float16(FP16_MAX), x).astype(np.float16), h)
    return h


SMALL_CAST = 2048
"""Up to this many fp32 values, the fp16 cast converts first and checks after: one row's cast then costs ~12 µs
instead of ~40 (the checks before a conversion are five NumPy calls). Larger arrays keep the checks first, which
route a mostly subnormal array (NumPy converts a subnormal ~15 times slower) to `fp32_to_fp16`'s integer path."""


def convert(values: np.ndarray, src: DType, dst: DType) -> np.ndarray:
    """The VXM `cast`: round to nearest even, saturate, NaN -> 0 for integer targets."""
    if dst.is_float:
        if dst is DType.FP16:  # numpy rounds fp32 and fp64 to fp16 alike, once, to nearest even (tests check
            # it); only a NaN's payload comes out differently, so NaNs take the fp64 route they always took
            if values.dtype == np.float32 and values.size <= SMALL_CAST:
                with np.errstate(over="ignore"):
                    h = values.astype(np.float16)
                if np.isfinite(h).all():  # no NaN and nothing rounded to infinity: NumPy's conversion is the cast
                    return h
            direct = values.dtype == np.float32 and not np.isnan(values).any()
            return _saturate_fp16(values if direct else values.astype(np.float64))
        if values.dtype == np.float16:
            return from_fp16(values, np.float32)  # exact
        if values.dtype == np.float32:
            return values.astype(np.float32)
        return values.astype(np.float64).astype(np.float32)
    lo, hi = INT_LIMITS[dst]
    if src.is_float:
        x = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=hi, neginf=lo)
        return np.clip(np.rint(x), lo, hi).astype(dst.numpy)
    return np.clip(values.astype(np.int64), lo, hi).astype(dst.numpy)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function in fp64 without cancellation: exp of a non-positive argument on both sides of 0."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


_SIMPLE_UNARY = {
    Opcode.COPY: lambda x: x,
    Opcode.NEG: np.negative,
    Opcode.ABS: np.abs,
    Opcode.RELU: lambda x: np.maximum(x, 0),
}

_BINARY = {
    Opcode.ADD: np.add,
    Opcode.SUB: np.subtract,
    Opcode.MUL: np.multiply,
    Opcode.MAX: np.maximum,
    Opcode.MIN: np.minimum,
    Opcode.CMP_EQ: lambda x, y: (x == y).astype(x.dtype),
    Opcode.CMP_LT: lambda x, y: (x < y).astype(x.dtype),
    Opcode.CMP_LE: lambda x, y: (x <= y).astype(x.dtype),
}


EXP_UNDERFLOW = {DType.FP32: -104.0, DType.FP16: -18.0}
"""Below these, exp(x) is under half the type's least subnormal (2^-150 = e^-103.97, 2^-25 = e^-17.33), so its
one rounding gives +0: `vxm_unary` skips computing it (masked attention scores are all down there)."""


def _exp(x64: np.ndarray, dtype: DType) -> np.ndarray:
    """np.exp(x64), with the entries that round to +0 in `dtype` left at +0 instead of computed (NaN is computed:
    it compares false)."""
    below = x64 < EXP_UNDERFLOW.get(dtype, -np.inf)
    if not below.any():
        return np.exp(x64)
    return np.exp(x64, out=np.zeros_like(x64), where=~below)


_FLOAT_UNARY = {  # f(x in fp64, the result's type): rounded once to that type by `vxm_unary`
    Opcode.EXP: _exp,
    Opcode.RECIP: lambda x, _: 1.0 / x,
    Opcode.RSQRT: lambda x, _: 1.0 / np.sqrt(x),
    Opcode.TANH: lambda x, _: np.tanh(x),
    Opcode.SIGMOID: lambda x, _: _sigmoid(x),
    Opcode.SILU: lambda x, _: x * _sigmoid(x),
}


def vxm_unary(op: Opcode, x: np.ndarray, dtype: DType) -> np.ndarray:
    if op in _FLOAT_UNARY:
        with np.errstate(all="ignore"):
            return narrow(_FLOAT_UNARY[op](x.astype(np.float64), dtype), dtype)
    with np.errstate(all="ignore"):
        return narrow(_SIMPLE_UNARY[op](widen(x, dtype)), dtype)


def vxm_binary(op: Opcode, x: np.ndarray, y: np.ndarray, dtype: DType) -> np.ndarray:
    ct = COMPUTE_TYPE[dtype]  # operands already of the compute type are read in place: every op makes a new array
    with np.errstate(all="ignore"):
        return narrow(_BINARY[op](_operand(x, ct), _operand(y, ct)), dtype)


def _operand(x: np.ndarray, ct: type) -> np.ndarray:
    return from_fp16(x, ct) if x.dtype == np.float16 else x.astype(ct, copy=False)


def vxm_select(mask: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(mask != 0, x, y)


def mxm_pass(acts: np.ndarray, weights: np.ndarray, dtype: DType,
             split: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """One pass through a plane: acts [M, K] x weights [K, N] -> [M, N] int32 (int8) or fp32 (fp16).

    int8: exact, wrapping into int32. fp16: the exact sum of the K products, rounded once to fp32 (TruePoint's
    lossless accumulation, reference 5.2). Every fp16 value is an integer multiple of 2^-24 below 2^16, so
    scaled by 2^24 and split into two 20-bit halves, each half-product sum over K <= 320 is an integer below
    2^53: four fp64 matrix products compute it exactly in any order, and only the final rounding remains.
    `split` is `split_weights(weights)`, for callers that multiply by the same weights again.
    """
    if dtype is DType.INT8:
        return (acts.astype(np.int64) @ weights.astype(np.int64)).astype(np.int32)
    a64 = acts.astype(np.float64)
    if split is None or not np.isfinite(a64).all():  # a given split is of finite weights
        w64 = weights.astype(np.float64)
        if acts.shape[1] > _EXACT_DEPTH or not (np.isfinite(a64).all() and np.isfinite(w64).all()):
            return (a64 @ w64).astype(np.float32)  # inf/nan propagate as IEEE says; exactness is moot
        split = _split(w64)
    a_hi, a_lo = _split(a64)
    w_hi, w_lo = split
    m = len(a_hi)
    both = np.concatenate([a_hi, a_lo])  # each weight half is read once (memory-bound when M is small)
    by_hi, by_lo = both @ w_hi, both @ w_lo
    high = by_hi[:m] * 2.0**-8  # 2^(40 - 48)
    middle = (by_lo[:m] + by_hi[m:]) * 2.0**-28  # 2^(20 - 48)
    low = by_lo[m:] * 2.0**-48
    r = _round_sum_to_fp32(high, middle, low)
    r[r == 0] = 0.0  # the accumulator is fixed-point: an exact zero sum is +0 (nonzero sums are >= 2^-48)
    return r


_EXACT_DEPTH = 512  # products of 20-bit halves stay below 2^53 summed over up to 2^13 terms; a pass is 320


class Block(NamedTuple):
    """A sub-block of a weight tile (its rows and columns) that holds nonzero weights; `ones`: every weight in it
    is 1, so a @ block is each row's sum of a[:, rows], in every column."""

    rows: slice
    cols: slice
    ones: bool = False


def mxm_pass_fp16(acts: np.ndarray, weights64: np.ndarray, column_norms: np.ndarray,
                  blocks: Sequence[Block] | None = None, exact_below: float = 0.0) -> np.ndarray:
    """`mxm_pass` for fp16, bit for bit, with one fp64 product instead of four when the rounding is certain.

    `weights64` is the fp16 weight tile as fp64 and `column_norms` its columns' Euclidean norms
    (`column_norms(weights64)`; callers keep both). Every product of two fp16 values is exact in fp64 and in
    fp32, so the fp64 sum s is within E = 2 n 2^-53 sum|a w| of the exact sum (any order, FMA or not). Where
    [s - E, s + E] holds no fp32 rounding boundary, fp32(s) is the correctly rounded exact sum. sum|a w| is
    bounded first by |a| |w| (Cauchy-Schwarz: two norms, no product), then, for the columns that leaves open,
    computed in fp32 (positive terms: within 0.01 % here; E carries 1 % to spare); the entries still open are
    computed by `mxm_pass`.

    `blocks` lists the tile's sub-blocks that hold its nonzero weights, for a mostly-zero tile: the products
    outside them are exact zeros, so summing block by block (an all-ones block as a row sum) is another order of
    the same sum.
    `exact_below` is `exact_below(weights64)`: when every |a| is below it, the fp64 sum is the exact sum (the
    attention's 0/1 head-sum matrix, whose sums cancel too much for the bound), and no bound is needed."""
    a64 = from_fp16(acts, np.float64) if acts.dtype == np.float16 else acts.astype(np.float64, copy=False)
    top = np.abs(a64).max(initial=0.0)
    if not np.isfinite(top):  # an inf or a nan among the activations
        return mxm_pass(acts, weights64.astype(np.float16), DType.FP16)
    s = a64 @ weights64 if blocks is None else _block_product(a64, weights64, blocks)
    r = s.astype(np.float32)
    if top < exact_below:  # s is exact, so fp32(s) is its one rounding
        return _plus_zero(r)
    scale = 1.01 * 2 * len(weights64) * 2.0**-53
    norms = np.sqrt(np.einsum("ij,ij->i", a64, a64))
    sure = _certain(s, r, np.outer(norms * scale, column_norms))
    if not sure.all():
        cols = np.flatnonzero(~sure.all(axis=0))
        total = _abs_products(np.abs(acts).astype(np.float32), weights64, cols, blocks)
        sure[:, cols] |= _certain(s[:, cols], r[:, cols], total.astype(np.float64) * scale)
    r = _plus_zero(r)  # below: a sum of fp16 products is 0 or at least 2^-48 in size
    if not sure.all():  # only the rows and columns that hold an open entry
        rows, cols = np.flatnonzero(~sure.all(axis=1)), np.flatnonzero(~sure.all(axis=0))
        exact = mxm_pass(acts[rows], weights64[:, cols].astype(np.float16), DType.FP16)
        block = np.ix_(rows, cols)
        r[block] = np.where(sure[block], r[block], exact)
    return r


def _block_product(a64: np.ndarray, weights64: np.ndarray, blocks: Sequence[Block]) -> np.ndarray:
    """a64 @ weights64 from the tile's nonzero blocks alone. The all-ones blocks: each distinct row range of a
    summed once per row, the sums spread to their blocks' columns by one 0/1 product (every product by 1 or 0 is
    exact). The other blocks one by one."""
    ranges, spread = _ones_spread(blocks, weights64.shape[1])
    sums = np.empty((len(a64), len(ranges)))
    for i, (lo, hi) in enumerate(ranges):
        sums[:, i] = a64[:, lo:hi].sum(axis=1)
    s = sums @ spread
    for b in blocks:
        if not b.ones:
            s[:, b.cols] += a64[:, b.rows] @ weights64[b.rows, b.cols]
    return s


_SPREADS: dict[int, tuple[Sequence[Block], int, list[tuple[int, int]], np.ndarray]] = {}
"""`_ones_spread`'s results by the id of the blocks' sequence, which each entry holds (so the id is not reused)."""


def _ones_spread(blocks: Sequence[Block], cols: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The all-ones blocks' distinct row ranges, and the 0/1 matrix [ranges, cols] that spreads each range's sum
    to its blocks' columns; kept per sequence of blocks (a caller passes a tile's sequence again and again)."""
    hit = _SPREADS.get(id(blocks))
    if hit is not None and hit[0] is blocks and hit[1] == cols:
        return hit[2], hit[3]
    ones = [b for b in blocks if b.ones]
    ranges = sorted({(b.rows.start, b.rows.stop) for b in ones})
    spread = np.zeros((len(ranges), cols))
    for b in ones:
        spread[ranges.index((b.rows.start, b.rows.stop)), b.cols] = 1.0
    if len(_SPREADS) >= 1024:
        _SPREADS.clear()
    _SPREADS[id(blocks)] = (blocks, cols, ranges, spread)
    return ranges, spread


def _plus_zero(r: np.ndarray) -> np.ndarray:
    """r with every zero made +0, in place: the accumulator is fixed-point, so an exact zero sum is +0. Adding +0
    does it in one pass (-0 + +0 = +0; any other x + 0 is x, a NaN from a conversion, which is quiet, included)."""
    return np.add(r, np.float32(0.0), out=r)


def _certain(s: np.ndarray, r: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Where the exact sum, within `bound` of the fp64 sum s, rounds to r = fp32(s): s - bound and s + bound round
    to one fp32 value, so (rounding being monotonic) everything between them does. `bound` carries 1 % to spare,
    more than the fp64 rounding of s -+ bound can take (2^-53 |s|, and bound >= 640 2^-53 |s|)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.isfinite(r) & ((s - bound).astype(np.float32) == (s + bound).astype(np.float32))


def _abs_products(a_abs: np.ndarray, weights64: np.ndarray, cols: np.ndarray,
                  blocks: Sequence[Block] | None) -> np.ndarray:
    """sum |a w| for the columns `cols` of the tile (fp32), over its nonzero sub-blocks if given."""
    if blocks is None:
        return a_abs @ np.abs(weights64[:, cols]).astype(np.float32)
    total = np.zeros((len(a_abs), weights64.shape[1]), np.float32)
    for b in blocks:
        total[:, b.cols] += a_abs[:, b.rows] @ np.abs(weights64[b.rows, b.cols]).astype(np.float32)
    return total[:, cols]


def exact_below(weights64: np.ndarray) -> float:
    """The bound on |a| under which the fp64 product a @ w of fp16 values a and the fp16 tile w (held as fp64) is
    exact in any order (0.0: never, for a tile with inf or nan). Every product is a multiple of u = 2^-24 q, q the
    smallest power of two that divides every weight (fp16 values are multiples of 2^-24), and so is every partial
    sum; a partial sum is at most max|a| times the largest column sum of |w|. Below 2^53 u, all of them are fp64
    integers times u: no rounding happens."""
    if not np.isfinite(weights64).all():
        return 0.0
    scaled = (np.abs(weights64[weights64 != 0]) * 2.0**24).astype(np.int64)  # exact: fp16 values are < 2^16
    if scaled.size == 0:
        return np.inf  # an all-zero tile: every sum is an exact zero
    quantum = float((scaled & -scaled).min()) * 2.0**-24
    return 2.0**53 * 2.0**-24 * quantum / float(np.abs(weights64).sum(axis=0).max())


def column_norms(weights64: np.ndarray) -> np.ndarray:
    """The Euclidean norm of each column of an fp16 weight tile held as fp64: `mxm_pass_fp16`'s error bound."""
    return np.sqrt(np.einsum("ij,ij->j", weights64, weights64))


def split_weights(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two integer halves `mxm_pass` multiplies fp16 weights as, to reuse across calls (finite weights
    only: `mxm_pass` trusts a split to be of finite weights)."""
    return _split(weights.astype(np.float64))


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fp16 values (as fp64) scaled to integers x * 2^24 = hi * 2^20 + lo, with |hi| <= 2^20 and |lo| < 2^20."""
    scaled = x * 2.0**24
    hi = np.trunc(scaled * 2.0**-20)
    return hi, scaled - hi * 2.0**20


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s + e == a + b exactly, s = fl(a + b) (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _round_sum_to_fp32(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """fp32 nearest-even of the exact x + y + z (fp64 arrays): an error-free sum, then the fp64 -> fp32 rounding
    corrected where the fp64 value sits exactly on a tie that the remainder breaks."""
    s1, e1 = _two_sum(x, y)
    u, e2 = _two_sum(s1, z)
    rest = e1 + e2  # far below half an fp32 ulp of u; only its sign can matter
    r = u.astype(np.float32)
    other = np.where(u > r, np.nextafter(r, np.float32(np.inf)), np.nextafter(r, np.float32(-np.inf)))
    tie = (u != r) & (u == (r.astype(np.float64) + other.astype(np.float64)) / 2) & (rest != 0)
    past = np.sign(rest) == np.sign(other.astype(np.float64) - u)
    return np.where(tie & past, other, r)


def accumulate(old: np.ndarray, new: np.ndarray, dtype: DType) -> np.ndarray:
    """Accumulator update: int32 wrap-around for int8 passes, fp32 addition for fp16 passes."""
    if dtype is DType.INT8:
        return (old.astype(np.int64) + new).astype(np.int32)
    return (old + new).astype(np.float32)
