"""Lowering: the laid-out weights and the lane mixes compute what the model computes, exactly; the split follows
capacity."""

from __future__ import annotations

import numpy as np
import pytest
from frontend_refs import our_model

from openlpu.compiler import fast
from openlpu.compiler.chipgraph import (
    Chain,
    ChipGraph,
    InvRms,
    LaneMix,
    Matmul,
    Pair,
    Receive,
    Ref,
    RmsNorm,
    Role,
    Scatter,
    Send,
    Vxm,
)
from openlpu.compiler.lower import (
    MASK,
    MASK_SCORE,
    Dims,
    _Graph,
    check_model,
    fuse_runs,
    head_columns,
    head_weights,
    kv_lanes,
    kv_shifts,
    layer_shapes,
    layer_sides,
    layer_weights,
    lower_chip,
    rope_terms,
    score_matrix,
    split_layers,
    step_inputs,
)
from openlpu.errors import ConfigError, DoesNotFitError
from openlpu.hardware.chip import load_chip
from openlpu.hardware.geometry import Hemisphere
from openlpu.ir.interpret import rope_tables
from openlpu.isa.opcodes import Opcode
from openlpu.isa.types import DType

CHIP = load_chip("groqchip1")
W, E = Hemisphere.W, Hemisphere.E


def _mix(x: np.ndarray, terms: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """sum_i rows_i * rot(x, r_i) over 320-lane vectors, in float64 (one nonzero term per lane: exact)."""
    v = x.reshape(x.shape[0], -1, 320).astype(np.float64)
    out = sum(np.roll(v, r, axis=-1) * m.reshape(m.shape[0], -1, 320) for r, m in terms)
    return out.reshape(x.shape)


def test_rope_terms_on_the_qkv_layout_are_the_models_rope_exactly():
    model = our_model(1)
    cfg, dims = model.config, Dims(model.config, 16)
    rng = np.random.default_rng(0)
    h = rng.normal(size=(1, dims.dp)).astype(np.float32)
    h[:, cfg.hidden_size:] = 0
    qkv = h.astype(np.float64) @ layer_weights(model, 0, dims)["qkv"].astype(np.float64)
    rows = step_inputs(cfg, dims, 7)
    r = _mix(qkv, [(rot, rows[name]) for rot, name in rope_terms(cfg, W)])
    cos, sin = rope_tables(np.array([7]), cfg.head_dim, cfg.rope_base)

    def rope(x: np.ndarray, heads: int) -> np.ndarray:
        x = x.reshape(heads, cfg.head_dim)
        half = cfg.head_dim // 2
        rotated = np.concatenate([-x[:, half:], x[:, :half]], axis=-1)
        return (x * cos + rotated * sin).ravel()

    q = qkv[0, : dims.qdim]
    assert np.allclose(r[0, : dims.qdim], rope(q, cfg.n_heads) * cfg.head_dim ** -0.5, rtol=1e-5, atol=1e-5)
    lanes = [a + i for a in kv_lanes(cfg) for i in range(cfg.head_dim)]
    k, v = qkv[0, dims.qp:][lanes], qkv[0, dims.qp + 320:][lanes]
    assert np.allclose(r[0, dims.qp:][lanes], rope(k, cfg.n_kv_heads), rtol=1e-5, atol=1e-5)
    assert np.array_equal(r[0, dims.qp + 320:][lanes], v)  # v passes unchanged


def test_kv_expansion_puts_each_kv_head_on_its_query_heads_lanes():
    cfg = our_model(1).config
    kv = np.zeros((1, 320), np.float32)
    for j, at in enumerate(kv_lanes(cfg)):
        kv[0, at:at + cfg.head_dim] = np.arange(cfg.head_dim) + 100 * (j + 1)
    blocks = [_mix(kv, list(shifts.items())) for shifts in kv_shifts(cfg)]
    expanded = np.concatenate(blocks, axis=1)[0]
    for h in range(cfg.n_heads):
        j = h // cfg.group_size
        assert expanded[h * cfg.head_dim:(h + 1) * cfg.head_dim].tolist() == (np.arange(cfg.head_dim)
                                                                             + 100 * (j + 1)).tolist()
    assert not expanded[cfg.n_heads * cfg.head_dim:].any()
    assert max(len(s) for s in kv_shifts(cfg)) == 3  # KV heads at lanes 0, 128, 192: three terms, not four


def test_score_matrix_sums_each_head_into_its_own_lanes():
    dims = Dims(our_model(1).config, 16)
    m = score_matrix(dims).astype(np.float32)
    assert m.shape == (dims.qp, dims.qp)
    products = np.zeros(dims.qp, np.float32)
    products[:64], products[64:128], products[dims.qdim:] = 1.0, 2.0, 7.0  # heads 0 and 1, and the padding lanes
    s = products @ m
    assert s[0] == s[63] == 64 and s[64] == s[127] == 128 and not s[128:].any()


def test_the_decode_mask_hides_the_unwritten_cache_rows_and_each_step_unmasks_its_own():
    model = our_model(1)
    dims = Dims(model.config, 16)
    graph = lower_chip(model, dims, 0, range(1), first=True, last=True)
    mask = graph.data[MASK]
    assert graph.tensors[MASK].role is Role.STATE and mask.shape == (16, dims.qp)
    assert (mask[:, :dims.qdim] == MASK_SCORE).all() and not mask[:, dims.qdim:].any()
    (unmask,) = [op for op in graph.ops if isinstance(op, Scatter) and op.dst == MASK]
    assert not graph.data[unmask.src.name].any() and graph.ops.index(unmask) == 0  # first: before any attention
    env = {name: np.array(v) for name, v in graph.data.items()}
    env.update(step_inputs(model.config, dims, 5))
    env["x_in"] = np.zeros((1, dims.dp), np.float32)
    fast.run(graph, env, slots=8, tiles={})
    assert not env[MASK][5].any()  # position 5's row; the others as they were
    assert np.array_equal(np.delete(env[MASK], 5, axis=0), np.delete(mask, 5, axis=0))


def test_a_prefill_unmasks_its_rows_for_the_decode_steps_after_it():
    model = our_model(1)
    dims = Dims(model.config, 16)
    graph = lower_chip(model, dims, 0, range(1), first=True, last=True, prompt=5)
    (unmask,) = [op for op in graph.ops if isinstance(op, Vxm) and op.out.name == MASK]
    assert unmask.op is Opcode.COPY and unmask.out == Ref(MASK, rows=5) and unmask.ins[0].step == 0


def test_step_inputs_carry_rope_rows_with_the_query_scale_and_the_position():
    cfg = our_model(1).config
    dims = Dims(cfg, 16)
    rows = step_inputs(cfg, dims, 5)
    cos, sin = rope_tables(np.array([5]), cfg.head_dim, cfg.rope_base)
    assert rows["cos_w"][0, dims.qp: dims.qp + cfg.head_dim].tolist() == cos[0].astype(np.float32).tolist()
    assert rows["cos_e"][0, 0] == np.float32(cos[0, 0]) * np.float32(cfg.head_dim ** -0.5)
    assert rows["sin_neg_w"][0, dims.qp + 1] == -np.float32(sin[0, 1]) and rows["sin_neg_w"][0, dims.qp + 33] == 0
    assert rows["sin_pos_e"][0, dims.qp + 33] == np.float32(sin[0, 33]) and rows["sin_pos_e"][0, dims.qp + 1] == 0
    assert (rows["cos_w"][0, dims.qp + 320:] == 1).all() and not rows["sin_pos_w"][0, dims.qp + 320:].any()
    assert (rows["pos_w"] == 5).all() and rows["pos_w"].dtype == np.int16


@pytest.mark.parametrize("context", [0, 3, 101, 16384])
def test_contexts_the_scores_cannot_pair_are_refused(context):
    with pytest.raises(ConfigError, match="an even number from 2 to 8192"):
        check_model(our_model(1).config, context)


def test_the_full_model_splits_by_weight_capacity_and_refuses_too_few_chips():
    model = our_model(None)
    dims = Dims(model.config, 128)
    ranges = split_layers(model, dims, CHIP)
    assert sum(len(r) for r in ranges) == model.config.n_layers and len(ranges) == 2
    assert [r.start for r in ranges] == sorted(r.start for r in ranges)
    with pytest.raises(DoesNotFitError, match="need 2 groqchip1 chips; 1 was asked for"):
        split_layers(model, dims, CHIP, chips=1)
    assert [len(r) for r in split_layers(model, dims, CHIP, chips=3)] == [10, 10, 10]
    # int8 halves the weights' addresses: one chip
    assert [len(r) for r in split_layers(model, dims, CHIP, dtype="int8")] == [30]


def test_blocks_alternate_hemispheres_so_both_weight_bands_fill_evenly():
    assert layer_sides(0)["qkv"] is W and layer_sides(1)["qkv"] is E
    assert all(layer_sides(0)[k] is not layer_sides(1)[k] for k in layer_sides(0))


def test_int8_layout_quantises_each_output_column():
    model = our_model(1)
    dims = Dims(model.config, 16)
    f16, i8 = layer_weights(model, 0, dims), layer_weights(model, 0, dims, "int8")
    for key, shape in layer_shapes(dims).items():
        q, scale = i8[key], i8[key + "_scale"]
        assert q.dtype == np.int8 and q.shape == shape and scale.shape == (1, shape[1])
        assert np.abs(q).max() == 127 and q.min() >= -127
        w = f16[key].astype(np.float64)
        assert np.all(np.abs(q * scale.astype(np.float64) - w) <= scale / 2 + np.abs(w) * 2.0**-11 + 1e-12)
    scale = i8["qkv_scale"][0]
    assert np.all(scale[dims.qdim:dims.qp] == 1)  # padding columns: all zero, scale 1


def test_the_scores_run_on_both_mxms_and_skip_the_head_sum_matrix_tiles_that_are_all_zero():
    model = our_model(1)
    graph = lower_chip(model, Dims(model.config, 16), 0, range(1), first=True, last=True)
    (scores,) = [op for op in graph.ops if isinstance(op, Pair) and op.west.w.startswith("scores_ones")]
    assert (scores.west.w, scores.east.w) == ("scores_ones_w", "scores_ones_e")
    assert "qk_hi" in scores.west.a and "qk_lo" in scores.east.a  # the products' hi halves west, lo halves east
    # [b0 b1] x [n0 n1]: heads stay in their block
    assert scores.west.skip == scores.east.skip == {(0, 1), (1, 0)}


def test_the_attention_streams_its_dependent_steps_through_the_alu_ranks():
    model = our_model(1)
    graph = lower_chip(model, Dims(model.config, 16), 0, range(1), first=True, last=True)
    chains = [op for op in graph.ops if isinstance(op, Chain)]
    at = [i for i, c in enumerate(chains) if c.steps[0].op is Opcode.MUL][0]  # before it: the qkv input's cast
    split = chains[at]  # the products' split: mul, the fp16 cast beside two exact fp32 casts, the subtraction
    assert [s.op for s in split.steps] == [Opcode.MUL] + [Opcode.CAST] * 4 + [Opcode.SUB]
    written = {n for n in split.writes() if graph.tensors[n].role is not Role.STREAM}
    assert {graph.tensors[n].dtype for n in written} == {DType.FP16, DType.FP32} and len(written) == 2
    # the head sums' halves added, and the mask of the unwritten rows, in one pass
    assert [s.op for s in chains[at + 1].steps] == [Opcode.ADD, Opcode.ADD]
    assert chains[at + 1].steps[1].ins[1] == Ref(MASK)
    # exp(s - m), and e times the V rows on the next rank: one pass, both written
    exp = chains[at + 2]
    assert [s.op for s in exp.steps] == [Opcode.SUB, Opcode.EXP, Opcode.MUL] and exp.steps[2].ins[0] == exp.steps[1].out
    assert [graph.tensors[s.out.name].role for s in exp.steps] == [Role.STREAM, Role.ACT, Role.ACT]
    # the softmax sum and the weighted sum: each tree level of both in one pass
    levels = [c for c in chains[at + 3:] if len(c.steps) == 2 and {s.op for s in c.steps} == {Opcode.ADD}]
    assert len(levels) == 4  # log2(16) rows
    assert all(a.out.name.startswith("l0_sum") and b.out.name.startswith("l0_o_sum") for a, b in
               (c.steps for c in levels))


@pytest.mark.parametrize("rows", [5, 6, 7])
def test_a_tree_level_of_odd_rows_carries_the_last_row_as_padding_would(rows):
    g = _Graph()
    x = g.tensor("x", DType.FP32, rows, 320, Hemisphere.W, Role.ACT, interleave=2)
    data = np.random.default_rng(rows).standard_normal((rows, 320)).astype(np.float32)
    env = {"x": data.copy()}
    (total,) = g.trees(Opcode.ADD, [x], ["sum"])
    graph = ChipGraph(0, range(1), dict(g.tensors), tuple(g.ops), {})
    fast.run(graph, env, slots=8, tiles={})
    copies = [op for op in g.ops if isinstance(op, Vxm) and op.op is Opcode.COPY]
    assert len(copies) == {5: 2, 6: 1, 7: 1}[rows]  # the odd levels: 5 and 3 of 5, 3 of 6 and 7 of 7
    padded = np.zeros((8, 320), np.float32)  # the pairs of a power-of-two tree over zero rows after the last
    padded[:rows] = data
    while len(padded) > 1:
        padded = padded[0::2] + padded[1::2]
    assert g.shape(total) == (1, 1)
    assert np.array_equal(env[total.name].view(np.uint32), padded.view(np.uint32))


def test_a_blocks_norms_scale_the_products_of_the_matmuls_after_them():
    """rmsnorm(x, w) @ W as n * (fp16(x * w) @ W): the matmul reads x * w, not a normalised row, and n, the norm's
    inverse rms (one row per row of x), scales what comes after it: the gate's and up's products, and q, K and V
    after RoPE and the KV heads' expansion (both linear)."""
    model = our_model(1)
    graph = lower_chip(model, Dims(model.config, 16), 0, range(1), first=True, last=True)
    norms = [op for op in graph.ops if isinstance(op, InvRms)]
    assert norms[0].x == "x_in" and norms[1].x.startswith("l0_x_att") and all(op.n == 576 for op in norms)
    (final,) = [op for op in graph.ops if isinstance(op, RmsNorm)]  # the head's norm stays whole
    assert final.y == "final"
    producer = {name: op for op in graph.ops for name in op.writes()}
    steps = {s.out.name: s for op in graph.ops if isinstance(op, Chain | Vxm)
             for s in (op.steps if isinstance(op, Chain) else (op,))}

    def origin(name: str) -> Vxm:
        """The first step behind `name` that is not a cast or a copy."""
        while steps[name].op in (Opcode.CAST, Opcode.COPY):
            name = steps[name].ins[0].name
        return steps[name]

    matmuls = {m.w: m for op in graph.ops for m in ((op.west, op.east) if isinstance(op, Pair) else (op,))
               if isinstance(m, Matmul)}
    for norm, w_norm, weights in zip(norms, ("l0_attn_norm", "l0_ffn_norm"), (["l0_qkv"], ["l0_g", "l0_u"])):
        for w in weights:  # the matmul's input: fp16(x * w) (perhaps copied across), never the norm's output
            mm = matmuls[w]
            assert steps[mm.a].op is Opcode.COPY or steps[mm.a].to is DType.FP16
            xw = origin(mm.a)
            assert xw.op is Opcode.MUL and [r.name for r in xw.ins] == [w_norm, norm.x]
        scaled = [s for s in steps.values() if s.op is Opcode.MUL and norm.y in {r.name for r in s.ins}]
        for s in scaled:
            (by_row,) = [r for r in s.ins if r.name == norm.y]
            assert by_row.block_step == 0 and by_row.blocks == graph.tensors[s.out.name].blocks
        inputs = sorted(r.name for s in scaled for r in s.ins if r.name != norm.y)
        if w_norm == "l0_ffn_norm":  # the gate's and up's products themselves
            assert inputs == sorted(matmuls[w].c for w in weights)
        else:  # q after RoPE; K and V after the expansion of the KV heads
            assert len(inputs) == 3 and all(isinstance(producer[name], LaneMix) for name in inputs)


def test_runs_of_vxm_operations_whose_results_nothing_else_reads_become_chains():
    model = our_model(1)
    graph = lower_chip(model, Dims(model.config, 16), 0, range(1), first=True, last=True)
    (ffn,) = [op for op in graph.ops if isinstance(op, Chain) and op.steps[0].op is Opcode.SILU]
    # SiLU, the gate product, the cast to fp16 and the copy to the down projection's side
    assert [s.op for s in ffn.steps] == [Opcode.SILU, Opcode.MUL, Opcode.CAST, Opcode.COPY]
    assert [graph.tensors[s.out.name].role for s in ffn.steps] == [Role.STREAM] * 3 + [Role.ACT]
    # the residual after attention feeds the next norm and the block's last add: written, and its add alone
    (residual,) = [op for op in graph.ops if isinstance(op, Vxm) and op.out.name.startswith("l0_x_att")]
    assert graph.tensors[residual.out.name].role is Role.ACT
    assert fuse_runs(graph) == graph  # nothing left to fuse


def test_chips_pass_the_hidden_state_along_and_only_the_last_has_the_head():
    model, dims = our_model(2), Dims(our_model(2).config, 16)
    first = lower_chip(model, dims, 0, range(0, 1), first=True, last=False)
    last = lower_chip(model, dims, 1, range(1, 2), first=False, last=True)
    assert isinstance(first.ops[-1], Send) and isinstance(last.ops[0], Receive)
    assert first.tensors["x_in"].role is Role.INPUT and last.tensors["x_in"].role is Role.ACT
    assert {t.name for t in last.by_role(Role.OUTPUT)} == {"logits_w", "logits_e"}
    assert not first.by_role(Role.OUTPUT)
    (head,) = [op for op in last.ops if "logits" in str(op)]
    assert isinstance(head, Pair) and (head.west.c, head.east.c) == ("logits_w", "logits_e")


def test_the_capacity_count_uses_the_shapes_the_weights_are_laid_out_in():
    model = our_model(1)
    dims = Dims(model.config, 16)
    ws = layer_weights(model, 0, dims)
    assert {k: ws[k].shape for k in layer_shapes(dims)} == layer_shapes(dims)
    head = head_weights(model, dims)
    west, total = head_columns(model.config.vocab_size)
    assert head["head_w"].shape == (dims.dp, west) and head["head_e"].shape == (dims.dp, total - west)
    assert score_matrix(dims).shape == (dims.qp, dims.qp)
