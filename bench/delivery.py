#!/usr/bin/env python3
"""Delivery benchmark: heaprelay's router against the fake Heap (a separate process).

    .venv/bin/python bench/delivery.py [--events 20000] [--backlog 100000] [--time-scale 20]

Prints:

1. limits off — a queued backlog of ``--events`` track events drained as fast as possible:
   delivered events/s and Heap requests/s;
2. latency — ``--rate`` events/s for ``--seconds`` through the real ingest API (``/v1/batch``
   of 10) with delivery in the same server: end-to-end latency from the ingest answer
   (acknowledged, committed) to the fake Heap accepting the event, p50 / p99;
3. limits on — a backlog of ``--backlog`` track events for ONE app_id, with Heap's documented
   limits enforced by the fake Heap and by the relay on a compressed time scale: every rate
   window is divided by ``--time-scale`` on both sides (``DeliverySettings.time_scale`` and
   ``heaprelay fake-heap --time-scale``), so the per-app budget of 15,000 events/min becomes
   15,000 × scale events per minute of wall time. Reports the fraction of that budget used
   over the drain (events accepted / (budget rate × drain time)) and the number of 429s.

Events come from the ``heap`` profile (one HeapRequest per track event; the relay adds
nothing but batching). The queue is SQLite in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from heaprelay.clock import SystemClock
from heaprelay.config import Config, DeliverySettings, Destination, Source
from heaprelay.heap.client import HeapClient
from heaprelay.queue.base import NewJob
from heaprelay.queue.sqlite import SQLiteQueue
from heaprelay.router import Router
from heaprelay.server import build_app
from heaprelay.testing.servers import free_port, serve_in_thread
from heaprelay.transform import DestinationSettings

APP = "1000001"
KEY = "bench-key"


def fake_heap(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "heaprelay", "fake-heap", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/_fake/report", timeout=1)
            return proc, url
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def message(i: int, identities: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Song Played",
        "userId": f"user-{i % identities}",
        "messageId": str(uuid.UUID(int=i)),
        "timestamp": "2026-11-20T10:00:00.000Z",
        "properties": {"song": f"s{i}", "seconds": i % 300, "tags": ["a", "b"]},
    }


def destination(url: str) -> Destination:
    return Destination("heap", DestinationSettings(app_id=APP, profile="heap", base_url=url))


async def drain(n: int, heap_url: str, settings: DeliverySettings, tmp: Path) -> float:
    queue = await SQLiteQueue.open(tmp / f"q{time.monotonic_ns()}.db")
    now = time.time()
    for start in range(0, n, 5000):
        jobs = [
            NewJob("bench", "heap", m["messageId"], m["userId"], orjson.dumps(m), now)
            for m in (message(i, 1000) for i in range(start, min(n, start + 5000)))
        ]
        await queue.append(jobs, now=now)
    stopping = asyncio.Event()
    async with HeapClient(max_connections=32) as client:
        router = Router(queue, {"heap": destination(heap_url)}, client, SystemClock(), settings)
        began = time.monotonic()
        task = asyncio.create_task(router.run(stopping))
        while True:
            stats = await queue.stats()
            if stats.by_state.get("delivered", 0) + stats.by_state.get("dead", 0) >= n:
                break
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - began
        stopping.set()
        await task
    dead = (await queue.stats()).by_state.get("dead", 0)
    await queue.close()
    if dead:
        print(f"  WARNING: {dead} dead letters")
    return elapsed


def report(url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(url + "/_fake/report", timeout=10).json()
    return result


def part_throughput(args: argparse.Namespace, tmp: Path) -> None:
    proc, url = fake_heap("--no-rate-limits")
    try:
        settings = DeliverySettings(rate_limits=False, flush_interval=0.05)
        elapsed = asyncio.run(drain(args.events, url, settings, tmp))
        rep = report(url)
    finally:
        proc.terminate()
        proc.wait()
    print(f"1. limits off: {args.events} queued track events delivered in {elapsed:.2f}s")
    print(
        f"   {rep['accepted_events'] / elapsed:,.0f} events/s, "
        f"{rep['requests'] / elapsed:,.1f} requests/s "
        f"({rep['requests']} requests, statuses {rep['by_status']})"
    )


def part_latency(args: argparse.Namespace, tmp: Path) -> None:
    proc, heap_url = fake_heap("--no-rate-limits")
    delivery = DeliverySettings(rate_limits=False, flush_interval=0.05)
    source = Source("bench", KEY, (destination(heap_url),))
    config = Config(sources=(source,), data_dir=tmp / "latency", delivery=delivery)
    config.data_dir.mkdir()
    acked: dict[str, float] = {}
    total = int(args.rate * args.seconds)
    try:
        with serve_in_thread(build_app(config)) as url, httpx.Client(auth=(KEY, "")) as http:
            began = time.monotonic()
            for start in range(0, total, 10):
                due = began + start / args.rate
                time.sleep(max(0.0, due - time.monotonic()))
                batch = [message(10_000_000 + i, 500) for i in range(start, start + 10)]
                r = http.post(url + "/v1/batch", json={"batch": batch})
                r.raise_for_status()
                t = time.time()
                for m in batch:
                    acked[m["messageId"]] = t
            deadline = time.monotonic() + 60
            while report(heap_url)["accepted_events"] < total and time.monotonic() < deadline:
                time.sleep(0.1)
            events = httpx.get(heap_url + "/_fake/events", timeout=30).json()
    finally:
        proc.terminate()
        proc.wait()
    latencies = sorted(
        e["received_at"] - acked[e["idempotency_key"]]
        for e in events
        if e["idempotency_key"] in acked
    )
    q = statistics.quantiles(latencies, n=100)
    print(
        f"2. latency at {args.rate:.0f} events/s for {args.seconds:.0f}s "
        f"({len(latencies)}/{total} events): ack → Heap accepted "
        f"p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms"
    )


def part_limits(args: argparse.Namespace, tmp: Path) -> None:
    scale = args.time_scale
    proc, url = fake_heap("--rate-limits", "--time-scale", str(scale))
    try:
        settings = DeliverySettings(rate_limits=True, time_scale=scale, flush_interval=0.05)
        elapsed = asyncio.run(drain(args.backlog, url, settings, tmp))
        rep = report(url)
        requests = httpx.get(url + "/_fake/requests", timeout=30).json()
    finally:
        proc.terminate()
        proc.wait()
    budget_rate = 15_000 / 60 * scale
    accepted = [r for r in requests if r["status"] == 200]
    # Steady state: the events after the first request, over the time from the first accepted
    # request to the last (a rate needs an interval; the first request opens it).
    span = accepted[-1]["at"] - accepted[0]["at"]
    steady = (sum(r["items"] for r in accepted) - accepted[0]["items"]) / (budget_rate * span)
    whole = rep["accepted_events"] / (budget_rate * elapsed)
    print(
        f"3. limits on, time scale {scale:g} (budget {budget_rate:,.0f} events/s for one "
        f"app_id): {rep['accepted_events']} events in {elapsed:.2f}s, {len(accepted)} requests"
    )
    print(
        f"   budget used: {steady:.1%} (first to last accepted request); "
        f"{whole:.1%} over the whole drain incl. start-up burst; "
        f"429 answers: {rep['rate_limited']}; statuses {rep['by_status']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--parts", default="1,2,3")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "1" in parts:
            part_throughput(args, tmp)
        if "2" in parts:
            part_latency(args, tmp)
        if "3" in parts:
            part_limits(args, tmp)


if __name__ == "__main__":
    main()
