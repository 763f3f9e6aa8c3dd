"""The text assembly form of a `Program`: `parse_program(print_program(p)) == p` for every valid program.

Line-oriented; `;` starts a comment; blank lines are ignored; tokens are separated by whitespace:

    .program NAME
    .chip NAME                                                      ; optional
    .tensor NAME DTYPE ROWSxCOLS @ HEMI:FIRST_SLICE addr=A [interleave=G] [= INIT]
    .check TARGET == EXPR           |   .check TARGET ~= EXPR [rtol=R] [atol=A]
    .queue QUEUE                                                    ; opens a section
    [label:] opcode key=value ...                                   ; a label may also stand alone

`.program` comes first and the declarations (`.chip`, `.tensor`, `.check`) come before the first `.queue`.
Operand values are parsed and printed per field by the `FIELDS` table. Every syntax error is an
`AssemblyError` naming the source, line and column of the offending token and saying what was expected.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from openlpu.errors import AssemblyError, ProgramError, UserError
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa.instruction import Instruction
from openlpu.isa.opcodes import OPERANDS, Family, Opcode
from openlpu.isa.program import Check, CheckMode, Init, InitKind, Placement, Program, Tensor, make_program
from openlpu.isa.types import Direction, DType, QueueId, StreamRef

_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[-+]?[0-9]+)?|inf|nan)")
_STREAM = re.compile(r"([EW])([0-9]+)")


def _parse_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise ValueError("expected a decimal integer")
    return int(text)


def _parse_number(text: str) -> int | float:
    """An int when the text is an integer literal, else a float (so `2` and `2.0` stay distinct)."""
    if _INT.fullmatch(text):
        return int(text)
    if not _FLOAT.fullmatch(text):
        raise ValueError("expected a number such as 2, -0.5 or 1e-06")
    return float(text)


def _format_number(value: float | int) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _parse_stream(text: str) -> StreamRef:
    m = _STREAM.fullmatch(text)
    if not m:
        raise ValueError("expected a stream such as E3 or W12")
    return StreamRef(Direction(m[1]), int(m[2]))


def _parse_dtype(text: str) -> DType:
    try:
        return DType(text)
    except ValueError:
        raise ValueError("expected one of " + ", ".join(d.value for d in DType)) from None


def _parse_bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError("expected true or false")
    return text == "true"


def _parse_map16(text: str) -> tuple[int, ...]:
    if not (text.startswith("[") and text.endswith("]")):
        raise ValueError("expected a bracketed list such as [0,1,-1]")
    items = [item.strip() for item in text[1:-1].split(",")]
    if items == [""]:
        return ()
    return tuple(_parse_int(item) for item in items)


_DTYPE_IO = (_parse_dtype, lambda d: d.value)

#: Operand field -> (parse text to value, print value to text). A test checks it covers every operand field.
FIELDS: dict[str, tuple[Callable[[str], Any], Callable[[Any], str]]] = {
    **{name: (_parse_int, str)
       for name in ("n", "d", "superlanes", "addr", "stride", "plane", "row", "slot", "lanes", "rotate")},
    **{name: (_parse_stream, str) for name in ("map", "a", "b", "c", "out")},
    "imm": (_parse_number, _format_number),
    "dtype": _DTYPE_IO,
    "to": _DTYPE_IO,
    "accumulate": (_parse_bool, lambda v: "true" if v else "false"),
    "map16": (_parse_map16, lambda v: "[" + ",".join(str(i) for i in v) + "]"),
}

# -------------------------------------------------------------------------------------------------- printing

#: Initializer kind -> (usage, least and most arguments; None = any number).
_INIT_FORMS: dict[InitKind, tuple[str, int, int | None]] = {
    InitKind.ZEROS: ("zeros", 0, 0), InitKind.CONST: ("const(V)", 1, 1),
    InitKind.RANDOM: ("random(SEED, LOW, HIGH)", 3, 3), InitKind.RANGE: ("range(START, STEP)", 2, 2),
    InitKind.VALUES: ("values(V0, V1, ...)", 1, None),
}
_CHECK_KEYWORD = re.compile(r"(rtol|atol)=")


def print_program(p: Program) -> str:
    """The assembly text of `p`: declarations first, then one section per queue in the program's order."""
    for name in (p.name, p.chip or "chip"):
        _require(_TOKEN.fullmatch(name) is not None and ";" not in name, f"name {name!r} is not one token")
    lines = [f".program {p.name}"] + ([f".chip {p.chip}"] if p.chip is not None else [])
    lines += [_format_tensor(t) for t in p.tensors] + [_format_check(c) for c in p.checks]
    for queue, instrs in p.queues:
        lines += ["", f".queue {queue}"]
        for ins in instrs:
            if ins.label is not None:
                _require(ins.label.isidentifier(), f"label {ins.label!r} is not an identifier")
                lines.append(f"{ins.label}:")
            lines.append("    " + format_instruction(ins))
    return "\n".join(lines) + "\n"


