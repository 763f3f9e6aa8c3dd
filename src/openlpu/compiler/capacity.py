"""Capacity planning: how many chips a model needs when weights, KV cache and activations all live in SRAM.

An LPU has no DRAM (reference §1.3), so SRAM capacity alone sets the chip count. The model becomes a pipeline
of contiguous layer ranges, one per chip (reference §7 #17: pipeline parallelism across chips, each layer's KV
cache on the chip that runs its attention). Sizes are exact bytes in the chip layout (`compiler.sram`). A chip
holds:

* weights: matmul weights in the MXM layout (fp16, or int8 plus one fp32 scale per output channel), RMSNorm
  weights as fp32 rows (the VXM computes in fp32);
* the fp16 KV cache of its layers for `context` positions, one row of kv_heads * head_dim lanes per position;
* one activation working set: its stages run one after another, so it needs the largest live set of any one
  of them (a decode step), not their sum;
* `CapacityOptions.instruction_slices` whole MEM slices for the program (instructions live in MEM).

The embedding table is read at the first stage (a gather of token rows) and, when tied, again as the output
projection at the last. On one chip it is stored once, in the MXM layout the output head streams for every
token (the gather then reads a token's column: `hidden` reads, small next to the head's own traffic). In a
pipeline the first and last stages are on different chips, so it is stored twice: as rows [vocab, hidden] on
the first chip and in the MXM layout on the last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from openlpu.compiler.sram import (
    KV_DTYPE,
    MIB,
    gather_table_sram_bytes,
    mib,
    stage_working_sets,
    tensor_sram_bytes,
    weight_sram_bytes,
)
from openlpu.errors import DoesNotFitError, InternalError, UserError
from openlpu.frontends.gguf import GGUFModel, metadata, open_gguf, read_config
from openlpu.frontends.llama import LlamaConfig, param_shapes
from openlpu.hardware.chip import Chip
from openlpu.isa.types import DType

WeightType = Literal["fp16", "int8"]
WEIGHT_TYPES: tuple[str, ...] = ("fp16", "int8")
TABLE = "token_embd.weight"


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityOptions:
    """What a plan sets aside on every chip."""

    instruction_slices: int = 4
    """Whole MEM slices per chip kept for instructions. Instructions live in MEM and are fetched with Ifetch
    (reference §1.3; the toolchain reserves slices with ``--extraInstMemSlices``). At one 16-byte Ifetch word
    per instruction a GroqChip 1 slice holds 8,192 x 320 / 16 = 163,840 of them. This project's kernels list
    ~4.6k instructions for one SmolLM2 layer's matmuls, 169 for an RMSNorm row, 749 for a 9 x 1,024 softmax
    and ~34k for the output head: a decode step is about 2.5e5 instructions, 1.5 slices. The prefill and
    decode programs both stay resident (there is no DRAM to page from), hence 4 slices, a pair per hemisphere:
    10 MiB, 4.5 % of a GroqChip 1."""

    def __post_init__(self) -> None:
        if self.instruction_slices < 0:
            raise UserError(f"instruction_slices={self.instruction_slices} must be 0 or more")

    def reserved_bytes(self, chip: Chip) -> int:
        """Bytes per chip set aside for instructions."""
        if self.instruction_slices >= chip.mem_slices:
            raise UserError(f"instruction_slices={self.instruction_slices} leaves nothing of chip "
                            f"{chip.name}'s {chip.mem_slices} MEM slices; reserve fewer")
        return self.instruction_slices * chip.slice_bytes


# -------------------------------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelShape:
    """The hyper-parameters that size a llama decoder (element counts), from the GGUF metadata alone."""

    name: str
    n_layers: int
    hidden_size: int
    ffn_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, cfg: LlamaConfig, name: str = "llama") -> ModelShape:
        return cls(name=name, n_layers=cfg.n_layers, hidden_size=cfg.hidden_size, ffn_size=cfg.ffn_size,
                   n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
                   vocab_size=cfg.vocab_size, context_length=cfg.context_length,
                   tied_embeddings=cfg.tied_embeddings)

    @property
    def kv_dim(self) -> int:
        """Elements per position of K (and of V): kv_heads * head_dim."""
        return self.n_kv_heads * self.head_dim

    def config(self) -> LlamaConfig:
        """A `LlamaConfig` of this shape, to build graphs for sizing: rope_base and rms_eps change values, not
        sizes, so they are placeholders."""
        return LlamaConfig(n_layers=self.n_layers, hidden_size=self.hidden_size, ffn_size=self.ffn_size,
                           n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
                           rope_base=10000.0, rms_eps=1e-5, vocab_size=self.vocab_size,
                           context_length=self.context_length, tied_embeddings=self.tied_embeddings)


def model_shape(model: ModelShape | GGUFModel | LlamaConfig | str | Path | None = None) -> ModelShape:
    """The shape of `model`: a loaded model, a config, or a GGUF file (None: the embedded SmolLM2) of which
    only the metadata is read (no weight is dequantised)."""
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, GGUFModel):
        return ModelShape.from_config(model.config, model.name)
    if isinstance(model, LlamaConfig):
        return ModelShape.from_config(model)
    reader = open_gguf(model)
    name = str(metadata(reader, "general.name", Path(str(reader.data.filename)).stem))
    return ModelShape.from_config(read_config(reader), name)


# ------------------------------------------------------------------------------------------------- parts


@dataclass(frozen=True, slots=True, kw_only=True)
class Part:
    """A pipeline item (the embedding, a decoder layer or the output head) and the SRAM it needs, in bytes.

    `weights` lists (tensor name, bytes). The activation figures are working sets: a decode step, and a
    prefill of the plan's `context` tokens in one pass."""

    name: str
    weights: tuple[tuple[str, int], ...]
    kv_cache_bytes: int
    decode_activation_bytes: int
    prefill_activation_bytes: int

    @property
    def weight_bytes(self) -> int:
        return sum(b for _, b in self.weights)

    @property
    def static_bytes(self) -> int:
        """What stays in SRAM from step to step: weights plus KV cache."""
        return self.weight_bytes + self.kv_cache_bytes

    def to_json(self) -> dict:
        return {"name": self.name, "weights": dict(self.weights), "weight_bytes": self.weight_bytes,
                "kv_cache_bytes": self.kv_cache_bytes,
                "decode_activation_bytes": self.decode_activation_bytes,
                "prefill_activation_bytes": self.prefill_activation_bytes}


