"""Exit heads: small maps from the pooled state of a shallow layer into the full model's space.

A model folder made by `mm2d adapt` holds them beside the untouched base weights, in
`mm2d_exit_heads.safetensors` (tensors) and `mm2d_exit_heads.json` (what each head is). The
encoder applies the head of its depth right after pooling; full depth never has one, so its
vectors stay bit-identical to the base model's. The heads file is a `*.safetensors` of the folder,
so it is part of the weights hash of the encoder's fingerprint: adapted and plain vectors never
share a Chroma collection.

A depth may have two heads, one for each side (`mm2d adapt --sides per-side`): the document head under
`heads`, the query head under `query_heads` (tensors `q<depth>.*`). Such a folder is written as format
`mm2d-exit-heads/2`, so that a reader that knows only one head per depth refuses it instead of giving
queries the document head; a folder with one head per depth stays `mm2d-exit-heads/1`.

A depth may also have an **exit layer** (`mm2d adapt --exit-layers`, by default at the middle depth): a
retrained layer (started as the model's last, by default) that runs instead of that depth's last
transformer layer when the model is cut there, built as a copy of that layer given its own weights
(tensors `layer<depth>.*`, described under `layers`). The base layers stay as they were, so full depth and every depth without an
exit layer give what they gave before. Such a folder is written as format `mm2d-exit-heads/3`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file, save

from mm2d_integrations.core.source import ModelSource
from mm2d_integrations.core.validation import check_choice

__all__ = ["FORMAT", "FORMAT_LAYERS", "FORMAT_PER_SIDE", "HEADS_CONFIG", "HEADS_FILE", "KINDS", "SIDES", "ExitHead", "ExitHeads", "read_exit_heads", "save_exit_heads"]

HEADS_FILE = "mm2d_exit_heads.safetensors"
HEADS_CONFIG = "mm2d_exit_heads.json"
FORMAT = "mm2d-exit-heads/1"
FORMAT_PER_SIDE = "mm2d-exit-heads/2"  # some depth has a query head of its own
FORMAT_LAYERS = "mm2d-exit-heads/3"  # some depth has an exit layer
SIDES = ("document", "query")
KINDS = ("linear", "lowrank", "mlp")


class ExitHead(torch.nn.Module):
    """Standardise the pooled vector, then a linear map, a low-rank map, or a linear map plus an MLP."""

    # Declared for type checkers: torch types what a module registers as `Tensor | Module`.
    mean: torch.Tensor  # buffers
    scale: torch.Tensor
    linear: torch.nn.Linear | torch.nn.Sequential  # a low-rank head's two factors in a Sequential
    mlp: torch.nn.Sequential

    def __init__(self, kind: str, width: int, inner: int = 0) -> None:
        super().__init__()
        check_choice("exit head kind", kind, KINDS)
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

    def linear_layers(self) -> list[torch.nn.Linear]:
        """The linear map as its layers, applied in order: the one map, or a low-rank head's two factors."""
        return [cast(torch.nn.Linear, layer) for layer in self.linear] if isinstance(self.linear, torch.nn.Sequential) else [self.linear]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "inner": self.inner}


@dataclass(frozen=True)
class ExitHeads:
    """The exit heads of a model folder by depth (none for a plain model), and what they expect."""

    heads: dict[int, ExitHead] = field(default_factory=dict)  # documents' (and queries', unless below)
    pooling: str | None = None
    query_heads: dict[int, ExitHead] = field(default_factory=dict)  # queries' own, where learned apart
    layers: dict[int, torch.nn.Module] = field(default_factory=dict)  # depth -> the layer that runs instead of its last

    def head(self, depth: int, side: str = "document") -> ExitHead | None:
        """The head that maps `side`'s pooled vectors at `depth`: a query head of its own, else the shared one."""
        check_choice("side", side, SIDES)
        return (self.query_heads.get(depth) if side == "query" else None) or self.heads.get(depth)

    def apply(self, depth: int, pooled: torch.Tensor, side: str = "document") -> torch.Tensor:
        """The head of `depth` for `side` applied to pooled vectors; a depth without a head is left as it is."""
        head = self.head(depth, side)
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


