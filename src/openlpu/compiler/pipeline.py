"""The compiler pipeline, one readable function: model -> chip graphs -> placement -> schedule -> programs.

    load      GGUF -> fp32 weights and config                       (openlpu.frontends.gguf)
    split     layers -> chips, by MXM weight capacity                (lower.split_layers)
    lower     decomposition + precision + weight layout per chip     (lower.lower_chip)
    place     SRAM slices and addresses, liveness reuse              (place.place, checked by place.check)
    schedule  exact cycles, per-queue programs, C2C sends/receives   (schedule.schedule)
    verify    every static and timing rule, and the predicted cycles (openlpu.sim.verify)

`compile_model` returns a `CompiledModel`; `openlpu compile --dump DIR` writes every stage's text form.
Scheduled programs are cached on disk (openlpu.compiler.cache), keyed by model file, chip, options and the
compiler's own source, so a second run skips placement and scheduling.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openlpu.compiler.cache import cached, file_identity
from openlpu.compiler.chipgraph import ChipGraph, Role
from openlpu.compiler.lower import Dims, check_model, lower_chip, split_layers
from openlpu.compiler.place import check, kept, place, used_bytes
from openlpu.compiler.schedule import Scheduled, link_arrivals, schedule
from openlpu.errors import ConfigError, DoesNotFitError, InternalError
from openlpu.frontends.gguf import GGUFModel, load_gguf
from openlpu.frontends.llama import LlamaConfig
from openlpu.frontends.models import default_model_path
from openlpu.hardware.chip import Chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.asm import print_program
from openlpu.isa.program import Program, Tensor
from openlpu.sim.engine import verify

DTYPES = ("fp16", "int8")


@dataclass(frozen=True)
class ChipReport:
    index: int
    layers: range
    sram_used_bytes: int
    sram_bytes: int
    what: str


@dataclass(frozen=True)
class Programs:
    """One program per chip for one job (the prefill of `prompt` tokens), sharing the decode step's SRAM layout
    of weights, constants and KV caches."""

    prompt: int
    graphs: tuple[ChipGraph, ...]
    placements: tuple[dict[str, Tensor], ...]
    scheduled: tuple[Scheduled, ...]

    @property
    def cycles(self) -> int:
        return max(s.predicted_cycles for s in self.scheduled)


@dataclass(frozen=True)
class CompiledModel:
    chip: Chip
    chips: int
    dtype: str
    context: int
    n_layers: int
    chip_reports: tuple[ChipReport, ...]
    cycles_per_step: int
    model_name: str
    config: LlamaConfig
    embedding: np.ndarray = dataclasses.field(repr=False)  # [vocab, hidden] fp32: the host's lookup table
    dims: Dims = dataclasses.field(repr=False)
    graphs: tuple[ChipGraph, ...] = dataclasses.field(repr=False)
    placements: tuple[dict[str, Tensor], ...] = dataclasses.field(repr=False)
    scheduled: tuple[Scheduled, ...] = dataclasses.field(repr=False)
    prefill: Programs | None = dataclasses.field(default=None, repr=False)

    def summary_lines(self) -> list[str]:
        lines = [f"{self.chips} x {self.chip.name}, {self.dtype}, context {self.context}, "
                 f"{self.cycles_per_step:,} cycles per decode step"]
        for r in self.chip_reports:
            lines.append(f"chip {r.index}: {r.what}; SRAM {r.sram_used_bytes / 2**20:.1f} of "
                         f"{r.sram_bytes / 2**20:.1f} MiB")
        return lines


def compile_model(model: str | Path | GGUFModel | None, chip: Chip, *, dtype: str = "fp16", context: int,
                  n_layers: int | None = None, chips: int | None = None, prompt: int | None = None,
                  programs: bool = True) -> CompiledModel:
    """Compile the decode step of a llama GGUF model (default: the embedded SmolLM2) for `chip`s, and with
    `prompt` the prefill of that many tokens. A model given by path is compiled once per (file, chip, options,
    compiler source) and then read from the disk cache; `programs=False` leaves the instruction listings on disk
    (the fast path does not read them: `Scheduled.program` is then None).

    With `chips` unset, the chips are the fewest that hold the job: the weights, and beside them the KV caches and
    the activations of the decode step and of the prefill."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: the chip compiler emits {' or '.join(DTYPES)} programs; choose one")
    if n_layers is not None and isinstance(model, GGUFModel):
        raise ConfigError(f"n_layers={n_layers} truncates a model read from its file, and this one is already "
                          "loaded; load it with load_gguf(path, n_layers=...) or pass the path")
    if prompt is not None and not 1 <= prompt < context:
        raise ConfigError(f"a prompt of {prompt} tokens does not fit a context of {context} positions with room "
                          "for a reply; compile a longer --context")
    return _compile_job(model, chip, dtype, context, n_layers, chips, prompt, programs, grow=chips is None)


