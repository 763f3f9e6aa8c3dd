"""The compiler back end. So far: SRAM byte counts in the chip layout (`sram`) and capacity planning
(`capacity`: how many chips a model needs, and which layers each one holds)."""

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
from openlpu.compiler.sram import (
    gather_table_sram_bytes,
    stage_working_sets,
    tensor_sram_bytes,
    value_sram_bytes,
    weight_sram_bytes,
    working_set_bytes,
)

__all__ = [
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
