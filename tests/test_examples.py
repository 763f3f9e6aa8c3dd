"""Every shipped example: parses, round-trips through the text form, runs, and passes its checks, twice alike."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

from openlpu.isa.asm import parse_program, print_program
from openlpu.sim import simulate

EXAMPLES = sorted(p for p in resources.files("openlpu.examples").iterdir() if p.name.endswith(".s"))


def test_examples_are_shipped():
    assert {p.name for p in EXAMPLES} >= {"vadd.s", "matmul_int8.s", "matmul_fp16.s", "vxm_chain.s"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_round_trips_and_passes(path):
    program = parse_program(path.read_text(), source=path.name)
    assert parse_program(print_program(program)) == program
    first, second = simulate(program), simulate(program)
    assert first.checks and first.checks_passed, [c.describe() for c in first.checks]
    assert first.cycles == second.cycles
    for name in first.tensors:
        assert np.array_equal(first.tensors[name].view(np.uint8), second.tensors[name].view(np.uint8))