def _compile_job(model: str | Path | GGUFModel | None, chip: Chip, dtype: str, context: int, n_layers: int | None,
                 chips: int | None, prompt: int | None, programs: bool, grow: bool) -> CompiledModel:
    """`compile_model` after its checks; `grow`: on one chip more when the prefill does not fit the decode
    step's chips."""
    if isinstance(model, GGUFModel):
        decode = _compile(model, chip, dtype, context, chips)
        if prompt is None:
            return decode
        prefill = _prefill(model, decode, prompt, grow)
        if prefill is None:
            return _compile_job(model, chip, dtype, context, n_layers, _one_more(decode, prompt, grow), prompt,
                                programs, grow)
        return dataclasses.replace(decode, prefill=prefill)
    path = Path(model) if model is not None else default_model_path()
    key = {"model": file_identity(path), "chip": chip, "dtype": dtype, "context": context, "n_layers": n_layers,
           "chips": chips}
    load = functools.cache(lambda: load_gguf(path, n_layers=n_layers))
    made: dict[str, CompiledModel | Programs] = {}  # what this call compiled, listings included

    def make_decode() -> CompiledModel:
        made["decode"] = _compile(load(), chip, dtype, context, chips)
        return made["decode"]

    decode = cached("decode", key, lambda: _without_programs(make_decode()))
    if programs:
        listing = cached("decode-programs", key, lambda: _programs(made.get("decode") or make_decode()))
        decode = _with_programs(decode, listing)
    if prompt is None:
        return decode

    def make_prefill() -> Programs | None:
        made["prefill"] = _prefill(load(), decode, prompt, grow)
        return made["prefill"]

    pkey = {**key, "prompt": prompt}
    prefill = cached("prefill", pkey, lambda: _without_programs(make_prefill()))
    if prefill is None:  # remembered: the prompt's work does not fit beside the decode step on these chips
        return _compile_job(path, chip, dtype, context, n_layers, _one_more(decode, prompt, grow), prompt, programs,
                            grow)
    if programs:
        listing = cached("prefill-programs", pkey, lambda: _programs(made.get("prefill") or make_prefill()))
        prefill = _with_programs(prefill, listing)
    return dataclasses.replace(decode, prefill=prefill)


# Programs are cached apart from the rest: a fast-path run needs only the graphs and the predicted cycles, and
# loading the millions of instruction records of a prefill program takes far longer than the weights.


def _programs(c: CompiledModel | Programs) -> tuple[Program, ...]:
    return tuple(s.program for s in c.scheduled)


def _without_programs(c):
    if c is None:
        return None
    return dataclasses.replace(c, scheduled=tuple(dataclasses.replace(s, program=None) for s in c.scheduled))


def _with_programs(c, listing: tuple[Program, ...]):
    return dataclasses.replace(c, scheduled=tuple(dataclasses.replace(s, program=p)
                                                  for s, p in zip(c.scheduled, listing)))


def _one_more(decode: CompiledModel, prompt: int, grow: bool) -> int:
    """The chip count to try when the prefill of `prompt` tokens does not fit beside `decode` on its chips."""
    where = f"the prefill of {prompt} tokens does not fit beside the decode step on {decode.chips} {decode.chip.name}"
    if not grow:
        raise DoesNotFitError(f"{where} chips; ask for more chips (or leave the count to the compiler), or a "
                              "shorter prompt or context")
    if decode.chips >= decode.n_layers:
        raise DoesNotFitError(f"{where} chips, one block each; compile a shorter prompt or context")
    return decode.chips + 1


