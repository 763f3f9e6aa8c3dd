"""Run a loaded llama model's graphs with the reference interpreter: prefill, decode steps, greedy generation.

This is the functional spec of what the compiled chip program must compute, token for token. KV caches are
per-block pairs of float32 arrays [kv_heads, context, head_dim]; slot s holds the K (after RoPE) or V of the
token at position s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from openlpu.errors import UserError
from openlpu.frontends.gguf import GGUFModel
from openlpu.frontends.llama import Phase
from openlpu.ir import Graph, interpret

KVCache = list[tuple[np.ndarray, np.ndarray]]
"""Per block, the (K, V) cache arrays, each [kv_heads, context, head_dim]."""


@dataclass(frozen=True, slots=True)
class Step:
    """What one pass returns: logits [vocab] of the last token and the KV cache after it."""

    logits: np.ndarray
    cache: KVCache


def empty_cache(model: GGUFModel, context: int) -> KVCache:
    """A zeroed KV cache of `context` slots for every loaded block."""
    cfg = model.config
    shape = (cfg.n_kv_heads, context, cfg.head_dim)
    return [(np.zeros(shape, np.float32), np.zeros(shape, np.float32)) for _ in range(cfg.n_layers)]


def prefill(model: GGUFModel, token_ids: Sequence[int], *, context: int, graph: Graph | None = None) -> Step:
    """Run the prefill graph on `token_ids` (positions 0..P-1); put its K/V into a cache of `context` slots.

    `graph` may be passed to reuse one built for exactly ``len(token_ids)`` tokens.
    """
    n = len(token_ids)
    if not 1 <= n <= context:
        raise UserError(
            f"prompt of {n} tokens does not fit a context of {context}; shorten it or raise context"
        )
    graph = graph or model.graph(Phase.PREFILL, tokens=n)
    ids = np.asarray(token_ids, np.int32)
    out = interpret(graph, {"tokens": ids, "positions": np.arange(n, dtype=np.int32)}, model.weights)
    cache = empty_cache(model, context)
    for i, (k, v) in enumerate(cache):
        k[:, :n, :] = out[f"blk.{i}.k"]
        v[:, :n, :] = out[f"blk.{i}.v"]
    return Step(out["logits"][0], cache)


def decode(model: GGUFModel, graph: Graph, token_id: int, position: int, cache: KVCache) -> Step:
    """One decode step: `token_id` at `position`, reading `cache` and returning it extended (not mutated)."""
    inputs: dict[str, np.ndarray] = {
        "tokens": np.array([token_id], np.int32),
        "positions": np.array([position], np.int32),
    }
    for i, (k, v) in enumerate(cache):
        inputs[f"blk.{i}.k_cache"], inputs[f"blk.{i}.v_cache"] = k, v
    out = interpret(graph, inputs, model.weights)
    new = [(out[f"blk.{i}.k_cache_next"], out[f"blk.{i}.v_cache_next"]) for i in range(len(cache))]
    return Step(out["logits"][0], new)


def greedy_generate(
    model: GGUFModel,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    context: int | None = None,
    stop_ids: Sequence[int] = (),
) -> list[int]:
    """Greedy (argmax) generation: prefill the prompt, then decode up to `max_new_tokens` tokens, stopping
    after a token in `stop_ids`. `context` (default: prompt + new tokens) sizes the compiled KV cache."""
    context = context or len(prompt_ids) + max_new_tokens
    if len(prompt_ids) + max_new_tokens > context:
        raise UserError(
            f"{len(prompt_ids)} prompt + {max_new_tokens} new tokens exceed the context of {context}"
        )
    step = prefill(model, prompt_ids, context=context)
    graph = model.graph(Phase.DECODE, context=context)
    out: list[int] = []
    for position in range(len(prompt_ids), len(prompt_ids) + max_new_tokens):
        token = int(np.argmax(step.logits))
        out.append(token)
        if token in stop_ids or len(out) == max_new_tokens:
            break
        step = decode(model, graph, token, position, step.cache)
    return out
