"""Device mode, with the real browser SDKs in headless Chromium (issue 14).

A page on its own loopback origin loads ``@segment/analytics-next`` and/or
``@rudderstack/analytics-js`` configured with nothing but the relay's URLs
(analytics-next: ``cdnURL``; RudderStack: the data plane, ``configUrl``, ``destSDKBaseURL``).
The relay (a real ``heaprelay serve --config`` process) answers their settings requests and
serves the integration; Heap's script comes from the fake Heap (its recording heap.js, on a
third origin), which also stands in for Heap's server-side API. Nothing else is reachable.

What is checked: Heap's script is requested exactly once per page (also when the page
already has Heap's classic snippet or heap.js 5 loader, and with both SDKs on the page);
identify and track reach the recording heap.js with the cleaned traits and properties; the
relay stores every event and skips the browser SDKs' ones server-side (reason
``device_mode``) unless ``device_mode_server_side``, while a server SDK's events to the same
source are delivered; a page whose Heap script is blocked (404, CSP) still sends every event
to the relay without an uncaught error; the shared cleaning vectors pass in the browser; and
``serve --sandbox`` does all of it with no configuration.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from tests.acceptance._browser import PageServer, serve_relay

from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.testing.servers import serve_in_thread

pytestmark = pytest.mark.browser

#: The cleaning vectors, shared with tests/unit/test_device_cleaning.py (Python).
VECTORS_FILE = Path(__file__).parents[1] / "data" / "device" / "cleaning.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))

DEADLINE_S = 20.0
#: One source per situation: write key -> (app id, destination settings beyond the defaults).
SOURCES: dict[str, tuple[str, str]] = {
    "device-web": ("5550001", ""),
    "device-both": ("5550002", "device_mode_server_side = true"),
    "device-segment": ("5550003", 'profile = "segment"'),
    "device-404": ("5550004", 'heap_script_url = "FAKE/nowhere/heap-{app_id}.js"'),
    "device-csp": ("5550005", ""),
    "device-filter": ("5550006", 'event_filter = {mode = "deny", events = ["Hidden"]}'),
}
USER_TRAITS = {
    "email": "Ada@Example.com",
    "plan": "pro",
    "logins": 3,
    "verified": True,
    "address": {"city": "Zürich", "zip": None},
    "tags": ["a", "b"],
}
PROPERTIES = {"revenue": 12.5, "paid": True, "items": [{"sku": "a-1", "qty": 2}], "meta": {"n": 1}}
#: What profile heap makes of them (flattened, arrays as JSON, booleans as text, nulls gone).
HEAP_TRAITS = {
    "email": "Ada@Example.com",
    "plan": "pro",
    "logins": 3,
    "verified": "true",
    "address.city": "Zürich",
    "tags": '["a","b"]',
}
HEAP_PROPERTIES = {"revenue": 12.5, "paid": "true", "items": '[{"sku":"a-1","qty":2}]', "meta.n": 1}


# --- the servers -------------------------------------------------------------------------


@dataclass
class Relay:
    url: str
    config: Path
    db: Path
    log: Path


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeHeap, str]]:
    heap = FakeHeap(FakeHeapSettings(rate_limits=False))
    with serve_in_thread(heap.app) as url:
        yield heap, url


@pytest.fixture(scope="module")
def relay(fake: tuple[FakeHeap, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    _, fake_url = fake
    data_dir = tmp_path_factory.mktemp("device-relay")
    lines = ["[delivery]", 'flush_interval = "20ms"', "rate_limits = false"]
    for key, (app_id, extra) in SOURCES.items():
        lines += [
            "[[sources]]",
            f'name = "{key}"',
            f'write_key = "{key}"',
            "  [[sources.destinations]]",
            f'  app_id = "{app_id}"',
            f'  base_url = "{fake_url}"',
            "  device_mode = true",
            f'  heap_script_url = "{fake_url}/js/heap-{{app_id}}.js"',
        ]
        if extra:  # a second heap_script_url replaces the first (TOML: write it only once)
            if extra.startswith("heap_script_url"):
                lines.pop()
            lines.append("  " + extra.replace("FAKE", fake_url))
    config = data_dir / "heaprelay.toml"
    config.write_text("\n".join(lines) + "\n")
    with serve_relay(["--config", str(config)], data_dir) as url:
        yield Relay(url, config, data_dir / "heaprelay.db", data_dir / "serve.log")


# --- a page --------------------------------------------------------------------------------


@dataclass
class Visit:
    page: Any
    origin: str
    requests: list[Any] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def heap_scripts(self) -> list[str]:
        """Requests for Heap's script (any generation, any host) this page made."""
        return [
            r.url
            for r in self.requests
            if r.resource_type == "script"
            and (
                "/heap-" in urlsplit(r.url).path or urlsplit(r.url).path.endswith("heap_config.js")
            )
        ]

    def posted(self) -> list[dict[str, Any]]:
        """The messages the SDKs posted to the relay's ingest."""
        out: list[dict[str, Any]] = []
        for r in self.requests:
            path = urlsplit(r.url).path
            if r.method == "POST" and path.startswith("/v1/") and path != "/v1/m":
                body = json.loads(r.post_data)
                out.extend(body.get("batch", [body]))
        return out


