"""The event table: templates shared between instructions that differ only in their addresses are the templates
each instruction would get on its own."""

from __future__ import annotations

from dataclasses import astuple
from importlib import resources

import pytest
from frontend_refs import truncated_path

from openlpu.compiler.pipeline import compile_model
from openlpu.hardware.chip import load_chip
from openlpu.hardware.geometry import Geometry
from openlpu.isa.asm import parse_program
from openlpu.sim import events, timing

CHIP = load_chip("groqchip1")


def _programs():
    for p in sorted(resources.files("openlpu.examples").iterdir()):
        if p.name.endswith(".s"):
            yield parse_program(p.read_text(), source=p.name)


@pytest.fixture(scope="module")
def compiled_step():
    return compile_model(truncated_path(1), CHIP, context=16, dtype="int8").scheduled[0].program


def _check(program) -> None:
    ev = events.build(timing.expand(program, CHIP), CHIP)
    geo = Geometry.of(CHIP)
    assert ev.templates
    for t in ev.templates:
        assert astuple(t) == astuple(events._template(CHIP, geo, t.queue, t.index, t.instruction))


@pytest.mark.parametrize("program", list(_programs()), ids=lambda p: p.name)
def test_shared_templates_equal_their_own_in_the_examples(program):
    _check(program)


def test_shared_templates_equal_their_own_in_a_compiled_step(compiled_step):
    _check(compiled_step)
