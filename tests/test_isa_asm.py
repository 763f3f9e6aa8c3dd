"""The assembly text form: round trips (hand-written and random programs) and whole error messages."""

from __future__ import annotations

import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openlpu.errors import AssemblyError, ProgramError, UserError
from openlpu.hardware.geometry import Hemisphere
from openlpu.isa import (
    Check,
    CheckMode,
    Direction,
    DType,
    Init,
    InitKind,
    Instruction,
    Opcode,
    Placement,
    Program,
    QueueId,
    StreamRef,
    Tensor,
    Unit,
    load_program,
    make_program,
    parse_program,
    print_program,
)
from openlpu.isa.asm import FIELDS
from openlpu.isa.opcodes import FAMILY, FAMILY_UNIT, OPERANDS, Family


def E(i: int) -> StreamRef:
    return StreamRef(Direction.E, i)


def W(i: int) -> StreamRef:
    return StreamRef(Direction.W, i)


def roundtrip(p: Program) -> None:
    text = print_program(p)
    assert parse_program(text) == p
    assert print_program(parse_program(text)) == text


# ------------------------------------------------------------------------------------------ hand-written

VADD = """\
; a vector add
.program vadd
.chip groqchip1                                   ; optional
.tensor a fp32 8x320 @ w:10 addr=0 = random(1, -1.0, 1.0)
.tensor b fp32 8x320 @ w:14 addr=0 interleave=1 = const(0.5)
.tensor c fp32 8x320 @ e:0 addr=16
.check c == a + b
.check c ~= a + b rtol=1e-06 atol=0.0

.queue vxm.0
    nop n=12
    add dtype=fp32 a=E0 b=E4 out=E8
    repeat n=7 d=1
    mul dtype=fp32 a=E8 imm=0.5 out=W0
    distribute dtype=int8 a=E0 out=E1 map16=[0, 1, 2, -1, 4,5,6,7,8,9,10,11,12,13,14,15]
    abc plane=0 dtype=fp16 a=W0 slot=0 accumulate=true
.queue mem.w.10
start:
    read addr=0 out=E0 stride=1
again: repeat n=7 d=1
"""

VADD_PRINTED = """\
.program vadd
.chip groqchip1
.tensor a fp32 8x320 @ w:10 addr=0 = random(1, -1.0, 1.0)
.tensor b fp32 8x320 @ w:14 addr=0 = const(0.5)
.tensor c fp32 8x320 @ e:0 addr=16
.check c == a + b
.check c ~= a + b rtol=1e-06 atol=0.0

.queue mem.w.10
start:
    read addr=0 stride=1 out=E0
again:
    repeat n=7 d=1

.queue vxm.0
    nop n=12
    add a=E0 b=E4 out=E8 dtype=fp32
    repeat n=7 d=1
    mul a=E8 out=W0 imm=0.5 dtype=fp32
    distribute a=E0 out=E1 dtype=int8 map16=[0,1,2,-1,4,5,6,7,8,9,10,11,12,13,14,15]
    abc a=W0 dtype=fp16 plane=0 slot=0 accumulate=true
"""


def test_parse_example() -> None:
    p = parse_program(VADD)
    assert p.name == "vadd" and p.chip == "groqchip1"
    assert [str(q) for q, _ in p.queues] == ["mem.w.10", "vxm.0"]  # canonical order, not file order
    assert p.tensor("a") == Tensor(name="a", dtype=DType.FP32, rows=8, cols=320,
                                   placement=Placement(hemisphere=Hemisphere.W, first_slice=10, address=0),
                                   init=Init(kind=InitKind.RANDOM, args=(1, -1.0, 1.0)))
    assert p.checks[1] == Check(target="c", mode=CheckMode.CLOSE, expr="a + b", rtol=1e-6, atol=0.0)
    mem = p.stream(QueueId.parse("mem.w.10"))
    assert mem[0] == Instruction(op=Opcode.READ, addr=0, out=E(0), stride=1, label="start")
    assert mem[1].label == "again"
    assert p.stream(QueueId.parse("vxm.0"))[3].imm == 0.5
    assert print_program(p) == VADD_PRINTED
    roundtrip(p)


