"""How much overlapping independent operations could shorten a compiled decode step (no hardware run, seconds).

The compiled schedule runs operations one after another. This replays it with each operation taking exactly as
long as it does now, but starting as soon as every earlier operation that writes a tensor it reads or writes, or
reads a tensor it writes, is done, with no limit on units or streams. The result bounds what any reordering of
whole operations can gain; a chip's receive moves with the previous chip's send.

Run: .venv/bin/python bench/bench_overlap.py [--dtype int8] [--context 128] [--chip groqchip1]
"""

from __future__ import annotations

import argparse
import json

from openlpu.compiler.chipgraph import Receive, Send
from openlpu.compiler.pipeline import compile_model
from openlpu.frontends.models import default_model_path
from openlpu.hardware.chip import load_chip


def replay(ops, spans, receive_shift: int) -> tuple[int, int]:
    """(finish, send done) of one chip's operations, each started once the operations it depends on are done."""
    done: dict[str, int] = {}  # tensor -> when the last operation writing it is done
    read_done: dict[str, int] = {}  # tensor -> when the last operation reading it is done
    finish = sent = 0
    for op, (start, end) in zip(ops, spans):
        reads, writes = set(op.reads()), set(op.writes())
        at = max([done.get(n, 0) for n in reads | writes] + [read_done.get(n, 0) for n in writes] + [0])
        end_here = at + end - start
        if isinstance(op, Receive):  # its span is the wait for the previous chip's vectors, which leave earlier
            end_here = max(at, end - receive_shift)
        for n in writes:
            done[n] = end_here
        for n in reads:
            read_done[n] = max(read_done.get(n, 0), end_here)
        finish = max(finish, end_here)
        if isinstance(op, Send):
            sent = end_here
    return finish, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "int8"))
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--chip", default="groqchip1")
    args = parser.parse_args()
    c = compile_model(default_model_path(), load_chip(args.chip), dtype=args.dtype, context=args.context,
                      programs=False)
    rows, shift = [], 0
    for g, s in zip(c.graphs, c.scheduled):
        finish, sent = replay(g.ops, s.spans, shift)
        send_end = next((end for op, (_, end) in zip(g.ops, s.spans) if isinstance(op, Send)), None)
        rows.append({"chip": g.index, "ops": len(g.ops), "scheduled": s.predicted_cycles, "overlapped": finish})
        print(f"chip {g.index}: {len(g.ops)} operations, scheduled {s.predicted_cycles:,} cycles, "
              f"dependencies only {finish:,} ({finish / s.predicted_cycles - 1:+.1%})")
        if send_end is not None:
            shift = send_end - sent
    step, best = c.cycles_per_step, rows[-1]["overlapped"]
    print(f"decode step: {step:,} cycles scheduled, {best:,} with every operation started as early as its "
          f"tensors allow ({best / step - 1:+.1%})")
    print(json.dumps({"dtype": args.dtype, "context": args.context, "chips": rows, "step": step, "overlapped": best}))


if __name__ == "__main__":
    main()
