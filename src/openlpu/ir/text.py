"""The text form of the tensor IR: `print_graph` and `parse_graph`, with ``parse_graph(print_graph(g)) == g``.

One declaration per line; ``#`` starts a comment; blank lines and indentation are ignored::

    graph tiny
    input tokens: int32[3]
    param emb: float32[10, 4]
    x = embedding(emb, tokens) : float32[3, 4]
    y = rmsnorm(x, norm_w) {eps=1e-05} : float32[3, 4]
    output y

Attribute values are ints (``64``), floats written as Python's shortest round-tripping repr (``100000.0``,
``1e-05``), ``true``/``false``, JSON strings and int lists (``[1, 0, 2]``). Attributes may be written in any
order; they are kept sorted by key. Parse errors raise `AssemblyError` with the 1-based line and column.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from openlpu.errors import AssemblyError
from openlpu.ir.graph import DTYPES, AttrValue, Graph, IRError, Node, Op, Value

_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      | (?P<comment>\#.*)
      | (?P<number>-?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+)|-inf\b)
      | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<punct>[=(){}\[\],:])""",
    re.VERBOSE,
)
_INT = re.compile(r"-?\d+\Z")
_WORDS: dict[str, AttrValue] = {"true": True, "false": False, "inf": float("inf"), "nan": float("nan")}


# --------------------------------------------------------------------------------------------------- printing


def _format_attr(value: AttrValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _format_type(shape: tuple[int, ...], dtype: str) -> str:
    return f"{dtype}[{', '.join(map(str, shape))}]"


def format_node(node: Node) -> str:
    """One node as a line of text (no newline)."""
    attrs = ""
    if node.attrs:
        attrs = " {" + ", ".join(f"{k}={_format_attr(v)}" for k, v in node.attrs) + "}"
    result = _format_type(node.shape, node.dtype)
    return f"{node.name} = {node.op.value}({', '.join(node.inputs)}){attrs} : {result}"


def print_graph(graph: Graph) -> str:
    """The whole graph as text: header, inputs, params, nodes, outputs, one per line, ending in a newline."""
    lines = [f"graph {graph.name}"]
    lines += [f"input {v.name}: {_format_type(v.shape, v.dtype)}" for v in graph.inputs]
    lines += [f"param {v.name}: {_format_type(v.shape, v.dtype)}" for v in graph.params]
    lines += [format_node(n) for n in graph.nodes]
    lines += [f"output {name}" for name in graph.outputs]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # number, name, string, punct, end
    text: str
    column: int  # 1-based


class _Line:
    """The tokens of one source line and a cursor over them; errors point at the current token."""

    def __init__(self, text: str, source: str, line: int) -> None:
        self.source, self.line = source, line
        self.toks = self._lex(text)
        self.pos = 0

    def _lex(self, text: str) -> list[_Tok]:
        toks, i = [], 0
        while i < len(text):
            m = _TOKEN.match(text, i)
            if m is None:
                raise AssemblyError(
                    f"unexpected character {text[i]!r}", source=self.source, line=self.line, column=i + 1
                )
            kind = m.lastgroup or "ws"  # every alternative is a named group
            if kind not in ("ws", "comment"):
                toks.append(_Tok(kind, m.group(), i + 1))
            i = m.end()
        toks.append(_Tok("end", "end of line", len(text) + 1))
        return toks

    def error(self, message: str, tok: _Tok | None = None) -> AssemblyError:
        tok = tok or self.peek()
        return AssemblyError(message, source=self.source, line=self.line, column=tok.column)

    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.pos + ahead, len(self.toks) - 1)]

    def take(self) -> _Tok:
        tok = self.peek()
        self.pos += 1
        return tok

    def accept(self, text: str) -> bool:
        if self.peek().kind in ("punct", "name") and self.peek().text == text:
            self.pos += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            raise self.error(f"expected {text!r}, found {self.peek().text!r}")

    def name(self, what: str) -> _Tok:
        if self.peek().kind != "name":
            raise self.error(f"expected {what}, found {self.peek().text!r}")
        return self.take()

    def end(self) -> None:
        if self.peek().kind != "end":
            raise self.error(f"unexpected {self.peek().text!r} after the end of the declaration")

    def type(self) -> tuple[tuple[int, ...], str]:
        tok = self.name("a dtype")
        if tok.text not in DTYPES:
            raise self.error(f"unknown dtype {tok.text!r}; known: {', '.join(DTYPES)}", tok)
        return self.int_list(), tok.text

    def int_list(self) -> tuple[int, ...]:
        self.expect("[")
        items: list[int] = []
        while not self.accept("]"):
            if items:
                self.expect(",")
            tok = self.take()
            if tok.kind != "number" or not _INT.match(tok.text):
                raise self.error(f"expected an integer, found {tok.text!r}", tok)
            items.append(int(tok.text))
        return tuple(items)

    def attr_value(self) -> AttrValue:
        tok = self.peek()
        if tok.text == "[":
            return self.int_list()
        self.take()
        if tok.kind == "number":
            if _INT.match(tok.text):
                return int(tok.text)
            return float(tok.text)
        if tok.kind == "string":
            return json.loads(tok.text)
        if tok.kind == "name" and tok.text in _WORDS:
            return _WORDS[tok.text]
        raise self.error(
            f"expected an attribute value (number, true/false, string or [ints]), found {tok.text!r}", tok
        )


