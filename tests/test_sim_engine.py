"""The cycle-exact simulator: timing rules, every conflict class, determinism, per-opcode tables."""

from __future__ import annotations

import numpy as np
import pytest

from openlpu.errors import ProgramError, ScheduleError
from openlpu.hardware import load_chip
from openlpu.isa.asm import parse_program
from openlpu.isa.opcodes import LATENCY_FIELD, Opcode
from openlpu.sim import simulate
from openlpu.sim.engine import _EXECUTORS
from openlpu.sim.execute import Machine
from openlpu.sim.semantics import PHASE, latency

CHIP = load_chip("groqchip1")


def run(text: str, **kw):
    return simulate(parse_program(text), CHIP, **kw)


def error(text: str, kind=ScheduleError) -> str:
    with pytest.raises(kind) as info:
        run(text)
    return str(info.value)


# mem.w.1 sits at position 44, mem.w.0 at 45, VXM rank 0 at 46, mem.e.0 at 50 (see hardware/geometry.py).
COPY = """.program copy
.tensor x int8 2x320 @ w:1 addr=0 = random(1, -128, 127)
.tensor y int8 2x320 @ e:0 addr=0
.check y == x
.queue mem.w.1
    read addr=0 out=E0
    repeat n=1 d=1
.queue vxm.0
    nop n=4
    copy dtype=int8 a=E0 out=E4
    repeat n=1 d=1
.queue mem.e.0
    nop n=10
    write addr=0 a=E4
    repeat n=1 d=1
"""


def test_result_lands_after_latency_plus_hops():
    # read at 0 -> on E0 at position 44 in cycle 2 -> VXM rank 0 (2 hops) in cycle 4; copy -> E4 at 6 -> mem.e.0
    # (4 hops) in cycle 10; last write (cycle 11) commits in 12; plus 20 superlanes of stagger.
    r = run(COPY)
    assert r.checks_passed
    assert r.cycles == 11 + CHIP.mem.write_latency_cycles + CHIP.lanes.superlanes


def test_one_cycle_early_reads_nothing():
    text = COPY.replace("    nop n=4\n", "    nop n=3\n")
    assert error(text).startswith("read of stream E0 holding no value at vxm rank 0 in cycle 3:")


def test_same_run_twice_is_identical():
    a, b = run(COPY), run(COPY)
    assert a.cycles == b.cycles and a.to_json() == b.to_json()
    assert all(np.array_equal(a.tensors[n], b.tensors[n]) for n in a.tensors)


def test_two_producers_on_one_stream_position():
    msg = error(""".program p
.tensor x int8 1x320 @ w:0 addr=0 = const(1)
.queue mem.w.0
    read addr=0 out=E0
.queue vxm.0
    nop n=3
    copy dtype=int8 a=E0 out=E4
.queue vxm.4
    nop n=3
    copy dtype=int8 a=E0 out=E4
""")
    assert msg.splitlines()[0] == "two producers write stream E4 at vxm rank 0 in cycle 5:"
    assert "vxm.0 instruction 1" in msg and "vxm.4 instruction 1" in msg


def test_value_overwritten_before_anyone_read_it():
    msg = error(""".program p
.tensor x int8 1x320 @ w:1 addr=0 = const(1)
.queue mem.w.1
    read addr=0 out=E0
.queue mem.w.0
    nop n=1
    read addr=0 out=E0
""")
    assert msg.startswith("stream E0: the value written in cycle 2 at mem.w.1 by cycle 0, mem.w.1 instruction 0")
    assert "is overwritten at mem.w.0 in cycle 3 by cycle 1, mem.w.0 instruction 1" in msg
    assert msg.endswith("before any instruction read it")


def test_bank_conflict():
    # the write (issued 3) commits in cycle 4 to address 2, bank 0, while the read of address 0 (bank 0) issues.
    msg = error(""".program p
.tensor x int8 4x320 @ w:0 addr=0 = const(1)
.queue mem.w.1
    read addr=0 out=E0
.queue mem.w.0
    nop n=3
    write addr=2 a=E0
    read addr=0 out=E4
""")
    assert msg.startswith("bank conflict in cycle 4: cycle 3, mem.w.0 instruction 1 `write addr=2 a=E0`")
    assert "cycle 4, mem.w.0 instruction 2 `read addr=0 out=E4`" in msg
    assert "move one by a cycle or put the data in the other bank (odd/even address)" in msg


def test_other_bank_is_fine():
    run(""".program p
.tensor x int8 4x320 @ w:0 addr=0 = const(1)
.queue mem.w.1
    read addr=0 out=E0
.queue mem.w.0
    nop n=3
    write addr=3 a=E0
    read addr=0 out=E4
""")


def test_address_out_of_range_after_repeat():
    msg = error(""".program p
.queue mem.w.0
    read addr=8190 out=E0 stride=1
    repeat n=3 d=1
""")
    assert msg.startswith("address 8192 out of range 0..8191 (after Repeat advanced it) at cycle 2, mem.w.0 "
                          "instruction 0 (repeat 2)")


