"""The `openlpu` command line: inspect a chip, run an assembly program, run the shipped examples, plan chips,
generate text on simulated chips.

Every `UserError` (bad chip file, bad assembly, illegal program or schedule) ends the command with a clean red
message and exit code 2; a failed `.check` ends it with exit code 1. Other exceptions are bugs and propagate.
Figures are exact integers (cycles, bytes); seconds and rates are derived only for display.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from openlpu.compiler.capacity import Plan, model_shape, plan
from openlpu.compiler.sram import mib
from openlpu.errors import ConfigError, UserError
from openlpu.frontends.models import default_model_path
from openlpu.frontends.tokenizer import Tokenizer
from openlpu.hardware.chip import Chip, load_chip, preset_names
from openlpu.isa.asm import load_program
from openlpu.isa.program import Program
from openlpu.runtime.generate import (
    PREFILL_PROGRAM,
    PREFILL_STEPS,
    check_fits,
    check_sampling,
    default_context,
    encode_prompt,
    generate,
    summary,
)
from openlpu.sim.engine import Result, simulate, verify

DEFAULT_CHIP = "groqchip1"
USER_ERROR_EXIT = 2
CHECK_FAILED_EXIT = 1

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class _Group(TyperGroup):
    """Turns a UserError raised by any subcommand into a red one-paragraph message and exit code 2."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as e:
            err.print(Text.assemble(("error: ", "bold red"), (str(e), "red")), soft_wrap=True)
            raise typer.Exit(USER_ERROR_EXIT) from None


app = typer.Typer(
    cls=_Group, no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
    help="OpenLPU: an open, executable model of a deterministic, SRAM-only, compiler-scheduled chip.",
)
chip_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Inspect chip descriptions (presets or TOML).")
app.add_typer(chip_app, name="chip")

