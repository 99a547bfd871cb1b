"""`mm2d index DIR --ray`: the indexer's work spread over a Ray cluster, its writes streamed into the store.

A Ray task lists the folder; a pool of actors (`mm2d_integrations.ray`) reads its files, cuts them
into chunks (the same splitter, ids and metadata as `index_folder`) and embeds the chunks the store
lacks; this process writes each batch as it arrives (`write_chunks`), then deletes stale chunks
(`remove_stale`). It holds ids only, never all chunks or vectors. The folder must be readable at the
same path on every node (a shared file system), as for Ray Data's own readers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
from tqdm import tqdm

from mm2d_integrations.core.encoder import EncoderRecipe
from mm2d_integrations.rag.indexer import BATCH, IndexReport, held_ids, remove_stale, write_chunks
from mm2d_integrations.rag.pipeline import Store, writing
from mm2d_integrations.ray import LOCAL, EmbedBatches, actor_map, connected
from mm2d_integrations.retrieval.documents import Chunking, SourceDocument, list_folder, read_document, split_documents, warn_skipped

# isort: split
# After mm2d_integrations.ray, whose ImportError says how to install these (the ray extra).
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from ray.exceptions import RayTaskError

__all__ = ["FILES_PER_CALL", "IndexFiles", "digests", "held", "index_on_ray"]

FILES_PER_CALL = 8
"""Files an actor reads, cuts and embeds per call: small enough to spread a few large files over the pool."""


def _digests(ids: Iterable[str]) -> np.ndarray:
    return np.array([hashlib.blake2b(chunk_id.encode("utf-8"), digest_size=16).digest() for chunk_id in ids], dtype="S16")


def digests(ids: Iterable[str]) -> np.ndarray:
    """The ids' 16-byte digests, sorted: how the actors know which chunks the store holds. One numpy
    array, which Ray's object store shares (unpickled, not copied) among the actors of a node: 160 MB
    for 10 million ids, where a set of str would cost each actor a gigabyte."""
    return np.sort(_digests(ids))


def held(sorted_digests: np.ndarray, ids: list[str]) -> np.ndarray:
    """Which of `ids` have their digest in `sorted_digests` (a collision of 128-bit digests is not a concern)."""
    keys = _digests(ids)
    if not len(sorted_digests) or not len(keys):
        return np.zeros(len(keys), bool)
    positions = np.minimum(np.searchsorted(sorted_digests, keys), len(sorted_digests) - 1)
    return sorted_digests[positions] == keys


class IndexFiles(EmbedBatches):
    """An actor of the pool: for each file of a batch, its chunks (id, text, metadata), and the vectors
    of those the store does not hold yet (`held`: their `digests`, given once when the actor starts;
    their text is left out); a file that cannot be read is one row without id, its path as text and
    why as `skipped`. Rows are Arrow; `vector` a list column, empty where nothing was embedded."""

    def __init__(self, recipe: EncoderRecipe, root: str, held: np.ndarray, chunking: Chunking | None = None) -> None:
        super().__init__(recipe)
        self.root, self.held = Path(root), held
        self.chunking = chunking or Chunking.by_tokens(self.encoder)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        columns: dict[str, list[Any]] = {"id": [], "text": [], "metadata": [], "skipped": []}
        for relative in batch["path"]:
            read = read_document(self.root, str(relative))
            if not isinstance(read, SourceDocument):
                for name, value in (("id", ""), ("text", str(relative)), ("metadata", ""), ("skipped", read)):
                    columns[name].append(value)
                continue
            chunks = split_documents([read], self.chunking)
            for chunk, stored in zip(chunks, held(self.held, [chunk.id for chunk in chunks])):
                for name, value in (("id", chunk.id), ("text", "" if stored else chunk.text), ("metadata", json.dumps(chunk.metadata)), ("skipped", "")):
                    columns[name].append(value)
        embed = [row for row, (chunk_id, text) in enumerate(zip(columns["id"], columns["text"])) if chunk_id and text]
        vectors = self.encode([columns["text"][row] for row in embed]) if embed else np.zeros((0, self.encoder.dimensions), np.float32)
        lengths = np.zeros(len(columns["id"]), np.int32)
        lengths[embed] = vectors.shape[1]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        table = pa.table({name: pa.array(values, pa.string()) for name, values in columns.items()})
        return table.append_column("vector", pa.ListArray.from_arrays(pa.array(offsets), pa.array(vectors.reshape(-1), pa.float32())))


def _list(folder: str) -> tuple[str, list[tuple[str, str | None]]]:
    root, listed = list_folder(folder)
    return str(root), listed


def _listed(folder: str) -> tuple[str, list[tuple[str, str | None]]]:
    """`list_folder` run as a Ray task, where the workers see the folder; its error raised as itself."""
    try:
        return ray.get(ray.remote(num_cpus=0)(_list).remote(folder))
    except RayTaskError as error:
        raise error.cause from None


def _vectors(table: pa.Table, rows: list[int]) -> np.ndarray:
    """The `vector` list column's `rows` as one float32 array (read from Arrow's buffers, not as Python floats)."""
    column = table.column("vector").combine_chunks()
    offsets, values = column.offsets.to_numpy(), column.values.to_numpy(zero_copy_only=False)
    return np.stack([values[offsets[row] : offsets[row + 1]] for row in rows])


def index_on_ray(
    folder: str | Path,
    store: Store,
    *,
    address: str = LOCAL,
    chunking: Chunking | None = None,
    exactly: bool = True,
    actors: int | None = None,
    num_gpus: float | None = None,
    show_progress: bool = False,
) -> IndexReport:
    """`pipeline.index` of a folder with its reading, chunking and embedding on a Ray cluster: the same
    collection (ids, metadata, vectors, shortlist collection), incremental and restartable as there.

    `address`: `local` starts a cluster on this machine for the run; `auto`, `HOST:PORT` or
    `ray://HOST:PORT` joins one (see `mm2d_integrations.ray.connected`). `actors`: the pool's size
    (default: one per CPU of the cluster; with `num_gpus`, GPUs each actor reserves: one per GPU).
    `chunking`: default, the encoder's tokens (`Chunking.by_tokens`).
    `exactly=False` keeps other sources' chunks (only this folder's stale chunks go)."""
    with connected(address, show_progress=show_progress):
        root, listed = _listed(str(folder))
        to_read = [relative for relative, reason in listed if reason is None]
        unread: dict[str, str] = {}
        with writing(store) as (encoder, target):
            complete, existing = held_ids(target)  # stale restored ones go at the end, as from every part
            files = ray.data.from_items([{"path": relative} for relative in to_read])
            arguments = {"recipe": encoder.recipe, "root": root, "held": digests(complete), "chunking": chunking}
            chunks = actor_map(files, IndexFiles, arguments, actors=actors, batch_size=FILES_PER_CALL, num_cpus=1, num_gpus=num_gpus)
            wanted: set[str] = set()
            written: set[str] = set()
            with tqdm(desc="indexing", unit="chunk", disable=not show_progress) as progress:
                batches = chunks.iter_batches(batch_size=BATCH, batch_format="pyarrow") if to_read else ()
                for table in cast("Iterable[pa.Table]", batches):  # Ray's type names every batch format
                    rows = table.select(["id", "text", "metadata", "skipped"]).to_pydict()
                    unread.update((path, why) for path, why in zip(rows["text"], rows["skipped"]) if why)
                    wanted.update(chunk_id for chunk_id in rows["id"] if chunk_id)
                    new = [row for row, length in enumerate(pc.list_value_length(table.column("vector")).to_pylist()) if length]
                    if new:
                        ids = [rows["id"][row] for row in new]
                        texts, metadatas = [rows["text"][row] for row in new], [json.loads(rows["metadata"][row]) for row in new]
                        write_chunks(target, ids, texts, metadatas, _vectors(table, new))
                        written.update(ids)
                    progress.update(len(new))
            removed = remove_stale(target, existing, wanted, None if exactly else set(to_read) - set(unread))
    skipped = [(relative, reason or unread[relative]) for relative, reason in listed if reason is not None or relative in unread]
    warn_skipped(Path(root), skipped)
    return IndexReport(
        files=len(to_read) - len(unread), chunks=len(wanted), added=len(written), removed=removed,
        unchanged=len(wanted) - len(written), skipped=skipped,
    )
