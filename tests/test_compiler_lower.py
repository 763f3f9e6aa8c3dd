"""Lowering: the folded weights compute what the model computes, exactly; the split follows capacity."""

from __future__ import annotations

import numpy as np
import pytest
from frontend_refs import our_model

from openlpu.compiler.chipgraph import Matmul, Receive, Role, Send
from openlpu.compiler.lower import (
    MASK_LANE,
    Dims,
    _repeat_kv,
    _rotate_cols,
    check_model,
    head_columns,
    head_weights,
    layer_shapes,
    layer_weights,
    lower_chip,
    score_matrix,
    split_layers,
    step_inputs,
)
from openlpu.errors import ConfigError, DoesNotFitError
from openlpu.hardware.chip import load_chip
from openlpu.ir.interpret import rope_tables

CHIP = load_chip("groqchip1")


def test_rotation_folded_into_the_weights_is_rotate_half_exactly():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 3 * 4)).astype(np.float32)
    x = rng.normal(size=(2, 8)).astype(np.float32)
    y = (x @ w).reshape(2, 3, 4)
    want = np.concatenate([-y[..., 2:], y[..., :2]], axis=-1).reshape(2, 12)
    assert np.array_equal(x @ _rotate_cols(w, 4), want)


def test_kv_columns_repeat_for_each_query_head_of_the_group():
    cfg = our_model(1).config
    w = np.arange(2 * cfg.n_kv_heads * cfg.head_dim, dtype=np.float32).reshape(2, -1)
    rep = _repeat_kv(w, cfg).reshape(2, cfg.n_heads, cfg.head_dim)
    for h in range(cfg.n_heads):
        kv = h // cfg.group_size
        assert np.array_equal(rep[:, h], w[:, kv * cfg.head_dim:(kv + 1) * cfg.head_dim])


def test_score_matrix_sums_each_head_and_adds_the_mask_lane_everywhere():
    dims = Dims(our_model(1).config, 16)
    m = score_matrix(dims).astype(np.float32)
    assert m.shape == (2 * dims.qp, dims.qp) and np.array_equal(m[: dims.qp], m[dims.qp:])
    products = np.zeros(dims.qp, np.float32)
    products[:64], products[MASK_LANE] = 1.0, 1.0  # head 0's lanes, and a masked row's lane
    s = products @ m[: dims.qp]
    assert s[0] == s[63] == 65 and s[64] == 1 and s[dims.qdim:].max() == 0


def test_step_inputs_carry_rope_rows_with_the_query_scale_and_the_position():
    cfg = our_model(1).config
    dims = Dims(cfg, 16)
    rows = step_inputs(cfg, dims, 5)
    cos, _ = rope_tables(np.array([5]), cfg.head_dim, cfg.rope_base)
    assert rows["cos"][0, dims.qp: dims.qp + cfg.head_dim].tolist() == cos[0].astype(np.float32).tolist()
    assert rows["cos"][0, 0] == np.float32(cos[0, 0]) * np.float32(cfg.head_dim ** -0.5)
    assert (rows["pos_w"] == 5).all() and rows["pos_w"].dtype == np.int16


@pytest.mark.parametrize("context", [0, 3, 100, 16384])
def test_contexts_the_attention_trees_cannot_halve_are_refused(context):
    with pytest.raises(ConfigError, match="power of two"):
        check_model(our_model(1).config, context)


def test_the_full_model_splits_by_weight_capacity_and_refuses_too_few_chips():
    model = our_model(None)
    dims = Dims(model.config, 128)
    ranges = split_layers(model, dims, CHIP)
    assert sum(len(r) for r in ranges) == model.config.n_layers and len(ranges) == 3
    assert [r.start for r in ranges] == sorted(r.start for r in ranges)
    with pytest.raises(DoesNotFitError, match="need 3 groqchip1 chips; 2 were asked for"):
        split_layers(model, dims, CHIP, chips=2)
    # int8 halves the weights' addresses: 2 chips (the layout's folded and repeated columns keep it off one)
    assert [len(r) for r in split_layers(model, dims, CHIP, dtype="int8")] == [15, 15]
    with pytest.raises(DoesNotFitError, match="need 2 groqchip1 chips; 1 was asked for"):
        split_layers(model, dims, CHIP, chips=1, dtype="int8")


def test_int8_layout_quantises_each_output_column_and_keeps_folded_columns_exact():
    model = our_model(1)
    dims = Dims(model.config, 16)
    f16, i8 = layer_weights(model, 0, dims), layer_weights(model, 0, dims, "int8")
    for key, shape in layer_shapes(dims).items():
        q, scale = i8[key], i8[key + "_scale"]
        assert q.dtype == np.int8 and q.shape == shape and scale.shape == (1, shape[1])
        assert np.abs(q).max() == 127 and q.min() >= -127
        w = f16[key].astype(np.float64)
        assert np.all(np.abs(q * scale.astype(np.float64) - w) <= scale / 2 + np.abs(w) * 2.0**-11 + 1e-12)
    qp = dims.qp
    q, scale = i8["qkv"], i8["qkv_scale"][0]
    rotated = _rotate_cols(q[:, :qp].astype(np.int16), model.config.head_dim)  # q's columns, rotated
    assert np.array_equal(q[:, 2 * qp:3 * qp], rotated)
    assert np.array_equal(scale[2 * qp:3 * qp], _rotate_cols(scale[None, :qp], model.config.head_dim)[0].__abs__())
    assert np.all(scale[dims.qdim:qp] == 1)  # padding columns: all zero, scale 1


def test_chips_pass_the_hidden_state_along_and_only_the_last_has_the_head():
    model, dims = our_model(2), Dims(our_model(2).config, 16)
    first = lower_chip(model, dims, 0, range(0, 1), first=True, last=False)
    last = lower_chip(model, dims, 1, range(1, 2), first=False, last=True)
    assert isinstance(first.ops[-1], Send) and isinstance(last.ops[0], Receive)
    assert first.tensors["x_in"].role is Role.INPUT and last.tensors["x_in"].role is Role.ACT
    assert {t.name for t in last.by_role(Role.OUTPUT)} == {"logits_w", "logits_e"}
    assert not first.by_role(Role.OUTPUT)
    assert all(isinstance(op, Matmul) for op in last.ops if "logits" in str(op))


def test_the_capacity_count_uses_the_shapes_the_weights_are_laid_out_in():
    model = our_model(1)
    dims = Dims(model.config, 16)
    ws = layer_weights(model, 0, dims)
    assert {k: ws[k].shape for k in layer_shapes(dims)} == layer_shapes(dims)
    head = head_weights(model, dims)
    west, total = head_columns(model.config.vocab_size)
    assert head["head_w"].shape == (dims.dp, west) and head["head_e"].shape == (dims.dp, total - west)
    assert score_matrix(dims).shape == (2 * dims.qp, dims.qp)
