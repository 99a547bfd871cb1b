"""`mm2d serve` under load, on loopback: sequential single requests against many concurrent clients.

Starts `mm2d serve` in a subprocess on a free loopback port, then runs, through the official
`mixedbread` SDK (async client), one client sending one text at a time for `--sequential-seconds`,
and `--clients` concurrent clients doing the same for `--seconds`. Prints p50/p95/p99 latency,
requests per second and errors for both, beside the encoder's own batch throughput (in this
process, on the cores the server gets) that dynamic batching should approach: in calls of 256 texts,
and in calls of `--clients` texts, the largest batch that many one-text clients can form. With
`--texts-per-request N`, the concurrent phase runs again with N texts in each request. The server
is pinned to half the cores (`--server-cores`) and the clients to the rest, so that the load generator
does not take the server's CPU. Everything stops by itself:
each phase is bounded in time and in requests (`--max-requests`).

    HF_HUB_OFFLINE=1 python benchmarks/serving.py [--clients 32] [--seconds 60] [--sequential-seconds 20] [--texts-per-request 1 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mm2d_integrations import Matryoshka2DEncoder  # noqa: E402
from mm2d_integrations.core.checkpoint import default_model  # noqa: E402
from mm2d_integrations.evaluation.datasets import read_sts  # noqa: E402

MODEL = "minilm"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(port: int, cores: set[int] | None, api_key: str | None = None, arguments: tuple[str, ...] = ()) -> subprocess.Popen:
    """`mm2d serve` (the packaged model) on `port`, pinned to `cores`, with more `arguments`, once its /health answers."""
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    if cores:
        environment["OMP_NUM_THREADS"] = str(len(cores))
    if api_key:
        environment["MM2D_API_KEY"] = api_key
    server = subprocess.Popen(
        [sys.executable, "-m", "mm2d_integrations.cli", "serve", "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
         "--max-queue", "1024", *arguments],
        env=environment, preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
    )
    import httpx  # the health probe only; requests go through the SDK

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
        if server.poll() is not None:
            raise SystemExit("the server stopped while starting")
    server.kill()
    raise SystemExit("the server did not start within 300 s")


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def _batch_totals(base_url: str) -> tuple[float, float]:
    """(texts, forward batches) the server has run so far, from its /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{base_url}/metrics", headers={"Authorization": "Bearer benchmark"}).text):
        if family.name == "mm2d_batch_texts":
            for sample in family.samples:
                totals.update({kind: sample.value for kind in totals if sample.name == f"mm2d_batch_texts_{kind}"})
    return totals["sum"], totals["count"]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(base_url: str, texts: list[str], clients: int, seconds: float, max_requests: int, per_request: int = 1) -> dict[str, float]:
    from mixedbread import AsyncMixedbread

    client = AsyncMixedbread(base_url=base_url, api_key="benchmark", max_retries=0, timeout=60)
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def one_client(offset: int) -> None:
        nonlocal errors
        index = offset * per_request  # the texts in flight at once are distinct, as from independent users
        while time.monotonic() < stop and len(latencies) + errors < max_requests:
            started = time.perf_counter()
            try:
                await client.embed(model=MODEL, input=[texts[(index + part) % len(texts)] for part in range(per_request)])
                latencies.append(time.perf_counter() - started)
            except Exception:  # counted, not raised: the table reports them
                errors += 1
            index += clients * per_request

    began = time.perf_counter()
    await asyncio.gather(*(one_client(offset) for offset in range(clients)))
    elapsed = time.perf_counter() - began
    await client.close()
    milliseconds = np.asarray(latencies) * 1000
    return {
        "clients": clients, "per_request": per_request, "requests": len(latencies), "errors": errors, "seconds": elapsed,
        "rps": len(latencies) / elapsed, "texts_per_second": len(latencies) * per_request / elapsed, "p50": float(np.percentile(milliseconds, 50)),
        "p95": float(np.percentile(milliseconds, 95)), "p99": float(np.percentile(milliseconds, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--sequential-seconds", type=float, default=20.0)
    parser.add_argument("--max-requests", type=int, default=200_000, help="per phase, whatever the time")
    parser.add_argument("--texts-per-request", type=int, nargs="+", default=[1], help="texts in each concurrent request, one phase per value")
    parser.add_argument("--server-cores", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="cores the server (and the encoder-alone baseline) is pinned to; the clients get the others (0: no pinning)")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    server_cores = set(cpus[: args.server_cores]) if 0 < args.server_cores < len(cpus) else None
    client_cores = set(cpus) - server_cores if server_cores else None

    pairs = read_sts(REPO / "tests" / "data" / "graded_pairs.tsv")
    texts = list(dict.fromkeys(pairs.first + pairs.second))

    if server_cores:  # the baseline runs where the server will
        import torch

        os.sched_setaffinity(0, server_cores)
        torch.set_num_threads(len(server_cores))
    encoder = Matryoshka2DEncoder(default_model())
    encoder.encode_documents(texts[:64])  # warm up
    batch_rates = {}
    for size in (256, args.clients):  # best of three, in calls of that many texts
        # 1,024 texts in calls of `size` consecutive ones (wrapping around): every text, none twice in a call,
        # as the clients send them
        calls = [[texts[(start + offset) % len(texts)] for offset in range(size)] for start in range(0, 1024, size)]
        for _ in range(3):
            began = time.perf_counter()
            for call in calls:
                encoder.encode_documents(call)
            batch_rates[size] = max(batch_rates.get(size, 0.0), 1024 / (time.perf_counter() - began))
    del encoder
    if client_cores:
        os.sched_setaffinity(0, client_cores)

    port = free_port()
    server = start_server(port, server_cores)
    try:
        base_url = f"http://127.0.0.1:{port}"
        asyncio.run(_load(base_url, texts, 1, 2.0, 50))  # warm up the server
        sequential = asyncio.run(_load(base_url, texts, 1, args.sequential_seconds, args.max_requests))
        concurrent = []
        for per_request in args.texts_per_request:
            cpu_before, batches_before = _cpu_seconds(server.pid), _batch_totals(base_url)
            concurrent.append(asyncio.run(_load(base_url, texts, args.clients, args.seconds, args.max_requests, per_request)))
            concurrent[-1]["server_cpu"] = _cpu_seconds(server.pid) - cpu_before
            batched, batches = (after - before for after, before in zip(_batch_totals(base_url), batches_before))
            concurrent[-1]["mean_batch"] = batched / max(batches, 1)
    finally:
        stop_server(server)

    where = f"pinned to cores {sorted(server_cores)}, clients on {sorted(client_cores)}" if server_cores else "no pinning"
    rates = ", ".join(f"in calls of {size} texts {rate:.0f} texts/s" for size, rate in batch_rates.items())
    print(f"{where}; encoder alone in one process (best of 3): {rates}")
    print("| clients | texts/request | requests | errors | seconds | requests/s | texts/s | p50 ms | p95 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in (sequential, *concurrent):
        print(
            f"| {row['clients']} | {row['per_request']} | {row['requests']} | {row['errors']} | {row['seconds']:.1f} | {row['rps']:.1f} | "
            f"{row['texts_per_second']:.1f} | {row['p50']:.1f} | {row['p95']:.1f} | {row['p99']:.1f} |"
        )
    for row in concurrent:
        texts_done = row["requests"] * row["per_request"]
        print(
            f"{args.clients} clients, {row['per_request']} text(s) a request: {row['texts_per_second'] / sequential['rps']:.1f}x the texts/s of "
            f"one client; {row['texts_per_second'] / batch_rates[256]:.0%} of the encoder's rate in calls of 256, "
            f"{row['texts_per_second'] / batch_rates[args.clients]:.0%} in calls of {args.clients}; server CPU {row['server_cpu']:.1f} s for "
            f"{texts_done} texts = {texts_done / row['server_cpu']:.0f} texts per CPU second; {row['mean_batch']:.1f} texts per forward batch"
        )


if __name__ == "__main__":
    main()
