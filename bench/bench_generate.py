"""SmolLM2 on the simulated LPU, end to end: host speed of generation, compile time, and schedule quality.

In one run, side by side:
1. fast-path greedy generation (wall clock on this host) against transformers' CPU `generate` of the same fp32
   model, prompt ids and token count: tokens/s for decode only and for prompt + decode, and whether the ids agree;
2. cycle-exact simulation: wall seconds per decode step, and its logits bit-identical to the fast path's;
3. compile time, cold (a fresh cache folder, GGUF load included) and from the disk cache;
4. schedule quality: predicted cycles per decode step against lower bounds (weight bytes / SRAM or MXM-stream
   bandwidth, MACs / the MXM's rate for the weight type, hidden state / link bandwidth + latency), and where the
   cycles go. `--dtype int8` runs all of it on the int8 compilation.

Loading transformers' model (~35 s for the whole file) is timed and reported apart from every timed figure.
The last line printed is one JSON object (also written to `--json PATH`).
Run: .venv/bin/python bench/bench_generate.py [--layers N] [--tokens 32] [--cycle-tokens 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read before transformers is imported: never touch the network
os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader draws progress bars through the report

import numpy as np

from openlpu.compiler.cache import CACHE_DIR_ENV, NO_CACHE_ENV
from openlpu.compiler.chipgraph import (
    Chain,
    InvRms,
    LaneMix,
    Matmul,
    Pair,
    Receive,
    RmsNorm,
    Role,
    Scatter,
    Send,
    TensorDef,
    TokenScale,
    Vxm,
)
from openlpu.compiler.pipeline import CompiledModel, compile_model
from openlpu.frontends.llama import param_shapes
from openlpu.frontends.models import default_model_path
from openlpu.frontends.tokenizer import Tokenizer
from openlpu.hardware.chip import Chip, load_chip
from openlpu.runtime.generate import default_context, encode_prompt
from openlpu.runtime.session import Session, open_session

DEFAULT_PROMPT = "What is an LPU?"
LAYER_PREFIX = re.compile(r"^l\d+[._]")
"""A block's weight names start `l{i}.` (or `l{i}_`): dropped, so every block's qkv counts as one group."""
TOP_GROUPS = 12
"""Op groups printed in the cycle breakdown (the rest are summed into one line)."""


# ------------------------------------------------------------------------------------------------ machine


def machine() -> dict[str, Any]:
    import torch
    import transformers

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "memory_gib": round(memory / 2**30, 1), "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------ compile


@contextlib.contextmanager
def cache_folder(path: Path) -> Iterator[None]:
    """Point the compile cache at `path` (and make sure it is on) for the duration."""
    saved = {k: os.environ.get(k) for k in (CACHE_DIR_ENV, NO_CACHE_ENV)}
    os.environ[CACHE_DIR_ENV] = str(path)
    os.environ.pop(NO_CACHE_ENV, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def timed_compiles(path: Path, chip: Chip, context: int, layers: int | None,
                   prompt: int, dtype: str = "fp16") -> tuple[CompiledModel, dict]:
    """Compile the decode step and the prompt's prefill twice into a fresh cache folder: cold (GGUF load,
    lowering, placement, scheduling, verification), then cached."""
    folder = Path(tempfile.mkdtemp(prefix="openlpu-bench-cache-"))
    try:
        with cache_folder(folder):
            seconds = []
            for _ in range(2):
                start = time.perf_counter()
                compiled = compile_model(path, chip, dtype=dtype, context=context, n_layers=layers, prompt=prompt)
                seconds.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return compiled, {"cold_seconds": seconds[0], "cached_seconds": seconds[1]}


# ------------------------------------------------------------------------------------------ generation


def greedy_ours(session: Session, prompt_ids: list[int], n: int) -> tuple[list[int], float, float]:
    """`n` greedy tokens after the prompt (no stop token): (ids, prompt+decode seconds, decode seconds).

    The prompt runs as `generate` runs it (the prefill program when one was compiled for its length). Decode time
    runs from the prompt's last logits to the n-th token's: n - 1 steps."""
    session.reset()
    start = time.perf_counter()
    ids = [int(np.argmax(session.prefill(prompt_ids).logits))]
    first = time.perf_counter()
    while len(ids) < n:
        ids.append(int(np.argmax(session.step(ids[-1], len(prompt_ids) + len(ids) - 1).logits)))
    end = time.perf_counter()
    return ids, end - start, end - first


def load_hf(path: Path, layers: int | None) -> Any:
    """transformers' float32 model of the GGUF file, cut to its first `layers` blocks if given."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32)
    if layers is not None:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:layers]
    return model.eval()