def _compile(model: GGUFModel, chip: Chip, dtype: str, context: int, chips: int | None) -> CompiledModel:
    """The decode step on `chips` chips, or on the fewest that hold it: weight capacity gives a first count
    (`split_layers`), and while the KV caches and activations do not fit beside the weights, one chip more."""
    dims = Dims(model.config, context)
    check_model(model.config, context)
    if chips is None:
        graphs, placed = _fewest(model, dims, chip, dtype, None)
    else:
        try:
            graphs, placed = _placed(model, dims, chip, chips, dtype)
        except DoesNotFitError as e:
            try:
                fewest = len(_fewest(model, dims, chip, dtype, chips + 1)[0])
                hint = f"{fewest} would hold it: ask for {fewest}, or leave the count unset"
            except DoesNotFitError:
                hint = "no count of these chips holds it: compile a shorter context"
            raise DoesNotFitError(f"{e}. On {chips} {chip.name} chips it does not fit; {hint}") from None
    placements, scheduled = _emit(graphs, chip, placed, "step")
    sram = chip.mem.slices_per_hemisphere * 2 * chip.mem.addresses_per_slice * chip.lanes.lanes
    reports = tuple(ChipReport(g.index, g.layers, used_bytes(p, chip), sram, _what(g, p, chip, len(graphs)))
                    for g, p in zip(graphs, placements))
    return CompiledModel(chip, len(graphs), dtype, context, model.config.n_layers, reports,
                         max(s.predicted_cycles for s in scheduled), model.name, model.config,
                         np.asarray(model.weights["token_embd.weight"], np.float32), dims, graphs,
                         tuple(placements), tuple(scheduled))


def _lowered(model: GGUFModel, dims: Dims, chip: Chip, chips: int | None, dtype: str, fuse_pv: bool = True
             ) -> tuple[ChipGraph, ...]:
    ranges = split_layers(model, dims, chip, chips, dtype)
    return tuple(lower_chip(model, dims, i, r, first=i == 0, last=i == len(ranges) - 1, dtype=dtype,
                            fuse_pv=fuse_pv) for i, r in enumerate(ranges))


def _placed(model: GGUFModel, dims: Dims, chip: Chip, chips: int | None, dtype: str
            ) -> tuple[tuple[ChipGraph, ...], tuple[dict[str, Tensor], ...]]:
    """The decode step lowered for `chips` (None: the weights' count) and placed: with the attention's exp and
    its products with V in one pass where that fits, else in two (fewer activations side by side, the same
    chips); DoesNotFitError when neither fits."""
    graphs = _lowered(model, dims, chip, chips, dtype)
    try:
        return graphs, _place(graphs, chip, (None,) * len(graphs))
    except DoesNotFitError:
        graphs = _lowered(model, dims, chip, chips, dtype, fuse_pv=False)
        return graphs, _place(graphs, chip, (None,) * len(graphs))


def _fewest(model: GGUFModel, dims: Dims, chip: Chip, dtype: str, start: int | None
            ) -> tuple[tuple[ChipGraph, ...], tuple[dict[str, Tensor], ...]]:
    """The decode step's graphs and placements on the fewest chips from `start` (None: the weights' count) that
    hold it; DoesNotFitError when not even one block per chip does."""
    count = start
    while True:
        count = len(split_layers(model, dims, chip, count, dtype))
        try:
            return _placed(model, dims, chip, count, dtype)
        except DoesNotFitError as e:
            if count >= model.config.n_layers:
                raise DoesNotFitError(f"{e}. Not even one block per {chip.name} chip holds it: compile a shorter "
                                      "context") from None
            count += 1


def _prefill(model: GGUFModel, decode: CompiledModel, prompt: int, grow: bool = False) -> Programs | None:
    """The prefill programs for the decode step's chips and layer split, its weights, constants and KV caches
    where the decode step has them (so the graphs carry no data of their own). With `grow`, None when its
    activations do not fit beside them (the caller compiles for one chip more); else that raises."""
    n = len(decode.graphs)
    graphs = tuple(dataclasses.replace(lower_chip(model, decode.dims, i, g.layers, first=i == 0, last=i == n - 1,
                                                  prompt=prompt, dtype=decode.dtype), data={})
                   for i, g in enumerate(decode.graphs))
    shared = tuple(kept(g, p) for g, p in zip(decode.graphs, decode.placements))
    try:
        placed = _place(graphs, decode.chip, shared)
    except DoesNotFitError:
        if grow:
            return None
        raise
    return Programs(prompt, graphs, *_emit(graphs, decode.chip, placed, "prefill"))


