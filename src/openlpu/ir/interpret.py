"""The reference interpreter of the tensor IR: the functional spec, in NumPy.

`RULES` holds one rule per `Op`: ``rule(node, args) -> numpy.ndarray``. Floats compute in float32 unless
asked otherwise; int32 stays int32. Every failure (a missing input, an index out of range, a result of the
wrong shape) raises `IRError` naming the node. The rules are meant to be obvious rather than fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from openlpu.ir.graph import FLOAT_DTYPES, Graph, IRError, Node, Op, Value
from openlpu.ir.verify import verify

Rule = Callable[[Node, Sequence[np.ndarray]], np.ndarray]


class RuleError(Exception):
    """Raised inside a rule; the interpreter re-raises it as `IRError` with the node's name."""


def _embedding(node: Node, args: Sequence[np.ndarray]) -> np.ndarray:
    table, ids = args
    bad = ids[(ids < 0) | (ids >= table.shape[0])]
    if bad.size:
        raise RuleError(f"token id {int(bad[0])} is outside the table's {table.shape[0]} rows")
    return table[ids]


def _matmul(node: Node, args: Sequence[np.ndarray]) -> np.ndarray:
    x, w = args
    return x @ w.T


def _batch_matmul(node: Node, args: Sequence[np.ndarray]) -> np.ndarray:
    a, b = args
    return a @ (b.transpose(0, 2, 1) if node.attr("transpose_b") else b)


def _scale(node: Node, args: Sequence[np.ndarray]) -> np.ndarray:
    (x,) = args
    return x * x.dtype.type(node.attr("factor"))


def _silu(node: Node, args: Sequence[np.ndarray]) -> np.ndarray:
    (x,) = args
    with np.errstate(
        over="ignore"
    ):  # exp(-x) overflows to inf for x << 0, giving x / inf = -0, the right limit
        return x / (1 + np.exp(-x))


