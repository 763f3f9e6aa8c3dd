"""Text generation (openlpu.runtime.generate) and `openlpu generate`, against a fake session and compiled model.

The fakes follow the interface of openlpu.runtime.session / openlpu.compiler.pipeline: a session's `step(token,
position)` returns the next token's logits and the step's exact cycles. Here a step's cycles are 1000 + position,
so sums and lists of cycles are checked exactly.
"""

from __future__ import annotations

import enum
import json
import math
import re
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import frontend_refs as refs
import numpy as np
import pytest
from typer.testing import CliRunner

from openlpu import cli
from openlpu.compiler.pipeline import ChipReport
from openlpu.errors import ConfigError
from openlpu.hardware import load_chip
from openlpu.hardware.chip import Chip
from openlpu.runtime.generate import (
    PREFILL_PROGRAM,
    PREFILL_STEPS,
    STOP_END_OF_TURN,
    STOP_MAX_TOKENS,
    Generation,
    TextStream,
    default_context,
    encode_prompt,
    generate,
    sample,
    stop_ids,
    summary,
)

CHIP = load_chip("groqchip1")
BASE_CYCLES = 1000


# ------------------------------------------------------------------------------------------------ fakes


class FakeFidelity(enum.Enum):
    FAST = "fast"
    CYCLE = "cycle"


@dataclass(frozen=True)
class FakeCompiled:
    chip: Chip = CHIP
    chips: int = 2
    dtype: str = "fp16"
    context: int = 64
    n_layers: int = 30
    chip_reports: tuple[ChipReport, ...] = (
        ChipReport(0, range(0, 15), 200_000_000, CHIP.sram_bytes, "embedding, blk.0-14"),
        ChipReport(1, range(15, 30), 190_000_000, CHIP.sram_bytes, "blk.15-29, output"),
    )
    cycles_per_step: int = BASE_CYCLES
    prefill_prompt: int | None = None  # the prompt length a prefill program was compiled for
    prefill_cycles: int = 7 * BASE_CYCLES

    def summary_lines(self) -> list[str]:
        return ["2 chips"]


@dataclass(frozen=True)
class FakeStep:
    logits: np.ndarray
    cycles: int


@dataclass
class FakeSession:
    """Answers `script[k]` (one-hot logits) at the k-th step from the prompt's last one; uniform logits before."""

    compiled: Any
    script: Sequence[int]
    prompt_len: int
    vocab: int = 259
    calls: list[tuple[int, int]] = field(default_factory=list)

    def step(self, token_id: int, position: int) -> FakeStep:
        self.calls.append((token_id, position))
        logits = np.zeros(self.vocab, dtype=np.float32)
        k = position - (self.prompt_len - 1)
        if k >= 0:
            logits[self.script[k]] = 10.0
        return FakeStep(logits, BASE_CYCLES + position)

    def has_prefill(self, prompt: int) -> bool:
        return self.compiled.prefill_prompt == prompt

    def prefill(self, token_ids: Sequence[int]) -> FakeStep:
        """The compiled prefill program's cycles when there is one for this length; else token by token, as the
        session does."""
        if self.has_prefill(len(token_ids)):
            last = self.step(token_ids[-1], len(token_ids) - 1)
            return FakeStep(last.logits, self.compiled.prefill_cycles)
        steps = [self.step(t, p) for p, t in enumerate(token_ids)]
        return FakeStep(steps[-1].logits, sum(s.cycles for s in steps))


