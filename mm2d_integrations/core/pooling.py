"""Pooling: token vectors of one layer -> one vector per text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mm2d_integrations.core.validation import check_choice

__all__ = ["POOLING_MODES", "check_pooling", "pool", "pooling_from_sentence_transformers"]


def _cls(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first pooled token: the first token, unless a prompt is left out of pooling (as in sentence-transformers)."""
    first = mask.to(torch.int).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]


def _mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def _mean_sqrt_len(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9).sqrt()


def _max(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min).amax(1)


def _last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    last = mask.sum(1) - 1  # texts are right-padded
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


POOLING_MODES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cls": _cls,
    "mean": _mean,
    "max": _max,
    "mean_sqrt_len_tokens": _mean_sqrt_len,
    "lasttoken": _last_token,
}

# sentence-transformers' 1_Pooling/config.json flag -> our name
_SENTENCE_TRANSFORMERS_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_lasttoken": "lasttoken",
}


def check_pooling(pooling: str) -> str:
    check_choice("pooling", pooling, POOLING_MODES)
    return pooling


def pooling_from_sentence_transformers(config: dict[str, Any]) -> str | None:
    """Our pooling for a sentence-transformers pooling config (new `pooling_mode` or legacy flags)."""
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [name for flag, name in _SENTENCE_TRANSFORMERS_FLAGS.items() if config.get(flag)]
        modes += [key for key, on in config.items() if key.startswith("pooling_mode_") and on and key not in _SENTENCE_TRANSFORMERS_FLAGS]
    modes = [modes] if isinstance(modes, str) else list(modes)
    if len(modes) > 1:
        raise ValueError(f"pooling config combines {modes}; this encoder pools with one mode only")
    return check_pooling(modes[0]) if modes else None


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    return POOLING_MODES[pooling](hidden, attention_mask)
