"""``heaprelay send`` of a big file, interrupted and resumed: ``python bench/send.py``.

Writes ``--events`` (default 1,000,000) track events without messageIds as NDJSON, starts a
fake Heap (``heaprelay fake-heap --no-rate-limits``) and a relay (``heaprelay serve``, SQLite,
rate limits off) as processes, then:

- baseline: the same kind of events, pre-encoded as 500-event ``/v1/batch`` bodies, posted by a
  bare loop (one keep-alive connection, no reading, no state file) for ``--baseline``
  events to another source of the same relay: what any client pays for the relay to store;
- ``heaprelay send FILE --url … --write-key …``, interrupted with Ctrl-C (SIGINT) after a
  third of the file and killed (SIGKILL) after two thirds, each time run again until done;

and prints events/s of each run and overall, next to the baseline. At the end it waits for
the relay to deliver everything and checks at the fake Heap that every event arrived exactly
once (accepted = events sent, no idempotency-key duplicates). The files are deleted after.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson

from heaprelay.testing.servers import free_port, run_process

KEY, BASELINE_KEY = "bench-send-key", "bench-baseline-key"


def write_events(path: Path, n: int, tag: str) -> None:
    with path.open("wb") as f:
        for i in range(n):
            event = {
                "type": "track",
                "userId": f"user-{i % 20_000}",
                "event": "Imported Order",
                "timestamp": f"2026-11-{1 + i % 28:02d}T12:{i % 60:02d}:00.000Z",
                "properties": {"n": i, "tag": tag, "revenue": 12.5, "currency": "EUR"},
            }
            f.write(orjson.dumps(event) + b"\n")


def done_so_far(state: Path) -> int:
    try:
        return int(orjson.loads(state.read_bytes())["done"])
    except (FileNotFoundError, orjson.JSONDecodeError, KeyError):
        return 0


def baseline(relay: str, n: int) -> float:
    bodies = []
    for start in range(0, n, 500):
        batch = [
            {
                "type": "track",
                "userId": f"user-{i % 20_000}",
                "event": "Imported Order",
                "messageId": str(uuid.uuid4()),
                "properties": {"n": i, "tag": "baseline", "revenue": 12.5, "currency": "EUR"},
            }
            for i in range(start, min(n, start + 500))
        ]
        bodies.append(orjson.dumps({"batch": batch}))
    with httpx.Client(auth=(BASELINE_KEY, ""), timeout=60) as client:
        started = time.perf_counter()
        for body in bodies:
            client.post(f"{relay}/v1/batch", content=body).raise_for_status()
        return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=int, default=100_000)
    args = parser.parse_args()
    exe = [sys.executable, "-m", "heaprelay"]
    with tempfile.TemporaryDirectory(prefix="heaprelay-bench-send-") as tmp:
        folder = Path(tmp)
        events = folder / "events.ndjson"
        write_events(events, args.events, "send")
        print(f"{args.events:,} events, {events.stat().st_size / 2**20:.0f} MiB of NDJSON")
        heap_port, relay_port = free_port(), free_port()
        heap = f"http://127.0.0.1:{heap_port}"
        config = folder / "relay.toml"
        config.write_text(
            f"""
[server]
port = {relay_port}
data_dir = "{folder / "data"}"
[delivery]
rate_limits = false
[[sources]]
name = "import"
write_key = "{KEY}"
  [[sources.destinations]]
  id = "heap"
  app_id = "1"
  base_url = "{heap}"
[[sources]]
name = "baseline"
write_key = "{BASELINE_KEY}"
  [[sources.destinations]]
  id = "baseline"
  app_id = "2"
  base_url = "{heap}"
"""
        )
        relay = f"http://127.0.0.1:{relay_port}"
        fake = [*exe, "fake-heap", "--port", str(heap_port), "--no-rate-limits"]
        serve = [*exe, "serve", "--config", str(config), "--log-level", "warning"]
        with (
            run_process(fake, folder / "fake.log", ready=f"{heap}/_fake/report"),
            run_process(serve, folder / "serve.log", ready=f"{relay}/readyz"),
        ):
            rate = baseline(relay, args.baseline)
            print(f"baseline: bare /v1/batch loop, {args.baseline:,} events: {rate:,.0f} events/s")
            state = folder / "events.ndjson.send-state"
            send = [*exe, "send", str(events), "--url", relay, "--write-key", KEY, "--no-progress"]
            total_seconds = 0.0
            for stop_at, how in (
                (args.events // 3, signal.SIGINT),
                (2 * args.events // 3, signal.SIGKILL),
                (None, None),
            ):
                started = time.perf_counter()
                proc = subprocess.Popen(send, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                if stop_at is not None and how is not None:
                    while done_so_far(state) < stop_at and proc.poll() is None:
                        time.sleep(0.05)
                    proc.send_signal(how)
                output = proc.communicate()[0].decode().strip()
                seconds = time.perf_counter() - started
                total_seconds += seconds
                name = "Ctrl-C" if how == signal.SIGINT else "kill -9" if how else "to the end"
                print(
                    f"send run ({name}): exit {proc.returncode} after {seconds:.1f} s; "
                    f"done {done_so_far(state):,}"
                )
                if output:
                    print("  " + output.replace("\n", "\n  "))
            overall = args.events / total_seconds
            print(
                f"send overall: {args.events:,} events in {total_seconds:.1f} s of runs: "
                f"{overall:,.0f} events/s (baseline {rate:,.0f})"
            )
            expected = args.events + args.baseline
            started = time.perf_counter()
            while True:
                report = httpx.get(f"{heap}/_fake/report", timeout=10).json()
                if report["accepted_events"] >= expected or time.perf_counter() - started > 1800:
                    break
                time.sleep(1)
            time.sleep(3)  # anything delivered twice would arrive now
            report = httpx.get(f"{heap}/_fake/report", timeout=10).json()
            print(
                f"delivered to the fake Heap: {report['accepted_events']:,} events accepted "
                f"(expected {expected:,}), {report['duplicates']} duplicates, "
                f"in {time.perf_counter() - started:.0f} s after send ended"
            )
            ok = report["accepted_events"] == expected and report["duplicates"] == 0
            print("every event delivered exactly once" if ok else "MISMATCH")


if __name__ == "__main__":
    main()