@contextlib.contextmanager
def visit(browser: Any, pages: PageServer, relay_url: str, **query: str) -> Iterator[Visit]:
    origin = f"http://127.0.0.1:{pages.server_address[1]}"
    context = browser.new_context()
    page = context.new_page()
    v = Visit(page, origin)
    page.on("request", lambda r: v.requests.append(r))
    page.on("pageerror", lambda e: v.page_errors.append(str(e)))
    page.on("console", lambda m: v.console.append(f"{m.type}: {m.text}"))
    params = "&".join(
        f"{k}={quote(val, safe='')}" for k, val in {"relay": relay_url, **query}.items()
    )
    try:
        page.goto(f"{origin}/device.html?{params}")
        yield v
    finally:
        context.close()


def send(v: Visit, user_id: str, event: str, **extra: Any) -> dict[str, Any]:
    args = {"userId": user_id, "traits": USER_TRAITS, "event": event, "properties": PROPERTIES}
    result: dict[str, Any] = v.page.evaluate(
        """([args, ms]) => Promise.race([window.sendEvents(args), new Promise((_, reject) =>
            setTimeout(() => reject(new Error(`sendEvents: no answer in ${ms} ms`)), ms))])""",
        [{**args, **extra}, DEADLINE_S * 1000],
    )
    return result


def wait_until(v: Visit, what: str, condition: Any) -> Any:
    """Let the page run until ``condition()`` is truthy; its value."""
    deadline = time.monotonic() + DEADLINE_S
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; console: {v.console}")
        v.page.wait_for_timeout(25)
    return value


def heap_calls(heap: FakeHeap, app_id: str, user_id: str) -> list[list[Any]]:
    """What the recording heap.js received for ``app_id`` on the pages that identified
    ``user_id``: ``[method, *args]`` in the order each page made them."""
    calls = heap.browser(app_id)["calls"]
    pages_of_user = {
        c["page"] for c in calls if c["method"] == "identify" and c["args"] == [user_id]
    }
    return [[c["method"], *c["args"]] for c in calls if c["page"] in pages_of_user]


def jobs(relay: Relay, message_ids: set[str]) -> dict[str, tuple[str, str | None]]:
    """``messageId -> (state, reason)`` of the relay's jobs (its SQLite queue, read-only)."""
    db = sqlite3.connect(f"file:{relay.db}?mode=ro", uri=True)
    try:
        marks = ",".join("?" * len(message_ids))
        rows = db.execute(
            f"SELECT message_id, state, reason FROM jobs WHERE message_id IN ({marks})",
            sorted(message_ids),
        ).fetchall()
    finally:
        db.close()
    return {m: (state, reason) for m, state, reason in rows}


def wait_for_jobs(v: Visit, relay: Relay, states: set[str]) -> dict[str, tuple[str, str | None]]:
    """Every message the page posted, once the relay finished with each (state in states)."""
    ids = {m["messageId"] for m in v.posted()}
    assert ids

    def finished() -> dict[str, tuple[str, str | None]] | None:
        found = jobs(relay, ids)
        done = len(found) == len(ids) and all(s in states for s, _ in found.values())
        return found if done else None

    found: dict[str, tuple[str, str | None]] = wait_until(v, "the relay's jobs", finished)
    return found


def assert_clean_page(v: Visit) -> None:
    """No uncaught error, and no request beyond the loopback servers (the page's, the
    relay, the fake Heap): no CDN of Segment's, RudderStack's or Heap's."""
    assert v.page_errors == [], v.page_errors
    hosts = {urlsplit(r.url).hostname for r in v.requests if not r.url.startswith("data:")}
    assert hosts == {"127.0.0.1"}, hosts


# --- the tests -----------------------------------------------------------------------------

