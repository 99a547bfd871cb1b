"""Exit heads: small maps from the pooled state of a shallow layer into the full model's space.

A model folder made by `mm2d adapt` holds them beside the untouched base weights, in
`mm2d_exit_heads.safetensors` (tensors) and `mm2d_exit_heads.json` (what each head is). The
encoder applies the head of its depth right after pooling; full depth never has one, so its
vectors stay bit-identical to the base model's. The heads file is a `*.safetensors` of the folder,
so it is part of the weights hash of the encoder's fingerprint: adapted and plain vectors never
share a Chroma collection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from mm2d_integrations.source import ModelSource

__all__ = ["FORMAT", "HEADS_CONFIG", "HEADS_FILE", "KINDS", "ExitHead", "ExitHeads", "read_exit_heads", "save_exit_heads"]

HEADS_FILE = "mm2d_exit_heads.safetensors"
HEADS_CONFIG = "mm2d_exit_heads.json"
FORMAT = "mm2d-exit-heads/1"
KINDS = ("linear", "lowrank", "mlp")


class ExitHead(torch.nn.Module):
    """Standardise the pooled vector, then a linear map, a low-rank map, or a linear map plus an MLP."""

    def __init__(self, kind: str, width: int, inner: int = 0) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"exit head kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind != "linear" and inner < 1:
            raise ValueError(f"a {kind} exit head needs an inner width >= 1, got {inner!r}")
        self.kind, self.inner = kind, inner if kind != "linear" else 0
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        if kind == "lowrank":
            self.linear = torch.nn.Sequential(torch.nn.Linear(width, inner, bias=False), torch.nn.Linear(inner, width))
        else:
            self.linear = torch.nn.Linear(width, width)
        if kind == "mlp":
            self.mlp = torch.nn.Sequential(torch.nn.Linear(width, inner), torch.nn.GELU(), torch.nn.Linear(inner, width))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        standard = (pooled - self.mean) / self.scale
        mapped = self.linear(standard)
        return mapped + self.mlp(standard) if self.kind == "mlp" else mapped

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "inner": self.inner}


@dataclass(frozen=True)
class ExitHeads:
    """The exit heads of a model folder by depth (none for a plain model), and what they expect."""

    heads: dict[int, ExitHead] = field(default_factory=dict)
    pooling: str | None = None

    def apply(self, depth: int, pooled: torch.Tensor) -> torch.Tensor:
        """The head of `depth` applied to pooled vectors; a depth without a head is left as it is."""
        head = self.heads.get(depth)
        if head is None:
            return pooled
        return head(pooled.to(head.mean.dtype))

    def check_pooling(self, pooling: str) -> None:
        """Heads are learned on one pooling; another gives vectors they were never trained on."""
        if self.heads and pooling != self.pooling:
            raise ValueError(
                f"this model's exit heads were learned with pooling {self.pooling!r}, not {pooling!r}; "
                "leave pooling unset or adapt the model again with that pooling"
            )


def save_exit_heads(folder: Path, heads: dict[int, ExitHead], description: dict[str, Any]) -> None:
    """Write the heads and their description (`description` gains each head's kind and width)."""
    tensors = {
        f"{depth}.{name}": tensor.detach().float().cpu().contiguous()
        for depth, head in heads.items()
        for name, tensor in head.state_dict().items()
    }
    (folder / HEADS_FILE).write_bytes(save(tensors))
    config = {"format": FORMAT, **description}
    config["heads"] = {str(depth): {**heads[depth].describe(), **config.get("heads", {}).get(str(depth), {})} for depth in heads}
    (folder / HEADS_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def read_exit_heads(source: ModelSource, max_layers: int, width: int, device: torch.device) -> ExitHeads:
    """The heads of a model folder, or no heads when it has no heads file."""
    config_path = source.file(HEADS_CONFIG)
    if config_path is None:
        return ExitHeads()
    tensors_path = source.file(HEADS_FILE)
    if tensors_path is None:
        raise FileNotFoundError(f"model {source.name!r} has {HEADS_CONFIG} but no {HEADS_FILE}")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("format") != FORMAT:
        raise ValueError(f"model {source.name!r}: {HEADS_CONFIG} has format {config.get('format')!r}, expected {FORMAT!r}")
    tensors = load_file(str(tensors_path))
    heads = {}
    for key, entry in config.get("heads", {}).items():
        depth = int(key)
        if not 1 <= depth < max_layers:
            raise ValueError(f"model {source.name!r}: exit head for depth {depth}, outside [1, {max_layers - 1}]")
        head = ExitHead(entry.get("kind"), width, int(entry.get("inner", 0)))
        own = {name.removeprefix(f"{key}."): value for name, value in tensors.items() if name.startswith(f"{key}.")}
        try:
            head.load_state_dict(own)
        except RuntimeError as error:
            raise ValueError(f"model {source.name!r}: {HEADS_FILE} does not match {HEADS_CONFIG} at depth {depth}: {error}") from None
        heads[depth] = head.to(device).eval().requires_grad_(False)  # inference only (and constants in a graph export)
    return ExitHeads(heads, config.get("pooling"))

