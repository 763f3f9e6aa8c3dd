"""RMSNorm against NumPy within the stated relative bound; cycles as predicted."""

from __future__ import annotations

import numpy as np
import pytest

from openlpu.errors import ProgramError
from openlpu.hardware import load_chip
from openlpu.kernels import inv_rms, rmsnorm
from openlpu.kernels.reduce import tree_depth
from openlpu.sim.reference import simulate_reference

CHIP = load_chip("groqchip1")
LANES = CHIP.lanes.lanes
#: One lane, one full block, N > 320 and not a multiple (M > 1), five blocks, and two waves of rows.
SHAPES = [(1, 5), (3, 320), (8, 576), (5, 1300), (101, 330)]


def _reference(x64: np.ndarray, w64: np.ndarray, eps: float) -> np.ndarray:
    return x64 / np.sqrt((x64 * x64).mean(axis=1, keepdims=True) + eps) * w64


def _run(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    kernel = rmsnorm(CHIP, x, w, eps=eps)
    out, result = kernel.run(CHIP)
    assert result.cycles == kernel.predicted_cycles
    assert result.checks_passed, [c.describe() for c in result.checks]
    assert out.shape == x.shape and out.dtype == np.float32
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rmsnorm_within_the_stated_bound(shape):
    rng = np.random.default_rng(50 + SHAPES.index(shape))
    x = rng.uniform(-4, 4, shape).astype(np.float32)
    w = rng.uniform(-2, 2, shape[1]).astype(np.float32)
    out = _run(x, w, 1e-5)
    depth = -(-shape[1] // LANES) - 1 + tree_depth(LANES)
    exact = _reference(x.astype(np.float64), w.astype(np.float64), float(np.float32(1e-5)))
    assert np.all(np.abs(out - exact) <= (depth / 2 + 5) * 2.0**-24 * np.abs(exact))


def test_eps_dominates_a_zero_row():
    x = np.zeros((2, 400), np.float32)
    x[1] = 1.0
    out = _run(x, np.full(400, 2.0, np.float32), eps=0.25)
    np.testing.assert_allclose(out[0], 0.0)
    np.testing.assert_allclose(out[1], 2.0 / np.sqrt(1.25), rtol=2.0**-21)


def test_rejects_a_weight_of_the_wrong_length():
    with pytest.raises(ProgramError) as e:
        rmsnorm(CHIP, np.ones((2, 8)), np.ones(7))
    assert str(e.value) == "rmsnorm: weight shape (7,) does not match x's 8 columns; expected (8,)"


def test_the_reference_simulator_agrees():
    """The cycle-by-cycle reference simulator (the specification) gives the same cycles and bytes."""
    rng = np.random.default_rng(8)
    kernel = rmsnorm(CHIP, rng.uniform(-4, 4, (3, 700)), rng.uniform(-1, 1, 700))
    fast, slow = kernel.run(CHIP)[1], simulate_reference(kernel.program, CHIP, kernel.inputs)
    assert slow.cycles == fast.cycles == kernel.predicted_cycles
    assert all(t.tobytes() == slow.tensors[name].tobytes() for name, t in fast.tensors.items())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fast_path_is_bit_identical(shape):
    rng = np.random.default_rng(80 + SHAPES.index(shape))
    kernel = rmsnorm(CHIP, rng.uniform(-4, 4, shape), rng.uniform(-2, 2, shape[1]), eps=1e-5)
    (fast, cycles), (exact, result) = kernel.run_fast(), kernel.run(CHIP)
    assert cycles == result.cycles
    assert fast.dtype == exact.dtype and fast.shape == exact.shape
    assert np.array_equal(np.ascontiguousarray(fast).view(np.uint8), np.ascontiguousarray(exact).view(np.uint8))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_inv_rms_is_the_first_pass_within_its_bound(shape):
    """inv_rms alone: every lane of a row within (D / 2 + 3) u of 1 / sqrt(mean(x^2) + eps), the fast path bit
    for bit the simulator, and the same lanes rmsnorm's first pass scales by (its y = (x * r) * w)."""
    rng = np.random.default_rng(90 + SHAPES.index(shape))
    x = rng.uniform(-4, 4, shape).astype(np.float32)
    kernel = inv_rms(CHIP, x, eps=1e-5)
    (fast, cycles), (exact, result) = kernel.run_fast(), kernel.run(CHIP)
    assert cycles == result.cycles == kernel.predicted_cycles
    assert result.checks_passed, [c.describe() for c in result.checks]
    assert exact.shape == (shape[0], LANES) and exact.dtype == np.float32
    assert np.array_equal(fast.view(np.uint32), exact.view(np.uint32))
    x64 = x.astype(np.float64)
    truth = 1 / np.sqrt((x64 * x64).mean(axis=1, keepdims=True) + float(np.float32(1e-5)))
    blocks = -(-shape[1] // LANES)
    assert np.all(np.abs(exact - truth) <= ((blocks - 1 + tree_depth(LANES)) / 2 + 3) * 2.0**-24 * truth)
    y = rmsnorm(CHIP, x, np.ones(shape[1], np.float32), eps=1e-5).run_fast()[0]  # (x * r) * 1
    xb = np.zeros((shape[0], blocks * LANES), np.float32)
    xb[:, :shape[1]] = x
    scaled = (xb.reshape(shape[0], -1, LANES) * exact[:, None, :]).reshape(shape[0], -1)[:, :shape[1]]
    assert np.array_equal(y.view(np.uint32), scaled.view(np.uint32))
