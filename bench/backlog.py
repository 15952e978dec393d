#!/usr/bin/env python3
"""Backlog benchmark: a relay in front of a huge queue, with Heap's rate limits on.

    .venv/bin/python bench/backlog.py [--backend sqlite,postgresql] [--jobs 10000000]
        [--time-scale 10] [--seconds 90] [--layout-jobs 300000] [--pg-url URL]

Per backend:

1. bytes on disk per queued event, for the layout the relay writes (payloads compressed with
   a dictionary trained on the queue's own payloads) next to the baseline of the same jobs
   stored uncompressed, both measured on ``--layout-jobs`` jobs (SQLite: the file after a
   checkpoint; PostgreSQL: ``pg_total_relation_size('jobs')``);
2. ``--jobs`` queued events written straight into the queue in large transactions (not
   through HTTP), bytes per event of that queue, and the plan of the claim's query on it;
3. a real relay process (``heaprelay serve --config``; SQLite: role all, PostgreSQL: role
   worker) delivering from that backlog for ``--seconds`` into the fake Heap (its own
   process), Heap's limits enforced at both ends on a compressed time scale (the budget of
   15,000 track events a minute per app_id becomes ``15,000 × scale``): the relay's peak
   and last RSS next to the same relay's RSS idle on an empty queue, and the share of the
   budget used (track events accepted from the first to the last accepted request, over
   budget × that time), with the 429s Heap answered.

Events: a pool of 50,000 from ``bench/make_events.py`` (the realistic mix; page, screen,
group and alias are skipped by the profile, identify goes out as bulk user properties),
each job with its own messageId. The big files are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).parent))
import make_events
from heaprelay.queue.base import NewJob
from heaprelay.queue.postgres import PostgresQueue
from heaprelay.queue.sqlite import SQLiteQueue
from heaprelay.testing.servers import free_port

APP = "1000001"
KEY = "bench-key"
POOL = 50_000
CHUNK = 20_000


class Pool:
    """make_events events, rendered once with a messageId to replace per job."""

    def __init__(self, n: int) -> None:
        self.parts: list[tuple[bytes, bytes, str]] = []
        for i in range(n):
            m = make_events.event(i)
            m["messageId"] = "#" * 36
            raw = orjson.dumps(m)
            at = raw.index(b"#" * 36)
            key = m.get("userId") or m.get("anonymousId") or ""
            self.parts.append((raw[:at], raw[at + 36 :], str(key)))

    def jobs(self, start: int, stop: int, now: float) -> list[NewJob]:
        out = []
        for i in range(start, stop):
            head, tail, key = self.parts[i % len(self.parts)]
            mid = str(uuid.UUID(int=i + 1))
            out.append(NewJob("bench", "heap", mid, key, head + mid.encode() + tail, now))
        return out


async def fill(queue: Any, pool: Pool, n: int, *, progress: bool) -> float:
    """Append n jobs: the first 2,500 through ``append`` (so that the queue trains its payload
    dictionary), the rest in large transactions (PostgreSQL: COPY, with the queue's codec)."""
    began = time.monotonic()
    now = time.time()
    first = min(n, 2_500)
    await queue.append(pool.jobs(0, first, now), now=now)
    for _ in range(400):
        if queue.codec.current is not None or queue.codec.take_samples is _never:
            break
        await asyncio.sleep(0.05)
    for start in range(first, n, CHUNK):
        jobs = pool.jobs(start, min(n, start + CHUNK), now)
        if isinstance(queue, PostgresQueue):
            await copy_jobs(queue, jobs, now)
        else:
            await queue.append(jobs, now=now)
        if progress and start % 1_000_000 < CHUNK and start > CHUNK:
            rate = start / (time.monotonic() - began)
            print(f"     … {start:,} jobs ({rate:,.0f}/s)", flush=True)
    return time.monotonic() - began


async def copy_jobs(queue: PostgresQueue, jobs: list[NewJob], now: float) -> None:
    import psycopg

    encode = queue.codec.encode
    async with await psycopg.AsyncConnection.connect(
        queue.url, options=f"-c search_path={queue.schema}"
    ) as conn:
        cur = conn.cursor()
        columns = "source, destination, message_id, order_key, payload, received_at, "
        columns += "dedupe_from, dedupe_until"
        async with cur.copy(f"COPY jobs ({columns}) FROM STDIN") as copy:
            for j in jobs:
                window = j.dedupe_window
                row = (j.source, j.destination, j.message_id, j.order_key, encode(j.payload))
                await copy.write_row((*row, j.received_at, now, now + window))


def _never() -> None:
    return None


def uncompressed(queue: Any) -> Any:
    """The queue with payload compression off (the baseline layout)."""
    queue.codec.take_samples = _never
    return queue


# --- backends -----------------------------------------------------------------------------


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def url(self, tag: str) -> str:
        return f"sqlite:///{self.tmp / tag / 'heaprelay.db'}"

    async def open(self, tag: str) -> Any:
        return await SQLiteQueue.open(self.tmp / tag / "heaprelay.db")

    def size(self, tag: str) -> int:
        path = self.tmp / tag / "heaprelay.db"
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return sum(p.stat().st_size for p in path.parent.glob("heaprelay.db*"))

    def plan(self, tag: str) -> list[str]:
        from heaprelay.queue.sqlite import QUERIES

        with sqlite3.connect(self.tmp / tag / "heaprelay.db") as conn:
            rows = conn.execute(
                "EXPLAIN QUERY PLAN " + QUERIES["claim_candidates"],
                {"now": time.time(), "after": 0, "limit": 4000, "end": None},
            ).fetchall()
        return [row[-1] for row in rows]

    def drop(self, tag: str) -> None:
        shutil.rmtree(self.tmp / tag, ignore_errors=True)

    role = "all"


class PostgresBackend:
    name = "postgresql"
    role = "worker"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def url(self, tag: str) -> str:
        return urlsplit(self.base_url)._replace(path=f"/heaprelay_bench_{tag}").geturl()

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(sql)

    async def open(self, tag: str) -> Any:
        self._admin(f'DROP DATABASE IF EXISTS "heaprelay_bench_{tag}" WITH (FORCE)')
        self._admin(f'CREATE DATABASE "heaprelay_bench_{tag}"')
        return await PostgresQueue.open(self.url(tag))

    def _query(self, tag: str, sql: str, params: Any = None) -> list[Any]:
        import psycopg

        with psycopg.connect(self.url(tag), options="-c search_path=heaprelay") as conn:
            cur = conn.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def size(self, tag: str) -> int:
        self._query(tag, "CHECKPOINT")
        [(size,)] = self._query(tag, "SELECT pg_total_relation_size('jobs')")
        return int(size)

    def plan(self, tag: str) -> list[str]:
        from heaprelay.queue.postgres import QUERIES

        self._query(tag, "ANALYZE jobs")
        params = {"now": time.time(), "after": 0, "limit": 4000, "end": None}
        rows = self._query(tag, "EXPLAIN " + QUERIES["claim_candidates"], params)
        return [row[0] for row in rows]

    def drop(self, tag: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "heaprelay_bench_{tag}" WITH (FORCE)')


# --- the relay and the fake Heap ---------------------------------------------------------


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_relay(
    backend: Any, tag: str, tmp: Path, args: argparse.Namespace, seconds: float
) -> dict[str, Any]:
    heap_port, port = free_port(), free_port()
    heap = f"http://127.0.0.1:{heap_port}"
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "heaprelay",
            "fake-heap",
            "--port",
            str(heap_port),
            "--time-scale",
            str(args.time_scale),
            "--rate-limits",
        ],
        stdout=subprocess.DEVNULL,
    )
    config = tmp / f"{tag}.toml"
    config.write_text(
        f"""
[server]
queue_url = "{backend.url(tag)}"
data_dir = "{tmp / tag}"
role = "{backend.role}"

[delivery]
time_scale = {args.time_scale}

[[sources]]
name = "bench"
write_key = "{KEY}"

  [[sources.destinations]]
  id = "heap"
  app_id = "{APP}"
  base_url = "{heap}"
"""
    )
    try:
        wait_http(heap + "/_fake/report")
        relay = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "heaprelay",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz")
            began = time.monotonic()
            cpu0 = cpu_seconds(relay.pid)
            peak = last = 0
            while time.monotonic() - began < seconds:
                last, hwm = rss_kib(relay.pid)
                peak = max(peak, hwm)
                time.sleep(0.5)
            cpu = (cpu_seconds(relay.pid) - cpu0) / (time.monotonic() - began)
            report = httpx.get(heap + "/_fake/report", timeout=30).json()
            requests = httpx.get(heap + "/_fake/requests", timeout=30).json()
        finally:
            relay.terminate()
            relay.wait(timeout=60)
    finally:
        fake.terminate()
        fake.wait(timeout=30)
    tracks = [r for r in requests if r["endpoint"] == "track" and r["status"] == 200]
    budget_rate = 15_000 / 60 * args.time_scale
    used = None
    if len(tracks) > 1:
        span = tracks[-1]["at"] - tracks[0]["at"]
        used = (sum(r["items"] for r in tracks) - tracks[0]["items"]) / (budget_rate * span)
    return {"peak_kib": peak, "last_kib": last, "used": used, "report": report, "cpu": cpu}