def _param_bytes(shape: tuple[int, ...], dt: DType, chip: Chip) -> int:
    """A norm weight [D] is an fp32 row; a matmul weight [N, K] (out, in) is an MXM weight B [K, N]."""
    if len(shape) == 1:
        return tensor_sram_bytes(1, shape[0], DType.FP32, chip)
    return weight_sram_bytes(shape[1], shape[0], dt, chip)


def _parts(shape: ModelShape, chip: Chip, dt: DType, context: int) -> tuple[Part, tuple[Part, ...], Part]:
    """The embedding, every layer and the output head, each with its own copy of what it reads."""
    params = param_shapes(shape.config())
    ws = stage_working_sets(shape.config(), context, dt, chip)
    kv = 2 * tensor_sram_bytes(context, shape.kv_dim, KV_DTYPE, chip)  # K and V, one row per position

    def part(name: str, weights: list[tuple[str, int]], kv_bytes: int = 0) -> Part:
        key = "layer" if name.startswith("blk.") else name
        return Part(name=name, weights=tuple(weights), kv_cache_bytes=kv_bytes,
                    decode_activation_bytes=ws[key][0], prefill_activation_bytes=ws[key][1])

    layers = tuple(part(f"blk.{i}", [(n, _param_bytes(s, dt, chip)) for n, s in params.items()
                                     if n.startswith(f"blk.{i}.")], kv) for i in range(shape.n_layers))
    emb = part("embedding", [(TABLE, gather_table_sram_bytes(shape.vocab_size, shape.hidden_size, dt, chip))])
    out = TABLE if shape.tied_embeddings else "output.weight"
    head = part("head", [("output_norm.weight", _param_bytes(params["output_norm.weight"], dt, chip)),
                         (out, weight_sram_bytes(shape.hidden_size, shape.vocab_size, dt, chip))])
    return emb, layers, head


