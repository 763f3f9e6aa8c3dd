"""Running a compiled model step by step, as the host would drive the chips.

Before a step the host writes the token's embedding row (first chip), the RoPE rows and the position (every chip);
after it, it reads the logits from the last chip. The KV cache stays in the chips' SRAM between steps.

Two fidelities run the same programs:
- `cycle`: every chip's program on the cycle-exact simulator, the chips as one system (links checked);
- `fast`: the same operations on whole arrays with the same numerics (`openlpu.compiler.fast`), the latency
  taken from the static schedule. Both give bit-identical logits and the same cycle count (tests check it).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from openlpu.compiler import fast
from openlpu.compiler.chipgraph import ChipGraph, Role
from openlpu.compiler.lower import embedding_rows, prefill_inputs, step_inputs
from openlpu.compiler.pipeline import CompiledModel
from openlpu.compiler.schedule import Scheduled
from openlpu.errors import ConfigError, InternalError
from openlpu.system.simulate import simulate_system
from openlpu.system.topology import pipeline


class Fidelity(enum.Enum):
    FAST = "fast"
    CYCLE = "cycle"


@dataclass(frozen=True)
class StepResult:
    logits: np.ndarray  # [vocab] float32
    cycles: int  # exact chip cycles of this step


@dataclass
class Session:
    compiled: CompiledModel
    fidelity: Fidelity
    state: list[dict[str, np.ndarray]] = field(default_factory=list)  # per chip: every tensor kept across steps
    tiles: fast.Tiles = field(default_factory=dict)  # weight tiles prepared for the fast path, per session
    views: fast.Views = field(default_factory=dict)  # the fast path's views of the state's arrays

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the conversation: every chip's SRAM as loaded (weights, constants, empty KV cache)."""
        self.state = [{name: np.array(v) for name, v in g.data.items()} for g in self.compiled.graphs]
        self.views.clear()

    def inputs(self, token_id: int, position: int) -> list[dict[str, np.ndarray]]:
        """What the host writes into each chip before a decode step."""
        c = self.compiled
        if not 0 <= position < c.context:
            raise ConfigError(f"position {position} is outside the compiled context of {c.context}; compile with "
                              "a longer --context")
        self._check_tokens([token_id])
        rows = step_inputs(c.config, c.dims, position)
        per_chip = [dict(rows) for _ in c.graphs]
        per_chip[0]["x_in"] = embedding_rows(c.embedding, c.dims, [token_id])
        return per_chip

    def _check_tokens(self, tokens: Sequence[int]) -> None:
        vocab = self.compiled.config.vocab_size
        bad = [t for t in tokens if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"token id {bad[0]} is outside the vocabulary of {vocab}")

    def step(self, token_id: int, position: int) -> StepResult:
        """One decode step: the token at `position` in, the next token's logits out."""
        c = self.compiled
        outputs = self._run(c.graphs, c.scheduled, c.cycles_per_step, self.inputs(token_id, position))
        return StepResult(self._logits(outputs), c.cycles_per_step)

    def has_prefill(self, prompt: int) -> bool:
        """Whether the model holds a prefill program for a prompt of `prompt` tokens."""
        return self.compiled.prefill is not None and self.compiled.prefill.prompt == prompt

    def prefill(self, token_ids: Sequence[int]) -> StepResult:
        """The prompt at positions 0..P-1, from an empty cache: the compiled prefill program when there is one for
        P tokens, else the decode step once per token. The last token's logits, and the cycles of it all."""
        c, prompt = self.compiled, len(token_ids)
        if not self.has_prefill(prompt):
            cycles = 0
            for position, token in enumerate(token_ids):
                step = self.step(token, position)
                cycles += step.cycles
            return StepResult(step.logits, cycles)
        self._check_tokens(token_ids)
        rows = prefill_inputs(c.config, c.dims, prompt)
        inputs = [dict(rows) for _ in c.graphs]
        inputs[0]["x_in"] = embedding_rows(c.embedding, c.dims, list(token_ids))
        p = c.prefill
        logits = self._logits(self._run(p.graphs, p.scheduled, p.cycles, inputs))
        self._drop_prefill_tensors()
        return StepResult(logits, p.cycles)

    def _drop_prefill_tensors(self) -> None:
        """Forget the tensors only the prefill program has (its activations, one set per query: for SmolLM2's
        36-token prompt 18,524 arrays on the first chip and 10,723 on the second). Kept, they slowed every decode
        step after them (0.55 -> 0.42-0.47 s)."""
        for g, env in zip(self.compiled.graphs, self.state):
            for name in [n for n in env if n not in g.tensors]:
                del env[name]
        self.views.clear()  # they hold the prefill's arrays and operations

    def _logits(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        vocab = self.compiled.config.vocab_size
        return np.concatenate([outputs["logits_w"], outputs["logits_e"]], axis=1)[0, :vocab].astype(np.float32)

    def _run(self, graphs: tuple[ChipGraph, ...], scheduled: tuple[Scheduled, ...], cycles: int,
             inputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if self.fidelity is Fidelity.FAST:
            return self._fast(graphs, inputs)
        return self._cycle(graphs, scheduled, cycles, inputs)

    def _fast(self, graphs: tuple[ChipGraph, ...], inputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        sent: list[np.ndarray] = []
        slots = self.compiled.chip.mxm.accumulator_vectors
        for g, env, given in zip(graphs, self.state, inputs):
            env.update(given)
            sent = fast.run(g, env, slots=slots, tiles=self.tiles, received=sent, views=self.views)
        return self.state[-1]

    def _cycle(self, graphs: tuple[ChipGraph, ...], scheduled: tuple[Scheduled, ...], cycles: int,
               inputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        c = self.compiled
        if any(s.program is None for s in scheduled):
            raise ConfigError("this compiled model was loaded without its programs (compile_model(programs=False)); "
                              "load it with programs=True to run it cycle by cycle")
        kept = [{t.name for t in g.tensors.values() if t.role not in (Role.ACT, Role.STREAM)} for g in graphs]
        loads = [{**{n: v for n, v in env.items() if n in names}, **given}
                 for env, names, given in zip(self.state, kept, inputs)]
        result = simulate_system(pipeline(c.chip, c.chips), [s.program for s in scheduled], loads,
                                 run_checks=False)
        if result.cycles != cycles:
            raise InternalError(f"simulated {result.cycles} cycles, the schedule predicted {cycles}")
        for env, r, g in zip(self.state, result.results, graphs):
            for t in g.tensors.values():
                if t.role in (Role.STATE, Role.OUTPUT):
                    env[t.name] = r.tensors[t.name]
        return self.state[-1]


def open_session(compiled: CompiledModel, fidelity: Fidelity | str = Fidelity.FAST) -> Session:
    return Session(compiled, Fidelity(fidelity))