class _Stamps:
    """A logits processor that only notes when it is called: once per generated token, after its forward."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.times.append(time.perf_counter())
        return scores


def greedy_hf(model: Any, prompt_ids: list[int], n: int) -> tuple[list[int], float, float]:
    """transformers' greedy `generate` of exactly `n` tokens: (ids, prompt+decode seconds, decode seconds).

    No eos id, so nothing stops early or is masked (as in `greedy_ours`); decode time spans the n - 1 forwards
    after the prompt's, from the per-token stamps of a logits processor."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    config = GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                              pad_token_id=0)
    stamps = _Stamps()
    with torch.inference_mode():
        start = time.perf_counter()
        out = model.generate(torch.tensor([prompt_ids]), generation_config=config,
                             logits_processor=LogitsProcessorList([stamps]))
        end = time.perf_counter()
    return out[0, len(prompt_ids):].tolist(), end - start, stamps.times[-1] - stamps.times[0]


def rates(n: int, prompt_tokens: int, total: float, decode: float) -> dict[str, float]:
    return {"prompt_plus_decode_seconds": total, "decode_seconds": decode,
            "tokens_per_second": n / total, "decode_tokens_per_second": (n - 1) / decode if n > 1 else math.nan,
            "prompt_tokens": prompt_tokens}


def agreement(ours: list[int], theirs: list[int]) -> dict[str, Any]:
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return {"identical": ours == theirs, "matching_prefix": same, "ours": ours, "transformers": theirs}


# ------------------------------------------------------------------------------------------- cycle path


def cycle_steps(compiled: CompiledModel, tokens: list[int], feed: int, steps: int) -> dict[str, Any]:
    """Run `feed` untimed then `steps` timed steps of `tokens` on the cycle-exact path, and the same steps on a
    fresh fast session; the logits must agree bit for bit at every step."""
    cycle, fast = open_session(compiled, "cycle"), open_session(compiled, "fast")
    seconds, identical = [], True
    for position, token in enumerate(tokens[: feed + steps]):
        start = time.perf_counter()
        got = cycle.step(token, position)
        if position >= feed:
            seconds.append(time.perf_counter() - start)
        want = fast.step(token, position)
        identical &= got.logits.dtype == want.logits.dtype and got.logits.tobytes() == want.logits.tobytes()
        identical &= got.cycles == want.cycles
    return {"feed_steps": feed, "timed_steps": len(seconds), "seconds_per_step": float(np.mean(seconds)),
            "step_seconds": seconds, "logits_bit_identical": bool(identical)}


# --------------------------------------------------------------------------------------- schedule bounds


def nbytes(t: TensorDef) -> int:
    return t.rows * t.cols * t.dtype.width_bytes


def real_params(compiled: CompiledModel, layers: range, last: bool) -> dict[str, int]:
    """Unpadded parameters a chip holds (its blocks, plus the final norm and LM head on the last): all of them,
    and those in matrices (one MAC each per token)."""
    cfg = compiled.config
    shapes = param_shapes(cfg)
    names = [n for n in shapes if any(n.startswith(f"blk.{i}.") for i in layers)]
    if last:
        names += ["output_norm.weight", "token_embd.weight" if cfg.tied_embeddings else "output.weight"]
    return {"params": sum(math.prod(shapes[n]) for n in names),
            "matrix_params": sum(math.prod(shapes[n]) for n in names if len(shapes[n]) == 2)}


