"""Elementwise VXM kernels against NumPy: exact where the simulator rounds once, else within the stated bound;
cycles as predicted; several ways side by side for long tensors."""

from __future__ import annotations

import numpy as np
import pytest

from openlpu.errors import ProgramError
from openlpu.hardware import load_chip
from openlpu.isa import DType, Opcode
from openlpu.kernels import binary, binary_scalar, unary
from openlpu.sim.reference import simulate_reference

CHIP = load_chip("groqchip1")
#: N > 320 and not a multiple of it with M > 1; N a multiple of 320 with enough rows for several ways; one
#: element. Each case runs one of them (in turn), so every op meets several across its dtypes.
SHAPES = [(3, 700), (40, 320), (1, 1)]
FLOATS, INTS = [DType.FP32, DType.FP16], [DType.INT32, DType.INT8]
TRANSCENDENTAL = [Opcode.EXP, Opcode.RECIP, Opcode.RSQRT, Opcode.TANH, Opcode.SIGMOID, Opcode.SILU]
SIMPLE = [Opcode.COPY, Opcode.NEG, Opcode.ABS, Opcode.RELU]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


UNARY = {
    Opcode.COPY: lambda x: x, Opcode.NEG: np.negative, Opcode.ABS: np.abs,
    Opcode.RELU: lambda x: np.maximum(x, 0),
    Opcode.EXP: np.exp, Opcode.RECIP: lambda x: 1.0 / x, Opcode.RSQRT: lambda x: 1.0 / np.sqrt(x),
    Opcode.TANH: np.tanh, Opcode.SIGMOID: _sigmoid, Opcode.SILU: lambda x: x * _sigmoid(x),
}
BINARY = {Opcode.ADD: np.add, Opcode.SUB: np.subtract, Opcode.MUL: np.multiply, Opcode.MAX: np.maximum,
          Opcode.MIN: np.minimum}


def _values(rng, shape, dtype, op=None):
    if dtype is DType.INT8:
        return rng.integers(-128, 128, shape)
    if dtype is DType.INT32:
        return rng.integers(-(2**31), 2**31, shape)
    if op is Opcode.RSQRT:
        return rng.uniform(0.1, 4, shape).astype(dtype.numpy)
    if op is Opcode.RECIP:
        return (rng.uniform(0.25, 4, shape) * rng.choice([-1, 1], shape)).astype(dtype.numpy)
    return rng.uniform(-4, 4, shape).astype(dtype.numpy)


def _expected(values: np.ndarray, dtype: DType) -> np.ndarray:
    """The float64 / int64 result rounded once (floats) or wrapped (ints) to `dtype`."""
    return values.astype(np.float64 if dtype.is_float else np.int64).astype(dtype.numpy)


def _run(kernel):
    out, result = kernel.run(CHIP)
    assert result.cycles == kernel.predicted_cycles
    assert result.checks_passed, [c.describe() for c in result.checks]
    return out


def _assert_matches(out, exact, dtype, op, x):
    """Exact, except: fp16 transcendentals within one fp16 ulp (the simulator rounds fp64 -> fp32 -> fp16),
    and fp32 sigmoid / SiLU within one fp32 rounding plus the simulator's fp64 tanh error (2^-53, times |x|
    for SiLU)."""
    if dtype is DType.FP16 and op in TRANSCENDENTAL:
        assert np.all(np.abs(out - exact) <= 2.0**-10 * np.abs(exact) + 2.0**-24)
    elif dtype is DType.FP32 and op in (Opcode.SIGMOID, Opcode.SILU):
        atol = 2.0**-52 * max(1.0, float(np.abs(x).max()))
        assert np.all(np.abs(out.astype(np.float64) - exact) <= 2.0**-24 * np.abs(exact) + atol)
    else:
        np.testing.assert_array_equal(out, _expected(exact, dtype))


def _name(case: tuple) -> str:
    return "-".join(v.value for v in case)


UNARY_CASES = [(op, dt) for op in UNARY for dt in FLOATS] + [(op, dt) for op in SIMPLE for dt in INTS]


