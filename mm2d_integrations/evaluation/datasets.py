"""Readers for evaluation data: STS pairs and BEIR-layout retrieval sets."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StsPairs:
    """Sentence pairs with their gold similarity scores."""

    scores: list[float]
    first: list[str]
    second: list[str]


def read_sts(path: str | Path) -> StsPairs:
    """STS Benchmark layout (score in column 5, sentences in 6 and 7, extra columns ignored)
    or plain `score<TAB>s1<TAB>s2`."""
    scores: list[float] = []
    first: list[str] = []
    second: list[str] = []
    with open(path, encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or not "".join(row).strip():
                continue
            columns = row[4:7] if len(row) >= 7 else row[:3]
            if len(columns) != 3:
                raise ValueError(f"{path}:{number}: expected 3 or at least 7 tab-separated columns, got {len(row)}")
            try:
                score = float(columns[0])
            except ValueError:
                if number == 1:
                    continue  # a header line
                raise ValueError(f"{path}:{number}: score {columns[0]!r} is not a number") from None
            scores.append(score)
            first.append(columns[1])
            second.append(columns[2])
    if not scores:
        raise ValueError(f"{path} holds no scored sentence pairs")
    return StsPairs(scores, first, second)
