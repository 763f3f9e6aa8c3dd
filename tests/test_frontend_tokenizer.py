"""The model's tokenizer and chat template (openlpu.frontends.tokenizer) vs transformers' GGUF tokenizer."""

from __future__ import annotations

from pathlib import Path

import frontend_refs as refs
import pytest

from openlpu.errors import UserError
from openlpu.frontends.tokenizer import Tokenizer

pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

TEXTS = [
    "Hello, world!",
    "What is 2+2? The answer is 4.",
    "héllo wörld 你好 🙂 naïve café",
    "<|im_start|>user\nhi<|im_end|>\n",
    "def f(x):\n\treturn x**2  # comment\n\n\n",
    "I'm sure they'll've done it; it's John's.",
    "",
    " ",
    "\n\n \t ",
    "<|endoftext|><repo_name>x<file_sep>",
    "Pi is 3.14159 and e is 2.71828; 1,000,000 apples.",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is a cat?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    [{"role": "user", "content": "Line one\nline two {{ not jinja }} {% raw %}"}],
]


def hf_chat_ids(messages) -> list[int]:
    out = refs.hf_tokenizer().apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_transformers(text: str) -> None:
    ours, hf = refs.our_tokenizer(), refs.hf_tokenizer()
    assert ours.encode(text) == hf.encode(text)
    assert ours.decode(ours.encode(text)) == text


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_transformers(messages, add_generation_prompt: bool) -> None:
    ours = refs.our_tokenizer().apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    hf = refs.hf_tokenizer().apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours == hf


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_ids_equal_transformers(messages) -> None:
    assert refs.our_tokenizer().encode_chat(messages) == hf_chat_ids(messages)


def test_chat_prompt_of_the_model_tests() -> None:
    tok = refs.our_tokenizer()
    assert tok.encode_chat(CONVERSATIONS[0]) == refs.PROMPT_IDS
    assert tok.apply_chat_template(CONVERSATIONS[0]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is a cat?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_special_tokens_and_ids() -> None:
    tok = refs.our_tokenizer()
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 49152)
    assert tok.special_ids == frozenset(range(17))
    assert tok.decode([1, 4093, 2], skip_special=True) == "user"


def test_whitespace_before_a_numeral_follows_llama_cpp_smollm_rule() -> None:
    # llama.cpp's `smollm` pre-tokenizer isolates every \p{N} first, so "  1" is "  " + "1" -> [ĠĠ, 1];
    # transformers' GGUF loader has no `smollm` rule (GPT-2 regex only) and gives " " + " 1" -> [Ġ, Ġ, 1].
    tok = refs.our_tokenizer()
    assert [tok.tokens[i] for i in tok.encode("a  1")] == ["a", "ĠĠ", "1"]
    assert [tok.tokens[i] for i in tok.encode("a ²")] == ["a", "Ġ", "Â²"]


# -------------------------------------------------------------------------------- a tiny synthetic vocabulary


def tiny(**changes) -> Tokenizer:
    args = dict(
        tokens=["<s>", "</s>", "a", "b", "Ġ", "ab", "Ġab", "1"],
        merges=["a b", "Ġ ab"],
        token_types=[3, 3, 1, 1, 1, 1, 1, 1],
        pre="smollm",
        bos_id=0,
        eos_id=1,
        chat_template="{% for m in messages %}{{ bos_token }}{{ m['content'] }}{{ eos_token }}{% endfor %}",
    )
    return Tokenizer(**{**args, **changes})


def test_tiny_vocabulary_bpe_and_specials() -> None:
    tok = tiny()
    assert tok.encode("ab ab<s>") == [5, 6, 0]
    assert tok.encode("ab1") == [5, 7]
    assert tok.apply_chat_template([{"role": "user", "content": "ab"}]) == "<s>ab</s>"


def test_decode_rejects_ids_outside_the_vocabulary() -> None:
    with pytest.raises(UserError) as err:
        tiny().decode([2, 8])
    assert str(err.value) == "token id 8 is outside the vocabulary of 8"


def test_unsupported_pre_tokenizer() -> None:
    with pytest.raises(UserError) as err:
        tiny(pre="qwen2")
    assert (
        str(err.value)
        == "unsupported pre-tokenizer 'qwen2' (tokenizer.ggml.pre); supported: smollm, gpt2, default"
    )


def test_missing_or_broken_chat_template() -> None:
    with pytest.raises(UserError) as err:
        tiny(chat_template=None).apply_chat_template([])
    assert str(err.value) == "this model file has no tokenizer.chat_template; format the prompt yourself"
    with pytest.raises(UserError) as err:
        tiny(chat_template="{% for %}").apply_chat_template([])
    assert str(err.value).startswith("tokenizer.chat_template line 1: ")
    with pytest.raises(UserError) as err:
        tiny(chat_template="{{ raise_exception('roles must alternate') }}").apply_chat_template([])
    assert str(err.value) == "chat template: roles must alternate"


def test_unsupported_tokenizer_model(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "spm.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_string("tokenizer.ggml.model", "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError) as err:
        Tokenizer.from_gguf(path)
    assert str(err.value) == f"{path}: unsupported tokenizer 'llama' (tokenizer.ggml.model); supported: gpt2"
