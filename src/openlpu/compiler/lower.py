"""Lowering a llama decoder to chip-level operations: decomposition, the fp16 precision choice, and weight layout.

One decode step (one token at position t against a KV cache of `context` rows) becomes, per block:

    n   = rsqrt(mean(x^2) + eps)                         InvRms (x west, n east): the norm's lane reduction,
                                                          beside the matmul and RoPE, whose results it scales
    qkv = fp16(x * attn_norm) @ [Wq | Wk | Wv]           one MXM matmul, fp32 out (q: its heads' blocks; k, v: one
                                                          block each, the KV heads side by side)
    r   = qkv * cos + rot(qkv, -dh/2) * sin_neg          RoPE in one LaneMix: rotate_half as two SXM lane rotations,
          + rot(qkv, +dh/2) * sin_pos                     the signs and the halves in the host's sin rows (v: cos 1)
    kx  = sum_s mask_s * rot(r[k, v], s)                 LaneMix: each KV head copied to the lanes of its query heads
    q = n * r[q];  K[t], V[t] = n * kx[k], n * kx[v]     the norm's scaling (RoPE and the expansion are linear);
                                                          scatters at the host-given position
    s   = rowsum64(K * q)                                scores: products on the VXM split hi + lo in fp16 in
                                                          the same pass through the ALU ranks (a Chain), summed
                                                          per head by a 0/1 matrix on both MXMs at once (hi
                                                          west, lo east: a Pair), then hi + lo + the mask of
                                                          unwritten rows on the VXM (one Chain)
    p   = exp(s - max_rows s);  o = sum_rows(p * V) / sum_rows(p)     trees over rows on the VXM (exp(s - m) and
                                                          p * V: one Chain; each level of the two sums: one)
    x  += fp16(o) @ Wo;  x += fp16(silu(g) * u) @ Wd  with g, u = n2 * (fp16(x * ffn_norm) @ Wg, @ Wu) on the
                                                          two MXMs at once (a Pair: Wg and Wu sit on opposite
                                                          sides), n2 this x's inverse rms

A norm followed by a matmul is computed as rmsnorm(x, w) @ W = n * ((x * w) @ W) (`_normed`): n is a scalar per
row, so the matmul need not wait for the lane reduction that computes it (four SXM round trips); in attention
the scaling waits past RoPE and the KV heads' expansion too.

The weights hold the model's columns once (no rotated or repeated copies); the cache keeps one row per position
with the K and V of every *query* head (the expansion above), so every attention vector lines up lane for lane
with q, and the only operation that mixes lanes is the per-head sum, which the MXM does. Positions past t are
masked by a per-chip mask (`attention_mask`: -30000 in every score lane of an unwritten row, 0 in a written one;
each step scatters a zero row at its position), added to the scores in the pass that adds their two halves: exp
of such a score is exactly 0. A prefill's query attends over its written rows alone and needs no mask. The
1/sqrt(head_dim) scale is folded into q's cos and sin rows (a power of two: exact).

Precision (fp16, the default): weights fp16, every matmul input rounded to fp16, fp32 accumulation; everything on
the VXM in fp32; the KV cache in fp32. int8: weights int8 per output column (channel) with fp32 scales; each
projection's input (x * w for the normed ones) quantised per token on the chip (`_Graph.quantize`), the int32
sums rescaled in fp32 (`_Graph.dequantize`); attention as in fp16.

Hemispheres: a block's five weights sit on alternating sides from block to block (`layer_sides`), so the two
hemispheres' weight bands fill evenly; gate and up always on opposite sides, so that they multiply at once. An
ALU reads streams of both directions, so a VXM operation's inputs may sit on either side (no copies).

The host writes, before each step: the token's embedding row (fp32, first chip), the cos and sin rows of its
position in each hemisphere and the position itself (every chip). It reads the logits after the step.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np

from openlpu.compiler.chipgraph import (
    Chain,
    ChipGraph,
    InvRms,
    LaneMix,
    Matmul,
    Operation,
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
from openlpu.compiler.precision import quantize_int8_rows
from openlpu.errors import ConfigError, DoesNotFitError, InternalError
from openlpu.frontends.gguf import GGUFModel
from openlpu.frontends.llama import LlamaConfig
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.ir.interpret import rope_tables
from openlpu.isa.opcodes import Opcode
from openlpu.isa.types import DType
from openlpu.kernels.lanemix import MAX_TERMS
from openlpu.kernels.matmul import zero_tiles

LANES = 320
F16, F32, I8, I16, I32 = DType.FP16, DType.FP32, DType.INT8, DType.INT16, DType.INT32
W, E = Hemisphere.W, Hemisphere.E
MASK, MASK_SIDE = "attn_mask", W  # the decode step's mask of unwritten cache rows, one per chip
MASK_SCORE = -30000.0  # added to the score of an unwritten cache row: exp(score + MASK_SCORE - max) is 0 in fp32
#: Which hemisphere's MXM holds each of a block's weights, in even blocks of a chip; odd ones mirror it.
WEIGHT_SIDE = {"qkv": W, "o": E, "g": W, "u": E, "down": E}


def other(h: Hemisphere) -> Hemisphere:
    return E if h is W else W


def padded(n: int) -> int:
    return math.ceil(n / LANES) * LANES


@dataclass(frozen=True)
class Dims:
    """The model's sizes as the chip lays them out."""

    cfg: LlamaConfig
    context: int

    @property
    def d(self) -> int:
        return self.cfg.hidden_size

    @property
    def dp(self) -> int:
        return padded(self.cfg.hidden_size)

    @property
    def qdim(self) -> int:
        return self.cfg.n_heads * self.cfg.head_dim

    @property
    def qp(self) -> int:
        return padded(self.qdim)

    @property
    def fp(self) -> int:
        return padded(self.cfg.ffn_size)

    @property
    def qb(self) -> int:
        """Column blocks of q (and of the expanded K and V)."""
        return self.qp // LANES


