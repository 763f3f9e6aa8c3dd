"""SRAM byte counts in the chip layout, and the activation working set of a stage of a tensor-IR graph.

Layout (`openlpu.isa.program`): a [rows, cols] tensor of w-byte elements is cut into column blocks of `lanes`
(320) columns, the last one zero-padded; each row of each block is one whole vector (`lanes` bytes) in each of
w byte-plane MEM slices. MXM weights (`openlpu.kernels.matmul`) are B [K, N] with K padded to whole 320-row
tiles and N to whole 320-column tiles. Every figure is an exact number of bytes.
"""

from __future__ import annotations

import math
from dataclasses import replace

from openlpu.errors import UserError
from openlpu.frontends.llama import LlamaConfig, Phase, build_decoder
from openlpu.hardware.chip import Chip
from openlpu.ir import SPECS, Graph, Node, Op, OpGroup
from openlpu.isa.types import DType

KV_DTYPE = DType.FP16  # the KV cache is kept in fp16 whatever the weight type
ACT_DTYPE = DType.FP32  # the VXM computes in fp32 and the MXM accumulates into fp32
MIB = 1 << 20


def mib(nbytes: int) -> str:
    """`nbytes` as MiB with two decimals, for messages and tables (the exact integer is always shown too)."""
    return f"{nbytes / MIB:,.2f} MiB"


def tensor_sram_bytes(rows: int, cols: int, dtype: DType | str, chip: Chip) -> int:
    """Bytes a [rows, cols] tensor occupies in SRAM: each row of each `lanes`-wide column block (the last one
    zero-padded) is one vector of `lanes` bytes in each of the element's w byte-plane slices, so
    rows * ceil(cols / lanes) * lanes * w."""
    if rows < 0 or cols < 0:
        raise UserError(f"tensor of {rows} x {cols} elements: sizes must not be negative")
    lanes = chip.lanes.lanes
    return rows * math.ceil(cols / lanes) * lanes * DType(dtype).width_bytes


def weight_sram_bytes(k: int, n: int, dtype: DType | str, chip: Chip) -> int:
    """Bytes of an MXM weight B [K, N] (the IR's W [N, K]): K padded to whole `plane_rows` tiles and N to
    whole `plane_columns` tiles, as `openlpu.kernels.matmul` lays them out; int8 weights also keep one fp32
    scale per output channel (per-channel quantisation), an fp32 row of N."""
    dt = DType(dtype)
    if dt not in (DType.FP16, DType.INT8):
        raise UserError(f"MXM weights are fp16 or int8, not {dt.value}")
    rows, cols = chip.mxm.plane_rows, chip.mxm.plane_columns
    data = tensor_sram_bytes(math.ceil(k / rows) * rows, math.ceil(n / cols) * cols, dt, chip)
    return data + (tensor_sram_bytes(1, n, DType.FP32, chip) if dt is DType.INT8 else 0)


def gather_table_sram_bytes(rows: int, cols: int, dtype: DType | str, chip: Chip) -> int:
    """Bytes of a table read by row (the embedding gather): [rows, cols] in the row layout, plus one fp32
    scale per row for int8 (the same per-channel scales the output head uses)."""
    dt = DType(dtype)
    return tensor_sram_bytes(rows, cols, dt, chip) + (
        tensor_sram_bytes(1, rows, DType.FP32, chip) if dt is DType.INT8 else 0)


def value_sram_bytes(shape: tuple[int, ...], dtype: DType, chip: Chip) -> int:
    """An IR value of `shape` in the chip layout of its 2-D view [prod(shape[:-1]), shape[-1]]."""
    cols = shape[-1] if shape else 1
    return tensor_sram_bytes(math.prod(shape[:-1]), cols, dtype, chip)


def working_set_bytes(graph: Graph, nodes: tuple[Node, ...], mxm_dtype: DType, chip: Chip) -> int:
    """The largest live set, in bytes, while `nodes` (one stage of `graph`, in order) run, one node per step:

    * a result is live from the step that computes it to the last step that reads it; a value computed before
      the stage (the residual stream it receives) is live from the first step to its last read;
    * layout ops (reshape, transpose, slice) are views: they keep their source alive and add nothing;
    * a kv_cache_write result is the KV cache itself, counted with the cache; inputs and weights are not
      activations;
    * results are fp32 (`ACT_DTYPE`: the VXM computes and the MXM accumulates in fp32), in the layout of their
      IR shape; a matmul step also holds its activation operand converted for the MXM (`mxm_dtype` against
      weights, fp16 against the fp16 KV cache).
    """
    external = {v.name for v in (*graph.inputs, *graph.params)}
    shapes = {name: v.shape for name, v in graph.values().items()}
    alias: dict[str, str | None] = {}  # a view or cache write -> the activation it stands for (None: not one)
    born: dict[str, int] = {}
    last: dict[str, int] = {}
    converted = [0] * len(nodes)
    for step, node in enumerate(nodes):
        sources = [None if i in external else alias.get(i, i) for i in node.inputs]
        for s in filter(None, sources):
            born.setdefault(s, 0)
            last[s] = step
        if SPECS[node.op].group is OpGroup.LAYOUT or node.op is Op.KV_CACHE_WRITE:
            alias[node.name] = sources[0] if node.op is not Op.KV_CACHE_WRITE else None
        else:
            born[node.name] = last[node.name] = step
        if node.op in (Op.MATMUL, Op.BATCH_MATMUL):
            dt = mxm_dtype if node.op is Op.MATMUL else KV_DTYPE
            converted[step] = value_sram_bytes(shapes[node.inputs[0]], dt, chip)
    size = {s: value_sram_bytes(shapes[s], ACT_DTYPE, chip) for s in born}
    live = [converted[j] + sum(size[s] for s in born if born[s] <= j <= last[s]) for j in range(len(nodes))]
    return max(live, default=0)


def _stages(graph: Graph) -> tuple[tuple[Node, ...], tuple[Node, ...], tuple[Node, ...]]:
    """A one-layer decoder graph's nodes cut into the embedding, block 0 and the output head."""
    block = tuple(n for n in graph.nodes if n.name.startswith("blk.0."))
    first = graph.nodes.index(block[0])
    return graph.nodes[:first], block, graph.nodes[first + len(block):]


def stage_working_sets(
    cfg: LlamaConfig, context: int, mxm_dtype: DType, chip: Chip
) -> dict[str, tuple[int, int]]:
    """(decode, prefill) working sets in bytes of the ``embedding``, one ``layer`` and the ``head`` of the
    decoder `cfg`: a decode step against `context` cached positions, and a prefill of `context` tokens in one
    pass. Measured on one-layer graphs (every llama layer has the same shapes)."""
    one = replace(cfg, n_layers=1)
    decode = build_decoder(one, Phase.DECODE, context=context)
    prefill = build_decoder(one, Phase.PREFILL, tokens=context)
    return {name: (working_set_bytes(decode, d, mxm_dtype, chip),
                   working_set_bytes(prefill, p, mxm_dtype, chip))
            for name, d, p in zip(("embedding", "layer", "head"), _stages(decode), _stages(prefill))}
