"""Full vectors as float16 rows of a memory-mapped file, found by id: what a funnel re-ranks with.

Reading 100 full vectors back from Chroma by id costs more than Chroma's whole HNSW search (its
Python client converts every float); reading 100 rows of a memory-mapped matrix costs microseconds.
So `chroma.FunnelIndex` keeps the full vectors here too, beside the Chroma folder, with each one's
text and metadata: a funnel's search then never touches the full collection, nor loads its HNSW.

Layout of the folder: `vectors-<generation>.f16` (rows of `dimensions` float16, C order) and
`rows.sqlite3` (id -> row, text and metadata as JSON; the generation; in WAL mode). Crash-safety rests on the order of
writes: rows are allocated in one transaction, their bytes written and synced, then the ids are
mapped in a second one. A run killed before the mapping leaves unmapped rows (dead space, reclaimed
by compaction) and ids this store does not hold, which the indexer writes again. A reader takes
the mapping and the generation from one snapshot, so it never reads a row of another generation.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["VectorRows"]

DTYPE = np.float16
_SCHEMA = """
create table if not exists rows (id text primary key, row integer not null, document text, metadata text);
create table if not exists meta (key text primary key, value text not null);
"""
_COMPACT_MIN_DEAD = 1024  # below this many dead rows compaction is not worth a rewrite
_PARAMETERS = 500  # ids per SQL statement, under SQLite's limit on bound parameters


class VectorRows:
    """The rows of one collection's full vectors, in `folder`.

    `owner`: what the rows belong to (the full collection's id): a folder recorded for another owner,
    a collection deleted and made again under the same name, is emptied rather than trusted.
    """

    def __init__(self, folder: str | Path, dimensions: int, owner: str) -> None:
        self.folder, self.dimensions = Path(folder), dimensions
        self.folder.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: async retrievers search from worker threads; the lock serialises them
        self._db = sqlite3.connect(self.folder / "rows.sqlite3", check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._map: tuple[int, np.memmap | None] = (-1, None)  # generation, its file mapped
        with self._lock:
            self._db.execute("pragma journal_mode=wal")
            self._db.executescript(_SCHEMA)
            with self._transaction("immediate"):
                meta = self._meta()
                if meta.get("owner") != owner or int(meta.get("dimensions", dimensions)) != dimensions:
                    self._db.execute("delete from rows")
                    self._set(owner=owner, dimensions=dimensions, generation=int(meta.get("generation", 0)) + 1, allocated=0)
                    for stale in self.folder.glob("vectors-*.f16"):
                        stale.unlink()

    def __len__(self) -> int:
        with self._lock:
            count: int = self._db.execute("select count(*) from rows").fetchone()[0]
        return count

    def ids(self) -> set[str]:
        with self._lock:
            return {key for (key,) in self._db.execute("select id from rows")}

    def put(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        documents: Sequence[str | None] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None:
        """Store `vectors[i]` (and `documents[i]`, `metadatas[i]`) as the row of `ids[i]`: new rows
        appended, a held id's row rewritten."""
        vectors = np.ascontiguousarray(vectors, dtype=DTYPE)
        if vectors.shape != (len(ids), self.dimensions):
            raise ValueError(f"vectors must have shape ({len(ids)}, {self.dimensions}), got {vectors.shape}")
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique within one call")
        if not ids:
            return
        texts = documents if documents is not None else [None] * len(ids)
        metadata = [json.dumps(dict(item)) if item else None for item in (metadatas or [None] * len(ids))]
        with self._lock:
            with self._transaction("immediate"):  # allocate: concurrent writers never share a row
                held = self._rows(ids)
                meta = self._meta()
                start, generation = int(meta["allocated"]), int(meta["generation"])
                allocated, rows = start, []
                for key in ids:
                    if key not in held:
                        held[key], allocated = allocated, allocated + 1
                    rows.append(held[key])
                self._set(allocated=allocated)
            self._write(generation, np.asarray(rows), vectors, allocated)
            with self._transaction("immediate"):
                if int(self._meta()["generation"]) != generation:  # compacted meanwhile: the bytes went to the old file
                    raise RuntimeError(f"the vector rows in {self.folder} were compacted by another writer during this write; write again")
                self._db.executemany(
                    "insert or replace into rows (id, row, document, metadata) values (?, ?, ?, ?)", zip(ids, rows, texts, metadata)
                )

    def delete(self, ids: Sequence[str]) -> None:
        """Forget `ids`; when dead rows outnumber live ones, rewrite the file without them."""
        with self._lock:
            with self._transaction("immediate"):
                for part in _parts(ids):
                    self._db.execute(f"delete from rows where id in ({','.join('?' * len(part))})", part)
            self._compact_if_sparse()

    def get(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The ids of `ids` held here (in their order) and their vectors as float32; others are left out."""
        with self._lock:
            with self._transaction():  # one snapshot: the mapping and the file it points into
                held = self._rows(ids)
                generation = int(self._meta()["generation"])
            found = [key for key in ids if key in held]
            if not found:
                return [], np.empty((0, self.dimensions), np.float32)
            rows = np.fromiter((held[key] for key in found), np.int64, len(found))
            matrix = self._matrix(generation, int(rows.max()) + 1)
            return found, matrix[rows].astype(np.float32)

    def records(self, ids: Sequence[str]) -> dict[str, tuple[str | None, dict[str, Any]]]:
        """Text and metadata of those of `ids` held here."""
        found: dict[str, tuple[str | None, dict[str, Any]]] = {}
        with self._lock:
            for part in _parts(ids):
                query = f"select id, document, metadata from rows where id in ({','.join('?' * len(part))})"
                found.update((key, (text, json.loads(metadata) if metadata else {})) for key, text, metadata in self._db.execute(query, part))
        return found

    def _matrix(self, generation: int, needed_rows: int) -> np.memmap:
        """The generation's file mapped read-only, mapped again when it has grown past what is mapped."""
        mapped_generation, matrix = self._map
        if matrix is None or mapped_generation != generation or len(matrix) < needed_rows:
            path = self._path(generation)
            rows = path.stat().st_size // (self.dimensions * DTYPE().itemsize)
            matrix = np.memmap(path, DTYPE, mode="r", shape=(rows, self.dimensions))
            self._map = (generation, matrix)
        return matrix

    def _write(self, generation: int, rows: np.ndarray, vectors: np.ndarray, allocated: int) -> None:
        """Write and sync the rows' bytes: a row is mapped to an id only once its bytes are on disk."""
        path = self._path(generation)
        row_bytes = self.dimensions * DTYPE().itemsize
        with open(path, "ab") as handle:  # creates the file; r+b below writes anywhere in it
            pass
        with open(path, "r+b") as handle:
            if os.fstat(handle.fileno()).st_size < allocated * row_bytes:
                handle.truncate(allocated * row_bytes)
            order = np.argsort(rows, kind="stable")
            for run in np.split(order, np.flatnonzero(np.diff(rows[order]) != 1) + 1):  # contiguous rows: one write each
                handle.seek(int(rows[run[0]]) * row_bytes)
                handle.write(vectors[run].tobytes())
            handle.flush()
            os.fsync(handle.fileno())

    def _compact_if_sparse(self) -> None:
        """Copy the live rows to a new generation's file, then switch the mapping in one transaction."""
        meta = self._meta()
        live = self._db.execute("select count(*) from rows").fetchone()[0]
        dead = int(meta["allocated"]) - live
        if dead <= live or dead < _COMPACT_MIN_DEAD:
            return
        with self._transaction("immediate"):
            generation = int(self._meta()["generation"])
            held = self._db.execute("select id, row from rows order by row").fetchall()
            old = self._matrix(generation, 0)
            new_generation = generation + 1
            new_rows = np.arange(len(held))
            self._path(new_generation).unlink(missing_ok=True)  # a compaction killed before its commit
            vectors = old[np.fromiter((row for _, row in held), np.int64, len(held))] if held else np.empty((0, self.dimensions), DTYPE)
            self._write(new_generation, new_rows, vectors, len(held))
            self._db.executemany("update rows set row = ? where id = ?", ((int(row), key) for row, (key, _) in zip(new_rows, held)))
            self._set(generation=new_generation, allocated=len(held))
        self._map = (-1, None)
        self._path(generation).unlink(missing_ok=True)  # a reader that still maps it keeps its pages

    @contextmanager
    def _transaction(self, mode: str = "") -> Iterator[None]:
        """A transaction, rolled back on any exception (an interrupt too): the connection stays usable."""
        self._db.execute(f"begin {mode}")
        try:
            yield
        except BaseException:
            self._db.execute("rollback")
            raise
        self._db.execute("commit")

    def _rows(self, ids: Sequence[str]) -> dict[str, int]:
        held: dict[str, int] = {}
        for part in _parts(ids):
            held.update(self._db.execute(f"select id, row from rows where id in ({','.join('?' * len(part))})", part))
        return held

    def _meta(self) -> dict[str, str]:
        return dict(self._db.execute("select key, value from meta"))

    def _set(self, **values: object) -> None:
        self._db.executemany("insert or replace into meta (key, value) values (?, ?)", ((key, str(value)) for key, value in values.items()))

    def _path(self, generation: int) -> Path:
        return self.folder / f"vectors-{generation}.f16"

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._map = (-1, None)


def _parts(ids: Sequence[str]) -> list[list[str]]:
    return [list(ids[start : start + _PARAMETERS]) for start in range(0, len(ids), _PARAMETERS)]
