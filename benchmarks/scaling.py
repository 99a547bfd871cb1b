"""Where the time goes when indexing spreads over Ray (docs/scaling.md), measured in one run:

1. embedding throughput of `embed_dataset` with 1 and 2 actors, against the encoder in this process
   (the baseline); each actor count is timed at two dataset sizes, and throughput is the slope
   (extra texts / extra seconds), so that starting the actors (a fresh process loading torch and the
   model) is reported apart instead of diluting the rate;
2. each actor's peak resident memory (ru_maxrss) with the model at full and at half depth;
3. Chroma server write throughput: vectors/s upserted into `chroma run` on loopback, in the indexer's
   batches (64 chunks with their text and metadata), at 384, 128 and 64 dimensions.

Usage: OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python benchmarks/scaling.py [--texts 300] [--model M] [--writes 4000]
The texts are the sample corpus's chunks (cut by the model's tokens), repeated. Ray gets num_cpus=2.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import chromadb
import numpy as np
import ray
import ray.data

from mm2d_integrations import Matryoshka2DEncoder
from mm2d_integrations.core.checkpoint import default_model
from mm2d_integrations.ray import EmbedBatches, actor_map, embed_dataset
from mm2d_integrations.retrieval.documents import Chunking, load_folder, split_documents
from mm2d_integrations.samples import SAMPLE_DOCS

BATCH = 64  # rag.indexer.BATCH: the chunks of one write


class PeakMemory(EmbedBatches):
    """An actor that also reports its process's peak resident memory after each batch."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = super().__call__(batch)
        batch["peak_mib"] = np.full(len(batch[self.text_column]), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return batch


def _texts(encoder: Matryoshka2DEncoder, count: int) -> list[str]:
    chunks = [chunk.text for chunk in split_documents(load_folder(SAMPLE_DOCS).documents, Chunking.by_tokens(encoder))]
    return [chunks[number % len(chunks)] + f" ({number})" for number in range(count)]  # distinct texts


def _timed_embedding(encoder: Matryoshka2DEncoder, texts: list[str], actors: int) -> float:
    started = time.perf_counter()
    dataset = ray.data.from_items([{"text": text} for text in texts], override_num_blocks=max(2, len(texts) // 32))
    rows = embed_dataset(dataset, encoder=encoder, actors=actors, batch_size=32).materialize().count()
    assert rows == len(texts)
    return time.perf_counter() - started


def _embedding(encoder: Matryoshka2DEncoder, count: int) -> dict[str, float]:
    small, large = _texts(encoder, count), _texts(encoder, 3 * count)
    rates: dict[str, float] = {}
    started = time.perf_counter()
    encoder.encode_documents(large[count:])
    rates["in this process"] = 2 * count / (time.perf_counter() - started)
    for actors in (1, 2):
        seconds_small = _timed_embedding(encoder, small, actors)
        seconds_large = _timed_embedding(encoder, large, actors)
        rate = 2 * count / max(1e-9, seconds_large - seconds_small)
        rates[f"{actors} actor(s)"] = rate
        rates[f"{actors} actor(s): start-up s"] = max(0.0, seconds_small - count / rate)
    return rates


def _peak_memory(model: str, count: int, max_layers: int) -> dict[int, float]:
    peaks = {}
    for depth in (max_layers, max_layers // 2):
        encoder = Matryoshka2DEncoder(model, num_layers=depth)
        dataset = ray.data.from_items([{"text": text} for text in _texts(encoder, count)])
        arguments = {"recipe": encoder.recipe, "kind": "documents", "text_column": "text", "embedding_column": "embedding"}
        rows = actor_map(dataset, PeakMemory, arguments, actors=1, batch_size=32, num_cpus=1, num_gpus=None).select_columns(["peak_mib"])
        peaks[depth] = max(row["peak_mib"] for row in rows.take_all())
    return peaks


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _chroma_writes(count: int, folder: Path) -> dict[tuple[int, int], float]:
    port = _free_port()
    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    server = subprocess.Popen([chroma, "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                client = chromadb.HttpClient(host="127.0.0.1", port=port)
                client.heartbeat()
                break
            except Exception:
                time.sleep(0.2)
        rng = np.random.default_rng(0)
        text = "x" * 600  # a chunk's text travels and is stored with its vector
        rates = {}
        for dims, batch in ((384, BATCH), (128, BATCH), (64, BATCH), (384, 8 * BATCH)):
            collection = client.create_collection(f"writes-{dims}-{batch}", embedding_function=None, configuration={"hnsw": {"space": "cosine"}})
            vectors = rng.standard_normal((count, dims)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            started = time.perf_counter()
            for start in range(0, count, batch):
                ids = [f"doc{number // 20}.md#{number % 20}#{number:016x}" for number in range(start, min(count, start + batch))]
                collection.upsert(ids=ids, embeddings=vectors[start : start + batch], documents=[text] * len(ids),
                                  metadatas=[{"source": identifier.split("#")[0], "chunk": 0} for identifier in ids])
            rates[dims, batch] = count / (time.perf_counter() - started)
        return rates
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--texts", type=int, default=300, help="texts of the smaller dataset (the larger has 3x)")
    parser.add_argument("--writes", type=int, default=4000, help="vectors written into Chroma per width")
    args = parser.parse_args()
    model = args.model or default_model()
    encoder = Matryoshka2DEncoder(model)
    print(f"machine: {os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}; model {encoder.model_name}, "
          f"{encoder.num_layers} layers, {encoder.dimensions} dims")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        rates = _embedding(encoder, args.texts)
        baseline = rates["in this process"]
        print("\nembedding throughput (texts/s; slope between two dataset sizes)")
        for name, value in rates.items():
            print(f"  {name:28s} {value:8.1f}" + ("" if name.endswith(" s") else f"   {value / baseline:.2f}x the process"))
        peaks = _peak_memory(model, 64, encoder.max_layers)
        print("\nper-actor peak resident memory (MiB)")
        for depth, peak in peaks.items():
            print(f"  num_layers={depth}: {peak:.0f}")
    finally:
        ray.shutdown()
    with tempfile.TemporaryDirectory(prefix="mm2d-scaling-") as scratch:
        writes = _chroma_writes(args.writes, Path(scratch))
    print("\nChroma server writes (vectors/s, with a 600-character text and metadata each)")
    for (dims, batch), rate in writes.items():
        print(f"  {dims:4d} dims, batches of {batch:3d}: {rate:8.1f}   {rate / rates['1 actor(s)']:.1f}x one actor's embedding rate")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
