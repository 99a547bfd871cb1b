"""2D-Matryoshka embeddings (cut in depth and in dimensions) for LangChain, LlamaIndex and Chroma.

The adapters are imported on first use, so that `import mm2d_integrations` needs no framework.
"""

from __future__ import annotations

import importlib
from typing import Any

from mm2d_integrations.core.encoder import Matryoshka2DEncoder, truncate_dimensions
from mm2d_integrations.core.options import EncoderOptions
from mm2d_integrations.core.runtime import BACKENDS

__all__ = [
    "BACKENDS", "EncoderOptions", "Matryoshka2DEmbedding", "Matryoshka2DEmbeddingFunction", "Matryoshka2DEmbeddings",
    "Matryoshka2DEncoder", "truncate_dimensions",
]
__version__ = "0.1.0"

_ADAPTERS = {
    "Matryoshka2DEmbeddings": "mm2d_integrations.langchain",
    "Matryoshka2DEmbedding": "mm2d_integrations.llama_index",
    "Matryoshka2DEmbeddingFunction": "mm2d_integrations.chroma",
}


def __getattr__(name: str) -> Any:
    if name in _ADAPTERS:
        return getattr(importlib.import_module(_ADAPTERS[name]), name)
    raise AttributeError(f"module 'mm2d_integrations' has no attribute {name!r}")
