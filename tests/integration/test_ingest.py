"""The ingest API over real HTTP (uvicorn on loopback) into a real SQLite queue file."""

from __future__ import annotations

import asyncio
import base64
import gzip
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from heaprelay.config import Config, Destination, Limits, Source
from heaprelay.queue.sqlite import SQLiteQueue
from heaprelay.server import build_app
from heaprelay.testing.servers import serve_in_thread
from heaprelay.transform import DestinationSettings

WEB_ORIGIN = "https://shop.example"


def _dest(dest_id: str) -> Destination:
    return Destination(id=dest_id, settings=DestinationSettings(app_id="123"))


SOURCES = (
    Source(
        name="web",
        write_key="web-key",
        destinations=(_dest("heap-a"), _dest("heap-b")),
        cors_origins=(WEB_ORIGIN,),
    ),
    Source(
        name="small",
        write_key="small-key",
        destinations=(_dest("heap-small"),),
        limits=Limits(max_request_bytes=4000, max_message_bytes=1000),
    ),
    Source(
        name="lenient",
        write_key="lenient-key",
        destinations=(_dest("heap-lenient"),),
        partial_batches=True,
    ),
)


class Relay:
    def __init__(self, url: str, db: Path) -> None:
        self.url = url
        self.db = db
        self.http = httpx.Client(base_url=url, timeout=10)

    def post(self, path: str, body: Any = None, *, key: str | None = "web-key", **kw: Any):
        headers = kw.pop("headers", {})
        if key is not None:
            headers["authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        if body is not None and "content" not in kw:
            kw["content"] = orjson.dumps(body)
        return self.http.post(path, headers=headers, **kw)

    def rows(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        conn = sqlite3.connect(self.db)
        try:
            rows = conn.execute(
                "SELECT source, destination, state, payload FROM jobs ORDER BY id"
            ).fetchall()
        finally:
            conn.close()
        return [(s, d, st, orjson.loads(p)) for s, d, st, p in rows]


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    data_dir = tmp_path_factory.mktemp("ingest")
    config = Config(sources=SOURCES, data_dir=data_dir)
    with serve_in_thread(build_app(config, services=[])) as url:
        relay = Relay(url, data_dir / "heaprelay.db")
        yield relay
        relay.http.close()


@pytest.fixture
def fresh(relay: Relay) -> Relay:
    conn = sqlite3.connect(relay.db)
    with conn:
        conn.execute("DELETE FROM jobs")
        conn.execute("DELETE FROM seen")
    conn.close()
    return relay


TRACK = {"userId": "u1", "event": "Signed Up", "properties": {"plan": "pro"}}


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/track", "track"),
        ("/v1/t", "track"),
        ("/v1/identify", "identify"),
        ("/v1/i", "identify"),
        ("/v1/page", "page"),
        ("/v1/p", "page"),
        ("/v1/screen", "screen"),
        ("/v1/s", "screen"),
    ],
)
def test_single_routes_store_one_job_per_destination(fresh: Relay, path: str, kind: str):
    body = {"userId": "u1", "event": "E", "properties": {"a": 1}, "traits": {"b": 2}}
    answer = fresh.post(path, body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"success": True}
    rows = fresh.rows()
    assert [(s, d) for s, d, _, _ in rows] == [("web", "heap-a"), ("web", "heap-b")]
    message = rows[0][3]
    assert message["type"] == kind
    assert message["properties"] == {"a": 1}
    assert rows[0][3] == rows[1][3]
    assert message["messageId"]
    assert message["receivedAt"]
    assert message["timestamp"]


