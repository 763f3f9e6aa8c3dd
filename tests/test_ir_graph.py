"""The tensor IR's records (openlpu.ir.graph), builder, and text form (openlpu.ir.text)."""

from __future__ import annotations

import dataclasses

import pytest
from frontend_refs import TINY
from hypothesis import given
from hypothesis import strategies as st

from openlpu.errors import AssemblyError
from openlpu.frontends.llama import Phase, build_decoder
from openlpu.ir import (
    SPECS,
    Graph,
    GraphBuilder,
    IRError,
    Node,
    Op,
    OpGroup,
    Value,
    make_node,
    parse_graph,
    print_graph,
)
from openlpu.ir.interpret import RULES as INTERPRET_RULES
from openlpu.ir.shapes import RULES as SHAPE_RULES

TINY_TEXT = """\
graph tiny
input tokens: int32[3]
param emb: float32[10, 4]
param norm_w: float32[4]
x = embedding(emb, tokens) : float32[3, 4]
y = rmsnorm(x, norm_w) {eps=1e-05} : float32[3, 4]
z = transpose(y) {perm=[1, 0]} : float32[4, 3]
output z
"""


def tiny_graph() -> Graph:
    b = GraphBuilder("tiny")
    b.input("tokens", (3,), "int32")
    b.param("emb", (10, 4))
    b.param("norm_w", (4,))
    b.op(Op.EMBEDDING, "x", "emb", "tokens")
    b.op(Op.RMSNORM, "y", "x", "norm_w", eps=1e-5)
    b.op(Op.TRANSPOSE, "z", "y", perm=(1, 0))
    return b.build(["z"])


# -------------------------------------------------------------------------------------------- records, tables


def test_every_op_is_in_every_table() -> None:
    for op in Op:
        assert op in SPECS and op in SHAPE_RULES and op in INTERPRET_RULES, op
    assert {spec.group for spec in SPECS.values()} == set(OpGroup)


def test_make_node_sorts_attributes_into_canonical_order() -> None:
    a = make_node("s", Op.SLICE, ["x"], (1, 4), "float32", {"stop": 3, "axis": 0, "start": 2})
    assert a.attrs == (("axis", 0), ("start", 2), ("stop", 3))
    assert a.attr("start") == 2
    assert a.value == Value("s", (1, 4), "float32")


def test_node_rejects_unsorted_attributes_and_bad_values() -> None:
    with pytest.raises(IRError, match=r"attribute keys \['b', 'a'\] must be unique and sorted"):
        Node("n", Op.SLICE, ("x",), (("b", 1), ("a", 2)), (1,), "float32")
    with pytest.raises(IRError, match=r"attribute a=\[1\] must be a bool, int, float, str or tuple of ints"):
        Node("n", Op.SCALE, ("x",), (("a", [1]),), (1,), "float32")


