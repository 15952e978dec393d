"""The fake Heap over real HTTP: Heap's documented rules, limits, dedup and failure injection."""

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.testing.servers import serve_in_thread


@pytest.fixture
def fake() -> FakeHeap:
    return FakeHeap(FakeHeapSettings(rate_limits=False, seed=1))


@pytest.fixture
def http(fake: FakeHeap) -> Iterator[httpx.Client]:
    with serve_in_thread(fake.app) as url, httpx.Client(base_url=url) as client:
        yield client


def ev(**kw: Any) -> dict[str, Any]:
    return {"identity": "alice", "event": "Signed Up", **kw}


def test_single_and_bulk_track_are_recorded(http: httpx.Client, fake: FakeHeap) -> None:
    r = http.post("/api/track", json={"app_id": "11", **ev(properties={"plan": "pro", "n": 3})})
    assert r.status_code == 200
    r = http.post("/eu/api/track", json={"app_id": "11", "events": [ev(), ev(user_id=None)]})
    assert r.status_code == 200
    events = http.get("/_fake/events").json()
    assert [(e["region"], e["event"]) for e in events] == [
        ("us", "Signed Up"),
        ("eu", "Signed Up"),
        ("eu", "Signed Up"),
    ]
    assert events[0]["properties"] == {"plan": "pro", "n": 3}
    assert http.get("/_fake/report").json()["accepted_events"] == 3


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"identity": "a", "event": "x"}, "app_id"),
        ({"app_id": "1", "identity": "a"}, "event: required"),
        ({"app_id": "1", "identity": "a", "event": "x" * 1025}, "longer than 1024"),
        ({"app_id": "1", "event": "x"}, "exactly one"),
        ({"app_id": "1", "event": "x", "identity": "a", "user_id": "1"}, "exactly one"),
        ({"app_id": "1", "event": "x", "identity": "a" * 256}, "255"),
        ({"app_id": "1", "event": "x", "user_id": "abc"}, "user_id"),
        ({"app_id": "1", "event": "x", "user_id": str(2**53)}, "user_id"),
        ({"app_id": "1", "event": "x", "identity": "a", "properties": {"b": True}}, "bool"),
        ({"app_id": "1", "event": "x", "identity": "a", "properties": {"b": {"c": 1}}}, "dict"),
        (
            {"app_id": "1", "event": "x", "identity": "a", "properties": {"b": "v" * 1024}},
            "fewer than 1024",
        ),
        ({"app_id": "1", "event": "x", "identity": "a", "timestamp": "yesterday"}, "ISO-8601"),
        ({"app_id": "1", "events": []}, "non-empty array"),
        ({"app_id": "1", "events": [ev()] * 1001}, "at most 1000"),
        ({"app_id": "1", "events": [ev(), ev(identity=None)]}, "events[1].identity"),
    ],
)
def test_track_rules_answer_400(http: httpx.Client, body: dict[str, Any], problem: str) -> None:
    r = http.post("/api/track", json=body)
    assert r.status_code == 400
    assert r.text.startswith("Bad Request: ")
    assert problem in r.text
    assert http.get("/_fake/report").json()["accepted_events"] == 0


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"app_id": "1", "properties": {"a": "b"}}, "identity"),
        ({"app_id": "1", "identity": "a"}, "properties: required"),
        ({"app_id": "1", "identity": "a", "properties": {"Id": "7"}}, "'id'"),
        ({"app_id": "1", "identity": "a", "properties": {"x": [1]}}, "string or a number"),
        ({"app_id": "1", "users": [{"identity": "a", "properties": {}}] * 1001}, "at most 1000"),
    ],
)
def test_user_property_rules_answer_400(
    http: httpx.Client, body: dict[str, Any], problem: str
) -> None:
    r = http.post("/api/add_user_properties", json=body)
    assert r.status_code == 400
    assert problem in r.text