def chip_work(compiled: CompiledModel) -> list[dict[str, int]]:
    """Per chip: real weight bytes (fp16: 2 per parameter, int8: 1), WEIGHT bytes as stored (padded), weight bytes
    the matmuls stream (every use of every matrix, padding and constant matrices included), real and executed MACs,
    and bytes sent."""
    out = []
    for g in compiled.graphs:
        real = real_params(compiled, g.layers, g.index == compiled.chips - 1)
        mms = [m for op in g.ops for m in ((op.west, op.east) if isinstance(op, Pair) else (op,))
               if isinstance(m, Matmul)]
        out.append({
            "real_weight_bytes": (1 if compiled.dtype == "int8" else 2) * real["params"],
            "stored_weight_bytes": sum(nbytes(t) for t in g.by_role(Role.WEIGHT)),
            "streamed_weight_bytes": sum(nbytes(g.tensors[op.w]) for op in mms),
            "real_macs": real["matrix_params"],
            "executed_macs": sum(g.tensors[op.a].rows * g.tensors[op.w].rows * g.tensors[op.w].cols for op in mms),
            "sent_bytes": sum(nbytes(g.tensors[op.src]) for op in g.ops if isinstance(op, Send)),
        })
    return out


def link_cycles(chip: Chip, sent_bytes: int) -> int:
    """One hop: the bytes at the link's rate (rounded up to cycles) plus its latency."""
    rate = chip.c2c.link_bytes_per_second
    return -(-sent_bytes * chip.clock_hz // rate) + chip.c2c.link_latency_cycles


def rates_per_cycle(chip: Chip, dtype: str) -> dict[str, int]:
    return {"sram_read": chip.sram_read_bytes_per_cycle,
            "mxm_streams": 2 * chip.streams.streams_per_direction * chip.vector_bytes,
            "mxm_macs": chip.macs_per_cycle_int8 if dtype == "int8" else chip.macs_per_cycle_fp16}


BOUNDS = (  # name, per-chip quantity, rate
    ("real weights / SRAM read", "real_weight_bytes", "sram_read"),
    ("stored weights / SRAM read", "stored_weight_bytes", "sram_read"),
    ("streamed weights / MXM streams", "streamed_weight_bytes", "mxm_streams"),
    ("real MACs / MXM rate", "real_macs", "mxm_macs"),  # the weight type's rate (int8: 4x fp16)
    ("executed MACs / MXM rate", "executed_macs", "mxm_macs"),
)
REAL_BOUNDS = ("real weights / SRAM read", "real MACs / MXM rate")
LAYOUT_BOUNDS = ("streamed weights / MXM streams", "executed MACs / MXM rate")


def bounds(compiled: CompiledModel) -> dict[str, Any]:
    """Lower bounds on one decode step's cycles. Aggregate: every chip's bandwidth at once; sequential: a
    one-token pipeline runs the chips one after another, so each chip's own bound, summed, plus every hop."""
    chip, work, r = compiled.chip, chip_work(compiled), rates_per_cycle(compiled.chip, compiled.dtype)
    links = sum(link_cycles(chip, w["sent_bytes"]) for w in work if w["sent_bytes"])
    rows = {"links (bytes / link rate + latency, per hop)": {"aggregate": links, "sequential": links}}
    for name, key, rate in BOUNDS:
        rows[name] = {"aggregate": math.ceil(sum(w[key] for w in work) / (len(work) * r[rate])),
                      "sequential": sum(math.ceil(w[key] / r[rate]) for w in work) + links}
    for label, names in (("real model", REAL_BOUNDS), ("as laid out", LAYOUT_BOUNDS)):
        keys = [(key, rate) for name, key, rate in BOUNDS if name in names]
        per_chip = sum(max(math.ceil(w[k] / r[rt]) for k, rt in keys) for w in work)
        rows[f"combined ({label}): sum of per-chip max + links"] = {"aggregate": None, "sequential": per_chip + links}
    real = max(rows[n]["sequential"] for n in (*REAL_BOUNDS, "combined (real model): sum of per-chip max + links"))
    laid = max(rows[n]["sequential"] for n in (*LAYOUT_BOUNDS, "combined (as laid out): sum of per-chip max + links"))
    p = compiled.cycles_per_step
    return {"rates_per_cycle": r, "per_chip": work, "bounds": rows, "predicted_cycles": p,
            "ratio_to_real_bound": p / real, "ratio_to_layout_bound": p / laid}


# -------------------------------------------------------------------------------------- cycle breakdown


def _weight_group(name: str) -> str:
    """A matmul's weight by kind: every block's qkv (say) as one group."""
    kind = LAYER_PREFIX.sub("", name)
    return "scores" if kind.startswith("scores_ones") else "head" if kind.startswith("head_") else kind


def op_group(op: Any) -> str:
    """The breakdown's name for an operation: VXM by opcode, matmul by weight, the rest by kind."""
    match op:
        case Vxm():
            return f"vxm.{op.op.value}"
        case Chain():  # by its operations, each once, in order
            return "chain." + "+".join(dict.fromkeys(s.op.value for s in op.steps))
        case Matmul():
            return f"matmul.{_weight_group(op.w)}"
        case Pair():
            return "pair." + "+".join(sorted({_weight_group(op.west.w), _weight_group(op.east.w)}))
        case RmsNorm():
            return "rmsnorm"
        case InvRms():
            return "inv_rms"
        case TokenScale():
            return "token_scale"
        case LaneMix():
            return "lane_mix"
        case Scatter():
            return "scatter"
        case Send():
            return "send"
        case Receive():
            return "receive"
    raise TypeError(f"no breakdown group for {op!r}")


def breakdown(compiled: CompiledModel) -> dict[str, int]:
    """Cycles per op group along the step's critical path: on each chip, the cycles by which an op carries the
    chip's progress past the ops before it (ops overlap, so each cycle counts once), a receive only from the end
    of the previous chip's send (the wait before it is that chip's work, counted there). The total is the last
    chip's finish."""
    totals: Counter[str] = Counter()
    send_end = 0
    for g, s in zip(compiled.graphs, compiled.scheduled):
        reached = 0
        for op, (start, done) in zip(g.ops, s.spans):
            if isinstance(op, Receive):
                start = max(start, send_end)
            totals[op_group(op)] += max(0, done - max(start, reached))
            reached = max(reached, done)
            if isinstance(op, Send):
                send_end = done
    return dict(totals.most_common())


# --------------------------------------------------------------------------------------------- report


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _cell(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def print_report(r: dict[str, Any]) -> None:
    m, s = r["machine"], r["setup"]
    print(f"machine: {m['platform']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, Python {m['python']}, NumPy "
          f"{m['numpy']}, torch {m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}")
    print(f"model: {s['model']} ({s['layers']} blocks) on {s['chips']} x {s['chip']}, context {s['context']}, "
          f"{s['prompt_tokens']} prompt tokens, {s['tokens']} new tokens")
    print(f"loads (untimed elsewhere): tokenizer {s['tokenizer_seconds']:.2f} s, transformers model "
          f"{s['hf_load_seconds']:.2f} s\n")
    g, hf = r["generate"]["ours"], r["generate"]["transformers"]
    print(table(["generation (host wall clock)", "ours (fast path)", "transformers CPU", "ours / transformers"], [
        ["prompt + decode seconds", g["prompt_plus_decode_seconds"], hf["prompt_plus_decode_seconds"], None],
        ["prompt + decode tokens/s", g["tokens_per_second"], hf["tokens_per_second"],
         g["tokens_per_second"] / hf["tokens_per_second"]],
        ["decode seconds", g["decode_seconds"], hf["decode_seconds"], None],
        ["decode tokens/s", g["decode_tokens_per_second"], hf["decode_tokens_per_second"],
         g["decode_tokens_per_second"] / hf["decode_tokens_per_second"]],
    ]))
    a = r["generate"]["agreement"]
    print(f"token ids agree: {a['identical']} (first {a['matching_prefix']} of {s['tokens']} match); "
          f"ours: {r['generate']['text']!r}\n")
    c = r["cycle"]
    print(f"cycle-exact path: {c['seconds_per_step']:.3f} s per decode step (mean of {c['timed_steps']} after "
          f"{c['feed_steps']} untimed); logits bit-identical to the fast path: {c['logits_bit_identical']}")
    k = r["compile"]
    print(f"compile (decode + prefill): cold {k['cold_seconds']:.2f} s (GGUF load included), cached "
          f"{k['cached_seconds']:.2f} s")
    f = r["prefill"]
    print(f"prefill of {f['prompt_tokens']} tokens: {f['cycles']:,} cycles (token by token through the decode "
          f"step: {f['token_by_token_cycles']:,})\n")
    print_schedule(r["schedule"], r["breakdown"])


def print_schedule(q: dict[str, Any], parts: dict[str, int]) -> None:
    p = q["predicted_cycles"]
    print(f"predicted decode step: {p:,} cycles; per cycle per chip: {q['rates_per_cycle']}")
    rows = [[name, b["aggregate"], b["sequential"], p / b["sequential"] if b["sequential"] else None]
            for name, b in q["bounds"].items()]
    print(table(["lower bound (cycles)", "aggregate", "sequential", "predicted / seq."], rows))
    print(f"predicted / tightest real-model bound: {q['ratio_to_real_bound']:.2f}; "
          f"/ tightest bound for the compiled layout: {q['ratio_to_layout_bound']:.2f}\n")
    top = list(parts.items())[:TOP_GROUPS]
    rest = sum(parts.values()) - sum(v for _, v in top)
    rows = [[name, v, f"{100 * v / p:.1f} %"] for name, v in [*top, ("(other groups)", rest)]]
    print(table(["where the cycles go (critical path)", "cycles", "share"], rows))
    print(f"total {sum(parts.values()):,} of {p:,} predicted cycles")


# ----------------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=None, help="keep the first N blocks (default: all)")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens to generate greedily")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the user's message (chat template applied)")
    parser.add_argument("--cycle-tokens", type=int, default=2, help="decode steps timed on the cycle-exact path")
    parser.add_argument("--cycle-feed", type=int, default=1, help="untimed cycle-exact steps before those")
    parser.add_argument("--chip", default="groqchip1", help="chip preset or TOML file")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "int8"), help="weight type to compile")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.tokens < 2 or args.cycle_tokens < 1 or args.cycle_feed < 0:
        parser.error("--tokens must be >= 2 (one decode step), --cycle-tokens >= 1, --cycle-feed >= 0")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    path, chip = default_model_path(), load_chip(args.chip)
    start = time.perf_counter()
    tokenizer = Tokenizer.from_gguf(path)
    tokenizer_seconds = time.perf_counter() - start
    prompt_ids = encode_prompt(tokenizer, args.prompt)
    context = default_context(len(prompt_ids), max(args.tokens, args.cycle_feed + args.cycle_tokens))
    compiled, compile_times = timed_compiles(path, chip, context, args.layers, len(prompt_ids), args.dtype)

    start = time.perf_counter()
    hf = load_hf(path, args.layers)
    hf_load = time.perf_counter() - start
    greedy_hf(hf, prompt_ids, 2)  # warm-up: first-call overheads
    hf_ids, hf_total, hf_decode = greedy_hf(hf, prompt_ids, args.tokens)
    del hf

    session = open_session(compiled, "fast")
    greedy_ours(session, prompt_ids, 2)  # warm-up, the same call as transformers': the one-time weight packing
    ids, total, decode = greedy_ours(session, prompt_ids, args.tokens)
    sequence = prompt_ids + ids
    return {
        "machine": machine(),
        "setup": {"model": compiled.model_name, "layers": compiled.n_layers, "chips": compiled.chips,
                  "dtype": compiled.dtype,
                  "chip": chip.name, "context": context, "prompt": args.prompt, "prompt_tokens": len(prompt_ids),
                  "tokens": args.tokens, "tokenizer_seconds": tokenizer_seconds, "hf_load_seconds": hf_load},
        "generate": {"ours": rates(args.tokens, len(prompt_ids), total, decode),
                     "transformers": rates(args.tokens, len(prompt_ids), hf_total, hf_decode),
                     "agreement": agreement(ids, hf_ids), "text": tokenizer.decode(ids, skip_special=True)},
        "cycle": cycle_steps(compiled, sequence, args.cycle_feed, args.cycle_tokens),
        "compile": compile_times,
        "prefill": {"prompt_tokens": len(prompt_ids), "cycles": compiled.prefill.cycles,
                    "token_by_token_cycles": len(prompt_ids) * compiled.cycles_per_step},
        "schedule": bounds(compiled),
        "breakdown": breakdown(compiled),
    }


def main() -> None:
    args = parse_args()
    report = run(args)
    print_report(report)
    text = json.dumps(report, default=float)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
