"""Type rules of the tensor IR: for each op, the result shape and dtype from the input types and attributes.

`infer` is the single source of truth for shapes: the graph builder uses it to fill in node types, and the
verifier uses it to check them. Rules raise `ShapeError` with a message about the operands only; callers add
which node it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from openlpu.ir.graph import FLOAT_DTYPES, SPECS, AttrValue, IRError, Op, Value

Type = tuple[tuple[int, ...], str]
"""A result type: (shape, dtype)."""

Rule = Callable[[Sequence[Value], Mapping[str, AttrValue]], Type]


class ShapeError(IRError):
    """Operands or attributes that do not fit an op's type rule."""


def _desc(v: Value) -> str:
    return f"{v.name}: {v.dtype}[{', '.join(map(str, v.shape))}]"


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ShapeError(message)


def _float(v: Value) -> None:
    _need(v.dtype in FLOAT_DTYPES, f"operand {_desc(v)} must be a float tensor")


def _int(v: Value) -> None:
    _need(v.dtype == "int32", f"operand {_desc(v)} must be int32")


def _rank(v: Value, rank: int, layout: str) -> None:
    _need(len(v.shape) == rank, f"operand {_desc(v)} must have rank {rank} ({layout})")


def _embedding(ins: Sequence[Value], _: Mapping[str, AttrValue]) -> Type:
    table, ids = ins
    _rank(table, 2, "[vocab, dim]")
    _float(table)
    _int(ids)
    return (*ids.shape, table.shape[1]), table.dtype


def _matmul(ins: Sequence[Value], _: Mapping[str, AttrValue]) -> Type:
    x, w = ins
    _float(x)
    _rank(w, 2, "[out, in]")
    _need(
        len(x.shape) >= 1 and x.shape[-1] == w.shape[1],
        f"inner dimensions differ: {_desc(x)} @ ({_desc(w)})^T needs x's last axis == w's axis 1",
    )
    _need(w.dtype == x.dtype, f"dtypes differ: {_desc(x)} and {_desc(w)}")
    return (*x.shape[:-1], w.shape[0]), x.dtype


def _batch_matmul(ins: Sequence[Value], attrs: Mapping[str, AttrValue]) -> Type:
    a, b = ins
    _rank(a, 3, "[batch, m, k]")
    _rank(b, 3, "[batch, n, k] with transpose_b, else [batch, k, n]")
    _float(a)
    _need(a.dtype == b.dtype, f"dtypes differ: {_desc(a)} and {_desc(b)}")
    _need(a.shape[0] == b.shape[0], f"batch sizes differ: {_desc(a)} and {_desc(b)}")
    k_axis, n_axis = (2, 1) if attrs["transpose_b"] else (1, 2)
    _need(
        a.shape[2] == b.shape[k_axis],
        f"inner dimensions differ: {_desc(a)} and {_desc(b)} (transpose_b={attrs['transpose_b']})",
    )
    return (a.shape[0], a.shape[1], b.shape[n_axis]), a.dtype


def _same(ins: Sequence[Value], _: Mapping[str, AttrValue]) -> Type:
    a, b = ins
    _float(a)
    _need((a.shape, a.dtype) == (b.shape, b.dtype), f"operands differ in type: {_desc(a)} and {_desc(b)}")
    return a.shape, a.dtype


def _unary(ins: Sequence[Value], _: Mapping[str, AttrValue]) -> Type:
    (x,) = ins
    _float(x)
    return x.shape, x.dtype


def _rmsnorm(ins: Sequence[Value], attrs: Mapping[str, AttrValue]) -> Type:
    x, w = ins
    _float(x)
    _rank(w, 1, "[dim]")
    _need(
        len(x.shape) >= 1 and x.shape[-1] == w.shape[0],
        f"weight {_desc(w)} does not match last axis of {_desc(x)}",
    )
    _need(float(attrs["eps"]) > 0, f"eps={attrs['eps']} must be positive")
    return x.shape, x.dtype


def _rope(ins: Sequence[Value], attrs: Mapping[str, AttrValue]) -> Type:
    x, pos = ins
    _float(x)
    _int(pos)
    _rank(x, 3, "[tokens, heads, head_dim]")
    _need(pos.shape == (x.shape[0],), f"positions {_desc(pos)} must be [tokens] = [{x.shape[0]}]")
    head_dim = attrs["head_dim"]
    _need(
        x.shape[2] == head_dim and head_dim % 2 == 0,
        f"head_dim={head_dim} must be even and equal the last axis of {_desc(x)}",
    )
    _need(float(attrs["base"]) > 0, f"base={attrs['base']} must be positive")
    return x.shape, x.dtype


