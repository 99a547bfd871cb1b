"""Ray Data: embed a Dataset's text column on a pool of actors, each of which loads the cut model once.

```python
import ray.data
from mm2d_integrations.ray import embed_dataset

texts = ray.data.read_parquet("s3://bucket/chunks/")  # a "text" column
vectors = embed_dataset(texts, "mixedbread-ai/mxbai-embed-2d-large-v1", num_layers=12, dimensions=256, actors=8)
```

The model loads once in this process too: its fingerprint is the embedding space every actor must
give (another version of the weights on a node is an error, not a silent second space). `mm2d index
--ray` builds on the same actors (`rag.ray_index`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.core.encoder import EncoderRecipe, Matryoshka2DEncoder
from mm2d_integrations.core.options import EncoderOptions
from mm2d_integrations.core.validation import check_choice, check_int_in_range, install_hint
from mm2d_integrations.retrieval.store_rules import ClusterUnavailable

try:
    import ray
    import ray.data
except ImportError as error:
    raise ImportError(install_hint("ray", "ray")) from error

__all__ = ["KINDS", "LOCAL", "EmbedBatches", "actor_map", "check_address", "connected", "embed_dataset"]

KINDS = ("documents", "queries")
LOCAL = "local"
"""The address that starts a Ray cluster on this machine for the run (as `ray.init(address="local")`)."""
_ADDRESS = re.compile(r"(?:ray://)?(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})")
_PROBE_TIMEOUT_S = 5.0


class EmbedBatches:
    """What each actor of the pool runs: the encoder, built from its recipe once when the actor starts
    (and again only if Ray restarts the actor), then one call per batch of rows."""

    def __init__(
        self, recipe: EncoderRecipe, kind: Literal["documents", "queries"] = "documents",
        text_column: str = "text", embedding_column: str = "embedding",
    ) -> None:
        self.encoder = recipe.build()
        self.encode = self.encoder.encode_documents if kind == "documents" else self.encoder.encode_queries
        self.text_column, self.embedding_column = text_column, embedding_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch[self.embedding_column] = self.encode([str(text) for text in batch[self.text_column]])
        return batch


def actor_map(
    dataset: ray.data.Dataset, actor: type, arguments: dict[str, Any], *,
    actors: int | None, batch_size: int, num_cpus: float, num_gpus: float | None,
) -> ray.data.Dataset:
    """`dataset` mapped by a pool of `actor(**arguments)`: `actors` of them, or (None) from one up to as
    many as the cluster's CPUs (GPUs with `num_gpus`) hold, as the queue asks. Ray Data restarts an actor
    that dies (`max_restarts=-1`) and retries its batch on another (`max_task_retries=-1`): its defaults."""
    if actors is None:
        if not ray.is_initialized():
            ray.init()  # as Ray Data would on first use: the cluster this process belongs to, or a local one
        resources = ray.cluster_resources()
        held = resources.get("GPU", 0) / num_gpus if num_gpus else resources.get("CPU", 1) / num_cpus
        pool = ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(held)))
    else:
        pool = ray.data.ActorPoolStrategy(size=check_int_in_range("actors", actors, 1, 1 << 16))
    return dataset.map_batches(
        actor, fn_constructor_kwargs=arguments, compute=pool, batch_size=check_int_in_range("batch_size", batch_size, 1, 1 << 24),
        batch_format="numpy", num_cpus=num_cpus, num_gpus=num_gpus,
    )


def embed_dataset(
    dataset: ray.data.Dataset,
    model: str | Path | None = None,
    options: EncoderOptions | None = None,
    *,
    encoder: Matryoshka2DEncoder | None = None,
    kind: Literal["documents", "queries"] = "documents",
    text_column: str = "text",
    embedding_column: str = "embedding",
    actors: int | None = None,
    batch_size: int = 256,
    num_cpus: float = 1,
    num_gpus: float | None = None,
    **overrides: Any,
) -> ray.data.Dataset:
    """`dataset` with an `embedding_column`: each row's `text_column` embedded as a document (with the
    document prompt) or, with `kind="queries"`, as a query; float32 vectors of `dimensions` components.

    The encoder is `encoder`, or the one `model` (default: as `Matryoshka2DEncoder`'s) and `options`
    (or their fields by name: `num_layers=12, dimensions=256, compute_precision="bf16"`, a folder
    made by `mm2d adapt` for exit heads) describe. It runs on a pool of `actors` (default: as many
    as the cluster's CPUs hold, one per `num_cpus`; give `num_gpus=1` for one GPU each), each
    embedding `batch_size` rows per call. Lazy, as Ray Data is: nothing runs until the result is
    consumed (`iter_batches`, `write_parquet` ...).
    """
    check_choice("kind", kind, KINDS)
    if encoder is not None and (model is not None or options is not None or overrides):
        raise ValueError("pass either an encoder or the options to build one, not both")
    columns = dataset.columns()  # from the schema; may read a first block
    if columns is not None and text_column not in columns:
        raise ValueError(f"text_column {text_column!r} is not a column of the dataset (columns: {', '.join(columns)})")
    built = encoder or Matryoshka2DEncoder(model or default_model(), options, **overrides)
    arguments = {"recipe": built.recipe, "kind": kind, "text_column": text_column, "embedding_column": embedding_column}
    return actor_map(dataset, EmbedBatches, arguments, actors=actors, batch_size=batch_size, num_cpus=num_cpus, num_gpus=num_gpus)


def check_address(address: str) -> str:
    """`address` if Ray can be asked to use it: `local` (start a cluster here), `auto` (the one `ray
    start` runs here), `HOST:PORT` (a cluster's GCS) or `ray://HOST:PORT` (Ray Client); else a ValueError."""
    if address in (LOCAL, "auto") or _ADDRESS.fullmatch(address):
        return address
    raise ValueError(f"address must be a Ray address: local, auto, HOST:PORT or ray://HOST:PORT (the head's client port, 10001 by default), got {address!r}")


def _probe(address: str) -> None:
    """A ClusterUnavailable at once where nothing listens at HOST:PORT: Ray itself retries for minutes."""
    match = _ADDRESS.fullmatch(address)
    if match is None:
        return
    host, port = match["host"].strip("[]"), int(match["port"])
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as error:
        raise ClusterUnavailable(f"no Ray cluster answers at {address} ({error})") from None


@contextlib.contextmanager
def connected(address: str = LOCAL, *, show_progress: bool = False) -> Iterator[None]:
    """Ray connected for the block, as `address` says (see `check_address`), and shut down after it.
    In a process already connected to Ray (`ray.init` done by the caller), that connection is used and
    kept, once the address is checked."""
    check_address(address)
    _probe(address)
    if ray.is_initialized():
        yield
        return
    dashboard = False if address == LOCAL else None  # None is Ray's default: as if not given
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=show_progress, include_dashboard=dashboard)
    except ConnectionError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ClusterUnavailable(f"no Ray cluster answers at {address} ({reason})") from None
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = show_progress
        logging.getLogger("ray.data").setLevel(logging.INFO if show_progress else logging.WARNING)
        yield
    finally:
        ray.shutdown()
