"""Precision: the number formats a compiled model computes in, the weights' stored form, and an interpreter of the
tensor IR with the chip's numerics (the spec that lowered programs must match).

Where each format comes from (lpu-architecture.md 1.5, 5.2, 7 #14; docs/isa.md "Numerics"):

* The MXM multiplies fp16 x fp16 (one 320-deep pass summed exactly and rounded once to fp32, passes accumulated in
  fp32) or int8 x int8 (exact, into int32). Both `matmul` and the attention `batch_matmul`s run there.
* The VXM computes in fp32: norms, softmax, RoPE, SiLU, residual adds, scales, and the int8 (de)quantisation
  arithmetic. The interpreter runs those ops with the reference rules (`openlpu.ir.interpret.RULES`) in float32;
  bit-exact VXM transcendentals are the kernels' concern, not this pass's.
* Weights are quantised once, offline, by `quantize_weights`: every matrix (2-D weight: the projections and the
  embedding table, which is also the tied output layer) takes the weight format; vectors (norm scales) stay fp32.

`Precision()` is what the hardware and GroqFlow do by default: fp16 weights and fp16 matmul inputs, fp32 out.
See `Precision` for the int8 choices and what each one costs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from openlpu.errors import UserError
from openlpu.frontends.gguf import GGUFModel
from openlpu.frontends.llama import Phase
from openlpu.ir import Graph, IRError, Node, Op, verify
from openlpu.ir.interpret import RULES, Rule, RuleError, bind_value, last_uses
from openlpu.isa.opcodes import Opcode
from openlpu.isa.types import DType
from openlpu.sim import numerics as nx

PASS_DEPTH = 320
"""K rows of one MXM pass (a 320 x 320 plane): the depth over which products are summed before one rounding."""

FORMATS = ("fp16", "int8")
"""Matmul operand formats the MXM multiplies."""

INT8_MAX = 127
"""Symmetric int8 range: -127..127 (-128 is never produced, so negation cannot overflow)."""

_COLUMNS_PER_CALL = 8192
"""Output columns per `mxm_pass` call: bounds its fp64 temporaries (a few [320, columns] arrays) to ~60 MiB."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Precision:
    """How the compiled model's matmuls compute; everything else runs in fp32 on the VXM.

    `weights` -- the stored form of every weight matrix:

    * ``"fp16"`` (default): 2 bytes per weight, relative rounding error <= 2**-11 per weight.
    * ``"int8"``: 1 byte per weight plus one fp32 scale per output channel (row of the [out, in] matrix):
      scale = max|row| / 127, q = round-half-even(w / scale). Error <= scale / 2 per weight, so a row with one
      large outlier quantises all its other weights coarsely. Halves SRAM and weight-load bandwidth.

    `activations` -- the format the matmul inputs enter the MXM in:

    * ``"fp16"`` (default): the VXM rounds each fp32 activation to fp16 (relative error <= 2**-11, saturating at
      +-65504). With int8 weights this is weight-only quantisation ("W8A16"): int8 values are exact in fp16, the
      MXM runs in fp16 mode and the fp32 result is multiplied by the channel scale. It costs what fp16 costs in
      MXM time (fp16 runs at a quarter of the int8 rate, lpu-architecture 1.5) plus a VXM int8 -> fp16 widening
      of every weight tile each time it is loaded.
    * ``"int8"`` (needs int8 weights): per-token dynamic symmetric quantisation. The VXM takes max|x| over each
      input row in fp32, scale = max|x| * fp32(1/127), q = round-half-even(x * recip(scale)) (the VXM has no
      divide); the MXM sums q . w_q exactly in int32; the VXM converts the sum to fp32 and multiplies it by
      fp32(activation scale x channel scale). Error <= scale / 2 per activation: an outlier channel coarsens the
      whole token. It costs a row max-reduction before every matmul (a VXM pass and its latency) and the rescale
      after, and gives the full int8 MXM rate.

    The attention matmuls (q . k^T and p . v) multiply two activations; they always run in fp16 mode (both
    operands rounded to fp16, fp32 scores and outputs), whatever `activations` says: the scores leave the MXM
    and the softmax runs in fp32, which matches Groq's "fp32 attention logits" (lpu-architecture 5.2). Rounding
    the K/V to fp16 at the matmul equals keeping an fp16 KV cache.
    """

    weights: str = "fp16"
    activations: str = "fp16"

    def __post_init__(self) -> None:
        for field in ("weights", "activations"):
            if getattr(self, field) not in FORMATS:
                raise UserError(
                    f"precision: {field}={getattr(self, field)!r} is not a matmul format; choose one of "
                    f"{', '.join(FORMATS)}"
                )
        if self.activations == "int8" and self.weights != "int8":
            raise UserError(
                "precision: activations='int8' needs weights='int8' (the MXM multiplies int8 x int8 or "
                "fp16 x fp16); set weights='int8' or activations='fp16'"
            )

    def __str__(self) -> str:
        return f"w{self.weights}-a{self.activations}"


