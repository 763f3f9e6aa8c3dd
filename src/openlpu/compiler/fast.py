"""The fast path: run a chip graph's arithmetic on whole arrays, with the chip's numerics, without cycles.

Each operation computes what its emitter's instructions compute, with the same functions the simulator uses
(`openlpu.sim.numerics`), in the same order: elementwise ops vector by vector (order-free), the MXM pass by pass
with passes folded in K order, RMSNorm as its kernel's fast path. Tensors are held as [rows, cols] arrays of
their dtype — exactly what the SRAM holds, padding lanes included — so the fast path's results are bit-identical
to the cycle-exact simulation (tests compare them), and its latency is the schedule's prediction.

Rows that are copies of one row are computed once. Every elementwise op and every MXM pass computes each row from
that row of its inputs alone, so where every input's rows from some row on are bit for bit one row — an unwritten
KV-cache row (zeros) or attention-mask row (the mask, the same in every such row), a row read again for every row — the
result's rows are too: the fast path computes up to the first of them and copies it on (`Uniform`). A decode
step's attention then works on the written cache rows and one more, not all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from openlpu.compiler import fastmxm
from openlpu.compiler.chipgraph import (
    Chain,
    ChipGraph,
    InvRms,
    LaneMix,
    Matmul,
    Pair,
    Receive,
    Ref,
    RmsNorm,
    Role,
    Scatter,
    Send,
    TensorDef,
    TokenScale,
    Vxm,
)
from openlpu.errors import InternalError
from openlpu.isa.opcodes import Opcode
from openlpu.isa.types import DType
from openlpu.kernels.lanemix import fast_lane_mix
from openlpu.kernels.quantize import fast_token_scale
from openlpu.kernels.rmsnorm import fast_inv_rms, fast_rmsnorm
from openlpu.sim import numerics as nx

LANES = 320
UNARY = {Opcode.COPY, Opcode.NEG, Opcode.ABS, Opcode.RELU, Opcode.EXP, Opcode.RECIP, Opcode.RSQRT, Opcode.TANH,
         Opcode.SIGMOID, Opcode.SILU}
Tiles = dict[tuple[str, int], tuple | np.ndarray | None]
"""Per weight, prepared once per session: per K tile (NumPy's passes), fp16 (fp64 values, column norms, nonzero
blocks or None, exact_below) or int8 fp32 values; at K tile `PACKED`, the whole weight `fastmxm.pack`ed and,
fp16, its column norms (None: not packable)."""
PACKED = -1
Views = dict[tuple[int, bool], tuple[Ref, np.ndarray, np.ndarray]]
"""Per Ref of a graph (by identity) and direction: the Ref, the array and the view of it `view` made, kept for a
session: a tensor's array stays the same from step to step (every op writes into the array that holds it), so a
step reuses the views of the step before instead of building each anew (~5,000 per SmolLM2 step)."""
Uniform = dict[str, int]
"""Per tensor: the row u from which on every row is bit for bit row u (absent: not known). Kept for one run: set
by the ops that compute a whole tensor, found by a scan for a STATE tensor (the KV cache), moved past the last row
a write of part of the tensor touches, dropped on any other write."""


def view(t: TensorDef, ref: Ref, arr: np.ndarray, *, write: bool = False) -> np.ndarray:
    """The vectors `ref` names as a [blocks, rows, lanes] view of arr (train order is block by block, row by row),
    without a copy. A view to `write` may not name one vector twice."""
    rows = t.rows if ref.rows is None else ref.rows
    nb = t.blocks - ref.block0 if ref.blocks is None else ref.blocks
    if arr.shape != (t.rows, t.cols):
        raise InternalError(f"{t.name}: held as an array of shape {arr.shape}, declared [{t.rows}, {t.cols}]")
    if ref.step < 0 or ref.block_step < 0 or ref.row0 + (rows - 1) * ref.step >= t.rows or \
            ref.block0 + (nb - 1) * ref.block_step >= t.blocks:
        raise InternalError(f"{ref}: outside {t.name} [{t.rows} rows, {t.blocks} blocks]")
    if write and ((ref.block_step == 0 and nb > 1) or (ref.step == 0 and rows > 1)):
        raise InternalError(f"{ref}: a train cannot write one vector twice")
    base = np.ascontiguousarray(arr) if not write else arr
    if not base.flags.c_contiguous:
        raise InternalError(f"{t.name}: the fast path holds tensors as contiguous arrays")
    item = base.itemsize
    out = np.ndarray((nb, rows, LANES), base.dtype, buffer=base, offset=(ref.row0 * t.cols + ref.block0 * LANES) * item,
                     strides=(ref.block_step * LANES * item, ref.step * t.cols * item, item))
    if not write:
        out.flags.writeable = False
    return out


def cached_view(t: TensorDef, ref: Ref, arr: np.ndarray, views: Views, *, write: bool = False) -> np.ndarray:
    """`view`, from `views` when it holds this Ref's view of this very array."""
    key = (id(ref), write)
    hit = views.get(key)
    if hit is not None and hit[0] is ref and hit[1] is arr:
        return hit[2]
    out = view(t, ref, arr, write=write)
    if arr.flags.c_contiguous:  # else `view` read a copy, which the next step's values would not reach
        views[key] = (ref, arr, out)
    return out