def test_user_properties_last_value_wins(http: httpx.Client) -> None:
    http.post(
        "/api/add_user_properties",
        json={"app_id": "1", "identity": "a", "properties": {"plan": "free", "email": "a@x"}},
    )
    users = [{"identity": "a", "properties": {"plan": "pro"}}, {"identity": "b", "properties": {}}]
    assert http.post("/api/add_user_properties", json={"app_id": "1", "users": users}).is_success
    assert http.get("/_fake/users").json() == {"a": {"plan": "pro", "email": "a@x"}, "b": {}}


def test_idempotency_key_deduplicates(http: httpx.Client) -> None:
    body = {"app_id": "1", "events": [ev(idempotency_key="k1"), ev(idempotency_key="k2")]}
    assert http.post("/api/track", json=body).is_success
    assert http.post("/api/track", json=body).is_success
    report = http.get("/_fake/report").json()
    assert report["accepted_events"] == 2
    assert report["duplicates"] == 2


def test_integrations_endpoints(http: httpx.Client) -> None:
    good = {
        "app_id": "1",
        "library": "server",
        "events": [
            {
                "event": "x",
                "user_identifier": {"anonymous_id": "anon"},
                "idempotency_key": "12345678",
                "custom_properties": {"a": "1"},
            }
        ],
    }
    assert http.post("/api/integrations/track", json=good).status_code == 200
    bad = {"app_id": "1", "events": [{"event": "x", "user_identifier": {}}]}
    assert http.post("/api/integrations/track", json=bad).status_code == 400
    users = {
        "app_id": "1",
        "users": [{"user_identifier": {"identity": "a"}, "custom_properties": {"vip": True}}],
    }
    assert http.post("/api/integrations/add_user_properties", json=users).status_code == 200
    assert http.get("/_fake/users").json() == {"a": {"vip": True}}


def test_rate_limits_answer_429_with_retry_after(http: httpx.Client) -> None:
    http.post("/_fake/settings", json={"rate_limits": True, "app_events_per_minute": 1500})
    events = [ev(identity=f"u{i}") for i in range(1000)]
    assert http.post("/api/track", json={"app_id": "1", "events": events}).status_code == 200
    r = http.post("/api/track", json={"app_id": "1", "events": events})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    # another app_id has its own budget
    assert http.post("/api/track", json={"app_id": "2", "events": events}).status_code == 200
    # per identity: 1000 per minute
    hot = [ev(identity="hot")] * 600
    assert http.post("/api/track", json={"app_id": "3", "events": hot}).status_code == 200
    assert http.post("/api/track", json={"app_id": "3", "events": hot}).status_code == 429
    assert http.get("/_fake/report").json()["rate_limited"] == 2


def test_single_endpoint_limit_is_30_requests_per_30s_per_identity(http: httpx.Client) -> None:
    http.post("/_fake/settings", json={"rate_limits": True})
    body = {"app_id": "1", "identity": "a", "properties": {"n": 1}}
    codes = [http.post("/api/add_user_properties", json=body).status_code for _ in range(31)]
    assert codes == [200] * 30 + [429]
    other = {**body, "identity": "b"}
    assert http.post("/api/add_user_properties", json=other).status_code == 200


def test_outage_and_error_injection(http: httpx.Client) -> None:
    http.post("/_fake/settings", json={"outage_seconds": 60})
    assert http.post("/api/track", json={"app_id": "1", **ev()}).status_code == 503
    http.post("/_fake/settings", json={"outage_seconds": 0, "error_rate": 0.5})
    codes = [http.post("/api/track", json={"app_id": "1", **ev()}).status_code for _ in range(40)]
    assert 5 < codes.count(503) < 35
    assert codes.count(200) + codes.count(503) == 40
    r = http.post("/_fake/settings", json={"nonsense": 1})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_setting"
    assert "accepted" in r.json()["message"]


# --- Heap in the browser (device mode) ----------------------------------------------------