class _Stages:
    """The SRAM bytes of any contiguous stage [start, stop) (+ embedding if `first`, + head if `last`)."""

    def __init__(self, emb: Part, layers: tuple[Part, ...], head: Part, reserved: int) -> None:
        self.emb, self.layers, self.head, self.reserved = emb, layers, head, reserved
        self.prefix = [0]
        for layer in layers:
            self.prefix.append(self.prefix[-1] + layer.static_bytes)
        # One chip keeps a tied table once, in the head's layout: the embedding's own copy is not stored.
        self.shared = sum(b for n, b in emb.weights if n in dict(head.weights))

    def parts(self, start: int, stop: int, first: bool, last: bool) -> tuple[Part, ...]:
        return (self.emb,) * first + self.layers[start:stop] + (self.head,) * last

    def static(self, start: int, stop: int, first: bool, last: bool) -> int:
        ends = first * self.emb.static_bytes + last * self.head.static_bytes - (first and last) * self.shared
        return self.prefix[stop] - self.prefix[start] + ends

    def activation(self, start: int, stop: int, first: bool, last: bool) -> int:
        return max(p.decode_activation_bytes for p in self.parts(start, stop, first, last))

    def bytes(self, start: int, stop: int, first: bool, last: bool) -> int:
        """All one chip holding the stage needs: weights, KV cache, working set and reserve."""
        stage = (start, stop, first, last)
        return self.static(*stage) + self.activation(*stage) + self.reserved

    def split(self, k: int, budget: int) -> tuple[range, ...] | None:
        """Layer ranges for exactly `k` chips of at most `budget` bytes each, or None. Greedy in layer order:
        a chip takes layers while they fit and while one is left for each later chip."""
        n, ranges, start = len(self.layers), [], 0
        for c in range(k):
            first, last = c == 0, c == k - 1
            stop = n if last else start + 1
            while not last and stop < n - (k - c - 1) and self.bytes(start, stop + 1, first, last) <= budget:
                stop += 1
            if start >= stop or self.bytes(start, stop, first, last) > budget:
                return None
            ranges.append(range(start, stop))
            start = stop
        return tuple(ranges)

    def balanced(self, k: int, capacity: int) -> tuple[range, ...]:
        """The greedy split under the smallest per-chip budget that still places everything on `k` chips."""
        lo, hi = 0, capacity
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.split(k, mid) else (mid + 1, hi)
        ranges = self.split(k, lo)
        if ranges is None:
            raise InternalError(f"no split of {len(self.layers)} layers over {k} chips at {capacity} bytes")
        return ranges

    def needed(self, k: int) -> int:
        """The least SRAM `k` chips need in all: a tied table twice when k > 1, and a working set per chip."""
        n, layer = len(self.layers), self.layers[0].decode_activation_bytes
        if k == 1:
            return self.bytes(0, n, True, True)
        ends = max(layer, self.emb.decode_activation_bytes) + max(layer, self.head.decode_activation_bytes)
        acts = ends + (k - 2) * layer
        return self.static(0, n, True, False) + self.head.static_bytes + acts + k * self.reserved


