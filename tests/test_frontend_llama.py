"""The llama decoder graph builder (openlpu.frontends.llama), on a tiny random model, against a plain NumPy
forward pass written head by head (no reshape tricks), so it needs no model file."""

from __future__ import annotations

import numpy as np
import pytest
from frontend_refs import TINY

from openlpu.errors import UserError
from openlpu.frontends.llama import LlamaConfig, Phase, build_decoder, param_shapes
from openlpu.ir import Op, interpret


def random_weights(cfg: LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: (rng.standard_normal(shape) * (0.5 if len(shape) == 1 else 0.3) + (len(shape) == 1)).astype(
            np.float32
        )
        for name, shape in param_shapes(cfg).items()
    }


def numpy_forward(cfg: LlamaConfig, w: dict[str, np.ndarray], ids: list[int]) -> tuple[np.ndarray, list]:
    """Logits [T, vocab] and per-layer (K, V) [kv_heads, T, head_dim], in float64, one head at a time."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    t, dh, half = len(ids), cfg.head_dim, cfg.head_dim // 2

    def norm(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.rms_eps) * g

    def rope(x):  # x [T, Dh], rotate_half convention
        ang = np.arange(t)[:, None] * cfg.rope_base ** (-np.arange(half) / half)
        c, s = np.cos(np.concatenate([ang, ang], 1)), np.sin(np.concatenate([ang, ang], 1))
        return x * c + np.concatenate([-x[:, half:], x[:, :half]], 1) * s

    x, kv = w["token_embd.weight"][ids], []
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        h = norm(x, w[p + "attn_norm.weight"])
        q, k, v = (h @ w[p + n].T for n in ("attn_q.weight", "attn_k.weight", "attn_v.weight"))
        ks = [rope(k[:, j * dh : (j + 1) * dh]) for j in range(cfg.n_kv_heads)]
        vs = [v[:, j * dh : (j + 1) * dh] for j in range(cfg.n_kv_heads)]
        kv.append((np.stack(ks), np.stack(vs)))
        heads = []
        for head in range(cfg.n_heads):
            j = head // cfg.group_size
            s = rope(q[:, head * dh : (head + 1) * dh]) @ ks[j].T / np.sqrt(dh)
            s = np.where(np.triu(np.ones((t, t), bool), 1), -np.inf, s)
            e = np.exp(s - s.max(-1, keepdims=True))
            heads.append(e / e.sum(-1, keepdims=True) @ vs[j])
        x = x + np.concatenate(heads, 1) @ w[p + "attn_output.weight"].T
        h = norm(x, w[p + "ffn_norm.weight"])
        g = h @ w[p + "ffn_gate.weight"].T
        x = x + (g / (1 + np.exp(-g)) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    return norm(x, w["output_norm.weight"]) @ w["output.weight"].T, kv


IDS = [3, 17, 0, 31, 8, 8, 22]


def test_prefill_graph_matches_the_numpy_forward() -> None:
    w = random_weights(TINY)
    g = build_decoder(TINY, Phase.PREFILL, tokens=len(IDS))
    out = interpret(
        g, {"tokens": np.array(IDS, np.int32), "positions": np.arange(len(IDS), dtype=np.int32)}, w
    )
    logits, kv = numpy_forward(TINY, w, IDS)
    np.testing.assert_allclose(out["logits"][0], logits[-1], rtol=1e-4, atol=1e-4)
    for i, (k, v) in enumerate(kv):
        np.testing.assert_allclose(out[f"blk.{i}.k"], k, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out[f"blk.{i}.v"], v, rtol=1e-4, atol=1e-5)


def test_decode_graph_extends_a_cache_filled_by_the_numpy_forward() -> None:
    w, context = random_weights(TINY, seed=1), 10
    _, kv = numpy_forward(TINY, w, IDS[:-1])
    inputs = {"tokens": np.array(IDS[-1:], np.int32), "positions": np.array([len(IDS) - 1], np.int32)}
    for i, (k, v) in enumerate(kv):
        for name, rows in (("k", k), ("v", v)):
            cache = np.zeros((TINY.n_kv_heads, context, TINY.head_dim), np.float32)
            cache[:, : len(IDS) - 1] = rows
            inputs[f"blk.{i}.{name}_cache"] = cache
    out = interpret(build_decoder(TINY, Phase.DECODE, context=context), inputs, w)
    logits, kv_all = numpy_forward(TINY, w, IDS)
    np.testing.assert_allclose(out["logits"][0], logits[-1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["blk.1.k_cache_next"][:, : len(IDS)], kv_all[1][0], rtol=1e-4, atol=1e-5)
    assert not out["blk.1.k_cache_next"][:, len(IDS) :].any()


def test_tied_embeddings_read_the_token_table_for_logits() -> None:
    from dataclasses import replace

    tied = replace(TINY, tied_embeddings=True)
    assert "output.weight" not in param_shapes(tied)
    g = build_decoder(tied, Phase.DECODE, context=8)
    assert g.node("logits").inputs == ("output_norm", "token_embd.weight")


def test_graph_interface_names_and_op_counts() -> None:
    g = build_decoder(TINY, Phase.DECODE, context=8)
    assert [v.name for v in g.inputs] == [
        "tokens",
        "positions",
        "blk.0.k_cache",
        "blk.0.v_cache",
        "blk.1.k_cache",
        "blk.1.v_cache",
    ]
    assert g.outputs == (
        "logits",
        "blk.0.k_cache_next",
        "blk.0.v_cache_next",
        "blk.1.k_cache_next",
        "blk.1.v_cache_next",
    )
    assert g.name == "llama_l2_decode_c8"
    per_layer = {
        Op.MATMUL: 7,
        Op.ROPE: 2,
        Op.KV_CACHE_WRITE: 2,
        Op.BATCH_MATMUL: 2,
        Op.SOFTMAX: 1,
        Op.RMSNORM: 2,
    }
    for op, n in per_layer.items():
        assert g.count(op) == n * TINY.n_layers + (op in (Op.MATMUL, Op.RMSNORM)), op
    prefill = build_decoder(TINY, Phase.PREFILL, tokens=3)
    assert prefill.outputs[1:3] == ("blk.0.k", "blk.0.v") and prefill.count(Op.SLICE) == 1
    assert prefill.node("blk.0.k").shape == (TINY.n_kv_heads, 3, TINY.head_dim)


@pytest.mark.parametrize(
    ("phase", "kwargs", "message"),
    [
        (Phase.PREFILL, {"tokens": 0}, "prefill of 0 tokens: need 1 to 64 (the model's context length)"),
        (Phase.PREFILL, {"tokens": 65}, "prefill of 65 tokens: need 1 to 64 (the model's context length)"),
        (
            Phase.DECODE,
            {"context": 100},
            "decode with a KV cache of 100 slots: need 1 to 64 (the model's context)",
        ),
    ],
)
def test_sizes_out_of_range_are_user_errors(phase: Phase, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        build_decoder(TINY, phase, **kwargs)
    assert str(err.value) == message


def test_config_validation() -> None:
    from dataclasses import replace

    with pytest.raises(UserError, match="n_heads=4 is not a multiple of n_kv_heads=3"):
        replace(TINY, n_kv_heads=3)
    with pytest.raises(UserError, match="head_dim=3 must be even for RoPE"):
        replace(TINY, head_dim=3)
    with pytest.raises(UserError, match="n_layers=0 must be positive"):
        replace(TINY, n_layers=0)
