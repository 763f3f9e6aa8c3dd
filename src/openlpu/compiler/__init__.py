"""The compiler back end. So far: SRAM byte counts in the chip layout (`sram`), capacity planning
(`capacity`: how many chips a model needs, and which layers each one holds), and the precision pass
(`precision`: fp16 or int8 storage, and an IR interpreter with the chip's numerics)."""

from openlpu.compiler.capacity import (
    WEIGHT_TYPES,
    CapacityOptions,
    ChipPlan,
    ModelShape,
    Part,
    Plan,
    model_shape,
    plan,
)
from openlpu.compiler.precision import (
    FP16,
    INT8,
    W8A16,
    Precision,
    StoredTensor,
    interpret_chip,
    quantize_weights,
    step_logits,
)
from openlpu.compiler.sram import (
    gather_table_sram_bytes,
    stage_working_sets,
    tensor_sram_bytes,
    value_sram_bytes,
    weight_sram_bytes,
    working_set_bytes,
)

__all__ = [
    "FP16",
    "INT8",
    "W8A16",
    "Precision",
    "StoredTensor",
    "interpret_chip",
    "quantize_weights",
    "step_logits",
    "WEIGHT_TYPES",
    "CapacityOptions",
    "ChipPlan",
    "ModelShape",
    "Part",
    "Plan",
    "gather_table_sram_bytes",
    "model_shape",
    "plan",
    "stage_working_sets",
    "tensor_sram_bytes",
    "value_sram_bytes",
    "weight_sram_bytes",
    "working_set_bytes",
]
