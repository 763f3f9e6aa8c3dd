"""The fast path's tensor access: views of the vectors a Ref names, in train order, read and written in place."""

from __future__ import annotations

import numpy as np
import pytest

from openlpu.compiler import fast
from openlpu.compiler.chipgraph import Ref, Role, TensorDef
from openlpu.errors import InternalError
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.types import DType

LANES = fast.LANES
T = TensorDef("t", DType.FP32, rows=6, cols=4 * LANES, hemisphere=Hemisphere.W, role=Role.ACT)


def by_the_docstring(ref: Ref, arr: np.ndarray) -> np.ndarray:
    """The vectors a Ref names, one by one as its docstring says: block by block, in each block row by row."""
    rows = T.rows if ref.rows is None else ref.rows
    blocks = T.blocks - ref.block0 if ref.blocks is None else ref.blocks
    out = []
    for j in range(blocks):
        b = ref.block0 + j * ref.block_step
        for i in range(rows):
            out.append(arr[ref.row0 + i * ref.step, b * LANES:(b + 1) * LANES])
    return np.array(out)


REFS = [Ref("t"), Ref("t", block0=1, blocks=2), Ref("t", row0=1, rows=3, step=2), Ref("t", row0=4, rows=5, step=0),
        Ref("t", block0=3, blocks=3, block_step=0), Ref("t", block0=0, blocks=2, block_step=2, row0=2, rows=2)]


@pytest.mark.parametrize("ref", REFS, ids=str)
def test_take_reads_the_vectors_a_ref_names_in_train_order(ref):
    arr = np.arange(T.rows * T.cols, dtype=np.float32).reshape(T.rows, T.cols)
    assert np.array_equal(fast.take(T, ref, arr), by_the_docstring(ref, arr))


@pytest.mark.parametrize("ref", [r for r in REFS if r.step and r.block_step], ids=str)
def test_put_writes_exactly_the_vectors_a_ref_names(ref):
    arr = np.zeros((T.rows, T.cols), np.float32)
    count = len(by_the_docstring(ref, arr))
    vectors = np.arange(1, count * LANES + 1, dtype=np.float32).reshape(count, LANES)
    fast.put(T, ref, arr, vectors)
    assert np.array_equal(fast.take(T, ref, arr), vectors)
    assert np.count_nonzero(arr) == vectors.size  # nothing else written


def test_a_view_is_in_place_and_a_read_view_is_read_only():
    arr = np.zeros((T.rows, T.cols), np.float32)
    fast.view(T, Ref("t", block0=1, blocks=1, row0=2, rows=1), arr, write=True)[...] = 7
    assert arr[2, LANES:2 * LANES].tolist() == [7] * LANES and np.count_nonzero(arr) == LANES
    with pytest.raises(ValueError):
        fast.view(T, Ref("t"), arr)[0, 0, 0] = 1


@pytest.mark.parametrize("ref", [Ref("t", rows=7), Ref("t", block0=3, blocks=2), Ref("t", row0=1, rows=4, step=2)],
                         ids=str)
def test_a_ref_outside_its_tensor_is_an_internal_error_not_a_wrong_read(ref):
    with pytest.raises(InternalError, match="outside t"):
        fast.take(T, ref, np.zeros((T.rows, T.cols), np.float32))


def test_an_array_of_the_wrong_shape_is_named_as_such():
    with pytest.raises(InternalError, match=r"t: held as an array of shape \(6, 320\), declared \[6, 1280\]"):
        fast.take(T, Ref("t"), np.zeros((T.rows, LANES), np.float32))


@pytest.mark.parametrize("ref", [Ref("t", row0=1, rows=2, step=0), Ref("t", blocks=2, block_step=0)], ids=str)
def test_a_train_cannot_write_one_vector_twice(ref):
    arr = np.zeros((T.rows, T.cols), np.float32)
    with pytest.raises(InternalError, match="twice"):
        fast.put(T, ref, arr, np.zeros((12, LANES), np.float32))
