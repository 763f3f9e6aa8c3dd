"""What the scheduler's overlap buys: the decode step and a prefill compiled with and without it (minutes).

The scheduler emits each operation alone and then moves it as early as the operations already placed allow
(`openlpu.compiler.overlap`). This compiles the same job twice, without the disk cache: once as shipped, once with
the overlap horizon set to 0 (every operation starts when everything before it has landed, as the scheduler did
before), and prints the cycles and compile seconds of both, measured side by side in one process.

Run: .venv/bin/python bench/bench_overlap.py [--dtype int8] [--context 128] [--prompt 36] [--chip groqchip1]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from openlpu.compiler import overlap
from openlpu.compiler.pipeline import compile_model
from openlpu.frontends.gguf import load_gguf
from openlpu.frontends.models import default_model_path
from openlpu.hardware.chip import load_chip


def compile_with(horizon: int, model, chip, args) -> dict:
    shipped, overlap.HORIZON = overlap.HORIZON, horizon
    try:
        t = time.perf_counter()
        c = compile_model(model, chip, dtype=args.dtype, context=args.context, prompt=args.prompt)
        seconds = time.perf_counter() - t
    finally:
        overlap.HORIZON = shipped
    return {"horizon": horizon, "decode_cycles": c.cycles_per_step, "prefill_cycles": c.prefill.cycles,
            "chips": c.chips, "compile_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "int8"))
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=36)
    parser.add_argument("--chip", default="groqchip1")
    args = parser.parse_args()
    os.environ["OPENLPU_NO_CACHE"] = "1"  # the cache key does not know the horizon
    model, chip = load_gguf(default_model_path()), load_chip(args.chip)
    off = compile_with(0, model, chip, args)
    on = compile_with(overlap.HORIZON, model, chip, args)
    for what in ("decode_cycles", "prefill_cycles", "compile_seconds"):
        print(f"{what}: {off[what]:,} without overlap, {on[what]:,} with ({on[what] / off[what] - 1:+.1%})")
    print(json.dumps({"dtype": args.dtype, "context": args.context, "prompt": args.prompt, "without": off,
                      "with": on}))


if __name__ == "__main__":
    main()
