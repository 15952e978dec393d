"""Two sources on one Heap app_id (issue 12.3): a public web write key must not be able to
suppress the backend's events at Heap by pre-sending a messageId the backend will use.

A real relay (SQLite, in-process on loopback) with two sources, real SDK clients
(segment-analytics-python), and the fake Heap on loopback, which deduplicates idempotency
keys per app_id as Heap does.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from segment.analytics.client import Client

from heaprelay.config import Config, DeliverySettings, Destination, Source
from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.server import build_app
from heaprelay.testing.servers import serve_in_thread
from heaprelay.transform import DestinationSettings

WEB_KEY, BACKEND_KEY, OTHER_KEY = "web-public-key", "backend-secret-key", "other-key"
SHARED_APP, OWN_APP = "5005", "6006"


@pytest.fixture
def heap() -> Iterator[tuple[FakeHeap, str]]:
    fake = FakeHeap(FakeHeapSettings(rate_limits=False))
    with serve_in_thread(fake.app) as url:
        yield fake, url


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def states(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [state for (state,) in conn.execute("SELECT state FROM jobs ORDER BY id")]


def test_a_source_cannot_suppress_another_sources_event_on_a_shared_app_id(
    tmp_path: Path, heap: tuple[FakeHeap, str]
) -> None:
    fake, url = heap

    def dest(name: str, app_id: str) -> Destination:
        return Destination(name, DestinationSettings(app_id=app_id, base_url=url))

    config = Config(
        sources=(
            Source("web", WEB_KEY, (dest("web-prod", SHARED_APP),)),
            Source("backend", BACKEND_KEY, (dest("backend-prod", SHARED_APP),)),
            Source("other", OTHER_KEY, (dest("other-prod", OWN_APP),)),
        ),
        data_dir=tmp_path,
        delivery=DeliverySettings(flush_interval=0.02, rate_limits=False, concurrency=2),
    )
    db = tmp_path / "heaprelay.db"
    with serve_in_thread(build_app(config)) as relay:
        web, backend, other = (
            Client(key, host=relay, upload_interval=0.02)
            for key in (WEB_KEY, BACKEND_KEY, OTHER_KEY)
        )
        # The attacker's public key goes first with the messageId the backend will use.
        web.track(user_id="mallory", event="Fake", message_id="order-42", properties={"n": 1})
        web.flush()
        wait_until(lambda: fake.report()["accepted_events"] == 1, "the web event")
        backend.track(user_id="alice", event="Order Completed", message_id="order-42")
        backend.track(user_id="alice", event="Order Completed", message_id="order-42")  # resent
        other.track(user_id="bob", event="Signed Up", message_id="order-42")
        backend.flush()
        other.flush()
        wait_until(lambda: len(states(db)) == 4, "ingest")
        wait_until(lambda: not {"pending", "leased"} & set(states(db)), "delivery")
    events = {(e["app_id"], e["identity"]): e for e in fake.events()}
    assert set(events) == {(SHARED_APP, "mallory"), (SHARED_APP, "alice"), (OWN_APP, "bob")}
    assert events[SHARED_APP, "alice"]["event"] == "Order Completed"
    assert events[SHARED_APP, "alice"]["idempotency_key"] == "backend:order-42"
    assert events[SHARED_APP, "mallory"]["idempotency_key"] == "web:order-42"
    # A destination whose app_id no other source sends to keeps the bare messageId.
    assert events[OWN_APP, "bob"]["idempotency_key"] == "order-42"
    assert fake.report()["duplicates"] == 0
    # Within one source the messageId still means one event: the resend is a duplicate.
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT source, state, reason FROM jobs WHERE source = 'backend'")
        assert rows.fetchall() == [
            ("backend", "delivered", None),
            ("backend", "skipped", "duplicate"),
        ]
