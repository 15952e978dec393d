"""``heaprelay status``: queue depth by state, delivery rate, retry reasons, last errors.

Reads the queue's maintained counts (:class:`heaprelay.queue.base.QueueStats`) and its record
of recent failures, so it answers as fast on 10,000,000 jobs as on 10."""

from __future__ import annotations

import time
from pathlib import Path

import click
import orjson

from heaprelay.cli._queue import queue_options, resolve_queue_url, with_queue
from heaprelay.queue.base import ErrorRecord, Queue, QueueStats


@click.command()
@queue_options
@click.option(
    "--interval",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds between two readings to measure the delivery rate (0: skip).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(
    queue_url: str | None,
    data_dir: Path | None,
    config_file: Path | None,
    interval: float,
    as_json: bool,
) -> None:
    """How the relay is doing: jobs per state and destination, rate, recent failures."""
    url = resolve_queue_url(queue_url, data_dir, config_file)

    async def read(queue: Queue) -> tuple[QueueStats, QueueStats | None, list[ErrorRecord]]:
        import asyncio

        first = await queue.stats()
        second = None
        if interval > 0:
            await asyncio.sleep(interval)
            second = await queue.stats()
        return first, second, await queue.recent_errors(limit=10)

    first, second, recent = with_queue(url, read)
    latest = second or first
    rate = None
    if second is not None:
        done = ("delivered", "dead", "skipped")
        delta = sum(
            second.totals.get(d, {}).get(s, 0) - first.totals.get(d, {}).get(s, 0)
            for d in second.totals
            for s in done
        )
        rate = max(0, delta) / interval
    oldest = latest.oldest_pending_received_at
    lag = time.time() - oldest if oldest is not None else None
    retry_reasons: dict[str, int] = {}
    for per in latest.reasons.values():
        for reason, n in per.get("retry", {}).items():
            retry_reasons[reason] = retry_reasons.get(reason, 0) + n
    if as_json:
        click.echo(
            orjson.dumps(
                {
                    "by_state": latest.by_state,
                    "by_destination": latest.by_destination,
                    "by_reason": latest.by_reason,
                    "retry_reasons": retry_reasons,
                    "reasons": latest.reasons,
                    "totals": latest.totals,
                    "finished_per_second": rate,
                    "oldest_unfinished_age_seconds": lag,
                    "last_errors": [
                        {
                            "id": r.job_id,
                            "at": r.at,
                            "destination": r.destination,
                            "state": r.state,
                            "reason": r.reason,
                            "answer": r.answer,
                            "jobs": r.jobs,
                        }
                        for r in recent
                    ],
                }
            ).decode()
        )
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    states = list(latest.by_state)
    table = Table("destination", *states, title="jobs by state")
    table.add_row("all", *(str(latest.by_state.get(s, 0)) for s in states))
    for dest, counts in sorted(latest.by_destination.items()):
        table.add_row(dest, *(str(counts.get(s, 0)) for s in states))
    console.print(table)
    if rate is not None:
        console.print(f"finished (delivered + dead + skipped): {rate:.1f} jobs/s over {interval}s")
    if lag is not None:
        console.print(f"oldest unfinished job: {lag:.1f}s old")
    if latest.by_reason:
        reasons = Table("reason", "jobs", title="skipped and dead, by reason")
        for reason, n in sorted(latest.by_reason.items()):
            reasons.add_row(reason, str(n))
        console.print(reasons)
    if retry_reasons:
        retries = Table("reason", "jobs", title="retries by reason")
        for reason, n in sorted(retry_reasons.items()):
            retries.add_row(reason, str(n))
        console.print(retries)
    if recent:
        errors = Table(
            "when", "destination", "job", "state", "reason", "Heap's answer", title="last errors"
        )
        for r in recent:
            when = time.strftime("%H:%M:%S", time.localtime(r.at))
            job = f"{r.job_id}" + (f" (+{r.jobs - 1})" if r.jobs > 1 else "")
            errors.add_row(when, r.destination, job, r.state, r.reason, r.answer[:100])
        console.print(errors)