class ByteTokenizer:
    """Three ChatML special tokens, then one token per byte (id = byte + 3): any UTF-8 character can be split."""

    tokens = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<0x{b:02X}>" for b in range(256)))
    special_ids = frozenset({0, 1, 2})
    bos_id, eos_id = 1, 2

    def encode(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode()]

    def encode_chat(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        assert add_generation_prompt
        (message,) = messages
        return [1, *self.encode(f"{message['role']}\n{message['content']}"), 2, 1, *self.encode("assistant\n")]

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        data = b"".join(self.tokens[i].encode() if i < 3 else bytes([i - 3]) for i in ids
                        if not (skip_special and i < 3))
        return data.decode("utf-8", errors="replace")


TOK = ByteTokenizer()
PROMPT = "hi"
PROMPT_IDS = encode_prompt(TOK, PROMPT)


def run(script: Sequence[int], *, max_tokens: int = 16, context: int = 64, **kwargs: Any) -> tuple[
        Generation, FakeSession, list[str]]:
    session = FakeSession(FakeCompiled(context=context), script, len(PROMPT_IDS))
    pieces: list[str] = []
    g = generate(session, TOK, PROMPT, max_tokens=max_tokens, on_text=pieces.append, **kwargs)
    return g, session, pieces


# --------------------------------------------------------------------------------------------- sampling


def test_greedy_is_argmax_lowest_id_on_ties_and_draws_nothing() -> None:
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    assert sample(np.array([0.0, 3.0, 1.0, 3.0], np.float32), temperature=0, top_p=1.0, rng=rng) == 1
    assert sample(np.array([0.0, 3.0, 1.0, 3.0]), temperature=0, top_p=0.1, rng=rng) == 1
    assert rng.bit_generator.state == before


def test_top_p_tiny_keeps_only_the_likeliest_token() -> None:
    logits = np.log(np.array([0.2, 0.5, 0.3]))
    for seed in range(50):
        assert sample(logits, temperature=1.0, top_p=1e-9, rng=np.random.default_rng(seed)) == 1
    tied = np.array([1.0, 5.0, 5.0, 0.0])
    for seed in range(50):
        assert sample(tied, temperature=1.0, top_p=1e-9, rng=np.random.default_rng(seed)) == 1


def draws(logits: np.ndarray, n: int = 4000, **kwargs: Any) -> np.ndarray:
    rng = np.random.default_rng(7)
    ids = [sample(logits, rng=rng, **kwargs) for _ in range(n)]
    return np.bincount(ids, minlength=len(logits)) / n


def test_top_p_keeps_the_smallest_set_holding_the_mass() -> None:
    logits = np.log(np.array([0.2, 0.5, 0.3]))
    assert np.allclose(draws(logits, temperature=1.0, top_p=1.0), [0.2, 0.5, 0.3], atol=0.03)
    assert np.allclose(draws(logits, temperature=1.0, top_p=0.7), [0.0, 0.625, 0.375], atol=0.03)
    assert np.allclose(draws(logits, temperature=1.0, top_p=0.4), [0.0, 1.0, 0.0])


def test_temperature_sharpens_and_flattens() -> None:
    logits = np.log(np.array([0.2, 0.5, 0.3]))
    assert np.allclose(draws(logits, temperature=1e-6, top_p=1.0), [0.0, 1.0, 0.0])
    assert np.allclose(draws(logits, temperature=1e6, top_p=1.0), [1 / 3] * 3, atol=0.03)


def test_same_seed_same_tokens() -> None:
    logits = np.linspace(0.0, 2.0, 50)

    def tokens(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [sample(logits, temperature=0.8, top_p=0.9, rng=rng) for _ in range(40)]

    assert tokens(3) == tokens(3)
    assert tokens(3) != tokens(4)


@pytest.mark.parametrize(("temperature", "top_p", "message"), [
    (-1.0, 1.0, "temperature -1.0 is not a sampling temperature: it must be a finite number >= 0; pass "
                "--temperature 0 for greedy decoding or a positive value such as 0.7"),
    (math.nan, 1.0, "temperature nan is not a sampling temperature: it must be a finite number >= 0; pass "
                    "--temperature 0 for greedy decoding or a positive value such as 0.7"),
    (1.0, 0.0, "top-p 0.0 is out of range: it is the probability mass kept, > 0 and <= 1; pass --top-p 1 to "
               "keep every token or a value such as 0.9"),
    (1.0, 1.5, "top-p 1.5 is out of range: it is the probability mass kept, > 0 and <= 1; pass --top-p 1 to "
               "keep every token or a value such as 0.9"),
])
def test_bad_sampling_arguments(temperature: float, top_p: float, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        sample(np.zeros(3), temperature=temperature, top_p=top_p, rng=np.random.default_rng(0))
    assert str(err.value) == message


# ------------------------------------------------------------------------------------------- generation


def test_stops_at_end_of_turn() -> None:
    g, session, pieces = run([*TOK.encode("ok!"), TOK.eos_id, *TOK.encode("never")])
    p = len(PROMPT_IDS)
    assert g.text == "ok!" and "".join(pieces) == "ok!"
    assert g.token_ids == (*TOK.encode("ok!"), TOK.eos_id) and g.stop == STOP_END_OF_TURN
    assert g.prompt_ids == tuple(PROMPT_IDS)
    # The prompt at 0..P-1, then every new token but the last one at P, P+1, ...
    assert session.calls == [*zip(PROMPT_IDS, range(p)), *zip(TOK.encode("ok!"), range(p, p + 3))]
    assert g.prefill_cycles == sum(BASE_CYCLES + i for i in range(p))
    assert g.decode_cycles == tuple(BASE_CYCLES + i for i in range(p, p + 3))


def test_endoftext_also_stops() -> None:
    assert stop_ids(TOK) == {0, 2}
    g, _, _ = run([*TOK.encode("a"), 0])
    assert g.text == "a" and g.stop == STOP_END_OF_TURN


def test_stops_at_max_tokens() -> None:
    g, session, _ = run(TOK.encode("abcdef"), max_tokens=3)
    assert g.text == "abc" and g.stop == STOP_MAX_TOKENS
    assert len(g.token_ids) == 3 and len(g.decode_cycles) == 2
    assert len(session.calls) == len(PROMPT_IDS) + 2


def test_utf8_characters_split_across_tokens_stream_whole() -> None:
    text = "é😀 日本a"
    g, _, pieces = run([*TOK.encode(text), TOK.eos_id])
    assert pieces == ["é", "😀", " ", "日", "本", "a"]
    assert g.text == text


def test_an_incomplete_character_at_the_end_is_flushed() -> None:
    g, _, pieces = run(TOK.encode("a😀")[:3], max_tokens=3)
    assert pieces == ["a", "\ufffd"] and g.text == "a\ufffd"


def test_text_stream_skips_special_tokens() -> None:
    stream = TextStream(TOK)
    assert [stream.push(i) for i in (*TOK.encode("x"), 1, *TOK.encode("y"))] == ["x", "", "y"]
    assert stream.finish() == ""


def test_raw_prompt_without_chat_template() -> None:
    session = FakeSession(FakeCompiled(), [TOK.eos_id], len(TOK.encode("abc")))
    g = generate(session, TOK, "abc", max_tokens=4, chat=False)
    assert g.prompt_ids == tuple(TOK.encode("abc")) and g.token_ids == (TOK.eos_id,)


def test_latency_figures() -> None:
    g, _, _ = run(TOK.encode("abcd"), max_tokens=3)
    p = len(PROMPT_IDS)
    assert g.cycles_per_token == BASE_CYCLES + p + 0.5  # (P + P+1) / 2 above the base
    assert g.ttft_seconds == g.prefill_cycles / CHIP.clock_hz
    assert g.token_latency_seconds == g.cycles_per_token / CHIP.clock_hz
    assert g.tokens_per_second == pytest.approx(1 / g.token_latency_seconds)


def test_one_token_reports_the_decode_program_s_cycles() -> None:
    g, _, _ = run(TOK.encode("abcd"), max_tokens=1)
    assert g.decode_cycles == ()
    assert g.cycles_per_token == g.step_cycles == FakeCompiled.cycles_per_step  # not the prompt's mean step
    assert g.prefill == PREFILL_STEPS and g.prefill_cycles == sum(BASE_CYCLES + i for i in range(len(PROMPT_IDS)))


def test_even_cycles_stay_integers() -> None:
    g = Generation(text="", token_ids=(5, 6, 7), prompt_ids=(1,), prefill_cycles=10, prefill=PREFILL_PROGRAM,
                   decode_cycles=(900, 900), step_cycles=900, clock_hz=900_000_000, wall_seconds=0.0,
                   stop=STOP_MAX_TOKENS)
    assert g.cycles_per_token == 900 and isinstance(g.cycles_per_token, int)
    assert g.tokens_per_second == 1_000_000.0


def test_context_check() -> None:
    p = len(PROMPT_IDS)
    with pytest.raises(ConfigError) as err:
        run(TOK.encode("abcdef"), max_tokens=5, context=p + 4)
    assert p == 20  # "hi" in the chat template: 25 positions needed, an odd number, so 26 is suggested
    assert str(err.value) == (
        "the prompt (20 tokens) and --max-tokens 5 need 25 positions, but the model was compiled for a "
        "context of 24; pass --context 26 or more (an even number), or fewer --max-tokens"
    )
    g, _, _ = run(TOK.encode("abcdef"), max_tokens=5, context=p + 5)
    assert len(g.token_ids) == 5


def test_max_tokens_must_be_positive() -> None:
    with pytest.raises(ConfigError) as err:
        run([TOK.eos_id], max_tokens=0)
    assert str(err.value) == "--max-tokens 0: generate at least 1 token"


def test_default_context_rounds_up_to_32() -> None:
    assert [default_context(p, n) for p, n in ((36, 32), (36, 28), (1, 63), (1, 64), (0, 1))] == [96, 64, 64, 96, 32]


def test_summary_is_plain_json() -> None:
    g, _, _ = run([*TOK.encode("ok"), TOK.eos_id])
    s = summary(g, FakeCompiled(), FakeFidelity.FAST)
    assert json.loads(json.dumps(s)) == s
    expected = {
        "text": str, "token_ids": list, "prompt_tokens": int, "generated_tokens": int, "stop": str, "chip": str,
        "chips": int, "chip_reports": list, "layers": int, "dtype": str, "numerics": str, "fidelity": str,
        "context": int, "clock_hz": int, "prefill": str, "prefill_cycles": int, "cycles_per_token": (int, float),
        "ttft_seconds": float, "token_latency_seconds": float, "tokens_per_second": float, "wall_seconds": float,
    }
    assert set(s) == set(expected)
    for key, kind in expected.items():
        assert isinstance(s[key], kind), key
    assert s["text"] == "ok" and s["token_ids"] == [*TOK.encode("ok"), TOK.eos_id]
    assert (s["chips"], s["dtype"], s["fidelity"], s["context"]) == (2, "fp16", "fast", 64)
    assert s["numerics"] == "fp16 weights and matmul inputs, fp32 accumulation; fp32 on the VXM"
    assert s["chip_reports"][1] == {"index": 1, "layer_start": 15, "layer_stop": 30, "sram_used_bytes": 190_000_000,
                                    "sram_bytes": CHIP.sram_bytes, "what": "blk.15-29, output"}


# ------------------------------------------------------------------------------- the model's tokenizer


def test_real_tokenizer_stops_and_streams() -> None:
    pytest.importorskip("tokenizers")
    tok = refs.our_tokenizer()
    assert stop_ids(tok) == {tok.eos_id, tok.tokens.index("<|endoftext|>")}
    assert tok.tokens[tok.eos_id] == "<|im_end|>"
    reply = tok.encode("héllo 😀 日本")
    ids = encode_prompt(tok, PROMPT)
    session = FakeSession(FakeCompiled(), [*reply, tok.eos_id], len(ids), vocab=tok.vocab_size)
    pieces: list[str] = []
    g = generate(session, tok, PROMPT, max_tokens=32, on_text=pieces.append)
    assert g.text == "héllo 😀 日本" and "".join(pieces) == g.text
    assert all("\ufffd" not in piece for piece in pieces)
    assert g.prompt_ids == tuple(tok.encode_chat([{"role": "user", "content": PROMPT}]))


# -------------------------------------------------------------------------------------------------- CLI

runner = CliRunner()
REPLY = "An LPU is a chip."


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Fake `openlpu.compiler.pipeline` and `openlpu.runtime.session` modules (whatever exists on disk) and the
    model's tokenizer loaded once; returns what the command passed to them."""
    pytest.importorskip("tokenizers")
    tok = refs.our_tokenizer()
    seen: dict[str, Any] = {}

    def from_gguf(path: Any) -> Any:
        seen["tokenizer_path"] = path
        return tok

    def compile_model(model: Any, chip: Chip, *, dtype: str = "fp16", context: int, n_layers: int | None = None,
                      prompt: int | None = None, programs: bool = True):
        seen["compile"] = {"model": model, "chip": chip.name, "dtype": dtype, "context": context,
                           "n_layers": n_layers, "prompt": prompt}
        return FakeCompiled(chip=chip, dtype=dtype, context=context, n_layers=n_layers or 30, prefill_prompt=prompt)

    def open_session(compiled: Any, fidelity: FakeFidelity) -> FakeSession:
        seen["fidelity"] = fidelity
        prompt_len = len(encode_prompt(tok, seen.get("prompt", cli.DEFAULT_PROMPT)))
        return FakeSession(compiled, [*tok.encode(REPLY), tok.eos_id], prompt_len, vocab=tok.vocab_size)

    pipeline = types.ModuleType("openlpu.compiler.pipeline")
    pipeline.compile_model = compile_model  # type: ignore[attr-defined]
    session = types.ModuleType("openlpu.runtime.session")
    session.Fidelity, session.open_session = FakeFidelity, open_session  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "openlpu.compiler.pipeline", pipeline)
    monkeypatch.setitem(sys.modules, "openlpu.runtime.session", session)
    monkeypatch.setattr(cli.Tokenizer, "from_gguf", from_gguf)
    return seen


def invoke(*args: str):
    return runner.invoke(cli.app, ["generate", *args])


def test_cli_streams_then_tabulates(backend: dict[str, Any]) -> None:
    result = invoke()
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(REPLY + "\n")
    for text in ("2 × groqchip1", "blk.0-14", "blk.15-29, output", "cycles per token", "time to first token",
                 "per-token latency", "tokens/s per user", "fp16 weights and matmul inputs",
                 "fast", "wall time", "900 MHz"):
        assert text in result.stdout, text
    assert backend["compile"] == {"model": refs.model_path(), "chip": "groqchip1", "dtype": "fp16",
                                  "context": 96, "n_layers": None, "prompt": 36}  # 36 + 32 new tokens -> 96
    assert backend["fidelity"] is FakeFidelity.FAST and backend["tokenizer_path"] == refs.model_path()


def test_cli_prefill_program_or_steps(backend: dict[str, Any]) -> None:
    result = invoke("--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert backend["compile"]["prompt"] == s["prompt_tokens"] == 36
    assert (s["prefill"], s["prefill_cycles"]) == (PREFILL_PROGRAM, 7 * BASE_CYCLES)
    result = invoke("--json", "--prefill", "steps")
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert backend["compile"]["prompt"] is None  # no prefill program compiled
    assert (s["prefill"], s["prefill_cycles"]) == (PREFILL_STEPS, sum(BASE_CYCLES + i for i in range(36)))
    assert s["cycles_per_token"] == BASE_CYCLES + 36 + (s["generated_tokens"] - 2) / 2  # the decode steps' mean
    table_text = lambda out: re.sub(r"[\s│]+", " ", out)  # the table's cells, unwrapped
    assert "36 prompt tokens at 900 MHz, token by token through the decode program)" in table_text(
        invoke("--prefill", "steps").stdout)
    assert "36 prompt tokens at 900 MHz, the prefill program)" in table_text(invoke().stdout)


def test_cli_json_is_one_object(backend: dict[str, Any]) -> None:
    backend["prompt"] = "Hello"
    result = invoke("Hello", "--json", "--max-tokens", "100", "--dtype", "int8", "--layers", "2",
                    "--fidelity", "cycle", "--temperature", "0.5", "--top-p", "0.9", "--seed", "3")
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["text"] == REPLY and s["prompt"] == "Hello" and s["model"] == str(refs.model_path())
    assert (s["dtype"], s["fidelity"], s["layers"], s["stop"]) == ("int8", "cycle", 2, STOP_END_OF_TURN)
    assert s["context"] == backend["compile"]["context"] == default_context(s["prompt_tokens"], 100)


def test_cli_context_too_small(backend: dict[str, Any]) -> None:
    result = invoke("--context", "40")
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "error: the prompt (36 tokens) and --max-tokens 32 need 68 positions, but the model was compiled for a "
        "context of 40; pass --context 68 or more (an even number), or fewer --max-tokens\n"
    )
    assert "compile" not in backend


@pytest.mark.parametrize(("args", "message"), [
    (("--fidelity", "exact"), "--fidelity 'exact': choose one of fast, cycle"),
    (("--prefill", "bucket"), "--prefill 'bucket': choose one of program, steps"),
    (("--top-p", "0"), "top-p 0.0 is out of range: it is the probability mass kept, > 0 and <= 1; pass --top-p 1 "
                       "to keep every token or a value such as 0.9"),
])
def test_cli_bad_options(backend: dict[str, Any], args: tuple[str, ...], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {message}\n" and result.stdout == ""
