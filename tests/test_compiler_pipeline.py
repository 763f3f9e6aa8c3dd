"""The pipeline: stages dump as text, a compiled model is cached on disk, the chip count grows until the whole job
fits, unknown types get a clear error; a Pair's matmuls run at once."""

from __future__ import annotations

import pytest
from frontend_refs import our_model, truncated_path

from openlpu.compiler import pipeline
from openlpu.compiler.chipgraph import Chain, Pair
from openlpu.compiler.lower import Dims, split_layers
from openlpu.compiler.pipeline import compile_model, dump
from openlpu.errors import ConfigError, DoesNotFitError
from openlpu.hardware.chip import load_chip
from openlpu.isa.asm import parse_program
from openlpu.isa.opcodes import Opcode
from openlpu.kernels.builder import ProgramBuilder
from openlpu.kernels.matmul import emit_matmul
from openlpu.runtime.session import Fidelity, open_session

CHIP = load_chip("groqchip1")


def test_every_stage_dumps_and_the_program_text_round_trips(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENLPU_NO_CACHE", "1")
    c = compile_model(truncated_path(1), CHIP, context=16)
    files = {f.name for f in dump(c, tmp_path)}
    assert files == {"0-split.txt", "1-lowered.chip0.txt", "2-placed.chip0.txt", "3-scheduled.chip0.txt",
                     "4-program.chip0.s"}
    assert parse_program((tmp_path / "4-program.chip0.s").read_text()) == c.scheduled[0].program
    scheduled = (tmp_path / "3-scheduled.chip0.txt").read_text().splitlines()
    assert len(scheduled) == len(c.graphs[0].ops)
    assert int(scheduled[-1].split()[1]) + CHIP.lanes.superlanes >= c.cycles_per_step


def test_a_second_compile_comes_from_the_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENLPU_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("OPENLPU_NO_CACHE", raising=False)
    first = compile_model(truncated_path(1), CHIP, context=16, prompt=3)
    kinds = sorted(p.parent.name for p in tmp_path.rglob("*.pickle"))
    assert kinds == ["decode", "decode-programs", "prefill", "prefill-programs"]
    second = compile_model(truncated_path(1), CHIP, context=16, prompt=3)
    assert second.cycles_per_step == first.cycles_per_step and second.prefill.cycles == first.prefill.cycles
    assert second.scheduled[0].program == first.scheduled[0].program
    assert second.prefill.scheduled[0].program == first.prefill.scheduled[0].program
    light = compile_model(truncated_path(1), CHIP, context=16, prompt=3, programs=False)
    assert light.scheduled[0].program is None and light.prefill.scheduled[0].program is None
    with pytest.raises(ConfigError, match="without its programs"):
        open_session(light, Fidelity.CYCLE).step(1, 0)
    compile_model(truncated_path(1), CHIP, context=32)
    assert len(list(tmp_path.rglob("*.pickle"))) == 6


def test_an_unknown_dtype_is_refused_with_what_to_do():
    with pytest.raises(ConfigError, match="emits fp16 or int8 programs; choose one"):
        compile_model(truncated_path(1), CHIP, dtype="bf16", context=16)


def test_n_layers_with_an_already_loaded_model_is_refused_not_ignored():
    with pytest.raises(ConfigError, match="already loaded; load it with load_gguf"):
        compile_model(our_model(2), CHIP, context=16, n_layers=1)


def test_the_chip_count_grows_until_the_kv_caches_and_activations_fit_beside_the_weights():
    model = our_model(8)
    assert len(split_layers(model, Dims(model.config, 1024), CHIP)) == 1  # by weights alone: one chip
    c = compile_model(model, CHIP, context=1024)
    assert c.chips == 2 and [len(g.layers) for g in c.graphs] == [4, 4]
    with pytest.raises(DoesNotFitError, match="finds no room .* On 1 groqchip1 chips it does not fit; 2 would hold it"):
        compile_model(model, CHIP, context=1024, chips=1)


def test_a_prefill_that_does_not_fit_beside_the_decode_step_takes_one_chip_more(monkeypatch):
    place_all, refused = pipeline._place, []

    def prefill_refused_once(graphs, chip, shared):
        if shared[0] is not None and not refused:  # the prefill keeps the decode step's placements
            refused.append(len(graphs))
            raise DoesNotFitError("no room (test)")
        return place_all(graphs, chip, shared)

    monkeypatch.setattr(pipeline, "_place", prefill_refused_once)
    c = compile_model(our_model(2), CHIP, context=16, prompt=3)
    assert refused == [1] and c.chips == 2 and c.prefill is not None and len(c.prefill.graphs) == 2
    refused.clear()
    with pytest.raises(DoesNotFitError, match="no room"):  # the chips asked for: the placement's own error
        compile_model(our_model(2), CHIP, context=16, prompt=3, chips=1)


def test_a_pairs_two_matmuls_run_at_once_so_it_takes_as_long_as_the_longer_one(monkeypatch):
    monkeypatch.setenv("OPENLPU_NO_CACHE", "1")
    c = compile_model(truncated_path(1), CHIP, context=16)
    graph, placed, spans = c.graphs[0], c.placements[0], c.scheduled[0].spans
    pairs = [(op, span) for op, span in zip(graph.ops, spans) if isinstance(op, Pair)]
    assert len(pairs) == 3  # the scores' halves, gate and up, the LM head's halves
    for op, (start, done) in pairs:
        alone = [emit_matmul(ProgramBuilder(CHIP, "alone"), *(placed[n] for n in (m.a, m.w, m.c)), start,
                             skip=m.skip) - start for m in (op.west, op.east)]
        assert done - start == max(alone) < sum(alone), op


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "chips"), [("fp16", 2), ("int8", 1)])
def test_the_main_job_fits_the_chips_its_weights_need(dtype, chips, monkeypatch):
    """What `openlpu generate` compiles by default — SmolLM2, the 36-token chat prompt's prefill, context 96 —
    on the chips the weights alone need (2 in fp16, 1 in int8): the prefill's and the decode step's activations
    fit beside them and take no chip more."""
    monkeypatch.setenv("OPENLPU_NO_CACHE", "1")
    model = our_model(None)
    assert len(split_layers(model, Dims(model.config, 96), CHIP, dtype=dtype)) == chips
    c = compile_model(model, CHIP, dtype=dtype, context=96, prompt=36, programs=False)
    assert c.chips == chips and c.prefill is not None