FP16 = Precision()
"""The hardware default: fp16 weights and activations, fp32 accumulation."""
W8A16 = Precision(weights="int8")
"""Weight-only int8: int8 weights with per-channel scales, fp16 activations."""
INT8 = Precision(weights="int8", activations="int8")
"""Full int8: per-channel int8 weights, per-token dynamic int8 activations, int32 accumulation."""


@dataclass(frozen=True, slots=True, eq=False)
class StoredTensor:
    """One weight as the chip stores it: `data` fp16 or int8 [out, in] for matrices (fp32 for vectors), and for
    int8 `scale`, fp32 [out], one per output channel, so that weight[n, k] ~= data[n, k] * scale[n]."""

    data: np.ndarray
    scale: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def dequantize(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The float32 values (of only `rows`, an index array of any shape, if given), computed in fp32."""
        data = self.data if rows is None else self.data[rows]
        if self.scale is None:
            return data.astype(np.float32, copy=False)
        scale = self.scale if rows is None else self.scale[rows]
        return data.astype(np.float32) * scale[..., None]


def quantize_int8_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: (q int8 [N, K], scale fp32 [N]) with scale = fp32(max|row| / 127) and
    q = round-half-even(w / scale) in fp64 (offline, on the host), so |q * scale - w| <= scale / 2 exactly.
    All-zero rows get scale 1."""
    amax = np.max(np.abs(w), axis=-1).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(INT8_MAX), np.float32(1)).astype(np.float32)
    q = np.rint(w.astype(np.float64) / scale[:, None].astype(np.float64))
    return np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8), scale


def quantize_weights(weights: Mapping[str, np.ndarray], precision: Precision = FP16) -> dict[str, StoredTensor]:
    """Every weight in its stored form: matrices (2-D) as `precision.weights` says, vectors as fp32."""
    stored: dict[str, StoredTensor] = {}
    for name, w in weights.items():
        w = np.asarray(w, np.float32)
        if w.ndim != 2:
            stored[name] = StoredTensor(w)
        elif precision.weights == "int8":
            stored[name] = StoredTensor(*quantize_int8_rows(w))
        else:
            stored[name] = StoredTensor(nx.convert(w, DType.FP32, DType.FP16))
    return stored


def to_fp16(x: np.ndarray) -> np.ndarray:
    """The VXM's fp32 -> fp16 cast: round to nearest even, saturating at +-65504."""
    return x if x.dtype == np.float16 else nx.convert(x, DType.FP32, DType.FP16)


