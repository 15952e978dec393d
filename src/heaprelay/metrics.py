"""Prometheus metrics (``GET /metrics``), with ``prometheus_client`` and its conventions:
counters end in ``_total``, times are in seconds, one metric per quantity with labels.

Each process counts what *it* did (events it received, requests it sent to Heap, jobs it
finished); with several relays on one PostgreSQL queue, sum them in Prometheus. The queue
gauges (jobs by state, the oldest unfinished job's age, skipped and dead by reason) are read
from the shared store at each scrape, so every process shows the same whole-queue figures:
take one, not the sum. Every name is in :data:`MetricName`.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from heaprelay.config import DeliverySettings, Source
from heaprelay.heap.client import HeapAnswer
from heaprelay.heap.models import HeapRequest
from heaprelay.messages.incoming import Prepared
from heaprelay.queue.base import DeadLetter, Delivered, Job, Outcome, QueueStats, RetryAt, Skipped
from heaprelay.router.batcher import Batch

__all__ = ["CONTENT_TYPE_LATEST", "METRIC_NAMES", "MetricName", "Metrics"]

MetricName = Literal[
    # ingest (this process)
    "heaprelay_events_received_total",
    "heaprelay_ingest_requests_total",
    "heaprelay_ingest_request_duration_seconds",
    # delivery (this process)
    "heaprelay_jobs_finished_total",
    "heaprelay_job_retries_total",
    "heaprelay_heap_requests_total",
    "heaprelay_heap_request_duration_seconds",
    "heaprelay_heap_rate_limited_total",
    "heaprelay_delivery_pauses_total",
    "heaprelay_delivery_paused_seconds_total",
    "heaprelay_delivery_delay_seconds",
    "heaprelay_rate_budget_used_ratio",
    # the queue (the shared store, read at each scrape)
    "heaprelay_queue_jobs",
    "heaprelay_queue_reason_jobs",
    "heaprelay_queue_oldest_unfinished_age_seconds",
]
METRIC_NAMES: Final[tuple[MetricName, ...]] = get_args(MetricName)

#: Ingest answers within milliseconds; a slow disk or a huge batch takes longer.
_INGEST_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
#: From ingest to Heap: seconds normally (batching), hours when Heap was down.
_DELAY_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)


def _base(name: MetricName) -> str:
    """The name to give prometheus_client (it adds ``_total`` to counters itself)."""
    return name.removesuffix("_total")


class Metrics:
    """This process's metrics. An :class:`~heaprelay.ingest.IngestObserver` and a
    :class:`~heaprelay.router.observer.DeliveryObserver`; :meth:`render` answers a scrape.

    ``monotonic`` times the rate-budget window (injectable, as the router's clock is)."""

    def __init__(
        self,
        delivery: DeliverySettings | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.delivery = delivery or DeliverySettings()
        self._monotonic = monotonic
        self._now = now
        r = self.registry

        def counter(name: MetricName, doc: str, labels: Sequence[str]) -> Counter:
            return Counter(_base(name), doc, labels, registry=r)

        def gauge(name: MetricName, doc: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=r)

        def histogram(
            name: MetricName, doc: str, labels: Sequence[str], buckets: Sequence[float]
        ) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        # Ingest's own metrics are counted in plain dicts on the request path (a few hundred
        # nanoseconds instead of the microseconds of prometheus_client's locked values) and
        # handed to prometheus_client when scraped (_IngestCollector).
        self.ingest = _IngestCollector()
        r.register(self.ingest)
        self.finished_jobs = counter(
            "heaprelay_jobs_finished_total",
            "Jobs this process finished, by destination, outcome (delivered, skipped, dead) "
            "and reason (empty for delivered). Duplicates are skipped by the queue itself: "
            "see heaprelay_queue_reason_jobs.",
            ["destination", "outcome", "reason"],
        )
        self.retries = counter(
            "heaprelay_job_retries_total",
            "Jobs scheduled for another attempt, by destination and reason (http_503, ...).",
            ["destination", "reason"],
        )
        self.heap_requests = counter(
            "heaprelay_heap_requests_total",
            "Requests sent to Heap, by endpoint and HTTP status (0: no answer, network error).",
            ["endpoint", "status"],
        )
        self.heap_latency = histogram(
            "heaprelay_heap_request_duration_seconds",
            "Time Heap took to answer a (bulk) request, by endpoint.",
            ["endpoint"],
            _INGEST_BUCKETS,
        )
        self.rate_limited = counter(
            "heaprelay_heap_rate_limited_total",
            "Requests Heap answered 429, by app_id.",
            ["app_id"],
        )
        self.pauses = counter(
            "heaprelay_delivery_pauses_total",
            "Pauses of all delivery to an app_id after a 429, by app_id.",
            ["app_id"],
        )
        self.paused_seconds = counter(
            "heaprelay_delivery_paused_seconds_total",
            "Seconds of those pauses (Retry-After), by app_id.",
            ["app_id"],
        )
        self.delay = histogram(
            "heaprelay_delivery_delay_seconds",
            "From ingest (receivedAt) to Heap's acceptance, per delivered job, by destination.",
            ["destination"],
            _DELAY_BUCKETS,
        )
        self.budget = gauge(
            "heaprelay_rate_budget_used_ratio",
            "Share of Heap's per-app_id track budget (app_events_per_minute) this process "
            "used over the last minute (sum it over the processes).",
            ["app_id"],
        )
        self.queue_jobs = gauge(
            "heaprelay_queue_jobs",
            "Jobs in the queue now, by destination and state (the shared store).",
            ["destination", "state"],
        )
        self.queue_reasons = gauge(
            "heaprelay_queue_reason_jobs",
            "Skipped, dead and retrying jobs in the queue now, by destination, state and "
            "reason (the shared store).",
            ["destination", "state", "reason"],
        )
        self.oldest = gauge(
            "heaprelay_queue_oldest_unfinished_age_seconds",
            "Age of the oldest job not delivered, skipped or dead yet (0: none).",
        )
        #: app_id -> (monotonic time, events) of the track requests of the last window
        self._sent: dict[str, deque[tuple[float, int]]] = {}

    # --- ingest -----------------------------------------------------------------------------

    def stored(self, source: Source, route: str, messages: Sequence[Prepared], now: float) -> None:
        received = self.ingest.received
        key = (source.name, route)
        received[key] = received.get(key, 0) + len(messages)

    def answered(self, route: str, status: int, seconds: float, body: bytes) -> None:
        ingest = self.ingest
        key = (route, status)
        ingest.requests[key] = ingest.requests.get(key, 0) + 1
        latency = ingest.latency.get(route)
        if latency is None:
            latency = ingest.latency[route] = _Histogram(len(_INGEST_BUCKETS) + 1)
        latency.counts[bisect.bisect_left(_INGEST_BUCKETS, seconds)] += 1
        latency.sum += seconds

    # --- delivery ---------------------------------------------------------------------------

    def prepared(self, job: Job, requests: Sequence[HeapRequest]) -> None:
        return None

    def sent(self, batch: Batch, answer: HeapAnswer, seconds: float) -> None:
        self.heap_requests.labels(batch.endpoint, str(answer.status)).inc()
        self.heap_latency.labels(batch.endpoint).observe(seconds)
        if answer.status == 429:
            self.rate_limited.labels(batch.app_id).inc()
        if answer.ok and batch.endpoint == "track":
            self._sent.setdefault(batch.app_id, deque()).append(
                (self._monotonic(), len(batch.items))
            )

    def paused(self, app_id: str, seconds: float) -> None:
        self.pauses.labels(app_id).inc()
        self.paused_seconds.labels(app_id).inc(seconds)

    def finished(self, jobs: Sequence[Job], outcomes: Sequence[Outcome], now: float) -> None:
        by_id = {job.id: job for job in jobs}
        for outcome in outcomes:
            job = by_id.get(outcome.id)
            if job is None:
                continue
            if isinstance(outcome, Delivered):
                self.finished_jobs.labels(job.destination, "delivered", "").inc()
                self.delay.labels(job.destination).observe(max(0.0, now - job.received_at))
            elif isinstance(outcome, Skipped):
                self.finished_jobs.labels(job.destination, "skipped", outcome.reason.value).inc()
            elif isinstance(outcome, DeadLetter):
                self.finished_jobs.labels(job.destination, "dead", outcome.reason.value).inc()
            elif isinstance(outcome, RetryAt):
                self.retries.labels(job.destination, outcome.reason).inc()

    # --- a scrape ---------------------------------------------------------------------------

    def budget_use(self) -> dict[str, float]:
        """app_id -> share of its track budget this process used over the last window."""
        window = 60.0 / max(self.delivery.time_scale, 1e-9)
        since = self._monotonic() - window
        use: dict[str, float] = {}
        for app_id, sent in self._sent.items():
            while sent and sent[0][0] < since:
                sent.popleft()
            use[app_id] = sum(n for _, n in sent) / max(1, self.delivery.app_events_per_minute)
        return use

    def set_queue(self, stats: QueueStats) -> None:
        """The queue gauges from ``stats`` (read from the shared store just before)."""
        self.queue_jobs.clear()
        for destination, per in stats.by_destination.items():
            for state in ("pending", "leased", "retry", "delivered", "skipped", "dead"):
                self.queue_jobs.labels(destination, state).set(per.get(state, 0))
        self.queue_reasons.clear()
        for destination, states in stats.reasons.items():
            for state, reasons in states.items():
                for reason, n in reasons.items():
                    self.queue_reasons.labels(destination, state, reason).set(n)
        oldest = stats.oldest_pending_received_at
        self.oldest.set(max(0.0, self._now() - oldest) if oldest is not None else 0.0)

    def render(self, stats: QueueStats | None) -> bytes:
        """The exposition text (``stats``: the queue now, or ``None`` when it is not open)."""
        if stats is not None:
            self.set_queue(stats)
        for app_id, share in self.budget_use().items():
            self.budget.labels(app_id).set(share)
        return generate_latest(self.registry)


@dataclass(slots=True)
class _Histogram:
    """Counts per bucket (not cumulative; the last is +Inf) and the sum of one histogram."""

    size: int
    counts: list[int] = field(init=False)
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * self.size


@dataclass(slots=True, eq=False)  # registries hash their collectors
class _IngestCollector(Collector):
    """Ingest's metrics, counted in dicts by :class:`Metrics` and exposed at each scrape."""

    #: (source, route) -> events stored
    received: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (route, status) -> requests answered
    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    #: route -> its latency histogram
    latency: dict[str, _Histogram] = field(default_factory=dict)

    def collect(self) -> Iterator[Metric]:
        received = CounterMetricFamily(
            _base("heaprelay_events_received_total"),
            "Events stored by ingest (acknowledged), by source and route.",
            labels=["source", "route"],
        )
        for (source, route), n in sorted(self.received.items()):
            received.add_metric([source, route], n)
        yield received
        requests = CounterMetricFamily(
            _base("heaprelay_ingest_requests_total"),
            "Ingest requests answered, by route and HTTP status.",
            labels=["route", "status"],
        )
        for (route, status), n in sorted(self.requests.items()):
            requests.add_metric([route, str(status)], n)
        yield requests
        latency = HistogramMetricFamily(
            "heaprelay_ingest_request_duration_seconds",
            "Time to answer an ingest request (read, check, store, commit), by route.",
            labels=["route"],
        )
        for route, histogram in sorted(self.latency.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*_INGEST_BUCKETS, float("inf")), histogram.counts, strict=True):
                cumulative += n
                buckets.append((_bound(bound), cumulative))
            latency.add_metric([route], buckets, histogram.sum)
        yield latency

    def describe(self) -> Iterator[Metric]:
        return self.collect()


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))
