"""Does an answer say it? Questions with the key fact their answer must contain, and the share of
answers whose first sentence contains it (a reader stops there: a heading or the question repeated
back in first place is a wrong answer even when the fact follows)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FactQuestion", "first_sentence", "read_fact_questions", "share_stating", "states_fact"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class FactQuestion:
    question: str
    fact: str
    """A short span of the answering document (a number with its unit, a date, a name) that a right answer contains."""
    source: str
    """The answering document."""


def read_fact_questions(path: str | Path, facts: str | Path | None = None) -> list[FactQuestion]:
    """JSON lines with `question`, `fact` and `source`; or, with `facts`, the questions of `path` (with
    `question` and `source`) given the facts of `facts` (JSON lines with `question` and `fact`)."""
    rows = _json_lines(path)
    if facts is None:
        return [FactQuestion(row["question"], row["fact"], row["source"]) for row in rows]
    fact_of = {row["question"]: row["fact"] for row in _json_lines(facts)}
    missing = [row["question"] for row in rows if row["question"] not in fact_of]
    if missing:
        raise ValueError(f"{facts} has no fact for {len(missing)} question(s) of {path}, e.g. {missing[0]!r}")
    return [FactQuestion(row["question"], fact_of[row["question"]], row["source"]) for row in rows]


def _json_lines(path: str | Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def first_sentence(answer: str) -> str:
    """The first sentence of an answer: up to its first line break or sentence end."""
    first_line = next((line for line in answer.splitlines() if line.strip()), "")
    return _SENTENCE_END.split(first_line.strip(), maxsplit=1)[0]


def _normalised(text: str) -> str:
    return " ".join(text.replace("**", "").split()).casefold()


def states_fact(text: str, fact: str) -> bool:
    """Whether `text` contains `fact`, ignoring case, runs of white space and Markdown bold."""
    return _normalised(fact) in _normalised(text)


def share_stating(answers: Iterable[str], questions: Iterable[FactQuestion]) -> float:
    """The share of answers whose first sentence states its question's fact."""
    hits = [states_fact(first_sentence(answer), question.fact) for answer, question in zip(answers, questions, strict=True)]
    return sum(hits) / len(hits)
