"""``heaprelay status`` on a huge SQLite queue: ``python bench/status.py`` (one command).

Writes ``--jobs`` jobs (default 10,000,000) straight into a queue file in big transactions
(states mixed as a long-running relay leaves them: mostly delivered, some pending, retrying,
skipped and dead, over two destinations), counts them once as opening an older file would
(``fill_counts``), and then times, on that file:

- ``heaprelay status --interval 0 --json``, the whole command (a new process: Python start,
  imports, opening the queue, reading the counts and the recent errors);
- ``Queue.stats()`` alone, in this process;
- the baseline: what ``status`` did before it read maintained counts (``count(*)`` grouped by
  destination and state, by reason, and ``min(received_at)`` of the unfinished jobs), on the
  same file;

and the same command on a 10,000-job file, for comparison. The files are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from heaprelay.queue.sqlite import QUERIES, SQLiteQueue

# Per 100 jobs: how many are in each state (and the reason of those that have one).
MIX = [
    (70, "delivered", None),
    (12, "pending", None),
    (4, "retry", "http_503"),
    (6, "skipped", "filtered_event_name"),
    (3, "skipped", "duplicate"),
    (3, "dead", "heap_rejected"),
    (2, "leased", None),
]
PAYLOAD = (
    b'{"type":"track","userId":"user-1","event":"Order Completed","messageId":"m",'
    b'"properties":{"revenue":12.5,"currency":"EUR"}}'
)
OLD_STATUS = [
    "SELECT destination, state, count(*) FROM jobs GROUP BY destination, state",
    "SELECT reason, count(*) FROM jobs WHERE state IN ('dead', 'skipped') AND reason IS NOT NULL "
    "GROUP BY reason",
    "SELECT min(received_at) FROM jobs WHERE state IN ('pending', 'leased', 'retry')",
]


def make_queue(path: Path, jobs: int) -> float:
    """A queue file of ``jobs`` jobs; seconds it took."""
    started = time.perf_counter()

    async def create() -> None:
        queue = await SQLiteQueue.open(path)  # the schema, counters and triggers
        await queue.close()

    asyncio.run(create())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    case = " ".join(
        f"WHEN x % 100 < {sum(m[0] for m in MIX[: i + 1])} THEN {i}" for i in range(len(MIX))
    )
    states = " ".join(f"WHEN {i} THEN '{m[1]}'" for i, m in enumerate(MIX))
    reasons = " ".join(f"WHEN {i} THEN {repr(m[2]) if m[2] else 'NULL'}" for i, m in enumerate(MIX))
    chunk = 1_000_000
    now = time.time()
    for start in range(0, jobs, chunk):
        n = min(chunk, jobs - start)
        conn.execute("BEGIN")
        conn.execute(
            f"""
            WITH RECURSIVE c(x) AS (SELECT {start} UNION ALL SELECT x + 1 FROM c
                                    WHERE x < {start + n - 1}),
                 k(x, m) AS (SELECT x, CASE {case} END FROM c)
            INSERT INTO jobs (source, destination, message_id, order_key, payload, received_at,
                              state, attempts, reason, finished_at, due_at)
            SELECT 'web', CASE WHEN x % 3 = 0 THEN 'heap-eu' ELSE 'heap' END,
                   'msg-' || x, 'user-' || (x % 50000), ?, ? - ({jobs} - x) * 0.001,
                   CASE m {states} END, CASE WHEN m IN (2, 5) THEN 1 ELSE 0 END,
                   CASE m {reasons} END,
                   CASE WHEN m IN (0, 3, 4, 5) THEN ? ELSE NULL END,
                   CASE WHEN m IN (2, 6) THEN ? + 3600 ELSE NULL END
            FROM k
            """,
            (PAYLOAD, now, now, now),
        )
        conn.execute("COMMIT")
        print(f"  {start + n:>11,} jobs written", file=sys.stderr)
    conn.executescript(f"BEGIN; DELETE FROM counts; {QUERIES['fill_counts']} COMMIT;")
    conn.close()
    return time.perf_counter() - started


def time_command(data_dir: Path, rounds: int) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")}
    command = [sys.executable, "-m", "heaprelay", "status", "--interval", "0", "--json"]
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(
            [*command, "--data-dir", str(data_dir)], check=True, env=env, capture_output=True
        )
        times.append(time.perf_counter() - started)
    return times


def time_stats(path: Path, rounds: int) -> list[float]:
    async def run() -> list[float]:
        queue = await SQLiteQueue.open(path)
        times = []
        try:
            for _ in range(rounds):
                started = time.perf_counter()
                await queue.stats()
                await queue.recent_errors()
                times.append(time.perf_counter() - started)
        finally:
            await queue.close()
        return times

    return asyncio.run(run())


def time_old_status(path: Path, rounds: int) -> list[float]:
    conn = sqlite3.connect(path)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for query in OLD_STATUS:
            conn.execute(query).fetchall()
        times.append(time.perf_counter() - started)
    conn.close()
    return times


def show(label: str, times: list[float]) -> None:
    print(f"  {label:<52} median {statistics.median(times):8.3f} s  (min {min(times):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="heaprelay-bench-status-") as tmp:
        big_dir, small_dir = Path(tmp, "big"), Path(tmp, "small")
        big_dir.mkdir()
        small_dir.mkdir()
        print(f"writing {args.jobs:,} jobs ...", file=sys.stderr)
        seconds = make_queue(big_dir / "heaprelay.db", args.jobs)
        size = (big_dir / "heaprelay.db").stat().st_size
        make_queue(small_dir / "heaprelay.db", args.small)
        print(f"queue file: {args.jobs:,} jobs, {size / 2**30:.2f} GiB, written in {seconds:.0f} s")
        old = time_old_status(big_dir / "heaprelay.db", max(1, args.rounds // 2))
        print(f"{args.jobs:,} jobs:")
        show("heaprelay status (the whole command)", time_command(big_dir, args.rounds))
        show("Queue.stats() + recent_errors() in-process", time_stats(big_dir / "heaprelay.db", 20))
        show("baseline: counting rows, as status did before", old)
        print(f"{args.small:,} jobs:")
        show("heaprelay status (the whole command)", time_command(small_dir, args.rounds))
        show(
            "Queue.stats() + recent_errors() in-process", time_stats(small_dir / "heaprelay.db", 20)
        )
        show(
            "baseline: counting rows, as status did before",
            time_old_status(small_dir / "heaprelay.db", 5),
        )


if __name__ == "__main__":
    main()
