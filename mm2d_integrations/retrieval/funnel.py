"""Funnel retrieval: shortlist with the first few dimensions, rank with all of them.

A Matryoshka vector's prefix is an embedding in its own right, only coarser. So an approximate
index over a short prefix can find `k x shortlist_factor` candidates, and exact cosine on the full
vectors ranks them: search time and the searched index follow the prefix, quality the full vector.

This module holds the arithmetic (numpy only); `chroma.FunnelIndex` keeps the two sets of vectors in
Chroma, and the LangChain and LlamaIndex `FunnelRetriever`s search it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from mm2d_integrations.core.validation import check_int_in_range

__all__ = ["MAX_CANDIDATES", "Funnel", "check_factor", "check_search", "check_shortlist_dims", "rerank", "short_collection_name"]

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
