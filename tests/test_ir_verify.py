"""The tensor-IR verifier (openlpu.ir.verify) and the type rules it applies (openlpu.ir.shapes)."""

from __future__ import annotations

import pytest

from openlpu.frontends.llama import LlamaConfig, Phase, build_decoder
from openlpu.ir import IRError, Op, ShapeError, Value, infer, parse_graph, verify

TINY = LlamaConfig(
    n_layers=1,
    hidden_size=8,
    ffn_size=12,
    n_heads=2,
    n_kv_heads=1,
    head_dim=4,
    rope_base=10000.0,
    rms_eps=1e-6,
    vocab_size=16,
    context_length=32,
    tied_embeddings=True,
)

HEADER = "graph g\ninput x: float32[2, 3]\ninput pos: int32[2]\nparam w: float32[4, 3]\n"


def check(body: str):
    return verify(parse_graph(HEADER + body))


def f32(name: str, *shape: int) -> Value:
    return Value(name, shape, "float32")


def test_a_well_formed_graph_passes_and_comes_back_unchanged() -> None:
    g = parse_graph(HEADER + "y = matmul(x, w) : float32[2, 4]\noutput y\n")
    assert verify(g) is g


@pytest.mark.parametrize("phase", list(Phase))
def test_llama_graphs_verify(phase: Phase) -> None:
    verify(build_decoder(TINY, phase, tokens=3, context=8))


def test_use_before_definition_names_the_node_and_shows_context() -> None:
    body = (
        "a = silu(x) : float32[2, 3]\nb = add(a, c) : float32[2, 3]\nc = silu(a) : float32[2, 3]\noutput c\n"
    )
    with pytest.raises(IRError) as err:
        check(body)
    assert str(err.value) == (
        "graph 'g', node 'b' (add, #1): input 'c' is not defined before this node "
        "(nodes must be in topological order, inputs and params declared)\n"
        "  a = silu(x) : float32[2, 3]\n"
        "> b = add(a, c) : float32[2, 3]\n"
        "  c = silu(a) : float32[2, 3]"
    )


def test_context_is_limited_to_three_nodes_each_side() -> None:
    body = "".join(f"a{i} = silu(x) : float32[2, 3]\n" for i in range(10)) + "bad = silu(x) : float32[3, 2]\n"
    body += "".join(f"b{i} = silu(x) : float32[2, 3]\n" for i in range(10))
    with pytest.raises(IRError) as err:
        check(body)
    lines = str(err.value).splitlines()
    assert lines[0] == (
        "graph 'g', node 'bad' (silu, #10): declared type float32[3, 2] but the op gives float32[2, 3]"
    )
    assert [line.split(" = ")[0] for line in lines[1:]] == [
        "  a7",
        "  a8",
        "  a9",
        "> bad",
        "  b0",
        "  b1",
        "  b2",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "x = silu(x) : float32[2, 3]\n",
            "node 'x' (silu, #0): name 'x' is already defined; every value needs its own name",
        ),
        ("y = matmul(x) : float32[2, 4]\n", "node 'y' (matmul, #0): matmul takes 2 inputs, got 1"),
        (
            "y = scale(x) : float32[2, 3]\n",
            "node 'y' (scale, #0): scale takes attributes ['factor'], got none",
        ),
        (
            "y = scale(x) {factor=true} : float32[2, 3]\n",
            "node 'y' (scale, #0): attribute factor=True must be float",
        ),
        (
            "y = silu(x) {alpha=1.0} : float32[2, 3]\n",
            "node 'y' (silu, #0): silu takes attributes none, got ['alpha']",
        ),
        (
            "y = matmul(x, w) : float32[2, 3]\n",
            "node 'y' (matmul, #0): declared type float32[2, 3] but the op gives float32[2, 4]",
        ),
        (
            "y = matmul(x, pos) : float32[2, 2]\n",
            "node 'y' (matmul, #0): operand pos: int32[2] must have rank 2 ([out, in])",
        ),
        ("y = silu(pos) : int32[2]\n", "node 'y' (silu, #0): operand pos: int32[2] must be a float tensor"),
        (
            "y = embedding(w, x) : float32[2, 3, 3]\n",
            "node 'y' (embedding, #0): operand x: float32[2, 3] must be int32",
        ),
        (
            "y = reshape(x) {shape=[4, 2]} : float32[4, 2]\n",
            "node 'y' (reshape, #0): cannot reshape x: float32[2, 3] (6 elements) to [4, 2] (8)",
        ),
        (
            "y = transpose(x) {perm=[0, 0]} : float32[2, 2]\n",
            "node 'y' (transpose, #0): perm=[0, 0] is not a permutation of x: float32[2, 3]'s axes",
        ),
        (
            "y = slice(x) {axis=1, start=2, stop=4} : float32[2, 2]\n",
            "node 'y' (slice, #0): [2:4] is outside axis 1 of x: float32[2, 3]",
        ),
        (
            "y = rmsnorm(x, w) {eps=1e-05} : float32[2, 3]\n",
            "node 'y' (rmsnorm, #0): operand w: float32[4, 3] must have rank 1 ([dim])",
        ),
        (
            "y = add(x, w) : float32[2, 3]\n",
            "node 'y' (add, #0): operands differ in type: x: float32[2, 3] and w: float32[4, 3]",
        ),
    ],
)
def test_node_errors_say_which_node_and_why(body: str, message: str) -> None:
    with pytest.raises(IRError) as err:
        check(body)
    assert str(err.value).splitlines()[0] == "graph 'g', " + message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEADER + "output nope\n", "graph 'g': output 'nope' is not defined; name a node, input or param"),
        (HEADER + "output x, x\n", "graph 'g': outputs ['x', 'x'] name a value twice"),
        (HEADER + "param x: float32[1]\n", "graph 'g': param 'x' is declared twice; rename one"),
    ],
)
def test_graph_level_errors(text: str, message: str) -> None:
    with pytest.raises(IRError) as err:
        verify(parse_graph(text))
    assert str(err.value) == message


