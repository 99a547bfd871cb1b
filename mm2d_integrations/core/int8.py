"""`compute_precision="int8"`: the transformer's linear layers as int8 products, quality kept.

Plain dynamic int8 (ONNX Runtime's or torch's) costs MiniLM a minimum cosine of 0.86-0.97 to float32,
for two reasons measured in docs/performance.md: a few activation channels carry outliers (10-15x the
median), and one activation scale per batch lets one outlier token coarsen every other token. Here:
- SmoothQuant (Xiao et al., 2023): input channel j is divided by s_j = sqrt(max|X_j| / max|W_j|) and
  weight column j multiplied by it, with max|X_j| calibrated once on sample text, which moves the
  outliers into the weights;
- per-output-channel weight scales (7 bits where the kernels lack VNNI, see `weight_levels`), and one
  activation scale per token, computed on the fly;
- `torch._int_mm` (oneDNN: VNNI, AVX-512 or AVX2 int8 kernels), with the quantise and dequantise
  steps (and a GELU that follows the product) fused by `torch.compile` where a C++ compiler is at
  hand (eagerly otherwise, slower);
- linear layers that read the same input (attention's query, key and value) as one product: the
  input is smoothed and quantised once, and one wider matrix product runs instead of three.
Attention, layer norms and pooling stay in float32. A quantised copy of the loaded model
is made once per process and shared, as the ONNX backend's session is.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import threading
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from mm2d_integrations.core.loading import LoadedModel
from mm2d_integrations.samples import SAMPLE_DOCS

__all__ = [
    "SMOOTHING", "Int8Linear", "Int8Product", "calibration_texts", "int8_model", "kernel_cache_for_this_cpu", "quantize_linears",
    "weight_levels",
]

SMOOTHING = 0.5  # SmoothQuant's alpha: how much of the outliers' range moves into the weights
_lock = threading.Lock()
_fused: dict[str, Any] = {}  # "levels" and one product per name of `_STEPS`: at most three entries, whatever the models


def _product(x: torch.Tensor, inv_smooth: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`x @ weight.T + bias` with `x` smoothed and quantised per row (token), in int8."""
    x = x * inv_smooth
    scale = x.abs().amax(1, keepdim=True).clamp(min=1e-8) / 127.0
    quantized = torch.round(x / scale).to(torch.int8)
    return torch._int_mm(quantized, weight).float() * (scale * weight_scale) + bias


