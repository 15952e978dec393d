"""The real browser SDKs, in headless Chromium, send to a running ``heaprelay serve``.

A page served from one loopback origin (the page server below: the test pages and the SDK
bundles from ``tests/browser/node_modules``) loads ``@segment/analytics-next`` or
``@rudderstack/analytics-js`` (v3, bundled build) with local settings, and makes identify and
track calls to the relay on another origin (another port): real CORS preflights, real
``text/plain`` and ``application/json`` bodies, real short routes. Nothing else is reachable:
every host name but the loopback ones is made unresolvable in the browser.

The test then finds every message in the relay's SQLite queue with its fields intact, and
checks that the SDKs saw success: every POST answered 2xx with CORS headers, no failed request,
no retry, nothing logged as an error.

Needs ``/usr/bin/chromium`` and ``npm ci`` in ``tests/browser`` (``scripts/setup-test-env``
installs both).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from tests.acceptance._browser import (
    BROWSER_DIR,
    PageServer,
    sdk_version,
    serve_relay,
)

from heaprelay.queue import _open as queue_open
from heaprelay.queue.base import Job
from heaprelay.testing.servers import free_port

pytestmark = pytest.mark.browser

WRITE_KEY = "browser-write-key"
APP_ID = "1234567890"
DEADLINE_S = 20.0


# --- the relay: a real `heaprelay serve` process -------------------------------------------


@dataclass
class Relay:
    url: str
    queue_url: str
    log: Path


@contextlib.contextmanager
def _relay(data_dir: Path) -> Iterator[Relay]:
    # Delivery (when the server runs workers) goes to a loopback port nobody listens on:
    # never to Heap, and every job stays in the queue for the test to read.
    dead_heap = f"http://127.0.0.1:{free_port()}"
    args = ["--app-id", APP_ID, "--write-key", WRITE_KEY, "--base-url", dead_heap]
    with serve_relay(args, data_dir) as url:
        yield Relay(url, queue_open.queue_url_for(None, data_dir), data_dir / "serve.log")


def _find_in_queue(queue_url: str, message_ids: set[str]) -> dict[str, list[Job]]:
    """Poll the queue until every message id has a job (or the deadline passes).

    Jobs are claimed far in the future, so that leases and retry waits of the relay's own
    workers (whose deliveries can only fail here) never hide one.
    """

    async def poll() -> dict[str, list[Job]]:
        queue = await queue_open.open_queue(queue_url)
        found: dict[str, list[Job]] = {}
        try:
            deadline = time.monotonic() + DEADLINE_S
            while not message_ids <= found.keys() and time.monotonic() < deadline:
                later = time.time() + 10 * 365 * 86400
                jobs = await queue.claim("browser-test", limit=500, lease_seconds=3600, now=later)
                for job in jobs:
                    found.setdefault(job.message_id, []).append(job)
                if not jobs:
                    await asyncio.sleep(0.05)
        finally:
            await queue.close()
        return found

    # Playwright's sync API keeps an event loop running in this thread: poll from another.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, poll()).result()


# --- the browser --------------------------------------------------------------------------


@dataclass
class Traffic:
    """What the page sent to the relay, and what came back, as Chromium saw it."""

    relay: str
    posts: list[Any] = field(default_factory=list)  # playwright Request
    responses: list[Any] = field(default_factory=list)  # playwright Response
    failed: list[str] = field(default_factory=list)
    other_hosts: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    beacon_bodies: list[str] = field(default_factory=list)

    def to_relay(self, path: str) -> list[Any]:
        return [r for r in self.responses if urlsplit(r.url).path == path]


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    with _relay(tmp_path) as running:
        yield running


def _open_page(browser: Any, pages: PageServer, relay: Relay, sdk: str, mode: str) -> Any:
    page_origin = f"http://127.0.0.1:{pages.server_address[1]}"
    assert page_origin != relay.url  # another origin: the SDK calls are cross-origin (CORS)
    context = browser.new_context()
    context.add_init_script(_BEACON_SPY)
    page = context.new_page()
    traffic = Traffic(relay.url)

    def on_request(request: Any) -> None:
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(request.url))
        if origin == relay.url:
            if request.method == "POST":
                traffic.posts.append(request)
        elif origin != page_origin and not request.url.startswith(("data:", "blob:")):
            traffic.other_hosts.append(request.url)

    def on_response(response: Any) -> None:
        if response.url.startswith(relay.url):
            traffic.responses.append(response)

    page.on("request", on_request)
    page.on("response", on_response)
    page.on("requestfailed", lambda r: traffic.failed.append(f"{r.url}: {r.failure}"))
    page.on("console", lambda m: traffic.console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: traffic.page_errors.append(str(e)))
    page.goto(f"{page_origin}/{sdk}.html?relay={relay.url}&writeKey={WRITE_KEY}&mode={mode}")
    return page, traffic


def _wait_for(page: Any, what: str, condition: Any, traffic: Traffic) -> None:
    """Let the page run (events are dispatched while waiting) until ``condition()``."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; traffic: {_describe(traffic)}")
        page.wait_for_timeout(20)