def _causal_mask(ins: Sequence[Value], _: Mapping[str, AttrValue]) -> Type:
    s, pos = ins
    _float(s)
    _int(pos)
    _rank(s, 3, "[heads, queries, keys]")
    _need(pos.shape == (s.shape[1],), f"positions {_desc(pos)} must be [queries] = [{s.shape[1]}]")
    return s.shape, s.dtype


def _kv_cache_write(ins: Sequence[Value], _: Mapping[str, AttrValue]) -> Type:
    cache, new, pos = ins
    _rank(cache, 3, "[kv_heads, slots, head_dim]")
    _rank(new, 3, "[kv_heads, tokens, head_dim]")
    _int(pos)
    _need(cache.dtype == new.dtype, f"dtypes differ: {_desc(cache)} and {_desc(new)}")
    _need(
        (cache.shape[0], cache.shape[2]) == (new.shape[0], new.shape[2]),
        f"heads or head_dim differ: cache {_desc(cache)} and new rows {_desc(new)}",
    )
    _need(pos.shape == (new.shape[1],), f"positions {_desc(pos)} must be [tokens] = [{new.shape[1]}]")
    _need(
        new.shape[1] <= cache.shape[1],
        f"{new.shape[1]} new rows do not fit a cache of {cache.shape[1]} slots",
    )
    return cache.shape, cache.dtype


def _reshape(ins: Sequence[Value], attrs: Mapping[str, AttrValue]) -> Type:
    (x,) = ins
    shape = attrs["shape"]
    _need(all(d >= 0 for d in shape), f"shape={shape} has a negative dimension")
    _need(
        math.prod(shape) == math.prod(x.shape),
        f"cannot reshape {_desc(x)} ({math.prod(x.shape)} elements) to {list(shape)} ({math.prod(shape)})",
    )
    return tuple(shape), x.dtype


def _transpose(ins: Sequence[Value], attrs: Mapping[str, AttrValue]) -> Type:
    (x,) = ins
    perm = attrs["perm"]
    _need(
        sorted(perm) == list(range(len(x.shape))),
        f"perm={list(perm)} is not a permutation of {_desc(x)}'s axes",
    )
    return tuple(x.shape[p] for p in perm), x.dtype


def _slice(ins: Sequence[Value], attrs: Mapping[str, AttrValue]) -> Type:
    (x,) = ins
    axis, start, stop = attrs["axis"], attrs["start"], attrs["stop"]
    _need(0 <= axis < len(x.shape), f"axis={axis} is not an axis of {_desc(x)}")
    _need(0 <= start <= stop <= x.shape[axis], f"[{start}:{stop}] is outside axis {axis} of {_desc(x)}")
    return tuple(stop - start if i == axis else d for i, d in enumerate(x.shape)), x.dtype


RULES: dict[Op, Rule] = {
    Op.EMBEDDING: _embedding,
    Op.MATMUL: _matmul,
    Op.BATCH_MATMUL: _batch_matmul,
    Op.ADD: _same,
    Op.MUL: _same,
    Op.SCALE: _unary,
    Op.SILU: _unary,
    Op.RMSNORM: _rmsnorm,
    Op.SOFTMAX: _unary,
    Op.ROPE: _rope,
    Op.CAUSAL_MASK: _causal_mask,
    Op.KV_CACHE_WRITE: _kv_cache_write,
    Op.RESHAPE: _reshape,
    Op.TRANSPOSE: _transpose,
    Op.SLICE: _slice,
}


def check_attrs(op: Op, attrs: Mapping[str, AttrValue]) -> None:
    """Raise `ShapeError` unless `attrs` has exactly the attributes `SPECS[op]` declares, with fitting types.

    An int is accepted where a float is declared (``eps=1`` means 1.0); a bool is never taken for an int.
    """
    spec = SPECS[op]
    declared = dict(spec.attrs)
    _need(
        set(attrs) == set(declared),
        f"{op.value} takes attributes {sorted(declared) or 'none'}, got {sorted(attrs) or 'none'}",
    )
    for key, want in declared.items():
        value = attrs[key]
        ok = type(value) is want or (want is float and type(value) is int)
        _need(ok, f"attribute {key}={value!r} must be {want.__name__}")


def infer(op: Op, inputs: Sequence[Value], attrs: Mapping[str, AttrValue]) -> Type:
    """The (shape, dtype) of `op` applied to `inputs` with `attrs`; raises `ShapeError` if they do not fit."""
    arity = SPECS[op].arity
    _need(len(inputs) == arity, f"{op.value} takes {arity} inputs, got {len(inputs)}")
    check_attrs(op, attrs)
    return RULES[op](inputs, attrs)
