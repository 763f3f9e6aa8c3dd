"""The tensor IR: an immutable, statically shaped dataflow graph, its text form, verifier and interpreter.

Pipeline position: frontends (GGUF) build a `Graph`; passes rewrite it; lowering maps its ops to chip kernels.
"""

from openlpu.ir.builder import GraphBuilder
from openlpu.ir.graph import (
    DTYPES,
    SPECS,
    AttrValue,
    Graph,
    IRError,
    Node,
    Op,
    OpGroup,
    OpSpec,
    Value,
    make_node,
)
from openlpu.ir.interpret import interpret
from openlpu.ir.shapes import ShapeError, infer
from openlpu.ir.text import format_node, parse_graph, print_graph
from openlpu.ir.verify import verify

__all__ = [
    "DTYPES",
    "SPECS",
    "AttrValue",
    "Graph",
    "GraphBuilder",
    "IRError",
    "Node",
    "Op",
    "OpGroup",
    "OpSpec",
    "ShapeError",
    "Value",
    "format_node",
    "infer",
    "interpret",
    "make_node",
    "parse_graph",
    "print_graph",
    "verify",
]
