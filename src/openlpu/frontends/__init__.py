"""Model frontends: read a model file and build the tensor-IR graph of its decoder, plus its tokenizer.

Pipeline position: after the IR (`openlpu.ir`), before passes. The embedded model is SmolLM2-135M-Instruct
(`default_model_path`); `load_gguf` reads it, `build_graph` makes its prefill or decode graph, `Tokenizer`
turns chat messages into token ids, and `openlpu.frontends.reference` runs the graphs with the interpreter.
"""

from openlpu.frontends.gguf import SUPPORTED_ARCHITECTURES, GGUFModel, build_graph, load_gguf
from openlpu.frontends.llama import LlamaConfig, Phase, build_decoder
from openlpu.frontends.models import default_model_path
from openlpu.frontends.tokenizer import Tokenizer

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "GGUFModel",
    "LlamaConfig",
    "Phase",
    "Tokenizer",
    "build_decoder",
    "build_graph",
    "default_model_path",
    "load_gguf",
]