EXPECTED_HEAP = [
    ["identify", "{user}"],
    ["addUserProperties", HEAP_TRAITS],
    ["track", "{event}", HEAP_PROPERTIES],
]


def _sorted(calls: list[list[Any]]) -> list[str]:
    return sorted(json.dumps(c, sort_keys=True) for c in calls)


def _expected(user: str, event: str, times: int = 1) -> list[list[Any]]:
    one = [
        [c[0], *(a.format(user=user, event=event) if isinstance(a, str) else a for a in c[1:])]
        for c in EXPECTED_HEAP
    ]
    return one * times


@pytest.mark.parametrize(
    ("sdks", "snippet"),
    [
        pytest.param("segment", None, id="analytics-next"),
        pytest.param("rudderstack", None, id="rudderstack"),
        pytest.param("segment,rudderstack", None, id="both-sdks"),
        pytest.param("segment", "classic", id="analytics-next+classic-snippet"),
        pytest.param("rudderstack", "v5", id="rudderstack+heapjs5-loader"),
        pytest.param("segment,rudderstack", "classic", id="both-sdks+classic-snippet"),
        pytest.param("segment,rudderstack", "v5", id="both-sdks+heapjs5-loader"),
    ],
)
def test_heap_loads_once_and_gets_identify_and_track(
    browser: Any,
    pages: PageServer,
    relay: Relay,
    fake: tuple[FakeHeap, str],
    sdks: str,
    snippet: str | None,
) -> None:
    heap, fake_url = fake
    app_id = SOURCES["device-web"][0]
    user = f"user-{sdks}-{snippet}"
    event = f"Checkout {sdks} {snippet}"
    query = {"writeKey": "device-web", "sdks": sdks}
    if snippet == "classic":
        query |= {
            "snippet": "classic",
            "appId": app_id,
            "heapScript": f"{fake_url}/js/heap-{app_id}.js",
        }
    elif snippet == "v5":
        script = f"{fake_url}/config/{app_id}/heap_config.js"
        query |= {"snippet": "v5", "appId": app_id, "heapScript": script}
    n_sdks = len(sdks.split(","))
    with visit(browser, pages, relay.url, **query) as v:
        send(v, user, event)
        calls = wait_until(
            v,
            "Heap's calls",
            lambda: (c := heap_calls(heap, app_id, user)) and len(c) >= 3 * n_sdks and c,
        )
        # in any order: analytics-next may hand over events held before Heap was ready late
        assert _sorted(calls) == _sorted(_expected(user, event, n_sdks))
        # exactly once: the page's own snippet's script when it has one, else ours
        assert len(v.heap_scripts()) == 1, v.heap_scripts()
        if snippet == "v5":
            assert v.heap_scripts()[0].endswith("/heap_config.js")
        found = wait_for_jobs(v, relay, {"skipped"})
        assert_clean_page(v)
    # stored, not lost, and not sent server-side: the browser delivered them
    assert len(found) == 2 * n_sdks
    assert {reason for _, reason in found.values()} == {"device_mode"}
    assert not [e for e in heap.events() if e.get("identity") == user]
    assert user not in heap.users()


def test_device_mode_server_side_sends_both_ways(
    browser: Any, pages: PageServer, relay: Relay, fake: tuple[FakeHeap, str]
) -> None:
    heap, _ = fake
    app_id = SOURCES["device-both"][0]
    user, event = "user-both-ways", "Checkout both ways"
    with visit(browser, pages, relay.url, writeKey="device-both", sdks="segment") as v:
        send(v, user, event)
        calls = wait_until(
            v, "Heap's calls", lambda: len(c := heap_calls(heap, app_id, user)) >= 3 and c
        )
        assert _sorted(calls) == _sorted(_expected(user, event))
        found = wait_for_jobs(v, relay, {"delivered"})
        assert_clean_page(v)
    assert len(found) == 2
    server_events = [e for e in heap.events(app_id) if e.get("identity") == user]
    assert [e["event"] for e in server_events] == [event]
    assert heap.users(app_id)[user]["plan"] == "pro"