def save_exit_heads(
    folder: Path, heads: dict[int, ExitHead], description: dict[str, Any], query_heads: dict[int, ExitHead] | None = None,
    layers: dict[int, torch.nn.Module] | None = None,
) -> None:
    """Write the heads (and the query heads of their own, and the exit layers) and their description
    (`description` gains each head's kind and width)."""
    query_heads, layers = query_heads or {}, layers or {}
    if set(layers) - set(heads):
        raise ValueError(f"exit layers at depths {sorted(set(layers) - set(heads))} without an exit head")
    tensors = {
        f"{prefix}{depth}.{name}": tensor.detach().float().cpu().contiguous()
        for prefix, by_depth in (("", heads), ("q", query_heads), ("layer", layers))
        for depth, head in by_depth.items()
        for name, tensor in head.state_dict().items()
    }
    (folder / HEADS_FILE).write_bytes(save(tensors))
    config = {"format": FORMAT_LAYERS if layers else FORMAT_PER_SIDE if query_heads else FORMAT, **description}
    config["heads"] = {str(depth): {**heads[depth].describe(), **config.get("heads", {}).get(str(depth), {})} for depth in heads}
    if query_heads:
        config["query_heads"] = {str(depth): head.describe() for depth, head in query_heads.items()}
    if layers:
        config["layers"] = {str(depth): {"replaces": depth} for depth in layers}
    (folder / HEADS_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def read_exit_heads(source: ModelSource, max_layers: int, width: int, device: torch.device, base_layers: torch.nn.ModuleList | None = None) -> ExitHeads:
    """The heads of a model folder, or no heads when it has no heads file. Exit layers are built as
    copies of `base_layers` (the loaded ones: a depth deeper than those never runs) given their weights."""
    config_path = source.file(HEADS_CONFIG)
    if config_path is None:
        return ExitHeads()
    tensors_path = source.file(HEADS_FILE)
    if tensors_path is None:
        raise FileNotFoundError(f"model {source.name!r} has {HEADS_CONFIG} but no {HEADS_FILE}")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("format") not in (FORMAT, FORMAT_PER_SIDE, FORMAT_LAYERS):
        raise ValueError(
            f"model {source.name!r}: {HEADS_CONFIG} has format {config.get('format')!r}, expected {FORMAT!r}, {FORMAT_PER_SIDE!r} or {FORMAT_LAYERS!r}"
        )
    tensors = load_file(str(tensors_path))
    heads = _read_heads(source.name, config.get("heads", {}), tensors, "", max_layers, width, device)
    query_heads = _read_heads(source.name, config.get("query_heads", {}), tensors, "q", max_layers, width, device)
    if set(query_heads) - set(heads):
        raise ValueError(f"model {source.name!r}: query exit heads at depths {sorted(set(query_heads) - set(heads))} without a document head")
    layers = _read_layers(source.name, config.get("layers", {}), tensors, base_layers, max_layers)
    if set(layers) - set(heads):
        raise ValueError(f"model {source.name!r}: exit layers at depths {sorted(set(layers) - set(heads))} without an exit head")
    return ExitHeads(heads, config.get("pooling"), query_heads, layers)


def _read_layers(
    name: str, entries: dict[str, Any], tensors: dict[str, torch.Tensor], base_layers: torch.nn.ModuleList | None, max_layers: int
) -> dict[int, torch.nn.Module]:
    """Each exit layer: a copy of the base layer it replaces (so the architecture's own class, dtype and
    device), with its own weights."""
    layers: dict[int, torch.nn.Module] = {}
    for key in entries:
        depth = int(key)
        if not 1 <= depth < max_layers:
            raise ValueError(f"model {name!r}: exit layer for depth {depth}, outside [1, {max_layers - 1}]")
        if base_layers is None or depth > len(base_layers):
            continue  # loaded shallower: this depth never runs
        layer = copy.deepcopy(base_layers[depth - 1])
        own = {tensor.removeprefix(f"layer{key}."): value for tensor, value in tensors.items() if tensor.startswith(f"layer{key}.")}
        try:
            layer.load_state_dict(own)
        except RuntimeError as error:
            raise ValueError(f"model {name!r}: {HEADS_FILE} does not match {HEADS_CONFIG} at exit layer {depth}: {error}") from None
        layers[depth] = layer.eval().requires_grad_(False)
    return layers


def _read_heads(
    name: str, entries: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str, max_layers: int, width: int, device: torch.device
) -> dict[int, ExitHead]:
    """The heads described by `entries` (depth -> kind), their tensors named `<prefix><depth>.*`."""
    heads = {}
    for key, entry in entries.items():
        depth = int(key)
        if not 1 <= depth < max_layers:
            raise ValueError(f"model {name!r}: exit head for depth {depth}, outside [1, {max_layers - 1}]")
        head = ExitHead(entry.get("kind"), width, int(entry.get("inner", 0)))
        own = {tensor.removeprefix(f"{prefix}{key}."): value for tensor, value in tensors.items() if tensor.startswith(f"{prefix}{key}.")}
        try:
            head.load_state_dict(own)
        except RuntimeError as error:
            raise ValueError(f"model {name!r}: {HEADS_FILE} does not match {HEADS_CONFIG} at depth {depth}: {error}") from None
        heads[depth] = head.to(device).eval().requires_grad_(False)  # inference only (and constants in a graph export)
    return heads