def quantize_tokens(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row dynamic int8 of activations x [M, K], in VXM fp32 arithmetic: (q int8 [M, K], scale fp32 [M]).

    scale = max|x| * fp32(1/127); q = round-half-even(x * recip(scale)), clipped to +-127. Zero rows: scale 1.
    """
    amax = np.max(np.abs(x), axis=-1) if x.shape[-1] else np.zeros(x.shape[:-1], np.float32)
    scale = nx.vxm_binary(Opcode.MUL, amax, np.float32(1 / INT8_MAX), DType.FP32)
    scale = np.where(amax > 0, scale, np.float32(1)).astype(np.float32)
    inverse = nx.vxm_unary(Opcode.RECIP, scale, DType.FP32)
    scaled = nx.vxm_binary(Opcode.MUL, x, inverse[:, None], DType.FP32)
    return np.clip(nx.convert(scaled, DType.FP32, DType.INT8), -INT8_MAX, INT8_MAX), scale


def _pad_depth(x: np.ndarray, axis: int) -> np.ndarray:
    """`x` zero-padded along `axis` to one full pass depth."""
    short = PASS_DEPTH - x.shape[axis]
    if not short:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, short)
    return np.pad(x, pad)


def mxm_matmul(a: np.ndarray, b: np.ndarray, dtype: DType) -> np.ndarray:
    """a [M, K] @ b [K, N] as the MXM computes it: K cut into `PASS_DEPTH`-deep passes (the last zero-padded),
    each pass `numerics.mxm_pass` (one rounding to fp32, or exact int32), passes accumulated in K order with
    `numerics.accumulate`. Returns [M, N] fp32 (fp16 operands) or int32 (int8 operands).

    Rows and columns are independent in `mxm_pass`, so all M rows go in one call and N is cut only to bound
    memory; neither changes a bit of the result.
    """
    (m, k), n = a.shape, b.shape[1]
    out = np.empty((m, n), np.int32 if dtype is DType.INT8 else np.float32)
    cols = _COLUMNS_PER_CALL
    for n0 in range(0, n, cols):
        acc = None
        for k0 in range(0, max(k, 1), PASS_DEPTH):
            a_pass = _pad_depth(a[:, k0 : k0 + PASS_DEPTH], 1)
            part = nx.mxm_pass(a_pass, _pad_depth(b[k0 : k0 + PASS_DEPTH, n0 : n0 + cols], 0), dtype)
            acc = part if acc is None else nx.accumulate(acc, part, dtype)
        out[:, n0 : n0 + cols] = acc
    return out


def _weight_matmul(x: np.ndarray, w: StoredTensor, precision: Precision) -> np.ndarray:
    """x [M, K] fp32 times a stored weight [N, K] transposed: [M, N] fp32."""
    if w.scale is None:
        return mxm_matmul(to_fp16(x), w.data.T, DType.FP16)
    if precision.activations == "int8":
        q, x_scale = quantize_tokens(x)
        acc = nx.convert(mxm_matmul(q, w.data.T, DType.INT8), DType.INT32, DType.FP32)
        return acc * (x_scale[:, None] * w.scale[None, :])
    # int8 values are exact in fp16, and mxm_pass widens both operands to fp64 first: skip the fp16 copy
    return mxm_matmul(to_fp16(x), w.data.T, DType.FP16) * w.scale[None, :]


def _plain(value: np.ndarray | StoredTensor) -> np.ndarray:
    return value.dequantize() if isinstance(value, StoredTensor) else value


def _matmul(precision: Precision, node: Node, args: Sequence[np.ndarray | StoredTensor]) -> np.ndarray:
    x, w = args
    rows = _plain(x).reshape(-1, x.shape[-1])
    if isinstance(w, StoredTensor):
        out = _weight_matmul(rows, w, precision)
    else:  # activation x activation: both operands rounded to fp16
        out = mxm_matmul(to_fp16(rows), to_fp16(w).T, DType.FP16)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _batch_matmul(node: Node, args: Sequence[np.ndarray | StoredTensor]) -> np.ndarray:
    a, b = (to_fp16(_plain(v)) for v in args)
    if node.attr("transpose_b"):
        b = b.transpose(0, 2, 1)
    return np.stack([mxm_matmul(a[i], b[i], DType.FP16) for i in range(a.shape[0])])


def _embedding(node: Node, args: Sequence[np.ndarray | StoredTensor]) -> np.ndarray:
    table, ids = args
    rows = table.shape[0]
    bad = ids[(ids < 0) | (ids >= rows)]
    if bad.size:
        raise RuleError(f"token id {int(bad[0])} is outside the table's {rows} rows")
    return table.dequantize(ids) if isinstance(table, StoredTensor) else table[ids]


def _on_plain(rule: Rule) -> Rule:
    """`rule` applied to fp32 arrays: stored weights (vectors here) are dequantised first."""
    return lambda node, args: rule(node, [_plain(a) for a in args])


def chip_rules(precision: Precision = FP16) -> dict[Op, Rule]:
    """The interpreter's rule table: the reference rules (fp32) with the MXM ops and the embedding gather
    replaced by chip numerics on stored weights."""
    rules = {op: _on_plain(rule) for op, rule in RULES.items()}
    rules[Op.MATMUL] = partial(_matmul, precision)
    rules[Op.BATCH_MATMUL] = _batch_matmul
    rules[Op.EMBEDDING] = _embedding
    return rules


def _bind_weights(graph: Graph, weights: Mapping[str, StoredTensor], precision: Precision) -> dict:
    want = np.dtype(np.int8 if precision.weights == "int8" else np.float16)
    env: dict[str, StoredTensor] = {}
    for decl in graph.params:
        w = weights.get(decl.name)
        if not isinstance(w, StoredTensor):
            raise IRError(
                f"graph {graph.name!r}: param {decl.name!r} needs its stored form; pass "
                f"quantize_weights(weights, precision) as `weights`"
            )
        if w.shape != decl.shape or (w.data.ndim == 2 and w.data.dtype != want):
            raise IRError(
                f"param {decl.name!r}: stored as {w.data.dtype}{list(w.shape)}, but precision {precision} "
                f"needs {want if w.data.ndim == 2 else 'float32'}{list(decl.shape)}; quantize the weights with "
                f"the same precision"
            )
        env[decl.name] = w
    return env


def _run_node(node: Node, rules: Mapping[Op, Rule], env: dict) -> np.ndarray:
    try:
        result = rules[node.op](node, [env[name] for name in node.inputs])
    except RuleError as err:
        raise IRError(f"node {node.name!r} ({node.op.value}): {err}") from None
    want = np.dtype(np.int32 if node.dtype == "int32" else np.float32)
    if result.shape != node.shape or result.dtype != want:
        raise IRError(
            f"node {node.name!r} ({node.op.value}): chip rule gave {result.dtype}{list(result.shape)}, "
            f"the node declares {node.dtype}{list(node.shape)} (a bug in the rule)"
        )
    return result


def interpret_chip(
    graph: Graph,
    inputs: Mapping[str, object],
    weights: Mapping[str, StoredTensor],
    precision: Precision = FP16,
    *,
    keep_all: bool = False,
) -> dict[str, np.ndarray]:
    """Run `graph` with the chip's numerics and return its outputs (float32 / int32) by name.

    `weights` is `quantize_weights(float_weights, precision)` (it may hold more tensors than the graph reads);
    `inputs` as for `openlpu.ir.interpret`. Matmuls run as `mxm_matmul`; everything else in fp32.
    """
    verify(graph)
    unknown = sorted(set(inputs) - {v.name for v in graph.inputs})
    if unknown:
        raise IRError(
            f"graph {graph.name!r} has no input {unknown[0]!r}; its inputs are {[v.name for v in graph.inputs]}"
        )
    env: dict = _bind_weights(graph, weights, precision)
    for decl in graph.inputs:
        if decl.name not in inputs:
            raise IRError(f"graph {graph.name!r}: no data for input {decl.name!r}; pass it in `inputs`")
        env[decl.name] = bind_value("input", decl, inputs[decl.name], np.dtype(np.float32))
    rules, drops = chip_rules(precision), ({} if keep_all else last_uses(graph))
    for index, node in enumerate(graph.nodes):
        env[node.name] = _run_node(node, rules, env)
        for name in drops.get(index, ()):
            del env[name]
    return {name: _plain(env[name]) for name in (env if keep_all else graph.outputs)}


Runner = Callable[[Graph, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
"""Runs one graph on its inputs: ``interpret`` with float weights, or ``interpret_chip`` with stored ones."""


def step_logits(
    model: GGUFModel, run: Runner, prompt_ids: Sequence[int], steps: int, *, forced: Sequence[int] | None = None
) -> np.ndarray:
    """Logits [steps, vocab]: row 0 after prefilling `prompt_ids`, row i after one decode step on token i-1.

    The token fed at step i is `forced[i - 1]` (teacher forcing, e.g. another model's greedy tokens) or, with no
    `forced`, the argmax of row i-1 (greedy generation, never stopping early). The KV cache holds exactly the
    prompt plus `steps` tokens.
    """
    n, cfg = len(prompt_ids), model.config
    if steps < 1 or (forced is not None and len(forced) < steps - 1):
        got = "no forced tokens" if forced is None else f"{len(forced)} forced tokens"
        raise UserError(f"step_logits: {steps} steps with {got}; need steps >= 1 and steps - 1 forced tokens")
    out = run(
        model.graph(Phase.PREFILL, tokens=n),
        {"tokens": np.asarray(prompt_ids, np.int32), "positions": np.arange(n, dtype=np.int32)},
    )
    cache: dict[str, np.ndarray] = {}
    for i in range(cfg.n_layers):
        for kv in ("k", "v"):
            cache[f"blk.{i}.{kv}_cache"] = np.zeros((cfg.n_kv_heads, n + steps, cfg.head_dim), np.float32)
            cache[f"blk.{i}.{kv}_cache"][:, :n] = out[f"blk.{i}.{kv}"]
    graph, logits = model.graph(Phase.DECODE, context=n + steps), [out["logits"][0]]
    for step in range(1, steps):
        token = int(np.argmax(logits[-1])) if forced is None else int(forced[step - 1])
        position = np.array([n + step - 1], np.int32)
        out = run(graph, {"tokens": np.array([token], np.int32), "positions": position, **cache})
        cache = {name: out[name + "_next"] for name in cache}
        logits.append(out["logits"][0])
    return np.stack(logits)


def chip_runner(weights: Mapping[str, StoredTensor], precision: Precision = FP16) -> Runner:
    """A `Runner` with chip numerics on `weights` (from `quantize_weights(..., precision)`)."""
    return lambda graph, inputs: interpret_chip(graph, inputs, weights, precision)
