"""The encoder's options: the one list from which the encoder's arguments, both adapters' fields,
Chroma's stored configuration and the command line's flags are derived.

Adding an option means one field here plus its use in the encoder.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from typing import Any

__all__ = ["EncoderOptions", "OptionSpec", "option_specs"]


def _option(default: Any, help: str, *, aliases: tuple[str, ...] = (), restored: bool = True) -> Any:
    """A field with what the adapters and the command line show of it.

    `aliases`: further command-line flags beside `--name-with-dashes`; `restored`: whether a stored
    configuration (Chroma's) may set it when it rebuilds an encoder (never for options that let
    untrusted files run code, nor for folders of the machine that stored it).
    """
    return dataclasses.field(default=default, metadata={"help": help, "aliases": aliases, "restored": restored})


@dataclass(frozen=True)
class EncoderOptions:
    """How a checkpoint is cut and run. None means: as the checkpoint says, or the best available."""

    num_layers: int | None = _option(None, "transformer layers to keep (default: all)", aliases=("--layers",))
    dimensions: int | None = _option(
        None, "leading dimensions to keep, re-normalised (default: all)", aliases=("--dims",)
    )
    query_num_layers: int | None = _option(
        None,
        "transformer layers for queries, documents keeping num_layers; only between depths that share one "
        "embedding space, such as those of a model adapted by mm2d adapt (default: num_layers)",
        aliases=("--query-layers",),
    )
    pooling: str | None = _option(None, "cls, mean, max, mean_sqrt_len_tokens or lasttoken (default: the model's)")
    normalize: bool = _option(True, "L2-normalise the vectors, cut or not (off: as the checkpoint's pipeline leaves them)")
    query_prompt: str | None = _option(None, "text put before each query (default: the model's)")
    document_prompt: str | None = _option(None, "text put before each document (default: the model's)")
    max_length: int | None = _option(
        None, "tokens per text, prompt included, at most what the model's positions take; longer texts are truncated (default: the model's)"
    )
    batch_size: int = _option(32, "texts per forward pass at most")
    max_batch_tokens: int | None = _option(None, "padded tokens per forward pass at most (default: 128 x batch_size)")
    device: str | None = _option(None, "cpu, cuda, cuda:1, mps (default: the best available)")
    dtype: str | None = _option(None, "weights in float32 (default), bfloat16 or float16")
    compute_precision: str = _option(
        "float32", "float32 (exact), bf16 (bfloat16 products: about 2x faster on CPUs with native bf16) or int8 (int8 linear "
        "layers on the cpu, calibrated once per process); not an output format"
    )
    backend: str = _option(
        "torch", "torch, or onnx: ONNX Runtime over the cut model (exported once per model and depth, cached on disk; "
        "the faster float32 on CPUs without bfloat16)"
    )
    revision: str | None = _option(None, "hub revision (branch, tag or commit) of a hub id")
    cache_folder: str | None = _option(None, "folder that hub downloads are cached in (default: the Hugging Face cache)", restored=False)
    trust_remote_code: bool = _option(False, "run the checkpoint's own Python code (auto_map)", restored=False)
    allow_pickle: bool = _option(False, "load pickle weights (*.bin), which can run code", restored=False)
    show_progress: bool = _option(
        False, "show progress bars: loading the model, and encoding many texts", aliases=("--verbose",), restored=False
    )

    def __post_init__(self) -> None:
        # torch.device, torch.dtype and Path are accepted and kept as str, so options stay plain data.
        if self.device is not None and not isinstance(self.device, str):
            object.__setattr__(self, "device", str(self.device))
        if self.dtype is not None and not isinstance(self.dtype, str):
            object.__setattr__(self, "dtype", str(self.dtype).removeprefix("torch."))
        if isinstance(self.cache_folder, os.PathLike):
            object.__setattr__(self, "cache_folder", os.fspath(self.cache_folder))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(spec.name for spec in option_specs())

    @classmethod
    def of(cls, options: EncoderOptions | None = None, /, **overrides: Any) -> EncoderOptions:
        """`options` (default: all defaults) with `overrides`; an unknown name is a TypeError listing the valid ones."""
        unknown = sorted(set(overrides) - set(cls.names()))
        if unknown:
            raise TypeError(f"unknown encoder option(s) {', '.join(unknown)}; valid: {', '.join(cls.names())}")
        return dataclasses.replace(options or cls(), **overrides)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_config(self) -> dict[str, Any]:
        """The options a stored configuration keeps: every one but those that let files run code
        (and progress bars, which are the caller's choice, not the collection's)."""
        return {spec.name: getattr(self, spec.name) for spec in option_specs() if spec.restored}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EncoderOptions:
        """The restorable options found in `config` (other keys, such as a fingerprint's, are ignored)."""
        return cls(**{spec.name: config[spec.name] for spec in option_specs() if spec.restored and spec.name in config})


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
    hints = typing.get_type_hints(EncoderOptions)
    return tuple(
        OptionSpec(
            field.name, hints[field.name], _kind(hints[field.name]), field.default,
            field.metadata["help"], field.metadata["aliases"], field.metadata["restored"],
        )
        for field in dataclasses.fields(EncoderOptions)
    )


def _kind(annotation: Any) -> type:
    """`int | None` -> int: the one concrete type of an optional field."""
    concrete = [arg for arg in typing.get_args(annotation) if arg is not type(None)] or [annotation]
    return concrete[0]
