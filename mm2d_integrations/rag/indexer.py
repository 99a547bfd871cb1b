"""Incremental, restartable indexing of a folder into a Chroma collection."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import tenacity
from tqdm import tqdm

from mm2d_integrations.chroma import FunnelIndex, stored_ids
from mm2d_integrations.retrieval.documents import (
    Chunking,
    LoadedFolder,
    SourceDocument,
    from_framework_documents,
    load_folder,
    split_documents,
)
from mm2d_integrations.retrieval.store_rules import StoreUnavailable

__all__ = [
    "BATCH", "WRITE_BACKOFF_S", "WRITE_TRIES", "DocumentsInput", "IndexReport", "exactly_by_default", "held_ids", "index_folder",
    "read_input", "remove_stale", "source_of", "stored_ids", "write_chunks",
]

# A folder, a folder already read, or documents: ours, LangChain's or LlamaIndex's.
DocumentsInput = str | Path | LoadedFolder | Sequence[Any]

BATCH = 64
WRITE_TRIES = 6
WRITE_BACKOFF_S = 0.5
"""A write that loses the Chroma server is tried WRITE_TRIES times, waiting 0.5, 1, 2, 4, 8 s between tries."""

T = TypeVar("T")


@dataclass
class IndexReport:
    files: int = 0
    chunks: int = 0
    added: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        text = (
            f"{self.files} files, {self.chunks} chunks: {self.added} embedded and added, "
            f"{self.removed} removed, {self.unchanged} unchanged"
        )
        return text + "".join(f"\nskipped {path}: {why}" for path, why in self.skipped)


def held_ids(collection: Any, wanted: Collection[str] | None = None) -> tuple[set[str], set[str]]:
    """(ids every part holds, ids any holds): a run killed between the writes of a `FunnelIndex`'s
    parts leaves ids in some only. Those the full collection holds (of `wanted`, default all) are first
    restored to the other parts from its stored vectors (`FunnelIndex.restore_from_full`); the rest are
    to be written again or deleted."""
    if not isinstance(collection, FunnelIndex):
        ids = stored_ids(collection)
        return ids, ids
    held = collection.held_ids()
    restored = _retried(lambda: collection.restore_from_full(held, wanted), "restoring the funnel's parts")
    held = [part | restored for part in held]
    return set.intersection(*held), set.union(*held)


def _retried(write: Callable[[], T], what: str) -> T:
    """`write()`, tried again with exponential backoff (tenacity) while the Chroma server cannot be
    reached (a restart, a network blip); after WRITE_TRIES a `StoreUnavailable`. Writes are upserts and
    deletes by id, so a try that reached the server before the connection broke is harmless to repeat."""
    lost = (httpx.TransportError, ConnectionError)
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(WRITE_TRIES),
        wait=tenacity.wait_exponential(multiplier=WRITE_BACKOFF_S),
        retry=tenacity.retry_if_exception_type(lost),
        reraise=True,
    )
    try:
        return retrying(write)
    except lost as error:
        raise StoreUnavailable(
            f"the Chroma server stopped answering while {what} ({type(error).__name__}: {error}; "
            f"{WRITE_TRIES} tries over {WRITE_BACKOFF_S * (2 ** (WRITE_TRIES - 1) - 1):.1f} s); what was written is kept: "
            "run the same command again once it is back to complete the work"
        ) from error


def write_chunks(
    collection: Any, ids: Sequence[str], documents: Sequence[str], metadatas: Sequence[dict[str, Any]], vectors: np.ndarray | None = None
) -> None:
    """Upsert one batch of chunks into a collection or a `FunnelIndex` (both of its collections), embedded
    there unless their `vectors` are given; retried while the server is away (`_retried`)."""
    if isinstance(collection, FunnelIndex):
        _retried(lambda: collection.upsert(ids, documents, metadatas, vectors), "writing chunks")
    else:
        given = {} if vectors is None else {"embeddings": vectors}
        _retried(lambda: collection.upsert(ids=list(ids), documents=list(documents), metadatas=list(metadatas), **given), "writing chunks")


def remove_stale(collection: Any, existing: set[str], wanted: Collection[str], sources: Collection[str] | None) -> int:
    """Delete the held chunks (`existing`) that are not `wanted`: all of them (`sources` None: the collection
    holds exactly what was indexed), or only those of the indexed `sources`. Records whose ids are not chunk
    ids (those of a collection built elsewhere and adopted) are never deleted. Returns how many went."""
    stale = sorted(
        chunk_id for chunk_id in existing - set(wanted)
        if _CHUNK_ID.fullmatch(chunk_id) and (sources is None or source_of(chunk_id) in sources)
    )
    for start in range(0, len(stale), 5000):
        _retried(functools.partial(collection.delete, ids=stale[start : start + 5000]), "deleting stale chunks")
    return len(stale)


def read_input(documents: DocumentsInput) -> LoadedFolder:
    """A folder read, or documents (ours, LangChain's or LlamaIndex's) as ours."""
    if isinstance(documents, LoadedFolder):
        return documents
    if isinstance(documents, (str, Path)):
        return load_folder(documents)
    given = list(documents)
    if all(isinstance(document, SourceDocument) for document in given):
        return LoadedFolder(given)
    return LoadedFolder(from_framework_documents(given))


def exactly_by_default(documents: DocumentsInput) -> bool:
    """A folder is indexed exactly (its removed files' chunks go); a list of documents adds to the index."""
    return isinstance(documents, (str, Path, LoadedFolder))


_CHUNK_ID = re.compile(r".+#[0-9]+#[0-9a-f]+")  # documents.chunk_id's form: source#index#content hash


def source_of(chunk_id: str) -> str:
    """The source part of a chunk id (`source#index#hash`)."""
    return chunk_id.rsplit("#", 2)[0]


def index_folder(
    documents: DocumentsInput,
    collection: Any,
    *,
    chunking: Chunking | None = None,
    exactly: bool | None = None,
    show_progress: bool = False,
) -> IndexReport:
    """Make `collection` hold the chunks of `documents`, embedding only chunks it lacks.

    `documents`: a folder (or one read by `load_folder`), or a list of documents: ours
    (`SourceDocument`), LangChain's or LlamaIndex's, whose metadata each chunk keeps.
    `collection`: a Chroma collection, or a `FunnelIndex`, whose parts (two collections and, embedded, the
    vector rows) are kept in sync (a chunk any lacks is embedded once and written to all).
    `chunking`: how documents are cut (default: 800 characters; `index` cuts by the model's tokens).
    `exactly`: the collection then holds exactly these documents, every other source's chunks removed;
    else only the given sources' stale chunks are. Default: exactly a folder; documents given as a
    list add to (or replace their own source's chunks in) what is held, as a loader may give one file.
    New chunks are written before stale ones are deleted, and ids are derived from content, so an
    interrupted run leaves no duplicates and the next run completes it.
    """
    loaded = read_input(documents)
    exactly = exactly_by_default(documents) if exactly is None else exactly
    chunks = split_documents(loaded.documents, chunking)
    wanted = {chunk.id for chunk in chunks}
    complete, existing = held_ids(collection, wanted)
    sources = {document.source for document in loaded.documents}
    missing = [chunk for chunk in chunks if chunk.id not in complete]
    with tqdm(total=len(missing), desc="indexing", unit="chunk", disable=not show_progress) as progress:
        for start in range(0, len(missing), BATCH):
            batch = missing[start : start + BATCH]
            write_chunks(collection, [chunk.id for chunk in batch], [chunk.text for chunk in batch], [chunk.metadata for chunk in batch])
            progress.update(len(batch))
    removed = remove_stale(collection, existing, wanted, None if exactly else sources)
    return IndexReport(
        files=len(loaded.documents),
        chunks=len(chunks),
        added=len(missing),
        removed=removed,
        unchanged=len(chunks) - len(missing),
        skipped=loaded.skipped,
    )
