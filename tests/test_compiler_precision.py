"""The precision pass and the chip-numerics interpreter (openlpu.compiler.precision).

Tolerances against transformers' float32 forward, max |d logits| over the prompt's step and 4 decode steps
(measured on the 2-core x86_64 machine; the method and whole-model numbers are in docs/precision.md):

* fp16: the unit roundoff of fp16 is u = 2**-11 ~ 4.9e-4 and every matmul input is rounded once, so logits of
  magnitude L (~30-70 here) move by a few u * L. Measured 0.027 on 2 blocks, at most 0.047 on all 30 blocks over
  32 steps of 4 chat prompts. `FP16_TOL` = 0.1 for both.
* int8 weights only (w8a16): measured 0.57 (2 blocks), 1.45 (30 blocks): tolerances 1.5 and 3.
* int8 weights and activations (w8a8): measured 2.5 (2 blocks), 5.1 (30 blocks): tolerances 5 and 10.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path

import frontend_refs as refs
import numpy as np
import pytest
from test_frontend_llama import TINY, random_weights

from openlpu.compiler.precision import (
    FP16,
    INT8,
    PASS_DEPTH,
    W8A16,
    Precision,
    StoredTensor,
    chip_rules,
    chip_runner,
    interpret_chip,
    quantize_int8_rows,
    quantize_tokens,
    quantize_weights,
    step_logits,
)
from openlpu.errors import UserError
from openlpu.frontends.gguf import GGUFModel
from openlpu.frontends.reference import greedy_generate
from openlpu.ir import GraphBuilder, IRError, Op, interpret
from openlpu.isa.types import DType
from openlpu.sim import numerics as nx

FP16_TOL, W8A16_TOL, INT8_TOL = 0.1, 1.5, 5.0
"""max |logits - transformers'| allowed, per step, on the 2-block model; fp16 also holds for the whole model."""
WHOLE_W8A16_TOL, WHOLE_INT8_TOL = 3.0, 10.0
"""The same for int8 on all 30 blocks."""
CHAT_PROMPTS = (
    "What is a cat?",
    "Explain photosynthesis in simple terms.",
    "Write a short poem about the sea.",
    "Give me three tips for learning to program.",
)
"""User messages for the whole-model tests (chat template with its default system prompt)."""
STEPS = 32
U16 = 2.0**-11
RNG = np.random.default_rng(7)


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


# --- Precision --------------------------------------------------------------------------------------------------


def test_default_precision_is_fp16_weights_and_activations() -> None:
    assert (FP16.weights, FP16.activations) == ("fp16", "fp16") and Precision() == FP16
    assert (str(FP16), str(W8A16), str(INT8)) == ("wfp16-afp16", "wint8-afp16", "wint8-aint8")


def test_bad_precisions_are_user_errors() -> None:
    with pytest.raises(UserError) as err:
        Precision(weights="bf16")
    assert str(err.value) == "precision: weights='bf16' is not a matmul format; choose one of fp16, int8"
    with pytest.raises(UserError) as err:
        Precision(activations="int8")
    assert str(err.value) == (
        "precision: activations='int8' needs weights='int8' (the MXM multiplies int8 x int8 or fp16 x fp16); "
        "set weights='int8' or activations='fp16'"
    )


# --- quantisation -----------------------------------------------------------------------------------------------