# --- main ----------------------------------------------------------------------------------


async def layout(backend: Any, pool: Pool, n: int) -> tuple[float, float]:
    """Bytes per event for n jobs: compressed (the relay's layout), uncompressed (baseline)."""
    sizes = []
    for tag, plain in (("layout_z", False), ("layout_raw", True)):
        queue = await backend.open(tag)
        if plain:
            uncompressed(queue)
        await fill(queue, pool, n, progress=False)
        await queue.close()
        sizes.append(backend.size(tag) / n)
        backend.drop(tag)
    return sizes[0], sizes[1]


def bench(backend: Any, pool: Pool, args: argparse.Namespace, tmp: Path) -> None:
    print(f"\n== {backend.name} ==", flush=True)
    z, raw = asyncio.run(layout(backend, pool, args.layout_jobs))
    print(
        f"1. bytes per queued event ({args.layout_jobs:,} jobs, payloads "
        f"{sum(len(h) + 36 + len(t) for h, t, _ in pool.parts) / len(pool.parts):,.0f} B): "
        f"{z:,.0f} B compressed vs {raw:,.0f} B uncompressed (baseline): {z / raw:.0%}",
        flush=True,
    )
    asyncio.run(_create(backend, "idle"))
    idle = run_relay(backend, "idle", tmp, args, seconds=10)

    async def big() -> float:
        queue = await backend.open("big")
        try:
            return await fill(queue, pool, args.jobs, progress=True)
        finally:
            await queue.close()

    took = asyncio.run(big())
    size = backend.size("big")
    print(
        f"2. {args.jobs:,} jobs written in {took:.0f}s ({args.jobs / took:,.0f}/s): "
        f"{size / 1e9:.2f} GB, {size / args.jobs:,.0f} B per event",
        flush=True,
    )
    for line in backend.plan("big"):
        print(f"   plan: {line}")
    result = run_relay(backend, "big", tmp, args, seconds=args.seconds)
    rep = result["report"]
    used = f"{result['used']:.1%}" if result["used"] is not None else "n/a"
    print(
        f"3. relay over {args.seconds:.0f}s on that backlog (time scale {args.time_scale:g}, "
        f"budget {15_000 / 60 * args.time_scale:,.0f} track events/s): RSS peak "
        f"{result['peak_kib'] / 1024:.0f} MB, last {result['last_kib'] / 1024:.0f} MB "
        f"(idle on an empty queue: peak {idle['peak_kib'] / 1024:.0f} MB); budget used {used}; "
        f"{rep['accepted_events']:,} events and {rep['accepted_users']:,} users accepted, "
        f"429 answers: {rep['rate_limited']}; relay CPU {result['cpu']:.0%} of a core "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
        flush=True,
    )
    backend.drop("big")
    backend.drop("idle")


async def _create(backend: Any, tag: str) -> None:
    queue = await backend.open(tag)
    await queue.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="sqlite,postgresql")
    parser.add_argument("--jobs", type=int, default=10_000_000)
    parser.add_argument("--layout-jobs", type=int, default=300_000)
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--pg-url", default=os.environ.get("HEAPRELAY_TEST_PG_URL", ""))
    parser.add_argument("--tmp", default=None, help="Where the SQLite files go.")
    args = parser.parse_args()
    print(f"building a pool of {POOL:,} events (bench/make_events.py)…", flush=True)
    pool = Pool(POOL)
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        tmp = Path(d)
        for name in args.backend.split(","):
            if name == "sqlite":
                bench(SQLiteBackend(tmp), pool, args, tmp)
            elif name == "postgresql":
                if not args.pg_url:
                    raise SystemExit("--pg-url (or HEAPRELAY_TEST_PG_URL) is needed")
                bench(PostgresBackend(args.pg_url), pool, args, tmp)
            else:
                raise SystemExit(f"unknown backend {name!r}")


if __name__ == "__main__":
    main()
