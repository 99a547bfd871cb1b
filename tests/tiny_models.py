"""Tiny randomly initialised checkpoints, saved as a user's folder would be, for the mechanics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraModel,
    GPT2Config,
    GPT2LMHeadModel,
    ModernBertConfig,
    ModernBertModel,
    MPNetConfig,
    MPNetModel,
    PreTrainedModel,
    RobertaConfig,
    RobertaModel,
)

VOCAB = 30522  # the packaged MiniLM tokenizer's vocabulary, which every tiny model reuses


def _configs() -> dict[str, object]:
    small = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=2)
    return {
        "bert": BertConfig(**small, num_hidden_layers=4, max_position_embeddings=128),
        "distilbert": DistilBertConfig(vocab_size=VOCAB, dim=32, hidden_dim=64, n_heads=2, n_layers=3),
        "modernbert": ModernBertConfig(
            **small, num_hidden_layers=4, pad_token_id=0, bos_token_id=101, eos_token_id=102,
            cls_token_id=101, sep_token_id=102, global_attn_every_n_layers=2,
        ),
        "roberta": RobertaConfig(**small, num_hidden_layers=3, max_position_embeddings=130, pad_token_id=1),
        "mpnet": MPNetConfig(**small, num_hidden_layers=3, max_position_embeddings=130),
        "electra": ElectraConfig(**small, embedding_size=16, num_hidden_layers=3, max_position_embeddings=128),
        "gpt2": GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2),
    }


MODEL_CLASSES = {
    "bert": BertModel, "distilbert": DistilBertModel, "modernbert": ModernBertModel, "roberta": RobertaModel,
    "mpnet": MPNetModel, "electra": ElectraModel, "gpt2": GPT2LMHeadModel,
}


def build_tiny_model(
    folder: Path, architecture: str, tokenizer_from: Path, *, pooling: str | None = None,
    prompts: dict[str, str] | None = None, seed: int = 0,
) -> PreTrainedModel:
    """Save a random `architecture` model (with the MiniLM tokenizer) to `folder`; return it."""
    torch.manual_seed(seed)
    model = MODEL_CLASSES[architecture](_configs()[architecture]).eval()
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    if pooling is not None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(
            json.dumps({"word_embedding_dimension": 32, f"pooling_mode_{_FLAG[pooling]}": True})
        )
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    if prompts is not None:
        (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    return model


_FLAG = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens"}


def copy_as_hub_cache(folder: Path, cache: Path, repo_id: str, commit: str = "0" * 40) -> None:
    """Lay `folder` out as the Hugging Face cache would after downloading `repo_id`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)
