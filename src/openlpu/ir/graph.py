"""The tensor IR: immutable values, nodes and graphs.

A `Graph` is a pure, statically shaped dataflow program: named graph inputs (activations: token ids,
positions, KV caches), named parameters (weights, declared by shape and dtype only) and nodes in topological
order. Weight *data* never lives in the graph; it is a separate ``dict[str, numpy.ndarray]`` keyed by
parameter name, so graphs stay small, hashable and printable.

Every op is a member of the closed `Op` enum. `SPECS` declares each op's arity, attributes and group as data;
the shape rules (`openlpu.ir.shapes`), the verifier and the interpreter are tables keyed by the same enum.

Nodes are frozen; change one with `dataclasses.replace`, and a pass returns a new `Graph`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from openlpu.errors import UserError

AttrValue = bool | int | float | str | tuple[int, ...]
"""An attribute value: a scalar or a tuple of ints (shapes, permutations)."""

DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "int32")
"""The element types a value may have; floats compute in float32 in the reference interpreter."""

FLOAT_DTYPES: frozenset[str] = frozenset({"float32", "float16", "bfloat16"})

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
"""Value names: an identifier that may contain dots (``blk.0.attn_q.weight``)."""


class IRError(UserError):
    """A tensor-IR graph that is malformed or cannot be run; the message names the node."""


class OpGroup(enum.Enum):
    """Named groups of ops, by the kind of hardware work they lower to."""

    MEMORY = "memory"  # gathers and cache writes: data movement with an index
    MATMUL = "matmul"  # contractions over the last axis
    ELEMENTWISE = "elementwise"  # one output element per input element
    REDUCTION = "reduction"  # row-wise reductions over the last axis
    POSITION = "position"  # ops that read the token positions
    LAYOUT = "layout"  # reshapes, transposes and slices: no arithmetic


class Op(enum.Enum):
    """Every operation of the tensor IR (a closed set). The value is the op's spelling in the text form."""

    EMBEDDING = "embedding"  # (table[V, D], ids[*S] int) -> [*S, D]: rows of the table
    MATMUL = "matmul"  # (x[*S, K], w[N, K]) -> [*S, N]: x @ w^T, weights stored [out, in]
    BATCH_MATMUL = "batch_matmul"  # (a[B, M, K], b[B, N, K] or [B, K, N]) -> [B, M, N]; attr transpose_b
    ADD = "add"  # (a, b) same shape -> a + b
    MUL = "mul"  # (a, b) same shape -> a * b
    SCALE = "scale"  # (x) -> x * factor
    SILU = "silu"  # (x) -> x * sigmoid(x)
    RMSNORM = "rmsnorm"  # (x[*S, D], w[D]) -> x / sqrt(mean(x^2) + eps) * w
    SOFTMAX = "softmax"  # (x) -> softmax over the last axis
    ROPE = "rope"  # (x[T, H, Dh], positions[T] int) -> rotary embedding, half-split (rotate_half) pairing
    CAUSAL_MASK = (
        "causal_mask"  # (s[B, T, S], positions[T] int) -> s with s[b, t, j] = -inf where j > positions[t]
    )
    KV_CACHE_WRITE = (
        "kv_cache_write"  # (cache[G, C, Dh], new[G, T, Dh], positions[T]) -> cache with rows written
    )
    RESHAPE = "reshape"  # (x) -> x viewed as attr shape (row-major, same element count)
    TRANSPOSE = "transpose"  # (x) -> axes permuted by attr perm
    SLICE = "slice"  # (x) -> x[start:stop] along attr axis


@dataclass(frozen=True, slots=True)
class OpSpec:
    """The signature of one op: its group, how many inputs it takes and its attributes with their types."""

    group: OpGroup
    arity: int
    attrs: tuple[tuple[str, type], ...] = ()


SPECS: dict[Op, OpSpec] = {
    Op.EMBEDDING: OpSpec(OpGroup.MEMORY, 2),
    Op.MATMUL: OpSpec(OpGroup.MATMUL, 2),
    Op.BATCH_MATMUL: OpSpec(OpGroup.MATMUL, 2, (("transpose_b", bool),)),
    Op.ADD: OpSpec(OpGroup.ELEMENTWISE, 2),
    Op.MUL: OpSpec(OpGroup.ELEMENTWISE, 2),
    Op.SCALE: OpSpec(OpGroup.ELEMENTWISE, 1, (("factor", float),)),
    Op.SILU: OpSpec(OpGroup.ELEMENTWISE, 1),
    Op.RMSNORM: OpSpec(OpGroup.REDUCTION, 2, (("eps", float),)),
    Op.SOFTMAX: OpSpec(OpGroup.REDUCTION, 1),
    Op.ROPE: OpSpec(OpGroup.POSITION, 2, (("base", float), ("head_dim", int))),
    Op.CAUSAL_MASK: OpSpec(OpGroup.POSITION, 2),
    Op.KV_CACHE_WRITE: OpSpec(OpGroup.MEMORY, 3),
    Op.RESHAPE: OpSpec(OpGroup.LAYOUT, 1, (("shape", tuple),)),
    Op.TRANSPOSE: OpSpec(OpGroup.LAYOUT, 1, (("perm", tuple),)),
    Op.SLICE: OpSpec(OpGroup.LAYOUT, 1, (("axis", int), ("start", int), ("stop", int))),
}


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise IRError(
            f"{what} name {name!r} is not an identifier (letters, digits, '_' and '.', not first digit)"
        )


