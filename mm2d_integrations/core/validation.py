"""Checks shared by every layer: ints in range, one of a set of names, lists of texts, and the hint for a missing extra."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Any

__all__ = ["check_choice", "check_int_in_range", "check_text", "check_texts", "install_hint"]

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def check_int_in_range(name: str, value: Any, low: int, high: int) -> int:
    """`value` as an int in [low, high], or a ValueError naming the valid range."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: Collection[str]) -> Any:
    """`value` when it is one of `allowed`, or a ValueError naming them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def check_texts(texts: Any) -> list[str]:
    """`texts` as a list of str, or a TypeError naming the offending item.

    Lone surrogates, which no tokenizer accepts, become U+FFFD.
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    return [check_text(f"texts[{index}]", text) for index, text in enumerate(texts)]


def check_text(name: str, text: Any) -> str:
    """`text` as a str a tokenizer takes (lone surrogates become U+FFFD), or a TypeError naming `name`."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be str, got {type(text).__name__}")
    return _LONE_SURROGATE.sub("\ufffd", text)


def install_hint(module: str, extra: str) -> str:
    """The message of an ImportError for an optional dependency: what is missing and how to install it."""
    return f"{module} is not installed; run: pip install 'mm2d-integrations[{extra}]'"
