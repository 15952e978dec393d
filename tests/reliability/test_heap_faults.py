"""Heap misbehaving while real SDK clients send through a real relay (SQLite):

- a 30-minute outage, then a storm of 429s with ``Retry-After``, then answers slower than the
  relay's client timeout (Heap stores the event, the relay sees a timeout and sends it
  again), all on a clock running 100 times faster than real time (relay and fake Heap share
  it; ``heaprelay.clock.ScaledClock``);
- Heap refusing a share of the items while its rate limits are on (the livelock of issue 12).

At the end every acknowledged event is at Heap exactly once, nothing is dead that Heap did
not refuse, and nothing is left leased.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from heaprelay.clock import ScaledClock
from heaprelay.config import Config, DeliverySettings, Destination, Source
from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.server import build_app
from heaprelay.testing.servers import serve_in_thread
from heaprelay.transform import DestinationSettings

from .conftest import APP, KEY, Figures, Senders, heap_figures, wait_until

pytestmark = pytest.mark.slow

SCALE = 100.0


def config(tmp: Path, heap_url: str, delivery: DeliverySettings) -> Config:
    dest = Destination("heap", DestinationSettings(app_id=APP, base_url=heap_url))
    return Config(sources=(Source("sdk", KEY, (dest,)),), data_dir=tmp, delivery=delivery)


def states(db: Path) -> tuple[Counter[str], int]:
    with sqlite3.connect(db, timeout=30) as conn:
        rows = conn.execute("SELECT state, count(*), max(leases) FROM jobs GROUP BY state")
        found = rows.fetchall()
    return Counter({s: n for s, n, _ in found}), max((m for _, _, m in found), default=0)


def settled(db: Path) -> Callable[[], bool]:
    def check() -> bool:
        counts, _ = states(db)
        return bool(counts) and counts["pending"] + counts["leased"] + counts["retry"] == 0

    return check


def test_outage_then_429_storm_then_answers_slower_than_the_timeout(
    tmp_path: Path, figures: Callable[[Figures], None]
) -> None:
    clock = ScaledClock(SCALE)
    minute = 60.0
    fake = FakeHeap(FakeHeapSettings(rate_limits=False, seed=4), clock=clock)
    delivery = DeliverySettings(
        rate_limits=False,
        flush_interval=0.02 * SCALE,
        request_timeout=1.0,  # real seconds (the HTTP client's own timer)
        lease_seconds=600.0,
        concurrency=4,
    )
    db = tmp_path / "heaprelay.db"
    phases: list[Senders] = []
    with serve_in_thread(fake.app) as heap_url:
        app = build_app(config(tmp_path, heap_url, delivery), clock=clock)
        with serve_in_thread(app) as relay:

            def send() -> None:  # some events acknowledged in each phase
                senders = Senders(relay, per_client=200).start()
                senders.finish(stop=False)
                phases.append(senders)

            # 30 minutes down; behind it (answered once the outage is over) a 5-minute storm
            # of 429s: 90% of requests refused with Retry-After 60 s.
            storm = {"error_rate": 0.9, "error_status": 429, "error_retry_after": 60.0}
            fake.update({"outage_seconds": 30 * minute, **storm})
            storm_starts = clock.monotonic() + 30 * minute
            send()
            wait_until(lambda: clock.monotonic() >= storm_starts, 60, "the end of the outage")
            send()
            wait_until(
                lambda: clock.monotonic() >= storm_starts + 5 * minute, 30, "the end of the storm"
            )
            # 5 minutes of answers taking 3 real seconds: the relay gives up after 1 s, Heap
            # stores the events all the same, and the relay sends them again later.
            fake.update({"error_rate": 0.0, "latency": 3.0 * SCALE})
            slow_ends = clock.monotonic() + 5 * minute
            send()
            wait_until(lambda: clock.monotonic() >= slow_ends, 30, "the end of the slow answers")
            fake.update({"latency": 0.0})
            wait_until(settled(db), 120, "delivery after the faults")
            counts, _ = states(db)
    acked = set().union(*(s.acknowledged for s in phases))
    got = heap_figures(fake, acked)
    report = fake.report()
    by_status = report["by_status"]
    figures(
        Figures(
            "Heap down 30 min, 429 storm, slow answers",
            rounds=3,
            sent=sum(len(s.enqueued) for s in phases),
            acknowledged=len(acked),
            delivered=got["delivered"],
            duplicated=got["duplicated"],
            lost=got["lost"],
            note=f"503: {by_status.get('503', 0)}, 429: {by_status.get('429', 0)}, re-sends "
            f"absorbed by key: {report['duplicates']}; queue {dict(counts)}",
        )
    )
    assert by_status.get("503", 0) > 0
    assert by_status.get("429", 0) > 0
    assert report["duplicates"] > 0  # the slow answers were stored, then sent again
    assert len(acked) == 3 * 400
    assert got["lost"] == 0
    assert got["duplicated"] == 0
    assert counts == {"delivered": 1200}


def test_refused_items_under_rate_limits_converge(
    tmp_path: Path, figures: Callable[[Figures], None]
) -> None:
    """The livelock case with real SDK clients: Heap refuses 2 identities out of 100 while
    its rate limits are on (both ends, time scale 20). Every other event is delivered once,
    the refused ones are dead-lettered with Heap's answer, no job is claimed twice."""
    scale = 20.0
    fake = FakeHeap(
        FakeHeapSettings(
            rate_limits=True,
            time_scale=scale,
            reject_identities=("segment-user-3", "rudder-user-7"),
        )
    )
    delivery = DeliverySettings(
        rate_limits=True, time_scale=scale, lease_seconds=120.0 / scale, flush_interval=0.05
    )
    db = tmp_path / "heaprelay.db"
    with serve_in_thread(fake.app) as heap_url:
        app = build_app(config(tmp_path, heap_url, delivery))
        with serve_in_thread(app) as relay:
            senders = Senders(relay, per_client=2500).start()
            senders.finish(stop=False)
            wait_until(settled(db), 120, "delivery to converge")
            counts, max_leases = states(db)
            with sqlite3.connect(db) as conn:
                dead = conn.execute(
                    "SELECT message_id, reason, answer FROM jobs WHERE state = 'dead'"
                ).fetchall()
    acked = senders.acknowledged
    refused = {m for m in acked if senders.enqueued[m]["user"] in fake.settings.reject_identities}
    got = heap_figures(fake, acked - refused)
    report = fake.report()
    figures(
        Figures(
            "Heap refuses 2% of items, rate limits on",
            rounds=1,
            sent=len(senders.enqueued),
            acknowledged=len(acked),
            delivered=got["delivered"],
            duplicated=got["duplicated"],
            lost=got["lost"],
            note=f"{len(dead)} dead (refused: {len(refused)}), max leases {max_leases}, "
            f"400: {report['rejected']}, 429: {report['rate_limited']}",
        )
    )
    assert len(acked) == 5000
    assert got["lost"] == 0
    assert got["duplicated"] == 0
    assert {m for m, _, _ in dead} == refused
    assert {r for _, r, _ in dead} == {"heap_rejected"}
    assert all(a.startswith("400 Bad Request") for _, _, a in dead)
    assert counts == {"delivered": len(acked) - len(refused), "dead": len(refused)}
    assert max_leases == 1
    assert report["rate_limited"] == 0
