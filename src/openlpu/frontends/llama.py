"""The llama decoder as a tensor-IR `Graph`, for one phase: prefill or decode.

Layouts (row-major, sizes in elements): the residual stream is [T, D] for T tokens; attention works
head-major, queries as [G, R*T, Dh] where G = KV heads and R = heads per KV head (grouped-query attention
without copying K/V: query head h = g*R + r reads KV head g, as in transformers' ``repeat_kv``); K/V are
[G, S, Dh].

Graph interface (names are the contract with runners and the compiler):

* inputs ``tokens`` int32[T] and ``positions`` int32[T];
* decode also takes ``blk.{i}.k_cache`` / ``blk.{i}.v_cache`` float32[G, C, Dh] for a compiled context of C
  slots, and returns the caches with this step's rows written as ``blk.{i}.k_cache_next`` / ``v_cache_next``;
* prefill returns this prompt's K/V as ``blk.{i}.k`` / ``blk.{i}.v`` float32[G, T, Dh] (K after RoPE);
* both return ``logits`` float32[1, vocab] for the last token.

Parameters are named as in the GGUF file (``blk.0.attn_q.weight``), weights [out, in]; Q/K rows must be in
half-split RoPE order (see `openlpu.frontends.gguf`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from openlpu.errors import UserError
from openlpu.ir import Graph, GraphBuilder, Op


class Phase(enum.Enum):
    """Which program to build: the prompt pass or one generation step."""

    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True, slots=True, kw_only=True)
class LlamaConfig:
    """Hyper-parameters of a llama decoder (sizes in elements, `rope_base` in positions per radian scale)."""

    n_layers: int
    hidden_size: int
    ffn_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_base: float
    rms_eps: float
    vocab_size: int
    context_length: int
    tied_embeddings: bool

    def __post_init__(self) -> None:
        sizes = (
            "n_layers",
            "hidden_size",
            "ffn_size",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "vocab_size",
            "context_length",
        )
        for field in sizes:
            if getattr(self, field) <= 0:
                raise UserError(f"llama config: {field}={getattr(self, field)} must be positive")
        if self.n_heads % self.n_kv_heads:
            raise UserError(
                f"llama config: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise UserError(f"llama config: head_dim={self.head_dim} must be even for RoPE")

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads


def param_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the graph reads, by GGUF name, with its [out, in] (or [dim]) shape, in graph order."""
    d, q, kv, f = cfg.hidden_size, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.ffn_size
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (cfg.vocab_size, d)}
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        shapes.update(
            {
                p + "attn_norm.weight": (d,),
                p + "attn_q.weight": (q, d),
                p + "attn_k.weight": (kv, d),
                p + "attn_v.weight": (kv, d),
                p + "attn_output.weight": (d, q),
                p + "ffn_norm.weight": (d,),
                p + "ffn_gate.weight": (f, d),
                p + "ffn_up.weight": (f, d),
                p + "ffn_down.weight": (d, f),
            }
        )
    shapes["output_norm.weight"] = (d,)
    if not cfg.tied_embeddings:
        shapes["output.weight"] = (cfg.vocab_size, d)
    return shapes


def _heads(
    b: GraphBuilder, cfg: LlamaConfig, out: str, weight: str, h: str, heads: int, t: int, rope: bool
) -> str:
    """``out`` = `h` [T, D] projected by `weight` into head-major [heads, T, Dh], RoPE applied if `rope`."""
    x = b.op(Op.MATMUL, f"{out}_proj", h, weight)
    x = b.op(Op.RESHAPE, f"{out}_split", x, shape=(t, heads, cfg.head_dim))
    if rope:
        x = b.op(Op.ROPE, f"{out}_rope", x, "positions", base=cfg.rope_base, head_dim=cfg.head_dim)
    return b.op(Op.TRANSPOSE, out, x, perm=(1, 0, 2))