def test_missing_attribute_names_the_node() -> None:
    node = make_node("n", Op.SCALE, ["x"], (1,), "float32")
    with pytest.raises(IRError) as err:
        node.attr("factor")
    assert str(err.value) == "node 'n' (scale) has no attribute 'factor'"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Value("1x", (1,), "float32"), "value name '1x' is not an identifier"),
        (lambda: Value("x", (-1,), "float32"), "value 'x': shape (-1,) must be a tuple of non-negative ints"),
        (lambda: Value("x", [1], "float32"), "value 'x': shape [1] must be a tuple of non-negative ints"),
        (
            lambda: Value("x", (1,), "float64"),
            "value 'x': dtype 'float64' is not one of float32, float16, bfloat16",
        ),
    ],
)
def test_value_validation(make, message: str) -> None:
    with pytest.raises(
        IRError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        make()


def test_nodes_are_immutable_and_changed_with_replace() -> None:
    node = tiny_graph().node("y")
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.name = "w"  # type: ignore[misc]
    assert dataclasses.replace(node, name="w").name == "w"


def test_builder_names_the_node_on_a_type_mismatch() -> None:
    b = GraphBuilder("g")
    b.input("x", (2, 3))
    b.param("w", (4, 5))
    with pytest.raises(IRError) as err:
        b.op(Op.MATMUL, "y", "x", "w")
    assert str(err.value) == (
        "graph 'g', node 'y' (matmul): inner dimensions differ: x: float32[2, 3] @ "
        "(w: float32[4, 5])^T needs x's last axis == w's axis 1"
    )
    with pytest.raises(IRError, match="node 'y': input 'nope' is not defined yet"):
        b.op(Op.SILU, "y", "nope")


# -------------------------------------------------------------------------------------------------- text form


def test_print_matches_the_expected_text() -> None:
    assert print_graph(tiny_graph()) == TINY_TEXT


def test_parse_of_print_is_the_same_graph() -> None:
    g = tiny_graph()
    assert parse_graph(print_graph(g)) == g


@pytest.mark.parametrize("phase", list(Phase))
def test_llama_graphs_round_trip(phase: Phase) -> None:
    g = build_decoder(TINY, phase, tokens=5, context=16)
    text = print_graph(g)
    assert parse_graph(text) == g
    assert print_graph(parse_graph(text)) == text


def test_every_attribute_kind_round_trips() -> None:
    node = make_node(
        "n",
        Op.SCALE,
        ["x"],
        (),
        "float32",
        {
            "a_bool": True,
            "b_int": -7,
            "c_float": 9.999999747378752e-06,
            "d_str": 'say "hi"\n',
            "e_ints": (1, -2),
            "f_empty": (),
            "g_big": 1.5e300,
            "h_neg": -0.0,
            "i_inf": float("-inf"),
            "j_int_like": 100000.0,
        },
    )
    g = Graph("g", (Value("x", (), "float32"),), (), (node,), ("n",))
    assert parse_graph(print_graph(g)) == g


@given(st.floats(allow_nan=False))
def test_any_float_attribute_round_trips_exactly(x: float) -> None:
    g = Graph(
        "g",
        (Value("x", (2,), "float32"),),
        (),
        (make_node("y", Op.SCALE, ["x"], (2,), "float32", {"factor": x}),),
        ("y",),
    )
    assert parse_graph(print_graph(g)) == g


def test_parser_takes_comments_blank_lines_indentation_and_any_attribute_order() -> None:
    text = """
        # a comment line
        graph g   # trailing comment
          input x: float32[2, 6]

          y = slice(x) {stop=4, start=1, axis=1} : float32[2, 3]
          output y
    """
    g = parse_graph(text)
    assert g.node("y").attrs == (("axis", 1), ("start", 1), ("stop", 4))
    assert g.outputs == ("y",)


def test_outputs_may_be_listed_on_one_line() -> None:
    g = parse_graph("graph g\ninput a: float32[1]\ninput b: float32[1]\noutput a, b\n")
    assert g.outputs == ("a", "b")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "<ir>:1:1: empty text: expected 'graph NAME'"),
        ("input x: float32[1]\n", "<ir>:1:1: the text must start with 'graph NAME'"),
        ("graph g\ngraph h\n", "<ir>:2:1: a second 'graph' header; one text holds one graph"),
        ("graph g\ninput x float32[1]\n", "<ir>:2:9: expected ':', found 'float32'"),
        (
            "graph g\ninput x: float64[1]\n",
            "<ir>:2:10: unknown dtype 'float64'; known: float32, float16, bfloat16, int32",
        ),
        ("graph g\ninput x: float32[1.5]\n", "<ir>:2:18: expected an integer, found '1.5'"),
        (
            "graph g\ny = frobnicate(x) : float32[1]\n",
            "<ir>:2:5: unknown op 'frobnicate'; known ops: " + ", ".join(op.value for op in Op),
        ),
        (
            "graph g\ny = scale(x) {factor=1.0, factor=2.0} : float32[1]\n",
            "<ir>:2:27: attribute 'factor' is given twice",
        ),
        ("graph g\ny = scale(x) {factor=@} : float32[1]\n", "<ir>:2:22: unexpected character '@'"),
        (
            "graph g\ny = scale(x) {factor=} : float32[1]\n",
            "<ir>:2:22: expected an attribute value (number, true/false, string or [ints]), found '}'",
        ),
        (
            "graph g\ny = silu(x) : float32[1] extra\n",
            "<ir>:2:26: unexpected 'extra' after the end of the declaration",
        ),
        (
            "graph g\nconst x: float32[1]\n",
            "<ir>:2:1: unknown declaration 'const'; expected graph, input, param, output or 'name = op(...)'",
        ),
        (
            "graph g\n[x]\n",
            "<ir>:2:1: expected a declaration (graph, input, param, output or 'name = op(...)'), found '['",
        ),
        ("graph g\ny = silu(x,) : float32[1]\n", "<ir>:2:12: expected an input name, found ')'"),
    ],
)
def test_parse_errors_name_line_and_column(text: str, message: str) -> None:
    with pytest.raises(AssemblyError) as err:
        parse_graph(text)
    assert str(err.value) == message


def test_parse_error_carries_source_line_and_column_fields() -> None:
    with pytest.raises(AssemblyError) as err:
        parse_graph("graph g\n\n  y = silu(x) : int8[1]\n", source="model.ir")
    assert (err.value.source, err.value.line, err.value.column) == ("model.ir", 3, 17)
    assert str(err.value).startswith("model.ir:3:17: unknown dtype 'int8'")


def test_a_name_the_ir_rejects_becomes_a_parse_error() -> None:
    with pytest.raises(AssemblyError) as err:
        parse_graph("graph g\nx = scale(y) {a=1, b=2} : float32[1]\ny = silu(x) : float32[-1]\n")
    assert str(err.value) == "<ir>:3:1: value 'y': shape (-1,) must be a tuple of non-negative ints"