def check_model(cfg: LlamaConfig, context: int) -> None:
    """What this lowering supports, with a fix for what it does not."""
    problems = []
    if cfg.hidden_size != cfg.n_heads * cfg.head_dim:
        problems.append(f"hidden size {cfg.hidden_size} != heads x head_dim")
    if LANES % cfg.head_dim:
        problems.append(f"head_dim {cfg.head_dim} does not divide the {LANES} lanes")
    if cfg.n_kv_heads * cfg.head_dim > LANES:
        problems.append(f"{cfg.n_kv_heads} KV heads of {cfg.head_dim} lanes do not fit one {LANES}-lane block")
    elif not problems and max(len(s) for s in kv_shifts(cfg)) > MAX_TERMS:
        problems.append(f"a block of query heads draws on its KV heads at more than {MAX_TERMS} lane shifts")
    if problems:
        raise ConfigError("the chip lowering supports llama models whose heads tile the 320 lanes: " +
                          "; ".join(problems))
    if context < 2 or context % 2 or context > 8192:
        raise ConfigError(f"context {context}: the compiled context must be an even number from 2 to 8192 "
                          "(the scores' MXM passes write their rows in pairs)")
    if context > cfg.context_length:
        raise ConfigError(f"context {context} is longer than the model's {cfg.context_length} positions")


# -- weights in the chip's layout ----------------------------------------------------------------------------------


def _columns(blocks: list[np.ndarray], rows: int, widths: list[int], dtype: type = np.float16) -> np.ndarray:
    """Stack column groups, each padded to its width, under `rows` rows (zero padding): fp16, or `dtype`."""
    out = np.zeros((rows, sum(widths)), dtype)
    c = 0
    for b, width in zip(blocks, widths):
        out[: b.shape[0], c: c + b.shape[1]] = b
        c += width
    return out


def layer_shapes(dims: Dims) -> dict[str, tuple[int, int]]:
    """[K, N] of each of a block's MXM weights as `layer_weights` lays them out."""
    return {"qkv": (dims.dp, dims.qp + 2 * LANES), "o": (dims.qp, dims.dp), "g": (dims.dp, dims.fp),
            "u": (dims.dp, dims.fp), "down": (dims.fp, dims.dp)}


def head_columns(vocab: int) -> tuple[int, int]:
    """Columns of the LM head's west half and of the whole head: whole 320-lane blocks, split evenly."""
    blocks = math.ceil(vocab / LANES)
    return (blocks + 1) // 2 * LANES, blocks * LANES


def layer_weights(model: GGUFModel, i: int, dims: Dims, dtype: str = "fp16") -> dict[str, np.ndarray]:
    """Block i's weights as the chip stores them ([K padded, N laid out], fp16; or int8 with one fp32 scale per
    column in `<name>_scale` [1, N]), and its norm rows (fp32)."""
    w = model.weights
    p = f"blk.{i}."
    wq, wk, wv = (w[p + f"attn_{n}.weight"].T for n in "qkv")
    store = np.float32 if dtype == "int8" else np.float16
    mats = {
        "qkv": _columns([wq, _kv_block(wk, dims.cfg), _kv_block(wv, dims.cfg)], dims.dp, [dims.qp, LANES, LANES],
                        store),
        "o": _columns([w[p + "attn_output.weight"].T], dims.qp, [dims.dp], store),
        "g": _columns([w[p + "ffn_gate.weight"].T], dims.dp, [dims.fp], store),
        "u": _columns([w[p + "ffn_up.weight"].T], dims.dp, [dims.fp], store),
        "down": _columns([w[p + "ffn_down.weight"].T], dims.fp, [dims.dp], store),
    }
    return {**(_int8(mats) if dtype == "int8" else mats), "attn_norm": _row(w[p + "attn_norm.weight"], dims.dp),
            "ffn_norm": _row(w[p + "ffn_norm.weight"], dims.dp)}


def _kv_block(w: np.ndarray, cfg: LlamaConfig) -> np.ndarray:
    """KV heads' columns [K, G * Dh] at their lanes of one block (`kv_lanes`), zero between them."""
    out = np.zeros((w.shape[0], LANES), w.dtype)
    for j, at in enumerate(kv_lanes(cfg)):
        out[:, at:at + cfg.head_dim] = w[:, j * cfg.head_dim:(j + 1) * cfg.head_dim]
    return out


