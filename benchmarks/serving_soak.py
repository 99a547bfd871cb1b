"""`mm2d serve` soaked: well-behaved clients for a minute while abusers hammer it, on loopback.

Starts `mm2d serve` (packaged all-MiniLM-L6-v2, default limits, an API key) in a subprocess, pinned to
half the cores as in benchmarks/serving.py, the clients on the rest. For `--seconds`, `--clients`
well-behaved clients each send one text a request, one request after another, and these abusers run
beside them, each in a loop:

- huge prompts: a 1 MB `prompt` before 64 one-word texts;
- hang-ups: 128 texts of 32,768 characters, the client gone after 0.5 s;
- at the limits: 256 texts of 32,768 characters (max_texts_per_request x max_chars_per_text), answered;
- oversized: 300 MB announced (with the key, and without it), a few bytes sent, the connection held until answered;
- no key: a malformed body without the key.

Prints the well-behaved clients' p50/p99/max latency and errors, each abuser's answers by status,
the server's resident memory (RSS) after the warm-up, at its peak and 10 s after the soak, and what
/metrics counted. Everything stops by itself: the phase is bounded in time, each request by a timeout.

    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python benchmarks/serving_soak.py [--clients 32] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from serving import MODEL, REPO, free_port, start_server, stop_server

from mm2d_integrations.evaluation.datasets import read_sts

KEY = "soak"
AUTHORIZED = {"Authorization": f"Bearer {KEY}"}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def _soak(base: str, texts: list[str], clients: int, seconds: float) -> tuple[list[float], Counter, dict[str, Counter]]:
    import httpx

    stop = time.monotonic() + seconds
    latencies: list[float] = []
    errors: Counter = Counter()
    abused: dict[str, Counter] = {}
    long_text = ("many words in a long text " * 1300)[:32_768]
    at_limits = {"model": MODEL, "input": [f"{index} {long_text}"[:32_768] for index in range(256)]}
    hang_up = {"model": MODEL, "input": [f"{index} {long_text}"[:32_768] for index in range(128)]}
    huge_prompt = {"model": MODEL, "input": [f"word{index}" for index in range(64)], "prompt": "p" * 1_000_000}
    host, port = base.removeprefix("http://").split(":")

    async with httpx.AsyncClient(base_url=base, headers=AUTHORIZED, timeout=120, limits=httpx.Limits(max_connections=200)) as client:

        async def well_behaved(offset: int) -> None:
            index = offset
            while time.monotonic() < stop:
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/embeddings", json={"model": MODEL, "input": texts[index % len(texts)]})
                    if response.status_code == 200:
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors[str(response.status_code)] += 1
                except httpx.HTTPError as error:
                    errors[type(error).__name__] += 1
                index += clients

        async def abuser(name: str, attempt: Callable[[], Awaitable[str]]) -> None:
            counts = abused.setdefault(name, Counter())
            while time.monotonic() < stop:
                try:
                    counts[await attempt()] += 1
                except (httpx.HTTPError, OSError) as error:
                    counts[type(error).__name__] += 1
                await asyncio.sleep(0.2)

        async def post(body: dict) -> str:
            return str((await client.post("/v1/embeddings", json=body, timeout=300)).status_code)

        async def hang_up_after_half_a_second() -> str:
            async with httpx.AsyncClient(base_url=base, headers=AUTHORIZED) as once:  # its own connection, closed on the way out
                try:
                    await asyncio.wait_for(once.post("/v1/embeddings", json=hang_up), 0.5)
                    return "answered"
                except asyncio.TimeoutError:
                    return "hung up"

        async def announce_300_mb(headers: dict[str, str]) -> str:
            reader, writer = await asyncio.open_connection(host, int(port))
            head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            writer.write(f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nContent-Length: 300000000\r\n{head}\r\n{{".encode())
            await writer.drain()
            try:
                status = (await asyncio.wait_for(reader.readline(), 30)).split()[1].decode()
            finally:
                writer.close()
            return status

        async def malformed_without_key() -> str:
            return str((await client.post("/v1/embeddings", content=b"{not json", headers={"Authorization": ""})).status_code)

        await asyncio.gather(
            *(well_behaved(offset) for offset in range(clients)),
            abuser("huge prompt (1 MB) before 64 texts", lambda: post(huge_prompt)),
            abuser("128 x 32,768 characters, hung up after 0.5 s", hang_up_after_half_a_second),
            abuser("256 x 32,768 characters (at the limits)", lambda: post(at_limits)),
            abuser("300 MB announced, with the key", lambda: announce_300_mb(AUTHORIZED)),
            abuser("300 MB announced, without a key", lambda: announce_300_mb({})),
            abuser("malformed, without a key", malformed_without_key),
        )
    return latencies, errors, abused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--server-cores", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="cores the server is pinned to; the clients get the others (0: no pinning)")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="the server's (and its encoder's) token bound of a batch")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    server_cores = set(cpus[: args.server_cores]) if 0 < args.server_cores < len(cpus) else None
    if server_cores:
        os.sched_setaffinity(0, set(cpus) - server_cores)
    pairs = read_sts(REPO / "tests" / "data" / "graded_pairs.tsv")
    texts = list(dict.fromkeys(pairs.first + pairs.second))

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(port, server_cores, KEY, ("--max-batch-tokens", str(args.max_batch_tokens)) if args.max_batch_tokens else ())
    try:
        for text in texts[:100]:  # warm up
            httpx.post(base + "/v1/embeddings", json={"model": MODEL, "input": text}, headers=AUTHORIZED, timeout=60).raise_for_status()
        rss_start, peak = _rss_mb(server.pid), [0.0]

        async def soak_and_watch() -> tuple[list[float], Counter, dict[str, Counter]]:
            async def watch() -> None:
                while True:
                    peak[0] = max(peak[0], _rss_mb(server.pid))
                    await asyncio.sleep(0.5)

            watcher = asyncio.ensure_future(watch())
            try:
                return await _soak(base, texts, args.clients, args.seconds)
            finally:
                watcher.cancel()

        began = time.perf_counter()
        latencies, errors, abused = asyncio.run(soak_and_watch())
        elapsed = time.perf_counter() - began
        time.sleep(10)  # the server idle again
        rss_after = _rss_mb(server.pid)
        alive = httpx.post(base + "/v1/embeddings", json={"model": MODEL, "input": "still here"}, headers=AUTHORIZED, timeout=60).status_code
        metrics = httpx.get(base + "/metrics", headers=AUTHORIZED).text
    finally:
        stop_server(server)

    milliseconds = np.asarray(latencies) * 1000
    print(f"soak: {args.clients} well-behaved clients for {elapsed:.1f} s (server on cores {sorted(server_cores or [])}), abusers beside them")
    print("| well-behaved | requests | errors | requests/s | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| one text a request | {len(latencies)} | {sum(errors.values())} {dict(errors) or ''} | {len(latencies) / elapsed:.1f} | "
          f"{np.percentile(milliseconds, 50):.0f} | {np.percentile(milliseconds, 99):.0f} | {milliseconds.max():.0f} |")
    print("\n| abuser | answers by status |\n|---|---|")
    for name, counts in abused.items():
        print(f"| {name} | {', '.join(f'{status}: {count}' for status, count in sorted(counts.items()))} |")
    print(f"\nserver RSS: {rss_start:.0f} MB after the warm-up, {peak[0]:.0f} MB at the peak, {rss_after:.0f} MB 10 s after the soak "
          f"({rss_after - rss_start:+.0f} MB); a request after the soak: {alive}")
    counted = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "mm2d_requests_total":
                counted[sample.labels["status"]] = int(sample.value)
            elif sample.name in ("mm2d_disconnects_total", "mm2d_texts_total"):
                counted[sample.name] = int(sample.value)
    print(f"/metrics: {counted}")


if __name__ == "__main__":
    main()
