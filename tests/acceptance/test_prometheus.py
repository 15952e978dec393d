"""The real Prometheus server (Debian's ``prometheus``) scrapes a relay's ``/metrics`` (with its
``metrics_token``) after a known load: some events delivered, some filtered, some dead, some
refused at ingest. What Prometheus stored equals the relay's own counts (its queue) and what
the fake Heap received."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from heaprelay.config import Config, DeliverySettings, Destination, EventFilter, Source
from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.server import build_app
from heaprelay.testing.servers import free_port, run_process, serve_in_thread, wait_until
from heaprelay.transform import DestinationSettings

pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
KEY = "prom-write-key"
METRICS_TOKEN = "prometheus-scrape-token"
APP = "9090"
DELIVERED, FILTERED, DEAD, REFUSED = 37, 11, 5, 3


@contextlib.contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    if not Path(PROMETHEUS).exists():
        pytest.fail(
            f"{PROMETHEUS} is missing (scripts/setup-test-env installs Debian's prometheus)"
        )
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: heaprelay
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials: {METRICS_TOKEN}
    static_configs:
      - targets: ["{target}"]
"""
    )
    log = tmp_path / "prometheus.log"
    command = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}"
    with run_process(command, log, ready=f"{url}/-/ready", env=dict(os.environ), timeout=60):
        yield url


def query(url: str, expr: str) -> dict[tuple[tuple[str, str], ...], tuple[float, float]]:
    """{labels (but the name, job and instance): (sample time, value)} of an instant query."""
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert answer["status"] == "success", answer
    out = {}
    for item in answer["data"]["result"]:
        labels = {
            k: v for k, v in item["metric"].items() if k not in ("job", "instance", "__name__")
        }
        out[tuple(sorted(labels.items()))] = (float(item["value"][0]), float(item["value"][1]))
    return out


def test_prometheus_scrapes_the_relays_own_counts(tmp_path: Path) -> None:
    fake = FakeHeap(FakeHeapSettings(rate_limits=False, reject_identities=("dead-user",)))
    with serve_in_thread(fake.app) as heap_url:
        destination = Destination(
            "heap",
            DestinationSettings(app_id=APP, profile="heap", base_url=heap_url),
            event_filter=EventFilter("deny", ("Filtered Event",)),
        )
        config = Config(
            sources=(Source("web", KEY, (destination,)),),
            data_dir=tmp_path / "relay",
            metrics_token=METRICS_TOKEN,
            delivery=DeliverySettings(flush_interval=0.05, rate_limits=False, concurrency=2),
        )
        app = build_app(config)
        with serve_in_thread(app) as relay:
            batch = (
                [{"type": "track", "userId": f"u{i}", "event": "Kept"} for i in range(DELIVERED)]
                + [
                    {"type": "track", "userId": f"u{i}", "event": "Filtered Event"}
                    for i in range(FILTERED)
                ]
                + [{"type": "track", "userId": "dead-user", "event": "Dies"} for _ in range(DEAD)]
            )
            answer = httpx.post(f"{relay}/v1/batch", json={"batch": batch}, auth=(KEY, ""))
            assert answer.status_code == 200
            for _ in range(REFUSED):
                bad = httpx.post(f"{relay}/v1/track", json={"event": "x"}, auth=(KEY, ""))
                assert bad.status_code == 400

            def finished() -> bool:
                text = httpx.get(
                    f"{relay}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
                ).text
                return f'state="delivered"}} {float(DELIVERED)}' in text and (
                    f'state="dead"}} {float(DEAD)}' in text
                )

            wait_until(finished, "the load to be delivered")
            loaded_at = time.time()
            with prometheus(tmp_path, relay.removeprefix("http://")) as prom:

                def scraped_after_load() -> bool:
                    up = query(prom, "up")
                    samples = query(prom, "heaprelay_queue_jobs")
                    return (
                        bool(up)
                        and all(t > loaded_at + 1 for t, _ in samples.values())
                        and bool(samples)
                    )

                wait_until(scraped_after_load, "a scrape after the load")
                assert [v for _, v in query(prom, "up").values()] == [1.0]
                finished_jobs = {
                    dict(k)["outcome"] + ":" + dict(k).get("reason", ""): v
                    for k, (_, v) in query(prom, "heaprelay_jobs_finished_total").items()
                }
                received = query(prom, "heaprelay_events_received_total")
                requests = query(prom, "heaprelay_ingest_requests_total")
                heap_requests = query(prom, "heaprelay_heap_requests_total")
                gauges = query(prom, "heaprelay_queue_jobs")
                delay_count = query(prom, "heaprelay_delivery_delay_seconds_count")

            # The relay's own counts: its queue (and below, what the fake Heap got).
            own = asyncio.run(_stats_of(config))
    report = fake.report()
    assert finished_jobs == {
        "delivered:": own.totals["heap"]["delivered"],
        "skipped:filtered_event_name": own.totals["heap"]["skipped"],
        "dead:heap_rejected": own.totals["heap"]["dead"],
    }
    assert own.totals["heap"] == {
        "received": DELIVERED + FILTERED + DEAD,
        "delivered": DELIVERED,
        "skipped": FILTERED,
        "dead": DEAD,
    }
    assert report["accepted_events"] == DELIVERED
    assert {k: v for k, (_, v) in received.items()} == {
        (("route", "/v1/batch"), ("source", "web")): DELIVERED + FILTERED + DEAD
    }
    by_status = {dict(k)["status"]: v for k, (_, v) in requests.items()}
    assert by_status == {"200": 1.0, "400": float(REFUSED)}
    heap_by_status = {dict(k)["status"]: v for k, (_, v) in heap_requests.items()}
    assert heap_by_status == {s: float(n) for s, n in report["by_status"].items()}
    state_gauges = {dict(k)["state"]: v for k, (_, v) in gauges.items()}
    assert state_gauges == {
        s: float(own.by_destination["heap"].get(s, 0))
        for s in ("pending", "leased", "retry", "delivered", "skipped", "dead")
    }
    assert [v for _, v in delay_count.values()] == [DELIVERED]


async def _stats_of(config: Config) -> Any:
    from heaprelay.queue import open_queue, queue_url_for

    queue = await open_queue(queue_url_for(config.queue_url, config.data_dir))
    try:
        return await queue.stats()
    finally:
        await queue.close()
