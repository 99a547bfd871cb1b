"""Incremental, restartable indexing of a folder into a Chroma collection."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mm2d_integrations.chroma import FunnelIndex
from mm2d_integrations.documents import CHUNK_OVERLAP, CHUNK_SIZE, LoadedFolder, load_folder, split_documents

__all__ = ["BATCH", "IndexReport", "held_ids", "index_folder", "stored_ids"]

BATCH = 64


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


def stored_ids(collection: Any, page: int = 5000) -> set[str]:
    ids: set[str] = set()
    while True:
        found = collection.get(include=[], limit=page, offset=len(ids))["ids"]
        ids.update(found)
        if len(found) < page:
            return ids


def held_ids(collection: Any) -> tuple[set[str], set[str]]:
    """(ids every collection holds, ids any holds): a run killed between the writes of a
    `FunnelIndex`'s two collections leaves ids in one only, to be written again or deleted."""
    parts = (collection.full, collection.short) if isinstance(collection, FunnelIndex) else (collection,)
    held = [stored_ids(part) for part in parts]
    return set.intersection(*held), set.union(*held)


def index_folder(
    folder: str | Path | LoadedFolder,
    collection: Any,
    *,
    chunk_size: int = CHUNK_SIZE,
    chunk_overlap: int = CHUNK_OVERLAP,
    show_progress: bool = False,
) -> IndexReport:
    """Make `collection` hold exactly the chunks of `folder`, embedding only chunks it lacks.

    `collection`: a Chroma collection, or a `FunnelIndex`, whose two collections are kept in sync
    (a chunk either lacks is embedded once and written to both).
    New chunks are written before stale ones are deleted, and ids are derived from content, so an
    interrupted run leaves no duplicates and the next run completes it.
    """
    loaded = folder if isinstance(folder, LoadedFolder) else load_folder(folder)
    chunks = split_documents(loaded.documents, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    complete, existing = held_ids(collection)
    wanted = {chunk.id for chunk in chunks}
    missing = [chunk for chunk in chunks if chunk.id not in complete]
    with tqdm(total=len(missing), desc="indexing", unit="chunk", disable=not show_progress) as progress:
        for start in range(0, len(missing), BATCH):
            batch = missing[start : start + BATCH]
            collection.upsert(
                ids=[chunk.id for chunk in batch],
                documents=[chunk.text for chunk in batch],
                metadatas=[chunk.metadata for chunk in batch],
            )
            progress.update(len(batch))
    stale = sorted(existing - wanted)
    for start in range(0, len(stale), 5000):
        collection.delete(ids=stale[start : start + 5000])
    return IndexReport(
        files=len(loaded.documents),
        chunks=len(chunks),
        added=len(missing),
        removed=len(stale),
        unchanged=len(chunks) - len(missing),
        skipped=loaded.skipped,
    )
