"""The fast path's tensor access (views of the vectors a Ref names, in train order, read and written in place) and
its rows computed once where they copy one row."""

from __future__ import annotations

import numpy as np
import pytest

from openlpu.compiler import fast
from openlpu.compiler.chipgraph import ChipGraph, Matmul, Ref, Role, TensorDef, Vxm
from openlpu.errors import InternalError
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.opcodes import Opcode
from openlpu.isa.types import DType
from openlpu.sim import numerics as nx

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


def test_uniform_from_compares_bits_so_a_signed_zero_row_is_a_row_of_its_own():
    arr = np.zeros((6, 3), np.float32)
    arr[1] = 2.0
    assert fast.uniform_from(arr) == 2
    arr[3, 1] = -0.0  # equal to +0 as a value, not as bits
    assert fast.uniform_from(arr) == 4
    arr[5, 0] = np.nan
    assert fast.uniform_from(arr) == 5  # the last row is always its own uniform run
    assert fast.uniform_from(np.ones((4, 2), np.float16)) == 0


def _attention_like_graph(rows: int) -> ChipGraph:
    """A cache-shaped STATE tensor times a broadcast row, cast to fp16, summed by a matmul, then a tree level
    over row pairs and a write into part of a whole tensor: the shapes of the decode step's attention."""
    cols = 2 * LANES

    def t(name: str, dtype: DType, n: int, role: Role = Role.ACT, c: int = cols) -> TensorDef:
        return TensorDef(name, dtype, n, c, Hemisphere.W, role)

    tensors = {d.name: d for d in (
        t("kc", DType.FP32, rows, Role.STATE), t("q", DType.FP32, 1, Role.INPUT), t("prod", DType.FP32, rows),
        t("hi", DType.FP16, rows), t("ones", DType.FP16, cols, Role.CONST), t("s", DType.FP32, rows),
        t("pairs", DType.FP32, rows // 2), t("o", DType.FP32, rows), t("e", DType.FP32, rows))}
    ops = (
        Vxm(Opcode.MUL, DType.FP32, (Ref("kc"), Ref("q", rows=rows, step=0)), Ref("prod")),
        Vxm(Opcode.CAST, DType.FP32, (Ref("prod"),), Ref("hi"), to=DType.FP16),
        Matmul("hi", "ones", "s"),
        Vxm(Opcode.ADD, DType.FP32, (Ref("s", rows=rows // 2, step=2), Ref("s", row0=1, rows=rows // 2, step=2)),
            Ref("pairs")),
        Vxm(Opcode.COPY, DType.FP32, (Ref("s"),), Ref("o")),
        Vxm(Opcode.EXP, DType.FP32, (Ref("pairs"),), Ref("o", rows=rows // 2)),  # its uniform rows move on
        Vxm(Opcode.NEG, DType.FP32, (Ref("o"),), Ref("e")),
    )
    return ChipGraph(0, range(0), tensors, ops, {})


def _tile_of(w: np.ndarray):
    """K tile kt of an fp16 weight as `fast.matmul` takes it (dense)."""

    def tile(kt: int) -> tuple:
        values = w[kt * LANES:(kt + 1) * LANES].astype(np.float64)
        return values, nx.column_norms(values), None, nx.exact_below(values)

    return tile


def _run_every_row(graph: ChipGraph, env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph's ops on every row (no uniform rows), straight from the numerics."""
    env = {k: v.copy() for k, v in env.items()}
    for op in graph.ops:
        if isinstance(op, Matmul):
            env[op.c] = fast.matmul(env[op.a], env[op.w], 8, _tile_of(env[op.w]))
            continue
        args = [fast.view(graph.tensors[r.name], r, env[r.name]) for r in op.ins]
        fast.put(graph.tensors[op.out.name], op.out, env[op.out.name], fast.vxm(op, *args, *([None] * (2 - len(args)))))
    return env


@pytest.mark.parametrize("written", [0, 1, 5, 6, 15, 16])
def test_rows_that_copy_one_row_are_computed_once_and_give_every_row_s_own_bits(written):
    rows = 16
    graph = _attention_like_graph(rows)
    rng = np.random.default_rng(written)
    kc = np.zeros((rows, 2 * LANES), np.float32)
    kc[:, 600] = 1.0  # a pattern every unwritten row repeats
    kc[:written] = rng.standard_normal((written, 2 * LANES)).astype(np.float32)
    if written < rows:
        kc[written, 7] = -0.0  # a row that differs from the pattern in the sign of a zero only
    q = rng.standard_normal((1, 2 * LANES)).astype(np.float32)
    q[0, 7] = -1.5
    ones = np.zeros((2 * LANES, 2 * LANES), np.float16)
    ones[:64, :64] = ones[600, :64] = 1
    env = {name: np.zeros((d.rows, d.cols), d.dtype.numpy) for name, d in graph.tensors.items()}
    env.update(kc=kc, q=q, ones=ones)
    expect = _run_every_row(graph, env)
    fast.run(graph, env, slots=8, tiles={})
    for name in ("prod", "hi", "s", "pairs", "o", "e"):
        assert env[name].tobytes() == expect[name].tobytes(), name


def test_views_kept_from_run_to_run_see_each_run_s_values():
    """A session keeps the fast path's views between steps: a tensor's array stays the same (a matmul's product
    included), so its views are reused, and an input the host replaces gets a view of the new array."""
    rows = 16
    graph = _attention_like_graph(rows)
    rng = np.random.default_rng(11)
    env = {name: np.zeros((d.rows, d.cols), d.dtype.numpy) for name, d in graph.tensors.items()}
    env["ones"][:64, :64] = 1
    views: fast.Views = {}
    written_by = {op.out.name: op.out for op in graph.ops if isinstance(op, Vxm)}
    first = None
    for step in range(3):
        env["kc"][step] = rng.standard_normal(2 * LANES).astype(np.float32)  # the cache fills in place
        env["q"] = rng.standard_normal((1, 2 * LANES)).astype(np.float32)  # the host's new row
        expect = _run_every_row(graph, env)
        fast.run(graph, env, slots=8, tiles={}, views=views)
        for name in ("prod", "hi", "s", "pairs", "o", "e"):
            assert env[name].tobytes() == expect[name].tobytes(), (step, name)
        kept = (views[(id(written_by["prod"]), True)][2], env["s"])
        first = first or kept
        assert kept[0] is first[0] and kept[1] is first[1]  # the same view, the same product array
        (q_ref,) = [r for op in graph.ops if isinstance(op, Vxm) for r in op.ins if r.name == "q"]
        assert views[(id(q_ref), False)][1] is env["q"]
