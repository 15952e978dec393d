#!/usr/bin/env python3
"""Scale-out benchmark on PostgreSQL: does a second process add throughput?

    HEAPRELAY_TEST_PG_URL=postgresql://… .venv/bin/python bench/scale.py [--events 20000]
        [--requests 400] [--batch 50] [--concurrency 16]

Prints, each on a fresh database (created on the server of ``HEAPRELAY_TEST_PG_URL`` or
``--pg``, dropped afterwards):

1. delivery — a backlog of ``--events`` track events (``heap`` profile, 1000 identities)
   queued in PostgreSQL, drained by 1 and then by 2 ``--role worker`` processes, limits off,
   into the fake Heap (its own process): delivered events/s for each and the ratio;
2. ingest — ``--requests`` ``POST /v1/batch`` of ``--batch`` events each, ``--concurrency`` at
   a time, spread over 1 and then 2 ``--role api`` processes: ingested (committed) events/s
   for each and the ratio.

The relay processes run the same server lifecycle as ``heaprelay serve``. On a machine with
few cores the processes (and the load generator, and PostgreSQL) share them, which bounds
the ratio; the figures say what this machine does, not what many machines would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import psycopg

from heaprelay.queue.base import NewJob
from heaprelay.queue.postgres import PostgresQueue
from heaprelay.testing.servers import free_port

APP = "2000002"
KEY = "scale-bench-key"

RELAY = """
import json, sys
from pathlib import Path
from heaprelay import server
from heaprelay.config import Config, DeliverySettings, Destination, Source
from heaprelay.transform import DestinationSettings

spec = json.loads(sys.argv[1])
settings = DestinationSettings(app_id=spec["app_id"], profile="heap", base_url=spec["heap_url"])
source = Source("bench", spec["write_key"], (Destination("heap", settings),))
delivery = DeliverySettings(rate_limits=False, flush_interval=0.05)
config = Config(
    sources=(source,), data_dir=Path(spec["data_dir"]), queue_url=spec["queue_url"],
    port=spec["port"], role=spec["role"], delivery=delivery,
)
server.run(config, log_level="warning")
"""


def message(i: int, identities: int = 1000) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Song Played",
        "userId": f"user-{i % identities}",
        "messageId": str(uuid.UUID(int=i)),
        "timestamp": "2026-11-20T10:00:00.000Z",
        "properties": {"song": f"s{i}", "seconds": i % 300, "tags": ["a", "b"]},
    }


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(0.05)


@contextmanager
def fake_heap() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "heaprelay", "fake-heap", "--port", str(port), "--no-rate-limits"],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/_fake/report")
        yield url
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def database(pg: str) -> Iterator[str]:
    name = f"heaprelay_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(pg)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def relays(role: str, n: int, queue_url: str, heap_url: str, tmp: Path) -> Iterator[list[str]]:
    procs, urls = [], []
    try:
        for i in range(n):
            port = free_port()
            spec = {
                "app_id": APP,
                "write_key": KEY,
                "heap_url": heap_url,
                "queue_url": queue_url,
                "data_dir": str(tmp / f"{role}{i}"),
                "port": port,
                "role": role,
            }
            procs.append(subprocess.Popen([sys.executable, "-c", RELAY, json.dumps(spec)]))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_http(url + "/readyz")
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


async def fill(queue_url: str, n: int) -> None:
    queue = await PostgresQueue.open(queue_url)
    try:
        now = time.time()
        for start in range(0, n, 5000):
            jobs = [
                NewJob("bench", "heap", m["messageId"], m["userId"], orjson.dumps(m), now)
                for m in (message(i) for i in range(start, min(n, start + 5000)))
            ]
            await queue.append(jobs, now=now)
    finally:
        await queue.close()


def finished(queue_url: str) -> int:
    with psycopg.connect(queue_url, options="-c search_path=heaprelay") as conn:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE state IN ('delivered', 'dead', 'skipped')"
        ).fetchone()
    return int(row[0]) if row else 0


def delivery_rate(pg: str, workers: int, events: int, tmp: Path) -> float:
    with fake_heap() as heap_url, database(pg) as queue_url:
        asyncio.run(fill(queue_url, events))
        with relays("worker", workers, queue_url, heap_url, tmp):
            while finished(queue_url) < events:
                time.sleep(0.05)
        report = httpx.get(heap_url + "/_fake/report", timeout=10).json()
    if report["accepted_events"] != events:
        print(f"   WARNING: the fake Heap accepted {report['accepted_events']} of {events} events")
    # From Heap's first accepted request to its last: process start-up is not delivery.
    return float(report["accepted_events"]) / (report["last_accept_at"] - report["first_accept_at"])


async def post_all(urls: list[str], requests: int, batch: int, concurrency: int) -> float:
    bodies = [
        orjson.dumps({"batch": [message(r * batch + i) for i in range(batch)]})
        for r in range(requests)
    ]
    next_body = iter(enumerate(bodies))
    async with httpx.AsyncClient(auth=(KEY, ""), timeout=60) as http:

        async def runner() -> None:
            for r, body in next_body:
                url = urls[r % len(urls)] + "/v1/batch"
                answer = await http.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
                answer.raise_for_status()

        began = time.monotonic()
        await asyncio.gather(*(runner() for _ in range(concurrency)))
        return time.monotonic() - began


def ingest_rate(pg: str, apis: int, args: argparse.Namespace, tmp: Path) -> float:
    with database(pg) as queue_url, relays("api", apis, queue_url, "http://127.0.0.1:9", tmp) as u:
        elapsed = asyncio.run(post_all(u, args.requests, args.batch, args.concurrency))
        with psycopg.connect(queue_url, options="-c search_path=heaprelay") as conn:
            row = conn.execute("SELECT count(*) FROM jobs").fetchone()
        stored = int(row[0]) if row else 0
    total = args.requests * args.batch
    if stored != total:
        print(f"   WARNING: {stored} of {total} events stored")
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default=os.environ.get("HEAPRELAY_TEST_PG_URL"))
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if not args.pg:
        parser.error(
            "no PostgreSQL: pass --pg postgresql://USER@HOST:PORT/DB or set "
            "HEAPRELAY_TEST_PG_URL (`source scripts/setup-test-env` starts one)"
        )
    print(f"machine: {os.cpu_count()} CPUs; PostgreSQL {urlsplit(args.pg).netloc}")
    with TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        one = delivery_rate(args.pg, 1, args.events, tmp)
        two = delivery_rate(args.pg, 2, args.events, tmp)
        print(f"1. delivery, limits off, backlog of {args.events} track events:")
        print(f"   1 worker process:  {one:,.0f} events/s")
        print(f"   2 worker processes: {two:,.0f} events/s  (ratio {two / one:.2f})")
        one = ingest_rate(args.pg, 1, args, tmp)
        two = ingest_rate(args.pg, 2, args, tmp)
        print(
            f"2. ingest, {args.requests} × /v1/batch of {args.batch} events, "
            f"{args.concurrency} concurrent:"
        )
        print(f"   1 API process:  {one:,.0f} events/s")
        print(f"   2 API processes: {two:,.0f} events/s  (ratio {two / one:.2f})")


if __name__ == "__main__":
    main()
