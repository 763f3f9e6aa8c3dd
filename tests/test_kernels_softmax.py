"""Row softmax against NumPy within the stated relative bound; cycles as predicted; padding lanes ignored."""

from __future__ import annotations

import numpy as np
import pytest

from openlpu.errors import ProgramError
from openlpu.hardware import load_chip
from openlpu.kernels import softmax
from openlpu.kernels.reduce import tree_depth
from openlpu.sim.reference import simulate_reference

CHIP = load_chip("groqchip1")
LANES = CHIP.lanes.lanes
#: One lane, one full block, N > 320 and not a multiple (M > 1), five blocks, and two waves of rows.
SHAPES = [(1, 5), (3, 320), (8, 576), (5, 1300), (101, 330)]


def _reference(x64: np.ndarray) -> np.ndarray:
    e = np.exp(x64 - x64.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _run(x: np.ndarray) -> np.ndarray:
    kernel = softmax(CHIP, x)
    out, result = kernel.run(CHIP)
    assert result.cycles == kernel.predicted_cycles
    assert result.checks_passed, [c.describe() for c in result.checks]
    assert out.shape == x.shape and out.dtype == np.float32
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_softmax_within_the_stated_bound(shape):
    rng = np.random.default_rng(40 + SHAPES.index(shape))
    x = rng.uniform(-4, 4, shape).astype(np.float32)
    out = _run(x)
    x64 = x.astype(np.float64)
    span = (x64.max(axis=1) - x64.min(axis=1)).max()
    rtol = (2 * span + -(-shape[1] // LANES) - 1 + tree_depth(LANES) + 4) * 2.0**-24
    exact = _reference(x64)
    assert np.all(np.abs(out - exact) <= rtol * exact)
    np.testing.assert_allclose(out.sum(axis=1, dtype=np.float64), 1.0, rtol=1e-5)


def test_equal_logits_give_a_uniform_row_whatever_the_padding():
    out = _run(np.full((2, 330), 3.0, np.float32))
    np.testing.assert_allclose(out, 1.0 / 330, rtol=2.0**-20)


def test_large_logits_do_not_overflow():
    x = np.array([[1000.0, 999.0, -1000.0]], np.float32)
    np.testing.assert_allclose(_run(x), _reference(x.astype(np.float64)), rtol=2.0**-20)


def test_rejects_vectors():
    with pytest.raises(ProgramError) as e:
        softmax(CHIP, np.ones(3))
    assert str(e.value) == "softmax: expected a non-empty [M, N] array, got shape (3,)"


def test_the_reference_simulator_agrees():
    """The cycle-by-cycle reference simulator (the specification) gives the same cycles and bytes."""
    kernel = softmax(CHIP, np.random.default_rng(7).uniform(-4, 4, (3, 700)))
    fast, slow = kernel.run(CHIP)[1], simulate_reference(kernel.program, CHIP, kernel.inputs)
    assert slow.cycles == fast.cycles == kernel.predicted_cycles
    assert all(t.tobytes() == slow.tensors[name].tobytes() for name, t in fast.tensors.items())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fast_path_is_bit_identical(shape):
    """Every lane of the row max and of 1 / sum feeds pass C, so the whole all-reduce order must match."""
    kernel = softmax(CHIP, np.random.default_rng(70 + SHAPES.index(shape)).uniform(-4, 4, shape))
    (fast, cycles), (exact, result) = kernel.run_fast(), kernel.run(CHIP)
    assert cycles == result.cycles
    assert fast.dtype == exact.dtype and fast.shape == exact.shape
    assert np.array_equal(np.ascontiguousarray(fast).view(np.uint8), np.ascontiguousarray(exact).view(np.uint8))