ChipOption = Annotated[
    str | None,
    typer.Option("--chip", metavar="PRESET_OR_PATH", help="Chip preset name or chip TOML file."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
ModelOption = Annotated[
    Path | None,
    typer.Option("--model", metavar="PATH.gguf", help="GGUF model (default: the embedded SmolLM2)."),
]


def main() -> None:
    """Console entry point (`openlpu`)."""
    app()


# ------------------------------------------------------------------------------------------------- units


def _scaled(value: float, unit: str, prefixes: tuple[str, ...], base: int) -> str:
    """`value` with the largest prefix that keeps it >= 1, e.g. 737.28 T + unit."""
    i = 0
    while i + 1 < len(prefixes) and abs(value) >= base ** (i + 1):
        i += 1
    scaled = value / base**i
    return f"{scaled:,.6g} {prefixes[i]}{unit}"


def _si(unit: str) -> Callable[[int], str]:
    return lambda v: _scaled(v, unit, ("", "k", "M", "G", "T", "P", "E"), 1000)


def _binary(unit: str) -> Callable[[int], str]:
    return lambda v: _scaled(v, unit, ("", "Ki", "Mi", "Gi", "Ti"), 1024)


#: summary() key -> (label, human form of the exact integer). Keys not listed are shown without a human form.
SUMMARY_FORMAT: dict[str, tuple[str, Callable[[int], str] | None]] = {
    "clock_hz": ("clock", _si("Hz")),
    "lanes": ("lanes per vector", None),
    "vector_bytes": ("vector", _binary("B")),
    "mem_slices": ("MEM slices", None),
    "sram_bytes": ("SRAM", _binary("B")),
    "sram_read_bytes_per_cycle": ("SRAM read per cycle", _binary("B/cycle")),
    "sram_bytes_per_cycle": ("SRAM read+write per cycle", _binary("B/cycle")),
    "sram_bandwidth_bytes_per_second": ("SRAM bandwidth", _si("B/s")),
    "macs_per_cycle_int8": ("int8 MACs per cycle", _si("MAC/cycle")),
    "macs_per_cycle_fp16": ("fp16 MACs per cycle", _si("MAC/cycle")),
    "peak_int8_ops_per_second": ("peak int8", _si("OPS")),
    "peak_fp16_flops_per_second": ("peak fp16", _si("FLOPS")),
    "vxm_alus": ("VXM ALUs (all lanes)", None),
    "instruction_queues": ("instruction queues", None),
}


#: Result.utilisation key -> what its fraction counts.
UTILISATION_LABEL = {
    "mem": "MEM slices (issues per slice-cycle)",
    "vxm": "VXM ALUs (issues per ALU-cycle)",
    "sxm": "SXM queues (issues per queue-cycle)",
    "mxm_macs": "MXM (MACs of peak int8)",
}


def _micros(cycles: int, clock_hz: int) -> str:
    return f"{cycles * 1_000_000 / clock_hz:,.3f}"


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


# -------------------------------------------------------------------------------------------------- chip


@chip_app.command("show")
def chip_show(
    preset_or_path: Annotated[
        str | None,
        typer.Argument(metavar="[PRESET_OR_PATH]", help=f"Preset or TOML file [default: {DEFAULT_CHIP}]."),
    ] = None,
    chip: ChipOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a chip's derived figures: exact integers with human units beside them."""
    if preset_or_path and chip and preset_or_path != chip:
        raise typer.BadParameter(f"two chips given ({preset_or_path!r} and --chip {chip!r}); give one")
    c = load_chip(preset_or_path or chip or DEFAULT_CHIP)
    summary = c.summary()
    if as_json:
        _print_json(summary)
        return
    table = Table(title=f"{c.name} ({c.source})", title_justify="left")
    table.add_column("figure")
    table.add_column("exact", justify="right")
    table.add_column("human", justify="right", style="cyan")
    for key, value in summary.items():
        if key in ("name", "source"):
            continue
        label, human = SUMMARY_FORMAT.get(key, (key, None))
        exact = f"{value:,}" if isinstance(value, int) else str(value)
        table.add_row(label, exact, human(value) if human else "")
    out.print(table)


@chip_app.command("list")
def chip_list() -> None:
    """List the chip presets shipped with OpenLPU."""
    table = Table(title="chip presets", title_justify="left")
    for column in ("preset", "clock", "SRAM", "peak int8", "peak fp16"):
        table.add_column(column, justify="left" if column == "preset" else "right")
    keys = ("clock_hz", "sram_bytes", "peak_int8_ops_per_second", "peak_fp16_flops_per_second")
    for name in preset_names():
        s = load_chip(name).summary()
        table.add_row(name, *(SUMMARY_FORMAT[k][1](s[k]) for k in keys))  # type: ignore[misc]
    out.print(table)


# --------------------------------------------------------------------------------------------------- run


def _chip_for(program: Program, chip: str | None) -> Chip:
    """`--chip` if given, else the program's `.chip`, else the default preset."""
    return load_chip(chip or program.chip or DEFAULT_CHIP)


def _print_result(r: Result) -> None:
    c = r.chip
    out.print(Text.assemble(("program ", "bold"), r.program, " on ", (c.name, "bold"), f" ({c.source})"))
    out.print(f"cycles        {r.cycles:,}")
    out.print(f"time          {_micros(r.cycles, c.clock_hz)} µs at {_si('Hz')(c.clock_hz)}")
    out.print(f"instructions  {r.instructions:,} listed, {r.events:,} issued (repeats expanded)")
    table = Table(title="utilisation", title_justify="left")
    table.add_column("unit")
    table.add_column("busy", justify="right")
    for key, fraction in r.utilisation.items():
        table.add_row(UTILISATION_LABEL.get(key, key), f"{100 * fraction:.2f} %")
    out.print(table)
    for check in r.checks:
        out.print(Text(check.describe(), style="green" if check.passed else "red"))
    if not r.checks:
        out.print(Text("no .check lines: nothing to verify", style="yellow"))
    verdict = ("PASS", "bold green") if r.checks_passed else ("FAIL", "bold red")
    out.print(Text.assemble(verdict, f": {sum(c.passed for c in r.checks)}/{len(r.checks)} checks passed"))


@app.command("run")
def run(
    program: Annotated[Path, typer.Argument(metavar="PROGRAM.s", help="Assembly file to simulate.")],
    chip: ChipOption = None,
    as_json: JsonOption = False,
) -> None:
    """Simulate an assembly program cycle-exactly and verify its `.check` lines (exit code 1 if one fails)."""
    p = load_program(program)
    r = simulate(p, _chip_for(p, chip))
    if as_json:
        _print_json(r.to_json())
    else:
        _print_result(r)
    if not r.checks_passed:
        raise typer.Exit(CHECK_FAILED_EXIT)


@app.command("verify")
def verify_command(
    program: Annotated[Path, typer.Argument(metavar="PROGRAM.s", help="Assembly file to check.")],
    chip: ChipOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a program's every static and timing rule without running it (exit code 2 on the first violation)."""
    p = load_program(program)
    v = verify(p, _chip_for(p, chip))
    if as_json:
        _print_json(v.to_json())
        return
    out.print(Text.assemble(("ok", "bold green"), f": {v.program} on {v.chip.name} is legal; {v.cycles:,} cycles "
                            f"({_micros(v.cycles, v.chip.clock_hz)} µs), {v.events:,} instructions issued"))


# -------------------------------------------------------------------------------------------------- demo


def example_paths() -> list[Path]:
    """The example programs shipped in `openlpu/examples/`, sorted by name."""
    folder = resources.files("openlpu") / "examples"
    return sorted((Path(str(f)) for f in folder.iterdir() if f.name.endswith(".s")), key=lambda p: p.name)


@app.command("demo")
def demo(chip: ChipOption = None, as_json: JsonOption = False) -> None:
    """Run every shipped example program; tabulate cycles, time and checks (exit code 1 if a check fails)."""
    results = []
    for path in example_paths():
        p = load_program(path)
        results.append((path, simulate(p, _chip_for(p, chip))))
    passed = all(r.checks_passed for _, r in results)
    if as_json:
        _print_json({"programs": [r.to_json() for _, r in results], "checks_passed": passed})
    else:
        _print_demo(results)
    if not passed:
        raise typer.Exit(CHECK_FAILED_EXIT)


def _print_demo(results: list[tuple[Path, Result]]) -> None:
    table = Table(title="OpenLPU example programs (cycle-exact simulation)", title_justify="left")
    for column in ("program", "chip", "cycles", "µs", "checks"):
        table.add_column(column, justify="right" if column in ("cycles", "µs") else "left")
    for path, r in results:
        ok = sum(c.passed for c in r.checks)
        checks = Text(f"{ok}/{len(r.checks)} ok", style="green" if r.checks_passed else "red")
        table.add_row(path.name, r.chip.name, f"{r.cycles:,}", _micros(r.cycles, r.chip.clock_hz), checks)
    out.print(table)
    examples = example_paths()[0].parent if results else "openlpu/examples"
    out.print(f"Programs are in {examples}; run one with `openlpu run PROGRAM.s`.", soft_wrap=True)


# -------------------------------------------------------------------------------------------------- plan


@app.command("plan")
def plan_command(
    model: ModelOption = None,
    dtype: Annotated[str, typer.Option("--dtype", metavar="fp16|int8", help="Weight type.")] = "fp16",
    chip: ChipOption = None,
    context: Annotated[
        int | None,
        typer.Option("--context", metavar="N", help="KV-cache positions (default: the model's context)."),
    ] = None,
    chips: Annotated[
        int | None, typer.Option("--chips", metavar="N", help="Chips to use (default: as few as hold it).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Plan how many chips hold a model in SRAM: weights, KV cache and activations on each chip."""
    shape = model_shape(model)
    p = plan(shape, load_chip(chip or DEFAULT_CHIP), dtype=dtype,
             context=shape.context_length if context is None else context, chips=chips)
    if as_json:
        _print_json(p.summary())
    else:
        _print_plan(p)


def _print_plan(p: Plan) -> None:
    out.print(Text(p.headline(), style="bold"), soft_wrap=True)
    for s in p.stages:
        table = Table(title=f"chip {s.index}: {s.label}", title_justify="left")
        table.add_column("figure")
        table.add_column("exact", justify="right")
        table.add_column("human", justify="right", style="cyan")
        table.add_row("layers", f"{len(s.layers)}", f"blk.{s.layers.start}-{s.layers.stop - 1}")
        figures = {"weights": s.weight_bytes, "KV cache": s.kv_cache_bytes, "activations": s.activation_bytes,
                   "reserved": s.reserved_bytes, "total": s.total_bytes, "free": s.free_bytes}
        for label, value in figures.items():
            table.add_row(label, f"{value:,} B", mib(value))
        out.print(table)
    for note in p.notes():
        out.print(f"note: {note}", soft_wrap=True)


# ---------------------------------------------------------------------------------------------- compile


@app.command("compile")
def compile_command(
    model: ModelOption = None,
    dtype: Annotated[str, typer.Option("--dtype", metavar="fp16|int8", help="Weight type.")] = "fp16",
    chip: ChipOption = None,
    context: Annotated[int, typer.Option("--context", metavar="N",
                                         help="KV-cache positions (an even number).")] = 128,
    chips: Annotated[int | None, typer.Option("--chips", metavar="N", help="Use exactly N chips.")] = None,
    layers: Annotated[int | None, typer.Option("--layers", metavar="N",
                                               help="Compile only the first N layers (a debugging aid).")] = None,
    prompt: Annotated[int | None, typer.Option("--prompt-tokens", metavar="P",
                                               help="Also compile the prefill of a P-token prompt.")] = None,
    dump_dir: Annotated[Path | None, typer.Option("--dump", metavar="DIR",
                                                  help="Write every compiler stage's text form into DIR.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Compile a model's decode step for the chips: layer split, SRAM use, cycles per token (and, with --dump,
    the lowered graph, placement, schedule and program of every chip)."""
    from openlpu.compiler.pipeline import compile_model, dump

    c = compile_model(model, load_chip(chip or DEFAULT_CHIP), dtype=dtype, context=context, n_layers=layers,
                      chips=chips, prompt=prompt)
    files = dump(c, dump_dir) if dump_dir is not None else []
    if as_json:
        _print_json({"chips": c.chips, "chip": c.chip.name, "dtype": c.dtype, "context": c.context,
                     "cycles_per_token": c.cycles_per_step, "seconds_per_token": c.cycles_per_step / c.chip.clock_hz,
                     "prefill_cycles": c.prefill.cycles if c.prefill else None,
                     "chip_reports": [{"index": r.index, "layer_start": r.layers.start, "layer_stop": r.layers.stop,
                                       "sram_used_bytes": r.sram_used_bytes, "sram_bytes": r.sram_bytes,
                                       "what": r.what} for r in c.chip_reports],
                     "dumped": [str(f) for f in files]})
        return
    for line in c.summary_lines():
        out.print(line, soft_wrap=True)
    out.print(f"{c.cycles_per_step / c.chip.clock_hz * 1e6:,.2f} µs per decode step at {_si('Hz')(c.chip.clock_hz)}")
    if c.prefill is not None:
        out.print(f"prefill of {c.prefill.prompt} tokens: {c.prefill.cycles:,} cycles, "
                  f"{c.prefill.cycles / c.chip.clock_hz * 1e6:,.2f} µs")
    for f in files:
        out.print(f"wrote {f}")


# ---------------------------------------------------------------------------------------------- generate

DEFAULT_PROMPT = "What is an LPU?"


@app.command("generate")
def generate_command(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="The user's message.")] = DEFAULT_PROMPT,
    max_tokens: Annotated[int, typer.Option("--max-tokens", metavar="N", help="Most tokens to generate.")] = 32,
    temperature: Annotated[
        float, typer.Option("--temperature", metavar="T", help="Sampling temperature; 0 is greedy (argmax).")
    ] = 0.0,
    top_p: Annotated[
        float, typer.Option("--top-p", metavar="P", help="Sample only from the likeliest tokens holding mass P.")
    ] = 1.0,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the sampler.")] = 0,
    dtype: Annotated[str, typer.Option("--dtype", metavar="fp16|int8", help="Weight type.")] = "fp16",
    chip: ChipOption = None,
    model: ModelOption = None,
    fidelity: Annotated[
        str, typer.Option("--fidelity", metavar="fast|cycle", help="fast, or cycle: cycle-by-cycle simulation.")
    ] = "fast",
    context: Annotated[
        int | None,
        typer.Option("--context", metavar="N", help="KV-cache positions to compile for "
                     "(an even number; default: prompt + max tokens, rounded up to a multiple of 32)."),
    ] = None,
    layers: Annotated[
        int | None,
        typer.Option("--layers", metavar="N", help="Debugging aid: compile only the first N layers "
                     "(quick runs; the text is then meaningless)."),
    ] = None,
    prefill: Annotated[
        str,
        typer.Option("--prefill", metavar="program|steps",
                     help="How the prompt runs: a prefill program compiled for its length (minutes the first time "
                          "per length, cached), or steps: token by token through the decode program (nothing more "
                          "to compile; a longer time to first token)."),
    ] = PREFILL_PROGRAM,
    as_json: JsonOption = False,
) -> None:
    """Generate text on the simulated chips: stream the reply, then chips, cycles per token and simulated latency."""
    # Imported here: compiling pulls in the whole back end, which the other commands do not need.
    from openlpu.compiler.pipeline import compile_model
    from openlpu.runtime.session import Fidelity, open_session

    check_sampling(temperature=temperature, top_p=top_p)
    if fidelity not in {f.value for f in Fidelity}:
        raise ConfigError(f"--fidelity {fidelity!r}: choose one of {', '.join(f.value for f in Fidelity)}")
    if prefill not in (PREFILL_PROGRAM, PREFILL_STEPS):
        raise ConfigError(f"--prefill {prefill!r}: choose one of {PREFILL_PROGRAM}, {PREFILL_STEPS}")
    model_path = model or default_model_path()
    tokenizer = Tokenizer.from_gguf(model_path)
    prompt_tokens = len(encode_prompt(tokenizer, prompt))
    context = default_context(prompt_tokens, max_tokens) if context is None else context
    check_fits(prompt_tokens, max_tokens, context)
    compiled = compile_model(model_path, load_chip(chip or DEFAULT_CHIP), dtype=dtype, context=context,
                             n_layers=layers, prompt=prompt_tokens if prefill == PREFILL_PROGRAM else None,
                             programs=fidelity == Fidelity.CYCLE.value)
    session = open_session(compiled, Fidelity(fidelity))
    g = generate(session, tokenizer, prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                 seed=seed, on_text=None if as_json else lambda text: typer.echo(text, nl=False))
    s = {"prompt": prompt, "model": str(model_path), **summary(g, compiled, Fidelity(fidelity))}
    if as_json:
        _print_json(s)
    else:
        typer.echo()
        _print_generation(s)


def _seconds(seconds: float) -> str:
    """A simulated duration in µs or ms."""
    return f"{seconds * 1e6:,.3f} µs" if seconds < 1e-3 else f"{seconds * 1e3:,.3f} ms"


def _print_generation(s: dict[str, Any]) -> None:
    """The chips and figures of a `generate` summary (see openlpu.runtime.generate.summary)."""
    reports = s["chip_reports"]
    used = sum(r["sram_used_bytes"] for r in reports)
    out.print(Text(f"{s['chips']} × {s['chip']}: {s['dtype']} weights, KV cache for {s['context']:,} positions and "
                   f"activations take {mib(used)} of SRAM; one chip holds {mib(reports[0]['sram_bytes'])}",
                   style="bold"), soft_wrap=True)
    chips = Table(title="chips", title_justify="left")
    for column in ("chip", "layers", "SRAM used", "of", "holds"):
        chips.add_column(column, justify="right" if column in ("SRAM used", "of") else "left")
    for r in reports:
        start, stop = r["layer_start"], r["layer_stop"]
        span = f"blk.{start}-{stop - 1}" if stop > start else "none"
        chips.add_row(str(r["index"]), span, mib(r["sram_used_bytes"]), mib(r["sram_bytes"]), r["what"])
    out.print(chips)
    clock = _si("Hz")(s["clock_hz"])
    cpt = s["cycles_per_token"]
    figures = {
        "cycles per token": f"{cpt:,}" if isinstance(cpt, int) else f"{cpt:,.1f}",
        "time to first token": f"{_seconds(s['ttft_seconds'])} ({s['prompt_tokens']} prompt tokens at {clock}, "
                               + ("the prefill program)" if s["prefill"] == PREFILL_PROGRAM else
                                  "token by token through the decode program)"),
        "per-token latency": f"{_seconds(s['token_latency_seconds'])} at {clock}",
        "tokens/s per user": f"{s['tokens_per_second']:,.1f}",
        "tokens": f"{s['prompt_tokens']} prompt, {s['generated_tokens']} generated (stopped at {s['stop']})",
        "numerics": s["numerics"],
        "fidelity": s["fidelity"],
        "wall time": f"{s['wall_seconds']:,.2f} s (host, not chip)",
    }
    table = Table(title="generation (simulated chip time)", title_justify="left")
    table.add_column("figure")
    table.add_column("value")
    for label, value in figures.items():
        table.add_row(label, value)
    out.print(table)
