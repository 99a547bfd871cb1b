"""The encoder's options: the one list from which the encoder's arguments, both adapters' fields,
Chroma's stored configuration and the command line's flags are derived.

Adding an option means one field here plus its use in the encoder.
"""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["EncoderOptions", "OptionSpec", "option_specs"]

# Further command-line flags beside `--name-with-dashes`.
FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "num_layers": ("--layers",), "dimensions": ("--dims",), "query_num_layers": ("--query-layers",), "show_progress": ("--verbose",),
}
# Options a stored configuration (Chroma's) never sets when it rebuilds an encoder: those that let untrusted
# files run code, folders of the machine that stored it, and progress bars (the caller's choice).
NOT_RESTORED = frozenset({"cache_folder", "trust_remote_code", "allow_pickle", "show_progress"})


class EncoderOptions(BaseModel):
    """How a checkpoint is cut and run. None means: as the checkpoint says, or the best available.

    A pydantic model, so that both adapters inherit these fields as they are written here (editors and
    type checkers see them). Values are checked by the encoder, against the model's own limits
    (`num_layers` in [1, the model's layers], ...), not here: `EncoderOptions.of` builds without
    pydantic's coercion, so `num_layers="3"` reaches the encoder and is refused there, by name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    num_layers: int | None = Field(None, description="transformer layers to keep (default: all)")
    dimensions: int | None = Field(None, description="leading dimensions to keep, re-normalised (default: all)")
    query_num_layers: int | None = Field(
        None,
        description="transformer layers for queries, documents keeping num_layers; only between depths that share one "
        "embedding space, such as those of a model adapted by mm2d adapt (default: num_layers)",
    )
    pooling: str | None = Field(None, description="cls, mean, max, mean_sqrt_len_tokens or lasttoken (default: the model's)")
    normalize: bool = Field(True, description="L2-normalise the vectors, cut or not (off: as the checkpoint's pipeline leaves them)")
    query_prompt: str | None = Field(None, description="text put before each query (default: the model's)")
    document_prompt: str | None = Field(None, description="text put before each document (default: the model's)")
    max_length: int | None = Field(
        None, description="tokens per text, prompt included, at most what the model's positions take; longer texts are truncated (default: the model's)"
    )
    batch_size: int = Field(32, description="texts per forward pass at most")
    max_batch_tokens: int | None = Field(None, description="padded tokens per forward pass at most (default: 128 x batch_size)")
    device: str | None = Field(None, description="cpu, cuda, cuda:1, mps (default: the best available)")
    dtype: str | None = Field(None, description="weights in float32 (default), bfloat16 or float16")
    compute_precision: str = Field(
        "float32",
        description="float32 (exact), bf16 (bfloat16 products: about 2x faster on CPUs with native bf16) or int8 (int8 linear "
        "layers on the cpu, calibrated once per process); not an output format",
    )
    backend: str = Field(
        "torch",
        description="torch, or onnx: ONNX Runtime over the cut model (exported once per model and depth, cached on disk; "
        "the faster float32 on CPUs without bfloat16)",
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) of a hub id")
    cache_folder: str | None = Field(None, description="folder that hub downloads are cached in (default: the Hugging Face cache)")
    trust_remote_code: bool = Field(False, description="run the checkpoint's own Python code (auto_map)")
    allow_pickle: bool = Field(False, description="load pickle weights (*.bin), which can run code")
    show_progress: bool = Field(False, description="show progress bars: loading the model, and encoding many texts")

    @model_validator(mode="before")
    @classmethod
    def _plain(cls, data: Any) -> Any:
        return _plain_values(data) if isinstance(data, dict) else data

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(EncoderOptions.model_fields)

    @classmethod
    def of(cls, options: EncoderOptions | None = None, /, **overrides: Any) -> EncoderOptions:
        """`options` (default: all defaults) with `overrides`; an unknown name is a TypeError listing the valid ones."""
        names = EncoderOptions.names()
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise TypeError(f"unknown encoder option(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        base = {name: getattr(options, name) for name in names} if options is not None else _DEFAULTS
        return EncoderOptions.model_construct(**_plain_values({**base, **overrides}))

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in EncoderOptions.names()}

    def to_config(self) -> dict[str, Any]:
        """The options a stored configuration keeps: every one but `NOT_RESTORED`."""
        return {name: getattr(self, name) for name in EncoderOptions.names() if name not in NOT_RESTORED}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EncoderOptions:
        """The restorable options found in `config` (other keys, such as a fingerprint's, are ignored)."""
        return EncoderOptions.of(**{name: config[name] for name in EncoderOptions.names() if name not in NOT_RESTORED and name in config})


def _plain_values(values: dict[str, Any]) -> dict[str, Any]:
    """torch.device, torch.dtype and Path are accepted and kept as str, so options stay plain data."""
    plain = dict(values)
    if plain.get("device") is not None and not isinstance(plain["device"], str):
        plain["device"] = str(plain["device"])
    if plain.get("dtype") is not None and not isinstance(plain["dtype"], str):
        plain["dtype"] = str(plain["dtype"]).removeprefix("torch.")
    if isinstance(plain.get("cache_folder"), os.PathLike):
        plain["cache_folder"] = os.fspath(plain["cache_folder"])
    return plain


_DEFAULTS = EncoderOptions().as_dict()


@dataclass(frozen=True)
class OptionSpec:
    """One option as the adapters and the command line present it."""

    name: str
    annotation: Any  # the field's type, e.g. `int | None`
    kind: type  # int, str or bool: what a command-line value is parsed as
    default: Any
    help: str
    aliases: tuple[str, ...]
    restored: bool

    @property
    def flags(self) -> tuple[str, ...]:
        return ("--" + self.name.replace("_", "-"), *self.aliases)


def option_specs() -> tuple[OptionSpec, ...]:
    return tuple(
        OptionSpec(
            name, field.annotation, _kind(field.annotation), field.default, field.description or "",
            FLAG_ALIASES.get(name, ()), name not in NOT_RESTORED,
        )
        for name, field in EncoderOptions.model_fields.items()
    )


def _kind(annotation: Any) -> type:
    """`int | None` -> int: the one concrete type of an optional field."""
    concrete = [arg for arg in typing.get_args(annotation) if arg is not type(None)] or [annotation]
    return typing.cast(type, concrete[0])