def _place(graphs: tuple[ChipGraph, ...], chip: Chip, shared: tuple[dict[str, Tensor] | None, ...]
           ) -> tuple[dict[str, Tensor], ...]:
    """Place and check every chip's graph (`shared`: per chip, placements that weights, constants and state must
    keep); DoesNotFitError when a tensor finds no room."""
    placements = []
    for g, fixed in zip(graphs, shared):
        placements.append(place(g, chip, fixed))
        check(g, placements[-1], chip)
    return tuple(placements)


def _emit(graphs: tuple[ChipGraph, ...], chip: Chip, placements: tuple[dict[str, Tensor], ...],
          name: str) -> tuple[tuple[dict[str, Tensor], ...], tuple[Scheduled, ...]]:
    """Schedule and verify each chip's placed graph, chips in pipeline order (a receiver is timed from its
    sender)."""
    scheduled, arrivals = [], ()
    for g, placed in zip(graphs, placements):
        s = schedule(g, placed, chip, arrivals=arrivals, name=name)
        _verify(s, chip)
        arrivals = link_arrivals(chip, s.sent)
        scheduled.append(s)
    return placements, tuple(scheduled)


def _verify(s: Scheduled, chip: Chip) -> None:
    """The program verifier, before anything runs: every static and timing rule of the simulator (no unit or
    stream conflict in any cycle, every operand there at its exact latency, banks, MXM order), and the cycle
    count the schedule promised."""
    checked = verify(s.program, chip)
    if checked.cycles != s.predicted_cycles:
        raise InternalError(f"{s.program.name}: the schedule predicted {s.predicted_cycles} cycles, the verifier "
                            f"counts {checked.cycles}")


def _what(g: ChipGraph, placed: dict[str, Tensor], chip: Chip, chips: int) -> str:
    """What the chip holds, and why that many blocks: how full its MXM weight slices are on each side."""
    parts = [f"blocks {g.layers.start}-{g.layers.stop - 1}" if len(g.layers) else "no blocks"]
    if g.index == chips - 1:
        parts.append("final norm + LM head")
    lanes, depth = chip.lanes.lanes, chip.mem.addresses_per_slice
    weights = [placed[t.name] for t in g.by_role(Role.WEIGHT)]
    full = {h: max((t.addresses_used(lanes).stop for t in weights if t.placement.hemisphere is h), default=0)
            for h in Hemisphere}
    parts.append("MXM weight slices " + ", ".join(f"{h.value} {100 * full[h] / depth:.0f} %" for h in Hemisphere)
                 + " full")
    return "; ".join(parts)


def dump(c: CompiledModel, directory: Path) -> list[Path]:
    """Write every stage's text form: the split, each chip's lowered graph, its placement, its schedule (each
    operation's start and done cycles) and its program (assembly). Returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []

    def write(name: str, text: str) -> None:
        path = directory / name
        path.write_text(text + "\n")
        written.append(path)

    write("0-split.txt", "\n".join(c.summary_lines()))
    lanes = c.chip.lanes.lanes
    jobs = [("", c.graphs, c.placements, c.scheduled)]
    if c.prefill is not None:
        jobs.append(("prefill.", c.prefill.graphs, c.prefill.placements, c.prefill.scheduled))
    for prefix, graphs, placements, scheduled in jobs:
        for g, placed, s in zip(graphs, placements, scheduled):
            write(f"1-{prefix}lowered.chip{g.index}.txt", str(g))
            rows = [f"{t.name} {t.placement.hemisphere.value} slices {t.slices_used().start}-"
                    f"{t.slices_used().stop - 1} addresses {t.addresses_used(lanes).start}-"
                    f"{t.addresses_used(lanes).stop - 1}" for t in placed.values()]
            write(f"2-{prefix}placed.chip{g.index}.txt", "\n".join(rows))
            write(f"3-{prefix}scheduled.chip{g.index}.txt",
                  "\n".join(f"{a:>9} {b:>9}  {op}" for (a, b), op in zip(s.spans, g.ops)))
            write(f"4-{prefix}program.chip{g.index}.s", print_program(s.program))
    return written
