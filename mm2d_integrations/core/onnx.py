"""The ONNX Runtime backend (`backend="onnx"`): the cut transformer exported once to an ONNX graph,
cached on disk, and run by ONNX Runtime, whose fused CPU kernels (attention, layer norm, GELU) are
faster than eager torch where bfloat16 is not available (docs/performance.md).

The graph maps token ids to hidden states (the last one, and every kept layer's, so that one pass
serves several depths); pooling, exit heads and truncation stay in the encoder, as with torch.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm2d_integrations.core.loading import LoadedModel
from mm2d_integrations.core.validation import install_hint

__all__ = ["OnnxModel", "cache_dir", "export_graph", "hidden_state_names", "onnx_model", "run_graph"]

_INPUTS = ["input_ids", "attention_mask"]
_lock = threading.Lock()


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(install_hint("onnxruntime", "onnx")) from error
    return onnxruntime


def cache_dir() -> Path:
    """Where exported graphs are kept: $MM2D_CACHE_DIR, else the user's cache folder for mm2d
    (platformdirs: $XDG_CACHE_HOME/mm2d or ~/.cache/mm2d on Linux, ~/Library/Caches/mm2d on macOS)."""
    if os.environ.get("MM2D_CACHE_DIR"):
        return Path(os.environ["MM2D_CACHE_DIR"]).expanduser()
    try:
        import platformdirs
    except ImportError as error:
        raise ImportError(install_hint("platformdirs", "onnx")) from error
    return Path(platformdirs.user_cache_dir("mm2d", appauthor=False))


def hidden_state_names(num_layers: int) -> list[str]:
    """The graph's outputs: `hidden_states.K` after layer K < num_layers, then `last_hidden_state`."""
    return [f"hidden_states.{depth}" for depth in range(1, num_layers)] + ["last_hidden_state"]


def export_graph(module: torch.nn.Module, path: Path, output_names: list[str]) -> None:
    """`module(input_ids, attention_mask)` as an ONNX graph with dynamic batch and sequence axes,
    written to a temporary file and moved to `path`."""
    try:
        importlib.import_module("onnx")  # torch's exporter writes the graph with it
    except ImportError as error:
        raise ImportError(install_hint("onnx", "onnx")) from error
    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    axes = {name: {0: "batch", 1: "sequence"} for name in [*_INPUTS, *output_names]}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(handle)
    try:
        # The tracer warns about branches (no mask, causal attention) that these graphs never take.
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(), example, temporary, input_names=_INPUTS, output_names=output_names,
                dynamic_axes={name: axes[name] if name != "sentence_embedding" else {0: "batch"} for name in axes},
                opset_version=17, dynamo=False,
            )
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class _HiddenStates(torch.nn.Module):
    """The transformer returning every kept layer's hidden state, the graph's outputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return (*output.hidden_states[1:-1], output.last_hidden_state)


class OnnxModel:
    """A loaded model's transformer as an ONNX Runtime session (exported on first use, then cached)."""

    def __init__(self, loaded: LoadedModel, threads: int | None = None) -> None:
        onnxruntime = _onnxruntime()
        self.num_layers = loaded.num_layers
        self.path = self._graph(loaded)
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = threads or torch.get_num_threads()
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":  # idle threads sleep, as torch's do under this setting
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(self.path), session_options, providers=["CPUExecutionProvider"])

    def _graph(self, loaded: LoadedModel) -> Path:
        key = "|".join(map(str, (loaded.source.reference, loaded.weights_id, loaded.num_layers, torch.__version__)))
        path = cache_dir() / "onnx" / f"{Path(loaded.source.name).name}-{loaded.num_layers}l-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
        with _lock:
            if not path.is_file():
                if loaded.model.device.type != "cpu" or loaded.model.dtype != torch.float32:
                    raise ValueError("backend='onnx' needs the model on the cpu in float32 (device='cpu', dtype='float32')")
                export_graph(_HiddenStates(loaded.model), path, hidden_state_names(loaded.num_layers))
        return path

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, depths: list[int]) -> dict[int, torch.Tensor]:
        """{depth: hidden state after that many layers} for each of `depths`."""
        names = hidden_state_names(self.num_layers)
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        outputs = self.session.run([names[depth - 1] for depth in depths], feed)
        return {depth: torch.from_numpy(np.asarray(output)) for depth, output in zip(depths, outputs)}


def onnx_model(loaded: LoadedModel) -> OnnxModel:
    """The ONNX Runtime session of `loaded`, shared by every encoder of this process."""
    with _lock:
        session = loaded.sessions.get("onnx")
    if session is None:
        session = OnnxModel(loaded)
        with _lock:
            session = loaded.sessions.setdefault("onnx", session)
    return session


def run_graph(path: str | Path, tokens: Any) -> np.ndarray:
    """The `sentence_embedding` output of an exported graph (`mm2d export --format onnx`) for tokenizer output."""
    session = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: np.asarray(tokens[name], dtype=np.int64) for name in _INPUTS}
    return session.run(["sentence_embedding"], feed)[0]