def test_segment_profile_cleans_as_segments_classic_integration(
    browser: Any, pages: PageServer, relay: Relay, fake: tuple[FakeHeap, str]
) -> None:
    """The classic test vector of reference §1.5, through the real analytics-next."""
    heap, _ = fake
    app_id = SOURCES["device-segment"][0]
    traits = {
        "email": "teemo@teemo.com",
        "property": 3,
        "foo": {"bar": {"hello": "teemo"}, "cheese": ["1", 2, "cheers"]},
        "products": [{"A": "Jello", "B": 1}, {"B": "Peanut", "C": True}],
    }
    properties = {
        "hello": "hello",
        "nested": {"n": None, "e": {}},
        "gone": None,
        "topArray": ["1", 2, True],
    }
    with visit(browser, pages, relay.url, writeKey="device-segment", sdks="segment") as v:
        send(v, "id", "event", traits=traits, properties=properties, waitReady=True)
        calls = wait_until(
            v, "Heap's calls", lambda: len(c := heap_calls(heap, app_id, "id")) >= 3 and c
        )
        assert_clean_page(v)
    assert calls == [
        ["identify", "id"],
        [
            "addUserProperties",
            {
                "id": "id",
                "_email": "teemo@teemo.com",
                "property": 3,
                "foo.bar.hello": "teemo",
                "foo.cheese": '["1",2,"cheers"]',
                "products": '[{"A":"Jello","B":1},{"B":"Peanut","C":true}]',
            },
        ],
        [
            "track",
            "event",
            {"hello": "hello", "nested.n": None, "nested.e": {}, "topArray": '["1",2,true]'},
        ],
    ]


@pytest.mark.parametrize("sdks", ["segment", "rudderstack"])
def test_event_filter_applies_in_the_browser_too(
    browser: Any, pages: PageServer, relay: Relay, fake: tuple[FakeHeap, str], sdks: str
) -> None:
    heap, _ = fake
    app_id = SOURCES["device-filter"][0]
    user = f"user-filter-{sdks}"

    def tracks() -> list[Any]:
        return [c[1] for c in heap_calls(heap, app_id, user) if c[0] == "track"]

    with visit(browser, pages, relay.url, writeKey="device-filter", sdks=sdks) as v:
        send(v, user, "Hidden", waitReady=True)  # in order (see device.html)
        send(v, user, "Shown")
        wait_until(v, "the track of Shown", tracks)
        found = wait_for_jobs(v, relay, {"skipped"})
    assert tracks() == ["Shown"]  # calls arrive in order: Hidden would be there already
    reasons = sorted(r for _, r in found.values() if r)
    assert reasons == ["device_mode"] * 3 + ["filtered_event_name"]


@pytest.mark.parametrize("blocked", ["404", "csp"])
def test_blocked_heap_script_still_sends_every_event_to_the_relay(
    browser: Any, pages: PageServer, relay: Relay, fake: tuple[FakeHeap, str], blocked: str
) -> None:
    heap, _ = fake
    key = f"device-{blocked}"
    query = {"writeKey": key, "sdks": "segment,rudderstack"}
    if blocked == "csp":  # scripts only from the page and the relay: not from Heap's host
        query["csp"] = f"script-src 'self' 'unsafe-inline' {relay.url}"
    with visit(browser, pages, relay.url, **query) as v:
        send(v, f"user-blocked-{blocked}", "Checkout blocked")
        found = wait_for_jobs(v, relay, {"skipped"})
        assert_clean_page(v)
        tried = v.heap_scripts()
        console = list(v.console)
    assert len(found) == 4  # identify and track from each SDK, all stored
    assert {r for _, r in found.values()} == {"device_mode"}
    assert len(tried) == 1  # tried once ...
    assert not heap.browser(SOURCES[key][0])["loads"]  # ... and refused: no Heap script ran
    if blocked == "csp":
        assert any("Content Security Policy" in line for line in console), console


def test_reset_reaches_heap_from_analytics_next(
    browser: Any, pages: PageServer, relay: Relay, fake: tuple[FakeHeap, str]
) -> None:
    heap, _ = fake
    app_id = SOURCES["device-web"][0]
    user = "user-reset"
    with visit(browser, pages, relay.url, writeKey="device-web", sdks="segment") as v:
        send(v, user, "Before reset", reset=True, waitReady=True)
        calls = wait_until(
            v,
            "resetIdentity",
            lambda: (c := heap_calls(heap, app_id, user)) and c[-1][0] == "resetIdentity" and c,
        )
    assert [c[0] for c in calls] == ["identify", "addUserProperties", "track", "resetIdentity"]


