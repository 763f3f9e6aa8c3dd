"""Load a llama-architecture GGUF file: hyper-parameters, float32 weights, and the decoder graph.

Conventions worth knowing:

* The `gguf` reader reports shapes in ggml order (ne0, the contiguous axis, first); dequantized arrays come
  out row-major as [out, in], which is the IR's weight layout (``matmul`` computes x @ W^T).
* llama.cpp's converter stores each Q and K head's rows interleaved, so that its RoPE rotates adjacent pairs
  (2i, 2i+1). We undo that permutation on load -- as transformers does when it loads GGUF -- so each head's
  rows are in half-split order and the IR's ``rope`` rotates (i, i + Dh/2), as transformers' ``rotate_half``
  does. Scores q.k are unchanged (both sides are permuted alike); the K cache matches transformers' exactly.
* Files without ``output.weight`` tie the output layer to ``token_embd.weight``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from openlpu.errors import UserError
from openlpu.frontends.llama import LlamaConfig, Phase, build_decoder, param_shapes
from openlpu.frontends.models import default_model_path
from openlpu.ir import Graph

SUPPORTED_ARCHITECTURES: tuple[str, ...] = ("llama",)
GGUF_MAGIC = b"GGUF"
_REQUIRED: Any = object()


@dataclass(frozen=True, slots=True)
class GGUFModel:
    """A loaded model: its config (possibly truncated to fewer layers) and its float32 weights by GGUF name.

    `tensor_types` gives each loaded tensor's storage type in the file (``Q4_1``, ``Q8_0``, ``F32``...), for
    sizing; `file_layers` is the file's block count, `config.n_layers` the number loaded.
    """

    path: Path
    architecture: str
    name: str
    config: LlamaConfig
    file_layers: int
    weights: Mapping[str, np.ndarray]
    tensor_types: Mapping[str, str]

    def graph(self, phase: Phase | str, *, tokens: int = 1, context: int | None = None) -> Graph:
        """The decoder graph; see `build_graph`."""
        return build_graph(self, phase, tokens=tokens, context=context)


def open_gguf(path: str | Path | None = None) -> Any:
    """A `gguf.GGUFReader` for `path` (default: the embedded SmolLM2 model).

    Raises `UserError` if the file is missing or is not a GGUF file.
    """
    import gguf

    path = default_model_path() if path is None else Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file not found: {path}; pass the path of an existing .gguf model file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}); "
            "convert the model with llama.cpp's convert_hf_to_gguf.py or pass a .gguf file"
        )
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError) as err:
        raise UserError(
            f"{path}: cannot read it as GGUF ({err}); the file may be truncated or corrupt"
        ) from None


def metadata(reader: Any, key: str, default: Any = _REQUIRED) -> Any:
    """The value of metadata field `key` (a str, number, bool or list), or `default` if absent.

    Raises `UserError` naming the file and key if the field is absent and no default is given.
    """
    field = reader.fields.get(key)
    if field is None:
        if default is not _REQUIRED:
            return default
        raise UserError(f"{reader.data.filename}: GGUF metadata {key!r} is missing; the file is incomplete")
    return field.contents()


def architecture(reader: Any) -> str:
    """``general.architecture``, checked against `SUPPORTED_ARCHITECTURES`."""
    arch = metadata(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"{reader.data.filename}: unsupported architecture {arch!r} (general.architecture); "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


def read_config(reader: Any) -> LlamaConfig:
    """The llama hyper-parameters from the GGUF metadata (``{arch}.block_count`` and friends)."""
    arch = architecture(reader)
    tensors = {t.name: t for t in reader.tensors}
    hidden = int(metadata(reader, f"{arch}.embedding_length"))
    heads = int(metadata(reader, f"{arch}.attention.head_count"))
    head_dim = int(metadata(reader, f"{arch}.attention.key_length", hidden // heads))
    rotary = int(metadata(reader, f"{arch}.rope.dimension_count", head_dim))
    scaling = metadata(reader, f"{arch}.rope.scaling.type", "none")
    if rotary != head_dim or scaling != "none":
        raise UserError(
            f"{reader.data.filename}: RoPE over {rotary} of {head_dim} head dims with scaling "
            f"{scaling!r} is not supported; only full-head, unscaled RoPE is"
        )
    vocab = metadata(reader, f"{arch}.vocab_size", None)
    if vocab is None and "token_embd.weight" in tensors:
        vocab = tensors["token_embd.weight"].shape[-1]  # ggml order: [dim, vocab]
    if vocab is None:
        raise UserError(
            f"{reader.data.filename}: neither {arch}.vocab_size nor token_embd.weight gives the vocab size"
        )
    return LlamaConfig(
        n_layers=int(metadata(reader, f"{arch}.block_count")),
        hidden_size=hidden,
        ffn_size=int(metadata(reader, f"{arch}.feed_forward_length")),
        n_heads=heads,
        n_kv_heads=int(metadata(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        rope_base=float(metadata(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_eps=float(metadata(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        vocab_size=int(vocab),
        context_length=int(metadata(reader, f"{arch}.context_length")),
        tied_embeddings="output.weight" not in tensors,
    )


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder each head's rows of a GGUF Q/K weight [heads*Dh, in] from interleaved-pair to half-split order.

    Row ``2i + j`` of a head (pair i, member j) moves to row ``j*Dh/2 + i``.
    """
    rows = w.shape[0]
    head_dim = rows // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantize(tensor: Any, path: str) -> np.ndarray:
    import gguf

    try:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise UserError(
            f"{path}: tensor {tensor.name!r} is stored as {tensor.tensor_type.name}, which the gguf "
            "package cannot dequantize; re-quantize the model to Q8_0, Q4_0/1 or F16"
        ) from None
    want = tuple(int(d) for d in reversed(tensor.shape))
    return np.asarray(array, dtype=np.float32).reshape(want)