def _int8(mats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each fp32 [K, N] layout as int8 per output column (channel), with its scales as a row `<name>_scale`:
    the column's max|w| / 127, as `quantize_int8_rows` does for [out, in] rows: the layout's columns are the
    model's channels, quantised; all-zero padding columns get scale 1."""
    out = {}
    for name, m in mats.items():
        q, scale = quantize_int8_rows(m.T)
        out[name], out[name + "_scale"] = np.ascontiguousarray(q.T), scale[None, :]
    return out


def _row(v: np.ndarray, cols: int) -> np.ndarray:
    out = np.zeros((1, cols), np.float32)
    out[0, : v.size] = v.ravel()
    return out


def head_weights(model: GGUFModel, dims: Dims, dtype: str = "fp16") -> dict[str, np.ndarray]:
    """The final norm row and the LM head [D padded, vocab padded] (the tied embedding when there is no
    output.weight), cut into a west and an east half of whole column blocks (int8: with their scale rows)."""
    w = model.weights
    table = w.get("output.weight", w["token_embd.weight"])
    west, total = head_columns(table.shape[0])
    full = _columns([table.T], dims.dp, [total], np.float32 if dtype == "int8" else np.float16)
    halves = {"head_w": full[:, :west], "head_e": full[:, west:]}
    return {**(_int8(halves) if dtype == "int8" else halves), "output_norm": _row(w["output_norm.weight"], dims.dp)}


def score_matrix(dims: Dims) -> np.ndarray:
    """[qp, qp] fp16: 1 where row and column are lanes of one head (heads never cross a 320-lane block, so the
    tiles between blocks are all zero and skipped). Each hemisphere holds a copy (`scores_ones_w` sums the
    products' lo halves, `_e` the hi halves)."""
    cfg, qp = dims.cfg, dims.qp
    lane = np.arange(qp)
    used = lane < dims.qdim
    same = (lane[:, None] // cfg.head_dim == lane[None, :] // cfg.head_dim) & used[:, None] & used[None, :]
    return same.astype(np.float16)


@functools.cache
def _score_skip(dims: Dims) -> frozenset[tuple[int, int]]:
    """The head-sum matrix's all-zero tiles (heads never cross a 320-lane block): the matmul skips them."""
    return zero_tiles(score_matrix(dims))


def attention_mask(dims: Dims) -> np.ndarray:
    """The decode step's mask as loaded: [context, qp], MASK_SCORE in every score lane of every row (no cache row
    written yet); each step zeroes the row of its position, so the written rows add 0 to their scores."""
    mask = np.zeros((dims.context, dims.qp), np.float32)
    mask[:, :dims.qdim] = MASK_SCORE
    return mask


ROPE_INPUTS = ("cos", "sin_neg", "sin_pos")


def rope_terms(cfg: LlamaConfig, side: Hemisphere) -> tuple[tuple[int, str], ...]:
    """RoPE's LaneMix terms: (lane rotation, host row) — x * cos + rot(x, -dh/2) * sin_neg + rot(x, dh/2) * sin_pos,
    so each head's first half gets x1 cos - x2 sin and its second x2 cos + x1 sin (rotate_half)."""
    half = cfg.head_dim // 2
    return tuple((r, f"{name}_{side.value}") for r, name in zip((0, -half, half), ROPE_INPUTS))


def rope_rows(cfg: LlamaConfig, dims: Dims, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The RoPE terms' rows over [q | k | v] (q's scaled by 1/sqrt(head_dim), exact: a power of two; v's cos 1
    and sin 0, so v passes unchanged) at each position, for each hemisphere."""
    cos, sin = rope_tables(np.asarray(positions), cfg.head_dim, cfg.rope_base)
    first = np.arange(cfg.head_dim) < cfg.head_dim // 2
    tables = {"cos": cos, "sin_neg": np.where(first, -sin, 0), "sin_pos": np.where(first, 0, sin)}
    scale = np.float32(cfg.head_dim ** -0.5)
    rows = {}
    for name, table in tables.items():
        t = table.astype(np.float32)
        out = np.zeros((len(t), dims.qp + 2 * LANES), np.float32)
        out[:, : dims.qdim] = np.tile(t, (1, cfg.n_heads)) * scale
        for at in kv_lanes(cfg):
            out[:, dims.qp + at: dims.qp + at + cfg.head_dim] = t
        out[:, dims.qp + LANES:] = 1.0 if name == "cos" else 0.0
        rows.update({f"{name}_{h.value}": out for h in (W, E)})
    return rows


@functools.cache
def kv_lanes(cfg: LlamaConfig) -> tuple[int, ...]:
    """The first lane of each KV head in its block: head-sized slots, in order, chosen so that the expansion to
    the query heads needs the fewest distinct lane shifts per output block (each shift is a term of a LaneMix,
    whose rows the SRAM reads side by side)."""
    dh, slots = cfg.head_dim, LANES // cfg.head_dim
    best = None
    for chosen in itertools.combinations(range(slots), cfg.n_kv_heads):
        lanes = tuple(c * dh for c in chosen)
        cost = max(len(s) for s in _shifts(cfg, lanes))
        if best is None or cost < best[0]:
            best = (cost, lanes)
    return best[1]


def kv_shifts(cfg: LlamaConfig) -> list[dict[int, np.ndarray]]:
    """Per column block of the query heads: {lane shift: 0/1 row} — rotating the KV block by the shift and
    keeping the row's lanes puts each KV head on the lanes of its query heads."""
    return _shifts(cfg, kv_lanes(cfg))


def _shifts(cfg: LlamaConfig, kv_at: tuple[int, ...]) -> list[dict[int, np.ndarray]]:
    dh, per_block = cfg.head_dim, LANES // cfg.head_dim
    out = []
    for block in range(math.ceil(cfg.n_heads / per_block)):
        terms: dict[int, np.ndarray] = {}
        for h in range(block * per_block, min(cfg.n_heads, (block + 1) * per_block)):
            at = (h % per_block) * dh
            row = terms.setdefault(at - kv_at[h // cfg.group_size], np.zeros((1, LANES), np.float32))
            row[0, at:at + dh] = 1.0
        out.append(terms)
    return out


def step_inputs(cfg: LlamaConfig, dims: Dims, position: int) -> dict[str, np.ndarray]:
    """The rows the host writes before the decode step at `position`: the RoPE rows, and the position as an
    int16 row (the scatters' lane addresses)."""
    pos = np.full((1, LANES), position, np.int16)
    return {**rope_rows(cfg, dims, np.array([position])), "pos_w": pos, "pos_e": pos}


def prefill_inputs(cfg: LlamaConfig, dims: Dims, prompt: int) -> dict[str, np.ndarray]:
    """The rows the host writes before the prefill of positions 0..prompt-1: the RoPE rows, one per position."""
    return rope_rows(cfg, dims, np.arange(prompt))


def embedding_rows(table: np.ndarray, dims: Dims, tokens: list[int]) -> np.ndarray:
    """The tokens' rows of the embedding table, padded to the chip's columns: the first chip's input."""
    out = np.zeros((len(tokens), dims.dp), np.float32)
    out[:, : table.shape[1]] = table[np.asarray(tokens)]
    return out


# -- the operation sequence ------------------------------------------------------------------------------------


@dataclass
class _Graph:
    """Builds one chip's tensors and operations; hemispheres follow the data (a VXM op lands on the other side of
    its first input; its other input may sit on either side)."""

    tensors: dict[str, TensorDef] = field(default_factory=dict)
    ops: list[Operation] = field(default_factory=list)
    data: dict[str, np.ndarray] = field(default_factory=dict)
    count: int = 0

    def tensor(self, name: str, dtype: DType, rows: int, cols: int, h: Hemisphere, role: Role,
               data: np.ndarray | None = None, interleave: int = 1) -> Ref:
        self.tensors[name] = TensorDef(name, dtype, rows, cols, h, role, interleave)
        if data is not None:
            self.data[name] = data
        return Ref(name)

    def shape(self, r: Ref) -> tuple[int, int]:
        """(rows, blocks) the ref carries."""
        t = self.tensors[r.name]
        return (t.rows if r.rows is None else r.rows), (t.blocks - r.block0 if r.blocks is None else r.blocks)

    def side(self, r: Ref) -> Hemisphere:
        return self.tensors[r.name].hemisphere

    def temp(self, stem: str, dtype: DType, rows: int, blocks: int, h: Hemisphere, interleave: int = 1,
             role: Role = Role.ACT) -> Ref:
        self.count += 1
        return self.tensor(f"{stem}_{self.count}", dtype, rows, blocks * LANES, h, role, interleave=interleave)

    def vxm(self, op: Opcode, dtype: DType, ins: list[Ref], stem: str, *, imm: float | None = None,
            to: DType | None = None, out: Ref | None = None, interleave: int = 1) -> Ref:
        rows, blocks = self.shape(ins[0])  # the inputs may sit on either side: an ALU reads both directions
        if out is None:
            out = self.temp(stem, to or dtype, rows, blocks, other(self.side(ins[0])), interleave)
        self.ops.append(Vxm(op, dtype, tuple(ins), out, imm, to))
        return out

    def ensure(self, r: Ref, h: Hemisphere) -> Ref:
        """r itself if it sits in h, else a copy there."""
        if self.side(r) is h:
            return r
        t = self.tensors[r.name]
        return self.vxm(Opcode.COPY, t.dtype, [r], f"{r.name}_to{h.value}")

    def matmul(self, a: Ref, w: Ref, stem: str, interleave: int = 1,
               skip: frozenset[tuple[int, int]] = frozenset()) -> Ref:
        h = self.side(w)
        a = self.ensure(a, h)
        rows, _ = self.shape(a)
        out = I32 if self.tensors[w.name].dtype is I8 else F32
        c = self.temp(stem, out, rows, self.tensors[w.name].blocks, h, interleave)
        self.ops.append(Matmul(a.name, w.name, c.name, skip))
        return c

    def pair(self, ops: dict[Hemisphere, tuple[Ref, str]], stem: str,
             skip: frozenset[tuple[int, int]] = frozenset(),
             outs: dict[Hemisphere, str] | None = None) -> dict[Hemisphere, Ref]:
        """a @ w for (a, name of w) on each side, side by side on the two MXMs (a Pair): the products by side,
        into the OUTPUT tensors `outs` names by side if given."""
        out, mms = {}, {}
        for h, (a, name) in ops.items():
            w = self.tensors[name]
            if w.hemisphere is not h:
                raise InternalError(f"pair: weight {name} sits in the {w.hemisphere.value} hemisphere, not {h.value}")
            a = self.ensure(a, h)
            dtype, rows = I32 if w.dtype is I8 else F32, self.shape(a)[0]
            out[h] = (self.temp(f"{stem}_{h.value}", dtype, rows, w.blocks, h) if outs is None
                      else self.tensor(outs[h], dtype, rows, w.blocks * LANES, h, Role.OUTPUT))
            mms[h] = Matmul(a.name, name, out[h].name, skip)
        self.ops.append(Pair(mms[W], mms[E]))
        return out

    def project_pair(self, x: Ref, first: Ref, second: Ref, stem: str,
                     outs: tuple[str, str] | None = None) -> tuple[Ref, Ref]:
        """x times two weights on opposite sides, both MXMs at once (a Pair): each product as `project` computes
        it, the int8 input quantised once; into the OUTPUT tensors `outs` names (first's, second's) if given."""
        ws = {self.side(first): first, self.side(second): second}
        names = None if outs is None else {self.side(first): outs[0], self.side(second): outs[1]}
        if self.tensors[first.name].dtype is F16:
            x16 = self.vxm(Opcode.CAST, F32, [x], stem + "16", to=F16)
            out = self.pair({h: (x16, w.name) for h, w in ws.items()}, stem, outs=names)
        else:
            q, s = self.quantize(x, stem)
            sums = self.pair({h: (q, w.name) for h, w in ws.items()}, stem + "_sum")
            out = {h: self.dequantize(sums[h], s, Ref(w.name + "_scale"), f"{stem}_{h.value}",
                                      out=None if names is None else names[h]) for h, w in ws.items()}
        return out[self.side(first)], out[self.side(second)]

    def quantize(self, x: Ref, stem: str) -> tuple[Ref, Ref]:
        """fp32 rows x as int8 rows q and their scales s (every lane of row r: max|x[r]| / 127), so that
        x[r] ~= q[r] * s[r]: per-token dynamic symmetric quantisation, all on the VXM (and the SXM's lane
        reduction)."""
        x = self.ensure(self.whole(x), W)
        rows, blocks = self.shape(x)
        s = self.tensor(stem + "_xscale", F32, rows, LANES, E, Role.ACT)
        op = TokenScale(x.name, s.name)
        for name in op.scratch:
            self.tensor(name, F32, rows, LANES, E, Role.ACT)
        self.ops.append(op)
        inverse = self.vxm(Opcode.RECIP, F32, [s], stem + "_inv")
        scaled = self.vxm(Opcode.MUL, F32, [x, Ref(inverse.name, blocks=blocks, block_step=0)], stem + "_xs")
        return self.vxm(Opcode.CAST, F32, [scaled], stem + "_q", to=I8), s

    def dequantize(self, c: Ref, s: Ref, ws: Ref, stem: str, out: str | None = None) -> Ref:
        """fp32(c) * s * ws: int32 sums of int8 products times the rows' activation scales `s` and the columns'
        weight scales `ws` (a west row), whichever first lies on the sums' side; into OUTPUT tensor `out` if
        named."""
        rows, blocks = self.shape(c)
        f = self.vxm(Opcode.CAST, I32, [c], stem + "_f", to=F32)
        by_row, by_col = Ref(s.name, blocks=blocks, block_step=0), Ref(ws.name, rows=rows, step=0)
        first, second = (by_row, by_col) if self.side(f) is self.side(s) else (by_col, by_row)
        y = self.vxm(Opcode.MUL, F32, [f, first], stem + "_cs")
        dest = None if out is None else self.tensor(out, F32, rows, blocks * LANES, other(self.side(y)),
                                                      Role.OUTPUT)
        return self.vxm(Opcode.MUL, F32, [y, second], stem, out=dest)

    def project(self, x: Ref, w: Ref, stem: str) -> Ref:
        """fp32 rows x times weight w as its type computes it: fp16 (x rounded to fp16, fp32 sums) or int8 (x
        quantised per token, exact int32 sums, rescaled in fp32)."""
        if self.tensors[w.name].dtype is F16:
            return self.matmul(self.vxm(Opcode.CAST, F32, [x], stem + "16", to=F16), w, stem)
        q, s = self.quantize(x, stem)
        return self.dequantize(self.matmul(q, w, stem + "_sum"), s, Ref(w.name + "_scale"), stem)

    def lane_mix(self, x: Ref, terms: list[tuple[int, str]], stem: str, out: Ref | None = None) -> Ref:
        """sum_i rows_i * rot(x, r_i) for terms (r_i, name of rows_i on x's side): x broadcast-free, each term's
        rows a whole tensor of x's shape or one row (repeated for every row and block of x)."""
        rows, blocks = self.shape(x)
        views = []
        for r, name in terms:
            t = self.tensors[name]
            views.append((r, Ref(name) if t.rows == rows and t.blocks == blocks else
                          Ref(name, blocks=blocks, block_step=0, rows=rows, step=0)))
        if out is None:
            out = self.temp(stem, F32, rows, blocks, other(self.side(x)))
        self.ops.append(LaneMix(x, tuple(views), out))
        return out

    def whole(self, r: Ref) -> Ref:
        """A tensor holding exactly r's vectors (r itself when it is a whole tensor)."""
        t = self.tensors[r.name]
        if r.block0 == 0 and r.blocks in (None, t.blocks) and r.rows is None:
            return r
        return self.vxm(Opcode.COPY, t.dtype, [r], f"{r.name}_part")

    def tree(self, op: Opcode, x: Ref, stem: str) -> Ref:
        """op over the rows of x (interleaved by 2): pairs of rows, level by level."""
        return self.trees(op, [x], [stem])[0]

    def trees(self, op: Opcode, xs: list[Ref], stems: list[str]) -> list[Ref]:
        """`tree` of each x (all of one shape), side by side: each level of every tree in one pass (a Chain;
        trees on opposite sides flow opposite ways). A level of an odd number of rows pairs all but the last,
        which a copy carries on to the next level's last row."""
        rows, blocks = self.shape(xs[0])
        while rows > 1:
            half, odd = rows // 2, rows % 2
            steps, carries = [], []
            for x, stem in zip(xs, stems):
                out = self.temp(stem, F32, half + odd, blocks, other(self.side(x)), 2 if half + odd > 1 else 1)
                pair = (Ref(x.name, row0=0, rows=half, step=2), Ref(x.name, row0=1, rows=half, step=2))
                steps.append(Vxm(op, F32, pair, Ref(out.name, rows=half) if odd else out))
                if odd:
                    carries.append(Vxm(Opcode.COPY, F32, (Ref(x.name, row0=rows - 1, rows=1),),
                                       Ref(out.name, row0=half, rows=1)))
            self.ops.append(steps[0] if len(steps) == 1 else Chain(tuple(steps)))
            self.ops.extend(carries)
            xs, rows = [Ref(s.out.name) for s in steps], half + odd
        return xs


def _weight(g: _Graph, name: str, ws: dict[str, np.ndarray], key: str, side: Hemisphere) -> Ref:
    """An MXM weight in its layout (interleave: one byte plane per weight stream), and an int8 one's scale row
    (west, where `_Graph.dequantize` reads it)."""
    v = ws[key]
    dtype = I8 if v.dtype == np.int8 else F16
    if dtype is I8:
        g.tensor(name + "_scale", F32, 1, v.shape[1], W, Role.CONST, ws[key + "_scale"])
    return g.tensor(name, dtype, v.shape[0], v.shape[1], side, Role.WEIGHT, v, interleave=32 // dtype.width_bytes)


def layer_sides(k: int) -> dict[str, Hemisphere]:
    """The hemisphere of each weight of a chip's k-th block: WEIGHT_SIDE for even k, mirrored for odd k."""
    return dict(WEIGHT_SIDE) if k % 2 == 0 else {name: other(h) for name, h in WEIGHT_SIDE.items()}


def _layer(g: _Graph, dims: Dims, model: GGUFModel, i: int, k: int, x: Ref, prompt: int | None, dtype: str,
           fuse_pv: bool = True) -> Ref:
    """Block i (the chip's k-th) on x: one row (decode, the token at the host-given position) or `prompt` rows
    (prefill of positions 0..prompt-1: matmuls and elementwise work on all rows at once, attention query by
    query)."""
    cfg, t_rows, qb, rows = dims.cfg, dims.context, dims.qb, prompt or 1
    ws = layer_weights(model, i, dims, dtype)
    p = f"l{i}_"
    wt = {name: _weight(g, p + name, ws, name, side) for name, side in layer_sides(k).items()}
    norms = {n: g.tensor(p + n, F32, 1, dims.dp, E, Role.CONST, ws[n]) for n in ("attn_norm", "ffn_norm")}
    kc = g.tensor(p + "k_cache", F32, t_rows, dims.qp, E, Role.STATE, np.zeros((t_rows, dims.qp), np.float32))
    vc = g.tensor(p + "v_cache", F32, t_rows, dims.qp, W, Role.STATE, np.zeros((t_rows, dims.qp), np.float32))

    x = g.ensure(x, W)
    (qkv,), n = _unscaled(g, x, norms["attn_norm"], [wt["qkv"]], dims, p + "qkv")
    r = g.lane_mix(qkv, list(rope_terms(cfg, g.side(qkv))), p + "rope")
    q = _scaled(g, Ref(r.name, 0, qb), n, p + "q")
    kv = g.temp(p + "kv", F32, rows, 2 * qb, other(g.side(r)))  # [K | V] per query head
    for block, shifts in enumerate(kv_shifts(cfg)):
        terms = [(shift, _const(g, f"kv_mask{block}_{shift % LANES}", g.side(r), row))
                 for shift, row in shifts.items()]
        g.lane_mix(Ref(r.name, qb, 2), terms, "", out=Ref(kv.name, block, 2, block_step=qb))
    # the norm's scaling, after RoPE and the heads' expansion (both linear), on the way to the scatters' sides
    k_new, v_new = _scaled(g, Ref(kv.name, 0, qb), n, p + "k", W), _scaled(g, Ref(kv.name, qb, qb), n, p + "v", E)
    if prompt is None:
        g.ops.append(Scatter(k_new, kc.name, "pos_w"))
        g.ops.append(Scatter(v_new, vc.name, "pos_e"))
        o = _attend(g, dims, p, Ref(kc.name), Ref(vc.name), replace(q, rows=t_rows, step=0), Ref(MASK), fuse_pv)
    else:
        o = None
        for j in range(prompt):  # the cache fills row by row, so each query sees exactly the rows before it
            g.vxm(Opcode.COPY, F32, [replace(k_new, row0=j, rows=1)], "", out=Ref(kc.name, row0=j, rows=1))
            g.vxm(Opcode.COPY, F32, [replace(v_new, row0=j, rows=1)], "", out=Ref(vc.name, row0=j, rows=1))
            n = j + 2 - j % 2  # rows 0..j, and the unwritten row j + 1 when j + 1 is odd (the scores' MXM passes
            # multiply rows in pairs); the softmax takes rows 0..j alone
            oj = _attend(g, dims, f"{p}q{j}_", Ref(kc.name, rows=n), Ref(vc.name, rows=j + 1),
                         replace(q, row0=j, rows=n, step=0))
            if o is None:
                o = g.tensor(p + "o_rows", F32, prompt, dims.qp, other(g.side(oj)), Role.ACT)
            oj = g.ensure(oj, other(g.side(o)))  # the trees' depth (so the side they end on) varies with n
            g.vxm(Opcode.COPY, F32, [oj], "", out=Ref(o.name, row0=j, rows=1))
    att = g.project(o, wt["o"], p + "att")
    x = g.vxm(Opcode.ADD, F32, [att, x], p + "x_att")
    # feed-forward
    x = g.ensure(x, W)
    gate, up = _normed(g, x, norms["ffn_norm"], [wt["g"], wt["u"]], dims, p + "gu")
    act = g.vxm(Opcode.SILU, F32, [gate], p + "silu")
    prod = g.vxm(Opcode.MUL, F32, [act, up], p + "glu")
    down = g.project(prod, wt["down"], p + "down")
    return g.vxm(Opcode.ADD, F32, [down, x], p + "x")


def _unmask(g: _Graph, dims: Dims, prompt: int | None) -> None:
    """The chip's attention mask (`attention_mask`), with this step's rows unmasked: the decode step's position
    (a scatter of a zero row), or a prefill's positions 0..prompt-1 for the decode steps after it (its own
    queries attend over the written rows alone and need no mask)."""
    g.tensor(MASK, F32, dims.context, dims.qp, MASK_SIDE, Role.STATE, attention_mask(dims))
    zero = _const(g, "zero_row", other(MASK_SIDE), np.zeros((1, dims.qp), np.float32))
    if prompt is None:
        g.ops.append(Scatter(Ref(zero), MASK, f"pos_{other(MASK_SIDE).value}"))
    else:
        g.vxm(Opcode.COPY, F32, [Ref(zero, rows=prompt, step=0)], "", out=Ref(MASK, rows=prompt))


def _const(g: _Graph, stem: str, side: Hemisphere, row: np.ndarray) -> str:
    """A constant row on `side`, declared once per chip and shared by its blocks."""
    name = f"{stem}_{side.value}"
    if name not in g.tensors:
        g.tensor(name, F32, 1, row.shape[1], side, Role.CONST, row)
    return name


def _attend(g: _Graph, dims: Dims, p: str, kc: Ref, vc: Ref, q: Ref, mask: Ref | None = None,
            fuse_pv: bool = False) -> Ref:
    """One query's attention over the cache rows `vc` names, q broadcast to each, `mask` (if any) added to the
    scores: returns its output row. `kc` names an even number of rows (the scores' MXM passes multiply rows in
    pairs): vc's, or one more, whose score the softmax leaves out."""
    rows, _ = g.shape(vc)
    # scores: K * q on the VXM, split into fp16 hi + lo, summed per head on both MXMs
    hi, rest = _split_products(g, kc, q, p + "qk")
    lo = g.vxm(Opcode.CAST, F32, [rest], p + "qk_lo", to=F16)
    halves = g.pair({g.side(hi): (hi, f"scores_ones_{g.side(hi).value}"),
                     g.side(lo): (lo, f"scores_ones_{g.side(lo).value}")}, p + "scores", skip=_score_skip(dims))
    # lo's sum first: the scores land beside hi's (the side with room next to the cache's other half)
    sums = [Ref(halves[g.side(lo)].name, rows=rows), Ref(halves[g.side(hi)].name, rows=rows)]
    if mask is None:
        scores = g.vxm(Opcode.ADD, F32, sums, p + "scores", interleave=2)
    else:  # one pass: the sum flows on to the mask's add
        blocks, there = g.shape(sums[0])[1], other(g.side(lo))  # where the add alone would land
        total = g.temp(p + "unmasked", F32, rows, blocks, there, role=Role.STREAM)
        scores = g.temp(p + "scores", F32, rows, blocks, there, interleave=2)
        g.ops.append(Chain((Vxm(Opcode.ADD, F32, tuple(sums), total), Vxm(Opcode.ADD, F32, (total, mask), scores))))
    # one row (a prefill's first query): its own max, copied apart (one slice cannot feed both operands)
    top = g.tree(Opcode.MAX, scores, p + "max") if rows > 1 else g.vxm(Opcode.COPY, F32, [scores], p + "max")
    _, blocks = g.shape(scores)
    # exp(scores - max) in one pass: the difference flows to the exp. With `fuse_pv` (a decode step) e flows on
    # to its products with the V rows (the next rank), both written beside the scores: the other hemisphere has
    # no room for both. Else (a prefill query, with the queries around it; a long context, whose cache-long
    # trains leave no room for both beside the scores) e goes across and its products take a train of their own.
    there = g.side(scores) if fuse_pv else other(g.side(scores))
    shifted = g.temp(p + "shifted", F32, rows, blocks, there, role=Role.STREAM)
    e = g.temp(p + "exp", F32, rows, blocks, there, interleave=2)
    steps = (Vxm(Opcode.SUB, F32, (scores, _broadcast(top, rows)), shifted), Vxm(Opcode.EXP, F32, (shifted,), e))
    if fuse_pv:
        weighted = g.temp(p + "pv", F32, rows, blocks, there, interleave=2)
        g.ops.append(Chain((*steps, Vxm(Opcode.MUL, F32, (e, vc), weighted))))
    else:
        g.ops.append(Chain(steps))
        weighted = g.vxm(Opcode.MUL, F32, [e, vc], p + "pv", interleave=2)
    total, o = g.trees(Opcode.ADD, [e, weighted], [p + "sum", p + "o_sum"])
    return g.vxm(Opcode.MUL, F32, [o, g.vxm(Opcode.RECIP, F32, [total], p + "inv_sum")], p + "o")


def _split_products(g: _Graph, kc: Ref, q: Ref, stem: str) -> tuple[Ref, Ref]:
    """hi = fp16(kc * q) and rest = kc * q - fp32(hi), both on the other side of kc, in one pass through the ALU
    ranks (a Chain): the product flows to the cast to fp16 and, beside it, through two fp32-to-fp32 casts (exact),
    so that it reaches the subtraction in the cycle fp32(hi) does, whatever the conversion latency."""
    rows, blocks = g.shape(kc)
    there = other(g.side(kc))

    def flowing(name: str) -> Ref:
        return g.temp(f"{stem}_{name}", F32, rows, blocks, there, role=Role.STREAM)

    prod, late, hi32, later = flowing("prod"), flowing("late"), flowing("hi32"), flowing("later")
    hi, rest = g.temp(stem + "_hi", F16, rows, blocks, there), g.temp(stem + "_rest", F32, rows, blocks, there)
    g.ops.append(Chain((
        Vxm(Opcode.MUL, F32, (kc, q), prod),
        Vxm(Opcode.CAST, F32, (prod,), hi, to=F16),
        Vxm(Opcode.CAST, F32, (prod,), late, to=F32),
        Vxm(Opcode.CAST, F16, (hi,), hi32, to=F32),
        Vxm(Opcode.CAST, F32, (late,), later, to=F32),
        Vxm(Opcode.SUB, F32, (later, hi32), rest),
    )))
    return hi, rest


def _broadcast(row: Ref, rows: int) -> Ref:
    """One row read again for each of `rows` rows."""
    return Ref(row.name, rows=rows, step=0)


def _normed(g: _Graph, x: Ref, w: Ref, weights: list[Ref], dims: Dims, stem: str) -> list[Ref]:
    """rmsnorm(x, w) times one weight, or two side by side (a Pair), with the norm's scaling moved past the
    matmul: rmsnorm(x, w) @ W = r * ((x * w) @ W), r = rsqrt(mean(x^2) + eps) a scalar per row. So the matmul of
    x * w runs while the SXM's lane reduction computes r (`InvRms`), and each product is then scaled by r."""
    products, r = _unscaled(g, x, w, weights, dims, stem)
    return [_scaled(g, c, r, stem) for c in products]


def _scaled(g: _Graph, c: Ref, r: Ref, stem: str, to: Hemisphere | None = None) -> Ref:
    """c's rows times r's (one row of r per row of c, every block of c times that row); in hemisphere `to` if
    given (the product lands opposite its first operand: c's side or r's, whichever puts it there)."""
    by_row = Ref(r.name, blocks=g.shape(c)[1], block_step=0)
    ins = [by_row, c] if to is not None and g.side(c) is to else [c, by_row]
    out = g.vxm(Opcode.MUL, F32, ins, stem)
    return out if to is None else g.ensure(out, to)


def _unscaled(g: _Graph, x: Ref, w: Ref, weights: list[Ref], dims: Dims, stem: str) -> tuple[list[Ref], Ref]:
    """`_normed` before its scaling: the products (x * w) @ W for each weight, and r (one row per row of x, r in
    every lane), for a caller that scales later (after RoPE, which is linear)."""
    x = g.ensure(g.whole(x), W)
    rows, _ = g.shape(x)
    xw = g.vxm(Opcode.MUL, F32, [_broadcast(w, rows), x], stem + "_xw")  # lands west, beside x: w sits east
    r = g.tensor(stem + "_r", F32, rows, LANES, E, Role.ACT)
    op = InvRms(x.name, r.name, dims.d, float(np.float32(dims.cfg.rms_eps)))
    for s in op.scratch:
        g.tensor(s, F32, rows, LANES, E, Role.ACT)
    g.ops.append(op)
    if len(weights) == 1:
        products = [g.project(xw, weights[0], stem + "_xwW")]
    else:
        products = list(g.project_pair(xw, weights[0], weights[1], stem + "_xwW"))
    return products, r


def _rmsnorm(g: _Graph, x: Ref, w: Ref, dims: Dims, stem: str) -> Ref:
    x = g.ensure(g.whole(x), W)
    rows, _ = g.shape(x)
    y = g.tensor(stem, F32, rows, dims.dp, E, Role.ACT)
    op = RmsNorm(x.name, w.name, y.name, dims.d, float(np.float32(dims.cfg.rms_eps)))
    for s in op.scratch:
        g.tensor(s, F32, rows, LANES, E, Role.ACT)
    g.ops.append(op)
    return y


def _head(g: _Graph, dims: Dims, model: GGUFModel, x: Ref, dtype: str) -> None:
    ws = head_weights(model, dims, dtype)
    norm = g.tensor("output_norm", F32, 1, dims.dp, W, Role.CONST, ws["output_norm"])
    h = _rmsnorm(g, x, norm, dims, "final")
    for side in (W, E):
        _weight(g, f"head_{side.value}", ws, f"head_{side.value}", side)
    # the two halves of the vocabulary side by side on the two MXMs
    g.project_pair(h, Ref("head_w"), Ref("head_e"), "final", outs=("logits_w", "logits_e"))


def lower_chip(model: GGUFModel, dims: Dims, index: int, layers: range, *, first: bool, last: bool,
               prompt: int | None = None, dtype: str = "fp16", fuse_pv: bool = True) -> ChipGraph:
    """The chip graph for `layers` (and the head when `last`): a decode step, or with `prompt` the prefill of
    that many tokens (positions 0..prompt-1; the logits of the last one). The first chip takes the embedding rows
    from the host; the others receive the hidden state from the previous chip, and all but the last send it on.
    `fuse_pv`: the decode step computes each exp(s - m) and its products with V in one pass (`_attend`), which
    needs room for both beside the scores; a prefill never does."""
    g = _Graph()
    qp, rows = dims.qp, prompt or 1
    for name in ROPE_INPUTS:
        for side in (W, E):
            g.tensor(f"{name}_{side.value}", F32, rows, qp + 2 * LANES, side, Role.INPUT)
    if prompt is None:
        g.tensor("pos_w", I16, 1, LANES, W, Role.INPUT)
        g.tensor("pos_e", I16, 1, LANES, E, Role.INPUT)
    if len(layers):
        for side in (W, E):
            g.tensor(f"scores_ones_{side.value}", F16, qp, qp, side, Role.CONST, score_matrix(dims), interleave=16)
    x = g.tensor("x_in", F32, rows, dims.dp, W, Role.INPUT if first else Role.ACT)
    if not first:
        g.ops.append(Receive(x.name))
    if len(layers):
        _unmask(g, dims, prompt)
    for k, i in enumerate(layers):
        x = _layer(g, dims, model, i, k, x, prompt, dtype, fuse_pv)
    if last:
        _head(g, dims, model, x if prompt is None else Ref(x.name, row0=rows - 1, rows=1), dtype)
    else:
        x = g.ensure(g.whole(x), W)
        g.ops.append(Send(x.name))
    return fuse_runs(ChipGraph(index, layers, dict(g.tensors), tuple(g.ops), dict(g.data)))


def fuse_runs(graph: ChipGraph, depth: int = 4) -> ChipGraph:
    """Runs of up to `depth` (the ALU ranks) VXM operations, each reading the whole result of the one before,
    which nothing else reads: one Chain each, the inner results STREAM tensors (a pure function of the graph)."""
    readers: dict[str, int] = {}
    writers: dict[str, int] = {}
    for op in graph.ops:
        for name in set(op.reads()):
            readers[name] = readers.get(name, 0) + 1
        for name in set(op.writes()):
            writers[name] = writers.get(name, 0) + 1
    tensors, ops, i = dict(graph.tensors), [], 0
    while i < len(graph.ops):
        run = [graph.ops[i]]
        while isinstance(run[-1], Vxm) and len(run) < depth and i + len(run) < len(graph.ops):
            nxt, out = graph.ops[i + len(run)], run[-1].out
            if not (isinstance(nxt, Vxm) and out == Ref(out.name) and tensors[out.name].role is Role.ACT
                    and readers.get(out.name) == writers.get(out.name) == 1 and out in nxt.ins
                    and _sides_hold(tensors, [*run, nxt])):
                break
            run.append(nxt)
        for v in run[:-1]:
            tensors[v.out.name] = replace(tensors[v.out.name], role=Role.STREAM)
        ops.append(Chain(tuple(run)) if len(run) > 1 else run[0])
        i += len(run)
    return replace(graph, tensors=tensors, ops=tuple(ops))


def _sides_hold(tensors: dict[str, TensorDef], run: list[Vxm]) -> bool:
    """Whether a run, as one chain, streams at most two SRAM tensors per hemisphere at once (its inputs from
    outside and its last result), as one VXM operation may: more, side by side on disjoint slices, can leave
    one no free group of slices beside the weights."""
    made = {v.out.name for v in run[:-1]}
    touched = {r.name for v in run for r in v.ins if r.name not in made} | {run[-1].out.name}
    return all(sum(tensors[n].hemisphere is h for n in touched) <= 2 for h in (W, E))


def split_layers(model: GGUFModel, dims: Dims, chip: Chip, chips: int | None = None, dtype: str = "fp16"
                 ) -> list[range]:
    """Consecutive layer ranges, one per chip, each chip's MXM weights fitting the weight band of each
    hemisphere (the head on the last chip): the fewest chips that hold the model, or exactly `chips`, the
    layers shared out as evenly as the capacities allow."""
    band = chip.mem.addresses_per_slice
    width = 1 if dtype == "int8" else 2
    size = {k: _weight_vectors(shape, chip, width) for k, shape in layer_shapes(dims).items()}
    west, total = head_columns(model.config.vocab_size)
    head_need = {W: _weight_vectors((dims.dp, west), chip, width),
                 E: _weight_vectors((dims.dp, total - west), chip, width)}
    ones = {h: _weight_vectors((dims.qp, dims.qp), chip) for h in (W, E)}

    def need(n: int, with_head: bool) -> dict[Hemisphere, int]:
        """Addresses per slice of each hemisphere's weight band for n blocks (sides alternating), and the head."""
        used = {h: ones[h] + with_head * head_need[h] for h in (W, E)}
        for k in range(n):
            for name, h in layer_sides(k).items():
                used[h] += size[name]
        return used

    def most(with_head: bool) -> int:
        n = 0
        while n < model.config.n_layers and all(v <= band for v in need(n + 1, with_head).values()):
            n += 1
        return n

    per_chip, on_last = most(False), most(True)
    if per_chip == 0 or any(head_need[h] + ones[h] > band for h in (W, E)):
        one = need(1, False)
        raise DoesNotFitError(f"one block's MXM weights ({one[W]} + {one[E]} vectors per slice) or the head "
                              f"({head_need[W]} + {head_need[E]}) do not fit {chip.name}'s {band} addresses per "
                              "slice; use a chip with more SRAM per slice")
    n = model.config.n_layers
    fewest = 1 + math.ceil(max(0, n - on_last) / per_chip)
    if chips is not None and chips < fewest:
        raise DoesNotFitError(f"the model's weights in the MXM layout need {fewest} {chip.name} chips; {chips} "
                              f"{'was' if chips == 1 else 'were'} asked for. Ask for {fewest} or more")
    count = chips or fewest
    caps = [per_chip] * (count - 1) + [on_last]
    sizes = [0] * count
    for _ in range(n):  # one layer at a time to the emptiest chip with room: as even as the capacities allow
        i = min((i for i in range(count) if sizes[i] < caps[i]), key=lambda i: (sizes[i], -i))
        sizes[i] += 1
    starts = np.cumsum([0, *sizes])
    return [range(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]


def _weight_vectors(shape: tuple[int, int], chip: Chip, width: int = 2) -> int:
    """Addresses per slice a weight [K, N] of `width`-byte values takes in the MXM layout (32 slices: 16 fp16
    rows or 32 int8 rows per address)."""
    rows_per_address = chip.streams.streams_per_direction // width
    return math.ceil(shape[0] / rows_per_address) * math.ceil(shape[1] / LANES)