def test_int_and_float_immediates_stay_distinct() -> None:
    text = ".program p\n\n.queue vxm.0\n" \
           "    add a=E0 out=E1 imm=2 dtype=int8\n    add a=E0 out=E1 imm=2.0 dtype=fp32\n"
    p = parse_program(text)
    imms = [ins.imm for ins in p.stream(QueueId.parse("vxm.0"))]
    assert [type(i) for i in imms] == [int, float]
    assert print_program(p) == text


EXAMPLE_VALUE: dict[str, object] = {
    "n": 3, "d": 2, "superlanes": 20, "addr": 4095, "stride": -1, "map": E(1), "a": E(0), "b": W(4),
    "c": E(8),
    "out": W(31), "imm": -1.5e-07, "dtype": DType.FP16, "to": DType.INT8, "plane": 1, "row": 7, "slot": 2,
    "accumulate": False, "lanes": -3, "rotate": 5, "map16": (0, -1, *range(2, 16)),
}


def one_of_each_opcode() -> list[Instruction]:
    out = []
    for op in Opcode:
        required, optional = OPERANDS[op]
        names = required + tuple(f for f in optional if f != "imm")
        out.append(Instruction(op=op, **{f: EXAMPLE_VALUE[f] for f in names}))
    return out


def test_every_operand_field_has_a_parser_and_printer() -> None:
    assert set(FIELDS) == {f.name for f in fields(Instruction)} - {"op", "label"}


def test_roundtrip_every_opcode() -> None:
    instrs = one_of_each_opcode()
    p = make_program("all", {QueueId.parse("vxm.0"): instrs})
    roundtrip(p)
    assert print_program(p).splitlines()[-4:] == [
        "    rotate n=3 a=E0 out=W31",
        "    transpose a=E0 out=W31",
        "    send a=E0",
        "    receive out=W31",
    ]


def test_roundtrip_tensor_forms() -> None:
    def tensor(name: str, init: Init | None, interleave: int = 1) -> Tensor:
        placement = Placement(hemisphere=Hemisphere.E, first_slice=3, address=100, interleave=interleave)
        return Tensor(name=name, dtype=DType.INT16, rows=3, cols=17, placement=placement, init=init)

    tensors = [tensor("z", Init(kind=InitKind.ZEROS)), tensor("k", Init(kind=InitKind.CONST, args=(7,)), 4),
               tensor("r", Init(kind=InitKind.RANGE, args=(-2, 0.25))),
               tensor("v", Init(kind=InitKind.VALUES, args=(1, 2.5, float("inf"), -0.0))),
               tensor("none", None)]
    p = make_program("t", {}, tensors)
    assert print_program(p).splitlines()[1:3] == [
        ".tensor z int16 3x17 @ e:3 addr=100 = zeros",
        ".tensor k int16 3x17 @ e:3 addr=100 interleave=4 = const(7)",
    ]
    roundtrip(p)


def test_load_program(tmp_path: Path) -> None:
    path = tmp_path / "vadd.s"
    path.write_text(VADD)
    assert load_program(path) == parse_program(VADD)
    path.write_text(".program p\n.queue vxm.0\n  ad a=E0\n")
    with pytest.raises(AssemblyError) as e:
        load_program(path)
    assert str(e.value) == f"{path}:3:3: unknown opcode 'ad'; did you mean 'add'?"
    with pytest.raises(UserError) as e2:
        load_program(tmp_path / "missing.s")
    assert str(e2.value) == f"cannot read assembly file '{tmp_path / 'missing.s'}': No such file or directory"


# ---------------------------------------------------------------------------------------- random programs

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True)
numbers = st.one_of(st.integers(-10**9, 10**9), st.floats(allow_nan=False))
streams = st.builds(StreamRef, st.sampled_from(Direction), st.integers(0, 63))
dtypes = st.sampled_from(DType)
small_ints = st.integers(-10**6, 10**6)
VALUES: dict[str, st.SearchStrategy[object]] = {
    **{f: small_ints for f in ("n", "d", "superlanes", "addr", "stride", "plane", "row", "slot", "lanes",
                               "rotate")},
    **{f: streams for f in ("map", "a", "b", "c", "out")},
    "imm": numbers, "dtype": dtypes, "to": dtypes, "accumulate": st.booleans(),
    "map16": st.lists(st.integers(-1, 15), max_size=16).map(tuple),
}