def _describe(traffic: Traffic) -> str:
    return json.dumps(
        {
            "responses": [f"{r.request.method} {r.url} -> {r.status}" for r in traffic.responses],
            "failed": traffic.failed,
            "console": traffic.console,
            "page_errors": traffic.page_errors,
            "other_hosts": traffic.other_hosts,
        },
        indent=1,
    )


# Chromium does not hand a beacon's Blob body to Playwright: the page records what it sends.
_BEACON_SPY = """
(() => {
  const send = navigator.sendBeacon.bind(navigator);
  window.__beaconBodies = [];
  navigator.sendBeacon = (url, data) => {
    window.__beaconBodies.push(data instanceof Blob ? data.text() : Promise.resolve(String(data)));
    return send(url, data);
  };
})();
"""


def _collect_beacon_bodies(page: Any, traffic: Traffic) -> None:
    traffic.beacon_bodies = page.evaluate("() => Promise.all(window.__beaconBodies)")


def _sent_messages(traffic: Traffic) -> list[dict[str, Any]]:
    """The messages the SDKs posted, as they were sent (a batch body is opened up)."""
    bodies = [r.post_data for r in traffic.posts if urlsplit(r.url).path != "/v1/m"]
    beacons = [r for r in traffic.posts if r.resource_type == "ping"]
    assert len(beacons) == len(traffic.beacon_bodies), "a beacon was sent but not recorded"
    bodies = [b for b in bodies if b is not None] + traffic.beacon_bodies
    messages: list[dict[str, Any]] = []
    for text in bodies:
        body = json.loads(text)
        messages.extend(body.get("batch", [body]))
    return messages


def _assert_sdk_saw_success(traffic: Traffic, page_origin: str) -> None:
    """Every answer 2xx with CORS headers the browser accepts; no failure, retry or error."""
    assert traffic.failed == [], _describe(traffic)
    assert traffic.page_errors == [], _describe(traffic)
    assert traffic.other_hosts == [], "the page reached beyond the two loopback servers"
    errors = [line for line in traffic.console if line.startswith("error")]
    assert errors == [], _describe(traffic)
    for response in traffic.responses:
        assert 200 <= response.status < 300, _describe(traffic)
        if response.request.resource_type != "ping":  # a beacon's answer is never read
            allowed = response.headers.get("access-control-allow-origin")
            assert allowed in (page_origin, "*"), (response.url, response.headers)
    for request in traffic.posts:
        headers = request.headers
        assert "x-retry-count" not in headers, f"Segment retried {request.url}"
        assert "rsa-retry-attempt" not in headers, f"RudderStack retried {request.url}"
    message_ids = [m["messageId"] for m in _sent_messages(traffic)]
    assert len(message_ids) == len(set(message_ids)), f"a message was sent twice: {message_ids}"


def _assert_intact(stored: dict[str, Any], sent: dict[str, Any]) -> None:
    """The stored message keeps what the SDK sent; the relay may add fields (receivedAt,
    a skew-corrected timestamp, context.ip …) and drop the write key, nothing else."""
    relay_owned = {"timestamp", "sentAt", "receivedAt", "writeKey", "originalTimestamp"}
    for key, value in sent.items():
        if key in relay_owned:
            continue
        if key == "context":
            for context_key, context_value in value.items():
                assert stored["context"].get(context_key) == context_value, (key, context_key)
        else:
            assert stored.get(key) == value, (key, stored.get(key), value)
    client_time = sent.get("timestamp") or sent.get("originalTimestamp")
    assert isinstance(client_time, str)
    stored_time = datetime.fromisoformat(stored["timestamp"].replace("Z", "+00:00"))
    client = datetime.fromisoformat(client_time.replace("Z", "+00:00"))
    # Same machine clock: skew correction may move it by the request's latency, no more.
    assert abs((stored_time - client).total_seconds()) < 60, (stored["timestamp"], client_time)
    assert "receivedAt" in stored


# --- the tests ----------------------------------------------------------------------------

