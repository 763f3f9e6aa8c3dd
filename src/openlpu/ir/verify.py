"""The tensor-IR verifier: is a graph well formed?

Checks, in order: names are unique; every node input is defined before the node (so nodes are in topological
order); each node's attributes and result type follow its op's rule (`openlpu.ir.shapes`); the graph's outputs
exist. The first failure raises `IRError` naming the node, with a few lines of the graph's text around it.
"""

from __future__ import annotations

from typing import NoReturn

from openlpu.ir.graph import Graph, IRError, Node, Value
from openlpu.ir.shapes import ShapeError, infer

CONTEXT_LINES = 3
"""How many nodes to show on each side of the offending one."""


def _context(graph: Graph, index: int) -> str:
    """The text of nodes around ``graph.nodes[index]``, the offending one marked with '>'."""
    from openlpu.ir.text import format_node  # text imports this module's users; import late to avoid a cycle

    lo, hi = max(0, index - CONTEXT_LINES), min(len(graph.nodes), index + CONTEXT_LINES + 1)
    return "\n".join(f"{'>' if i == index else ' '} {format_node(graph.nodes[i])}" for i in range(lo, hi))


def _fail(graph: Graph, index: int, message: str) -> NoReturn:
    node = graph.nodes[index]
    raise IRError(
        f"graph {graph.name!r}, node {node.name!r} ({node.op.value}, #{index}): {message}\n"
        f"{_context(graph, index)}"
    )


def _declared(graph: Graph) -> dict[str, Value]:
    table: dict[str, Value] = {}
    for kind, values in (("input", graph.inputs), ("param", graph.params)):
        for v in values:
            if v.name in table:
                raise IRError(f"graph {graph.name!r}: {kind} {v.name!r} is declared twice; rename one")
            table[v.name] = v
    return table


def _check_node(graph: Graph, index: int, defined: dict[str, Value]) -> None:
    node: Node = graph.nodes[index]
    if node.name in defined:
        _fail(graph, index, f"name {node.name!r} is already defined; every value needs its own name")
    missing = [name for name in node.inputs if name not in defined]
    if missing:
        _fail(
            graph,
            index,
            f"input {missing[0]!r} is not defined before this node "
            "(nodes must be in topological order, inputs and params declared)",
        )
    try:
        shape, dtype = infer(node.op, [defined[n] for n in node.inputs], dict(node.attrs))
    except ShapeError as err:
        _fail(graph, index, str(err))
    if (shape, dtype) != (node.shape, node.dtype):
        _fail(
            graph,
            index,
            f"declared type {node.dtype}{list(node.shape)} but the op gives {dtype}{list(shape)}",
        )


def verify(graph: Graph) -> Graph:
    """Check that `graph` is well formed and return it unchanged; `IRError` names the first bad node."""
    defined = _declared(graph)
    for index, node in enumerate(graph.nodes):
        _check_node(graph, index, defined)
        defined[node.name] = node.value
    for name in graph.outputs:
        if name not in defined:
            raise IRError(
                f"graph {graph.name!r}: output {name!r} is not defined; name a node, input or param"
            )
    if len(set(graph.outputs)) != len(graph.outputs):
        raise IRError(f"graph {graph.name!r}: outputs {list(graph.outputs)} name a value twice")
    return graph
