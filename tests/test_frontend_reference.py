"""Running model graphs with the interpreter (openlpu.frontends.reference), on a tiny random model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_frontend_llama import TINY, random_weights

from openlpu.errors import UserError
from openlpu.frontends.gguf import GGUFModel
from openlpu.frontends.llama import Phase
from openlpu.frontends.reference import decode, empty_cache, greedy_generate, prefill

MODEL = GGUFModel(Path("tiny.gguf"), "llama", "tiny", TINY, TINY.n_layers, random_weights(TINY, seed=2), {})


def test_prefill_places_kv_rows_into_a_zeroed_cache() -> None:
    step = prefill(MODEL, [1, 2, 3], context=8)
    assert step.logits.shape == (TINY.vocab_size,)
    assert len(step.cache) == TINY.n_layers and step.cache[0][0].shape == (TINY.n_kv_heads, 8, TINY.head_dim)
    assert step.cache[0][0][:, :3].any() and not step.cache[0][0][:, 3:].any()


def test_decode_steps_match_prefill_of_the_longer_sequence() -> None:
    ids, context = [5, 9, 13, 2, 30, 7], 8
    graph = MODEL.graph(Phase.DECODE, context=context)
    step = prefill(MODEL, ids[:3], context=context)
    for position in range(3, len(ids)):
        step = decode(MODEL, graph, ids[position], position, step.cache)
        full = prefill(MODEL, ids[: position + 1], context=context)
        np.testing.assert_allclose(step.logits, full.logits, rtol=1e-5, atol=1e-5)
        for (k, v), (fk, fv) in zip(step.cache, full.cache, strict=True):
            np.testing.assert_allclose(k, fk, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(v, fv, rtol=1e-5, atol=1e-6)


def test_greedy_generate_agrees_with_argmax_of_repeated_prefill() -> None:
    ids = [4, 11]
    got = greedy_generate(MODEL, ids, 5)
    expected = list(ids)
    for _ in range(5):
        expected.append(int(np.argmax(prefill(MODEL, expected, context=16).logits)))
    assert got == expected[2:]


def test_greedy_generate_stops_after_a_stop_token() -> None:
    first = greedy_generate(MODEL, [4, 11], 1)[0]
    assert greedy_generate(MODEL, [4, 11], 5, stop_ids=[first]) == [first]


def test_sizes_that_do_not_fit_are_user_errors() -> None:
    with pytest.raises(
        UserError, match=r"^prompt of 3 tokens does not fit a context of 2; shorten it or raise"
    ):
        prefill(MODEL, [1, 2, 3], context=2)
    with pytest.raises(UserError, match=r"^2 prompt \+ 5 new tokens exceed the context of 4$"):
        greedy_generate(MODEL, [1, 2], 5, context=4)


def test_empty_cache_shape() -> None:
    cache = empty_cache(MODEL, 5)
    assert [k.shape for k, _ in cache] == [(TINY.n_kv_heads, 5, TINY.head_dim)] * TINY.n_layers