def ops_for(unit: Unit) -> list[Opcode]:
    return [op for op in Opcode if FAMILY[op] is Family.ICU or FAMILY_UNIT[FAMILY[op]] is unit]


@st.composite
def instructions(draw: st.DrawFn, unit: Unit) -> Instruction:
    op = draw(st.sampled_from(ops_for(unit)))
    required, optional = OPERANDS[op]
    chosen = list(required) + [f for f in optional if draw(st.booleans())]
    if "b" in chosen and "imm" in chosen:
        chosen.remove(draw(st.sampled_from(["b", "imm"])))
    values = {f: draw(VALUES[f]) for f in chosen}
    return Instruction(op=op, label=draw(st.none() | names), **values)


@st.composite
def queue_ids(draw: st.DrawFn) -> QueueId:
    unit = draw(st.sampled_from(Unit))
    hemisphere = None if unit is Unit.VXM else draw(st.sampled_from(Hemisphere))
    return QueueId(unit, hemisphere, draw(st.integers(0, 99)))


INIT_ARGS = {InitKind.ZEROS: st.just(()), InitKind.CONST: st.tuples(numbers),
             InitKind.RANDOM: st.tuples(st.integers(0, 2**32), numbers, numbers),
             InitKind.RANGE: st.tuples(numbers, numbers),
             InitKind.VALUES: st.lists(numbers, min_size=1, max_size=5).map(tuple)}
inits = st.sampled_from(InitKind).flatmap(lambda k: INIT_ARGS[k].map(lambda args: Init(kind=k, args=args)))
placements = st.builds(Placement, hemisphere=st.sampled_from(Hemisphere), first_slice=st.integers(0, 43),
                       address=st.integers(0, 8191), interleave=st.integers(1, 32))
tensors = st.builds(Tensor, name=names, dtype=dtypes, rows=st.integers(1, 4096), cols=st.integers(1, 4096),
                    placement=placements, init=st.none() | inits)
exprs = st.text("abxy_019.+-*/()[],<>=!~ ", min_size=1, max_size=20).map(str.strip).filter(bool)
tolerances = st.floats(0, 1)
checks = st.one_of(
    st.builds(Check, target=names, mode=st.just(CheckMode.EXACT), expr=exprs),
    st.builds(Check, target=names, mode=st.just(CheckMode.CLOSE), expr=exprs, rtol=tolerances,
              atol=tolerances),
)


@st.composite
def programs(draw: st.DrawFn) -> Program:
    queues = {}
    for q in draw(st.lists(queue_ids(), unique=True, max_size=4)):
        queues[q] = draw(st.lists(instructions(q.unit), max_size=6))
    return make_program(draw(names), queues, draw(st.lists(tensors, unique_by=lambda t: t.name, max_size=3)),
                        draw(st.lists(checks, max_size=3)), draw(st.none() | names))


@settings(max_examples=300, deadline=None)
@given(programs())
def test_roundtrip_random_programs(p: Program) -> None:
    roundtrip(p)


# ------------------------------------------------------------------------------------------------ errors

HEAD = ".program p\n"


def error(text: str) -> str:
    with pytest.raises(AssemblyError) as e:
        parse_program(textwrap.dedent(text), source="t.s")
    return str(e.value)


