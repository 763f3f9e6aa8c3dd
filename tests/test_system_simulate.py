"""Chip-to-chip transfers: vectors cross a link at its serialisation rate and latency, checked against the schedule."""

from __future__ import annotations

import numpy as np
import pytest

from openlpu.errors import ConfigError, ProgramError, ScheduleError
from openlpu.hardware import load_chip
from openlpu.isa.asm import parse_program
from openlpu.sim import simulate
from openlpu.system import Endpoint, System, pipeline, simulate_system

CHIP = load_chip("groqchip1")
SERIAL = CHIP.serialisation_cycles  # 24: 328 wire bytes at 4 x 25 Gb/s, at 900 MHz
LATENCY = CHIP.c2c.link_latency_cycles  # 217

# mem.e.43 sits at position 93, the east edge (MXM and links) at 95; the west edge is 0 and mem.w.43 is 2.
SEND = """.program send
.tensor x int8 4x320 @ e:43 addr=0 = random(1, -128, 127)
.queue mem.e.43
    read addr=0 out=E0
    repeat n=3 d={gap}
.queue c2c.e.0
    nop n=4
    send a=E0
    repeat n=3 d={gap}
"""

RECV = """.program recv
.tensor y int8 4x320 @ w:43 addr=0
.queue c2c.w.0
    nop n={at}
    receive out=E0
    repeat n={more} d={gap}
.queue mem.w.43
    nop n={write}
    write addr=0 a=E0
    repeat n={more} d={gap}
"""


def programs(gap: int = SERIAL, at: int = 4 + SERIAL + LATENCY, more: int = 3):
    recv = RECV.format(at=at, write=at + CHIP.c2c.receive_latency_cycles + 2, more=more, gap=gap)
    return [parse_program(SEND.format(gap=gap)), parse_program(recv)]


def test_vectors_cross_the_link_at_latency_and_rate():
    assert (SERIAL, LATENCY) == (24, 217)
    result = simulate_system(pipeline(CHIP, 2), programs())
    sent, got = result.results[0].tensors["x"], result.results[1].tensors["y"]
    assert np.array_equal(sent, got)
    # last receive at 4 + 3*24 + 24 + 217 = 317, its vector on E0 two cycles later, written at mem.w.43 two hops
    # on at 321, committed at 322, plus the superlane stagger
    assert result.cycles == 4 + 3 * SERIAL + SERIAL + LATENCY + 2 + 2 + 1 + CHIP.lanes.superlanes
    assert result.seconds == result.cycles / CHIP.clock_hz


def test_receive_before_the_vector_arrives():
    with pytest.raises(ScheduleError) as info:
        simulate_system(pipeline(CHIP, 2), programs(at=4 + SERIAL + LATENCY - 1))
    assert str(info.value) == ("chip 1 c2c.w.0 receives at cycle 244, but the vector chip 0 c2c.e.0 sent at cycle 4 "
                               "arrives at cycle 245; issue the receive 1 cycle(s) later")
    assert info.value.cycle == 244


def test_sends_closer_than_the_serialisation_time():
    with pytest.raises(ScheduleError) as info:
        simulate_system(pipeline(CHIP, 2), programs(gap=SERIAL - 1))
    assert str(info.value) == ("chip 0 c2c.e.0 sends at cycle 27 while the link still carries the vector sent at "
                               "cycle 4; a vector occupies a link 24 cycles")


def test_every_vector_received_once():
    with pytest.raises(ScheduleError) as info:
        simulate_system(pipeline(CHIP, 2), programs(more=2))
    assert str(info.value) == ("chip 0 c2c.e.0 sends 4 vector(s) but chip 1 c2c.w.0 receives 3; every vector must "
                               "be received exactly once")


def test_sending_on_an_unwired_link():
    lonely = System(chips=(CHIP, CHIP), links=())
    with pytest.raises(ProgramError) as info:
        simulate_system(lonely, programs())
    assert str(info.value) == "chip 0 c2c.e.0 sends, but that link is not wired to any chip"


def test_one_chip_cannot_run_c2c_alone():
    with pytest.raises(ProgramError) as info:
        simulate(programs()[0], CHIP)
    assert str(info.value) == ("program send sends or receives over chip-to-chip links; run it as part of a system "
                               "with openlpu.system.simulate_system")


def test_bad_wiring():
    from openlpu.isa.types import QueueId

    link, mem = QueueId.parse("c2c.e.0"), QueueId.parse("mem.e.0")
    with pytest.raises(ConfigError) as info:
        System(chips=(CHIP, CHIP), links=((Endpoint(0, link), Endpoint(0, link)),))
    assert str(info.value) == "chip 0 c2c.e.0 is wired twice; a link connects exactly two endpoints"
    with pytest.raises(ConfigError) as info:
        System(chips=(CHIP,), links=((Endpoint(0, link), Endpoint(0, mem)),))
    assert str(info.value) == "link end chip 0 mem.e.0 does not name a C2C queue of one of the 1 chips"


def test_serialisation_follows_the_link_rate_and_clock():
    # 328 B * 8 bits at 4 lanes x 25 Gb/s = 26.24 ns; at 900 MHz 23.6 cycles -> 24; at 1.25 GHz 32.8 -> 33
    import dataclasses

    fast_clock = dataclasses.replace(CHIP, chip=dataclasses.replace(CHIP.chip, clock_hz=1_250_000_000))
    assert (CHIP.serialisation_cycles, fast_clock.serialisation_cycles) == (24, 33)