def _product_gelu(x: torch.Tensor, inv_smooth: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU of `_product`, in the same pass over its output."""
    return torch.nn.functional.gelu(_product(x, inv_smooth, weight, weight_scale, bias))


_STEPS = {"none": _product, "gelu": _product_gelu}


def weight_levels() -> int:
    """127, or 63 where the int8 kernels saturate: without VNNI, oneDNN's AVX2 kernels add pairs of
    products in 16 bits (vpmaddubsw), which full-range weights overflow. Probed once, on the worst case."""
    with _lock:
        if "levels" not in _fused:
            probe = torch.full((16, 64), 127, dtype=torch.int8)
            exact = bool((torch._int_mm(probe, probe.t().contiguous()) == 64 * 127 * 127).all())
            _fused["levels"] = 127 if exact else 63
        return _fused["levels"]


def kernel_cache_for_this_cpu() -> str:
    """Point torch.compile's kernel cache at a folder of this CPU capability's own, and return it.

    torch (2.13) keys the kernels it caches on disk (`$TORCHINDUCTOR_CACHE_DIR`, by default
    `/tmp/torchinductor_$USER`, shared by every process of the user) without the CPU capability they
    were built for: after a process that ran with `ATEN_CPU_CAPABILITY=avx2` compiled these products,
    the next default (AVX-512) process loaded its kernels and corrupted the heap (docs/reliability.md
    has the reproduction). A subfolder per capability (`cpu-avx2`, `cpu-avx512` ...) of whichever folder
    is in force keeps them apart; it is set process-wide, as torch reads the variable at each compile."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    folder = os.path.abspath(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir())
    if os.path.basename(folder).startswith("cpu-"):  # set by this function in a parent process
        folder = os.path.dirname(folder)
    folder = os.path.join(folder, f"cpu-{torch.backends.cpu.get_cpu_capability().lower()}")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return folder


def _fused_product(activation: str = "none") -> Callable[..., torch.Tensor]:
    """`_product` (and the activation after it) compiled, one pass to quantise and one to dequantise,
    where that compiles and agrees with the eager steps on a probe; as is otherwise (correct, only
    slower). The check is not idle: on a CPU running torch's AVX2 kernels, the compiled steps measured
    wrong (NaN) with torch 2.13."""
    levels = weight_levels()
    eager = _STEPS[activation]
    with _lock:
        if activation not in _fused:
            generator = torch.Generator().manual_seed(0)
            probe = (
                torch.randn(37, 96, generator=generator), torch.rand(96, generator=generator) + 0.5,
                torch.randint(-levels, levels + 1, (48, 96), generator=generator, dtype=torch.int8).t(),
                torch.rand(48, generator=generator) / 100, torch.randn(48, generator=generator),
            )
            expected = eager(*probe)
            try:
                kernel_cache_for_this_cpu()
                compiled = torch.compile(eager, dynamic=True)
                agrees = bool(torch.allclose(compiled(*probe), expected, rtol=1e-4, atol=1e-4))
                reason = "its output differed from the eager steps on this CPU"
            except Exception as error:  # no C++ compiler, an unsupported platform
                agrees, reason = False, f"torch.compile failed: {type(error).__name__}"
            if not agrees:
                warnings.warn(f"compute_precision='int8' runs unfused, more slowly ({reason})", stacklevel=4)
            _fused[activation] = compiled if agrees else eager
        return _fused[activation]


class Int8Product(torch.nn.Module):
    """One or more float32 `torch.nn.Linear`s that read the same input, as one smoothed, per-channel int8
    weight with per-token activation scales: `forward(x)` gives their outputs side by side.

    Smoothing is shared (a column's factor comes from the input's range and the widest of the weights'
    columns), so the input is smoothed and quantised once."""

    def __init__(self, linears: list[torch.nn.Linear], input_absmax: torch.Tensor, activation: str = "none") -> None:
        super().__init__()
        weight = torch.cat([linear.weight.detach().float() for linear in linears])
        smooth = input_absmax.clamp(min=1e-5) ** SMOOTHING / weight.abs().amax(0).clamp(min=1e-5) ** (1 - SMOOTHING)
        weight = weight * smooth
        scale = weight.abs().amax(1).clamp(min=1e-12) / weight_levels()
        self.register_buffer("inv_smooth", 1.0 / smooth)
        self.register_buffer("weight_scale", scale)
        # [in, out] as the transposed view of a contiguous [out, in]: the layout torch._int_mm runs fastest
        self.register_buffer("weight", torch.round(weight / scale[:, None]).to(torch.int8).contiguous().t())
        biases = [linear.bias.detach().float() if linear.bias is not None else torch.zeros(linear.out_features) for linear in linears]
        self.register_buffer("bias", torch.cat(biases))
        self.product = _fused_product(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        return self.product(rows, self.inv_smooth, self.weight, self.weight_scale, self.bias).reshape(*x.shape[:-1], -1)


class Int8Linear(torch.nn.Module):
    """A float32 `torch.nn.Linear`'s place in a model: its columns `[start, stop)` of an `Int8Product`.

    Linears that share a product are called one after the other on the same input (query, key, value);
    the first call runs the product for all of them, and the others take their columns of that output
    (kept per thread until each has taken its columns)."""

    def __init__(self, product: Int8Product, start: int, stop: int) -> None:
        super().__init__()
        self.shared, self.start, self.stop = product, start, stop
        self._siblings: list[Int8Linear] = [self]  # the linears sharing `product`, set by quantize_linears
        self._outputs = threading.local()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self._siblings) == 1:
            return self.shared(x)
        last = self._outputs.__dict__.pop("last", None)  # taken once: a batch's output is not kept past its use
        if last is None or last[0] is not x:
            last = (x, self.shared(x))
            for sibling in self._siblings:
                if sibling is not self:
                    sibling._outputs.last = last
        return last[1][..., self.start : self.stop]


def quantize_linears(layers: torch.nn.Module, calibrate: Callable[[], Any]) -> None:
    """Replace every `torch.nn.Linear` under `layers` in place, after `calibrate()` has run the model
    once to record each one's input absmax per channel and which of them read the same input."""
    linears = {name: module for name, module in layers.named_modules() if isinstance(module, torch.nn.Linear)}
    absmax = {name: torch.zeros(module.in_features) for name, module in linears.items()}
    inputs_seen: dict[str, list[tuple[int, ...]]] = defaultdict(list)

    def recorder(name: str) -> Callable[..., None]:
        def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach()
            inputs_seen[name].append((x.data_ptr(), *x.shape, *x.stride()))
            absmax[name] = torch.maximum(absmax[name], x.abs().reshape(-1, linears[name].in_features).amax(0).float())
        return record

    hooks = [module.register_forward_hook(recorder(name)) for name, module in linears.items()]
    try:
        calibrate()
    finally:
        for hook in hooks:
            hook.remove()
    groups: dict[tuple[Any, ...], list[str]] = defaultdict(list)  # siblings that read the same tensor on every call
    for name in linears:  # a linear calibration never ran (nothing seen) stays on its own
        groups[(name.rpartition(".")[0], *inputs_seen[name]) if inputs_seen[name] else (name,)].append(name)
    for names in groups.values():
        activation = _fusable_activation(layers, names)
        product = Int8Product([linears[name] for name in names], absmax[names[0]], activation)
        members, start = [], 0
        for name in names:
            members.append(Int8Linear(product, start, start + linears[name].out_features))
            start = members[-1].stop
            parent, _, attribute = name.rpartition(".")
            setattr(layers.get_submodule(parent) if parent else layers, attribute, members[-1])
        for member in members:
            member._siblings = members
        if activation != "none":  # the product applies it now
            layers.get_submodule(names[0].rpartition(".")[0]).intermediate_act_fn = torch.nn.Identity()


def _fusable_activation(layers: torch.nn.Module, names: list[str]) -> str:
    """"gelu" where one linear `dense` feeds an exact GELU as its module's `intermediate_act_fn` (the
    feed-forward block of BERT and its kin), so that the product can apply it; "none" otherwise."""
    parent, _, attribute = names[0].rpartition(".")
    act = getattr(layers.get_submodule(parent) if parent else layers, "intermediate_act_fn", None)
    exact_gelu = (isinstance(act, torch.nn.GELU) and act.approximate == "none") or getattr(act, "act", None) is torch.nn.functional.gelu
    return "gelu" if len(names) == 1 and attribute == "dense" and exact_gelu else "none"


def calibration_texts(limit: int = 256) -> list[str]:
    """Paragraphs of the packaged sample documents (policies, notes, specs): ordinary prose whose
    activations show where each channel's range lies."""
    paragraphs = []
    for path in sorted(SAMPLE_DOCS.rglob("*")):
        if path.suffix in {".md", ".txt"}:
            paragraphs += [part.strip() for part in path.read_text(encoding="utf-8").split("\n\n") if len(part.strip()) > 40]
    return paragraphs[:limit]


def int8_model(loaded: LoadedModel, calibrate: Callable[[LoadedModel], Any]) -> LoadedModel:
    """`loaded` with a quantised copy of its transformer (made on first use, then shared by every encoder
    of this process); `calibrate(copy)` runs the copy, still in float32, over calibration text."""
    with _lock:
        quantized: LoadedModel | None = loaded.sessions.get("int8")
    if quantized is None:
        if loaded.model.device.type != "cpu" or loaded.model.dtype != torch.float32:
            raise ValueError("compute_precision='int8' runs on the cpu with float32 weights (device='cpu', dtype='float32')")
        copied = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model), _views={}, sessions={})
        quantize_linears(copied.layers, lambda: calibrate(copied))
        with _lock:
            quantized = loaded.sessions.setdefault("int8", copied)
    return quantized