def format_instruction(ins: Instruction) -> str:
    """One instruction as `opcode key=value ...` (operands in canonical order, label not included)."""
    return " ".join([ins.op.value] + [f"{name}={FIELDS[name][1](value)}" for name, value in ins.operands()])


def _format_tensor(t: Tensor) -> str:
    _require(t.name.isidentifier(), f"tensor name {t.name!r} is not an identifier")
    p = t.placement
    text = f".tensor {t.name} {t.dtype.value} {t.rows}x{t.cols} @ {p.hemisphere.value}:{p.first_slice} " \
           f"addr={p.address}"
    text += f" interleave={p.interleave}" if p.interleave != 1 else ""
    return text + (f" = {_format_init(t.init)}" if t.init is not None else "")


def _format_init(init: Init) -> str:
    if not init.args:
        return init.kind.value
    return f"{init.kind.value}({', '.join(_format_number(a) for a in init.args)})"


def _format_check(c: Check) -> str:
    _require(c.target.isidentifier(), f"check target {c.target!r} is not an identifier")
    ok = c.expr == c.expr.strip() != "" and not any(ch in c.expr for ch in ";\n") \
        and not any(_CHECK_KEYWORD.match(word) for word in c.expr.split())
    _require(ok, f"check expression {c.expr!r} is empty, padded, or has ';', a newline, rtol= or atol=")
    _require(c.mode is CheckMode.CLOSE or c.rtol == c.atol == 0, f"'==' check of {c.target!r} has rtol/atol")
    text = f".check {c.target} {c.mode.value} {c.expr}"
    return text + (f" rtol={float(c.rtol)!r} atol={float(c.atol)!r}" if c.mode is CheckMode.CLOSE else "")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ProgramError(f"cannot print program: {message}")

# --------------------------------------------------------------------------------------------------- parsing

_TOKEN = re.compile(r"\S+")
_OPERAND_TOKEN = re.compile(r"(?:[^\s\[]|\[[^\]]*\]?)+")  # `map16=[0, 1]` is one token
_SHAPE = re.compile(r"([0-9]+)x([0-9]+)")
_WHERE = re.compile(r"([we]):([0-9]+)")
_INIT = re.compile(r"(\w+)(?:\((.*)\))?")
_TENSOR_USAGE = "'.tensor NAME DTYPE ROWSxCOLS @ HEMI:FIRST_SLICE addr=A [interleave=G] [= INIT]'"
_EXAMPLE_QUEUE = {Family.ICU: "mem.w.0", Family.MEM: "mem.w.0", Family.VXM: "vxm.0", Family.MXM: "mxm.w.0",
                  Family.C2C: "c2c.w.0",
                  Family.SXM: "sxm.w.0"}


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    column: int  # 1-based


@dataclass(frozen=True, slots=True)
class _Line:
    source: str
    number: int
    text: str  # without its comment

    def tokens(self, pattern: re.Pattern[str] = _TOKEN) -> list[_Token]:
        return [_Token(m[0], m.start() + 1) for m in pattern.finditer(self.text)]

    def rest(self, start: _Token, end: _Token | None = None) -> str:
        """The raw text from `start` up to (not including) `end`, stripped."""
        return self.text[start.column - 1:end.column - 1 if end else None].strip()

    def error(self, message: str, column: int = 1) -> AssemblyError:
        return AssemblyError(message, source=self.source, line=self.number, column=column)

    def end_column(self) -> int:
        return len(self.text.rstrip()) + 1


