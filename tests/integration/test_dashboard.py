"""The dashboard (/ui) and /metrics of a relay on a loopback port, with a real SQLite queue,
delivering to a fake Heap on another port: access rules, login cookie, CSRF, the overview,
search, job pages, the live event stream and dead-letter replay/purge (HTTP only; the same
pages in Chromium are in tests/acceptance/test_dashboard_browser.py)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from heaprelay.config import Config, DeliverySettings, Destination, Source
from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.server import build_app
from heaprelay.testing.servers import serve_in_thread, wait_until
from heaprelay.transform import DestinationSettings

KEY = "dash-write-key"
TOKEN = "admin-token-for-tests"
METRICS_TOKEN = "metrics-token-for-tests"
APP = "4242"


@pytest.fixture
def heap() -> Iterator[tuple[FakeHeap, str]]:
    fake = FakeHeap(FakeHeapSettings(rate_limits=False, reject_identities=("bad-user",)))
    with serve_in_thread(fake.app) as url:
        yield fake, url


def config_for(tmp_path: Path, heap_url: str, **server: Any) -> Config:
    settings = DestinationSettings(app_id=APP, profile="heap", base_url=heap_url)
    source = Source("web", KEY, (Destination("heap", settings),))
    delivery = DeliverySettings(flush_interval=0.05, retry_base=0.05, retry_cap=0.2, concurrency=2)
    return Config(sources=(source,), data_dir=tmp_path, delivery=delivery, **server)


@pytest.fixture
def relay(tmp_path: Path, heap: tuple[FakeHeap, str]) -> Iterator[str]:
    config = config_for(tmp_path, heap[1], admin_token=TOKEN, metrics_token=METRICS_TOKEN)
    with serve_in_thread(build_app(config)) as url:
        yield url


def send(url: str, *messages: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/batch", json={"batch": list(messages)}, auth=(KEY, ""))


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def states(tmp_path: Path) -> dict[str, int]:
    with sqlite3.connect(tmp_path / "heaprelay.db") as conn:
        return dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" (?:value|content)="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


def test_without_the_token_nothing_is_shown(relay: str) -> None:
    send(relay, {"type": "track", "userId": "secret-user", "event": "Secret Event"})
    paths = ["/ui/", "/ui/debugger?field=userId&q=secret-user", "/ui/dead", "/ui/jobs/1"]
    for path in paths:
        page = httpx.get(relay + path)
        assert page.status_code == 303, path
        assert page.headers["location"].startswith("/ui/login?next=")
        for headers in ({}, bearer("wrong-token-123456")):
            api = httpx.get(relay + path, headers=headers, follow_redirects=False)
            assert api.status_code in (303, 401)
            assert "secret-user" not in api.text
            assert "Secret Event" not in api.text
    for path in ["/ui/api/stream", "/ui/api/overview", "/ui/api/jobs/1"]:
        answer = httpx.get(relay + path)
        assert answer.status_code == 401
        assert answer.json()["code"] == "unauthorized"
        assert httpx.get(relay + path, headers=bearer("nope-nope-nope")).status_code == 401
    # Actions too: without a session, and with a wrong bearer token.
    for headers in ({}, bearer("wrong-token-123456")):
        action = httpx.post(
            f"{relay}/ui/dead/action",
            data={"action": "purge", "scope": "all", "destination": "heap", "confirm": "yes"},
            headers=headers,
        )
        assert action.status_code == 401
    assert httpx.get(relay + "/ui/", headers=bearer()).status_code == 200


def test_login_sets_a_signed_httponly_samesite_cookie(relay: str) -> None:
    with httpx.Client(base_url=relay) as browser:
        form = browser.get("/ui/login?next=/ui/dead")
        assert form.status_code == 200
        assert 'name="token"' in form.text
        wrong = browser.post("/ui/login", data={"token": "not-the-token", "next": "/ui/dead"})
        assert wrong.status_code == 401
        assert "Wrong token" in wrong.text
        assert "set-cookie" not in wrong.headers
        ok = browser.post("/ui/login", data={"token": TOKEN, "next": "/ui/dead"})
        assert ok.status_code == 303
        assert ok.headers["location"] == "/ui/dead"
        cookie = ok.headers["set-cookie"]
        assert "heaprelay_session=" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert "Path=/ui" in cookie
        assert browser.get("/ui/dead").status_code == 200
        # A tampered cookie is no session.
        value = browser.cookies["heaprelay_session"]
        browser.cookies.clear()
        browser.cookies.set("heaprelay_session", value[:-2] + "xx", path="/ui")
        assert browser.get("/ui/dead").status_code == 303


def login(client: httpx.Client) -> None:
    answer = client.post("/ui/login", data={"token": TOKEN})
    assert answer.status_code == 303


def test_actions_need_the_csrf_token(relay: str, tmp_path: Path) -> None:
    send(relay, {"type": "track", "userId": "bad-user", "event": "Refused"})
    wait_until(lambda: states(tmp_path).get("dead") == 1, "a dead letter")
    with httpx.Client(base_url=relay) as browser:
        login(browser)
        form = {"action": "purge", "scope": "all", "destination": "heap", "confirm": "yes"}
        assert browser.post("/ui/dead/action", data=form).status_code == 403
        token = csrf_of(browser.get("/ui/dead").text)
        foreign = browser.post(
            "/ui/dead/action",
            data=form | {"csrf": token},
            headers={"Origin": "http://evil.example"},
        )
        assert foreign.status_code == 403
        assert states(tmp_path).get("dead") == 1
        done = browser.post("/ui/dead/action", data=form | {"csrf": token})
        assert done.status_code == 303
        assert "purged+1" in done.headers["location"]
    assert states(tmp_path).get("dead", 0) == 0


def test_dead_letters_replay_after_a_confirmation(
    relay: str, tmp_path: Path, heap: tuple[FakeHeap, str]
) -> None:
    fake, _ = heap
    send(
        relay,
        {"type": "track", "userId": "bad-user", "event": "One"},
        {"type": "track", "userId": "bad-user", "event": "Two"},
        {"type": "track", "userId": "good-user", "event": "Fine"},
    )
    wait_until(lambda: states(tmp_path).get("dead") == 2, "two dead letters")
    with httpx.Client(base_url=relay) as browser:
        login(browser)
        page = browser.get("/ui/dead?destination=heap")
        assert "heap_rejected" in page.text
        assert "identity refused (injected)" in page.text  # Heap's answer
        ids = re.findall(r'name="ids" value="(\d+)"', page.text)
        assert len(ids) == 2
        token = csrf_of(page.text)
        fake.update({"reject_identities": []})
        # The row's own button asks first; nothing happens before the confirmation.
        ask = browser.post(
            "/ui/dead/action", data={"csrf": token, "row": f"replay:{ids[0]}", "scope": "selected"}
        )
        assert ask.status_code == 200
        assert "Confirm" in ask.text
        assert f"1 dead letter(s): {ids[0]}" in ask.text
        assert states(tmp_path).get("dead") == 2
        confirm = dict(re.findall(r'name="(\w+)" value="([^"]*)"', ask.text))
        assert confirm["confirm"] == "yes"
        done = browser.post("/ui/dead/action", data=confirm)
        assert done.status_code == 303
        wait_until(lambda: states(tmp_path).get("dead") == 1, "one replayed")
        wait_until(lambda: states(tmp_path).get("delivered") == 2, "the replayed one delivered")
        # All of a destination, confirmed.
        ask = browser.post(
            "/ui/dead/action",
            data={"csrf": token, "action": "replay", "scope": "all", "destination": "heap"},
        )
        assert "all 1 dead letter(s) of" in ask.text
        confirm = dict(re.findall(r'name="(\w+)" value="([^"]*)"', ask.text))
        assert browser.post("/ui/dead/action", data=confirm).status_code == 303
        wait_until(lambda: states(tmp_path).get("delivered") == 3, "all delivered")
    assert sorted(e["event"] for e in fake.events(APP)) == ["Fine", "One", "Two"]


def test_overview_search_and_job_pages(relay: str, tmp_path: Path) -> None:
    send(
        relay,
        {"type": "identify", "userId": "ada", "traits": {"plan": "pro"}},
        {"type": "track", "userId": "ada", "event": "Signed Up", "messageId": "mid-ada-1"},
        {"type": "page", "userId": "ada", "name": "Home"},
        {"type": "track", "userId": "bad-user", "event": "Refused"},
        {"type": "track", "anonymousId": "anon-7", "event": "Browsed"},
    )
    wait_until(
        lambda: sum(states(tmp_path).get(s, 0) for s in ("delivered", "dead", "skipped")) == 5,
        "all finished",
    )
    with httpx.Client(base_url=relay, headers=bearer()) as client:
        overview = client.get("/ui/")
        assert overview.status_code == 200
        for text in ("heap", "unsupported_type", "heap_rejected", "identity refused (injected)"):
            assert text in overview.text
        assert overview.headers["content-security-policy"].startswith("default-src 'self'")

        def found(field: str, value: str) -> list[str]:
            page = client.get("/ui/debugger", params={"field": field, "q": value})
            return re.findall(r'href="/ui/jobs/(\d+)"', page.text)

        assert len(wait_until(lambda: found("userId", "ada"), "the search index")) == 3
        assert len(found("event", "Signed Up")) == 1
        assert len(found("messageId", "mid-ada-1")) == 1
        assert len(found("anonymousId", "anon-7")) == 1
        assert found("userId", "nobody") == []
        [job_id] = found("messageId", "mid-ada-1")
        job = client.get(f"/ui/jobs/{job_id}")
        assert "delivered" in job.text
        assert f"POST {client.base_url.scheme}://" in job.text or "/api/track" in job.text
        assert "idempotency_key" in job.text
        assert "mid-ada-1" in job.text
        [page_job] = [
            j
            for j in found("userId", "ada")
            if "unsupported_type" in client.get(f"/ui/jobs/{j}").text
        ]
        assert "Not sent" in client.get(f"/ui/jobs/{page_job}").text
        detail = client.get(f"/ui/api/jobs/{job_id}").json()
        assert (detail["state"], detail["event"], detail["userId"]) == (
            "delivered",
            "Signed Up",
            "ada",
        )
        assert client.get("/ui/jobs/999999").status_code == 404


def test_the_live_stream_shows_each_event_its_heap_request_and_its_state(relay: str) -> None:
    events: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=relay, headers=bearer(), timeout=30) as client,
        client.stream("GET", "/ui/api/stream") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        send(
            relay, {"type": "track", "userId": "live-user", "event": "Live", "messageId": "live-1"}
        )
        refused = httpx.post(f"{relay}/v1/track", json={"event": "no identity"}, auth=(KEY, ""))
        assert refused.status_code == 400
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(orjson.loads(line[6:]))
            kinds = {(e["kind"], e.get("state")) for e in events}
            if {
                ("received", None),
                ("requests", None),
                ("state", "delivered"),
                ("refused", None),
            } <= kinds:
                break
    mine = [e for e in events if e.get("messageId") == "live-1"]
    received = next(e for e in mine if e["kind"] == "received")
    assert (received["userId"], received["event"], received["destinations"]) == (
        "live-user",
        "Live",
        ["heap"],
    )
    requests = next(e for e in mine if e["kind"] == "requests")
    [request] = requests["requests"]
    assert request["url"].endswith("/api/track")
    assert request["body"]["event"] == "Live"
    assert request["body"]["idempotency_key"] == "live-1"
    state = next(e for e in mine if e["kind"] == "state")
    assert state["state"] == "delivered"
    assert [e["kind"] for e in mine] == ["received", "requests", "state"]
    refusal = next(e for e in events if e["kind"] == "refused")
    assert (refusal["status"], refusal["code"]) == (400, "missing_identity")
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)


def test_metrics_need_their_token_when_one_is_set(relay: str, tmp_path: Path) -> None:
    assert httpx.get(f"{relay}/metrics").status_code == 401
    assert httpx.get(f"{relay}/metrics", headers=bearer("wrong-wrong-wrong")).status_code == 401
    send(relay, {"type": "track", "userId": "m", "event": "Counted"})
    wait_until(lambda: states(tmp_path).get("delivered") == 1, "delivery")
    text = httpx.get(f"{relay}/metrics", headers=bearer(METRICS_TOKEN)).text
    assert 'heaprelay_events_received_total{route="/v1/batch",source="web"} 1.0' in text
    assert 'heaprelay_queue_jobs{destination="heap",state="delivered"} 1.0' in text


def test_without_a_token_off_loopback_the_dashboard_is_refused(
    tmp_path: Path, heap: tuple[FakeHeap, str]
) -> None:
    # Listening on every interface (the test still connects over loopback) with no token.
    config = config_for(tmp_path, heap[1], host="0.0.0.0")
    with serve_in_thread(build_app(config), host="127.0.0.1") as url:
        send(url, {"type": "track", "userId": "hidden", "event": "Hidden"})
        for path in ["/ui/", "/ui/login", "/ui/debugger?q=hidden", "/ui/api/stream"]:
            answer = httpx.get(url + path)
            assert answer.status_code == 401, path
            assert answer.json()["code"] == "dashboard_disabled"
            assert "Hidden" not in answer.text
        assert httpx.get(f"{url}/metrics").status_code == 200  # open by default


def test_without_a_token_on_loopback_the_dashboard_is_open(
    tmp_path: Path, heap: tuple[FakeHeap, str]
) -> None:
    config = config_for(tmp_path, heap[1])
    with serve_in_thread(build_app(config)) as url, httpx.Client(base_url=url) as browser:
        page = browser.get("/ui/")
        assert page.status_code == 200
        assert "open (loopback, no token)" in page.text
        # Still no action without the form's CSRF token.
        form = {"action": "purge", "scope": "all", "destination": "heap", "confirm": "yes"}
        assert browser.post("/ui/dead/action", data=form).status_code == 403
        token = csrf_of(page.text)
        assert browser.post("/ui/dead/action", data=form | {"csrf": token}).status_code == 303
