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
    prompts: dict[str, str] | None = None, seed: int = 0, include_prompt: bool | None = None, config: dict | None = None,
) -> PreTrainedModel:
    """Save a random `architecture` model (with the MiniLM tokenizer) to `folder`; return it.

    `pooling`: also the sentence-transformers files (Transformer, Pooling, Normalize), the Pooling's
    `include_prompt` where given; `prompts` and `config`: config_sentence_transformers.json's content."""
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
        pooling_config = {"word_embedding_dimension": 32, f"pooling_mode_{_FLAG[pooling]}": True}
        if include_prompt is not None:
            pooling_config["include_prompt"] = include_prompt
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    if prompts is not None or config is not None:
        saved = {**({"prompts": prompts} if prompts is not None else {}), **(config or {})}
        (folder / "config_sentence_transformers.json").write_text(json.dumps(saved))
    return model


_MODULE_PATHS = {"Transformer": "", "Pooling": "1_Pooling", "Normalize": "3_Normalize"}


def set_modules(folder: Path, kinds: list[str]) -> None:
    """Write modules.json listing `kinds` (sentence-transformers module class names), in that order."""
    paths = dict(_MODULE_PATHS)
    modules = [
        {"idx": index, "name": str(index), "path": paths.get(kind, f"{index}_{kind}"), "type": f"sentence_transformers.models.{kind}"}
        for index, kind in enumerate(kinds)
    ]
    (folder / "modules.json").write_text(json.dumps(modules))


def add_dense(folder: Path, layers: list[tuple[int, int, str]], *, normalized: bool = True, seed: int = 0) -> None:
    """Save Dense modules (in, out, activation class path) as sentence-transformers does, after pooling."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    for in_features, out_features, activation in layers:
        path = f"{len(modules)}_Dense"
        (folder / path).mkdir()
        config = {"in_features": in_features, "out_features": out_features, "bias": True, "activation_function": activation}
        (folder / path / "config.json").write_text(json.dumps(config))
        linear = torch.nn.Linear(in_features, out_features)
        save_file({"linear.weight": linear.weight.detach(), "linear.bias": linear.bias.detach()}, str(folder / path / "model.safetensors"))
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": path, "type": "sentence_transformers.models.Dense"})
    if normalized:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": "normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))


_FLAG = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens"}


def copy_as_hub_cache(folder: Path, cache: Path, repo_id: str, commit: str = "0" * 40) -> None:
    """Lay `folder` out as the Hugging Face cache would after downloading `repo_id`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)