@pytest.mark.parametrize("case", range(len(UNARY_CASES)), ids=lambda i: _name(UNARY_CASES[i]))
def test_unary_matches_numpy(case):
    op, dtype = UNARY_CASES[case]
    shape = SHAPES[case % len(SHAPES)]
    x = _values(np.random.default_rng(1000 + case), shape, dtype, op)
    out = _run(unary(CHIP, op, x, dtype))
    assert out.shape == shape and out.dtype == dtype.numpy
    wide = x.astype(np.float64 if dtype.is_float else np.int64)
    _assert_matches(out, UNARY[op](wide), dtype, op, wide)


BINARY_CASES = [(op, dt) for op in BINARY for dt in FLOATS + INTS]


@pytest.mark.parametrize("case", range(len(BINARY_CASES)), ids=lambda i: _name(BINARY_CASES[i]))
def test_binary_matches_numpy(case):
    op, dtype = BINARY_CASES[case]
    shape = SHAPES[case % len(SHAPES)]
    rng = np.random.default_rng(2000 + case)
    x, y = _values(rng, shape, dtype), _values(rng, shape, dtype)
    out = _run(binary(CHIP, op, x, y, dtype))
    wide = np.float64 if dtype.is_float else np.int64
    np.testing.assert_array_equal(out, _expected(BINARY[op](x.astype(wide), y.astype(wide)), dtype))


@pytest.mark.parametrize("op", list(BINARY), ids=lambda o: o.value)
@pytest.mark.parametrize("dtype, imm", [(DType.FP32, 0.1), (DType.FP16, -1.3), (DType.INT32, 7),
                                        (DType.INT8, -100)], ids=lambda v: getattr(v, "value", str(v)))
def test_binary_scalar_rounds_the_immediate_like_the_vxm(op, dtype, imm):
    rng = np.random.default_rng(3000 + 10 * list(BINARY).index(op) + list(DType).index(dtype))
    x = _values(rng, (5, 333), dtype)
    out = _run(binary_scalar(CHIP, op, x, imm, dtype))
    wide = np.float64 if dtype.is_float else np.int64
    value = np.array(imm).astype(dtype.numpy)
    np.testing.assert_array_equal(out, _expected(BINARY[op](x.astype(wide), value.astype(wide)), dtype))


def test_single_row_and_column():
    x = np.array([[-2.5]], np.float32)
    np.testing.assert_array_equal(_run(unary(CHIP, Opcode.ABS, x, DType.FP32)), [[2.5]])


def test_long_tensors_use_several_ways_and_stream_one_row_per_cycle_each():
    rng = np.random.default_rng(4)
    x = rng.uniform(-4, 4, (97, 650)).astype(np.float32)
    kernel = unary(CHIP, Opcode.EXP, x, DType.FP32)
    ways = kernel.program.tensor("z").placement.interleave
    assert ways > 1
    np.testing.assert_array_equal(_run(kernel), np.exp(x.astype(np.float64)).astype(np.float32))
    one_way_rows = 97 * 3  # rows x column blocks
    assert kernel.predicted_cycles < one_way_rows


def test_short_tensors_stay_next_to_the_vxm():
    """Far slices cost latency: a small tensor streams through one way, the fastest choice."""
    kernel = binary(CHIP, Opcode.ADD, np.ones((8, 576)), np.ones((8, 576)), DType.FP32)
    assert kernel.program.tensor("z").placement.interleave == 1


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: unary(CHIP, Opcode.ADD, np.ones((2, 2)), DType.FP32),
         "unary: `add` is not a unary VXM op; use one of ['copy', 'neg', 'abs', 'relu', 'exp', 'recip', "
         "'rsqrt', 'tanh', 'sigmoid', 'silu']"),
        (lambda: unary(CHIP, Opcode.EXP, np.ones((2, 2)), DType.INT32),
         "exp: `exp` is defined on fp16/fp32 only, not int32"),
        (lambda: binary(CHIP, Opcode.ADD, np.ones((2, 2)), np.ones((2, 3)), DType.FP32),
         "binary: shapes (2, 2) and (2, 3) differ"),
        (lambda: binary_scalar(CHIP, Opcode.CMP_LT, np.ones((2, 2)), 1.0, DType.FP32),
         "binary: `cmp_lt` is not supported; use one of ['add', 'sub', 'mul', 'max', 'min']"),
        (lambda: unary(CHIP, Opcode.NEG, np.ones(4), DType.FP32),
         "neg: expected a non-empty [M, N] array, got shape (4,)"),
    ],
)
def test_errors_say_what_is_wrong(make, message):
    with pytest.raises(ProgramError) as e:
        make()
    assert str(e.value) == message


