"""`GraphBuilder`: build a `Graph` op by op, with result types inferred by the IR's type rules.

The builder is the one mutable helper of the IR; `build` returns an immutable, verified `Graph`.
"""

from __future__ import annotations

from openlpu.ir.graph import AttrValue, Graph, IRError, Node, Op, Value, make_node
from openlpu.ir.shapes import ShapeError, infer
from openlpu.ir.verify import verify


class GraphBuilder:
    """Collects inputs, params and nodes in order; every method returns the new value's name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._inputs: list[Value] = []
        self._params: list[Value] = []
        self._nodes: list[Node] = []
        self._types: dict[str, Value] = {}

    def _define(self, value: Value) -> str:
        if value.name in self._types:
            raise IRError(f"graph {self.name!r}: {value.name!r} is defined twice")
        self._types[value.name] = value
        return value.name

    def input(self, name: str, shape: tuple[int, ...], dtype: str = "float32") -> str:
        """Declare a graph input (an activation the caller supplies at run time)."""
        value = Value(name, tuple(shape), dtype)
        self._inputs.append(value)
        return self._define(value)

    def param(self, name: str, shape: tuple[int, ...], dtype: str = "float32") -> str:
        """Declare a parameter (a weight whose data lives outside the graph)."""
        value = Value(name, tuple(shape), dtype)
        self._params.append(value)
        return self._define(value)

    def type_of(self, name: str) -> Value:
        """The declared type of a value built so far."""
        return self._types[name]

    def op(self, op: Op, name: str, *inputs: str, **attrs: AttrValue) -> str:
        """Append ``name = op(inputs) {attrs}``, type inferred; raises `IRError` naming `name` if it fails."""
        missing = [i for i in inputs if i not in self._types]
        if missing:
            raise IRError(f"graph {self.name!r}, node {name!r}: input {missing[0]!r} is not defined yet")
        try:
            shape, dtype = infer(op, [self._types[i] for i in inputs], attrs)
        except ShapeError as err:
            raise IRError(f"graph {self.name!r}, node {name!r} ({op.value}): {err}") from None
        node = make_node(name, op, inputs, shape, dtype, attrs)
        self._nodes.append(node)
        return self._define(node.value)

    def build(self, outputs: list[str] | tuple[str, ...]) -> Graph:
        """The finished graph with the given outputs, verified."""
        return verify(
            Graph(self.name, tuple(self._inputs), tuple(self._params), tuple(self._nodes), tuple(outputs))
        )
