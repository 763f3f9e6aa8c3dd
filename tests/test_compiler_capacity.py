"""Capacity planning: SRAM byte counts in the chip layout, working sets, and the pipeline split of SmolLM2.

Every number is worked by hand in a comment from the layout rules (320 lanes per vector; a w-byte element uses
w slices; column blocks of 320 lanes, the last zero-padded; MXM weights padded to whole 320 x 320 tiles).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path

import frontend_refs as refs
import pytest

from openlpu.compiler import (
    CapacityOptions,
    ModelShape,
    gather_table_sram_bytes,
    model_shape,
    plan,
    tensor_sram_bytes,
    weight_sram_bytes,
    working_set_bytes,
)
from openlpu.errors import DoesNotFitError, UserError
from openlpu.frontends.llama import LlamaConfig
from openlpu.hardware import load_chip
from openlpu.ir import parse_graph
from openlpu.isa.types import DType

CHIP = load_chip("groqchip1")  # 88 slices x 8,192 addresses x 320 B = 230,686,720 B
PRESET_TEXT = (resources.files("openlpu.hardware.presets") / "groqchip1.toml").read_text(encoding="utf-8")
SMOLLM2 = ModelShape(name="SmolLM2-135M", n_layers=30, hidden_size=576, ffn_size=1536, n_heads=9,
                     n_kv_heads=3, head_dim=64, vocab_size=49152, context_length=8192, tied_embeddings=True)
RESERVED = 4 * 8192 * 320  # 4 instruction slices = 10,485,760 B
# One SmolLM2 layer in fp16, MXM layout (K and N padded to multiples of 320):
#   attn_q, attn_output 576x576 -> 640 x 640 x 2 B = 819,200 each
#   attn_k, attn_v 576x192 -> 640 x 320 x 2 = 409,600 each
#   ffn_gate, ffn_up 576x1536 -> 640 x 1600 x 2 = 2,048,000 each; ffn_down 1536x576 -> 1600 x 640 x 2, same
#   attn_norm, ffn_norm: fp32 rows of 576 -> 2 blocks x 320 x 4 = 2,560 each
LAYER_FP16 = 2 * 819_200 + 2 * 409_600 + 3 * 2_048_000 + 2 * 2_560  # 8,606,720
# int8: half the data (4,300,800) + fp32 scales per output column (q, o, down: 2 blocks x 1,280 = 2,560;
# k, v: 1 block = 1,280; gate, up: 5 blocks = 6,400) = 23,040 + the fp32 norms 5,120
LAYER_INT8 = 4_300_800 + (3 * 2_560 + 2 * 1_280 + 2 * 6_400) + 2 * 2_560  # 4,328,960
KV_1024 = 2 * 1024 * 320 * 2  # K and V: 1,024 rows of 192 lanes padded to 320, fp16 = 1,310,720


def chip_file(tmp_path: Path, name: str, addresses: int) -> Path:
    text = PRESET_TEXT.replace("addresses_per_slice = 8192", f"addresses_per_slice = {addresses}")
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace('name = "groqchip1"', f'name = "{name}"'), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- layout


@pytest.mark.parametrize(("rows", "cols", "dtype", "expected"), [
    (1, 1, "int8", 320),  # one vector in one slice, 319 lanes of padding
    (3, 320, "fp16", 1_920),  # 3 rows x 1 block x 320 lanes x 2 byte planes
    (3, 321, "fp16", 3_840),  # a 321st column opens a second block: 3 x 2 x 320 x 2
    (10, 576, "fp32", 25_600),  # 10 x 2 blocks x 320 x 4
    (0, 5, "fp32", 0),
])
def test_tensor_bytes(rows: int, cols: int, dtype: str, expected: int) -> None:
    assert tensor_sram_bytes(rows, cols, dtype, CHIP) == expected
    assert tensor_sram_bytes(rows, cols, DType(dtype), CHIP) == expected


@pytest.mark.parametrize(("k", "n", "dtype", "expected"), [
    (1, 1, "fp16", 204_800),  # a whole 320 x 320 tile x 2 B
    (576, 192, "fp16", 409_600),  # K 576 -> 640, N 192 -> 320: 640 x 320 x 2
    (576, 192, "int8", 206_080),  # 640 x 320 x 1 = 204,800 + one fp32 scale per column: 1 x 320 x 4 = 1,280
    (1536, 576, "int8", 1_026_560),  # 1600 x 640 = 1,024,000 + scales 2 blocks x 320 x 4 = 2,560
    (576, 49152, "fp16", 63_078_400),  # SmolLM2's head: 640 x 154 tiles x 320 x 2
])
def test_weight_bytes(k: int, n: int, dtype: str, expected: int) -> None:
    assert weight_sram_bytes(k, n, dtype, CHIP) == expected


def test_gather_table_bytes() -> None:
    # SmolLM2's embedding as rows: 49,152 x 2 blocks x 320 lanes x w; int8 adds per-row fp32 scales,
    # a row of 49,152: 154 blocks x 1,280
    assert gather_table_sram_bytes(49152, 576, "fp16", CHIP) == 62_914_560
    assert gather_table_sram_bytes(49152, 576, "int8", CHIP) == 31_457_280 + 197_120


def test_weights_must_be_mxm_types() -> None:
    with pytest.raises(UserError) as e:
        weight_sram_bytes(320, 320, "fp32", CHIP)
    assert str(e.value) == "MXM weights are fp16 or int8, not fp32"


WS_GRAPH = """
graph ws
input x: float32[4, 320]
param w: float32[640, 320]
a = scale(x) {factor=2.0} : float32[4, 320]
v = reshape(a) {shape=[2, 640]} : float32[2, 640]
b = silu(a) : float32[4, 320]
m = matmul(b, w) : float32[4, 640]
c = add(v, v) : float32[2, 640]
output m
output c
"""


def test_working_set_of_a_written_graph() -> None:
    g = parse_graph(WS_GRAPH)
    # fp32 sizes: a, b [4, 320] = 4 x 1,280 = 5,120; m [4, 640] = 10,240; c [2, 640] = 5,120; v is a view.
    # step 0 {a}; 1 {a}; 2 {a, b}; 3 {a (read again at 4 via v), b, m} + b converted for the MXM;
    # 4 {a, c}. Peak at step 3: 5,120 + 5,120 + 10,240 + b in fp16 (4 x 640 = 2,560) = 23,040.
    assert working_set_bytes(g, g.nodes, DType.FP16, CHIP) == 23_040
    assert working_set_bytes(g, g.nodes, DType.INT8, CHIP) == 23_040 - 1_280  # b in int8: 4 x 320


# ---------------------------------------------------------------------------------------------- SmolLM2


def test_smollm2_parts() -> None:
    p = plan(SMOLLM2, CHIP, dtype="fp16", context=1024)
    layer = p.layers[0]
    assert layer.weight_bytes == LAYER_FP16 and layer.kv_cache_bytes == KV_1024
    # Decode working set: the residual [1, 576] (2,560) while two [9, 1024] fp32 score tensors are live
    # (scores_scaled and scores, 9 rows x 4 blocks x 320 x 4 = 46,080 each).
    assert layer.decode_activation_bytes == 2_560 + 2 * 46_080
    # Head: output_norm (2,560) + logits [1, 49152] (154 x 1,280 = 197,120) + output_norm in fp16 (1,280).
    assert p.head.decode_activation_bytes == 200_960
    assert p.embedding.weights == (("token_embd.weight", 62_914_560),)
    assert dict(p.head.weights) == {"output_norm.weight": 2_560, "token_embd.weight": 63_078_400}
    assert plan(SMOLLM2, CHIP, dtype="int8", context=1024).layers[0].weight_bytes == LAYER_INT8


def test_smollm2_fp16_needs_two_chips_at_1024_positions() -> None:
    p = plan(SMOLLM2, CHIP, dtype="fp16", context=1024)
    assert p.chip_count == p.fewest_chips == 2 and p.table_copies == 2
    first, last = p.stages
    assert (first.layers, last.layers) == (range(0, 15), range(15, 30))
    # chip 0: table as rows 62,914,560 + 15 layers; chip 1: 15 layers + output_norm + table in MXM layout
    assert first.weight_bytes == 62_914_560 + 15 * LAYER_FP16 == 192_015_360
    assert last.weight_bytes == 15 * LAYER_FP16 + 2_560 + 63_078_400 == 192_181_760
    assert first.kv_cache_bytes == last.kv_cache_bytes == 15 * KV_1024
    assert (first.activation_bytes, last.activation_bytes) == (94_720, 200_960)
    assert first.total_bytes == 192_015_360 + 19_660_800 + 94_720 + RESERVED == 222_256_640
    assert last.total_bytes == 192_181_760 + 19_660_800 + 200_960 + RESERVED == 222_529_280
    # One more layer on either chip needs 9,917,440 B more than its ~8.2 MB free: 15/15 is the only split.
    assert first.free_bytes == 8_430_080 and last.free_bytes == 8_157_440


def test_smollm2_int8_fits_one_chip_at_1024_positions() -> None:
    p = plan(SMOLLM2, CHIP, dtype="int8", context=1024)
    (only,) = p.stages
    assert only.parts[0] == "embedding" and only.parts[-1] == "head" and p.table_copies == 1
    # 30 layers + the tied table once (MXM layout: 640 x 49,280 = 31,539,200 + scales 197,120) + output_norm
    assert only.weight_bytes == 30 * LAYER_INT8 + 31_736_320 + 2_560 == 161_607_680
    assert only.kv_cache_bytes == 30 * KV_1024 == 39_321_600
    assert only.activation_bytes == 200_320  # the head's: logits 197,120 + norm 2,560 + norm in int8 640
    assert only.total_bytes == 211_615_360 and only.free_bytes == 19_071_360


@pytest.mark.parametrize(("dtype", "context", "chips"), [
    # The KV cache grows with the context (1,280 B per position per layer), so the count depends on it:
    # fp16 fits 2 chips up to 1,448 positions, int8 1 chip up to 1,520 (4 instruction slices reserved).
    ("fp16", 1448, 2), ("fp16", 1449, 3), ("int8", 1520, 1), ("int8", 1521, 2),
    ("fp16", 2048, 3), ("int8", 2048, 2), ("fp16", 8192, 4), ("int8", 8192, 3),
])
def test_chip_count_follows_the_context(dtype: str, context: int, chips: int) -> None:
    assert plan(SMOLLM2, CHIP, dtype=dtype, context=context).chip_count == chips


def test_one_chip_in_fp16_does_not_fit() -> None:
    with pytest.raises(DoesNotFitError) as e:
        plan(SMOLLM2, CHIP, dtype="fp16", context=1024, chips=1)
    # 30 x (8,606,720 + 1,310,720) + output_norm 2,560 + the table once 63,078,400 + the head's working set
    # 200,960 + 10,485,760 reserved = 371,290,880 B
    assert str(e.value) == (
        "SmolLM2-135M in fp16 with a 1,024-position KV cache needs 354.09 MiB (371,290,880 bytes) of SRAM on "
        "1 chip, but 1 groqchip1 chip has 220.00 MiB (230,686,720 bytes); it fits on 2 chips: ask for 2, or "
        "leave the chip count unset")


def test_double_sram_chip_holds_fp16_on_one(tmp_path: Path) -> None:
    big = load_chip(chip_file(tmp_path, "big", 16384))
    p = plan(SMOLLM2, big, dtype="fp16", context=1024)
    assert p.chip_count == 1 and p.table_copies == 1
    # weights 30 x 8,606,720 + 2,560 + 63,078,400; KV 30 x 1,310,720; head 200,960; reserved 4 x 16,384 x 320
    assert p.stages[0].total_bytes == 321_282_560 + 39_321_600 + 200_960 + 20_971_520
    assert p.stages[0].free_bytes == 2 * CHIP.sram_bytes - 381_776_640


def test_a_layer_larger_than_a_chip(tmp_path: Path) -> None:
    tiny = load_chip(chip_file(tmp_path, "tiny", 256))  # 88 x 256 x 320 = 7,208,960 B
    with pytest.raises(DoesNotFitError) as e:
        plan(SMOLLM2, tiny, dtype="fp16", context=1024)
    # 8,606,720 + 1,310,720 = 9,917,440 + 94,720 working set + 4 x 256 x 320 = 327,680 reserved
    assert str(e.value) == (
        "layer blk.0 needs 9.86 MiB (10,339,840 bytes: weights and KV cache 9.46 MiB, activations 0.09 MiB, "
        "instructions 0.31 MiB), but one tiny chip has 6.88 MiB (7,208,960 bytes) and a layer cannot be "
        "split across chips: shorten the context, use int8 weights or a chip with more SRAM")


@pytest.mark.parametrize(("dtype", "context", "chips"), [
    ("fp16", 1024, None), ("fp16", 1024, 5), ("fp16", 2048, None), ("int8", 8192, None), ("int8", 1024, 30),
    ("fp16", 8192, 7),
])
def test_split_is_contiguous_and_complete(dtype: str, context: int, chips: int | None) -> None:
    p = plan(SMOLLM2, CHIP, dtype=dtype, context=context, chips=chips)
    assert chips is None or p.chip_count == chips
    covered = [i for s in p.stages for i in s.layers]
    assert covered == list(range(SMOLLM2.n_layers))  # in order, each layer exactly once
    assert all(len(s.layers) > 0 for s in p.stages)
    assert "embedding" in p.stages[0].parts and "head" in p.stages[-1].parts
    for s in p.stages:
        assert s.total_bytes == s.weight_bytes + s.kv_cache_bytes + s.activation_bytes + s.reserved_bytes
        assert 0 <= s.free_bytes and s.total_bytes + s.free_bytes == CHIP.sram_bytes
        assert s.kv_cache_bytes == len(s.layers) * p.layers[0].kv_cache_bytes
    assert p.table_copies == (1 if p.chip_count == 1 else 2)


def test_kv_cache_scales_linearly_with_context() -> None:
    kv = {c: plan(SMOLLM2, CHIP, dtype="int8", context=c).layers[0].kv_cache_bytes
          for c in (1, 100, 1000, 4000)}
    assert kv == {c: c * 1_280 for c in kv}  # K and V: one 320-lane fp16 row (640 B) each per position
    totals = {c: sum(s.kv_cache_bytes for s in plan(SMOLLM2, CHIP, dtype="fp16", context=c).stages)
              for c in (512, 1024)}
    assert totals[1024] == 2 * totals[512] == 30 * KV_1024


def test_user_errors() -> None:
    cases = {
        "40 chips: every chip holds one or more whole layers and the model has 30; ask for 1 to 30 chips":
            dict(dtype="fp16", context=1024, chips=40),
        "context 8,193: SmolLM2-135M has a context length of 8,192 positions; ask for 1 to 8,192":
            dict(dtype="fp16", context=8193),
        "weight type 'bf16': the MXM multiplies fp16 or int8; use one of those":
            dict(dtype="bf16", context=8),
        "instruction_slices=88 leaves nothing of chip groqchip1's 88 MEM slices; reserve fewer":
            dict(dtype="fp16", context=8, options=CapacityOptions(instruction_slices=88)),
    }
    for message, kwargs in cases.items():
        with pytest.raises(UserError) as e:
            plan(SMOLLM2, CHIP, **kwargs)
        assert str(e.value) == message


def test_reserve_is_an_option() -> None:
    none = plan(SMOLLM2, CHIP, dtype="int8", context=1024, options=CapacityOptions(instruction_slices=0))
    four = plan(SMOLLM2, CHIP, dtype="int8", context=1024)
    assert none.stages[0].reserved_bytes == 0 and four.stages[0].reserved_bytes == RESERVED
    assert four.stages[0].free_bytes == none.stages[0].free_bytes - RESERVED


def test_summary_and_text() -> None:
    p = plan(SMOLLM2, CHIP, dtype="fp16", context=1024)
    s = json.loads(json.dumps(p.summary()))
    assert (s["chips"], s["fewest_chips"], s["table_copies"], s["instruction_slices"]) == (2, 2, 2, 4)
    assert s["total_bytes"] == 222_256_640 + 222_529_280 and s["sram_bytes"] == 2 * 230_686_720
    assert s["total_mib"] == s["total_bytes"] / 2**20
    assert [c["layers"] for c in s["per_chip"]] == [[0, 15], [15, 30]]
    assert s["per_chip"][1]["weights"]["token_embd.weight"] == 63_078_400
    assert s["layers"][29]["weights"]["blk.29.ffn_down.weight"] == 2_048_000
    lines = p.text().splitlines()
    assert lines[0] == ("SmolLM2-135M: fp16 weights, 1,024-position fp16 KV cache on 2 x groqchip1: "
                        "424.18 MiB of 440.00 MiB (fewest chips that fit: 2)")
    assert lines[1] == ("chip 0: embedding + blk.0-14: weights 183.12 MiB, KV cache 18.75 MiB, activations "
                        "0.09 MiB, reserved 10.00 MiB; total 211.96 MiB, free 8.04 MiB")
    assert lines[2].startswith("chip 1: blk.15-29 + head: ")
    assert "note: tied embeddings: token_embd.weight is stored twice" in lines[4]


def test_model_shape_sources() -> None:
    cfg = LlamaConfig(n_layers=2, hidden_size=8, ffn_size=16, n_heads=2, n_kv_heads=1, head_dim=4,
                      rope_base=1e4, rms_eps=1e-5, vocab_size=10, context_length=32, tied_embeddings=False)
    shape = model_shape(cfg)
    assert shape.kv_dim == 4 and model_shape(shape) is shape and shape.config() == cfg
    p = plan(cfg, CHIP, dtype="fp16", context=32)
    assert dict(p.head.weights)["output.weight"] == 204_800 and p.table_copies == 1  # untied: separate head


def test_embedded_model_shape_and_speed() -> None:
    shape = model_shape(refs.model_path())  # reads the metadata only
    assert replace(shape, name="SmolLM2-135M") == SMOLLM2
    start = time.perf_counter()
    plan(shape, CHIP, dtype="fp16", context=8192)
    assert time.perf_counter() - start < 1.0
