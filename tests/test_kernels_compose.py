"""Kernels composed into one program on tensors placed in SRAM: a two-layer MLP, y = relu(x @ W1) @ W2, in fp16
with fp32 accumulation. The matmul leaves its fp32 result split between the hemispheres; relayouts carry each
half, through ReLU and a cast to fp16, into the next matmul's input in both hemispheres."""

from __future__ import annotations

import numpy as np
import pytest

from openlpu.errors import ProgramError
from openlpu.hardware import Hemisphere, load_chip
from openlpu.isa import DType, Opcode, Placement, Tensor
from openlpu.kernels import Step, emit_matmul, emit_relayout, fast_matmul, fast_relayout
from openlpu.kernels.builder import ProgramBuilder
from openlpu.sim import simulate

CHIP = load_chip("groqchip1")
W, E = Hemisphere.W, Hemisphere.E
F16, F32 = DType.FP16, DType.FP32
STEPS = [Step(Opcode.RELU, F32), Step(Opcode.CAST, F32, F16)]


def _t(name, dtype, rows, cols, h, first, address, interleave=1):
    return Tensor(name=name, dtype=dtype, rows=rows, cols=cols,
                  placement=Placement(hemisphere=h, first_slice=first, address=address, interleave=interleave))


def _mlp(m: int):
    """The program, its tensors by name, and the cycle the builder predicts."""
    b = ProgramBuilder(CHIP, "mlp")
    t = {}
    for h in (W, E):
        s = h.value
        t[f"x_{s}"] = _t(f"x_{s}", F16, m, 640, h, 0, 0)
        t[f"w1_{s}"] = _t(f"w1_{s}", F16, 640, 320, h, 12, 0, interleave=16)
        t[f"c1_{s}"] = _t(f"c1_{s}", F32, m, 320, h, 4, 0)
        t[f"a2_{s}"] = _t(f"a2_{s}", F16, m, 640, h, 0, 2 * m)
        t[f"w2_{s}"] = _t(f"w2_{s}", F16, 640, 320, h, 12, 40, interleave=16)
        t[f"c2_{s}"] = _t(f"c2_{s}", F32, m, 320, h, 4, m)
    b.tensors += list(t.values())
    done = max(emit_matmul(b, t[f"x_{h}"], t[f"w1_{h}"], t[f"c1_{h}"]) for h in "we")
    for src, block in (("w", 0), ("e", 1)):
        for dst in "we":
            done = emit_relayout(b, t[f"c1_{src}"], 0, t[f"a2_{dst}"], block, STEPS, start=done)
    done = max(emit_matmul(b, t[f"a2_{h}"], t[f"w2_{h}"], t[f"c2_{h}"], start=done) for h in "we")
    return b.build(), b.predicted_cycles(), done


def _fast(x, w1, w2):
    c1 = np.concatenate([fast_matmul(x, w1[:, i * 320:(i + 1) * 320], F16, 320) for i in range(2)], axis=1)
    a2 = fast_relayout(c1, STEPS)
    return np.concatenate([fast_matmul(a2, w2[:, i * 320:(i + 1) * 320], F16, 320) for i in range(2)], axis=1)


@pytest.mark.parametrize("m", [1, 3])
def test_mlp_on_chip_matches_its_fast_path_and_prediction(m):
    rng = np.random.default_rng(m)
    x = rng.uniform(-1, 1, (m, 640)).astype(np.float16)
    w1 = rng.uniform(-0.1, 0.1, (640, 640)).astype(np.float16)
    w2 = rng.uniform(-0.1, 0.1, (640, 640)).astype(np.float16)
    program, predicted, done = _mlp(m)
    inputs = {**{f"x_{h}": x for h in "we"}, **{f"w1_{h}": w1[:, i * 320:(i + 1) * 320] for i, h in enumerate("we")},
              **{f"w2_{h}": w2[:, i * 320:(i + 1) * 320] for i, h in enumerate("we")}}
    result = simulate(program, CHIP, inputs)
    y = np.concatenate([result.tensors["c2_w"], result.tensors["c2_e"]], axis=1)
    assert result.cycles == predicted == done - 1 + CHIP.lanes.superlanes
    assert y.tobytes() == _fast(x, w1, w2).tobytes()
    if m == 1:  # the slow cycle-by-cycle reference agrees too
        from openlpu.sim.reference import simulate_reference

        ref = simulate_reference(program, CHIP, inputs)
        assert ref.cycles == result.cycles
        assert all(ref.tensors[n].tobytes() == result.tensors[n].tobytes() for n in result.tensors)
    exact = np.maximum(x.astype(np.float64) @ w1, 0) @ w2
    # fp16 rounding of the hidden activation (2^-11 relative) dominates; fp32 accumulation adds far less
    assert np.max(np.abs(y - exact)) <= 2.0**-11 * np.max(np.abs(np.maximum(x.astype(np.float64) @ w1, 0)) @ np.abs(w2))


def test_matmul_rejects_a_misplaced_operand():
    b = ProgramBuilder(CHIP, "bad")
    a = _t("a", F16, 1, 640, W, 0, 0)
    w = _t("w", F16, 640, 320, E, 12, 0, interleave=16)
    c = _t("c", F32, 1, 320, W, 4, 0)
    with pytest.raises(ProgramError) as info:
        emit_matmul(b, a, w, c)
    assert str(info.value) == ("matmul a @ w -> c (w): a, w and c must sit in one hemisphere (the MXM there reads a "
                               "and w and writes c)")


def test_relayout_rejects_types_that_do_not_chain():
    b = ProgramBuilder(CHIP, "bad")
    src, dst = _t("s", F32, 1, 320, W, 4, 0), _t("d", F32, 1, 320, E, 4, 0)
    with pytest.raises(ProgramError) as info:
        emit_relayout(b, src, 0, dst, 0, STEPS)
    assert str(info.value) == ("relayout s -> d: types do not chain: fp32 through ['relu', 'cast'] must end in fp32")


@pytest.mark.parametrize("source, target", [(W, E), (W, W), (E, W), (E, E)], ids=["we", "ww", "ew", "ee"])
def test_relayout_each_way_is_exact_and_as_predicted(source, target):
    from openlpu.kernels.relayout import relayout

    x = np.random.default_rng(11).normal(0, 3, (4, 700)).astype(np.float32)
    kernel = relayout(CHIP, x, STEPS, source, target)
    out, result = kernel.run(CHIP)
    assert result.cycles == kernel.predicted_cycles
    assert out.tobytes() == kernel.run_fast()[0].tobytes()
    assert np.array_equal(out, np.maximum(x, 0).astype(np.float16))
