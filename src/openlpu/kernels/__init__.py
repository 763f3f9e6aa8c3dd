"""The kernel library: scheduled instruction sequences the compiler lowers to, each with its exact cycle count.

Each kernel function builds a standalone program (`Kernel`); the `emit_*` functions schedule the same work into a
shared `ProgramBuilder` on tensors already placed in SRAM, from a start cycle, so kernels compose into one program.
"""

from openlpu.kernels.elementwise import binary, binary_scalar, unary
from openlpu.kernels.kernel import Kernel
from openlpu.kernels.matmul import emit_matmul, fast_matmul, matmul
from openlpu.kernels.reduce import rowmax, rowsum
from openlpu.kernels.relayout import Step, emit_relayout, fast_relayout
from openlpu.kernels.rmsnorm import inv_rms, rmsnorm
from openlpu.kernels.softmax import softmax

__all__ = [
    "Kernel", "Step", "binary", "binary_scalar", "emit_matmul", "emit_relayout", "fast_matmul", "fast_relayout",
    "inv_rms", "matmul", "rmsnorm", "rowmax", "rowsum", "softmax", "unary",
]
