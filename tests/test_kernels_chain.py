"""The VXM chain kernel against an fp32 step-by-step NumPy computation; cycles as predicted; the fast path bit for
bit."""

from __future__ import annotations

import numpy as np
import pytest

from openlpu.errors import ProgramError
from openlpu.hardware import load_chip
from openlpu.isa import Opcode
from openlpu.kernels.chain import Step, vxm_chain

CHIP = load_chip("groqchip1")
#: One element, a partial block, a full block with more rows.
SHAPES = [(1, 1), (7, 300), (64, 320)]
#: One pass (ending east), two passes (back west), three passes with every binary op, and the logistic ops.
CHAINS = {
    "one-pass": [Step(Opcode.MUL, 0.1), Step(Opcode.EXP), Step(Opcode.ADD, 1.0), Step(Opcode.RECIP)],
    "two-passes": [Step(Opcode.ABS), Step(Opcode.ADD, 0.5), Step(Opcode.RSQRT), Step(Opcode.NEG),
                   Step(Opcode.TANH)],
    "three-passes": [Step(Opcode.SUB, 0.3), Step(Opcode.MAX, -1.7), Step(Opcode.MIN, 2.9), Step(Opcode.RELU),
                     Step(Opcode.COPY), Step(Opcode.MUL, -3.0), Step(Opcode.EXP), Step(Opcode.ADD, 1e-3),
                     Step(Opcode.RECIP)],
    "logistic": [Step(Opcode.SIGMOID), Step(Opcode.MUL, 7.0), Step(Opcode.SILU)],
}
#: The exact value of each step in float64, before its one rounding to fp32 (imm already rounded to fp32).
REFERENCE = {
    Opcode.COPY: lambda x, c: x, Opcode.NEG: lambda x, c: -x, Opcode.ABS: lambda x, c: np.abs(x),
    Opcode.RELU: lambda x, c: np.maximum(x, 0), Opcode.EXP: lambda x, c: np.exp(x),
    Opcode.RECIP: lambda x, c: 1.0 / x, Opcode.RSQRT: lambda x, c: 1.0 / np.sqrt(x),
    Opcode.TANH: lambda x, c: np.tanh(x), Opcode.ADD: np.add, Opcode.SUB: np.subtract, Opcode.MUL: np.multiply,
    Opcode.MAX: np.maximum, Opcode.MIN: np.minimum,
}


def _reference(x: np.ndarray, steps: list[Step]) -> np.ndarray:
    for s in steps:
        imm = None if s.imm is None else np.float64(np.float32(s.imm))
        x = REFERENCE[s.op](x.astype(np.float64), imm).astype(np.float32)
    return x


def _cases():
    return [(name, shape) for name in CHAINS for shape in SHAPES]


@pytest.mark.parametrize("name, shape", _cases(), ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v)))
def test_chain_matches_fp32_steps_and_prediction(name, shape):
    steps = CHAINS[name]
    x = np.random.default_rng(90 + SHAPES.index(shape)).uniform(-4, 4, shape).astype(np.float32)
    kernel = vxm_chain(CHIP, x, steps)
    out, result = kernel.run(CHIP)
    assert result.cycles == kernel.predicted_cycles
    assert result.checks_passed, [c.describe() for c in result.checks]
    assert out.shape == shape and out.dtype == np.float32
    if all(s.op in REFERENCE for s in steps):  # sigmoid and SiLU: the program's own exact check covers those
        np.testing.assert_array_equal(out, _reference(x, steps))


@pytest.mark.parametrize("name, shape", _cases(), ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v)))
def test_fast_path_is_bit_identical(name, shape):
    x = np.random.default_rng(95 + SHAPES.index(shape)).uniform(-4, 4, shape).astype(np.float32)
    kernel = vxm_chain(CHIP, x, CHAINS[name])
    (fast, cycles), (exact, result) = kernel.run_fast(), kernel.run(CHIP)
    assert cycles == result.cycles
    assert fast.dtype == exact.dtype and fast.shape == exact.shape
    assert np.array_equal(np.ascontiguousarray(fast).view(np.uint8), np.ascontiguousarray(exact).view(np.uint8))


@pytest.mark.parametrize(
    "steps, message",
    [
        ([Step(Opcode.ADD)], "vxm_chain: step add needs an imm operand"),
        ([Step(Opcode.EXP, 1.0)], "vxm_chain: step exp needs no imm operand"),
        ([Step(Opcode.CMP_LT, 1.0)], "vxm_chain: step cmp_lt needs no imm operand"),
        ([], "vxm_chain: give at least one step"),
    ],
)
def test_errors_say_what_is_wrong(steps, message):
    with pytest.raises(ProgramError) as e:
        vxm_chain(CHIP, np.ones((2, 2), np.float32), steps)
    assert str(e.value) == message


def test_rejects_rows_wider_than_the_lanes():
    with pytest.raises(ProgramError) as e:
        vxm_chain(CHIP, np.ones((2, 321), np.float32), [Step(Opcode.EXP)])
    assert str(e.value) == "vxm_chain: x must be [rows, <= 320], got (2, 321)"
