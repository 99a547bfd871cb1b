"""`mm2d export`: a cut model as a folder that other tools load as is.

`sentence-transformers` format: the kept layers only (a transformers checkpoint whose config says
so), then Pooling, the exit head of the kept depth folded into one Dense module, Normalize, the
prompts and `truncate_dim`: sentence-transformers, and the serving engines that read its folders
(text-embeddings-inference, infinity), give the same vectors as this encoder. `onnx` format: one
graph from token ids to the same vectors (output `sentence_embedding`, plus `token_embeddings`),
with the tokenizer files beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mm2d_integrations.core.encoder import Matryoshka2DEncoder
from mm2d_integrations.core.exit_heads import ExitHead
from mm2d_integrations.core.folders import check_new_folder, staged_folder
from mm2d_integrations.core.options import EncoderOptions
from mm2d_integrations.core.pooling import pool
from mm2d_integrations.core.validation import check_choice

__all__ = ["EXPORT_FILE", "EXPORT_PRECISIONS", "FORMATS", "Pipeline", "affine_of_head", "export_model"]

FORMATS = ("sentence-transformers", "onnx")
# int8 that keeps quality needs per-token activation scales (int8.py), which neither a sentence-transformers
# folder nor ONNX Runtime's dynamic int8 gives (min cosine 0.97-0.99 to float32: docs/performance.md);
# load an exported folder with compute_precision="int8" instead.
EXPORT_PRECISIONS = ("float32",)
EXPORT_FILE = "mm2d_export.json"  # what was exported from what, for people and for checks

_ST_POOLING_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
_IDENTITY = "torch.nn.modules.linear.Identity"


def export_model(
    model_name_or_path: str | Path,
    out: str | Path,
    options: EncoderOptions | None = None,
    /,
    *,
    format: str = "sentence-transformers",
    precision: str = "float32",
    **overrides: Any,
) -> Path:
    """Write the model cut as `options` say (num_layers, dimensions, pooling, prompts, ...) to the new
    folder `out`, atomically; an existing non-empty `out` is refused. Returns `out`."""
    check_choice("format", format, FORMATS)
    check_choice("precision", precision, EXPORT_PRECISIONS)
    out = check_new_folder(out)
    encoder = Matryoshka2DEncoder(model_name_or_path, EncoderOptions.of(options, **{"device": "cpu", **overrides}))
    _check_one_head(encoder)
    affines = _post_pooling_affines(encoder) if format == "sentence-transformers" else []
    with staged_folder(out, "mm2d-export") as staging:
        loaded = encoder.loaded_model
        loaded.tokenizer.save_pretrained(staging)
        if format == "sentence-transformers":
            loaded.cut(encoder.num_layers).save_pretrained(staging)  # an exit layer written as the last layer
            _write_sentence_transformers_files(encoder, staging, affines)
        else:
            _write_onnx(encoder, staging / "model.onnx")
        description = {
            "format": format, "precision": precision, "source": encoder.model_name, "weights": encoder.fingerprint["weights"],
            "num_layers": encoder.num_layers, "max_layers": encoder.max_layers, "dimensions": encoder.dimensions,
            "pooling": encoder.pooling, "normalize": encoder.normalize, "max_length": encoder.max_length,
            "prompts": {"query": encoder.query_prompt, "document": encoder.document_prompt},
        }
        _write_json(staging / EXPORT_FILE, description)
    return out


def _check_one_head(encoder: Matryoshka2DEncoder) -> None:
    """One exported pipeline embeds queries and documents alike, so a depth whose queries have an exit
    head of their own (`mm2d adapt --sides per-side`) cannot be written as one."""
    if encoder.num_layers in encoder.loaded_model.exit_heads.query_heads:
        raise ValueError(
            f"model {encoder.model_name!r} has separate query and document exit heads at num_layers={encoder.num_layers}, "
            "which one exported pipeline (sentence-transformers or onnx) cannot tell apart: it would give queries the "
            "document head. Use the folder itself with this package's encoder, export another depth, or adapt the model "
            "with sides='shared'"
        )


def affine_of_head(head: ExitHead) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) with head(x) = W x + b: standardising folds into the linear map (W / scale, b - W mean / scale),
    a low-rank pair multiplies out. An mlp head is not affine: ValueError."""
    if head.kind == "mlp":
        raise ValueError(
            "the exit head of this depth is an mlp head (linear map plus GELU MLP), which no sentence-transformers "
            "Dense module expresses; export it with format='onnx', or adapt the model with method='ridge' or 'lowrank'"
        )
    layers = head.linear_layers()
    weight = torch.eye(len(head.mean), dtype=torch.float64)
    bias = torch.zeros(len(head.mean), dtype=torch.float64)
    for layer in layers:
        layer_weight = layer.weight.detach().double()
        weight = layer_weight @ weight
        bias = layer_weight @ bias + (layer.bias.detach().double() if layer.bias is not None else 0)
    weight = weight / head.scale.double()
    return weight, bias - weight @ head.mean.double()


