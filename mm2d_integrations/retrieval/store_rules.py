"""Where vectors are kept by default, and Chroma's rule for collection names: shared by the Chroma
layer and the command line, and importable without chromadb, so that a bad name fails before a
model loads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_COLLECTION", "DEFAULT_PERSIST_DIR", "ClusterUnavailable", "IndexBusy", "MissingIndex", "StoreUnavailable", "check_collection_name"]

DEFAULT_PERSIST_DIR = Path(".mm2d") / "chroma"
DEFAULT_COLLECTION = "mm2d"
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


class MissingIndex(FileNotFoundError):
    """A store or collection that was asked for, to be read, does not exist (nothing is created)."""


class StoreUnavailable(ConnectionError):
    """The Chroma folder cannot be opened, or no Chroma server answers."""


class ClusterUnavailable(ConnectionError):
    """The Ray cluster named to index on (`mm2d index --ray ADDRESS`) does not answer."""


class IndexBusy(BlockingIOError):
    """Another process is writing to the same store: writes are never interleaved."""


def check_collection_name(name: Any) -> str:
    """`name` if Chroma accepts it as a collection name, else a ValueError that states the rule."""
    if not isinstance(name, str) or not _COLLECTION_NAME.fullmatch(name) or ".." in name or _IPV4.fullmatch(name):
        raise ValueError(
            "collection name must be 3-512 characters of letters, digits, '.', '_' or '-', start and end with a "
            f"letter or digit, hold no '..' and not be an IPv4 address; got {name!r}"
        )
    return name
