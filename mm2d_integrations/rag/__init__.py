"""Retrieval-augmented generation over a folder of documents: load, split, index, retrieve, answer."""

from __future__ import annotations

from typing import Literal

__all__ = ["FRAMEWORKS", "Framework"]

Framework = Literal["langchain", "llamaindex"]
FRAMEWORKS: tuple[Framework, ...] = ("langchain", "llamaindex")
