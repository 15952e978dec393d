"""A backfill through the four server SDKs, unchanged: Heap receives the caller's time.

Each SDK sends one track call with an explicit timestamp a month in the past (what a backfill
or an import does) to a relay that delivers to the fake Heap (profile ``heap``):

- segment-analytics-python and @segment/analytics-node send only ``timestamp`` (the
  caller's) and a batch ``sentAt``: Segment's rule, ``receivedAt - (sentAt - timestamp)``,
  which is the caller's time moved by the client's clock skew (here: the few milliseconds
  between the SDK stamping ``sentAt`` and the relay receiving the request);
- rudder-sdk-python sends ``timestamp`` and ``channel: "server"``, @rudderstack/rudder-sdk-node
  sends the caller's ``timestamp`` next to ``originalTimestamp`` and ``sentAt`` (both the
  call's time): RudderStack's rule, the caller's timestamp exactly.

Whatever the client sent stays in the stored message (``originalTimestamp``).
The Node SDKs are pinned in ``tests/node/package-lock.json`` (``npm ci`` by
``scripts/setup-test-env``).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from _python_sdks import CLIENT_SETUP

from heaprelay.config import Config, DeliverySettings, Destination, Source
from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.server import build_app
from heaprelay.testing.servers import serve_in_thread
from heaprelay.transform import DestinationSettings

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
KEY = "backfill-key"
APP = "4242"
USER = "backfill-user"

PY_DRIVER = (
    r"""
import datetime, json, sys
sdk, host, key, message_id, when = sys.argv[1:6]
"""
    + CLIENT_SETUP
    + r"""
client.track(user_id="backfill-user", event="Order Imported", properties={"price": 67.0},
             timestamp=datetime.datetime.fromisoformat(when.replace("Z", "+00:00")),
             message_id=message_id)
client.flush()
client.shutdown() if hasattr(client, "shutdown") else client.join()
print(json.dumps({"errors": errors}))
"""
)


def _node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    for package in ("@segment/analytics-node", "@rudderstack/rudder-sdk-node"):
        if not (NODE_DIR / "node_modules" / package).is_dir():
            return f"{package} not installed in tests/node (run scripts/setup-test-env)"
    return None


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FakeHeap, Path]]:
    heap = FakeHeap(FakeHeapSettings(rate_limits=False))
    data_dir = tmp_path_factory.mktemp("backfill")
    with serve_in_thread(heap.app) as heap_url:
        settings = DestinationSettings(app_id=APP, base_url=heap_url)
        source = Source("sdks", KEY, (Destination("heap", settings),))
        delivery = DeliverySettings(flush_interval=0.05, retry_base=0.1, retry_cap=0.5)
        config = Config(sources=(source,), data_dir=data_dir, delivery=delivery)
        with serve_in_thread(build_app(config)) as url:
            yield url, heap, data_dir / "heaprelay.db"


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _send(sdk: str, url: str, message_id: str, when: str) -> None:
    if sdk.endswith("-node"):
        missing = _node_missing()
        if missing:
            if os.environ.get("CI"):
                pytest.fail(missing)
            pytest.skip(missing)
        args = ["node", str(NODE_DIR / "send_backfill.js"), sdk.removesuffix("-node")]
        cwd: Path | None = NODE_DIR
    else:
        args = [sys.executable, "-c", PY_DRIVER, sdk.removesuffix("-python")]
        cwd = None
    done = subprocess.run(
        [*args, url, KEY, message_id, when],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["errors"] == []


def _stored(db: Path, message_id: str) -> dict[str, Any]:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT payload FROM jobs WHERE message_id = ?", (message_id,)
        ).fetchone()
    assert row is not None, f"{message_id} is not in the queue"
    stored: dict[str, Any] = orjson.loads(row[0])
    return stored


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("sdk", ["segment-python", "segment-node", "rudder-python", "rudder-node"])
def test_a_backfilled_event_reaches_heap_with_the_callers_time(
    relay: tuple[str, FakeHeap, Path], sdk: str
) -> None:
    url, heap, db = relay
    caller = (datetime.now(UTC) - timedelta(days=30)).replace(microsecond=250_000)
    when = caller.strftime("%Y-%m-%dT%H:%M:%S.250Z")
    message_id = f"backfill-{sdk}"
    _send(sdk, url, message_id, when)

    def arrived() -> list[dict[str, Any]]:
        return [e for e in heap.events(APP) if e.get("idempotency_key") == message_id]

    wait_until(lambda: bool(arrived()), f"{sdk}'s event at the fake Heap")
    (event,) = arrived()
    assert (event["identity"], event["event"]) == (USER, "Order Imported")
    stored = _stored(db, message_id)
    # What the client sent is kept: its own timestamp, or (rudder-sdk-node) its call time.
    assert _seconds(stored["originalTimestamp"]) == (
        pytest.approx(time.time(), abs=600) if sdk == "rudder-node" else caller.timestamp()
    )
    assert event["timestamp"] == stored["timestamp"]
    if sdk.startswith("rudder"):
        assert event["timestamp"] == when  # RudderStack keeps the caller's timestamp as is
    else:
        # Segment: the caller's time corrected by the client's skew (sentAt vs receivedAt).
        skew = _seconds(stored["receivedAt"]) - _seconds(stored["sentAt"])
        assert _seconds(event["timestamp"]) == pytest.approx(caller.timestamp() + skew, abs=0.002)
        assert abs(skew) < 60


def test_the_node_sdks_are_pinned() -> None:
    """The SDK versions in tests/node come from the lock file (npm ci), not ranges."""
    manifest = json.loads((NODE_DIR / "package.json").read_text())
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    assert set(manifest["dependencies"]) == {
        "@segment/analytics-node",
        "@rudderstack/rudder-sdk-node",
    }
    for package, version in manifest["dependencies"].items():
        assert version[0].isdigit(), f"{package} must be pinned, got {version}"
        assert lock["packages"][f"node_modules/{package}"]["version"] == version