def _check_type(name: str, shape: tuple[int, ...], dtype: str) -> None:
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise IRError(f"value {name!r}: shape {shape!r} must be a tuple of non-negative ints")
    if dtype not in DTYPES:
        raise IRError(f"value {name!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")


def _check_attr_value(node: str, key: str, value: object) -> None:
    if isinstance(value, tuple):
        if all(type(v) is int for v in value):
            return
    elif type(value) in (bool, int, float, str):
        return
    raise IRError(
        f"node {node!r}: attribute {key}={value!r} must be a bool, int, float, str or tuple of ints"
    )


@dataclass(frozen=True, slots=True)
class Value:
    """A named tensor that is not computed by a node: a graph input or a parameter (weight).

    `shape` is in elements, row-major (last axis fastest); `dtype` is one of `DTYPES`.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        _check_name(self.name, "value")
        _check_type(self.name, self.shape, self.dtype)


@dataclass(frozen=True, slots=True)
class Node:
    """One operation: ``name = op(inputs) {attrs} : dtype[shape]``.

    `inputs` are names of graph inputs, parameters or earlier nodes. `attrs` are (key, value) pairs sorted by
    key with unique keys, so that two nodes meaning the same thing compare equal; build them with `make_node`.
    `shape` and `dtype` describe the node's result.
    """

    name: str
    op: Op
    inputs: tuple[str, ...]
    attrs: tuple[tuple[str, AttrValue], ...]
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        _check_name(self.name, "node")
        if not isinstance(self.op, Op):
            raise IRError(f"node {self.name!r}: op {self.op!r} is not an Op")
        for name in self.inputs:
            _check_name(name, f"node {self.name!r} input")
        keys = [k for k, _ in self.attrs]
        if keys != sorted(set(keys)):
            raise IRError(
                f"node {self.name!r}: attribute keys {keys} must be unique and sorted (use make_node)"
            )
        for key, value in self.attrs:
            _check_attr_value(self.name, key, value)
        _check_type(self.name, self.shape, self.dtype)

    def attr(self, key: str) -> AttrValue:
        """The value of attribute `key`; raises `IRError` naming the node if it is absent."""
        for k, v in self.attrs:
            if k == key:
                return v
        raise IRError(f"node {self.name!r} ({self.op.value}) has no attribute {key!r}")

    @property
    def value(self) -> Value:
        """The node's result as a `Value` (name, shape, dtype)."""
        return Value(self.name, self.shape, self.dtype)


def make_node(
    name: str,
    op: Op,
    inputs: tuple[str, ...] | list[str],
    shape: tuple[int, ...],
    dtype: str,
    attrs: Mapping[str, AttrValue] | None = None,
) -> Node:
    """Build a `Node`, sorting the attributes into canonical order."""
    return Node(name, op, tuple(inputs), tuple(sorted((attrs or {}).items())), tuple(shape), dtype)


@dataclass(frozen=True, slots=True)
class Graph:
    """A whole program: inputs, parameters, nodes in topological order and the names of its outputs.

    The contract (checked by `openlpu.ir.verify.verify`, not here): names are unique across inputs, params and
    nodes; every node input is defined before the node; every output names a defined value; every node's
    shape and dtype follow its op's rule.
    """

    name: str
    inputs: tuple[Value, ...]
    params: tuple[Value, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_name(self.name, "graph")

    def values(self) -> dict[str, Value]:
        """Every named value (inputs, params and node results), by name."""
        table = {v.name: v for v in (*self.inputs, *self.params)}
        table.update((n.name, n.value) for n in self.nodes)
        return table

    def node(self, name: str) -> Node:
        """The node called `name`; raises `IRError` if there is none."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise IRError(f"graph {self.name!r} has no node {name!r}")

    def count(self, op: Op) -> int:
        """How many nodes use `op`."""
        return sum(1 for n in self.nodes if n.op is op)
