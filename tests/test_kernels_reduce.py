"""Row reductions through the SXM: rowmax exact, rowsum within the stated bound, cycles as predicted, rows
pipelined one per cycle within a wave."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from openlpu.errors import ProgramError
from openlpu.hardware import load_chip
from openlpu.kernels import rowmax, rowsum
from openlpu.kernels.reduce import stage_rotations, tree_depth
from openlpu.sim.reference import simulate_reference

CHIP = load_chip("groqchip1")
LANES = CHIP.lanes.lanes
#: One lane, one full block, N > 320 and not a multiple (M > 1), five blocks, and two waves of rows.
SHAPES = [(1, 5), (3, 320), (8, 576), (5, 1300), (101, 330)]


def _run(kernel):
    out, result = kernel.run(CHIP)
    assert result.cycles == kernel.predicted_cycles
    assert result.checks_passed, [c.describe() for c in result.checks]
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rowsum_within_the_tree_bound(shape):
    rng = np.random.default_rng(10 + SHAPES.index(shape))
    x = rng.uniform(-4, 4, shape).astype(np.float32)
    out = _run(rowsum(CHIP, x))
    assert out.shape == (shape[0], 1) and out.dtype == np.float32
    x64 = x.astype(np.float64)
    depth = -(-shape[1] // LANES) - 1 + tree_depth(LANES)
    bound = depth * 2.0**-24 * np.abs(x64).sum(axis=1, keepdims=True)
    assert np.all(np.abs(out - x64.sum(axis=1, keepdims=True)) <= bound)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rowmax_is_exact(shape):
    rng = np.random.default_rng(20 + SHAPES.index(shape))
    x = rng.uniform(-4, 4, shape).astype(np.float32)
    np.testing.assert_array_equal(_run(rowmax(CHIP, x)), x.max(axis=1, keepdims=True))


def test_rowmax_ignores_the_zero_padding_of_negative_rows():
    rng = np.random.default_rng(30)
    x = rng.uniform(-9, -1, (4, 333)).astype(np.float32)
    x[2, 330] = -0.5  # the maximum sits in the last, padded block
    np.testing.assert_array_equal(_run(rowmax(CHIP, x)), x.max(axis=1, keepdims=True))


def test_rowsum_of_integers_is_exact():
    x = np.arange(3 * 1000, dtype=np.float32).reshape(3, 1000) % 17
    np.testing.assert_array_equal(_run(rowsum(CHIP, x)), x.sum(axis=1, keepdims=True))


def test_stage_rotations_cover_every_lane_exactly_once():
    stages = stage_rotations(LANES)
    assert [len(s) for s in stages] == [4, 4, 4, 5]
    offsets = sorted(sum(c) for c in itertools.product(*stages))
    assert offsets == list(range(LANES))


def test_rows_stream_one_per_cycle_within_a_wave():
    one = rowsum(CHIP, np.ones((1, 300))).predicted_cycles
    hundred = rowsum(CHIP, np.ones((100, 300))).predicted_cycles
    assert hundred - one == 99


def test_stage_rotations_reject_lane_counts_with_large_prime_factors():
    with pytest.raises(ProgramError) as e:
        stage_rotations(7 * 16)
    assert str(e.value) == "a lane all-reduce over 112 lanes needs factors 2, 3 and 5 only"


def test_rejects_vectors():
    with pytest.raises(ProgramError) as e:
        rowsum(CHIP, np.ones(5))
    assert str(e.value) == "rowsum: expected a non-empty [M, N] array, got shape (5,)"


@pytest.mark.parametrize("reduce", [rowsum, rowmax], ids=lambda f: f.__name__)
def test_the_reference_simulator_agrees(reduce):
    """The cycle-by-cycle reference simulator (the specification) gives the same cycles and bytes."""
    kernel = reduce(CHIP, np.random.default_rng(6).uniform(-4, 4, (3, 700)))
    fast, slow = kernel.run(CHIP)[1], simulate_reference(kernel.program, CHIP, kernel.inputs)
    assert slow.cycles == fast.cycles == kernel.predicted_cycles
    assert all(t.tobytes() == slow.tensors[name].tobytes() for name, t in fast.tensors.items())


def _assert_fast_path_is_bit_identical(kernel):
    (fast, cycles), (exact, result) = kernel.run_fast(), kernel.run(CHIP)
    assert cycles == result.cycles
    assert fast.dtype == exact.dtype and fast.shape == exact.shape
    assert np.array_equal(np.ascontiguousarray(fast).view(np.uint8), np.ascontiguousarray(exact).view(np.uint8))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("reduce", [rowsum, rowmax], ids=lambda f: f.__name__)
def test_fast_path_is_bit_identical(reduce, shape):
    x = np.random.default_rng(60 + SHAPES.index(shape)).uniform(-4, 4, shape).astype(np.float32)
    _assert_fast_path_is_bit_identical(reduce(CHIP, x))


def test_fast_rowmax_of_signed_zeros_keeps_the_operand_order():
    """max(-0.0, +0.0) depends on which operand is first: the fold, tree and mask must keep the program's."""
    x = np.random.default_rng(61).choice(np.array([0.0, -0.0], np.float32), (50, 700))
    _assert_fast_path_is_bit_identical(rowmax(CHIP, x))