def _post_pooling_affines(encoder: Matryoshka2DEncoder) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    """What follows pooling at the kept depth as (W, b, activation) per Dense module to write: the exit
    head, folded into the first of the checkpoint's own Dense modules when that one is linear."""
    loaded = encoder.loaded_model
    affines = []
    head = loaded.exit_heads.heads.get(encoder.num_layers)
    if head is not None:
        affines.append((*affine_of_head(head), _IDENTITY))
    for module in loaded.dense.dense_modules():
        if module.use_residual:
            raise ValueError(f"model {encoder.model_name!r} has a Dense module with a residual path, which export does not write")
        linear, activation = module.linear, type(module.activation)
        name = f"{activation.__module__}.{activation.__name__}"
        weight = linear.weight.detach().double()
        bias = linear.bias.detach().double() if linear.bias is not None else torch.zeros(len(weight), dtype=torch.float64)
        if affines and affines[-1][2] == _IDENTITY:
            previous_weight, previous_bias, _ = affines.pop()
            weight, bias = weight @ previous_weight, weight @ previous_bias + bias
        affines.append((weight, bias, name))
    return affines


def _write_json(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def _write_sentence_transformers_files(
    encoder: Matryoshka2DEncoder, folder: Path, affines: list[tuple[torch.Tensor, torch.Tensor, str]]
) -> None:
    width = encoder.max_dimensions
    modules: list[dict[str, Any]] = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]

    def add(kind: str, path: str) -> None:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": path, "type": f"sentence_transformers.models.{kind}"})

    add("Pooling", "1_Pooling")
    flags = {flag: encoder.pooling == name for name, flag in _ST_POOLING_FLAGS.items()}
    _write_json(folder / "1_Pooling" / "config.json", {"word_embedding_dimension": width, **flags, "include_prompt": True})
    for weight, bias, activation in affines:
        path = f"{len(modules)}_Dense"
        add("Dense", path)
        dense_config = {"in_features": width, "out_features": width, "bias": True, "activation_function": activation}
        _write_json(folder / path / "config.json", dense_config)
        save_file({"linear.weight": weight.float().contiguous(), "linear.bias": bias.float().contiguous()}, str(folder / path / "model.safetensors"))
    if encoder.normalize:
        add("Normalize", f"{len(modules)}_Normalize")
        (folder / modules[-1]["path"]).mkdir()
    _write_json(folder / "modules.json", modules)
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": encoder.max_length, "do_lower_case": False})
    prompts = {name: prompt for name, prompt in (("query", encoder.query_prompt), ("document", encoder.document_prompt)) if prompt}
    config: dict[str, Any] = {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    if encoder.dimensions < width:
        config["truncate_dim"] = encoder.dimensions
    _write_json(folder / "config_sentence_transformers.json", config)


class Pipeline(torch.nn.Module):
    """The whole encoder as one module, token ids -> (sentence vectors, last hidden state), for a graph export."""

    def __init__(self, encoder: Matryoshka2DEncoder) -> None:
        super().__init__()
        self.model = encoder.loaded_model.cut(encoder.num_layers)  # with the depth's exit layer, where it has one
        self.exit_heads = encoder.loaded_model.exit_heads
        self.depth, self.dimensions, self.pooling, self.normalize = encoder.num_layers, encoder.dimensions, encoder.pooling, encoder.normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        vectors = self.exit_heads.apply(self.depth, pool(hidden.float(), attention_mask, self.pooling))[:, : self.dimensions]
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=1, eps=1e-12)
        return vectors, hidden


def _write_onnx(encoder: Matryoshka2DEncoder, path: Path) -> None:
    from mm2d_integrations.core.onnx import export_graph

    export_graph(Pipeline(encoder), path, ["sentence_embedding", "token_embeddings"])