@dataclass
class _Parser:
    source: str
    name: str | None = None
    chip: str | None = None
    tensors: dict[str, tuple[Tensor, int]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    queues: dict[QueueId, tuple[list[Instruction], int]] = field(default_factory=dict)
    queue: QueueId | None = None
    label: tuple[str, _Line, _Token] | None = None  # a label on its own line, waiting for its instruction

    def line(self, line: _Line) -> None:
        tokens = line.tokens()
        if not tokens:
            return
        head = tokens[0]
        if self.name is None and head.text != ".program":
            raise line.error("missing '.program NAME'; it must be the first line", head.column)
        if head.text.startswith("."):
            self.directive(line, tokens)
        else:
            self.instruction(line)

    def directive(self, line: _Line, tokens: list[_Token]) -> None:
        head = tokens[0]
        handler = _DIRECTIVES.get(head.text)
        if handler is None:
            hint = _did_you_mean(head.text, _DIRECTIVES) or f"; expected one of {', '.join(_DIRECTIVES)}"
            raise line.error(f"unknown directive {head.text!r}{hint}", head.column)
        if head.text != ".queue" and self.queues:
            raise line.error(f"{head.text} after a .queue section; declarations go before the first .queue",
                             head.column)
        handler(self, line, tokens)

    def program(self, line: _Line, tokens: list[_Token]) -> None:
        if self.name is not None:
            raise line.error("duplicate .program; a file holds one program", tokens[0].column)
        self.name = _single_argument(line, tokens, "NAME")

    def chip_(self, line: _Line, tokens: list[_Token]) -> None:
        if self.chip is not None:
            raise line.error(f"duplicate .chip (already {self.chip!r})", tokens[0].column)
        self.chip = _single_argument(line, tokens, "CHIP")

    def tensor(self, line: _Line, tokens: list[_Token]) -> None:
        t = _parse_tensor(line, tokens)
        if t.name in self.tensors:
            first = self.tensors[t.name][1]
            raise line.error(f"duplicate tensor {t.name!r} (first declared on line {first})",
                             tokens[1].column)
        self.tensors[t.name] = (t, line.number)

    def queue_(self, line: _Line, tokens: list[_Token]) -> None:
        self.flush_label()
        text = _single_argument(line, tokens, "QUEUE")
        try:
            queue = QueueId.parse(text)
        except ValueError as e:
            raise line.error(str(e), tokens[1].column) from None
        if queue in self.queues:
            raise line.error(f"duplicate queue {text!r} (first opened on line {self.queues[queue][1]}); "
                             "put all its instructions in one section", tokens[1].column)
        self.queues[queue] = ([], line.number)
        self.queue = queue

    def instruction(self, line: _Line) -> None:
        tokens = line.tokens(_OPERAND_TOKEN)
        if tokens[0].text.endswith(":"):
            self.take_label(line, tokens.pop(0))
            if not tokens:
                return
        label = self.label[0] if self.label else None
        ins = _parse_instruction(line, tokens, label)
        if self.queue is None:
            raise line.error(f"instruction before any .queue section; add "
                             f"'.queue {_EXAMPLE_QUEUE[ins.op.family]}' above it", tokens[0].column)
        self.label = None
        self.queues[self.queue][0].append(ins)

    def take_label(self, line: _Line, token: _Token) -> None:
        name = token.text[:-1]
        if not name.isidentifier():
            raise line.error(f"bad label {token.text!r}; expected an identifier and ':'", token.column)
        if self.label is not None:
            raise line.error(f"label {name!r} follows label {self.label[0]!r} with no instruction between; "
                             "an instruction has at most one label", token.column)
        self.label = (name, line, token)

    def flush_label(self) -> None:
        if self.label is not None:
            name, line, token = self.label
            where = f"in queue {self.queue}" if self.queue else "before any .queue section"
            raise line.error(f"label {name!r} is not followed by an instruction {where}", token.column)

    def finish(self) -> Program:
        self.flush_label()
        if self.name is None:
            raise AssemblyError("missing '.program NAME'; the text holds no program", source=self.source,
                                line=1, column=1)
        queues = {q: instrs for q, (instrs, _) in self.queues.items()}
        return make_program(self.name, queues, [t for t, _ in self.tensors.values()], self.checks, self.chip)


_DIRECTIVES: dict[str, Callable[[_Parser, _Line, list[_Token]], None]] = {
    ".program": _Parser.program, ".chip": _Parser.chip_, ".tensor": _Parser.tensor,
    ".check": lambda self, line, tokens: self.checks.append(_parse_check(line, tokens)),
    ".queue": _Parser.queue_,
}


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _single_argument(line: _Line, tokens: list[_Token], what: str) -> str:
    if len(tokens) < 2:
        raise line.error(f"expected '{tokens[0].text} {what}'", line.end_column())
    if len(tokens) > 2:
        raise line.error(f"unexpected {tokens[2].text!r} after {tokens[0].text} {what}", tokens[2].column)
    return tokens[1].text


_T = TypeVar("_T")


def _value(line: _Line, column: int, text: str, parse: Callable[[str], _T], what: str) -> _T:
    """`parse(text)`, turning its ValueError into an AssemblyError at `column`, where the value starts."""
    try:
        return parse(text)
    except ValueError as e:
        raise line.error(f"bad value {text!r} for {what}: {e}", column) from None


def _parse_instruction(line: _Line, tokens: list[_Token], label: str | None) -> Instruction:
    head = tokens[0]
    try:
        op = Opcode(head.text)
    except ValueError:
        hint = _did_you_mean(head.text, [o.value for o in Opcode]) or "; see OPERANDS in openlpu.isa.opcodes"
        raise line.error(f"unknown opcode {head.text!r}{hint}", head.column) from None
    allowed = OPERANDS[op][0] + OPERANDS[op][1]
    values: dict[str, object] = {}
    for token in tokens[1:]:
        key, eq, text = token.text.partition("=")
        if not eq:
            raise line.error(f"expected KEY=VALUE operand, got {token.text!r}", token.column)
        if key not in allowed:
            takes = ", ".join(allowed) if allowed else "no operands"
            raise line.error(f"unknown operand {key!r} for {op.value}; {op.value} takes {takes}",
                             token.column)
        if key in values:
            raise line.error(f"duplicate operand {key!r}", token.column)
        values[key] = _value(line, token.column + len(key) + 1, text, FIELDS[key][0], key)
    try:
        return Instruction(op=op, label=label, **values)
    except ProgramError as e:
        raise line.error(str(e), head.column) from None


def _parse_tensor(line: _Line, tokens: list[_Token]) -> Tensor:
    equals = next((i for i, t in enumerate(tokens) if t.text == "="), len(tokens))
    words = tokens[1:equals]
    if len(words) < 6:
        raise line.error(f"expected {_TENSOR_USAGE}",
                         tokens[equals].column if equals < len(tokens) else line.end_column())
    name, dtype, shape, at, where, addr = words[:6]
    if not name.text.isidentifier():
        raise line.error(f"bad tensor name {name.text!r}; expected an identifier", name.column)
    dtype_ = _value(line, dtype.column, dtype.text, _parse_dtype, "dtype")
    shape_m = _expect(line, shape, _SHAPE, "a shape ROWSxCOLS such as 8x320")
    _expect(line, at, re.compile("@"), "'@' before the placement")
    where_m = _expect(line, where, _WHERE, "a placement HEMI:FIRST_SLICE such as w:10")
    interleave = _keyword(line, words[6], "interleave") if len(words) > 6 else 1
    if len(words) > 7:
        raise line.error(f"unexpected {words[7].text!r}; expected '= INIT' or end of line", words[7].column)
    placement = Placement(hemisphere=Hemisphere(where_m[1]), first_slice=int(where_m[2]),
                          address=_keyword(line, addr, "addr"), interleave=interleave)
    if equals + 1 == len(tokens):
        raise line.error("expected INIT after '='", line.end_column())
    init = _parse_init(line, tokens[equals + 1]) if equals + 1 < len(tokens) else None
    rows, cols = int(shape_m[1]), int(shape_m[2])
    return Tensor(name=name.text, dtype=dtype_, rows=rows, cols=cols, placement=placement, init=init)


def _expect(line: _Line, token: _Token, pattern: re.Pattern[str], what: str) -> re.Match[str]:
    m = pattern.fullmatch(token.text)
    if m is None:
        raise line.error(f"expected {what}, got {token.text!r}", token.column)
    return m


def _keyword(line: _Line, token: _Token, key: str) -> int:
    if not token.text.startswith(f"{key}="):
        raise line.error(f"expected '{key}=N', got {token.text!r}", token.column)
    value = _value(line, token.column + len(key) + 1, token.text[len(key) + 1:], _parse_int, key)
    least = 1 if key == "interleave" else 0
    if value < least:
        raise line.error(f"{key} must be at least {least}, got {value}", token.column + len(key) + 1)
    return value


def _parse_init(line: _Line, start: _Token) -> Init:
    text = line.rest(start)
    m = _INIT.fullmatch(text)
    kind = next((k for k in InitKind if m and k.value == m[1]), None)
    if m is None or kind is None:
        forms = ", ".join(usage for usage, _, _ in _INIT_FORMS.values())
        raise line.error(f"bad initializer {text!r}; expected one of {forms}", start.column)
    raw = m[2].split(",") if m[2] and m[2].strip() else []
    args = tuple(_value(line, start.column, a.strip(), _parse_number, f"{kind.value} argument") for a in raw)
    usage, low, high = _INIT_FORMS[kind]
    if len(args) < low or (high is not None and len(args) > high):
        raise line.error(f"{kind.value} takes {usage}, got {len(args)} argument(s)", start.column)
    return Init(kind=kind, args=args)


def _parse_check(line: _Line, tokens: list[_Token]) -> Check:
    if len(tokens) < 4:
        raise line.error("expected '.check TARGET == EXPR' or '.check TARGET ~= EXPR rtol=R atol=A'",
                         line.end_column())
    target, mode_token = tokens[1], tokens[2]
    if not target.text.isidentifier():
        raise line.error(f"bad check target {target.text!r}; expected a tensor name", target.column)
    modes = {m.value: m for m in CheckMode}
    if mode_token.text not in modes:
        raise line.error(f"expected '==' or '~=' after the target, got {mode_token.text!r}",
                         mode_token.column)
    mode = modes[mode_token.text]
    first_kw = next((i for i in range(3, len(tokens)) if _CHECK_KEYWORD.match(tokens[i].text)), len(tokens))
    if first_kw == 3:
        raise line.error(f"expected an expression after {mode.value!r}", tokens[3].column)
    tolerances: dict[str, float] = {}
    for token in tokens[first_kw:]:
        key, _, text = token.text.partition("=")
        if not _CHECK_KEYWORD.match(token.text) or key in tolerances:
            raise line.error(f"unexpected {token.text!r}; only rtol= and atol= (once each) may follow the "
                             "expression", token.column)
        if mode is CheckMode.EXACT:
            raise line.error(f"{key}= only applies to '~=' checks; '==' is exact", token.column)
        tolerances[key] = float(_value(line, token.column + len(key) + 1, text, _parse_number, key))
    end = tokens[first_kw] if first_kw < len(tokens) else None
    return Check(target=target.text, mode=mode, expr=line.rest(tokens[3], end), **tolerances)


def parse_program(text: str, source: str = "<string>") -> Program:
    """Parse assembly text; raises AssemblyError at `source:line:column` for any syntax error."""
    parser = _Parser(source)
    for number, raw in enumerate(text.splitlines(), start=1):
        parser.line(_Line(source, number, raw.split(";", 1)[0]))
    return parser.finish()


def load_program(path: str | Path) -> Program:
    """Read and parse an assembly file; errors name the path."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read assembly file {str(path)!r}: {e.strerror or e}") from None
    return parse_program(text, source=str(path))
