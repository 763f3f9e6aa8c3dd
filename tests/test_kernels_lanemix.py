"""Lane mixing through the SXM: RoPE's rotate_half and a KV head's expansion to its query heads, bit for bit
against the fast path and NumPy, cycles as predicted, from either hemisphere."""

from __future__ import annotations

import numpy as np
import pytest

from openlpu.errors import ProgramError
from openlpu.hardware import load_chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.kernels.lanemix import lane_mix

CHIP = load_chip("groqchip1")
LANES = CHIP.lanes.lanes


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


def _run(x, terms, source=Hemisphere.W):
    kernel = lane_mix(CHIP, x, terms, source=source)
    (fast, cycles), (exact, result) = kernel.run_fast(), kernel.run(CHIP)
    assert result.cycles == cycles == kernel.predicted_cycles
    assert np.array_equal(_bits(fast), _bits(exact))
    return exact, cycles


@pytest.mark.parametrize("source", [Hemisphere.W, Hemisphere.E], ids=["west", "east"])
def test_rope_by_two_rotations_equals_rotate_half(source):
    rng = np.random.default_rng(7)
    rows, dh = 3, 64
    x = rng.standard_normal((rows, 2 * LANES)).astype(np.float32)
    cos, sin = rng.standard_normal((2, rows, 2 * LANES)).astype(np.float32)
    first = (np.arange(2 * LANES) % dh) < dh // 2
    sin_neg, sin_pos = np.where(first, -sin, 0).astype(np.float32), np.where(first, 0, sin).astype(np.float32)
    y, _ = _run(x, [(0, cos), (-dh // 2, sin_neg), (dh // 2, sin_pos)], source)
    h = x.reshape(rows, -1, dh)
    rotated = np.concatenate([-h[..., dh // 2:], h[..., : dh // 2]], axis=-1).reshape(x.shape)
    want = (x * cos + rotated * sin).astype(np.float32)  # one product each, and one nonzero term besides x*cos
    assert np.array_equal(y, want)


def test_expanding_kv_heads_copies_each_to_its_query_heads_exactly():
    rng = np.random.default_rng(8)
    dh, group = 64, 3
    k = np.zeros((2, LANES), np.float32)
    k[:, : 3 * dh] = rng.standard_normal((2, 3 * dh))
    lane = np.arange(LANES)
    head = lane // dh  # query heads 0..4 of the first output block; KV head h // group
    shift = (head - head // group) * dh
    terms = [(int(r), np.tile((shift == r).astype(np.float32), (2, 1))) for r in sorted(set(shift.tolist()))]
    y, cycles = _run(k, terms)
    want = k[:, (head // group) * dh + lane % dh]
    assert np.array_equal(y, want)
    assert cycles < 200  # one SXM round trip and three ALU ranks, not one operation per term


def test_one_term_is_a_weighted_rotation():
    x = np.arange(2 * LANES, dtype=np.float32).reshape(1, -1)
    y, _ = _run(x, [(5, np.full_like(x, 2.0))])
    assert np.array_equal(y, 2 * np.roll(x.reshape(1, 2, LANES), 5, axis=-1).reshape(x.shape))


def test_too_many_terms_or_mismatched_rows_are_refused():
    x = np.zeros((1, LANES), np.float32)
    with pytest.raises(ProgramError, match="1 to 4 terms"):
        lane_mix(CHIP, x, [(i, x) for i in range(5)])
    with pytest.raises(ProgramError, match="term rows of x's shape"):
        lane_mix(CHIP, x, [(0, np.zeros((2, LANES), np.float32))])


@pytest.mark.parametrize("rows", [1, 60])
def test_x_on_a_terms_slices_runs_in_waves_that_never_read_a_slice_twice_in_a_cycle(rows):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((rows, 2 * LANES)).astype(np.float32)
    terms = [(r, rng.standard_normal(x.shape).astype(np.float32)) for r in (0, 3, -7)]
    shared = lane_mix(CHIP, x, terms, share=2)
    (fast, cycles), (exact, result) = shared.run_fast(), shared.run(CHIP)  # the simulator checks every read port
    assert result.cycles == cycles and np.array_equal(_bits(fast), _bits(exact))
    apart = lane_mix(CHIP, x, terms)
    assert np.array_equal(_bits(apart.run_fast()[0]), _bits(exact))
    assert (cycles > apart.predicted_cycles) == (rows > 1)  # 120 vectors: more than one wave