def test_group_and_alias_routes(fresh: Relay):
    assert fresh.post("/v1/group", {"userId": "u", "groupId": "g"}).status_code == 200
    assert fresh.post("/v1/g", {"userId": "u", "groupId": "g"}).status_code == 200
    assert fresh.post("/v1/alias", {"userId": "u", "previousId": "p"}).status_code == 200
    assert fresh.post("/v1/a", {"userId": "u", "previousId": "p"}).status_code == 200
    assert [r[3]["type"] for r in fresh.rows()[::2]] == ["group", "group", "alias", "alias"]


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/import", "/v1/b"])
def test_batch_routes_with_write_key_in_the_body_and_text_plain(fresh: Relay, path: str):
    body = {
        "writeKey": "web-key",
        "sentAt": "2024-01-01T00:00:10Z",
        "context": {"library": {"name": "lib"}},
        "batch": [
            {"type": "identify", "userId": "u1", "traits": {"email": "a@b.c"}},
            {
                "type": "track",
                "anonymousId": "a1",
                "event": "E",
                "timestamp": "2024-01-01T00:00:00Z",
                "messageId": "m-2",
            },
        ],
    }
    answer = fresh.post(path, body, key=None, headers={"content-type": "text/plain"})
    assert answer.status_code == 200, answer.text
    rows = fresh.rows()
    assert len(rows) == 4
    identify, track = rows[0][3], rows[2][3]
    assert identify["traits"] == {"email": "a@b.c"}
    assert identify["context"] == {"library": {"name": "lib"}}
    assert track["messageId"] == "m-2"
    assert track["originalTimestamp"] == "2024-01-01T00:00:00Z"
    assert "writeKey" not in track


def test_beacon_takes_the_write_key_from_the_query(fresh: Relay):
    body = {"batch": [{"type": "track", "anonymousId": "a", "event": "E"}]}
    answer = fresh.post(
        "/beacon/v1/batch?writeKey=web-key",
        body,
        key=None,
        headers={"content-type": "text/plain;charset=UTF-8"},
    )
    assert answer.status_code == 200, answer.text
    assert len(fresh.rows()) == 2


def test_gzip_body(fresh: Relay):
    body = gzip.compress(orjson.dumps({"batch": [{"type": "track", "userId": "u", "event": "Z"}]}))
    answer = fresh.post("/v1/batch", content=body, headers={"content-encoding": "gzip"})
    assert answer.status_code == 200, answer.text
    assert fresh.rows()[0][3]["event"] == "Z"


def test_duplicate_message_id_is_accepted_but_not_delivered_twice(fresh: Relay):
    body = {"userId": "u", "event": "E", "messageId": "same"}
    assert fresh.post("/v1/track", body).status_code == 200
    assert fresh.post("/v1/track", body).status_code == 200
    # Both are stored (ingest does no dedupe work); delivery's claim finds the duplicates.
    assert [st for _, _, st, _ in fresh.rows()] == ["pending"] * 4

    async def claim() -> list[str]:
        queue = await SQLiteQueue.open(fresh.db)
        try:
            jobs = await queue.claim("worker", limit=10, lease_seconds=30, now=time.time())
        finally:
            await queue.close()
        return [j.destination for j in jobs]

    assert asyncio.run(claim()) == ["heap-a", "heap-b"]
    states = [(d, st) for _, d, st, _ in fresh.rows()]
    assert states == [
        ("heap-a", "leased"),
        ("heap-b", "leased"),
        ("heap-a", "skipped"),
        ("heap-b", "skipped"),
    ]


def _gz_bomb(size: int) -> bytes:
    return gzip.compress(b'{"batch": [' + b" " * size + b"]}")


