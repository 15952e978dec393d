"""Ingest throughput: ``python bench/ingest.py`` (one command).

Starts ``heaprelay``'s server (a subprocess, SQLite queue with durable commits) and drives it
from another process with concurrent keep-alive connections. Prints accepted events/s,
p50/p99 request latency and the server's CPU time a request for ``/v1/batch`` (100 events a
request) and single ``/v1/track`` calls, next to two references mounted on the same server
stack (same uvicorn, same Starlette app, same process; routed ahead of the ingest routes, so
reaching them costs no more than reaching ``/v1/batch``) and fed the same bodies:

- do-nothing (``POST /bench/noop``): reads the whole request body, answers
  ``{"success":true}``; no auth, no JSON parsing, no storage;
- validate-only (``/bench/nostore/v1/...``): the real ingest routes (auth, body limits, JSON,
  validation, enrichment, serialising each message) with a queue that keeps nothing.

Scenarios run in interleaved rounds and every figure is shown as the range over the rounds
(the machine is shared and the client competes with the server for the CPUs, so throughput
is noisy; server CPU a request is the steadier figure). Events are what the SDKs send:
uuid4 ``messageId``s (``--ids sequential`` for clustered ids) and per-event millisecond
timestamps. At the end every acknowledged event is looked up in the queue file.

``--history``: the source keeps the audiences' history (``Source.history_window``, as with an
``[[audiences]]`` table): each stored track event is also written to it, in the same
transaction. Run once with and once without to see what it costs.

The driver is a minimal HTTP/1.1 client on asyncio streams so that the client's own cost
stays far below the server's (httpx would need more CPU than the server on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from _client import read_answer, server_cpu  # bench/ is the script's folder: first on sys.path

KEY = "bench-key"
AUTH = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
BATCH_SIZE = 100


# --- the server process ---------------------------------------------------------------------


def serve(port: int, data_dir: Path, history: bool = False) -> None:
    import dataclasses

    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Mount, Route

    from heaprelay.cli.serve import config_from_flags
    from heaprelay.clock import SystemClock
    from heaprelay.ingest import IngestState, ingest_routes
    from heaprelay.queue.base import AppendResult, NewJob
    from heaprelay.server import build_app, run

    async def noop(request: Request) -> Response:
        await request.body()
        return Response(b'{"success":true}', media_type="application/json")

    class DiscardingQueue:
        """Takes the jobs and keeps nothing: the whole ingest path minus the storage."""

        async def append(
            self, jobs: list[NewJob], *, now: float, history: object = ()
        ) -> AppendResult:
            return AppendResult(stored=len(jobs))

    config = config_from_flags(
        app_id="1",
        write_key=KEY,
        host="127.0.0.1",
        port=port,
        data_dir=data_dir,
        profile="heap",
        region="us",
        base_url=None,
        queue_url=None,
    )
    if history:
        sources = tuple(dataclasses.replace(s, history_window=30 * 86400.0) for s in config.sources)
        config = dataclasses.replace(config, sources=sources)
    no_store = IngestState(sources=config.sources, clock=SystemClock())
    no_store.queue = DiscardingQueue()  # type: ignore[assignment]
    extra = [
        Route("/bench/noop", noop, methods=["POST"]),
        Mount("/bench/nostore", routes=ingest_routes(no_store)),
    ]
    app = build_app(config, services=[], extra_routes=extra)
    run(config, app=app, log_level="warning")


# --- the driver process ---------------------------------------------------------------------


def make_body(kind: str, tag: str, n: int, ids: str = "uuid") -> bytes:
    """A request body with unique messageIds: uuid4s as the SDKs make them, or
    ``tag``-``n``-k (clustered, so cheaper to index) for ``ids="sequential"``."""
    now = "2024-05-01T12:00:00.000Z"

    def event(k: int) -> dict[str, object]:
        return {
            "type": "track",
            "userId": f"user-{(n * 7 + k) % 5000}",
            "event": "Order Completed",
            "messageId": str(uuid.uuid4()) if ids == "uuid" else f"{tag}-{n}-{k}",
            "timestamp": f"2024-05-01T12:00:{k % 60:02d}.{(n * 37 + k * 11) % 1000:03d}Z",
            "properties": {"revenue": 12.5, "currency": "EUR", "sku": f"sku-{k}", "qty": k},
            "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
        }

    if kind == "batch":
        body: object = {"batch": [event(k) for k in range(BATCH_SIZE)], "sentAt": now}
    else:
        body = event(0)
    return json.dumps(body, separators=(",", ":")).encode()


async def drive(
    port: int, path: str, kind: str, seconds: float, connections: int, server_pid: int, ids: str
) -> dict[str, float]:
    tag = f"{kind}-{path.strip('/').replace('/', '_')}-{os.getpid()}-{time.time_ns()}"
    latencies: list[float] = []
    ok = errors = acked = 0
    counter = 0
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {AUTH}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()
    # Bodies are prepared ahead (unique ids) so the loop only writes bytes; before the clock
    # starts (40,000 batch events take a while on a loaded machine).
    pool = [make_body(kind, tag, n, ids) for n in range(4000 if kind == "single" else 400)]
    warmup_end = time.perf_counter() + min(1.0, seconds / 5)
    end = warmup_end + seconds
    events_per_request = BATCH_SIZE if kind == "batch" else 1

    async def connection(c: int) -> None:
        nonlocal ok, errors, counter, acked
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (start := time.perf_counter()) < end:
            counter += 1
            body = pool[counter % len(pool)]
            if counter >= len(pool):  # keep messageIds unique: a suffix keeps their order
                suffix = f"-{counter // len(pool)}"
                body = body.replace(b'","timestamp"', f'{suffix}","timestamp"'.encode())
            writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
            status, _ = await read_answer(reader)
            done = time.perf_counter()
            if status == b"200":
                acked += events_per_request  # warm-up included: all must be stored
            if start < warmup_end:
                continue
            latencies.append(done - start)
            if status == b"200":
                ok += 1
            else:
                errors += 1
        writer.close()

    # the server's CPU seconds during the measured window (after the warm-up)
    cpu_task = asyncio.create_task(server_cpu(server_pid, warmup_end, end))
    await asyncio.gather(*(connection(c) for c in range(connections)))
    cpu = await cpu_task
    latencies.sort()
    return {
        "acked_events": acked,
        "requests": ok + errors,
        "errors": errors,
        "server_cpu": cpu,
        "events_per_s": ok * events_per_request / seconds,
        "requests_per_s": (ok + errors) / seconds,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else 0.0,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
    }


# --- the one command ------------------------------------------------------------------------


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the server did not become ready")


def run_driver(
    port: int, path: str, kind: str, seconds: float, connections: int, server_pid: int, ids: str
) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--drive",
            "--port",
            str(port),
            "--path",
            path,
            "--server-pid",
            str(server_pid),
            "--kind",
            kind,
            "--seconds",
            str(seconds),
            "--connections",
            str(connections),
            "--ids",
            ids,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


#: (name, path, kind, stores): "stores" scenarios' acknowledged events must be in the file.
SCENARIOS = [
    ("do-nothing, batch bodies", "/bench/noop", "batch", False),
    ("/v1/batch, validate only", "/bench/nostore/v1/batch", "batch", False),
    ("/v1/batch (100 events)", "/v1/batch", "batch", True),
    ("do-nothing, single bodies", "/bench/noop", "single", False),
    ("/v1/track, validate only", "/bench/nostore/v1/track", "single", False),
    ("/v1/track", "/v1/track", "single", True),
]
RATIOS = (
    ("/v1/batch (100 events)", "do-nothing, batch bodies"),
    ("/v1/batch (100 events)", "/v1/batch, validate only"),
    ("/v1/track", "do-nothing, single bodies"),
    ("/v1/track", "/v1/track, validate only"),
)


def cpu_per_request(result: dict[str, float]) -> float:
    return result["server_cpu"] / max(result["requests"], 1)


def span(values: list[float], fmt: str) -> str:
    """``low–high`` of a figure over the rounds (one value when they agree)."""
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}-{high}"


def parse_cost_us(body: bytes, repeat: int = 2000) -> float:
    """Median CPU microseconds of ``orjson.loads`` on ``body`` (batches of ``repeat`` calls)."""
    import orjson

    samples = []
    for _ in range(5):
        start = time.process_time()
        for _ in range(repeat):
            orjson.loads(body)
        samples.append(1e6 * (time.process_time() - start) / repeat)
    return statistics.median(samples)


def print_budget(rounds: dict[str, list[dict[str, float]]]) -> None:
    """What 60% of the do-nothing throughput leaves the server for its own work: at that rate
    one core (the event loop is one thread, and the client needs the other core) gives each
    request 1 s / rate of CPU, of which the HTTP stack takes what the do-nothing endpoint
    uses. Next to it, the cost of only parsing the same body with orjson (the fastest JSON
    parser for Python), measured here in this process."""
    print("\nthe CPU a request may cost at 60% of do-nothing's rate (one core):")
    for label, reference, kind in (
        ("/v1/batch", "do-nothing, batch bodies", "batch"),
        ("/v1/track", "do-nothing, single bodies", "single"),
    ):
        rate = 0.6 * statistics.median(r["requests_per_s"] for r in rounds[reference])
        whole = 1e6 / rate
        stack = statistics.median(1e6 * cpu_per_request(r) for r in rounds[reference])
        parse = parse_cost_us(make_body(kind, "budget", 0))
        print(
            f"  {label}: {rate:,.0f} requests/s -> {whole:,.0f} us a request; the HTTP stack "
            f"takes {stack:,.0f} us (do-nothing), leaving {whole - stack:,.0f} us for auth, "
            f"parsing, validation, storage and the commit; orjson.loads of the body alone: "
            f"{parse:,.1f} us"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per scenario and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--ids", choices=("uuid", "sequential"), default="uuid")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument(
        "--history", action="store_true", help="the source keeps the audiences' history"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", default="/v1/batch", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="batch", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.data_dir, args.history)
        return
    if args.drive:
        result = asyncio.run(
            drive(
                args.port,
                args.path,
                args.kind,
                args.seconds,
                args.connections,
                args.server_pid,
                args.ids,
            )
        )
        print(json.dumps(result))
        return

    from heaprelay.testing.servers import free_port

    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    acked = 0
    with tempfile.TemporaryDirectory(prefix="heaprelay-bench-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        server = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                *(["--history"] if args.history else []),
            ]
        )
        try:
            wait_ready(url, server)
            # Scenarios alternate round by round: a neighbour's burst on the shared machine
            # then widens one scenario's range instead of skewing one whole comparison.
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in SCENARIOS}
            for _ in range(args.rounds):
                for name, path, kind, stores in SCENARIOS:
                    result = run_driver(
                        port, path, kind, args.seconds, args.connections, server.pid, args.ids
                    )
                    rounds[name].append(result)
                    if stores:
                        acked += int(result["acked_events"])
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        conn = sqlite3.connect(data_dir / "heaprelay.db")
        stored = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        recorded = 0
        if "audience_events" in tables:
            recorded = conn.execute("SELECT count(*) FROM audience_events").fetchone()[0]
        conn.close()

    print(
        f"\nheaprelay ingest, {args.connections} connections, {args.rounds} interleaved rounds x "
        f"{args.seconds:g} s a scenario (ranges over the rounds), {args.ids} messageIds, "
        f"SQLite synchronous=FULL (WAL), {os.cpu_count()} CPUs, audiences' history "
        f"{'on' if args.history else 'off'} ({recorded:,} events in it)\n"
    )
    print(
        f"{'scenario':<27}{'events/s':>17}{'p50 ms':>13}{'p99 ms':>13}{'errors':>7}"
        f"{'server CPU':>12}{'CPU us/req':>13}"
    )
    for name, results in rounds.items():
        print(
            f"{name:<27}{span([r['events_per_s'] for r in results], ',.0f'):>17}"
            f"{span([r['p50_ms'] for r in results], '.1f'):>13}"
            f"{span([r['p99_ms'] for r in results], '.1f'):>13}"
            f"{sum(r['errors'] for r in results):>7.0f}"
            f"{span([r['server_cpu'] / args.seconds for r in results], '.0%'):>12}"
            f"{span([1e6 * cpu_per_request(r) for r in results], ',.0f'):>13}"
        )
    print("\nratios per round (durable / reference, same round):")
    for durable, other in RATIOS:
        pairs = list(zip(rounds[durable], rounds[other], strict=True))
        throughput = [d["requests_per_s"] / max(o["requests_per_s"], 1e-9) for d, o in pairs]
        cpu = [cpu_per_request(d) / max(cpu_per_request(o), 1e-9) for d, o in pairs]
        print(
            f"  {durable} / {other}: {span(throughput, '.0%')} of its throughput, "
            f"{span(cpu, '.1f')}x its server CPU a request"
        )
    batch_rounds = rounds["/v1/batch (100 events)"]
    fast_enough = sum(r["events_per_s"] >= 25_000 for r in batch_rounds)
    print(
        f"goal >= 25,000 events/s through /v1/batch: met in {fast_enough} of {args.rounds} rounds"
    )
    for durable, other in RATIOS[0], RATIOS[2]:
        close_enough = sum(
            d["requests_per_s"] >= 0.6 * o["requests_per_s"]
            for d, o in zip(rounds[durable], rounds[other], strict=True)
        )
        print(
            f"goal durable {durable.split()[0]} >= 60% of do-nothing: met in {close_enough} of "
            f"{args.rounds} rounds"
        )
    print_budget(rounds)
    verdict = "all there" if stored >= acked else f"MISSING {acked - stored:,}"
    print(
        f"acknowledged events (durable scenarios, warm-up included): {acked:,}; jobs in the "
        f"queue file: {stored:,}: {verdict}"
    )
    if stored < acked:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