@pytest.mark.parametrize("text, message", [
    (HEAD + ".queue vxm.0\n    ad dtype=fp32 a=E0 b=E1 out=E2\n",
     "t.s:3:5: unknown opcode 'ad'; did you mean 'add'?"),
    (HEAD + ".queue vxm.0\n  xyzzy\n",
     "t.s:3:3: unknown opcode 'xyzzy'; see OPERANDS in openlpu.isa.opcodes"),
    (HEAD + ".queue mem.w.0\n    read adr=0 out=E0\n",
     "t.s:3:10: unknown operand 'adr' for read; read takes addr, out, stride"),
    (HEAD + ".queue mem.w.0\n    sync n=1\n",
     "t.s:3:10: unknown operand 'n' for sync; sync takes no operands"),
    (HEAD + "    read addr=0 out=E0\n",
     "t.s:2:5: instruction before any .queue section; add '.queue mem.w.0' above it"),
    (HEAD + "add dtype=fp32 a=E0 imm=1 out=E2\n",
     "t.s:2:1: instruction before any .queue section; add '.queue vxm.0' above it"),
    (HEAD + ".queue vxm.0\n    add dtype=fp32 a=X0 b=E1 out=E2\n",
     "t.s:3:22: bad value 'X0' for a: expected a stream such as E3 or W12"),
    (HEAD + ".queue vxm.0\n    add dtype=fp8 a=E0 b=E1 out=E2\n",
     "t.s:3:15: bad value 'fp8' for dtype: expected one of int8, int16, int32, fp16, fp32"),
    (HEAD + ".tensor a bf16 8x8 @ w:0 addr=0\n",
     "t.s:2:11: bad value 'bf16' for dtype: expected one of int8, int16, int32, fp16, fp32"),
    (HEAD + ".tensor a fp32 8x8 @ w:0 addr=0\n.tensor a fp16 8x8 @ e:0 addr=0\n",
     "t.s:3:9: duplicate tensor 'a' (first declared on line 2)"),
    (HEAD + ".queue vxm.0\n  nop n=1\n.queue vxm.1\n  nop n=1\n.queue vxm.0\n",
     "t.s:6:8: duplicate queue 'vxm.0' (first opened on line 2); put all its instructions in one section"),
    (".tensor a fp32 8x8 @ w:0 addr=0\n", "t.s:1:1: missing '.program NAME'; it must be the first line"),
    ("; only a comment\n\n", "t.s:1:1: missing '.program NAME'; the text holds no program"),
    (HEAD + ".queue mem.w.0\n    read addr=0\n",
     "t.s:3:5: `read` takes operands ['addr', 'out'] (optional ['stride']); missing ['out']"),
    (HEAD + ".queue vxm.0\n    add dtype=fp32 a=E0 b=E1 imm=2 out=E2\n",
     "t.s:3:5: `add` takes either a second stream b= or an immediate imm=, not both"),
    (HEAD + ".queue vxm.0\n    add dtype=fp32 a=E0 a=E1 out=E2\n", "t.s:3:25: duplicate operand 'a'"),
    (HEAD + ".queue vxm.0\n    nop 3\n", "t.s:3:9: expected KEY=VALUE operand, got '3'"),
    (HEAD + ".queue mem.w.0\n    read addr=0x10 out=E0\n",
     "t.s:3:15: bad value '0x10' for addr: expected a decimal integer"),
    (HEAD + ".queue vxm.0\n    add dtype=fp32 a=E0 imm=two out=E2\n",
     "t.s:3:29: bad value 'two' for imm: expected a number such as 2, -0.5 or 1e-06"),
    (HEAD + ".queue sxm.w.0\n    distribute dtype=int8 a=E0 out=E1 map16=[0, 1, x]\n",
     "t.s:3:45: bad value '[0, 1, x]' for map16: expected a decimal integer"),
    (HEAD + ".queue mxm.w.0\n    abc plane=0 dtype=fp16 a=W0 slot=0 accumulate=yes\n",
     "t.s:3:51: bad value 'yes' for accumulate: expected true or false"),
    (HEAD + ".tensr a fp32 8x8 @ w:0 addr=0\n",
     "t.s:2:1: unknown directive '.tensr'; did you mean '.tensor'?"),
    (HEAD + ".xyzzy\n",
     "t.s:2:1: unknown directive '.xyzzy'; expected one of .program, .chip, .tensor, .check, .queue"),
    (HEAD + ".queue vxm.0\n  nop n=1\n.tensor a fp32 8x8 @ w:0 addr=0\n",
     "t.s:4:1: .tensor after a .queue section; declarations go before the first .queue"),
    (HEAD + ".queue vxm.9.1\n",
     "t.s:2:8: bad queue name 'vxm.9.1': expected mem.w.N, mem.e.N, sxm.w.N, mxm.e.N, c2c.w.N or vxm.N"),
    (HEAD + ".queue\n", "t.s:2:7: expected '.queue QUEUE'"),
    (".program p q\n", "t.s:1:12: unexpected 'q' after .program NAME"),
    (HEAD + ".program q\n", "t.s:2:1: duplicate .program; a file holds one program"),
    (HEAD + ".queue vxm.0\nloop:\n.queue vxm.1\n",
     "t.s:3:1: label 'loop' is not followed by an instruction in queue vxm.0"),
    (HEAD + ".queue vxm.0\nloop:\n",
     "t.s:3:1: label 'loop' is not followed by an instruction in queue vxm.0"),
    (HEAD + ".queue vxm.0\na:\nb: nop n=1\n",
     "t.s:4:1: label 'b' follows label 'a' with no instruction between; "
     "an instruction has at most one label"),
    (HEAD + ".queue vxm.0\n1x: nop n=1\n", "t.s:3:1: bad label '1x:'; expected an identifier and ':'"),
    (HEAD + ".tensor a fp32 8by8 @ w:0 addr=0\n",
     "t.s:2:16: expected a shape ROWSxCOLS such as 8x320, got '8by8'"),
    (HEAD + ".tensor a fp32 8x8 w:0 addr=0\n",
     "t.s:2:30: expected '.tensor NAME DTYPE ROWSxCOLS @ HEMI:FIRST_SLICE addr=A [interleave=G] [= INIT]'"),
    (HEAD + ".tensor a fp32 8x8 @ n:0 addr=0\n",
     "t.s:2:22: expected a placement HEMI:FIRST_SLICE such as w:10, got 'n:0'"),
    (HEAD + ".tensor a fp32 8x8 @ w:0 addr=0 interleave=0\n",
     "t.s:2:44: interleave must be at least 1, got 0"),
    (HEAD + ".tensor a fp32 8x8 @ w:0 addr=0 stride=2\n",
     "t.s:2:33: expected 'interleave=N', got 'stride=2'"),
    (HEAD + ".tensor a fp32 8x8 @ w:0 addr=0 = gaussian(1)\n",
     "t.s:2:35: bad initializer 'gaussian(1)'; expected one of zeros, const(V), random(SEED, LOW, HIGH), "
     "range(START, STEP), values(V0, V1, ...)"),
    (HEAD + ".tensor a fp32 8x8 @ w:0 addr=0 = random(1, 2)\n",
     "t.s:2:35: random takes random(SEED, LOW, HIGH), got 2 argument(s)"),
    (HEAD + ".tensor a fp32 8x8 @ w:0 addr=0 = const(x)\n",
     "t.s:2:35: bad value 'x' for const argument: expected a number such as 2, -0.5 or 1e-06"),
    (HEAD + ".tensor a fp32 8x8 @ w:0 addr=0 =\n", "t.s:2:34: expected INIT after '='"),
    (HEAD + ".check c == a + b rtol=1e-3\n", "t.s:2:19: rtol= only applies to '~=' checks; '==' is exact"),
    (HEAD + ".check c ~= a + b rtol=1e-3 b\n",
     "t.s:2:29: unexpected 'b'; only rtol= and atol= (once each) may follow the expression"),
    (HEAD + ".check c ~= rtol=1e-3\n", "t.s:2:13: expected an expression after '~='"),
    (HEAD + ".check c = a\n", "t.s:2:10: expected '==' or '~=' after the target, got '='"),
    (HEAD + ".check c ~= a atol=small\n",
     "t.s:2:20: bad value 'small' for atol: expected a number such as 2, -0.5 or 1e-06"),
])
def test_error_messages(text: str, message: str) -> None:
    assert error(text) == message


def test_error_carries_location() -> None:
    with pytest.raises(AssemblyError) as e:
        parse_program(HEAD + ".queue vxm.0\n    ad n=1\n", source="k.s")
    assert (e.value.source, e.value.line, e.value.column) == ("k.s", 3, 5)


def test_printer_refuses_what_the_parser_could_not_read_back() -> None:
    bad_expr = Check(target="c", mode=CheckMode.EXACT, expr="a ; b")
    with pytest.raises(ProgramError) as e:
        print_program(make_program("p", {}, checks=[bad_expr]))
    assert str(e.value) == "cannot print program: check expression 'a ; b' is empty, padded, or has ';', " \
                           "a newline, rtol= or atol="
    with pytest.raises(ProgramError) as e:
        print_program(make_program("my program", {}))
    assert str(e.value) == "cannot print program: name 'my program' is not one token"
