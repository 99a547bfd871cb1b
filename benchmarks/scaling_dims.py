"""Where fewer dimensions start to pay: Chroma (embedded and `chroma run`) and exact search, by size.

For each collection size: build time, disk, resident memory and single-query latency of Chroma at
384, 128 and 64 dimensions; exact (brute-force) search over float32 and float16 matrices at the same
widths; and the funnel (`FunnelIndex`: a 64- or 128-dimension HNSW shortlist, re-ranked from the
memory-mapped float16 rows, and, for comparison, from vectors read back from Chroma as before).

Vectors: all-MiniLM-L6-v2's vectors of the STS Benchmark retrieval set (11,599 real documents,
`retrieval_sets.py stsb`); larger collections repeat them with small random perturbations (each copy
after the first gets Gaussian noise of norm 0.5 before normalising again, cosine about 0.9 to its
original). Latency does not depend on what the vectors mean; quality is measured on the real set only
(`benchmarks/funnel.py`). Queries: the set's real query vectors.

Every stage runs on one BLAS thread. Every build and every memory probe runs in a process of its own (embedded Chroma keeps what it loads
for the life of the process); latencies of one size are measured in one process, the searches in
turns query by query, and the best of `--rounds` medians kept, so that load weighs on all alike.
A size whose build is predicted (from the rate of the previous size) to take longer than `--budget`
minutes is left out, and the predicted time printed.

Usage: MM2D_STSB_DIR=... HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/scaling_dims.py \
    [--sizes 20000 100000 300000 1000000] [--budget 20] [--work DIR] [--json OUT.json] [--plot OUT.png] [--no-server]
    python benchmarks/scaling_dims.py --plot-only OUT.json --plot OUT.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

DIMS = (384, 128, 64)
FUNNELS = ((64, 10), (64, 3), (128, 10))
K = 10
BATCH = 5000
NOISE = 0.5
NAME = "bench"
QUERIES = 200
TEXT = "chroma 384 with text"  # what a retriever asks: ids, distances, documents and metadata; what the funnel returns
PROBE_QUERIES = 50
# every stage on one BLAS / OpenMP thread: on a busy machine a second thread that is not scheduled stalls a whole
# matrix-vector product (20k x 64 took 7 ms instead of 0.3); one query, one core, as Chroma searches it
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _here() -> list[str]:
    return [sys.executable, str(Path(__file__).resolve())]


def _child(*args: str) -> dict[str, Any]:
    """Run this script's `args` stage in a fresh process; its last stdout line is a JSON object."""
    done = subprocess.run([*_here(), *args], capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
    if done.returncode:
        raise RuntimeError(f"stage {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


# ---- data -------------------------------------------------------------------------------------


def base_vectors(work: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(documents, queries, texts): MiniLM's vectors of the STS retrieval set, encoded once and cached."""
    cache = work / "base.npz"
    if not cache.exists():
        from retrieval_sets import build_stsb

        from mm2d_integrations import Matryoshka2DEncoder
        from mm2d_integrations.core.checkpoint import default_model
        from mm2d_integrations.evaluation.datasets import read_beir

        dataset = read_beir(build_stsb(work / "stsb"))
        encoder = Matryoshka2DEncoder(default_model())
        documents = encoder.encode_documents(dataset.documents, show_progress=True)
        queries = encoder.encode_queries(dataset.queries)
        np.savez(cache, documents=documents, queries=queries, texts=np.array(dataset.documents))
    stored = np.load(cache)
    return stored["documents"], stored["queries"], [str(text) for text in stored["texts"]]


def vectors(base: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the collection: the real vectors, then perturbed copies (seeded by row block)."""
    rows = np.arange(start, stop)
    out = base[rows % len(base)].astype(np.float32)
    copies = rows >= len(base)
    if copies.any():
        noise = np.random.default_rng(start).standard_normal((int(copies.sum()), base.shape[1])).astype(np.float32)
        noise *= NOISE / np.linalg.norm(noise, axis=1, keepdims=True)
        out[copies] += noise
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def encoder():
    from mm2d_integrations import Matryoshka2DEncoder
    from mm2d_integrations.core.checkpoint import default_model

    return Matryoshka2DEncoder(default_model())


# ---- stages, each in its own process ----------------------------------------------------------


def stage_build(work: Path, size: int, what: str) -> dict[str, Any]:
    """Build one part in `work/<size>`: a collection of `what` dimensions, or the funnel's rows."""
    from mm2d_integrations.chroma import FunnelIndex, chroma_client, open_collection
    from mm2d_integrations.core.encoder import truncate_dimensions

    base, _, texts = base_vectors(work)
    folder = work / str(size)
    client = chroma_client(folder)
    model = encoder()
    before = folder_bytes(folder)
    started = time.perf_counter()
    if what == "rows":
        index = FunnelIndex(model, NAME, shortlist_dims=DIMS[-1], client=client)
        for start in range(0, size, BATCH):
            rows = range(start, min(size, start + BATCH))
            index.rows.put([str(row) for row in rows], vectors(base, start, rows.stop), [texts[row % len(texts)] for row in rows], [{"part": row % 10} for row in rows])
    else:
        dims = int(what)
        name = NAME if dims == base.shape[1] else f"{NAME}-short{dims}"
        collection = open_collection(model.with_dimensions(dims) if dims < base.shape[1] else model, name, client=client)
        for start in range(0, size, BATCH):
            stop = min(size, start + BATCH)
            rows = range(start, stop)
            collection.upsert(
                ids=[str(row) for row in rows],
                embeddings=truncate_dimensions(vectors(base, start, stop), dims),
                documents=[texts[row % len(texts)] for row in rows] if name == NAME else None,
                metadatas=[{"part": row % 10} for row in rows],
            )
    seconds = time.perf_counter() - started
    del client
    return {"seconds": seconds, "bytes": folder_bytes(folder) - before}


def _searches(folder: Path, model: Any, dims_list: tuple[int, ...], funnels: tuple[tuple[int, int], ...], *, server: tuple[str, int] | None = None) -> dict[str, Callable[[np.ndarray], list[str]]]:
    """Query vector -> ids, for Chroma at each width and each funnel."""
    from mm2d_integrations.chroma import FunnelIndex, chroma_client
    from mm2d_integrations.core.encoder import truncate_dimensions

    client = chroma_client(host=server[0], port=server[1]) if server else chroma_client(folder, create=False)
    searches: dict[str, Callable[[np.ndarray], list[str]]] = {}
    for dims in dims_list:
        collection = client.get_collection(NAME if dims == 384 else f"{NAME}-short{dims}", embedding_function=None)
        for label, include in [(f"chroma {dims}", ["distances"]), *([(TEXT, ["documents", "metadatas", "distances"])] if dims == 384 else [])]:

            def chroma(query: np.ndarray, collection: Any = collection, dims: int = dims, include: list = include) -> list[str]:
                return collection.query(query_embeddings=truncate_dimensions(query[None, :], dims), n_results=K, include=include)["ids"][0]

            searches[label] = chroma
    for dims, factor in funnels:
        index = FunnelIndex(model, NAME, shortlist_dims=dims, client=client, create=False)
        label = "funnel" if index.rows is not None else "funnel (server: vectors read from Chroma)"
        searches[f"{label} {dims}x{factor}"] = lambda query, index=index, factor=factor: [hit.id for hit in index.search_vector(query, K, factor)]
        if index.rows is not None and dims == DIMS[-1]:
            reading = FunnelIndex(model, NAME, shortlist_dims=dims, client=client, create=False)
            reading.rows = None  # the path before the rows: full vectors read back from Chroma
            searches[f"funnel, vectors read from Chroma {dims}x{factor}"] = (
                lambda query, index=reading, factor=factor: [hit.id for hit in index.search_vector(query, K, factor)]
            )
    return searches


def _brute_searches(base: np.ndarray, size: int) -> dict[str, Callable[[np.ndarray], list[str]]]:
    """Exact search: numpy matrix-vector product for float32, torch's for float16 (numpy has no fast float16 product)."""
    import torch

    torch.set_num_threads(1)
    full = np.concatenate([vectors(base, start, min(size, start + BATCH)) for start in range(0, size, BATCH)])
    searches: dict[str, Callable[[np.ndarray], list[str]]] = {}
    for dims in DIMS:
        matrix = np.ascontiguousarray(full[:, :dims])
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        half = torch.from_numpy(matrix.astype(np.float16))

        def f32(query: np.ndarray, matrix: np.ndarray = matrix, dims: int = dims) -> list[str]:
            scores = matrix @ query[:dims]
            top = np.argpartition(-scores, K)[:K]
            return [str(row) for row in top[np.argsort(-scores[top])]]

        def f16(query: np.ndarray, half: Any = half, dims: int = dims) -> list[str]:
            scores = half @ torch.from_numpy(query[:dims].astype(np.float16))
            return [str(row) for row in torch.topk(scores.float(), K).indices.tolist()]

        searches[f"exact float32 {dims}"], searches[f"exact float16 {dims}"] = f32, f16
    return searches


def timed(searches: dict[str, Callable[[np.ndarray], list[str]]], queries: np.ndarray, rounds: int) -> tuple[dict[str, float], dict[str, list[list[str]]]]:
    """Median ms per query of each search, best of `rounds`; searches in turns, query by query."""
    for search in searches.values():
        for query in queries[:20]:
            search(query)  # warm-up: load the indexes, map the rows
    best = dict.fromkeys(searches, math.inf)
    rankings: dict[str, list[list[str]]] = {name: [] for name in searches}
    for _ in range(rounds):
        seconds: dict[str, list[float]] = {name: [] for name in searches}
        for query in queries:
            for name, search in searches.items():
                started = time.perf_counter()
                found = search(query)
                seconds[name].append(time.perf_counter() - started)
                if len(rankings[name]) < len(queries):
                    rankings[name].append(found)
        for name in searches:
            best[name] = min(best[name], 1000 * float(np.median(seconds[name])))
    return best, rankings


def stage_latency(work: Path, size: int, rounds: int, server: str | None) -> dict[str, Any]:
    base, queries, _ = base_vectors(work)
    queries = queries[:QUERIES]
    model = encoder()
    address = (server.split(":")[0], int(server.split(":")[1])) if server else None
    # Chroma and the funnels in one pass, exact scans in another: a scan of the whole matrix between two
    # searches would flush the CPU caches for whichever search comes next.
    ms, rankings = timed(_searches(work / str(size), model, DIMS, FUNNELS, server=address), queries, rounds)
    if not server:
        scanned = timed(_brute_searches(base, size), queries, rounds)
        ms, rankings = {**ms, **scanned[0]}, {**rankings, **scanned[1]}
    exact = rankings.get("exact float32 384")
    recall = {name: 100 * float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, exact)])) for name, found in rankings.items()} if exact else {}
    return {"ms": ms, "recall": recall}


