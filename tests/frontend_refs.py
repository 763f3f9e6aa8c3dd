"""Shared references for the frontend tests, each built once per test process (functools.cache).

* the embedded SmolLM2-135M-Instruct GGUF and a copy cut to `REF_LAYERS` blocks without tokenizer metadata
  (transformers loads it in ~4 s instead of ~35 s for the whole file);
* our loaded models and tokenizer, and transformers' model and tokenizer for the same files, in float32.

Everything skips cleanly when the model package, torch or transformers is missing. Not a test module (no
``test_`` prefix); test files import it by name, as pytest puts this folder on sys.path.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from openlpu.frontends.llama import LlamaConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read before transformers is imported: never touch the network

REF_LAYERS = 2

#: A llama config small enough to build and interpret graphs in milliseconds.
TINY = LlamaConfig(
    n_layers=2,
    hidden_size=16,
    ffn_size=24,
    n_heads=4,
    n_kv_heads=2,
    head_dim=4,
    rope_base=10000.0,
    rms_eps=1e-5,
    vocab_size=32,
    context_length=64,
    tied_embeddings=False,
)
"""Blocks kept in the truncated model used by the default (fast) tests."""

PROMPT_IDS = [
    1,
    9690,
    198,
    2683,
    359,
    253,
    5356,
    5646,
    11173,
    3365,
    3511,
    308,
    34519,
    28,
    7018,
    411,
    407,
    19712,
    8182,
    2,
    198,
    1,
    4093,
    198,
    1780,
    314,
    253,
    2644,
    47,
    2,
    198,
    1,
    520,
    9531,
    198,
]
"""A chat prompt (system, user 'What is a cat?', assistant turn): 35 tokens, fixed; needs no tokenizer."""


@functools.cache
def model_path() -> Path:
    from openlpu.errors import UserError
    from openlpu.frontends.models import default_model_path

    try:
        return default_model_path()
    except UserError as err:
        pytest.skip(str(err))


@functools.cache
def reader() -> Any:
    from openlpu.frontends.gguf import open_gguf

    return open_gguf(model_path())


def write_truncated_gguf(src: Any, dst: Path, n_layers: int, *, keep_tokenizer: bool = False) -> Path:
    """Copy the GGUF open in reader `src` to `dst`, keeping the first `n_layers` blocks (bytes unchanged)."""
    import gguf

    arch = src.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch=arch)
    for key, field in src.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key.startswith("tokenizer.") and not keep_tokenizer:
            continue
        value = n_layers if key == f"{arch}.block_count" else field.contents()
        sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub)
    for t in src.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= n_layers:
            continue
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@functools.cache
def truncated_path(n_layers: int = REF_LAYERS) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="openlpu-frontend-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return write_truncated_gguf(reader(), folder / f"smollm2-{n_layers}l.gguf", n_layers)


@functools.cache
def our_model(n_layers: int | None = REF_LAYERS) -> Any:
    """Our load of the embedded model (n_layers=None: all 30 blocks)."""
    from openlpu.frontends.gguf import load_gguf

    return load_gguf(n_layers=n_layers, reader=reader())


@functools.cache
def our_tokenizer() -> Any:
    from openlpu.frontends.tokenizer import Tokenizer

    return Tokenizer.from_gguf(reader=reader())


def _transformers() -> tuple[Any, Any]:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    return torch, transformers


@functools.cache
def hf_model(n_layers: int | None = REF_LAYERS) -> Any:
    """transformers' float32 model of the truncated file (or of the whole file for n_layers=None)."""
    torch, transformers = _transformers()
    path = model_path() if n_layers is None else truncated_path(n_layers)
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


@functools.cache
def hf_tokenizer() -> Any:
    _, transformers = _transformers()
    path = model_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def hf_forward(model: Any, ids: list[int]) -> tuple[Any, Any]:
    """transformers' logits [len(ids), vocab] (numpy) and its KV cache for one sequence."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
    return out.logits[0].numpy(), out.past_key_values


def hf_kv(cache: Any, layer: int) -> tuple[Any, Any]:
    """Layer `layer`'s (K, V) from a transformers cache, each numpy [kv_heads, tokens, head_dim]."""
    entry = cache.layers[layer]
    return entry.keys[0].numpy(), entry.values[0].numpy()


def hf_greedy(model: Any, ids: list[int], n_new: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=n_new, do_sample=False, eos_token_id=2, pad_token_id=2
        )
    return out[0, len(ids) :].tolist()
