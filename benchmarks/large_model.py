"""What a user of mixedbread-ai/mxbai-embed-2d-large-v1 gets, measured on a stand-in of its shape.

FOLDER is what benchmarks/large_checkpoint.py writes (BERT-large, float16 safetensors, random
weights); STSB_DIR the STS Benchmark folder (for the mixed texts of docs/performance.md). Three
parts, each one run:

  cpu     texts/s (contenders alternated, best of --repeats), load time and peak RSS (fresh processes,
          least of --load-repeats) of sentence-transformers as it loads the folder (in float16, the
          stored dtype, with transformers 5), sentence-transformers in float32, and this package in
          float32 at each of --depths, compute_precision="bf16", dtype="bfloat16",
          compute_precision="int8" and backend="onnx"; ratios against both sentence-transformers rows; --plot.
  memory  peak RSS and the weights' bytes at each of --depths (and 6), float32 and bfloat16 weights,
          one fresh process each.
  gpu     the same questions on a CUDA GPU: batch sizes (--batch-sizes), float16, bfloat16 and float32
          against sentence-transformers at full and half depth, peak GPU memory in fresh processes.

    python benchmarks/large_checkpoint.py /tmp/mxbai-shaped
    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python benchmarks/large_model.py cpu /tmp/mxbai-shaped STSB_DIR --plot docs/images/large_cpu.png
    HF_HUB_OFFLINE=1 python benchmarks/large_model.py memory /tmp/mxbai-shaped STSB_DIR
    HF_HUB_OFFLINE=1 python benchmarks/large_model.py gpu /tmp/mxbai-shaped STSB_DIR

Random weights: speed and memory are the real model's, the vectors are not. Agreement between
contenders is printed as a check of the numerics only, as the centred cosine (`centred_min_cosine`):
a random BERT's CLS vectors of any two texts are within 0.999 cosine of each other, so a plain cosine
would say nothing. int8's calibration sees no real activation outliers here, so its quality on the
real model is not measured by this run (docs/performance.md measures it on MiniLM).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from performance import best_of, describe_machine, load_and_memory, mixed_corpus  # noqa: E402

ST_AS_LOADED = "sentence-transformers, as loaded (float16)"
ST_FLOAT32 = "sentence-transformers, float32"


@dataclass(frozen=True)
class Row:
    """One contender: `kind` "st" (sentence-transformers; `options` its model_kwargs, dtypes by name)
    or "ours" (`options` encoder options), run at `layers`."""

    name: str
    kind: str
    layers: int
    options: dict[str, Any] = field(default_factory=dict)
    reference: str | None = None  # the row whose vectors this one should reproduce
    batch_size: int = 32


def cpu_rows(depths: list[int]) -> list[Row]:
    full, ours = depths[0], f"ours float32, {depths[0]} layers"
    return [
        Row(ST_AS_LOADED, "st", full, {}, ST_FLOAT32),
        Row(ST_FLOAT32, "st", full, {"dtype": "float32"}),
        *[Row(f"ours float32, {depth} layers", "ours", depth, {}, ST_FLOAT32 if depth == full else None) for depth in depths],
        Row('ours compute_precision="bf16"', "ours", full, {"compute_precision": "bf16"}, ours),
        Row('ours dtype="bfloat16"', "ours", full, {"dtype": "bfloat16"}, ours),
        Row('ours compute_precision="int8"', "ours", full, {"compute_precision": "int8"}, ours),
        Row('ours backend="onnx"', "ours", full, {"backend": "onnx"}, ours),
    ]


def gpu_rows(full: int, batch_size: int) -> list[Row]:
    """At full and half depth, in batches of `batch_size` (a suffix of every name but at 32)."""
    half, suffix = full // 2, batch_suffix(batch_size)
    reference = ST_FLOAT32 + suffix
    rows = [Row(ST_AS_LOADED + suffix, "st", full, {}, reference, batch_size), Row(reference, "st", full, {"dtype": "float32"}, None, batch_size)]
    for name, options in (("float32", {}), ('dtype="float16"', {"dtype": "float16"}), ('dtype="bfloat16"', {"dtype": "bfloat16"}),
                          ('compute_precision="bf16"', {"compute_precision": "bf16"})):
        rows += [Row(f"ours {name}, {depth} layers{suffix}", "ours", depth, options, reference if depth == full else None, batch_size)
                 for depth in (full, half)]
    return rows


def batch_suffix(batch_size: int) -> str:
    return "" if batch_size == 32 else f", batches of {batch_size}"


def spread_sample(texts: list[str], count: int) -> list[str]:
    """`count` texts taken at an even stride, so that the mix of long and short texts is kept."""
    stride = max(1, len(texts) // count)
    return texts[::stride][:count]


def centred_min_cosine(vectors: np.ndarray, reference: np.ndarray) -> float:
    """The least cosine between each row and its reference, both normalised, after both lose the
    reference's mean vector: of the part that depends on the text, a sliver for random weights."""
    a, b = (rows / np.linalg.norm(rows, axis=1, keepdims=True) for rows in (vectors, reference))
    centre = b.mean(axis=0)
    a, b = a - centre, b - centre
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def make_encode(row: Row, folder: str, device: str, encoders: dict[str, Any]) -> Callable[[list[str]], np.ndarray]:
    """An in-process encode function for `row`. A sentence-transformers model is loaded once per dtype;
    our rows at several depths share one full-depth encoder per set of options and batch size (whose
    model is loaded once per dtype): an encoder cut to fewer layers runs these very layer modules, and
    the rest would only hold memory."""
    key = json.dumps([row.kind, row.options, row.batch_size if row.kind == "ours" else None], sort_keys=True)
    if row.kind == "st":
        import torch
        from sentence_transformers import SentenceTransformer

        if key not in encoders:
            encoders[key] = SentenceTransformer(folder, device=device, model_kwargs={name: getattr(torch, value) for name, value in row.options.items()} or None)
        model = encoders[key]
        return lambda texts: model.encode(texts, batch_size=row.batch_size)
    from mm2d_integrations import Matryoshka2DEncoder

    if key not in encoders:
        encoders[key] = Matryoshka2DEncoder(folder, device=device, batch_size=row.batch_size, **row.options)
    encoder = encoders[key]
    return lambda texts: encoder.encode(texts, prompt=encoder.document_prompt, num_layers=row.layers)