def test_mxm_use_before_weights_installed():
    msg = error(""".program p
.tensor x int8 1x320 @ w:43 addr=0 = const(1)
.queue mem.w.43
    read addr=0 out=W0
.queue mxm.w.0
    nop n=4
    abc plane=0 dtype=int8 a=W0 slot=0
""")
    assert msg.splitlines()[0] == "cycle 4, mxm.w.0 instruction 1 `abc a=W0 dtype=int8 plane=0 slot=0`"
    assert msg.splitlines()[-1] == ("MXM plane 0 (w) is used before weights are installed; issue LW and IW, and "
                                    "the ABC at least 1 cycle(s) after the IW")


def test_install_of_empty_shadow_buffer():
    msg = error(""".program p
.queue mxm.w.0
    iw plane=0
""")
    assert msg.splitlines()[-1] == "installs an empty shadow buffer; load weights with LW first"


def test_accumulator_read_before_result_lands():
    from openlpu.kernels import matmul

    k = matmul(CHIP, np.ones((1, 8)), np.ones((8, 4)), __import__("openlpu").isa.DType.INT8)
    text = __import__("openlpu.isa.asm", fromlist=["x"]).print_program(k.program)
    early = text.replace("acc plane=0 slot=0 out=E0", "acc plane=0 slot=0 out=E0", 1)
    lines = early.splitlines()
    i = next(n for n, line in enumerate(lines) if line.strip().startswith("acc "))
    nop = lines[i - 1].split("=")
    lines[i - 1] = f"{nop[0]}={int(nop[1]) - 5}"
    with pytest.raises(ScheduleError) as info:
        simulate(parse_program("\n".join(lines)), CHIP, k.inputs)
    assert "reads accumulator slot 0, which holds no completed ABC result at cycle" in str(info.value)
    assert "issue the ACC 5 cycle(s) later" in str(info.value)


def test_sync_without_notify_deadlocks():
    assert error(""".program p
.queue vxm.0
    sync
""") == ("vxm.0 instruction 0 `sync` at cycle 0: the queue stays parked forever because no `notify` issues at or "
         "after that cycle; add a `notify` on some queue after it")


def test_notify_releases_parked_queues():
    text = COPY.replace(".queue mem.w.1\n", ".queue mem.w.1\n    sync\n").replace(
        ".queue vxm.0\n", ".queue vxm.0\n    sync\n").replace(".queue mem.e.0\n", ".queue mem.e.0\n    sync\n")
    text += ".queue sxm.w.0\n    nop n=7\n    notify\n"
    base = run(COPY)
    synced = run(text)
    # every queue resumes notify_latency after the notify at cycle 7
    assert synced.checks_passed
    assert synced.cycles == base.cycles + 7 + CHIP.icu.notify_latency_cycles


@pytest.mark.parametrize(
    "text, message",
    [
        (".program p\n.queue vxm.1\n    exp dtype=fp32 a=E0 out=E4\n",
         "vxm.1 instruction 0 `exp`: `exp` needs a large ALU; ALU 1 is small. Large ALUs: [0, 2, 5, 7, 8, 10, 13, 15]"),
        (".program p\n.queue vxm.0\n    add dtype=fp32 a=E2 b=E4 out=E8\n",
         "vxm.0 instruction 0 `add`: operand a=E2 must start a 4-stream group: an index that is a multiple of 4 in "
         "0..28"),
        (".program p\n.queue vxm.0\n    read addr=0 out=E0\n",
         "vxm.0 instruction 0 `read`: a MEM instruction cannot run on a VXM queue"),
        (".program p\n.queue mem.w.44\n    read addr=0 out=E0\n",
         "queue mem.w.44: index 44 is outside 0..43 on chip groqchip1"),
        (".program p\n.queue mxm.w.0\n    abc plane=0 dtype=int8 a=E0 slot=0\n",
         "mxm.w.0 instruction 0 `abc`: the w MXM reads W-flowing streams"),
        (".program p\n.queue mxm.w.0\n    lw plane=1 dtype=fp16 row=0\n",
         "mxm.w.0 instruction 0 `lw`: fp16 uses a plane pair; name its first plane (an even plane number)"),
        (".program p\n.tensor x fp32 4x320 @ w:42 addr=0\n",
         "tensor x: needs MEM slices 42..45 but a hemisphere has 0..43; move it to a lower first slice or lower the "
         "interleave"),
    ],
)
def test_illegal_programs(text, message):
    assert error(text, ProgramError) == message


def test_every_opcode_is_in_every_table():
    for op in Opcode:
        assert op in LATENCY_FIELD
        if op.family.value != "icu":
            assert op in PHASE and op in _EXECUTORS
            assert latency(CHIP, op) >= (0 if op in (Opcode.LW, Opcode.SEND) else 1)
    assert all(callable(f) and f.__qualname__.startswith(Machine.__name__) for f in _EXECUTORS.values())


def test_verify_checks_timing_without_running():
    from openlpu.sim import verify

    checked = verify(parse_program(COPY), CHIP)
    assert checked.cycles == run(COPY).cycles
    assert checked.to_json()["utilisation"] == run(COPY).utilisation
    with pytest.raises(ScheduleError) as info:
        verify(parse_program(COPY.replace("    nop n=4\n", "    nop n=3\n")), CHIP)
    assert str(info.value).startswith("read of stream E0 holding no value at vxm rank 0 in cycle 3:")
    assert info.value.cycle == 3