def take(t: TensorDef, ref: Ref, arr: np.ndarray) -> np.ndarray:
    """The vectors `ref` names, [count, lanes], in train order (a copy)."""
    return view(t, ref, arr).reshape(-1, LANES)


def put(t: TensorDef, ref: Ref, arr: np.ndarray, vectors: np.ndarray) -> None:
    """Write vectors ([count, lanes] or [blocks, rows, lanes]), in train order, into the vectors `ref` names."""
    out = view(t, ref, arr, write=True)
    out[...] = vectors.reshape(out.shape)


def vxm(op: Vxm, a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    if op.op in UNARY:
        return nx.vxm_unary(op.op, a, op.dtype)
    if op.op is Opcode.CAST:
        return nx.convert(a, op.dtype, op.to)
    second = b if b is not None else nx.narrow(np.array(op.imm, np.float64 if op.dtype.is_float else np.int64),
                                               op.dtype)
    return nx.vxm_binary(op.op, a, second, op.dtype)


def matmul(a: np.ndarray, w: np.ndarray, slots: int, tile: Callable[[int], tuple],
           skip: frozenset[tuple[int, int]] = frozenset()) -> np.ndarray:
    """`fast_matmul`'s arithmetic, all N tiles of a K tile in one pass call (each column is its own exact sum,
    so grouping columns changes nothing): passes folded in K order, rows in blocks of `slots`. Each pass is
    `mxm_pass_fp16` (bit-identical to `mxm_pass`, faster for the few rows of a decode step). `skip`: the (K tile,
    N tile) pairs the schedule skips (all-zero tiles): they add nothing, and an N tile's sum starts at its first
    other K tile."""
    out = np.empty((a.shape[0], w.shape[1]), np.float32)
    if a.dtype == np.float16:  # once, not per pass: exact
        a = nx.from_fp16(a, np.float64)
    for m0 in range(0, a.shape[0], slots):
        passes = (nx.mxm_pass_fp16(a[m0:m0 + slots, kt * LANES:(kt + 1) * LANES], *tile(kt))
                  for kt in range(a.shape[1] // LANES))
        out[m0:m0 + slots] = fold(passes, DType.FP16, skip)
    return out


def fold(passes: Iterable[np.ndarray], dtype: DType, skip: frozenset[tuple[int, int]] = frozenset()) -> np.ndarray:
    """The accumulator after the passes [rows, N] of K tiles 0, 1, ... (fp32 addition for fp16, int32 wrap for
    int8), each N tile's sum starting at its first K tile not in `skip`."""
    acc, started = None, None
    for kt, product in enumerate(passes):
        if not skip:
            acc = product if acc is None else nx.accumulate(acc, product, dtype)
            continue
        if acc is None:
            acc, started = np.zeros_like(product), np.zeros(product.shape[1] // LANES, bool)
        for nt in range(len(started)):
            if (kt, nt) in skip:
                continue
            cols = slice(nt * LANES, (nt + 1) * LANES)
            acc[:, cols] = nx.accumulate(acc[:, cols], product[:, cols], dtype) if started[nt] else product[:, cols]
            started[nt] = True
    return acc


SUB = 64
"""Rows and columns of the sub-blocks a mostly-zero weight tile is cut into (a head's lanes)."""


def nonzero_blocks(w: np.ndarray) -> list[nx.Block] | None:
    """The SUB x SUB sub-blocks of a weight tile w [K, N] that hold a nonzero weight (consecutive ones in a row of
    sub-blocks merged), when at most half of them do — the attention's 0/1 head-sum matrix, whose head blocks are
    all ones; None for a dense tile (every model weight)."""
    k, n = w.shape
    if k % SUB or n % SUB:
        return None
    nonzero = (w != 0).reshape(k // SUB, SUB, n // SUB, SUB).any(axis=(1, 3))
    if nonzero.mean() > 0.5:
        return None
    blocks = []
    for i, row in enumerate(nonzero):
        cols = np.flatnonzero(row)
        for run in np.split(cols, np.flatnonzero(np.diff(cols) > 1) + 1) if len(cols) else []:
            rows, cols = slice(i * SUB, (i + 1) * SUB), slice(int(run[0]) * SUB, (int(run[-1]) + 1) * SUB)
            if not (w[rows, cols] == 1).all():  # shrunk to its nonzero rows and columns
                rows, cols = _tight(w[rows, cols].any(axis=1), rows), _tight(w[rows, cols].any(axis=0), cols)
            blocks.append(nx.Block(rows, cols, bool((w[rows, cols] == 1).all())))
    return blocks


def _tight(nonzero: np.ndarray, span: slice) -> slice:
    """The part of `span` from its first to its last index flagged `nonzero` (one flag per index of the span)."""
    at = np.flatnonzero(nonzero)
    return slice(span.start + int(at[0]), span.start + int(at[-1]) + 1)


def matmul_int8(a: np.ndarray, w: np.ndarray, tile: Callable[[int], np.ndarray]) -> np.ndarray:
    """The int8 MXM's arithmetic: each 320-deep pass's sum of products, exact, folded into the int32 accumulator
    in K order (wrapping). A pass is one fp32 matrix product: every product and partial sum is an integer of at
    most 320 * 127^2 < 2^24, so fp32 holds each exactly, in any order (`tile(kt)`: K tile kt as fp32)."""
    return fold(((a[:, kt * LANES:(kt + 1) * LANES].astype(np.float32) @ tile(kt)).astype(np.int32)
                 for kt in range(a.shape[1] // LANES)), DType.INT8)


def _store(tensors: dict[str, TensorDef], env: dict[str, np.ndarray], ref: Ref, vectors: np.ndarray) -> None:
    """Write a train's vectors into `ref` of its tensor."""
    put(tensors[ref.name], ref, _held(tensors, env, ref.name), vectors)


def run(graph: ChipGraph, env: dict[str, np.ndarray], *, slots: int, tiles: Tiles,
        received: list[np.ndarray] | None = None, views: Views | None = None) -> list[np.ndarray]:
    """Run `graph` on `env` (every tensor by name, updated in place). Returns what the chip sends. `views`: kept
    from run to run on the same env (default: none kept)."""
    tensors, sent, uniform = graph.tensors, [], {}
    views = {} if views is None else views
    for op in graph.ops:
        found: set[str] = set()  # the written tensors whose uniform row this op set
        if isinstance(op, Vxm | Chain):  # a chain's steps in order: what flows on its streams is what they compute
            for step in op.steps if isinstance(op, Chain) else (op,):
                _vxm_step(step, tensors, env, uniform, views)
                found.add(step.out.name)
        elif isinstance(op, LaneMix):
            terms = [(r, take(tensors[m.name], m, env[m.name])) for r, m in op.terms]
            _store(tensors, env, op.out, fast_lane_mix(take(tensors[op.x.name], op.x, env[op.x.name]), terms))
        elif isinstance(op, Matmul):
            _matmul_rows(op, tensors, env, slots, tiles, uniform)
            found.add(op.c)
        elif isinstance(op, Pair):  # side by side on the chip; independent, so in either order here
            for m in (op.west, op.east):
                _matmul_rows(m, tensors, env, slots, tiles, uniform)
                found.add(m.c)
        elif isinstance(op, RmsNorm):
            env[op.y] = fast_rmsnorm(env[op.x], env[op.w], op.n, op.eps, LANES)
        elif isinstance(op, InvRms):
            env[op.y] = fast_inv_rms(env[op.x], op.n, op.eps, LANES)
        elif isinstance(op, TokenScale):
            env[op.y] = fast_token_scale(env[op.x], LANES)
        elif isinstance(op, Scatter):
            position = int(env[op.index][0, 0])
            src = take(tensors[op.src.name], op.src, env[op.src.name])
            dst = env[op.dst]
            for j, vec in enumerate(src):
                dst[position, j * LANES:(j + 1) * LANES] = vec
            _written(tensors[op.dst], Ref(op.dst, row0=position, rows=1), uniform, None)
            found.add(op.dst)
        elif isinstance(op, Send):
            sent.append(env[op.src].copy())
        elif isinstance(op, Receive):
            env[op.dst] = (received or []).pop(0)
        else:
            raise InternalError(f"no fast path for {op!r}")
        for name in op.writes():
            if name not in found:
                uniform.pop(name, None)
    return sent


def _vxm_step(step: Vxm, tensors: dict[str, TensorDef], env: dict[str, np.ndarray], uniform: Uniform,
              views: Views) -> None:
    """One VXM op on its trains: on the rows up to the first of the uniform rows all its inputs share (that row
    copied on), when there are such rows and the output's vectors line up with the inputs'."""
    args = [cached_view(tensors[r.name], r, env[r.name], views) for r in step.ins]
    out = cached_view(tensors[step.out.name], step.out, _held(tensors, env, step.out.name), views, write=True)
    rows = args[0].shape[1]
    aligned = all(a.shape == out.shape for a in args)  # else trains of one length, cut into blocks differently
    u = max(_uniform_in(tensors[r.name], r, rows, env, uniform) for r in step.ins) if aligned else rows
    if u >= rows - 1:
        out[...] = _apply(step, [a.reshape(-1, LANES) for a in args] if not aligned else args).reshape(out.shape)
        _written(tensors[step.out.name], step.out, uniform, None)
        return
    part = _apply(step, [a[:, :u + 1] for a in args])
    out[:, :u + 1] = part
    out[:, u + 1:] = part[:, u:u + 1]
    _written(tensors[step.out.name], step.out, uniform, u)


def _apply(step: Vxm, args: list[np.ndarray]) -> np.ndarray:
    """`vxm` of the step on its one or two input arrays."""
    return vxm(step, args[0], args[1] if len(args) > 1 else None)


def _written(t: TensorDef, ref: Ref, uniform: Uniform, u: int | None) -> None:
    """Note a write of `ref`'s vectors, whose rows are uniform from u on (None: not known): a whole tensor takes
    u; a part leaves the tensor's uniform rows after the last row it writes."""
    if ref.row0 == 0 and ref.step == 1 and ref.rows in (None, t.rows) and ref.block0 == 0 and \
            ref.blocks in (None, t.blocks) and ref.block_step == 1:
        if u is None:
            uniform.pop(ref.name, None)
        else:
            uniform[ref.name] = u
    elif ref.name in uniform:
        last = ref.row0 + ((t.rows if ref.rows is None else ref.rows) - 1) * ref.step
        uniform[ref.name] = max(uniform[ref.name], last + 1)


def _uniform_in(t: TensorDef, ref: Ref, rows: int, env: dict[str, np.ndarray], uniform: Uniform) -> int:
    """The first of the `rows` rows `ref` carries from which on they are all one row (`rows`: none is)."""
    if ref.step == 0:
        return 0
    if ref.name not in uniform and t.role is Role.STATE:
        uniform[ref.name] = uniform_from(env[ref.name])
    if ref.name not in uniform:
        return rows
    return min(rows, max(0, -(-(uniform[ref.name] - ref.row0) // ref.step)))


def uniform_from(arr: np.ndarray) -> int:
    """The first row of arr [rows, cols] from which on every row is bit for bit the last one."""
    bits = arr.view(f"u{arr.itemsize}")  # bits, not values: -0 and +0 are one value, not one row
    differs = np.flatnonzero(~(bits == bits[-1]).all(axis=1))
    return int(differs[-1]) + 1 if len(differs) else 0


def _held(tensors: dict[str, TensorDef], env: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The array holding tensor `name` (made afresh when another program on the chip used the name for another
    shape)."""
    t = tensors[name]
    held = env.get(name)
    if held is None or held.shape != (t.rows, t.cols) or held.dtype != t.dtype.numpy:
        env[name] = held = np.zeros((t.rows, t.cols), t.dtype.numpy)
    return held


def _matmul_rows(op: Matmul, tensors: dict[str, TensorDef], env: dict[str, np.ndarray], slots: int,
                 tiles: Tiles, uniform: Uniform) -> None:
    """`_matmul` into env, on the rows of `a` up to its uniform row (that row's product copied on)."""
    rows = env[op.a].shape[0]
    u = uniform.get(op.a, rows)
    c = _held(tensors, env, op.c)  # the same array every step, so that views of it can be kept
    if u >= rows - 1:
        c[...] = _matmul(op, tensors, env, slots, tiles)
        return
    part = _matmul(op, tensors, env, slots, tiles, rows=u + 1)
    c[:u + 1] = part
    c[u + 1:] = part[u]
    uniform[op.c] = u


def _packed(w: np.ndarray, dtype: DType) -> tuple[np.ndarray, np.ndarray | None] | None:
    """A weight `fastmxm.pack`ed, with its column norms (fp16), for the compiled passes; None for one they do not
    take: with an inf or a nan, or with a mostly-zero K tile (the attention's 0/1 head sums, whose sums cancel too
    much for the bound: NumPy's passes sum their blocks exactly)."""
    if dtype is DType.FP16 and any(nonzero_blocks(w[k:k + LANES]) is not None for k in range(0, len(w), LANES)):
        return None
    packed = fastmxm.pack(w, dtype)
    if packed is None:
        return None
    return packed, fastmxm.column_norms(packed) if dtype is DType.FP16 else None


def _matmul(op: Matmul, tensors: dict[str, TensorDef], env: dict[str, np.ndarray], slots: int,
            tiles: Tiles, rows: int | None = None) -> np.ndarray:
    """One matmul's product (of `a`'s first `rows` rows, all by default), its weight's K tiles prepared once per
    session (`tiles`): a decode step's row or two by `fastmxm`'s compiled passes, more rows by NumPy's."""
    w, a = env[op.w], env[op.a][:rows]
    dtype = tensors[op.w].dtype
    key = (op.w, PACKED)
    if len(a) <= fastmxm.ROWS and key not in tiles:
        tiles[key] = _packed(w, dtype)
    if len(a) <= fastmxm.ROWS and tiles[key] is not None:
        packed, norms = tiles[key]
        passes = fastmxm.int8_passes(a, packed) if dtype is DType.INT8 else fastmxm.fp16_passes(a, packed, norms)
        return fold(passes, dtype, op.skip)
    if dtype is DType.INT8:

        def tile8(kt: int) -> np.ndarray:
            """K tile kt of the int8 weight as fp32."""
            key = (op.w, kt)
            if key not in tiles:
                tiles[key] = w[kt * LANES:(kt + 1) * LANES].astype(np.float32)
            return tiles[key]

        return matmul_int8(a, w, tile8)

    def tile(kt: int) -> tuple:
        """K tile kt of the fp16 weight as the pass wants it."""
        key = (op.w, kt)
        if key not in tiles:
            values = w[kt * LANES:(kt + 1) * LANES].astype(np.float64)
            tiles[key] = (values, nx.column_norms(values), nonzero_blocks(values), nx.exact_below(values))
        return tiles[key]

    return matmul(a, w, slots, tile, op.skip)