def load_weights(reader: Any, cfg: LlamaConfig) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The float32 weights the decoder of `cfg` reads (only its first `cfg.n_layers` blocks), by GGUF name,
    Q/K rows reordered for half-split RoPE; and each tensor's storage type in the file."""
    path, wanted = str(reader.data.filename), param_shapes(cfg)
    tensors = {t.name: t for t in reader.tensors if t.name in wanted}
    missing = [name for name in wanted if name not in tensors]
    if missing:
        raise UserError(
            f"{path}: tensor {missing[0]!r} is missing ({len(missing)} of {len(wanted)} the llama "
            "decoder needs); the file is incomplete or not a llama model"
        )
    weights: dict[str, np.ndarray] = {}
    for name, shape in wanted.items():
        w = _dequantize(tensors[name], path)
        if w.shape != shape:
            raise UserError(
                f"{path}: tensor {name!r} has shape {list(w.shape)}, the metadata implies {list(shape)}"
            )
        if name.endswith((".attn_q.weight", ".attn_k.weight")):
            w = unpermute_rope_rows(w, cfg.n_heads if ".attn_q." in name else cfg.n_kv_heads)
        weights[name] = w
    return weights, {name: t.tensor_type.name for name, t in tensors.items()}


def load_gguf(
    path: str | Path | None = None, *, n_layers: int | None = None, reader: Any = None
) -> GGUFModel:
    """Load a llama GGUF file (default: the embedded SmolLM2-135M-Instruct), keeping only the first `n_layers`
    blocks if given (for fast tests). Weights are dequantized to float32 (about 540 MB for the whole
    135M-parameter model, ~3 s on 2 cores). Pass an open `gguf.GGUFReader` as `reader` to skip re-reading the
    metadata (~5 s for SmolLM2's 49k-token vocabulary)."""
    reader = reader if reader is not None else open_gguf(path)
    cfg = read_config(reader)
    file_layers = cfg.n_layers
    if n_layers is not None:
        if not 1 <= n_layers <= file_layers:
            raise UserError(
                f"n_layers={n_layers}: the model has {file_layers} blocks; ask for 1 to {file_layers}"
            )
        cfg = replace(cfg, n_layers=n_layers)
    weights, types = load_weights(reader, cfg)
    name = str(metadata(reader, "general.name", Path(reader.data.filename).stem))
    return GGUFModel(Path(reader.data.filename), architecture(reader), name, cfg, file_layers, weights, types)


def build_graph(
    model: GGUFModel | LlamaConfig, phase: Phase | str, *, tokens: int = 1, context: int | None = None
) -> Graph:
    """The decoder `Graph` for `phase` (``prefill`` of `tokens` prompt tokens at positions 0..tokens-1, or
    ``decode`` of one token against a KV cache of `context` slots, default the model's context length)."""
    cfg = model.config if isinstance(model, GGUFModel) else model
    try:
        phase = Phase(phase)
    except ValueError:
        raise UserError(f"unknown phase {phase!r}; use one of {[p.value for p in Phase]}") from None
    return build_decoder(cfg, phase, tokens=tokens, context=context)