SDKS = {
    # test page: (npm package, its context.library.name)
    "segment": ("@segment/analytics-next", "analytics.js"),
    "rudderstack": ("@rudderstack/analytics-js", "RudderLabs JavaScript SDK"),
}
MODES = [
    pytest.param("segment", "single", ["/v1/i", "/v1/t"], id="segment-per-event"),
    pytest.param("segment", "batching", ["/v1/b"], id="segment-batching"),
    pytest.param("rudderstack", "single", ["/v1/identify", "/v1/track"], id="rudderstack-xhr"),
    pytest.param("rudderstack", "batch", ["/v1/batch"], id="rudderstack-xhr-batch"),
    pytest.param("rudderstack", "beacon", ["/beacon/v1/batch"], id="rudderstack-beacon"),
]


@pytest.mark.parametrize(("sdk", "mode", "paths"), MODES)
def test_browser_sdk_identify_and_track_reach_the_queue(
    browser: Any, pages: PageServer, relay: Relay, sdk: str, mode: str, paths: list[str]
) -> None:
    package, library_name = SDKS[sdk]
    page_origin = f"http://127.0.0.1:{pages.server_address[1]}"
    user_id = f"browser-user-{sdk}-{mode}"
    traits = {
        "email": "Ada@Example.com",
        "plan": "pro",
        "logins": 3,
        "address": {"city": "Zürich", "zip": "8000"},
    }
    event = f"Browser Checkout {sdk} {mode}"
    properties = {"revenue": 12.5, "currency": "EUR", "items": [{"sku": "a-1", "qty": 2}]}

    page, traffic = _open_page(browser, pages, relay, sdk, mode)
    try:
        result = page.evaluate(
            """([args, ms]) => Promise.race([window.sendEvents(args), new Promise((_, reject) =>
                setTimeout(() => reject(new Error(`sendEvents: no answer in ${ms} ms`)), ms))])""",
            [
                {"userId": user_id, "traits": traits, "event": event, "properties": properties},
                DEADLINE_S * 1000,
            ],
        )

        def answered() -> bool:
            return all(traffic.to_relay(path) for path in [*paths]) and (
                sdk != "segment" or bool(traffic.to_relay("/v1/m"))
            )

        _wait_for(page, f"answers to {paths}", answered, traffic)
        assert result["problems"] == [], result
        if sdk == "rudderstack":  # its queues empty out only on success (or a beacon sent)
            page.wait_for_function("() => window.sdkPending() === 0", timeout=DEADLINE_S * 1000)
        _collect_beacon_bodies(page, traffic)
        _assert_sdk_saw_success(traffic, page_origin)
        answered_paths = [urlsplit(r.url).path for r in traffic.responses]
        # Segment's metrics go out every flushTimer (300 ms here): once, or more on a slow
        # machine where the calls' counters fall into different flushes.
        assert sorted(p for p in answered_paths if p != "/v1/m") == sorted(paths), _describe(
            traffic
        )
        assert ("/v1/m" in answered_paths) == (sdk == "segment"), _describe(traffic)
    finally:
        page.context.close()

    sent = {m["type"]: m for m in _sent_messages(traffic)}
    assert sorted(sent) == ["identify", "track"], _describe(traffic)
    if mode == "beacon":
        assert all("writeKey=" + WRITE_KEY in r.url for r in traffic.posts)
    # Nothing above was accepted by assumption: every message must be in the relay's queue.
    found = _find_in_queue(relay.queue_url, {m["messageId"] for m in sent.values()})
    for kind, message in sent.items():
        jobs = found.get(message["messageId"])
        assert jobs, (
            f"{kind} {message['messageId']} not in the queue; log:\n{relay.log.read_text()}"
        )
        assert len(jobs) == 1, f"{kind} stored {len(jobs)} times"
        stored = json.loads(jobs[0].payload)
        _assert_intact(stored, message)
        assert stored["type"] == kind
        assert stored["userId"] == user_id
        assert stored["anonymousId"] == result["anonymousId"]
        assert stored["context"]["library"]["name"] == library_name
        version = sdk_version(package)
        assert stored["context"]["library"]["version"] in (version, f"next-{version}")
        if kind == "identify":
            # Segment: root traits; RudderStack: only context.traits (the transform reads both).
            assert stored.get("traits", stored["context"].get("traits")) == traits
        else:
            assert stored["event"] == event
            assert stored["properties"] == properties


def test_prerequisites_are_pinned() -> None:
    """The SDK versions in tests/browser come from the lock file (npm ci), not ranges."""
    manifest = json.loads((BROWSER_DIR / "package.json").read_text())
    for package, version in manifest["dependencies"].items():
        assert version[0].isdigit(), f"{package} must be pinned, got {version}"
    lock = json.loads((BROWSER_DIR / "package-lock.json").read_text())
    for package, version in manifest["dependencies"].items():
        assert lock["packages"][f"node_modules/{package}"]["version"] == version
