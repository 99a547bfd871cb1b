"""What both framework adapters share: the encoder options as fields (inherited from `EncoderOptions`),
the endpoint fields, and how an adapter gets its encoder: built from those fields, or the very encoder
that `from_encoder` was given.
"""

from __future__ import annotations

import os
from typing import Any, cast

import numpy as np
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, ValidationInfo

from mm2d_integrations.core.encoder import EncoderHandle, Matryoshka2DEncoder
from mm2d_integrations.core.options import EncoderOptions
from mm2d_integrations.frameworks.compat import from_sentence_transformers
from mm2d_integrations.serving.remote import RemoteEncoder

__all__ = ["EncoderFields", "build_encoder", "from_encoder_fields", "path_to_str", "vector_lists", "wrapping"]

_ENCODER = "mm2d_encoder"  # the validation context key that carries a given encoder
_THEIR_KWARGS = ("model_kwargs", "encode_kwargs", "query_encode_kwargs")  # as HuggingFaceEmbeddings names them


class EncoderFields(EncoderOptions):
    """What both adapters are: every encoder option as a field (same name, type, default and
    description, inherited), the endpoint fields, the encoder, and the name of its space.

    The encoder is held through an `EncoderHandle`, so that an adapter pickles as its fields and the
    encoder's recipe: a process that unpickles it loads the model on first use, once.

    With `base_url` the encoder is a `RemoteEncoder` over that endpoint (mixedbread's API or `mm2d serve`)
    and `model_name` is the endpoint's model. `api_key` (default: `MXBAI_API_KEY`) goes to the remote
    encoder and the field is emptied: a secret is never pickled nor serialised.
    """

    model_config = ConfigDict(frozen=False)  # the frameworks set fields of their own after construction

    base_url: str | None = Field(default=None, description="an embedding endpoint (mixedbread's API or mm2d serve) instead of a local model")
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False, description="the endpoint's key (default: $MXBAI_API_KEY)")

    _encoder: EncoderHandle = PrivateAttr()

    @property
    def encoder(self) -> Matryoshka2DEncoder | RemoteEncoder:
        return self._encoder.get()

    @property
    def space_id(self) -> str:
        """The embedding space's short stable name (`Matryoshka2DEncoder.space_id`): namespace caches with it."""
        return self._encoder.space_id


def vector_lists(vectors: np.ndarray) -> list[list[float]]:
    """Vectors as the frameworks take them: a list of float lists."""
    return cast(list[list[float]], vectors.tolist())


def path_to_str(value: Any) -> Any:
    """Folders may be given as `Path`; adapters keep them as str (serialisable)."""
    return str(value) if isinstance(value, os.PathLike) else value


def wrapping(encoder: Matryoshka2DEncoder | RemoteEncoder) -> dict[str, Any]:
    """The validation context under which an adapter holds `encoder` instead of building one."""
    return {_ENCODER: encoder}


def from_encoder_fields(encoder: Matryoshka2DEncoder | RemoteEncoder) -> dict[str, Any]:
    """An adapter's field values that describe `encoder` (shown in repr and serialised configs)."""
    return {"model_name": encoder.model_name, **encoder.options.as_dict()}


def build_encoder(adapter: Any, info: ValidationInfo, **renamed: Any) -> EncoderHandle:
    """The encoder of an adapter being validated: the one it wraps, or one built from its option
    fields, `renamed` options (fields the framework names otherwise), `model_kwargs` and, where the
    adapter has them, `encode_kwargs` and `query_encode_kwargs` (see `compat`).

    Those dictionaries are folded into the fields and emptied, so that the adapter's fields alone
    describe its encoder and a copy rebuilds the same one.
    """
    given = (info.context or {}).get(_ENCODER)
    fields = type(adapter).model_fields
    if given is None:
        options = {name: getattr(adapter, name) for name in EncoderOptions.names() if name in fields}
        theirs = from_sentence_transformers(
            adapter.model_name, *(getattr(adapter, name) for name in _THEIR_KWARGS if name in fields),
            revision=options.get("revision"), cache_folder=options.get("cache_folder"),
        )
        twice = sorted(set(theirs) & (adapter.model_fields_set | set(renamed)))
        if twice:
            given_through = " or ".join(name for name in _THEIR_KWARGS if name in fields)
            raise ValueError(f"{', '.join(twice)} given both as field(s) and through {given_through}; give each once")
        resolved = EncoderOptions.of(**{**options, **renamed, **theirs})
        if adapter.base_url is None:
            given = Matryoshka2DEncoder(adapter.model_name, resolved)
        else:
            key = adapter.api_key.get_secret_value() if adapter.api_key is not None else None
            given = RemoteEncoder(adapter.base_url, adapter.model_name, resolved, api_key=key)
    adapter.api_key = None  # held by the remote encoder only
    for name in _THEIR_KWARGS:
        if name in fields:
            setattr(adapter, name, {})
    for name, value in given.options.as_dict().items():
        if name in type(adapter).model_fields:
            setattr(adapter, name, value)
    return EncoderHandle(given)