def test_int8_weights_round_trip_within_half_a_step() -> None:
    w = rand(40, 300, scale=0.05)
    w[3, 17] = 2.0  # an outlier: its row's scale is 40x coarser
    w[5] = 0.0
    q, scale = quantize_int8_rows(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (40,)
    assert np.abs(q).max() == 127 and np.all(np.abs(q).max(axis=1)[np.arange(40) != 5] == 127)
    error = np.abs(q.astype(np.float64) * scale[:, None] - w)
    assert np.all(error <= scale[:, None] / 2)  # exact: the division is done in fp64 (see quantize_int8_rows)
    assert scale[5] == 1 and not q[5].any()
    np.testing.assert_array_equal(StoredTensor(q, scale).dequantize(), q.astype(np.float32) * scale[:, None])


def test_quantize_weights_stores_matrices_in_the_weight_format_and_vectors_in_fp32() -> None:
    weights = {"m": rand(8, 20), "v": rand(20)}
    fp16, int8 = quantize_weights(weights, FP16), quantize_weights(weights, INT8)
    assert fp16["m"].data.dtype == np.float16 and fp16["m"].scale is None
    assert int8["m"].data.dtype == np.int8 and int8["m"].scale.shape == (8,)
    for stored in (fp16, int8):
        assert stored["v"].data.dtype == np.float32 and stored["v"].scale is None
        np.testing.assert_array_equal(stored["v"].dequantize(), weights["v"])
    relative = np.abs(fp16["m"].dequantize() - weights["m"]) / np.abs(weights["m"])
    assert relative.max() <= U16  # round to nearest: half an fp16 ulp, 2**-11 relative


def test_dynamic_int8_activations_round_trip_within_half_a_step() -> None:
    x = rand(6, 500, scale=3.0)
    x[2] = 0.0
    q, scale = quantize_tokens(x)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    assert np.abs(q).max() <= 127 and scale[2] == 1 and not q[2].any()
    error = np.abs(q.astype(np.float64) * scale[:, None] - x)
    # x * recip(scale) is rounded twice in fp32 (<= 127 * 2**-23 off), on top of rounding to the nearest integer
    assert np.all(error <= scale[:, None] * (0.5 + 127 * 2.0**-22))


# --- the MXM rules, bit for bit ---------------------------------------------------------------------------------


def tile_by_tile(a: np.ndarray, b: np.ndarray, dtype: DType) -> np.ndarray:
    """a [M, K] @ b [K, N] one row and one 320 x 320 weight tile at a time, as the matmul kernel schedules it."""
    k_pad, n_pad = (-(-size // PASS_DEPTH) * PASS_DEPTH for size in b.shape)
    ap = np.zeros((a.shape[0], k_pad), a.dtype)
    ap[:, : a.shape[1]] = a
    bp = np.zeros((k_pad, n_pad), b.dtype)
    bp[: b.shape[0], : b.shape[1]] = b
    out = np.zeros((a.shape[0], n_pad), np.int32 if dtype is DType.INT8 else np.float32)
    for m in range(a.shape[0]):
        for n0 in range(0, n_pad, PASS_DEPTH):
            acc = None
            for k0 in range(0, k_pad, PASS_DEPTH):
                tile = nx.mxm_pass(
                    ap[m : m + 1, k0 : k0 + PASS_DEPTH], bp[k0 : k0 + PASS_DEPTH, n0 : n0 + PASS_DEPTH], dtype
                )
                acc = tile if acc is None else nx.accumulate(acc, tile, dtype)
            out[m : m + 1, n0 : n0 + PASS_DEPTH] = acc
    return out[:, : b.shape[1]]


def exact_pass(products: list[float]) -> np.float32:
    """One pass's sum as docs/isa.md specifies it: the exact sum of the products, rounded once to fp32 (nearest,
    ties to even), computed here with rationals."""
    exact = sum((Fraction(p) for p in products), Fraction(0))
    r = np.float32(float(exact))
    near = [np.nextafter(r, np.float32(-np.inf)), r, np.nextafter(r, np.float32(np.inf))]
    return min(near, key=lambda c: (abs(Fraction(float(c)) - exact), int(np.float32(c).view(np.uint32)) & 1))


def run_matmul(x: np.ndarray, w: np.ndarray, precision: Precision) -> np.ndarray:
    b = GraphBuilder("mm")
    b.input("x", x.shape)
    b.param("w", w.shape)
    b.op(Op.MATMUL, "y", "x", "w")
    return interpret_chip(b.build(["y"]), {"x": x}, quantize_weights({"w": w}, precision), precision)["y"]


def test_fp16_matmul_rule_equals_tile_by_tile_and_the_exact_pass_sum() -> None:
    x, w = rand(2, 3, 700), rand(37, 700, scale=0.1)  # K = 700: 3 passes, the last one padded
    got = run_matmul(x, w, FP16)
    x16, w16 = x.reshape(6, 700).astype(np.float16), w.astype(np.float16)
    np.testing.assert_array_equal(got.reshape(6, 37), tile_by_tile(x16, w16.T, DType.FP16))
    x64, w64 = np.zeros((6, 960)), np.zeros((37, 960))  # fp16 values, zero-padded to 3 passes
    x64[:, :700], w64[:, :700] = x16, w16
    for m, n in ((0, 0), (5, 36)):
        passes = [
            exact_pass([x64[m, k] * w64[n, k] for k in range(k0, k0 + PASS_DEPTH)])
            for k0 in range(0, 960, PASS_DEPTH)
        ]
        assert got.reshape(6, 37)[m, n] == (passes[0] + passes[1]) + passes[2]


def test_int8_matmul_rule_equals_tile_by_tile_then_rescaled() -> None:
    x, w = rand(5, 1000), rand(9, 1000, scale=0.1)
    q, x_scale = quantize_tokens(x)
    wq, w_scale = quantize_int8_rows(w)
    acc = tile_by_tile(q, wq.T, DType.INT8)
    np.testing.assert_array_equal(acc, q.astype(np.int64) @ wq.T.astype(np.int64))  # exact
    expected = acc.astype(np.float32) * (x_scale[:, None] * w_scale[None, :])
    np.testing.assert_array_equal(run_matmul(x, w, INT8), expected)


def test_weight_only_int8_matmul_runs_fp16_passes_then_rescales() -> None:
    x, w = rand(4, 330), rand(11, 330)
    wq, w_scale = quantize_int8_rows(w)
    expected = tile_by_tile(x.astype(np.float16), wq.T.astype(np.float16), DType.FP16) * w_scale[None, :]
    np.testing.assert_array_equal(run_matmul(x, w, W8A16), expected)


@pytest.mark.parametrize("transpose_b", [True, False])
def test_attention_batch_matmul_runs_fp16_passes_per_batch(transpose_b: bool) -> None:
    a, b = rand(3, 4, 400), (rand(3, 6, 400) if transpose_b else rand(3, 400, 6))
    g = GraphBuilder("bmm")
    g.input("a", a.shape)
    g.input("b", b.shape)
    g.op(Op.BATCH_MATMUL, "y", "a", "b", transpose_b=transpose_b)
    for precision in (FP16, INT8):  # attention is fp16 whatever the activations' format
        got = interpret_chip(g.build(["y"]), {"a": a, "b": b}, {}, precision)["y"]
        for i in range(3):
            bi = (b[i].T if transpose_b else b[i]).astype(np.float16)
            np.testing.assert_array_equal(got[i], tile_by_tile(a[i].astype(np.float16), bi, DType.FP16))


def test_every_op_has_a_chip_rule_and_non_matmul_ops_compute_as_the_fp32_reference() -> None:
    assert set(chip_rules(FP16)) == set(Op)
    b = GraphBuilder("vxm")
    b.input("x", (3, 8))
    b.input("ids", (3,), "int32")
    b.param("table", (5, 8))
    b.param("w", (8,))
    e = b.op(Op.EMBEDDING, "e", "table", "ids")
    h = b.op(Op.RMSNORM, "h", b.op(Op.ADD, "s", "x", e), "w", eps=1e-5)
    b.op(Op.SOFTMAX, "p", b.op(Op.SCALE, "t", b.op(Op.SILU, "a", h), factor=0.5))
    graph = b.build(["p"])
    weights = {"table": rand(5, 8).astype(np.float16).astype(np.float32), "w": rand(8)}  # exact in fp16
    inputs = {"x": rand(3, 8), "ids": np.array([4, 0, 4], np.int32)}
    got = interpret_chip(graph, inputs, quantize_weights(weights, FP16))["p"]
    np.testing.assert_array_equal(got, interpret(graph, inputs, weights)["p"])


def test_unquantised_or_mismatched_weights_are_errors() -> None:
    b = GraphBuilder("mm")
    b.input("x", (1, 4))
    b.param("w", (2, 4))
    b.op(Op.MATMUL, "y", "x", "w")
    graph, x, w = b.build(["y"]), {"x": rand(1, 4)}, {"w": rand(2, 4)}
    with pytest.raises(IRError) as err:
        interpret_chip(graph, x, w)
    assert str(err.value) == (
        "graph 'mm': param 'w' needs its stored form; pass quantize_weights(weights, precision) as `weights`"
    )
    with pytest.raises(IRError) as err:
        interpret_chip(graph, x, quantize_weights(w, FP16), INT8)
    assert str(err.value) == (
        "param 'w': stored as float16[2, 4], but precision wint8-aint8 needs int8[2, 4]; quantize the weights "
        "with the same precision"
    )


# --- whole models -----------------------------------------------------------------------------------------------

TINY_MODEL = GGUFModel(Path("tiny.gguf"), "llama", "tiny", TINY, TINY.n_layers, random_weights(TINY, seed=3), {})


def test_step_logits_with_the_reference_interpreter_is_greedy_generation() -> None:
    run = lambda graph, inputs: interpret(graph, inputs, TINY_MODEL.weights)
    logits = step_logits(TINY_MODEL, run, [3, 1, 4], 6)
    assert logits.argmax(-1).tolist() == greedy_generate(TINY_MODEL, [3, 1, 4], 6)
    forced = step_logits(TINY_MODEL, run, [3, 1, 4], 6, forced=logits.argmax(-1)[:-1])
    np.testing.assert_array_equal(forced, logits)


def test_tiny_model_in_fp16_stays_within_fp16_rounding_of_fp32() -> None:
    ref = step_logits(TINY_MODEL, lambda g, i: interpret(g, i, TINY_MODEL.weights), [3, 1, 4], 4)
    for precision, tol in ((FP16, 0.01), (INT8, 0.2)):
        chip = step_logits(
            TINY_MODEL,
            chip_runner(quantize_weights(TINY_MODEL.weights, precision), precision),
            [3, 1, 4],
            4,
            forced=ref.argmax(-1)[:-1],
        )
        assert 0 < np.abs(chip - ref).max() <= tol * np.abs(ref).max()


def transformers_steps(model: object, ids: list[int], steps: int) -> np.ndarray:
    """transformers' greedy decoding with its KV cache: logits [steps, vocab] (step i feeds step i-1's argmax)."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        logits = [out.logits[0, -1].numpy()]
        for _ in range(steps - 1):
            token = torch.tensor([[int(np.argmax(logits[-1]))]])
            out = model(token, cache=out.cache, use_cache=True)
            logits.append(out.logits[0, -1].numpy())
    return np.stack(logits)


@pytest.mark.parametrize(("precision", "tol"), [(FP16, FP16_TOL), (W8A16, W8A16_TOL), (INT8, INT8_TOL)])
def test_two_block_model_logits_agree_with_transformers(precision: Precision, tol: float) -> None:
    model, hf = refs.our_model(), refs.hf_model()
    expected = transformers_steps(hf, refs.PROMPT_IDS, 5)
    run = chip_runner(quantize_weights(model.weights, precision), precision)
    got = step_logits(model, run, refs.PROMPT_IDS, 5, forced=expected.argmax(-1)[:-1])
    error = np.abs(got - expected).max()
    assert error <= tol, f"{precision}: max |logits - transformers| = {error:.3g} > {tol}"


@functools.cache
def stored(n_layers: int | None, precision: Precision) -> dict[str, StoredTensor]:
    return quantize_weights(refs.our_model(n_layers).weights, precision)


def whole_model_steps(prompt: str, precision: Precision) -> tuple[np.ndarray, np.ndarray]:
    """(transformers' greedy logits, ours teacher-forced on its tokens), each [STEPS, vocab], for the whole model.

    Teacher forcing gives the same greedy tokens as free-running generation up to the first step whose argmax
    differs, so "greedy agrees for 32 tokens" is "every step's argmax agrees"."""
    ids = refs.our_tokenizer().encode_chat([{"role": "user", "content": prompt}])
    expected = transformers_steps(refs.hf_model(None), ids, STEPS)
    run = chip_runner(stored(None, precision), precision)
    return expected, step_logits(refs.our_model(None), run, ids, STEPS, forced=expected.argmax(-1)[:-1])


@pytest.mark.slow
@pytest.mark.parametrize("prompt", CHAT_PROMPTS)
def test_whole_model_fp16_greedy_tokens_and_logits_agree_with_transformers(prompt: str) -> None:
    expected, got = whole_model_steps(prompt, FP16)
    tokens, error = expected.argmax(-1), np.abs(got - expected).max(axis=-1)
    top2 = np.argsort(expected, axis=-1)[:, -2:]
    margin = np.take_along_axis(expected, top2, -1) @ [-1, 1]
    ours = np.take_along_axis(got, top2, -1) @ [-1, 1]
    closest = int(np.argmin(margin))
    print(
        f"\n{prompt!r}: max |d logits| {error.max():.4f} (median step {np.median(error):.4f}); closest call at "
        f"step {closest}: transformers' margin {margin[closest]:.4f}, ours {ours[closest]:.4f}; largest margin "
        f"change {np.abs(ours - margin).max():.4f}"
    )
    assert error.max() <= FP16_TOL
    assert got.argmax(-1).tolist() == tokens.tolist()


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "tol"), [(W8A16, WHOLE_W8A16_TOL), (INT8, WHOLE_INT8_TOL)])
def test_whole_model_int8_logits_agree_with_transformers_within_int8_tolerance(
    precision: Precision, tol: float
) -> None:
    expected, got = whole_model_steps(CHAT_PROMPTS[0], precision)
    assert np.abs(got - expected).max() <= tol
