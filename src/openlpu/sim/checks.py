"""Result checks a program declares: `.check c == a + b` compares a tensor after the run with a NumPy expression
over the tensors' initial values, evaluated in float64 (int64 for integer tensors) as the specification.

Expressions may use tensor names, numbers, + - * / @, unary minus and the functions in `FUNCTIONS`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np

from openlpu.errors import ProgramError
from openlpu.isa.program import Check, CheckMode, Tensor
from openlpu.isa.types import DType
from openlpu.sim.numerics import narrow


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _rmsnorm(x, w, eps=1e-5):
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def _sigmoid(x):
    """The logistic function in float64, written without cancellation for large negative x."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


FUNCTIONS = {
    "matmul": lambda a, b: a @ b,
    "transpose": lambda a: a.T,
    "exp": np.exp,
    "tanh": np.tanh,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "recip": lambda x: 1.0 / x,
    "abs": np.abs,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "maximum": np.maximum,
    "minimum": np.minimum,
    "rowsum": lambda x: x.sum(axis=-1, keepdims=True),
    "rowmax": lambda x: x.max(axis=-1, keepdims=True),
    "softmax": _softmax,
    "rmsnorm": _rmsnorm,
    "fp16": lambda x: np.asarray(x).astype(np.float16).astype(np.float64),
    "fp32": lambda x: np.asarray(x).astype(np.float32).astype(np.float64),
}

_OPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide, ast.MatMult: np.matmul}


@dataclass(frozen=True, slots=True)
class CheckResult:
    check: Check
    passed: bool
    max_abs_error: float
    mismatches: int

    def describe(self) -> str:
        c = self.check
        tol = f" (rtol {c.rtol:g}, atol {c.atol:g})" if c.mode is CheckMode.CLOSE else ""
        verdict = "ok" if self.passed else f"FAILED: {self.mismatches} element(s) differ"
        return f"{c.target} {c.mode.value} {c.expr}{tol}: {verdict}, max |error| {self.max_abs_error:.3g}"


def evaluate(expr: str, env: dict[str, np.ndarray]) -> np.ndarray:
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ProgramError(f"check expression {expr!r} is not valid: {e.msg}") from None
    return np.asarray(_eval(tree.body, env, expr))


def _eval(node: ast.AST, env: dict[str, np.ndarray], expr: str):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise ProgramError(f"check {expr!r}: unknown tensor {node.id!r}; tensors are {sorted(env.keys())}")
        return env[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left, env, expr), _eval(node.right, env, expr))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, env, expr)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        if node.func.id not in FUNCTIONS:
            raise ProgramError(f"check {expr!r}: unknown function {node.func.id!r}; known: {sorted(FUNCTIONS)}")
        return FUNCTIONS[node.func.id](*(_eval(a, env, expr) for a in node.args))
    raise ProgramError(f"check {expr!r}: unsupported syntax {ast.unparse(node)!r}")


def reference_env(tensors: tuple[Tensor, ...], initial: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Initial tensor values widened for the reference (float64 / int64), converted on first use."""
    return _LazyEnv({t.name: (initial[t.name], np.float64 if t.dtype.is_float else np.int64) for t in tensors})


class _LazyEnv(dict):
    def __init__(self, raw: dict) -> None:
        super().__init__()
        self._raw = raw

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def __missing__(self, name: str) -> np.ndarray:
        value, wide = self._raw[name]
        self[name] = value.astype(wide)
        return self[name]

    def keys(self):
        return self._raw.keys()


def run_check(check: Check, target: Tensor, actual: np.ndarray, env: dict[str, np.ndarray]) -> CheckResult:
    expected = np.broadcast_to(evaluate(check.expr, env), actual.shape)
    if check.mode is CheckMode.EXACT:
        want = _to_dtype(expected, target.dtype)
        expected = want  # the error of an exact check is measured against the rounded reference
        same = (want.view(np.uint8) == np.ascontiguousarray(actual).view(np.uint8)).reshape(*actual.shape, -1)
        bad = ~same.all(axis=-1)
    else:
        with np.errstate(invalid="ignore"):
            bad = ~np.isclose(actual.astype(np.float64), expected, rtol=check.rtol, atol=check.atol)
    with np.errstate(invalid="ignore"):
        err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    max_err = float(np.nanmax(err)) if err.size else 0.0
    return CheckResult(check, not bad.any(), max_err, int(bad.sum()))


def _to_dtype(x: np.ndarray, dtype: DType) -> np.ndarray:
    """The reference rounded to the tensor's type as the chip rounds: floats to nearest even (fp16 saturating at
    +-65504), integers wrapped."""
    if dtype is DType.FP16:
        return np.ascontiguousarray(narrow(np.asarray(x, np.float64), dtype))
    if dtype.is_float:
        return np.ascontiguousarray(x.astype(np.float64).astype(dtype.numpy))
    return np.ascontiguousarray(np.asarray(x).astype(np.int64).astype(dtype.numpy))
