"""Text generation on a compiled model: sampling, the prompt-then-decode loop, streamed text, and the chip's latency.

The prompt (positions 0..P-1) runs as the prefill program compiled for its length when the model has one
(`PREFILL_PROGRAM`), else token by token through the decode program (`PREFILL_STEPS`); its last logits give the
first new token, and each further token costs one decode step. So the time to first token is the prompt's cycles
at the chip's clock, and the per-token latency is the mean cycles of a decode step. Cycles are exact integers from
the session; seconds and rates are derived only when reported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from openlpu.errors import ConfigError
from openlpu.frontends.tokenizer import Tokenizer

if TYPE_CHECKING:
    from openlpu.compiler.pipeline import CompiledModel
    from openlpu.runtime.session import Fidelity, Session

END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "</s>")
"""Special tokens that end an assistant's turn, besides the file's own eos token (ChatML, Llama 3, Phi, SPM)."""

CONTEXT_STEP = 32
"""The default context is the prompt plus the new tokens, rounded up to a multiple of this many positions: one
decode program then serves every prompt that lands in the same 32 positions, and the attention runs over at most
31 positions more than the generation can reach (each costs ~22 cycles per block: SmolLM2, fp16, GroqChip 1)."""

NUMERICS = {
    "fp16": "fp16 weights and matmul inputs, fp32 accumulation; fp32 on the VXM",
    "int8": "int8 weights (per-channel fp32 scales) and int8 matmul inputs (per-token dynamic scales), exact int32 "
            "accumulation; attention and the VXM in fp32",
}
"""What each `--dtype` computes in, for the report."""

STOP_END_OF_TURN = "end of turn"
STOP_MAX_TOKENS = "max tokens"

PREFILL_PROGRAM = "program"
"""The prompt ran as the prefill program compiled for its length."""
PREFILL_STEPS = "steps"
"""The prompt ran token by token through the decode program (no prefill program for its length)."""


# ----------------------------------------------------------------------------------------------- sampling


def check_sampling(*, temperature: float, top_p: float) -> None:
    """Raise `ConfigError` unless temperature is finite and >= 0 and 0 < top_p <= 1."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ConfigError(
            f"temperature {temperature} is not a sampling temperature: it must be a finite number >= 0; "
            "pass --temperature 0 for greedy decoding or a positive value such as 0.7"
        )
    if not 0 < top_p <= 1:
        raise ConfigError(
            f"top-p {top_p} is out of range: it is the probability mass kept, > 0 and <= 1; "
            "pass --top-p 1 to keep every token or a value such as 0.9"
        )