def stage_memory(work: Path, size: int, what: str, server: str | None) -> dict[str, Any]:
    """Resident memory a search of `what` adds to a process that has opened the store (or, with a
    server, the server's resident memory after it), and the rows mapped by the funnel."""
    _, queries, _ = base_vectors(work)
    model = encoder()
    address = (server.split(":")[0], int(server.split(":")[1])) if server else None
    dims, funnels = ((int(what.split()[1]),), ()) if what.startswith("chroma") else ((), (tuple(int(x) for x in what.split()[-1].split("x")),))
    before = rss()
    searches = _searches(work / str(size), model, dims, funnels, server=address)
    search = searches[what] if what in searches else next(s for name, s in searches.items() if name.startswith("funnel (server") and name.endswith(what.split()[-1]))
    opened = rss()
    for query in queries[:PROBE_QUERIES]:
        search(query)
    return {"rss_added": rss() - opened, "rss_open": opened - before, "rss": rss()}


# ---- a Chroma server --------------------------------------------------------------------------


class ChromaServer:
    """`chroma run` on a folder, on a free port, for the life of a `with` block."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> ChromaServer:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        chroma = Path(sys.executable).with_name("chroma")
        self.process = subprocess.Popen(
            [str(chroma), "run", "--path", str(self.folder), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("chroma run did not start in 120 s")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss(self) -> int:
        import psutil

        process = psutil.Process(self.process.pid)
        return sum(part.memory_info().rss for part in [process, *process.children(recursive=True)])

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


# ---- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work
    base_vectors(work)  # encode once, before any timing
    results: dict[str, Any] = {"sizes": {}, "left_out": {}}
    rate: dict[str, float] = {}
    for size in sorted(args.sizes):
        predicted = sum(size / rate[part] for part in rate) / 60 if rate else 0.0
        if predicted > args.budget:
            results["left_out"][str(size)] = {"predicted_build_minutes": predicted, "rates_per_second": dict(rate)}
            print(f"{size}: left out, building it would take about {predicted:.0f} min (budget {args.budget})", flush=True)
            continue
        row: dict[str, Any] = {"build": {}, "memory": {}, "server_memory": {}}
        for part in (*[str(dims) for dims in DIMS], "rows"):
            row["build"][part] = _child("_build", str(work), str(size), part)
            # HNSW inserts slow down as the graph grows: predict the next size from a rate a third lower
            rate[part] = size / row["build"][part]["seconds"] / 1.5
            print(f"{size} build {part}: {row['build'][part]}", flush=True)
        row["latency"] = _child("_latency", str(work), str(size), str(args.rounds), "")
        print(f"{size} latency: {json.dumps(row['latency'])}", flush=True)
        probes = [f"chroma {dims}" for dims in DIMS] + [f"funnel {dims}x{factor}" for dims, factor in FUNNELS]
        for what in probes:
            row["memory"][what] = _child("_memory", str(work), str(size), what, "")
            print(f"{size} memory {what}: {row['memory'][what]}", flush=True)
        if args.server:
            with ChromaServer(work / str(size)) as server:
                row["server_latency"] = _child("_latency", str(work), str(size), str(args.rounds), server.address)
            print(f"{size} server latency: {json.dumps(row['server_latency'])}", flush=True)
            for what in probes:
                with ChromaServer(work / str(size)) as server:
                    idle = server.rss()
                    _child("_memory", str(work), str(size), what, server.address)
                    row["server_memory"][what] = {"rss": server.rss(), "rss_idle": idle}
                print(f"{size} server memory {what}: {row['server_memory'][what]}", flush=True)
        results["sizes"][str(size)] = row
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    return results


def report(results: dict[str, Any]) -> None:
    for size, row in results["sizes"].items():
        print(f"\n== {int(size):,} vectors")
        single = row["latency"]["ms"][TEXT]
        for name, ms in row["latency"]["ms"].items():
            recall = row["latency"]["recall"].get(name)
            print(f"  {name:<46} {ms:8.3f} ms  {ms / single:5.2f}x {TEXT}" + (f"  recall@10 vs exact {recall:5.1f}" if recall is not None else ""))
        for name, ms in row.get("server_latency", {}).get("ms", {}).items():
            print(f"  server {name:<39} {ms:8.3f} ms")
        for part, built in row["build"].items():
            print(f"  build {part:<5} {built['seconds']:8.1f} s  {built['bytes'] / 1e6:8.1f} MB on disk  {int(size) / built['seconds']:8.0f} vectors/s")
        for what, memory in row["memory"].items():
            print(f"  memory {what:<14} +{memory['rss_added'] / 1e6:7.1f} MB resident after {PROBE_QUERIES} queries (process {memory['rss'] / 1e6:.0f} MB)")
        for what, memory in row.get("server_memory", {}).items():
            print(f"  server memory {what:<14} {memory['rss'] / 1e6:7.1f} MB resident (idle {memory['rss_idle'] / 1e6:.0f} MB)")
    for size, why in results["left_out"].items():
        print(f"\n{int(size):,} vectors left out: predicted build {why['predicted_build_minutes']:.0f} min; rates {why['rates_per_second']}")


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {int(size): row for size, row in results["sizes"].items()}
    last = rows[max(rows)]

    def series(*keys: str) -> tuple[list[int], list[float]]:
        """The sizes that measured `row[keys[0]][keys[1]]...` and the values (an older run may lack a contender)."""
        points = []
        for size, row in rows.items():
            value: Any = row
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                points.append((size, value))
        return [size for size, _ in points], [value for _, value in points]

    figure, (latency, memory) = plt.subplots(1, 2, figsize=(13, 5))
    for name in last["latency"]["ms"]:
        if "read from" not in name:
            style = "-o" if name.startswith("chroma") else "--s" if name.startswith("funnel") else ":^"
            latency.plot(*series("latency", "ms", name), style, label=name)
    for name in last.get("server_latency", {}).get("ms", {}):
        if name.startswith("chroma"):
            latency.plot(*series("server_latency", "ms", name), "-.x", label=f"server {name}")
    latency.set(xscale="log", yscale="log", xlabel="vectors", ylabel="median ms per query", title="single-query latency")
    latency.legend(fontsize=7)
    for what in last["memory"]:
        sizes, used = series("memory", what, "rss_added")
        memory.plot(sizes, [value / 1e6 for value in used], "-o", label=f"{what}: resident added")
    for part in last["build"]:
        sizes, used = series("build", part, "bytes")
        memory.plot(sizes, [value / 1e6 for value in used], ":", label=f"disk {part}")
    memory.set(xscale="log", yscale="log", xlabel="vectors", ylabel="MB", title="memory and disk")
    memory.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):  # a stage, run by `_child`
        stage, work, size, *rest = sys.argv[1:]
        if stage == "_build":
            result = stage_build(Path(work), int(size), rest[0])
        elif stage == "_latency":
            result = stage_latency(Path(work), int(size), int(rest[0]), rest[1] or None)
        else:
            result = stage_memory(Path(work), int(size), rest[0], rest[1] or None)
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 300_000, 1_000_000])
    parser.add_argument("--budget", type=float, default=20.0, help="minutes a size's build may take (predicted)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="where to build (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--plot-only", type=Path, default=None, help="draw --plot from a --json of an earlier run")
    parser.add_argument("--no-server", dest="server", action="store_false")
    args = parser.parse_args()
    if args.plot_only:
        results = json.loads(args.plot_only.read_text())
    elif args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        results = run(args)
    else:
        with tempfile.TemporaryDirectory(prefix="mm2d-scaling-") as scratch:
            args.work = Path(scratch)
            results = run(args)
    report(results)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