def test_server_sdk_events_of_a_device_mode_source_go_server_side(
    relay: Relay, fake: tuple[FakeHeap, str]
) -> None:
    from segment.analytics.client import Client

    heap, _ = fake
    app_id = SOURCES["device-web"][0]
    client = Client("device-web", host=relay.url, sync_mode=True, max_retries=0)
    client.identify(user_id="server-user", traits={"plan": "server"})
    client.track(user_id="server-user", event="Server Event", properties={"a": 1})
    client.flush()
    deadline = time.monotonic() + DEADLINE_S
    while not [e for e in heap.events(app_id) if e.get("identity") == "server-user"]:
        assert time.monotonic() < deadline, "the server SDK's track never reached Heap's API"
        time.sleep(0.05)
    assert heap.users(app_id)["server-user"]["plan"] == "server"


def test_device_mode_is_visible_in_status(relay: Relay) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "heaprelay",
            "status",
            "--json",
            "--interval",
            "0",
            "--config",
            str(relay.config),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")},
            "HEAPRELAY_DATA_DIR": str(relay.db.parent),
        },
    )
    assert json.loads(out.stdout)["by_reason"].get("device_mode", 0) > 0


def test_cleaning_vectors_in_the_browser(browser: Any, pages: PageServer, relay: Relay) -> None:
    """The shared vectors against the integration the relay serves, through both of its
    entry points (RudderStack's Heap_RS.Heap and analytics-next's classic integration), with a
    window.heap that records instead of Heap (so no script is loaded)."""
    with visit(browser, pages, relay.url, writeKey="device-web", sdks="none") as v:
        v.page.add_script_tag(url=f"{relay.url}/js-integrations/Heap.min.js")
        results = v.page.evaluate(_RUN_VECTORS, VECTORS)
        assert_clean_page(v)
        assert v.heap_scripts() == []
    failures = [
        f"{r['name']} ({entry}): got {json.dumps(r[entry], ensure_ascii=False)}"
        for r, vector in zip(results, VECTORS, strict=True)
        for entry in ("rudderstack", "segment")
        if r[entry] != vector["calls"]
    ]
    assert not failures, "\n".join(failures)


_RUN_VECTORS = """(vectors) => {
  const revive = (v) => {
    if (Array.isArray(v)) return v.map(revive);
    if (v && typeof v === 'object') {
      if ('$date' in v) return new Date(v.$date);
      if (v.$undefined === true) return undefined;
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, revive(x)]));
    }
    return v;
  };
  const recorded = [];
  const methods = ['identify', 'addUserProperties', 'track', 'resetIdentity'];
  window.heap = { appid: 'recorder' };  // "already on the page": the integration loads nothing
  for (const m of methods) window.heap[m] = (...args) => recorded.push([m, ...args]);
  const run = (call) => {
    recorded.length = 0;
    call();
    return JSON.parse(JSON.stringify(recorded));
  };
  return vectors.map((vector) => {
    const message = revive(vector.message);
    const settings = { appId: 'recorder', profile: vector.profile };
    const rs = new window.Heap_RS.Heap(settings, {}, {});
    rs.init();
    const segment = new window.heapIntegration(settings);
    segment.initialize();
    const type = message.type;
    return {
      name: vector.name,
      rudderstack: run(() => rs[type] && rs[type]({ message })),
      segment: run(() => segment.invoke(type, { obj: message, raw: message })),
    };
  });
}"""


def test_sandbox_serves_device_mode_out_of_the_box(
    browser: Any, pages: PageServer, tmp_path: Path
) -> None:
    """``heaprelay serve --sandbox``, nothing else: a page pointed at it loads the embedded
    fake Heap's recording heap.js, and what it sent is at /fake-heap/_fake/browser."""
    with (
        serve_relay(["--sandbox"], tmp_path) as url,
        visit(browser, pages, url, writeKey="sandbox", sdks="segment,rudderstack") as v,
    ):
        send(v, "sandbox-user", "Sandbox Checkout")

        def recorded() -> list[dict[str, Any]] | None:
            calls = httpx.get(f"{url}/fake-heap/_fake/browser").json()["calls"]
            return calls if len(calls) >= 6 else None

        calls = wait_until(v, "the sandbox's heap.js calls", recorded)
        assert_clean_page(v)
        assert v.heap_scripts() == [f"{url}/fake-heap/js/heap-sandbox-app.js"]
        sandbox = Relay(url, tmp_path, tmp_path / "heaprelay.db", tmp_path / "serve.log")
        found = wait_for_jobs(v, sandbox, {"skipped"})
    assert sorted(c["method"] for c in calls) == sorted(
        ["identify", "addUserProperties", "track"] * 2
    )
    assert {c["app_id"] for c in calls} == {"sandbox-app"}
    assert {r for _, r in found.values()} == {"device_mode"}
