"""The kernel library: scheduled instruction sequences the compiler lowers to, each with its exact cycle count."""

from openlpu.kernels.kernel import Kernel
from openlpu.kernels.matmul import matmul

__all__ = ["Kernel", "matmul"]