def throughput(rows: list[Row], folder: str, texts: list[str], repeats: int, device: str) -> dict[str, dict[str, Any]]:
    """{row: one-time setup seconds, best wall and its CPU seconds, texts/s, vectors} with the rows alternated."""
    encoders: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, Callable[[], object]] = {}
    for row in rows:
        started = time.perf_counter()
        encode = make_encode(row, folder, device, encoders)
        encode(texts[:4])  # warm up (oneDNN primitives, compiled kernels, CUDA context)
        results[row.name] = {"setup_s": time.perf_counter() - started}
        print(f"  {row.name}: loaded and warmed up in {results[row.name]['setup_s']:.1f} s", flush=True)
        runs[row.name] = lambda encode=encode, name=row.name: results[name].__setitem__("vectors", encode(texts))
    for name, (wall, cpu) in best_of(runs, repeats).items():
        results[name].update(wall_s=wall, cpu_s=cpu, texts_per_s=len(texts) / wall, texts_per_cpu_s=1 / cpu)
    return results


def agreement(rows: list[Row], results: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {row.name: centred_min_cosine(results[row.name]["vectors"], results[row.reference]["vectors"]) for row in rows if row.reference}


def cpu_part(args: argparse.Namespace) -> None:
    import os

    os.environ["MM2D_CACHE_DIR"] = tempfile.mkdtemp(prefix="mm2d-large-cache-")  # a cold graph cache: onnx's export is timed
    texts = spread_sample(mixed_corpus(args.stsb), args.texts)
    rows = cpu_rows(args.depths)
    print(f"{len(texts)} mixed texts, {sum(map(len, texts)) / len(texts):.0f} characters on average; best of {args.repeats}\n")
    results = throughput(rows, str(args.folder), texts, args.repeats, "cpu")
    agreed = agreement(rows, results)
    sample = spread_sample(texts, args.sample)
    print(f"\nfresh processes: load, then encode {len(sample)} texts (least of {args.load_repeats})", flush=True)
    for row in rows:
        results[row.name].update(load_and_memory(row.kind, row.layers, sample, args.load_repeats, path=str(args.folder), options=row.options))
        print(f"  {row.name}: load {results[row.name]['load_s']:.1f} s, peak RSS {results[row.name]['peak_rss_mb']:.0f} MB", flush=True)
    print_table(rows, results, agreed)
    if args.plot:
        plot(rows, results, args.plot)
        print(f"\nplot: {args.plot}")


def print_table(rows: list[Row], results: dict[str, dict[str, Any]], agreed: dict[str, float]) -> None:
    def ratio(value: float, baseline: str, key: str) -> str:
        return f"{value / results[baseline][key]:.2f}x"

    print("\n| contender | texts/s (wall) | x ST as loaded | x ST float32 | CPU s | CPU: x ST as loaded | CPU: x ST float32 | load s "
          "| peak RSS MB | RSS x ST as loaded | RSS x ST float32 | setup s | centred min cos |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        numbers = results[row.name]
        agreement_cell = f"{agreed[row.name]:.5f}" if row.name in agreed else ""
        print(
            f"| {row.name} | {numbers['texts_per_s']:.2f} | {ratio(numbers['texts_per_s'], ST_AS_LOADED, 'texts_per_s')} | "
            f"{ratio(numbers['texts_per_s'], ST_FLOAT32, 'texts_per_s')} | {numbers['cpu_s']:.1f} | "
            f"{ratio(1 / numbers['cpu_s'], ST_AS_LOADED, 'texts_per_cpu_s')} | {ratio(1 / numbers['cpu_s'], ST_FLOAT32, 'texts_per_cpu_s')} | "
            f"{numbers['load_s']:.1f} | {numbers['peak_rss_mb']:.0f} | {ratio(numbers['peak_rss_mb'], ST_AS_LOADED, 'peak_rss_mb')} | "
            f"{ratio(numbers['peak_rss_mb'], ST_FLOAT32, 'peak_rss_mb')} | {numbers['setup_s']:.1f} | {agreement_cell} |"
        )
    print("(texts/s and CPU ratios: higher is faster; RSS ratios: lower is smaller. centred min cos: against the row it should reproduce, "
          "numerics only on random weights.)")


def plot(rows: list[Row], results: dict[str, dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row.name for row in rows][::-1]
    colours = ["tab:gray" if row.kind == "st" else "tab:blue" for row in rows][::-1]
    figure, (speed, memory) = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    speed.barh(names, [results[name]["texts_per_s"] for name in names], color=colours)
    speed.axvline(results[ST_AS_LOADED]["texts_per_s"], color="black", linestyle=":", linewidth=1)
    speed.set(xlabel="texts/s (mixed texts, best of the run)", title="throughput, higher is better")
    memory.barh(names, [results[name]["peak_rss_mb"] / 1024 for name in names], color=colours)
    memory.set(xlabel="GiB peak RSS (fresh process: load, then encode)", title="memory, lower is better")
    figure.suptitle("BERT-large shaped like mxbai-embed-2d-large-v1 (random float16 weights), 2 shared CPU cores")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def memory_part(args: argparse.Namespace) -> None:
    sample = spread_sample(mixed_corpus(args.stsb), args.sample)
    depths = sorted({*args.depths, 6}, reverse=True)
    print(f"fresh processes: load the folder cut to each depth, then encode {len(sample)} mixed texts\n")
    print("| weights | layers | transformer weights MB | of which layers MB | peak RSS after loading MB | peak RSS after encoding MB "
          "| anonymous RSS after loading MB | file-backed RSS after loading MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    measured = {}
    for dtype in ("float32", "bfloat16"):
        for depth in depths:
            numbers = measured[dtype, depth] = load_and_memory("ours", depth, sample, 1, path=str(args.folder), options={"dtype": dtype})
            print(f"| {dtype} | {depth} | {numbers['weights_mb']:.0f} | {numbers['layer_weights_mb']:.0f} | {numbers['load_peak_rss_mb']:.0f} | "
                  f"{numbers['peak_rss_mb']:.0f} | {numbers['anon_rss_mb']:.0f} | {numbers['file_rss_mb']:.0f} |", flush=True)
    full, half = depths[0], depths[0] // 2
    for dtype in ("float32", "bfloat16"):
        if (dtype, half) in measured:
            a, b = measured[dtype, full], measured[dtype, half]
            print(f"{dtype}: {full} -> {half} layers frees {a['layer_weights_mb'] - b['layer_weights_mb']:.0f} MB of weights; peak RSS falls by "
                  f"{a['peak_rss_mb'] - b['peak_rss_mb']:.0f} MB (after loading: {a['load_peak_rss_mb'] - b['load_peak_rss_mb']:.0f} MB)")


def gpu_part(args: argparse.Namespace) -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("the gpu part needs a CUDA device, and torch sees none")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    texts = spread_sample(mixed_corpus(args.stsb), args.texts)
    full = args.depths[0]
    rows = [row for batch_size in args.batch_sizes for row in gpu_rows(full, batch_size)]
    print(f"{len(texts)} mixed texts, {sum(map(len, texts)) / len(texts):.0f} characters on average; best of {args.repeats}", flush=True)
    results = throughput(rows, str(args.folder), texts, args.repeats, "cuda")
    print_gpu_table(rows, results)
    del results
    torch.cuda.empty_cache()
    sample = spread_sample(texts, args.sample)
    print(f"\npeak GPU memory, fresh processes: load, then encode {len(sample)} texts in batches of 32")
    print("| contender | peak GPU memory MB | weights MB | load s |")
    print("| --- | ---: | ---: | ---: |")
    for row in gpu_rows(full, 32):
        if row.options.get("compute_precision") != "bf16":
            numbers = load_and_memory(row.kind, row.layers, sample, 1, path=str(args.folder), device="cuda", options=row.options)
            print(f"| {row.name} | {numbers['peak_gpu_mb']:.0f} | {numbers['weights_mb']:.0f} | {numbers['load_s']:.1f} |", flush=True)


def print_gpu_table(rows: list[Row], results: dict[str, dict[str, Any]]) -> None:
    agreed = agreement(rows, results)
    print("\n| contender | texts/s | x ST as loaded | x ST float32 | centred min cos |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        rate, suffix = results[row.name]["texts_per_s"], batch_suffix(row.batch_size)
        st_as_loaded, st_float32 = (results[name + suffix]["texts_per_s"] for name in (ST_AS_LOADED, ST_FLOAT32))
        cell = f"{agreed[row.name]:.5f}" if row.name in agreed else ""
        print(f"| {row.name} | {rate:.0f} | {rate / st_as_loaded:.2f}x | {rate / st_float32:.2f}x | {cell} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("part", choices=["cpu", "memory", "gpu"])
    parser.add_argument("folder", type=Path, help="the folder benchmarks/large_checkpoint.py wrote")
    parser.add_argument("stsb", type=Path, help="folder with sts-dev.csv (the mixed texts' sentences)")
    parser.add_argument("--depths", type=int, nargs="+", default=[24, 20, 16, 12], help="depths of our float32 rows, the full one first")
    parser.add_argument("--texts", type=int, default=40, help="mixed texts timed (an even stride over the 2,004 of docs/performance.md)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sample", type=int, default=8, help="texts a fresh process encodes after loading")
    parser.add_argument("--load-repeats", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256], help="gpu part")
    parser.add_argument("--plot", type=Path, help="cpu part: where to save the plot")
    args = parser.parse_args()
    describe_machine()
    {"cpu": cpu_part, "memory": memory_part, "gpu": gpu_part}[args.part](args)


if __name__ == "__main__":
    main()