def test_the_reference_simulator_agrees():
    """The cycle-by-cycle reference simulator (the specification) gives the same cycles and bytes."""
    rng = np.random.default_rng(5)
    x, y = rng.integers(-128, 128, (9, 400)), rng.integers(-128, 128, (9, 400))
    for kernel in (unary(CHIP, Opcode.EXP, x / 32, DType.FP16), binary(CHIP, Opcode.MAX, x, y, DType.INT8)):
        fast, slow = kernel.run(CHIP)[1], simulate_reference(kernel.program, CHIP, kernel.inputs)
        assert slow.cycles == fast.cycles == kernel.predicted_cycles
        assert all(t.tobytes() == slow.tensors[name].tobytes() for name, t in fast.tensors.items())


def _assert_fast_path_is_bit_identical(kernel):
    (fast, cycles), (exact, result) = kernel.run_fast(), kernel.run(CHIP)
    assert cycles == result.cycles
    assert fast.dtype == exact.dtype and fast.shape == exact.shape
    assert np.array_equal(np.ascontiguousarray(fast).view(np.uint8), np.ascontiguousarray(exact).view(np.uint8))


def _with_specials(x: np.ndarray, dtype: DType) -> np.ndarray:
    """Floats get NaN, +-inf and -0.0 in their first elements (as many as fit), where bit patterns differ most."""
    if dtype.is_float:
        specials = np.array([np.nan, np.inf, -np.inf, -0.0])[: x.size]
        x.flat[: len(specials)] = specials
    return x


#: The simulator's own checks evaluate their NumPy expressions on those specials, which warns.
QUIET = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@QUIET
@pytest.mark.parametrize("case", range(len(UNARY_CASES)), ids=lambda i: _name(UNARY_CASES[i]))
def test_unary_fast_path_is_bit_identical(case):
    op, dtype = UNARY_CASES[case]
    x = _values(np.random.default_rng(1000 + case), SHAPES[case % len(SHAPES)], dtype, op)
    _assert_fast_path_is_bit_identical(unary(CHIP, op, _with_specials(x, dtype), dtype))


@QUIET
@pytest.mark.parametrize("case", range(len(BINARY_CASES)), ids=lambda i: _name(BINARY_CASES[i]))
def test_binary_fast_path_is_bit_identical(case):
    op, dtype = BINARY_CASES[case]
    rng = np.random.default_rng(2000 + case)
    x, y = (_values(rng, SHAPES[case % len(SHAPES)], dtype) for _ in range(2))
    _assert_fast_path_is_bit_identical(binary(CHIP, op, _with_specials(x, dtype), y, dtype))


@QUIET
@pytest.mark.parametrize("op", list(BINARY), ids=lambda o: o.value)
@pytest.mark.parametrize("dtype, imm", [(DType.FP32, 0.1), (DType.FP16, -1.3), (DType.INT32, 7),
                                        (DType.INT8, -100)], ids=lambda v: getattr(v, "value", str(v)))
def test_binary_scalar_fast_path_is_bit_identical(op, dtype, imm):
    x = _values(np.random.default_rng(3500 + list(BINARY).index(op)), (5, 333), dtype)
    _assert_fast_path_is_bit_identical(binary_scalar(CHIP, op, _with_specials(x, dtype), imm, dtype))