BAD = [
    # (description, path, body/content, key, headers, status, code)
    ("no write key", "/v1/track", TRACK, None, {}, 401, "missing_write_key"),
    ("unknown key", "/v1/track", TRACK, "nope", {}, 401, "invalid_write_key"),
    (
        "unknown body key",
        "/v1/batch",
        {"writeKey": "nope", "batch": [{**TRACK, "type": "track"}]},
        None,
        {},
        401,
        "invalid_write_key",
    ),
    ("bad basic", "/v1/track", TRACK, None, {"authorization": "Basic !!!"}, 401, "invalid_auth"),
    ("malformed JSON", "/v1/track", b'{"userId": ', "web-key", {}, 400, "invalid_json"),
    ("not an object", "/v1/track", b"[1]", "web-key", {}, 400, "invalid_body"),
    (
        "form data",
        "/v1/track",
        b"userId=u&event=E",
        "web-key",
        {"content-type": "application/x-www-form-urlencoded"},
        400,
        "invalid_json",
    ),
    ("empty body", "/v1/track", b"", "web-key", {}, 400, "invalid_json"),
    ("no identity", "/v1/track", {"event": "E"}, "web-key", {}, 400, "missing_identity"),
    ("no event", "/v1/track", {"userId": "u"}, "web-key", {}, 400, "missing_event"),
    (
        "unknown type",
        "/v1/batch",
        {"batch": [{"type": "buy", "userId": "u"}]},
        "web-key",
        {},
        400,
        "invalid_type",
    ),
    (
        "bad timestamp",
        "/v1/track",
        {**TRACK, "timestamp": "2024-13-45"},
        "web-key",
        {},
        400,
        "invalid_timestamp",
    ),
    (
        "one bad in batch",
        "/v1/batch",
        {"batch": [{**TRACK, "type": "track"}, {"type": "track", "userId": "u"}]},
        "web-key",
        {},
        400,
        "missing_event",
    ),
    (
        "not gzip",
        "/v1/track",
        b"plainly not gzip",
        "web-key",
        {"content-encoding": "gzip"},
        400,
        "invalid_gzip",
    ),
    (
        "truncated gzip",
        "/v1/track",
        gzip.compress(orjson.dumps(TRACK))[:-10],
        "web-key",
        {"content-encoding": "gzip"},
        400,
        "invalid_gzip",
    ),
    (
        "gzip bomb",
        "/v1/batch",
        _gz_bomb(10_000),
        "small-key",
        {"content-encoding": "gzip"},
        413,
        "request_too_large",
    ),
    (
        "unknown encoding",
        "/v1/track",
        TRACK,
        "web-key",
        {"content-encoding": "br"},
        415,
        "unsupported_encoding",
    ),
    (
        "request over limit",
        "/v1/batch",
        {"batch": [{**TRACK, "type": "track", "properties": {"x": "y" * 800}}] * 6},
        "small-key",
        {},
        413,
        "request_too_large",
    ),
    (
        "message over limit",
        "/v1/batch",
        {
            "batch": [
                {**TRACK, "type": "track"},
                {**TRACK, "type": "track", "properties": {"x": "y" * 1500}},
            ]
        },
        "small-key",
        {},
        413,
        "message_too_large",
    ),
    (
        "single over limit",
        "/v1/track",
        {**TRACK, "properties": {"x": "y" * 1500}},
        "small-key",
        {},
        413,
        "message_too_large",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "key", "headers", "status", "code"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_input_gets_a_clear_4xx_and_stores_nothing(
    fresh: Relay, path, body, key, headers, status, code
):
    kw = {"content": body} if isinstance(body, bytes) else {}
    answer = fresh.post(path, None if kw else body, key=key, headers=dict(headers), **kw)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert len(error["message"]) > 10
    assert fresh.rows() == []


def test_batch_error_names_the_index(fresh: Relay):
    body = {"batch": [{**TRACK, "type": "track"}] * 3 + [{"type": "track", "anonymousId": "a"}]}
    error = fresh.post("/v1/batch", body).json()
    assert error["index"] == 3
    assert "batch[3]" in error["message"]


def test_partial_batches_store_the_valid_and_list_the_refused(fresh: Relay):
    body = {"batch": [{**TRACK, "type": "track"}, {"type": "track"}, {**TRACK, "type": "track"}]}
    answer = fresh.post("/v1/batch", body, key="lenient-key")
    assert answer.status_code == 200
    data = answer.json()
    assert data["success"] is True
    assert data["stored"] == 2
    assert [(r["index"], r["code"]) for r in data["rejected"]] == [(1, "missing_identity")]
    assert len(fresh.rows()) == 2


def test_cors_preflight_and_headers_on_answers(fresh: Relay):
    preflight = fresh.http.options(
        "/v1/t",
        headers={
            "origin": WEB_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,x-custom",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == WEB_ORIGIN
    allowed = preflight.headers["access-control-allow-headers"].lower()
    for name in (
        "authorization",
        "content-type",
        "x-retry-count",
        "anonymousid",
        "sentat",
        "rsa-retry-attempt",
        "x-custom",
    ):
        assert name in allowed
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert int(preflight.headers["access-control-max-age"]) > 5

    ok = fresh.post("/v1/t", TRACK, headers={"origin": WEB_ORIGIN})
    assert ok.headers["access-control-allow-origin"] == WEB_ORIGIN
    bad = fresh.post("/v1/t", {"userId": "u"}, headers={"origin": WEB_ORIGIN})
    assert bad.status_code == 400
    assert bad.headers["access-control-allow-origin"] == WEB_ORIGIN
    assert "retry-after" in bad.headers["access-control-expose-headers"].lower()


def test_cors_only_for_the_sources_origins(fresh: Relay):
    # "small" allows any origin (the default), "web" only its shop: a page elsewhere with
    # web's key is refused and nothing is stored (issue 12 item 4: it used to be stored).
    other = "https://evil.example"
    for where in ("header", "body"):
        if where == "header":
            answer = fresh.post("/v1/t", TRACK, headers={"origin": other})
        else:
            answer = fresh.post(
                "/v1/t", {**TRACK, "writeKey": "web-key"}, key=None, headers={"origin": other}
            )
        assert answer.status_code == 403, answer.text
        assert answer.json()["code"] == "origin_not_allowed"
        assert other in answer.json()["message"]
        assert "access-control-allow-origin" not in answer.headers
        assert fresh.rows() == []
    allowed = fresh.post("/v1/t", TRACK, key="small-key", headers={"origin": other})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == other
    # No credentials unless a source asks for them; never the origin "null" by default.
    assert "access-control-allow-credentials" not in allowed.headers
    null = fresh.post("/v1/t", TRACK, key="small-key", headers={"origin": "null"})
    assert null.status_code == 403
    assert "access-control-allow-origin" not in null.headers
    assert len(fresh.rows()) == 1


def test_a_preflight_answers_only_for_origins_some_source_allows(fresh: Relay):
    def preflight(origin: str) -> httpx.Response:
        return fresh.http.options(
            "/v1/t", headers={"origin": origin, "access-control-request-method": "POST"}
        )

    # "small" and "lenient" allow any origin (the default "*"), "null" excepted.
    assert preflight("https://evil.example").status_code == 204
    refused = preflight("null")
    assert refused.status_code == 403
    assert refused.json()["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in refused.headers


def test_metrics_route_needs_no_credentials(fresh: Relay):
    answer = fresh.http.post(
        "/v1/m",
        content=b'{"series": []}',
        headers={"content-type": "text/plain", "origin": WEB_ORIGIN},
    )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == WEB_ORIGIN
    assert fresh.rows() == []


def test_health_and_readiness(relay: Relay):
    assert relay.http.get("/healthz").json() == {"status": "ok"}
    assert relay.http.get("/readyz").json() == {"status": "ready"}


def test_large_rudderstack_batch_under_4mb_is_accepted(fresh: Relay):
    item = {"type": "track", "userId": "u", "event": "E", "properties": {"blob": "x" * 30_000}}
    body = {"batch": [item] * 120}  # ~3.6 MB
    answer = fresh.post("/v1/batch", body, key="lenient-key")
    assert answer.status_code == 200, answer.text
    assert len(fresh.rows()) == 120


def test_unknown_paths_and_methods_answer_json(relay: Relay):
    missing = relay.http.post("/v2/track", content=b"{}")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    wrong = relay.http.get("/v1/batch")
    assert wrong.status_code == 405
    assert wrong.json()["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]
