#!/usr/bin/env python3
"""The delivery livelock repro of issue 12, with the relay's defaults, as a user would run it.

    .venv/bin/python bench/livelock.py [--events 4000] [--every 25] [--timeout 600]

Starts ``heaprelay serve --sandbox`` (a real process, default settings: Heap's rate limits
on both sides at the real time scale), tells the embedded fake Heap to refuse the items of
identity ``baduser``, posts one ``/v1/batch`` of ``--events`` tracks (every ``--every``-th
for ``baduser``, the others for 400 identities), and watches the queue until every job is
finished (delivered or dead) or ``--timeout`` seconds pass. Prints the queue's states, the
leases taken, Heap's requests and re-sends every 10 s, and at the end the time it took next
to the baseline: the time Heap's budget (15,000 events a minute per app_id) needs for the
items that were sent (first sends and re-sends of refused requests' halves), so
``end − budget`` is what the relay lost on top of Heap's own limits.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from heaprelay.testing.servers import free_port

BUDGET_PER_SECOND = 15_000 / 60


def states(db: Path) -> tuple[dict[str, int], int]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        leases = conn.execute("SELECT coalesce(max(leases), 0) FROM jobs").fetchone()[0]
    return dict(rows), int(leases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "heaprelay.db"
        cmd = [sys.executable, "-m", "heaprelay", "serve", "--sandbox", "--port", str(port)]
        cmd += ["--data-dir", tmp, "--log-level", "warning"]
        proc = subprocess.Popen(cmd)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the relay did not start")
                time.sleep(0.1)
            fake = base + "/fake-heap/_fake"
            httpx.post(
                fake + "/settings", json={"reject_identities": ["baduser"]}
            ).raise_for_status()
            batch = [
                {
                    "type": "track",
                    "event": "Played",
                    "userId": "baduser" if i % args.every == 0 else f"user-{i % 400}",
                    "messageId": f"m-{i}",
                    "properties": {"n": i},
                }
                for i in range(args.events)
            ]
            bad = sum(1 for m in batch if m["userId"] == "baduser")
            began = time.monotonic()
            answer = httpx.post(base + "/v1/batch", json={"batch": batch}, auth=("sandbox", ""))
            answer.raise_for_status()
            last_print = 0.0
            while True:
                elapsed = time.monotonic() - began
                counts, leases = states(db)
                done = counts.get("delivered", 0) + counts.get("dead", 0) == args.events
                if done or elapsed > args.timeout or elapsed - last_print >= 10:
                    last_print = elapsed
                    report = httpx.get(fake + "/report", timeout=10).json()
                    print(
                        f"{elapsed:6.0f}s  jobs {counts}  max leases {leases}  Heap: "
                        f"{report['requests']} requests {report['by_status']}, "
                        f"{report['accepted_events']} accepted, {report['duplicates']} "
                        "duplicate keys",
                        flush=True,
                    )
                if done or elapsed > args.timeout:
                    break
                time.sleep(0.5)
            requests = httpx.get(fake + "/requests", timeout=30).json()
            events = httpx.get(fake + "/events", timeout=30).json()
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    items_sent = sum(r["items"] for r in requests)
    per_key = Counter(e["idempotency_key"] for e in events)
    budget = items_sent / BUDGET_PER_SECOND
    print(
        f"\n{'converged' if done else 'NOT converged'} after {elapsed:.0f}s: "
        f"{counts.get('delivered', 0)} delivered, {counts.get('dead', 0)} dead "
        f"(expected {args.events - bad} and {bad}), {counts.get('leased', 0)} leased, "
        f"max leases a job {leases}"
    )
    print(
        f"Heap: {len(requests)} requests carrying {items_sent} items "
        f"({items_sent - args.events} re-sent), {len(per_key)} distinct events stored, "
        f"{sum(n - 1 for n in per_key.values())} stored twice"
    )
    print(
        f"baseline: Heap's budget needs {budget:.0f}s for those {items_sent} items; "
        f"the relay took {elapsed:.0f}s ({elapsed - budget:+.0f}s)"
    )


if __name__ == "__main__":
    main()
