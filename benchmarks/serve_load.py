"""Bounded load test of `blt-run serve` on loopback: starts the server, runs a fixed number of rounds of concurrent
streaming clients, each sending a fixed number of requests, then stops it. Prints one Markdown table: latency
(p50/p99), time to first byte, bytes/s over the round, errors, 429s, and the server's RSS after each round.

    python benchmarks/serve_load.py                       # a random tiny model (no download), torch backend
    python benchmarks/serve_load.py --bundle .cache/bundle-default --clients 8 --requests 64 --workers 2

A benchmark, not a test: nothing is asserted; the exit status is 1 if any request failed with other than 429.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


def tiny_checkpoint(out: Path) -> Path:
    import torch

    from fastblt.graphs.checkpoint import save_model
    from fastblt.graphs.config import tiny_config
    from fastblt.graphs.model import BltModel

    torch.manual_seed(0)
    return save_model(BltModel(tiny_config(vocab_size=262, mask_id=260, pad_id=261, block_sizes=(4, 8))), out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_request(url: str, body: dict, timeout: float) -> dict:
    """Stream one completion; latency, time to first text, bytes received, status."""
    start = time.perf_counter()
    first, nbytes, status = None, 0, 0
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=timeout) as r:
            status = r.status_code
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    status = 500
                    break
                if "usage" in data:
                    nbytes = data["usage"]["completion_tokens"]
                elif data["choices"][0]["text"] and first is None:
                    first = time.perf_counter() - start
    except httpx.HTTPError:
        status = -1
    return {"seconds": time.perf_counter() - start, "ttfb": first, "bytes": nbytes, "status": status}


def run_round(url: str, clients: int, requests: int, body: dict, timeout: float) -> tuple[list[dict], float]:
    results: list[dict] = []
    lock = threading.Lock()
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]

    def client(n: int) -> None:
        for _ in range(n):
            r = one_request(url, body, timeout)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, args=(n,)) for n in per_client]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle")
    ap.add_argument("--checkpoint")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=24, help="requests per round, over all clients")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--mode", default="ar")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    args = ap.parse_args()
    for name in ("clients", "requests", "rounds", "max_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be ≥ 1")
    with tempfile.TemporaryDirectory() as tmp:
        source = ["--bundle", args.bundle, "--precision", args.precision] if args.bundle else [
            "--checkpoint", args.checkpoint or str(tiny_checkpoint(Path(tmp) / "tiny-random"))]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "server.log", "w")  # noqa: SIM115 - closed below
        server = subprocess.Popen([sys.executable, "-m", "fastblt.runtime.cli", "serve", *source, "--port", str(port),
                                   "--workers", str(args.workers), "--max-queue", str(args.max_queue),
                                   "--threads", str(args.threads), "--model-name", "bench"],
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            return bench(url, server, args)
        finally:
            server.terminate()
            server.wait(30)
            log.close()


def bench(url: str, server: subprocess.Popen, args) -> int:
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            print("the server did not start", file=sys.stderr)
            return 1
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    body = {"model": "bench", "prompt": "def fibonacci(n):", "max_tokens": args.max_tokens, "mode": args.mode,
            "stream": True, "stream_options": {"include_usage": True}}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"serve load test, {datetime.date.today()}, {platform.node()} ({os.cpu_count()} CPUs, "
          f"{platform.machine()}), commit {commit or '?'}; {args.clients} clients × {args.requests} streaming "
          f"requests per round, {args.max_tokens} bytes each, mode {args.mode}, --workers {args.workers} "
          f"--max-queue {args.max_queue}; RSS of the server at start {rss_mb(server.pid):.0f} MB\n")
    print("| round | ok | 429 | errors | p50 s | p99 s | first text p50 s | bytes/s | server RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed = 0
    for i in range(1, args.rounds + 1):
        results, wall = run_round(url, args.clients, args.requests, body, args.timeout)
        ok = [r for r in results if r["status"] == 200]
        busy = sum(r["status"] == 429 for r in results)
        errors = len(results) - len(ok) - busy
        failed += errors
        lat = [r["seconds"] for r in ok] or [float("nan")]
        ttfb = [r["ttfb"] for r in ok if r["ttfb"] is not None] or [float("nan")]
        total = sum(r["bytes"] for r in ok)
        print(f"| {i} | {len(ok)} | {busy} | {errors} | {pct(lat, 50):.3f} | {pct(lat, 99):.3f} | "
              f"{pct(ttfb, 50):.3f} | {total / wall:.1f} | {rss_mb(server.pid):.0f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