def _attention(b: GraphBuilder, cfg: LlamaConfig, i: int, h: str, t: int, context: int | None) -> str:
    """Self-attention of block `i` on normed `h` [T, D]; returns the output projection [T, D].

    With `context` (decode) the new K/V rows are written into the block's cache at their positions and
    attention reads all `context` slots; without it (prefill) attention reads the prompt's own K/V.
    """
    p, g, r, dh = f"blk.{i}.", cfg.n_kv_heads, cfg.group_size, cfg.head_dim
    q = _heads(b, cfg, p + "q", p + "attn_q.weight", h, cfg.n_heads, t, rope=True)
    keys = _heads(b, cfg, p + "k", p + "attn_k.weight", h, g, t, rope=True)  # the rows a KV cache keeps
    vals = _heads(b, cfg, p + "v", p + "attn_v.weight", h, g, t, rope=False)
    if context is not None:
        keys = b.op(Op.KV_CACHE_WRITE, p + "k_cache_next", p + "k_cache", keys, "positions")
        vals = b.op(Op.KV_CACHE_WRITE, p + "v_cache_next", p + "v_cache", vals, "positions")
    s = context if context is not None else t
    q = b.op(Op.RESHAPE, p + "q_groups", q, shape=(g, r * t, dh))
    x = b.op(Op.BATCH_MATMUL, p + "scores", q, keys, transpose_b=True)
    x = b.op(Op.SCALE, p + "scores_scaled", x, factor=dh**-0.5)
    x = b.op(Op.RESHAPE, p + "scores_heads", x, shape=(cfg.n_heads, t, s))
    x = b.op(Op.CAUSAL_MASK, p + "scores_masked", x, "positions")
    x = b.op(Op.SOFTMAX, p + "probs", x)
    x = b.op(Op.RESHAPE, p + "probs_groups", x, shape=(g, r * t, s))
    x = b.op(Op.BATCH_MATMUL, p + "attn", x, vals, transpose_b=False)
    x = b.op(Op.RESHAPE, p + "attn_heads", x, shape=(cfg.n_heads, t, dh))
    x = b.op(Op.TRANSPOSE, p + "attn_tokens", x, perm=(1, 0, 2))
    x = b.op(Op.RESHAPE, p + "attn_merged", x, shape=(t, cfg.n_heads * dh))
    return b.op(Op.MATMUL, p + "attn_output", x, p + "attn_output.weight")


def _ffn(b: GraphBuilder, i: int, h: str) -> str:
    """SwiGLU feed-forward of block `i` on normed `h` [T, D]: down(silu(gate(h)) * up(h))."""
    p = f"blk.{i}."
    gate = b.op(Op.MATMUL, p + "ffn_gate", h, p + "ffn_gate.weight")
    up = b.op(Op.MATMUL, p + "ffn_up", h, p + "ffn_up.weight")
    act = b.op(Op.SILU, p + "ffn_act", gate)
    return b.op(Op.MATMUL, p + "ffn_down", b.op(Op.MUL, p + "ffn_prod", act, up), p + "ffn_down.weight")


def _block(b: GraphBuilder, cfg: LlamaConfig, i: int, x: str, t: int, context: int | None) -> str:
    p = f"blk.{i}."
    h = b.op(Op.RMSNORM, p + "attn_norm", x, p + "attn_norm.weight", eps=cfg.rms_eps)
    x = b.op(Op.ADD, p + "attn_residual", x, _attention(b, cfg, i, h, t, context))
    h = b.op(Op.RMSNORM, p + "ffn_norm", x, p + "ffn_norm.weight", eps=cfg.rms_eps)
    return b.op(Op.ADD, p + "ffn_residual", x, _ffn(b, i, h))


def _check_sizes(cfg: LlamaConfig, phase: Phase, tokens: int, context: int | None) -> None:
    limit = cfg.context_length
    if phase is Phase.PREFILL and not 1 <= tokens <= limit:
        raise UserError(f"prefill of {tokens} tokens: need 1 to {limit} (the model's context length)")
    if phase is Phase.DECODE and (context is None or not 1 <= context <= limit):
        raise UserError(f"decode with a KV cache of {context} slots: need 1 to {limit} (the model's context)")


def build_decoder(cfg: LlamaConfig, phase: Phase, *, tokens: int = 1, context: int | None = None) -> Graph:
    """The decoder graph for `phase`: prefill of `tokens` prompt tokens, or decode of one token against a KV
    cache of `context` slots (default: the model's context length). Returns a verified `Graph`."""
    if phase is Phase.DECODE:
        tokens, context = 1, cfg.context_length if context is None else context
    else:
        context = None
    _check_sizes(cfg, phase, tokens, context)
    b = GraphBuilder(
        f"llama_l{cfg.n_layers}_{phase.value}_" + (f"t{tokens}" if context is None else f"c{context}")
    )
    b.input("tokens", (tokens,), "int32")
    b.input("positions", (tokens,), "int32")
    cache_shape = (cfg.n_kv_heads, context or 0, cfg.head_dim)
    for i in range(cfg.n_layers if context is not None else 0):
        b.input(f"blk.{i}.k_cache", cache_shape)
        b.input(f"blk.{i}.v_cache", cache_shape)
    for name, shape in param_shapes(cfg).items():
        b.param(name, shape)
    x = b.op(Op.EMBEDDING, "embed", "token_embd.weight", "tokens")
    for i in range(cfg.n_layers):
        x = _block(b, cfg, i, x, tokens, context)
    if tokens > 1:
        x = b.op(Op.SLICE, "last_token", x, axis=0, start=tokens - 1, stop=tokens)
    x = b.op(Op.RMSNORM, "output_norm", x, "output_norm.weight", eps=cfg.rms_eps)
    b.op(Op.MATMUL, "logits", x, "token_embd.weight" if cfg.tied_embeddings else "output.weight")
    return b.build(["logits", *_cache_outputs(cfg, context is not None)])


def _cache_outputs(cfg: LlamaConfig, decode: bool) -> list[str]:
    suffixes = ("k_cache_next", "v_cache_next") if decode else ("k", "v")
    return [f"blk.{i}.{s}" for i in range(cfg.n_layers) for s in suffixes]
