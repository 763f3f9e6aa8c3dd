"""The kernel library: scheduled instruction sequences the compiler lowers to, each with its exact cycle count."""

from openlpu.kernels.elementwise import binary, binary_scalar, unary
from openlpu.kernels.kernel import Kernel
from openlpu.kernels.matmul import matmul
from openlpu.kernels.reduce import rowmax, rowsum
from openlpu.kernels.rmsnorm import rmsnorm
from openlpu.kernels.softmax import softmax

__all__ = ["Kernel", "binary", "binary_scalar", "matmul", "rmsnorm", "rowmax", "rowsum", "softmax", "unary"]
