"""sentence-transformers' Dense modules: linear maps (with an activation) applied after pooling.

A checkpoint saves each in a folder named by modules.json (`2_Dense/`), as `config.json` (in/out
features, bias, activation function, residual) beside its weights. The encoder applies them to the
pooled vector of every depth, after the exit head of that depth: exit heads map a shallow pooled state
into the full model's pooled space, which is what the Dense modules were trained on.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import load_file

from mm2d_integrations.core.source import ModelSource

__all__ = ["DenseModule", "DenseStack", "read_dense_stack"]

_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class DenseModule(torch.nn.Module):
    """One Dense module: activation(linear(x)), plus a residual path where its configuration asks for one."""

    def __init__(self, in_features: int, out_features: int, bias: bool, activation: torch.nn.Module, use_residual: bool) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(in_features, out_features, bias=bias)
        self.activation = activation
        self.use_residual = use_residual
        if use_residual and in_features != out_features:
            self.residual = torch.nn.Linear(in_features, out_features, bias=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.linear(pooled))
        if self.use_residual:
            out = out + (self.residual(pooled) if hasattr(self, "residual") else pooled)
        return out


class DenseStack(torch.nn.Sequential):
    """The checkpoint's Dense modules in order (none for most models)."""

    def dense_modules(self) -> list[DenseModule]:
        """The modules, typed (`read_dense_stack` puts only DenseModules in the stack)."""
        return [cast(DenseModule, module) for module in self]

    @property
    def out_features(self) -> int | None:
        return self.dense_modules()[-1].linear.out_features if len(self) else None

    def weights_id(self) -> str:
        """A hash of the modules' tensors and activations: part of the embedding space's weights id."""
        digest = hashlib.sha256()
        for module in self.dense_modules():
            digest.update(type(module.activation).__name__.encode() + bytes([module.use_residual]))
            for name, tensor in sorted(module.state_dict().items()):
                digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]


def _activation(name: str | None, model: str) -> torch.nn.Module:
    """A torch.nn activation by its class path; other code named by a checkpoint is never imported."""
    if name is None:
        return torch.nn.Tanh()  # sentence-transformers' default
    module_name, _, class_name = name.rpartition(".")
    found = getattr(importlib.import_module(module_name), class_name, None) if module_name.startswith("torch.nn") else None
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        raise ValueError(f"model {model!r}: Dense activation_function {name!r} is not a torch.nn module class")
    return found()


def read_dense_stack(
    source: ModelSource, folders: tuple[str, ...], width: int, device: torch.device, allow_pickle: bool
) -> DenseStack:
    """The Dense modules saved in `folders` of the checkpoint, on `device`, in float32; the first
    takes vectors of `width` (the hidden size), each next one the previous one's output."""
    modules = []
    for folder in folders:
        config = source.json(f"{folder}/config.json")
        if config is None:
            raise FileNotFoundError(f"model {source.name!r} lists a Dense module in {folder!r} without its config.json")
        if config.get("module_input_name", "sentence_embedding") != "sentence_embedding" or config.get(
            "module_output_name", "sentence_embedding"
        ) not in (None, "sentence_embedding"):
            raise ValueError(f"model {source.name!r}: the Dense module in {folder!r} maps other features than the sentence embedding")
        if int(config["in_features"]) != width:
            raise ValueError(f"model {source.name!r}: the Dense module in {folder!r} takes {config['in_features']} features, not {width}")
        module = DenseModule(
            int(config["in_features"]), int(config["out_features"]), bool(config.get("bias", True)),
            _activation(config.get("activation_function"), source.name), bool(config.get("use_residual", False)),
        )
        module.load_state_dict(_dense_weights(source, folder, allow_pickle), strict=True)
        modules.append(module)
        width = module.linear.out_features
    return DenseStack(*modules).to(device).eval()


def _dense_weights(source: ModelSource, folder: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    for filename in _WEIGHTS:
        path: Path | None = source.file(f"{folder}/{filename}")
        if path is None:
            continue
        if filename.endswith(".safetensors"):
            return load_file(str(path))
        if not allow_pickle:
            raise ValueError(
                f"model {source.name!r}: the Dense module in {folder!r} has only pickle weights ({filename}), which "
                "can run code when loaded; pass allow_pickle=True if you trust them"
            )
        return torch.load(path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"model {source.name!r}: the Dense module in {folder!r} has no weights ({' or '.join(_WEIGHTS)})")
