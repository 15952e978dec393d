"""The durable queue between ingest and delivery.

One interface (:class:`Queue`), several backends: an in-memory reference model (tests),
SQLite (the embedded default) and PostgreSQL (scale-out). ``open_queue(url)`` picks one.
"""

from heaprelay.queue._open import open_queue, queue_url_for, redact_url, sqlite_path
from heaprelay.queue.base import (
    AppendResult,
    DeadLetter,
    DeadLetterRecord,
    Delivered,
    Job,
    NewJob,
    Outcome,
    Queue,
    QueueStats,
    Release,
    RetryAt,
    Skipped,
    State,
    WorkerRegistry,
)

__all__ = [
    "AppendResult",
    "DeadLetter",
    "DeadLetterRecord",
    "Delivered",
    "Job",
    "NewJob",
    "Outcome",
    "Queue",
    "QueueStats",
    "Release",
    "RetryAt",
    "Skipped",
    "State",
    "WorkerRegistry",
    "open_queue",
    "queue_url_for",
    "redact_url",
    "sqlite_path",
]
