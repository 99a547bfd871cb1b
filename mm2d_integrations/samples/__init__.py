"""The sample corpus, shipped in the package so that `mm2d demo` and the notebooks work from an
installed wheel: a fictional energy company's internal documents (policies, meeting notes, product
specs, research briefings) and questions that they answer."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["SAMPLE_DOCS", "SAMPLE_QUESTIONS", "load_questions"]

SAMPLE_DOCS = Path(__file__).parent / "internal_docs"
SAMPLE_QUESTIONS = Path(__file__).parent / "questions.jsonl"


def load_questions() -> list[dict[str, str]]:
    """The questions of SAMPLE_QUESTIONS: each has `question`, `source` (the answering file, relative
    to SAMPLE_DOCS) and `answer`."""
    return [json.loads(line) for line in SAMPLE_QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
