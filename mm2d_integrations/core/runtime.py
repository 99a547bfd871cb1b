"""Where and how the model runs: device, weight dtype and compute precision."""

from __future__ import annotations

import warnings

import torch

from mm2d_integrations.core.validation import check_choice

__all__ = [
    "BACKENDS", "COMPUTE_PRECISIONS", "DTYPES", "bf16_supported", "dtype_name", "resolve_backend", "resolve_compute_precision",
    "resolve_device", "resolve_dtype",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
COMPUTE_PRECISIONS = ("float32", "bf16", "int8")
BACKENDS = ("torch", "onnx")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The given device, or the best one this machine has (cuda, then mps, then cpu)."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.float32` -> `float32`: how options and configs spell a dtype."""
    return str(dtype).removeprefix("torch.")


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively (elsewhere they are emulated, and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True


def resolve_compute_precision(precision: str, device: torch.device) -> str:
    """`float32` (exact), `bf16` (autocast: bfloat16 products, float32 weights and pooling) or `int8`
    (int8 linear layers on the cpu, see `int8.py`)."""
    check_choice("compute_precision", precision, COMPUTE_PRECISIONS)
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"compute_precision='int8' runs on the cpu, not on {device}; use bf16 there")
    if precision == "bf16" and not bf16_supported(device):
        warnings.warn(f"{device} has no native bfloat16 support: compute_precision falls back to float32", stacklevel=3)
        return "float32"
    return precision


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """`torch` (any device) or `onnx` (ONNX Runtime on the cpu, float32 weights)."""
    check_choice("backend", backend, BACKENDS)
    if backend == "onnx" and (device.type != "cpu" or dtype != torch.float32):
        raise ValueError(f"backend='onnx' runs on the cpu with float32 weights, not on {device} in {dtype_name(dtype)}")
    return backend