def _parse_attrs(ln: _Line) -> tuple[tuple[str, AttrValue], ...]:
    attrs: dict[str, AttrValue] = {}
    if not ln.accept("{"):
        return ()
    while not ln.accept("}"):
        if attrs:
            ln.expect(",")
        key = ln.name("an attribute name")
        if key.text in attrs:
            raise ln.error(f"attribute {key.text!r} is given twice", key)
        ln.expect("=")
        attrs[key.text] = ln.attr_value()
    return tuple(sorted(attrs.items()))


def _parse_node(ln: _Line) -> Node:
    name = ln.take()
    ln.expect("=")
    op_tok = ln.name("an op name")
    try:
        op = Op(op_tok.text)
    except ValueError:
        known = ", ".join(o.value for o in Op)
        raise ln.error(f"unknown op {op_tok.text!r}; known ops: {known}", op_tok) from None
    ln.expect("(")
    inputs: list[str] = []
    while not ln.accept(")"):
        if inputs:
            ln.expect(",")
        inputs.append(ln.name("an input name").text)
    attrs = _parse_attrs(ln)
    ln.expect(":")
    shape, dtype = ln.type()
    ln.end()
    return Node(name.text, op, tuple(inputs), attrs, shape, dtype)


def _parse_value(ln: _Line) -> Value:
    name = ln.name("a value name")
    ln.expect(":")
    shape, dtype = ln.type()
    ln.end()
    return Value(name.text, shape, dtype)


def _parse_outputs(ln: _Line) -> list[str]:
    names = [ln.name("an output name").text]
    while ln.accept(","):
        names.append(ln.name("an output name").text)
    ln.end()
    return names


class _Parts:
    """What the parser has collected so far."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.inputs: list[Value] = []
        self.params: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: list[str] = []

    def add(self, ln: _Line) -> None:
        head = ln.peek()
        if head.kind != "name":
            raise ln.error(
                f"expected a declaration (graph, input, param, output or 'name = op(...)'), "
                f"found {head.text!r}"
            )
        if ln.peek(1).text == "=":
            self._need_header(ln)
            self.nodes.append(_parse_node(ln))
            return
        ln.take()
        if head.text == "graph":
            if self.name is not None:
                raise ln.error("a second 'graph' header; one text holds one graph", head)
            self.name = ln.name("a graph name").text
            ln.end()
            return
        self._need_header(ln)
        if head.text in ("input", "param"):
            (self.inputs if head.text == "input" else self.params).append(_parse_value(ln))
        elif head.text == "output":
            self.outputs += _parse_outputs(ln)
        else:
            raise ln.error(
                f"unknown declaration {head.text!r}; expected graph, input, param, output "
                "or 'name = op(...)'",
                head,
            )

    def _need_header(self, ln: _Line) -> None:
        if self.name is None:
            raise ln.error("the text must start with 'graph NAME'", ln.toks[0])


def parse_graph(text: str, *, source: str = "<ir>") -> Graph:
    """Parse the text form into a `Graph` (not verified: call `openlpu.ir.verify.verify` for that).

    Raises `AssemblyError` naming `source`, the line and the column of the first problem.
    """
    parts = _Parts()
    lineno = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        ln = _Line(raw, source, lineno)
        if ln.peek().kind == "end":
            continue
        try:
            parts.add(ln)
        except IRError as err:  # a name or type the IR itself rejects
            raise AssemblyError(str(err), source=source, line=lineno, column=ln.toks[0].column) from None
    if parts.name is None:
        raise AssemblyError("empty text: expected 'graph NAME'", source=source, line=max(lineno, 1), column=1)
    return Graph(
        parts.name, tuple(parts.inputs), tuple(parts.params), tuple(parts.nodes), tuple(parts.outputs)
    )
