"""The reference interpreter (openlpu.ir.interpret): each op's rule against an independent NumPy version."""

from __future__ import annotations

import numpy as np
import pytest

from openlpu.ir import GraphBuilder, IRError, Op, interpret, parse_graph

RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def run_op(op: Op, args: dict[str, np.ndarray], **attrs) -> np.ndarray:
    """Apply one op to named arrays (int arrays become int32 inputs) and return its result."""
    b = GraphBuilder("one")
    for name, a in args.items():
        b.input(name, a.shape, "int32" if a.dtype.kind == "i" else "float32")
    b.op(op, "out", *args, **attrs)
    return interpret(b.build(["out"]), args, {})["out"]


def test_embedding_gathers_rows() -> None:
    table, ids = rand(10, 4), np.array([[3, 0], [9, 3]], np.int32)
    np.testing.assert_array_equal(run_op(Op.EMBEDDING, {"t": table, "i": ids}), table[ids])


def test_matmul_is_x_times_w_transposed() -> None:
    x, w = rand(2, 5, 3), rand(7, 3)
    expected = np.einsum("bti,oi->bto", x.astype(np.float64), w.astype(np.float64))
    np.testing.assert_allclose(run_op(Op.MATMUL, {"x": x, "w": w}), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transpose_b", [True, False])
def test_batch_matmul(transpose_b: bool) -> None:
    a, b = rand(3, 4, 8), (rand(3, 5, 8) if transpose_b else rand(3, 8, 5))
    spec = "bmk,bnk->bmn" if transpose_b else "bmk,bkn->bmn"
    expected = np.einsum(spec, a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(
        run_op(Op.BATCH_MATMUL, {"a": a, "b": b}, transpose_b=transpose_b), expected, rtol=1e-5, atol=1e-5
    )


def test_elementwise_ops() -> None:
    a, b = rand(2, 3), rand(2, 3)
    np.testing.assert_array_equal(run_op(Op.ADD, {"a": a, "b": b}), a + b)
    np.testing.assert_array_equal(run_op(Op.MUL, {"a": a, "b": b}), a * b)
    np.testing.assert_array_equal(run_op(Op.SCALE, {"a": a}, factor=0.125), a * np.float32(0.125))


def test_silu_is_x_sigmoid_x_even_far_out() -> None:
    x = np.array([-1000.0, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0], np.float32)
    with np.errstate(over="ignore"):
        expected = x.astype(np.float64) / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(run_op(Op.SILU, {"x": x}), expected, rtol=1e-6, atol=1e-30)


def test_rmsnorm() -> None:
    x, w = rand(3, 8), rand(8)
    x64 = x.astype(np.float64)
    expected = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(run_op(Op.RMSNORM, {"x": x, "w": w}, eps=1e-5), expected, rtol=1e-5)


def test_softmax_over_the_last_axis() -> None:
    x = rand(2, 3, 5) * 20
    e = np.exp(x.astype(np.float64))
    np.testing.assert_allclose(
        run_op(Op.SOFTMAX, {"x": x}), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7
    )


def test_rope_rotates_half_split_pairs_by_position_times_frequency() -> None:
    x, pos = rand(4, 3, 8), np.array([0, 1, 7, 300], np.int32)
    out = run_op(Op.ROPE, {"x": x, "p": pos}, base=10000.0, head_dim=8)
    # independently: pair (i, i + 4) is the complex number x[i] + j x[i+4], turned by pos * 10000^(-i/4)
    z = x[..., :4].astype(np.float64) + 1j * x[..., 4:]
    turned = z * np.exp(1j * pos[:, None, None] * 10000.0 ** (-np.arange(4) / 4))
    np.testing.assert_allclose(out, np.concatenate([turned.real, turned.imag], -1), rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position() -> None:
    q, k = rand(1, 1, 16), rand(1, 1, 16)

    def score(pq: int, pk: int) -> float:
        rq = run_op(Op.ROPE, {"x": q, "p": np.array([pq], np.int32)}, base=100000.0, head_dim=16)
        rk = run_op(Op.ROPE, {"x": k, "p": np.array([pk], np.int32)}, base=100000.0, head_dim=16)
        return float((rq * rk).sum())

    assert score(5, 2) == pytest.approx(score(103, 100), rel=1e-4)
    assert score(0, 0) == pytest.approx(float((q * k).sum()), rel=1e-6)


def test_causal_mask_hides_keys_after_each_query_position() -> None:
    s, pos = rand(2, 3, 6), np.array([0, 2, 5], np.int32)
    out = run_op(Op.CAUSAL_MASK, {"s": s, "p": pos})
    for t, p in enumerate(pos):
        np.testing.assert_array_equal(out[:, t, : p + 1], s[:, t, : p + 1])
        assert np.all(out[:, t, p + 1 :] == -np.inf)


def test_kv_cache_write_writes_rows_at_positions_and_leaves_the_input_alone() -> None:
    cache, new, pos = rand(2, 6, 4), rand(2, 2, 4), np.array([4, 1], np.int32)
    before = cache.copy()
    out = run_op(Op.KV_CACHE_WRITE, {"c": cache, "n": new, "p": pos})
    expected = before.copy()
    expected[:, 4], expected[:, 1] = new[:, 0], new[:, 1]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(cache, before)


def test_layout_ops() -> None:
    x = rand(2, 3, 4)
    np.testing.assert_array_equal(run_op(Op.RESHAPE, {"x": x}, shape=(6, 4)), x.reshape(6, 4))
    np.testing.assert_array_equal(run_op(Op.TRANSPOSE, {"x": x}, perm=(2, 0, 1)), x.transpose(2, 0, 1))
    np.testing.assert_array_equal(run_op(Op.SLICE, {"x": x}, axis=1, start=1, stop=3), x[:, 1:3])


# ---------------------------------------------------------------------------------------- graphs and failures

GRAPH = parse_graph("""
graph g
input ids: int32[2]
input pos: int32[2]
input cache: float32[1, 4, 3]
param emb: float32[5, 3]
x = embedding(emb, ids) : float32[2, 3]
rows = reshape(x) {shape=[1, 2, 3]} : float32[1, 2, 3]
c = kv_cache_write(cache, rows, pos) : float32[1, 4, 3]
y = scale(x) {factor=2.0} : float32[2, 3]
output y, c
""")


def inputs(ids=(1, 2), pos=(0, 1)) -> dict[str, np.ndarray]:
    return {
        "ids": np.array(ids, np.int32),
        "pos": np.array(pos, np.int32),
        "cache": np.zeros((1, 4, 3), np.float32),
    }


PARAMS = {"emb": np.arange(15, dtype=np.float32).reshape(5, 3)}


def test_a_graph_returns_its_outputs_in_float32_by_default() -> None:
    out = interpret(GRAPH, inputs(), PARAMS)
    assert set(out) == {"y", "c"} and out["y"].dtype == np.float32
    np.testing.assert_array_equal(out["y"], 2 * PARAMS["emb"][[1, 2]])
    np.testing.assert_array_equal(out["c"][0, :2], PARAMS["emb"][[1, 2]])


def test_float64_mode_and_keep_all() -> None:
    out = interpret(GRAPH, inputs(), PARAMS, float_dtype=np.float64, keep_all=True)
    assert out["y"].dtype == np.float64 and out["x"].dtype == np.float64 and out["ids"].dtype == np.int32


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (inputs(ids=(1, 5)), "node 'x' (embedding): token id 5 is outside the table's 5 rows"),
        (
            inputs(pos=(3, 4)),
            "node 'c' (kv_cache_write): position 4 is outside the KV cache of 4 slots (compile with a "
            "longer context)",
        ),
        (inputs(pos=(2, 2)), "node 'c' (kv_cache_write): positions [2, 2] write a cache slot twice"),
        (
            {**inputs(), "extra": np.zeros(1)},
            "graph 'g' has no input 'extra'; its inputs are ['ids', 'pos', 'cache']",
        ),
        ({"ids": np.zeros(2, np.int32)}, "graph 'g': no data for input 'pos'; pass it in `inputs`"),
        ({**inputs(), "ids": np.zeros(3, np.int32)}, "input 'ids': got shape [3], the graph declares [2]"),
        (
            {**inputs(), "ids": np.zeros(2, np.float32)},
            "input 'ids': got float32 data, the graph declares int32",
        ),
        (
            {**inputs(), "cache": np.zeros((1, 4, 3), np.int32)},
            "input 'cache': got int32 data, the graph declares float32",
        ),
    ],
)
def test_failures_name_the_node_or_value(given: dict, message: str) -> None:
    with pytest.raises(IRError) as err:
        interpret(GRAPH, given, PARAMS)
    assert str(err.value) == message


def test_missing_param_data_is_named() -> None:
    with pytest.raises(IRError) as err:
        interpret(GRAPH, inputs(), {})
    assert str(err.value) == "graph 'g': no data for param 'emb'; pass it in `params`"


def test_extra_params_are_allowed_and_not_consumed() -> None:
    params = {**PARAMS, "unused": np.zeros(1)}
    interpret(GRAPH, inputs(), params)
    assert set(params) == {"emb", "unused"}
