"""Metrics: what the observers count, as Prometheus reads it (prometheus_client's parser)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from heaprelay.config import DeliverySettings, Destination, Source
from heaprelay.heap.client import HeapAnswer
from heaprelay.messages.incoming import Prepared
from heaprelay.messages.reasons import Reason
from heaprelay.metrics import METRIC_NAMES, Metrics
from heaprelay.queue.base import DeadLetter, Delivered, Job, QueueStats, RetryAt, Skipped
from heaprelay.router.batcher import Batch, Item
from heaprelay.transform import DestinationSettings


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def job(n: int, received_at: float = 990.0) -> Job:
    return Job(n, "web", "heap", f"m{n}", "u", b"{}", received_at, 0, None, 1)


def test_each_observer_call_is_counted() -> None:
    clock = Clock()
    metrics = Metrics(DeliverySettings(app_events_per_minute=100), monotonic=clock, now=clock)
    source = Source("web", "key", (Destination("heap", DestinationSettings(app_id="1")),))
    metrics.stored(source, "/v1/batch", [Prepared("a", "u", b"{}")] * 3, 1.0)
    metrics.answered("/v1/batch", 200, 0.004, b"")
    metrics.answered("/v1/track", 400, 0.001, b"{}")
    batch = Batch(
        "http://heap/api/track", "track", {"app_id": "1"}, tuple(Item(i, {}) for i in range(20))
    )
    metrics.sent(batch, HeapAnswer(200), 0.05)
    metrics.sent(batch, HeapAnswer(429, retry_after="3"), 0.01)
    metrics.paused("1", 3.0)
    jobs = [job(1), job(2), job(3), job(4)]
    outcomes = [
        Delivered(1),
        RetryAt(2, at=1.0, reason="http_503"),
        DeadLetter(3, Reason.HEAP_REJECTED, "400"),
        Skipped(4, Reason.CONSENT_DENIED),
    ]
    metrics.finished(jobs, outcomes, now=1000.0)
    stats = QueueStats(
        by_state={"pending": 2, "dead": 1},
        by_destination={"heap": {"pending": 2, "dead": 1}},
        oldest_pending_received_at=900.0,
        reasons={"heap": {"dead": {"heap_rejected": 1}}},
    )
    got = samples(metrics.render(stats))
    assert (
        got[("heaprelay_events_received_total", (("route", "/v1/batch"), ("source", "web")))] == 3
    )
    assert (
        got[("heaprelay_ingest_requests_total", (("route", "/v1/track"), ("status", "400")))] == 1
    )
    assert got[("heaprelay_ingest_request_duration_seconds_count", (("route", "/v1/batch"),))] == 1
    assert got[("heaprelay_heap_requests_total", (("endpoint", "track"), ("status", "429")))] == 1
    assert got[("heaprelay_heap_rate_limited_total", (("app_id", "1"),))] == 1
    assert got[("heaprelay_delivery_pauses_total", (("app_id", "1"),))] == 1
    assert got[("heaprelay_delivery_paused_seconds_total", (("app_id", "1"),))] == 3.0
    finished = "heaprelay_jobs_finished_total"
    assert got[(finished, (("destination", "heap"), ("outcome", "delivered"), ("reason", "")))] == 1
    assert (
        got[(finished, (("destination", "heap"), ("outcome", "dead"), ("reason", "heap_rejected")))]
        == 1
    )
    assert (
        got[
            (
                finished,
                (("destination", "heap"), ("outcome", "skipped"), ("reason", "consent_denied")),
            )
        ]
        == 1
    )
    assert (
        got[("heaprelay_job_retries_total", (("destination", "heap"), ("reason", "http_503")))] == 1
    )
    assert got[("heaprelay_delivery_delay_seconds_sum", (("destination", "heap"),))] == 10.0
    assert got[("heaprelay_queue_jobs", (("destination", "heap"), ("state", "pending")))] == 2
    assert (
        got[
            (
                "heaprelay_queue_reason_jobs",
                (("destination", "heap"), ("reason", "heap_rejected"), ("state", "dead")),
            )
        ]
        == 1
    )
    assert got[("heaprelay_queue_oldest_unfinished_age_seconds", ())] == 100.0
    # 20 events of a budget of 100 a minute; a minute later none.
    assert got[("heaprelay_rate_budget_used_ratio", (("app_id", "1"),))] == 0.2
    clock.t += 61
    assert (
        samples(metrics.render(None))[("heaprelay_rate_budget_used_ratio", (("app_id", "1"),))] == 0
    )


def test_every_metric_name_is_declared() -> None:
    text = Metrics().render(QueueStats()).decode()
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert declared == set(METRIC_NAMES)