# --------------------------------------------------------------------------------------------- the type rules


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "expected"),
    [
        (Op.EMBEDDING, [f32("t", 10, 4), Value("i", (2, 3), "int32")], {}, ((2, 3, 4), "float32")),
        (Op.MATMUL, [f32("x", 2, 5, 3), f32("w", 7, 3)], {}, ((2, 5, 7), "float32")),
        (
            Op.BATCH_MATMUL,
            [f32("a", 3, 4, 8), f32("b", 3, 5, 8)],
            {"transpose_b": True},
            ((3, 4, 5), "float32"),
        ),
        (
            Op.BATCH_MATMUL,
            [f32("a", 3, 4, 8), f32("b", 3, 8, 6)],
            {"transpose_b": False},
            ((3, 4, 6), "float32"),
        ),
        (Op.RMSNORM, [f32("x", 2, 8), f32("w", 8)], {"eps": 1e-5}, ((2, 8), "float32")),
        (
            Op.ROPE,
            [f32("x", 5, 3, 8), Value("p", (5,), "int32")],
            {"base": 1e4, "head_dim": 8},
            ((5, 3, 8), "float32"),
        ),
        (Op.CAUSAL_MASK, [f32("s", 3, 5, 9), Value("p", (5,), "int32")], {}, ((3, 5, 9), "float32")),
        (
            Op.KV_CACHE_WRITE,
            [f32("c", 2, 16, 4), f32("n", 2, 3, 4), Value("p", (3,), "int32")],
            {},
            ((2, 16, 4), "float32"),
        ),
        (Op.SLICE, [f32("x", 5, 8)], {"axis": 0, "start": 4, "stop": 5}, ((1, 8), "float32")),
        (Op.TRANSPOSE, [f32("x", 2, 3, 4)], {"perm": (1, 0, 2)}, ((3, 2, 4), "float32")),
        (
            Op.SCALE,
            [f32("x", 2)],
            {"factor": 2},
            ((2,), "float32"),
        ),  # an int is accepted for a float attribute
    ],
)
def test_infer_gives_the_result_type(op: Op, inputs, attrs, expected) -> None:
    assert infer(op, inputs, attrs) == expected


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "message"),
    [
        (
            Op.ROPE,
            [f32("x", 5, 3, 8), Value("p", (4,), "int32")],
            {"base": 1e4, "head_dim": 8},
            "positions p: int32[4] must be [tokens] = [5]",
        ),
        (
            Op.ROPE,
            [f32("x", 5, 3, 8), Value("p", (5,), "int32")],
            {"base": 1e4, "head_dim": 6},
            "head_dim=6 must be even and equal the last axis of x: float32[5, 3, 8]",
        ),
        (
            Op.CAUSAL_MASK,
            [f32("s", 3, 5, 9), Value("p", (9,), "int32")],
            {},
            "positions p: int32[9] must be [queries] = [5]",
        ),
        (
            Op.KV_CACHE_WRITE,
            [f32("c", 2, 16, 4), f32("n", 1, 3, 4), Value("p", (3,), "int32")],
            {},
            "heads or head_dim differ: cache c: float32[2, 16, 4] and new rows n: float32[1, 3, 4]",
        ),
        (
            Op.KV_CACHE_WRITE,
            [f32("c", 2, 2, 4), f32("n", 2, 3, 4), Value("p", (3,), "int32")],
            {},
            "3 new rows do not fit a cache of 2 slots",
        ),
        (
            Op.BATCH_MATMUL,
            [f32("a", 3, 4, 8), f32("b", 2, 5, 8)],
            {"transpose_b": True},
            "batch sizes differ: a: float32[3, 4, 8] and b: float32[2, 5, 8]",
        ),
        (Op.RMSNORM, [f32("x", 2, 8), f32("w", 8)], {"eps": 0.0}, "eps=0.0 must be positive"),
    ],
)
def test_infer_rejects_operands_that_do_not_fit(op: Op, inputs, attrs, message: str) -> None:
    with pytest.raises(ShapeError) as err:
        infer(op, inputs, attrs)
    assert str(err.value) == message
