"""2D-Matryoshka embeddings (cut in depth and in dimensions) for LangChain, LlamaIndex and Chroma."""

from mm2d_integrations.encoder import Matryoshka2DEncoder, truncate_dimensions

__all__ = ["Matryoshka2DEncoder", "truncate_dimensions"]
__version__ = "0.1.0"
