"""`mm2d serve` under load, on loopback: sequential single requests against many concurrent clients.

Starts `mm2d serve` in a subprocess on a free loopback port, then runs, through the official
`mixedbread` SDK (async client), one client sending one text at a time for `--sequential-seconds`,
and `--clients` concurrent clients doing the same for `--seconds`. Prints p50/p95/p99 latency,
requests per second and errors for both, beside the encoder's own batch throughput (in this
process, 256 texts a call) that dynamic batching should approach. Everything stops by itself:
each phase is bounded in time and in requests (`--max-requests`).

    HF_HUB_OFFLINE=1 python benchmarks/serving.py [--clients 32] [--seconds 60] [--sequential-seconds 20]
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
from mm2d_integrations.evaluation.datasets import read_sts  # noqa: E402
from mm2d_integrations.settings import default_model  # noqa: E402

MODEL = "minilm"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(port: int) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(
        [sys.executable, "-m", "mm2d_integrations.cli", "serve", "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
         "--max-queue", "1024"],
        env=environment,
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


async def _load(base_url: str, texts: list[str], clients: int, seconds: float, max_requests: int) -> dict[str, float]:
    from mixedbread import AsyncMixedbread

    client = AsyncMixedbread(base_url=base_url, api_key="benchmark", max_retries=0, timeout=60)
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def one_client(offset: int) -> None:
        nonlocal errors
        index = offset
        while time.monotonic() < stop and len(latencies) + errors < max_requests:
            started = time.perf_counter()
            try:
                await client.embed(model=MODEL, input=[texts[index % len(texts)]])
                latencies.append(time.perf_counter() - started)
            except Exception:  # counted, not raised: the table reports them
                errors += 1
            index += clients

    began = time.perf_counter()
    await asyncio.gather(*(one_client(offset) for offset in range(clients)))
    elapsed = time.perf_counter() - began
    await client.close()
    milliseconds = np.asarray(latencies) * 1000
    return {
        "clients": clients, "requests": len(latencies), "errors": errors, "seconds": elapsed,
        "rps": len(latencies) / elapsed, "p50": float(np.percentile(milliseconds, 50)),
        "p95": float(np.percentile(milliseconds, 95)), "p99": float(np.percentile(milliseconds, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--sequential-seconds", type=float, default=20.0)
    parser.add_argument("--max-requests", type=int, default=200_000, help="per phase, whatever the time")
    args = parser.parse_args()

    pairs = read_sts(REPO / "tests" / "data" / "graded_pairs.tsv")
    texts = list(dict.fromkeys(pairs.first + pairs.second))

    encoder = Matryoshka2DEncoder(default_model())
    encoder.encode_documents(texts[:64])  # warm up
    batch = (texts * 4)[:256]
    began = time.perf_counter()
    encoder.encode_documents(batch)
    batch_rate = len(batch) / (time.perf_counter() - began)
    del encoder

    port = _free_port()
    server = _start_server(port)
    try:
        base_url = f"http://127.0.0.1:{port}"
        asyncio.run(_load(base_url, texts, 1, 2.0, 50))  # warm up the server
        sequential = asyncio.run(_load(base_url, texts, 1, args.sequential_seconds, args.max_requests))
        concurrent = asyncio.run(_load(base_url, texts, args.clients, args.seconds, args.max_requests))
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    print(f"encoder alone, batches of 256 texts in one process: {batch_rate:.0f} texts/s")
    print("| clients | requests | errors | seconds | requests/s | p50 ms | p95 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in (sequential, concurrent):
        print(
            f"| {row['clients']} | {row['requests']} | {row['errors']} | {row['seconds']:.1f} | {row['rps']:.1f} | "
            f"{row['p50']:.1f} | {row['p95']:.1f} | {row['p99']:.1f} |"
        )
    print(f"throughput, {args.clients} clients against 1: {concurrent['rps'] / sequential['rps']:.1f}x")


if __name__ == "__main__":
    main()