@pytest.mark.parametrize(("path", "up"), [("/js/heap-77.js", 1), ("/config/77/heap_config.js", 2)])
def test_recording_heap_js_is_served_and_its_load_recorded(
    http: httpx.Client, fake: FakeHeap, path: str, up: int
) -> None:
    r = http.get(path, headers={"Referer": "http://page.example/"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/javascript")
    assert r.headers["cache-control"] == "no-store"
    assert 'var APP_ID = "77";' in r.text
    assert f"'../'.repeat({up}) + 'js/record'" in r.text  # where it posts the calls
    [load] = http.get("/_fake/browser").json()["loads"]
    assert (load["app_id"], load["path"], load["referer"]) == ("77", path, "http://page.example/")


def test_browser_calls_are_recorded_and_listed_by_app(http: httpx.Client) -> None:
    for app_id, method in (("1", "identify"), ("2", "track"), ("1", "addUserProperties")):
        r = http.post(
            "/js/record",
            content=f'{{"app_id": "{app_id}", "method": "{method}", "args": ["x"], "seq": 0}}',
            headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": "http://page"},
        )
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == "*"
    assert [c["method"] for c in http.get("/_fake/browser?app_id=1").json()["calls"]] == [
        "identify",
        "addUserProperties",
    ]
    http.post("/_fake/reset", json={})
    assert http.get("/_fake/browser").json() == {"loads": [], "calls": []}


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"args": []}', b'{"method": "x"}'])
def test_a_bad_browser_record_is_a_400(http: httpx.Client, body: bytes) -> None:
    r = http.post("/js/record", content=body)
    assert r.status_code == 400
    assert r.json()["error"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"error_rate": 2}, "error_rate: 2 is not a number from 0 to 1"),
        ({"error_rate": -0.1}, "error_rate: -0.1 is not a number from 0 to 1"),
        ({"error_rate": "0.5"}, 'error_rate: "0.5" is not a number'),
        ({"accept_then_fail_rate": 1.5}, "accept_then_fail_rate: 1.5 is not"),
        ({"error_status": 200}, "error_status: 200 is not an HTTP status from 400 to 599"),
        ({"error_status": 503.5}, "error_status: 503.5 is not"),
        ({"time_scale": 0}, "time_scale: 0 is not a number above 0"),
        ({"latency": -1}, "latency: -1 is not a number of seconds from 0"),
        ({"outage_seconds": "soon"}, 'outage_seconds: "soon" is not'),
        ({"rate_limits": "yes"}, 'rate_limits: "yes" is not true or false'),
        ({"keep_items": 1}, "keep_items: 1 is not true or false"),
        ({"app_events_per_minute": 0}, "app_events_per_minute: 0 is not an integer from 1"),
        ({"identity_events_per_minute": True}, "identity_events_per_minute: true is not"),
        ({"single_requests_per_30s": 2.5}, "single_requests_per_30s: 2.5 is not"),
        ({"seed": "x"}, 'seed: "x" is not an integer or null'),
        ({"reject_identities": "alice"}, 'reject_identities: "alice" is not a list of strings'),
        ({"reject_identities": [1]}, "reject_identities: [1] is not a list of strings"),
        ({"max_kept_events": 0}, "max_kept_events: 0 is not"),
        ({"max_request_log": -5}, "max_request_log: -5 is not"),
        ({"outages": [[1, 2]]}, "unknown settings ['outages']"),
    ],
)
def test_settings_are_checked_and_a_bad_one_changes_nothing(
    http: httpx.Client, fake: FakeHeap, change: dict[str, Any], says: str
) -> None:
    before = fake.settings
    r = http.post("/_fake/settings", json={"latency": 0.5, **change})
    assert r.status_code == 400
    assert r.json() == {"code": "invalid_setting", "message": r.json()["message"]}
    assert says in r.json()["message"]
    assert fake.settings == before
    ok = http.post("/_fake/settings", json={"error_rate": 1, "seed": None, "reject_identities": []})
    assert ok.status_code == 200
    assert fake.settings.error_rate == 1


def test_every_setting_is_checked() -> None:
    from dataclasses import fields

    from heaprelay.heap.fake import SETTING_CHECKS

    settable = {f.name for f in fields(FakeHeapSettings)} - {"outages"} | {"outage_seconds"}
    assert set(SETTING_CHECKS) == settable
