"""What each depth costs, measured inside the one pass that serves every depth."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import torch

from mm2d_integrations.core.encoder import Matryoshka2DEncoder

__all__ = ["LayerClock"]


class LayerClock:
    """Times a pass of `encoder` and each of its layers.

    An encoder cut to depth d does all the pass does except the layers after d (tokenising,
    embeddings and pooling included), so its time is the pass's time less what those layers took.
    Passes of other encoders sharing the loaded model at the same time would be counted too.
    """

    def __init__(self, encoder: Matryoshka2DEncoder) -> None:
        self._layers = encoder.transformer_layers
        self._device = encoder.device
        self._marks: list[float] = []  # this batch: before layer 1, then after each layer
        self._deeper = [0.0] * (len(self._layers) + 1)  # [d]: seconds spent in the layers after d
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._started = 0.0
        self.seconds = 0.0

    def seconds_at(self, num_layers: int) -> float:
        """Seconds an encoder cut to `num_layers` would have needed for the timed pass."""
        return self.seconds - self._deeper[num_layers]

    def __enter__(self) -> LayerClock:
        self._hooks = [self._layers[0].register_forward_pre_hook(self._first_layer_starts)]
        self._hooks += [layer.register_forward_hook(self._layer_ends) for layer in self._layers]
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.seconds = time.perf_counter() - self._started
        for hook in self._hooks:
            hook.remove()

    def _now(self) -> float:
        """The time once the device has finished the work queued so far."""
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        elif self._device.type == "mps":
            torch.mps.synchronize()
        return time.perf_counter()

    def _first_layer_starts(self, *_: Any) -> None:
        self._marks = [self._now()]

    def _layer_ends(self, *_: Any) -> None:
        self._marks.append(self._now())
        if len(self._marks) == len(self._deeper):
            for depth, mark in enumerate(self._marks):
                self._deeper[depth] += self._marks[-1] - mark
