"""Funnel retrieval: shortlist with the first few dimensions, rank with all of them.

A Matryoshka vector's prefix is an embedding in its own right, only coarser. So an approximate
index over a short prefix can find `k x shortlist_factor` candidates, and exact cosine on the full
vectors ranks them: search time and the searched index follow the prefix, quality the full vector.

`FunnelIndex` keeps the two in Chroma: collection `name` holds the full vectors (with documents and
metadata), collection `name-short{D}` the first D components of the same vectors, under the same ids.
Both record their embedding space (see `chroma.open_collection`), so neither can be filled or read
with another configuration.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from mm2d_integrations.encoder import Matryoshka2DEncoder, truncate_dimensions
from mm2d_integrations.loading import check_int_in_range

MAX_CANDIDATES = 1 << 20
_SYNTAX = re.compile(r"(\d+)x(\d+)")


@dataclass(frozen=True)
class Funnel:
    """Shortlist `shortlist_factor` x k candidates by the first `shortlist_dims` dimensions."""

    shortlist_dims: int
    shortlist_factor: int

    @classmethod
    def parse(cls, text: str) -> Funnel:
        """`64x10`: shortlist by 64 dimensions, 10 candidates per result."""
        match = _SYNTAX.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"a funnel is SHORTLIST_DIMSxFACTOR, for example 64x10, got {text!r}")
        return cls(int(match[1]), check_factor(int(match[2])))

    def check(self, dimensions: int) -> Funnel:
        """This funnel, or a ValueError when it cannot shortlist vectors of `dimensions` components."""
        check_shortlist_dims(self.shortlist_dims, dimensions)
        check_factor(self.shortlist_factor)
        return self

    def __str__(self) -> str:
        return f"{self.shortlist_dims}x{self.shortlist_factor}"


def check_shortlist_dims(shortlist_dims: int, dimensions: int) -> int:
    """A prefix must be shorter than the vector it shortlists for, or there is nothing to gain."""
    if dimensions < 2:
        raise ValueError(f"a funnel needs vectors of at least 2 dimensions to shortlist by a prefix, got {dimensions}")
    return check_int_in_range("shortlist_dims", shortlist_dims, 1, dimensions - 1)


def check_factor(shortlist_factor: int) -> int:
    return check_int_in_range("shortlist_factor", shortlist_factor, 1, MAX_CANDIDATES)


def check_search(k: int, shortlist_factor: int, *, k_name: str = "k") -> int:
    """How many candidates a search for `k` results shortlists, or a ValueError naming the bad value."""
    return check_int_in_range(k_name, k, 1, MAX_CANDIDATES) * check_factor(shortlist_factor)


def rerank(query: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `candidates` closest to `query` by exact cosine, best first (at most k), and their cosines."""
    norms = np.linalg.norm(candidates, axis=1) * np.linalg.norm(query)
    scores = candidates @ query / np.maximum(norms, 1e-12)
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


def short_collection_name(name: str, shortlist_dims: int) -> str:
    return f"{name}-short{shortlist_dims}"


class Hit(NamedTuple):
    id: str
    score: float  # exact cosine of the full vectors
    document: str
    metadata: dict[str, Any]


class FunnelIndex:
    """A Chroma collection of full vectors and one of their first `shortlist_dims` components, same ids.

    Fill it with `upsert` (or `rag.indexer.index_folder`, which keeps the two in sync); search it
    with `search`. `embedder`: an encoder or one of this package's adapters; `client`: a Chroma
    client (default: `chroma.chroma_client()`).
    """

    def __init__(self, embedder: Any, collection_name: str | None = None, *, shortlist_dims: int, client: Any = None) -> None:
        from mm2d_integrations.chroma import DEFAULT_COLLECTION, as_encoder, chroma_client, open_collection

        self.encoder = as_encoder(embedder)
        self.shortlist_dims = check_shortlist_dims(shortlist_dims, self.encoder.dimensions)
        client = client or chroma_client()
        name = collection_name or DEFAULT_COLLECTION
        self.full = open_collection(self.encoder, name, client=client)
        self.short = open_collection(self.encoder.with_dimensions(shortlist_dims), short_collection_name(name, shortlist_dims), client=client)

    def upsert(
        self,
        ids: Sequence[str],
        documents: Sequence[str],
        metadatas: Sequence[dict[str, Any]] | None = None,
        vectors: np.ndarray | None = None,
    ) -> None:
        """Embed `documents` once (unless their full `vectors` are given); write the full vectors, then
        their prefixes (with the ids only: documents and metadata are read from the full collection)."""
        if vectors is None:
            vectors = self.encoder.encode_documents(list(documents))
        elif np.shape(vectors) != (len(ids), self.encoder.dimensions):
            raise ValueError(f"vectors must have shape ({len(ids)}, {self.encoder.dimensions}), got {np.shape(vectors)}")
        self.full.upsert(ids=list(ids), embeddings=vectors, documents=list(documents), metadatas=list(metadatas) if metadatas else None)
        self.short.upsert(ids=list(ids), embeddings=truncate_dimensions(vectors, self.shortlist_dims, self.encoder.normalize))

    def delete(self, ids: Sequence[str]) -> None:
        self.full.delete(ids=list(ids))
        self.short.delete(ids=list(ids))

    def check_complete(self) -> None:
        """A ValueError when the short collection does not hold a prefix of every full vector."""
        full, short = self.full.count(), self.short.count()
        if short != full:
            raise ValueError(
                f"collection {self.short.name!r} holds {short} shortlist vectors for the {full} vectors of "
                f"{self.full.name!r}: index with shortlist_dims={self.shortlist_dims} (mm2d index --shortlist-dims "
                f"{self.shortlist_dims}) first"
            )

    def search(self, query: str, k: int = 4, shortlist_factor: int = 10) -> list[Hit]:
        """The k best documents for `query`: `k x shortlist_factor` candidates by the prefix, ranked by all."""
        return self.search_vector(self.encoder.encode_queries([query])[0], k, shortlist_factor)

    def search_vector(self, query: np.ndarray, k: int = 4, shortlist_factor: int = 10) -> list[Hit]:
        """`search` with the query's full vector already computed."""
        wanted = check_search(k, shortlist_factor)
        short_query = truncate_dimensions(query[None, :], self.shortlist_dims, self.encoder.normalize)
        candidates = self.short.query(query_embeddings=short_query, n_results=wanted, include=[])["ids"][0]
        if not candidates:
            return []
        # Text and metadata for the k best only: reading records is what costs most here.
        # get() returns records in its own order and leaves out ids deleted meanwhile.
        vectors = self.full.get(ids=candidates, include=["embeddings"])
        order, scores = rerank(query, np.asarray(vectors["embeddings"], np.float32), k)
        best = [vectors["ids"][row] for row in order]
        records = self.full.get(ids=best, include=["documents", "metadatas"])
        found = {key: (text, metadata or {}) for key, text, metadata in zip(records["ids"], records["documents"], records["metadatas"])}
        return [Hit(key, float(score), *found[key]) for key, score in zip(best, scores) if key in found]