def _fused_pv(graph) -> bool:
    """Whether a graph's attention computes exp(s - m) and its products with V in one pass."""
    return any(isinstance(op, Chain) and [s.op for s in op.steps] == [Opcode.SUB, Opcode.EXP, Opcode.MUL]
               for op in graph.ops)


def test_the_decode_step_computes_exp_and_its_products_apart_when_one_pass_leaves_no_room(monkeypatch):
    """exp(s - m) and e * V in one pass write both beside the scores; where that hemisphere has no room (a long
    context), the step computes them apart on the same chips rather than taking a chip more."""
    monkeypatch.setenv("OPENLPU_NO_CACHE", "1")
    assert all(_fused_pv(g) for g in compile_model(our_model(2), CHIP, context=16).graphs)
    place_all = pipeline._place

    def no_room_for_the_fused_pass(graphs, chip, shared):
        if any(_fused_pv(g) for g in graphs):
            raise DoesNotFitError("no room (test)")
        return place_all(graphs, chip, shared)

    monkeypatch.setattr(pipeline, "_place", no_room_for_the_fused_pass)
    for chips in (None, 1):
        c = compile_model(our_model(2), CHIP, context=16, chips=chips)
        assert c.chips == 1 and not any(_fused_pv(g) for g in c.graphs)