# -------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True, kw_only=True)
class ChipPlan:
    """One chip of the pipeline: its contiguous layer range and the SRAM it uses, in bytes."""

    index: int
    layers: range
    parts: tuple[str, ...]
    weights: tuple[tuple[str, int], ...]
    kv_cache_bytes: int
    activation_bytes: int
    prefill_activation_bytes: int
    reserved_bytes: int
    sram_bytes: int

    @property
    def weight_bytes(self) -> int:
        return sum(b for _, b in self.weights)

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_cache_bytes + self.activation_bytes + self.reserved_bytes

    @property
    def free_bytes(self) -> int:
        return self.sram_bytes - self.total_bytes

    @property
    def prefill_fits(self) -> bool:
        """Whether a one-pass prefill's working set fits in place of the decode step's."""
        return self.prefill_activation_bytes - self.activation_bytes <= self.free_bytes

    @property
    def label(self) -> str:
        """What the chip runs, e.g. ``embedding + blk.0-14``."""
        r = self.layers
        blocks = [f"blk.{r.start}" + (f"-{r.stop - 1}" if len(r) > 1 else "")]
        first, last = ["embedding"] * ("embedding" in self.parts), ["head"] * ("head" in self.parts)
        return " + ".join(first + blocks + last)

    def to_json(self) -> dict:
        return {"index": self.index, "layers": [self.layers.start, self.layers.stop],
                "parts": list(self.parts), "weights": dict(self.weights), "weight_bytes": self.weight_bytes,
                "kv_cache_bytes": self.kv_cache_bytes, "activation_bytes": self.activation_bytes,
                "prefill_activation_bytes": self.prefill_activation_bytes,
                "reserved_bytes": self.reserved_bytes, "total_bytes": self.total_bytes,
                "free_bytes": self.free_bytes, "sram_bytes": self.sram_bytes,
                "total_mib": self.total_bytes / MIB, "free_mib": self.free_bytes / MIB,
                "prefill_fits": self.prefill_fits}


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Where a model's weights, KV cache and activations go on a pipeline of identical chips."""

    model: ModelShape
    chip_name: str
    chip_sram_bytes: int
    dtype: str
    context: int
    options: CapacityOptions
    embedding: Part
    layers: tuple[Part, ...]
    head: Part
    stages: tuple[ChipPlan, ...]
    fewest_chips: int

    @property
    def chip_count(self) -> int:
        return len(self.stages)

    @property
    def total_bytes(self) -> int:
        return sum(s.total_bytes for s in self.stages)

    @property
    def table_copies(self) -> int:
        """How many chips store the embedding table (2 when tied and split over a pipeline)."""
        return sum(TABLE in dict(s.weights) for s in self.stages)

    def headline(self) -> str:
        k, sram = self.chip_count, self.chip_count * self.chip_sram_bytes
        return (f"{self.model.name}: {self.dtype} weights, {self.context:,}-position fp16 KV cache on {k} x "
                f"{self.chip_name}: {mib(self.total_bytes)} of {mib(sram)} (fewest chips that fit: "
                f"{self.fewest_chips})")

    def notes(self) -> tuple[str, ...]:
        reserved = self.stages[0].reserved_bytes
        notes = [f"{self.options.instruction_slices} MEM slices per chip ({mib(reserved)}) reserved for "
                 "instructions"]
        if self.model.tied_embeddings and self.table_copies == 2:
            notes.append(f"tied embeddings: {TABLE} is stored twice, as rows on chip 0 for the embedding "
                         f"gather and in the MXM layout on chip {self.chip_count - 1} for the output head")
        elif self.model.tied_embeddings:
            notes.append(f"tied embeddings: {TABLE} is stored once, in the MXM layout of the output head; "
                         "the embedding gather reads a token's column")
        work = max(s.prefill_activation_bytes for s in self.stages)
        short = [str(s.index) for s in self.stages if not s.prefill_fits]
        verdict = f"does not fit on chip {', '.join(short)}: prefill in chunks" if short else "fits"
        notes.append(f"a prefill of {self.context:,} tokens in one pass has a working set of {mib(work)} "
                     f"({work:,} bytes); it {verdict}")
        return tuple(notes)

    def text(self) -> str:
        """A short plain-text rendering: the headline, one line per chip and the notes."""
        lines = [self.headline()]
        for s in self.stages:
            lines.append(f"chip {s.index}: {s.label}: weights {mib(s.weight_bytes)}, KV cache "
                         f"{mib(s.kv_cache_bytes)}, activations {mib(s.activation_bytes)}, reserved "
                         f"{mib(s.reserved_bytes)}; total {mib(s.total_bytes)}, free {mib(s.free_bytes)}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes()])

    def summary(self) -> dict:
        """Everything as exact integers (bytes), with MiB beside the totals."""
        sram = self.chip_count * self.chip_sram_bytes
        return {"model": self.model.name, "dtype": self.dtype, "context": self.context,
                "chip": self.chip_name, "chip_sram_bytes": self.chip_sram_bytes, "chips": self.chip_count,
                "fewest_chips": self.fewest_chips, "instruction_slices": self.options.instruction_slices,
                "table_copies": self.table_copies, "total_bytes": self.total_bytes,
                "total_mib": self.total_bytes / MIB, "sram_bytes": sram, "sram_mib": sram / MIB,
                "per_chip": [s.to_json() for s in self.stages], "embedding": self.embedding.to_json(),
                "layers": [p.to_json() for p in self.layers], "head": self.head.to_json(),
                "notes": list(self.notes())}


def plan(model: ModelShape | GGUFModel | LlamaConfig | str | Path | None, chip: Chip, *,
         dtype: WeightType | str, context: int, chips: int | None = None,
         options: CapacityOptions = CapacityOptions()) -> Plan:
    """Place `model` (anything `model_shape` takes) on a pipeline of `chip`s, with `dtype` weights and a KV
    cache of `context` positions: on as few chips as hold it (`chips` None) or on exactly `chips`, in
    contiguous layer ranges balanced by bytes. Raises `DoesNotFitError` if it cannot be placed, `UserError`
    for a bad weight type, context or chip count."""
    shape, dt = model_shape(model), _weight_dtype(dtype)
    if not 1 <= context <= shape.context_length:
        raise UserError(f"context {context:,}: {shape.name} has a context length of {shape.context_length:,} "
                        f"positions; ask for 1 to {shape.context_length:,}")
    emb, layers, head = _parts(shape, chip, dt, context)
    stages = _Stages(emb, layers, head, options.reserved_bytes(chip))
    _check_stages(stages, chip)
    fewest = next(k for k in range(1, len(layers) + 1) if stages.split(k, chip.sram_bytes))
    what = f"{shape.name} in {dt.value} with a {context:,}-position KV cache"
    k = fewest if chips is None else _check_chips(stages, chip, chips, fewest, what)
    ranges = stages.balanced(k, chip.sram_bytes)
    plans = tuple(_chip_plan(stages, chip, i, r, k) for i, r in enumerate(ranges))
    return Plan(model=shape, chip_name=chip.name, chip_sram_bytes=chip.sram_bytes, dtype=dt.value,
                context=context, options=options, embedding=emb, layers=layers, head=head, stages=plans,
                fewest_chips=fewest)


def _weight_dtype(dtype: str | DType) -> DType:
    value = dtype.value if isinstance(dtype, DType) else dtype
    if value not in WEIGHT_TYPES:
        raise UserError(f"weight type {value!r}: the MXM multiplies {' or '.join(WEIGHT_TYPES)}; "
                        "use one of those")
    return DType(value)


def _chip_plan(stages: _Stages, chip: Chip, index: int, layers: range, k: int) -> ChipPlan:
    first, last = index == 0, index == k - 1
    parts = stages.parts(layers.start, layers.stop, first, last)
    weights: dict[str, int] = {}  # a tensor two parts share (a tied table) is stored once, as the head has it
    for p in parts:
        weights.update(p.weights)
    return ChipPlan(index=index, layers=layers, parts=tuple(p.name for p in parts),
                    weights=tuple(weights.items()), kv_cache_bytes=sum(p.kv_cache_bytes for p in parts),
                    activation_bytes=stages.activation(layers.start, layers.stop, first, last),
                    prefill_activation_bytes=max(p.prefill_activation_bytes for p in parts),
                    reserved_bytes=stages.reserved, sram_bytes=chip.sram_bytes)


def _chips(k: int, chip: str = "") -> str:
    return f"{k} {chip + ' ' if chip else ''}chip" + "s" * (k != 1)


def _check_stages(stages: _Stages, chip: Chip) -> None:
    """Raise `DoesNotFitError` naming the first layer, or end stage, that no single chip can hold."""
    n = len(stages.layers)
    checks = [(f"layer blk.{i}", i, False, False) for i in range(n)] + [
        ("the first stage (embedding + blk.0)", 0, True, n == 1),
        (f"the last stage (blk.{n - 1} + output head)", n - 1, n == 1, True)]
    for what, i, first, last in checks:
        stage, sram = (i, i + 1, first, last), chip.sram_bytes
        need = stages.bytes(*stage)
        if need > sram:
            raise DoesNotFitError(
                f"{what} needs {mib(need)} ({need:,} bytes: weights and KV cache "
                f"{mib(stages.static(*stage))}, activations {mib(stages.activation(*stage))}, instructions "
                f"{mib(stages.reserved)}), but one {chip.name} chip has {mib(sram)} ({sram:,} bytes) and a "
                "layer cannot be split across chips: shorten the context, use int8 weights or a chip with "
                "more SRAM")


def _check_chips(stages: _Stages, chip: Chip, k: int, fewest: int, what: str) -> int:
    """`k` if the model can be placed on exactly `k` chips, else the error saying how many would hold it."""
    n = len(stages.layers)
    if not 1 <= k <= n:
        raise UserError(f"{_chips(k)}: every chip holds one or more whole layers and the model has {n}; "
                        f"ask for 1 to {n} chips")
    if k >= fewest:
        return k
    need, have = stages.needed(k), k * chip.sram_bytes
    has = f"{_chips(k, chip.name)} {'has' if k == 1 else 'have'} {mib(have)} ({have:,} bytes)"
    why = f"but {has}" if need > have else f"and {has}, but whole layers do not pack into them"
    raise DoesNotFitError(f"{what} needs {mib(need)} ({need:,} bytes) of SRAM on {_chips(k)}, {why}; it fits "
                          f"on {_chips(fewest)}: ask for {fewest}, or leave the chip count unset")