def sample(logits: np.ndarray, *, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """The next token id from `logits` [vocab].

    Temperature 0 is greedy: the argmax, the lowest id on ties, and `rng` is not used. Otherwise the
    probabilities are softmax(logits / temperature) in float64, cut to the nucleus (the fewest highest-probability
    tokens whose mass is >= top_p, at least one; ties ordered by id) and one token is drawn from it with `rng`.
    """
    check_sampling(temperature=temperature, top_p=top_p)
    if temperature == 0:
        return int(np.argmax(logits))
    z = np.asarray(logits, dtype=np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1:
        order = np.argsort(-p, kind="stable")
        k = min(int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1, len(order))
        ids, p = order[:k], p[order[:k]]
    else:
        ids = np.arange(len(p))
    cumulative = np.cumsum(p)
    i = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return int(ids[min(i, len(ids) - 1)])


# ------------------------------------------------------------------------------------------------- tokens


def encode_prompt(tokenizer: Tokenizer, prompt: str, *, chat: bool = True) -> list[int]:
    """The prompt's token ids: with `chat`, one user message in the model's chat template, ending where the
    assistant's reply begins; without, the text as it is."""
    if chat:
        ids = tokenizer.encode_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)
    else:
        ids = tokenizer.encode(prompt)
    if not ids:
        raise ConfigError("the prompt is empty: give some text to continue")
    return ids


def stop_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """Ids that end generation: the file's eos token and any special end-of-turn token (`END_OF_TURN_TOKENS`)."""
    return frozenset({tokenizer.eos_id} | {i for i in tokenizer.special_ids if tokenizer.tokens[i] in
                                           END_OF_TURN_TOKENS})


def default_context(prompt_tokens: int, max_tokens: int) -> int:
    """Prompt plus new tokens, rounded up to a multiple of `CONTEXT_STEP` positions."""
    return max(1, -(-(prompt_tokens + max_tokens) // CONTEXT_STEP)) * CONTEXT_STEP


def check_fits(prompt_tokens: int, max_tokens: int, context: int) -> None:
    """Raise `ConfigError` unless max_tokens >= 1 and the prompt plus max_tokens fit the compiled context."""
    if max_tokens < 1:
        raise ConfigError(f"--max-tokens {max_tokens}: generate at least 1 token")
    need = prompt_tokens + max_tokens
    if need > context:
        raise ConfigError(
            f"the prompt ({prompt_tokens} tokens) and --max-tokens {max_tokens} need {need} positions, but the "
            f"model was compiled for a context of {context}; pass --context {need + need % 2} or more (an even "
            "number), or fewer --max-tokens"
        )


class TextStream:
    """Text of token ids as they arrive, holding back a character whose UTF-8 bytes are split across tokens.

    Each `push` returns only the new complete characters; `finish` returns whatever is held back (an incomplete
    sequence then decodes to U+FFFD). Special tokens are skipped. Decoding from the previous emission's start
    keeps tokenizers that drop a leading space when decoded alone (SentencePiece) correct.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the ids decoded for context
        self._read = 0  # end of the ids whose text was emitted

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special=True)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        done = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        if len(text) <= len(done) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(done):]

    def finish(self) -> str:
        done = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return text[len(done):]


# --------------------------------------------------------------------------------------------- generation


@dataclass(frozen=True, slots=True, kw_only=True)
class Generation:
    """One generation: the text, the token ids, and the exact chip cycles of every step.

    `prefill_cycles` are the prompt's (which yields the first new token), run as `prefill` says
    (`PREFILL_PROGRAM` or `PREFILL_STEPS`); `decode_cycles` has one entry per further token (one fewer than
    `token_ids`); `step_cycles` are the decode program's, the schedule's figure. `stop` says why it ended
    (`STOP_END_OF_TURN`, with the stop token last in `token_ids`, or `STOP_MAX_TOKENS`). `wall_seconds` is host
    time, not chip time.
    """

    text: str
    token_ids: tuple[int, ...]
    prompt_ids: tuple[int, ...]
    prefill_cycles: int
    prefill: str
    decode_cycles: tuple[int, ...]
    step_cycles: int
    clock_hz: int
    wall_seconds: float
    stop: str

    @property
    def cycles_per_token(self) -> int | float:
        """Mean cycles of the decode steps run (exact int when they divide evenly); the decode program's
        `step_cycles` if only one token was generated (no decode step ran)."""
        if not self.decode_cycles:
            return self.step_cycles
        total, n = sum(self.decode_cycles), len(self.decode_cycles)
        q, r = divmod(total, n)
        return q if r == 0 else total / n

    @property
    def ttft_seconds(self) -> float:
        """Simulated time to first token: the prompt's steps at the chip's clock."""
        return self.prefill_cycles / self.clock_hz

    @property
    def token_latency_seconds(self) -> float:
        """Simulated time per further token at the chip's clock."""
        return self.cycles_per_token / self.clock_hz

    @property
    def tokens_per_second(self) -> float:
        """Tokens per second seen by one user (batch 1): 1 / token latency."""
        return self.clock_hz / self.cycles_per_token


def _prefill(session: Session, prompt_ids: Sequence[int]) -> tuple[Any, int, str]:
    """Run the prompt (the prefill program, or the decode step token by token); the last logits, the cycles and
    which of the two ran."""
    how = PREFILL_PROGRAM if session.has_prefill(len(prompt_ids)) else PREFILL_STEPS
    step = session.prefill(prompt_ids)
    return step, step.cycles, how


def generate(
    session: Session,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    max_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    on_text: Callable[[str], None] | None = None,
    chat: bool = True,
) -> Generation:
    """Generate up to `max_tokens` tokens after `prompt` (in the chat template unless `chat` is False), stopping
    early after an end-of-turn token (`stop_ids`); `on_text` receives the text as it arrives (see `TextStream`).

    Raises `ConfigError` for bad sampling arguments or a prompt plus `max_tokens` beyond the compiled context.
    """
    check_sampling(temperature=temperature, top_p=top_p)
    prompt_ids = encode_prompt(tokenizer, prompt, chat=chat)
    check_fits(len(prompt_ids), max_tokens, session.compiled.context)
    emit = on_text or (lambda _: None)
    stops, stream, rng = stop_ids(tokenizer), TextStream(tokenizer), np.random.default_rng(seed)
    start = time.perf_counter()
    step, prefill_cycles, prefill = _prefill(session, prompt_ids)
    out: list[int] = []
    decode_cycles: list[int] = []
    pieces: list[str] = []
    while True:
        token = sample(step.logits, temperature=temperature, top_p=top_p, rng=rng)
        out.append(token)
        if token in stops:
            stop = STOP_END_OF_TURN
            break
        if piece := stream.push(token):
            pieces.append(piece)
            emit(piece)
        if len(out) == max_tokens:
            stop = STOP_MAX_TOKENS
            break
        step = session.step(token, len(prompt_ids) + len(out) - 1)
        decode_cycles.append(step.cycles)
    if piece := stream.finish():
        pieces.append(piece)
        emit(piece)
    return Generation(
        text="".join(pieces), token_ids=tuple(out), prompt_ids=tuple(prompt_ids), prefill_cycles=prefill_cycles,
        prefill=prefill, decode_cycles=tuple(decode_cycles), step_cycles=session.compiled.cycles_per_step,
        clock_hz=session.compiled.chip.clock_hz,
        wall_seconds=time.perf_counter() - start, stop=stop,
    )


def summary(gen: Generation, compiled: CompiledModel, fidelity: Fidelity) -> dict[str, Any]:
    """The generation and the chips it ran on, as plain JSON types (integers exact, seconds derived)."""
    return {
        "text": gen.text,
        "token_ids": list(gen.token_ids),
        "prompt_tokens": len(gen.prompt_ids),
        "generated_tokens": len(gen.token_ids),
        "stop": gen.stop,
        "chip": compiled.chip.name,
        "chips": compiled.chips,
        "chip_reports": [
            {"index": r.index, "layer_start": r.layers.start, "layer_stop": r.layers.stop,
             "sram_used_bytes": r.sram_used_bytes, "sram_bytes": r.sram_bytes, "what": r.what}
            for r in compiled.chip_reports
        ],
        "layers": compiled.n_layers,
        "dtype": compiled.dtype,
        "numerics": NUMERICS.get(compiled.dtype, compiled.dtype),
        "fidelity": fidelity.value,
        "context": compiled.context,
        "clock_hz": gen.clock_hz,
        "prefill": gen.prefill,
        "prefill_cycles": gen.prefill_cycles,
        "cycles_per_token": gen.cycles_per_token,
        "ttft_seconds": gen.ttft_seconds,
        "token_latency_seconds": gen.token_latency_seconds,
        "tokens_per_second": gen.tokens_per_second,
        "wall_seconds": gen.wall_seconds,
    }
