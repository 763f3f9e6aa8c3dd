"""fp16 conversions compiled with Numba, for the numerics' large arrays: the CPU's own IEEE conversions (F16C where
it has them), which NumPy does element by element in software (a subnormal result ~15 times slower than a normal
one). Bit for bit NumPy's conversions on every input they are given: every fp16 bit pattern widened (the NaNs
from NumPy's own table), every non-NaN fp32 bit pattern narrowed (checked once on all 2^32 here, 2026-12-08; the
tests check every edge). fp32 NaNs stay with NumPy, whose conversion keeps more of their payload than the CPU's.

Numba's on-disk cache (`cache=True`) is keyed by each function's own file: `compiler/fastmxm.py`'s kernels inline
`half_to_f64`, so a change to it here needs their cache dropped too (delete `compiler/__pycache__/*.nb*`).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def half_to_f64(typingctx, bits):  # pragma: no cover - compiled
    """The fp16 value whose bits (a 16-bit integer) are given, as fp64: exact (LLVM's fpext of a half)."""
    if not isinstance(bits, types.Integer) or bits.bitwidth != 16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.DoubleType())

    return types.float64(bits), codegen


@intrinsic
def f32_to_half(typingctx, x):  # pragma: no cover - compiled
    """The bits (uint16) of fp32 x rounded to fp16, to nearest even, overflowing to infinity (LLVM's fptrunc)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(x), codegen


@njit(cache=True, boundscheck=False)
def _narrow(x, out):  # pragma: no cover - compiled
    for i in range(x.size):
        out[i] = f32_to_half(x[i])


@njit(cache=True, boundscheck=False)
def _widen(bits, table, out):  # pragma: no cover - compiled
    """out[i]: fp16 bits[i] as out's type (fp32 or fp64: exact either way), a NaN from NumPy's `table`."""
    for i in range(bits.size):
        h = bits[i]
        out[i] = table[h] if (h & 0x7C00) == 0x7C00 and (h & 0x3FF) != 0 else half_to_f64(h)


def fp32_to_fp16(x: np.ndarray) -> np.ndarray:
    """NumPy's x.astype(float16) of an fp32 array without NaNs (the caller checks), same shape."""
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.size, np.uint16)
    _narrow(flat, out)
    return out.view(np.float16).reshape(x.shape)


def fp16_widen(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """NumPy's x.astype(table.dtype) of an fp16 array (fp32 or fp64), bit for bit, same shape. `table` holds
    NumPy's conversion of all 65,536 bit patterns: the NaNs are looked up in it (the CPU quiets a signalling
    NaN; NumPy keeps it)."""
    flat = np.ascontiguousarray(x).reshape(-1).view(np.uint16)
    out = np.empty(flat.size, table.dtype)
    _widen(flat, table, out)
    return out.reshape(x.shape)
