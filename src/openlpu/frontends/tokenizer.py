"""The model's own tokenizer and chat template, built from a GGUF file's metadata, offline.

Byte-level BPE (``tokenizer.ggml.model = gpt2``) runs on the `tokenizers` library: the vocabulary and merges
come from ``tokenizer.ggml.tokens`` / ``tokenizer.ggml.merges``, tokens typed CONTROL (3) are special tokens
matched whole in the text, and ``tokenizer.ggml.pre`` picks how text is split before BPE. The chat template
(``tokenizer.chat_template``, Jinja) renders in a sandboxed `jinja2` environment with the same settings as
transformers' ``apply_chat_template`` (trim_blocks, lstrip_blocks, loop controls).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from openlpu.errors import UserError
from openlpu.frontends.gguf import metadata, open_gguf

CONTROL_TOKEN_TYPE = 3
"""``tokenizer.ggml.token_type`` value of special tokens such as ``<|im_start|>``."""

SUPPORTED_TOKENIZERS = ("gpt2",)
SUPPORTED_PRE_TOKENIZERS = ("smollm", "gpt2", "default")


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"the tokenizer needs the {module!r} package; run `pip install -r requirements-model.txt`"
        ) from None


def _pre_tokenizer(pre: str) -> Any:
    """Splitting before BPE, as llama.cpp does for `pre`: ``smollm`` first isolates every numeric character
    (regex ``\\p{N}``), then both apply the GPT-2 byte-level regex.

    transformers' GGUF loader knows no ``smollm`` rule and uses the GPT-2 regex alone; the two differ only
    where whitespace precedes a numeral (``"a  1"``, ``"a ²"``), see docs/frontend.md.
    """
    tk = _require("tokenizers")
    pt = tk.pre_tokenizers
    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        return pt.Sequence([pt.Split(tk.Regex(r"\p{N}"), behavior="isolated"), byte_level])
    if pre in ("gpt2", "default"):
        return byte_level
    raise UserError(
        f"unsupported pre-tokenizer {pre!r} (tokenizer.ggml.pre); supported: "
        f"{', '.join(SUPPORTED_PRE_TOKENIZERS)}"
    )


class Tokenizer:
    """Text to token ids and back, plus the chat template; see the module docstring for the conventions."""

    def __init__(
        self,
        *,
        tokens: Sequence[str],
        merges: Sequence[str],
        token_types: Sequence[int],
        pre: str,
        bos_id: int,
        eos_id: int,
        chat_template: str | None,
    ) -> None:
        tk = _require("tokenizers")
        bpe = tk.models.BPE(
            vocab={t: i for i, t in enumerate(tokens)},
            merges=[tuple(m.split(" ", 1)) for m in merges],
            fuse_unk=False,
        )
        self._tk = tk.Tokenizer(bpe)
        self._tk.pre_tokenizer = _pre_tokenizer(pre)
        self._tk.decoder = tk.decoders.ByteLevel()
        specials = [t for t, kind in zip(tokens, token_types, strict=True) if kind == CONTROL_TOKEN_TYPE]
        self._tk.add_special_tokens([tk.AddedToken(t, special=True, normalized=False) for t in specials])
        self.tokens = tuple(tokens)
        self.special_ids = frozenset(i for i, kind in enumerate(token_types) if kind == CONTROL_TOKEN_TYPE)
        self.bos_id, self.eos_id, self.chat_template = bos_id, eos_id, chat_template

    @classmethod
    def from_gguf(cls, path: str | Path | None = None, *, reader: Any = None) -> Tokenizer:
        """The tokenizer of a GGUF file (default: the embedded SmolLM2 model) or of an open GGUFReader."""
        reader = reader if reader is not None else open_gguf(path)
        kind = metadata(reader, "tokenizer.ggml.model")
        if kind not in SUPPORTED_TOKENIZERS:
            raise UserError(
                f"{reader.data.filename}: unsupported tokenizer {kind!r} (tokenizer.ggml.model); "
                f"supported: {', '.join(SUPPORTED_TOKENIZERS)}"
            )
        tokens = metadata(reader, "tokenizer.ggml.tokens")
        return cls(
            tokens=tokens,
            merges=metadata(reader, "tokenizer.ggml.merges"),
            token_types=metadata(reader, "tokenizer.ggml.token_type", [1] * len(tokens)),
            pre=metadata(reader, "tokenizer.ggml.pre", "default"),
            bos_id=int(metadata(reader, "tokenizer.ggml.bos_token_id")),
            eos_id=int(metadata(reader, "tokenizer.ggml.eos_token_id")),
            chat_template=metadata(reader, "tokenizer.chat_template", None),
        )

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text (``<|im_start|>``) become their single id.
        No BOS is added (the file says ``add_bos_token = false``; chat templates write it themselves)."""
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """The text of `ids` (invalid UTF-8 sequences become U+FFFD)."""
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise UserError(f"token id {bad[0]} is outside the vocabulary of {self.vocab_size}")
        return self._tk.decode(list(ids), skip_special_tokens=skip_special)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        """The prompt text for a conversation of ``{"role": ..., "content": ...}`` messages, rendered with the
        file's chat template; with `add_generation_prompt`, ending where the assistant's reply begins."""
        if not self.chat_template:
            raise UserError("this model file has no tokenizer.chat_template; format the prompt yourself")
        template = _compile(self.chat_template)
        return template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self.tokens[self.bos_id],
            eos_token=self.tokens[self.eos_id],
        )

    def encode_chat(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of `apply_chat_template`'s text."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt))


def _raise_exception(message: str) -> None:
    """Templates call ``raise_exception('...')`` to reject a conversation (e.g. roles out of order)."""
    raise UserError(f"chat template: {message}")


@functools.lru_cache(maxsize=8)
def _compile(source: str) -> Any:
    jinja2 = _require("jinja2")
    ext, sandbox = _require("jinja2.ext"), _require("jinja2.sandbox")
    env = sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols]
    )
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise UserError(f"tokenizer.chat_template line {err.lineno}: {err.message}") from None