def _rmsnorm(node: Node, args: Sequence[np.ndarray]) -> np.ndarray:
    x, w = args
    eps = x.dtype.type(node.attr("eps"))
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _softmax(node: Node, args: Sequence[np.ndarray]) -> np.ndarray:
    (x,) = args
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def rope_tables(positions: np.ndarray, head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables, each [tokens, head_dim], for the half-split RoPE convention.

    Frequency i (of head_dim/2) is ``base ** (-2i / head_dim)`` radians per position; both halves of the head
    share the frequencies. Angles are computed in float64 (the exact answer), then rounded once.
    """
    inv_freq = float(base) ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def _rope(node: Node, args: Sequence[np.ndarray]) -> np.ndarray:
    x, positions = args  # x: [tokens, heads, head_dim]
    cos, sin = (t.astype(x.dtype)[:, None, :] for t in rope_tables(positions, x.shape[-1], node.attr("base")))
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _causal_mask(node: Node, args: Sequence[np.ndarray]) -> np.ndarray:
    scores, positions = args  # scores: [heads, queries, keys]
    hidden = np.arange(scores.shape[2])[None, :] > positions[:, None]
    return np.where(hidden[None, :, :], scores.dtype.type(-np.inf), scores)


def _kv_cache_write(node: Node, args: Sequence[np.ndarray]) -> np.ndarray:
    cache, new, positions = args
    slots = cache.shape[1]
    bad = positions[(positions < 0) | (positions >= slots)]
    if bad.size:
        raise RuleError(
            f"position {int(bad[0])} is outside the KV cache of {slots} slots (compile with a longer context)"
        )
    if len(set(positions.tolist())) != len(positions):
        raise RuleError(f"positions {positions.tolist()} write a cache slot twice")
    out = cache.copy()
    out[:, positions, :] = new
    return out


def _reshape(node: Node, args: Sequence[np.ndarray]) -> np.ndarray:
    return args[0].reshape(node.attr("shape"))


def _transpose(node: Node, args: Sequence[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(args[0].transpose(node.attr("perm")))


def _slice(node: Node, args: Sequence[np.ndarray]) -> np.ndarray:
    index = [slice(None)] * args[0].ndim
    index[node.attr("axis")] = slice(node.attr("start"), node.attr("stop"))
    return args[0][tuple(index)]


RULES: dict[Op, Rule] = {
    Op.EMBEDDING: _embedding,
    Op.MATMUL: _matmul,
    Op.BATCH_MATMUL: _batch_matmul,
    Op.ADD: lambda node, args: args[0] + args[1],
    Op.MUL: lambda node, args: args[0] * args[1],
    Op.SCALE: _scale,
    Op.SILU: _silu,
    Op.RMSNORM: _rmsnorm,
    Op.SOFTMAX: _softmax,
    Op.ROPE: _rope,
    Op.CAUSAL_MASK: _causal_mask,
    Op.KV_CACHE_WRITE: _kv_cache_write,
    Op.RESHAPE: _reshape,
    Op.TRANSPOSE: _transpose,
    Op.SLICE: _slice,
}


def bind_value(kind: str, decl: Value, array: object, float_dtype: np.dtype) -> np.ndarray:
    """`array` checked against its declaration and converted to the compute dtype."""
    a = np.asarray(array)
    if a.shape != decl.shape:
        raise IRError(
            f"{kind} {decl.name!r}: got shape {list(a.shape)}, the graph declares {list(decl.shape)}"
        )
    if decl.dtype in FLOAT_DTYPES:
        if a.dtype.kind != "f":
            raise IRError(f"{kind} {decl.name!r}: got {a.dtype} data, the graph declares {decl.dtype}")
        return a.astype(float_dtype, copy=False)
    if a.dtype.kind not in "iu":
        raise IRError(f"{kind} {decl.name!r}: got {a.dtype} data, the graph declares {decl.dtype}")
    return a.astype(np.int32, copy=False)


def _environment(
    graph: Graph, inputs: Mapping[str, object], params: Mapping[str, object], float_dtype: np.dtype
) -> dict[str, np.ndarray]:
    unknown = sorted(set(inputs) - {v.name for v in graph.inputs})
    if unknown:
        raise IRError(
            f"graph {graph.name!r} has no input {unknown[0]!r}; its inputs are "
            f"{[v.name for v in graph.inputs]}"
        )
    env: dict[str, np.ndarray] = {}
    for kind, decls, given in (("input", graph.inputs, inputs), ("param", graph.params, params)):
        for decl in decls:
            if decl.name not in given:
                raise IRError(f"graph {graph.name!r}: no data for {kind} {decl.name!r}; pass it in `{kind}s`")
            env[decl.name] = bind_value(kind, decl, given[decl.name], float_dtype)
    return env


def last_uses(graph: Graph) -> dict[int, list[str]]:
    """For each node index, the values no later node or output reads, so the interpreter can drop them."""
    last: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            last[name] = index
    keep = set(graph.outputs)
    drops: dict[int, list[str]] = {}
    for name, index in last.items():
        if name not in keep:
            drops.setdefault(index, []).append(name)
    return drops


def _run_node(node: Node, env: dict[str, np.ndarray], float_dtype: np.dtype) -> np.ndarray:
    try:
        result = RULES[node.op](node, [env[name] for name in node.inputs])
    except RuleError as err:
        raise IRError(f"node {node.name!r} ({node.op.value}): {err}") from None
    want = float_dtype if node.dtype in FLOAT_DTYPES else np.dtype(np.int32)
    if result.shape != node.shape or result.dtype != want:
        raise IRError(
            f"node {node.name!r} ({node.op.value}): rule gave {result.dtype}{list(result.shape)}, "
            f"the node declares {node.dtype}{list(node.shape)} (a bug in the rule or the type rule)"
        )
    return result


def interpret(
    graph: Graph,
    inputs: Mapping[str, object],
    params: Mapping[str, object],
    *,
    float_dtype: type | np.dtype = np.float32,
    keep_all: bool = False,
) -> dict[str, np.ndarray]:
    """Run `graph` and return its outputs by name.

    `inputs` must give every graph input (no others); `params` must give every parameter and may hold more
    (a full model's weights serve a truncated graph). Float data is converted to `float_dtype` (float32 by
    default; float64 for a tighter reference). With `keep_all`, every intermediate value is returned as well.
    """
    verify(graph)
    fdt = np.dtype(float_dtype)
    env = _environment(graph, inputs, params, fdt)
    drops = {} if keep_all else last_uses(graph)
    for index, node in enumerate(graph.nodes):
        env[node.name] = _run_node(node, env, fdt)
        for name in drops.get(index, ()):
            del env[name]
    if keep_all:
        return env
    return {name: env[name] for name in graph.outputs}
