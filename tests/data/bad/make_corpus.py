"""Writes the bad-input corpus: for each case NAME, ``NAME.body`` (the body bytes, or for a
``raw`` case the whole HTTP request) and ``NAME.json`` (route, write key, headers, and the
expected status and ``code``). Replayed by tests/integration/test_bad_input_corpus.py against
a real ``heaprelay serve`` whose sources are in tests/integration/_served.py.

Run ``python tests/data/bad/make_corpus.py`` after editing a case; the files are committed so
that each case can be read (and sent with curl) as it is.

Sidecar fields: ``route``; ``key`` (sent as HTTP Basic, ``null`` for none); ``headers``;
``status``; ``code`` (the JSON answer's code; ``null`` where the HTTP layer itself answers,
before the relay: a request HTTP/1.1 does not allow); ``stored`` (jobs the request adds: 0
for every refusal); ``raw`` (send ``NAME.body`` over a socket as the whole request);
``why`` (what the case is about).
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
TRACK = b'{"userId":"u1","event":"Signed Up","properties":{"plan":"pro"}}'


def track(**fields: Any) -> bytes:
    message: dict[str, Any] = {"userId": "u1", "event": "Signed Up"}
    message.update(fields)
    return json.dumps({k: v for k, v in message.items() if v is not ...}).encode()


def nested(levels: int, open_: str = '{"a":', close: str = "}") -> str:
    return open_ * levels + "1" + close * levels


def raw_request(headers: list[str], body: bytes) -> bytes:
    head = ["POST /v1/track HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


CASES: list[dict[str, Any]] = []


def case(name: str, body: bytes, status: int, code: str | None, why: str, **kw: Any) -> None:
    CASES.append(
        {
            "name": name,
            "body": body,
            "route": kw.pop("route", "/v1/track"),
            "key": kw.pop("key", "open-key"),
            "headers": kw.pop("headers", {}),
            "status": status,
            "code": code,
            "stored": kw.pop("stored", 0),
            "raw": kw.pop("raw", False),
            "why": why,
        }
    )
    assert not kw, kw


# --- truncated and invalid JSON ---------------------------------------------------------
case("json_truncated_object", TRACK[:-5], 400, "invalid_json", "body cut short")
case(
    "json_truncated_batch",
    b'{"batch":[{"type":"track","userId":"u1","event":"E"},{"type":"tr',
    400,
    "invalid_json",
    "batch cut short",
    route="/v1/batch",
)
case("json_empty", b"", 400, "invalid_json", "no body")
case("json_whitespace", b" \r\n\t ", 400, "invalid_json", "only whitespace")
case("json_not_json", b"userId=u1&event=Signed+Up", 400, "invalid_json", "a form body")
case("json_trailing_garbage", TRACK + b" x", 400, "invalid_json", "a value then junk")
case("json_two_values", TRACK + TRACK, 400, "invalid_json", "two objects")
case("json_nan", track()[:-1] + b',"properties":{"n":NaN}}', 400, "invalid_json", "NaN")
case("json_infinity", track()[:-1] + b',"properties":{"n":1e400}}', 400, "invalid_json", "1e400")
case("json_single_quotes", b"{'userId':'u1','event':'E'}", 400, "invalid_json", "quotes")
case("json_trailing_comma", b'{"userId":"u1","event":"E",}', 400, "invalid_json", "comma")
case("json_comment", b'{"userId":"u1",/* c */"event":"E"}', 400, "invalid_json", "comment")
case("json_lone_surrogate", b'{"userId":"u1","event":"\\ud800"}', 400, "invalid_json", "lone")
case("json_bom", b"\xef\xbb\xbf" + TRACK, 400, "invalid_json", "a UTF-8 BOM first")
case("json_array", b"[" + TRACK + b"]", 400, "invalid_body", "an array, not an object")
case("json_string", b'"track"', 400, "invalid_body", "a string, not an object")
case("json_null", b"null", 400, "invalid_body", "null, not an object")
case("json_number", b"42", 400, "invalid_body", "a number, not an object")

# --- invalid UTF-8 ----------------------------------------------------------------------
case("utf8_invalid_byte", b'{"userId":"u1","event":"\xff"}', 400, "invalid_json", "0xff")
case("utf8_overlong", b'{"userId":"u1","event":"\xc0\xaf"}', 400, "invalid_json", "overlong")
case("utf8_truncated", b'{"userId":"u1","event":"\xe2\x82"}', 400, "invalid_json", "cut")
case("utf8_surrogate", b'{"userId":"u1","event":"\xed\xa0\x80"}', 400, "invalid_json", "CESU")
case("utf8_in_key", b'{"userId":"u1","event":"E","\xfe":1}', 400, "invalid_json", "in a key")

# --- wrong types at every top-level field (single and batch routes) ----------------------
WRONG: list[tuple[str, dict[str, Any], str]] = [
    ("type_number", {"type": 5}, "invalid_type"),
    ("type_other_route", {"type": "identify"}, "invalid_type"),
    ("type_unknown", {"type": "click"}, "invalid_type"),
    ("userid_object", {"userId": {"id": "u1"}}, "missing_identity"),
    ("userid_boolean", {"userId": True}, "missing_identity"),
    ("userid_blank", {"userId": "  "}, "missing_identity"),
    ("anonymousid_array", {"userId": ..., "anonymousId": ["a"]}, "missing_identity"),
    ("no_identity", {"userId": ...}, "missing_identity"),
    ("event_number", {"event": 5}, "missing_event"),
    ("event_blank", {"event": " "}, "missing_event"),
    ("event_missing", {"event": ...}, "missing_event"),
    ("properties_array", {"properties": [1]}, "invalid_field"),
    ("properties_string", {"properties": "plan=pro"}, "invalid_field"),
    ("traits_number", {"traits": 5}, "invalid_field"),
    ("context_string", {"context": "web"}, "invalid_field"),
    ("integrations_array", {"integrations": ["Heap"]}, "invalid_field"),
    ("messageid_object", {"messageId": {}}, "invalid_field"),
    ("messageid_boolean", {"messageId": True}, "invalid_field"),
    ("messageid_too_long", {"messageId": "m" * 100}, "invalid_field"),
    ("timestamp_number", {"timestamp": 1700000000}, "invalid_timestamp"),
    ("timestamp_words", {"timestamp": "yesterday"}, "invalid_timestamp"),
    ("timestamp_bad_month", {"timestamp": "2024-13-01T00:00:00Z"}, "invalid_timestamp"),
    ("timestamp_bad_day", {"timestamp": "2024-02-30T00:00:00Z"}, "invalid_timestamp"),
    ("timestamp_before_1970", {"timestamp": "1969-12-31T23:59:59Z"}, "invalid_timestamp"),
    ("timestamp_year_10000", {"timestamp": "10000-01-01T00:00:00Z"}, "invalid_timestamp"),
    ("timestamp_bad_offset", {"timestamp": "2024-01-01T00:00:00+25:00"}, "invalid_timestamp"),
    ("timestamp_short", {"timestamp": "2024"}, "invalid_timestamp"),
    ("originaltimestamp_object", {"originalTimestamp": {}}, "invalid_timestamp"),
    ("sentat_array", {"sentAt": []}, "invalid_timestamp"),
    ("sentat_boolean", {"sentAt": True}, "invalid_timestamp"),
]
for name, fields, code in WRONG:
    case(f"field_{name}", track(**fields), 400, code, f"track with {fields}")
    item = {"type": "track", "userId": "u1", "event": "E", **fields}
    if fields.get("type") == "identify":
        continue  # a batch item may be any type
    body = {"batch": [{"type": "track", "userId": "u1", "event": "ok"}, item]}
    body["batch"][1] = {k: v for k, v in item.items() if v is not ...}
    case(
        f"batch_field_{name}",
        json.dumps(body).encode(),
        400,
        code,
        f"batch item 1 with {fields}: nothing of the batch stored",
        route="/v1/batch",
    )
case("group_without_groupid", b'{"userId":"u1","groupId":{}}', 400, "missing_group_id", "group",
     route="/v1/group")  # fmt: skip
case("alias_without_previousid", b'{"userId":"u1","previousId":null}', 400,
     "missing_previous_id", "alias", route="/v1/alias")  # fmt: skip
for name, body, code in [
    ("batch_missing", b'{"sentAt":"2024-01-01T00:00:00Z"}', "invalid_body"),
    ("batch_string", b'{"batch":"[]"}', "invalid_body"),
    ("batch_object", b'{"batch":{"0":{}}}', "invalid_body"),
    ("batch_empty", b'{"batch":[]}', "empty_batch"),
    ("batch_item_number", b'{"batch":[1]}', "invalid_message"),
    ("batch_item_null", b'{"batch":[null]}', "invalid_message"),
    ("batch_item_no_type", b'{"batch":[{"userId":"u1","event":"E"}]}', "missing_type"),
    ("batch_context_string", b'{"batch":[{"type":"track","userId":"u","event":"E"}],'
     b'"context":"x"}', "invalid_field"),
    ("batch_integrations_array", b'{"batch":[{"type":"track","userId":"u","event":"E"}],'
     b'"integrations":[]}', "invalid_field"),
    ("batch_sentat_words", b'{"batch":[{"type":"track","userId":"u","event":"E"}],'
     b'"sentAt":"now"}', "invalid_timestamp"),
]:  # fmt: skip
    case(name, body, 400, code, name.replace("_", " "), route="/v1/batch")

# --- huge and deep bodies ---------------------------------------------------------------
filler = "x" * 5000
case("huge_request_small_source", track(properties={"f": filler}), 413, "request_too_large",
     "over the small source's 4000-byte request limit", key="small-key")  # fmt: skip
case("huge_message_small_source", track(properties={"f": "x" * 1500}), 413,
     "message_too_large", "under its request limit, over its 1000-byte message limit",
     key="small-key")  # fmt: skip
big_item = {"type": "track", "userId": "u1", "event": "E", "properties": {"f": "x" * 1200}}
big_batch = {"batch": [{"type": "track", "userId": "u1", "event": "E"}, big_item]}
case("huge_batch_item_small_source", json.dumps(big_batch).encode(), 413, "message_too_large",
     "a batch item over the message limit", route="/v1/batch", key="small-key")  # fmt: skip
case(
    "huge_declared_length",
    raw_request(["Authorization: Basic b3Blbi1rZXk6", "Content-Length: 99999999"], b"{}"),
    413,
    "request_too_large",
    "Content-Length over the limit: refused before the body is read",
    raw=True,
)
for levels in (254, 600, 1023, 1100):
    case(f"deep_properties_{levels}",
         b'{"userId":"u1","event":"E","properties":' + nested(levels).encode() + b"}",
         400, "nesting_too_deep", f"properties {levels} levels deep")  # fmt: skip
case("deep_arrays_300", b'{"userId":"u1","event":"E","properties":{"a":'
     + nested(300, "[", "]").encode() + b"}}", 400, "nesting_too_deep", "arrays")  # fmt: skip
case("deep_batch_body_1100", b'{"batch":[' + nested(1100).encode() + b"]}", 400,
     "nesting_too_deep", "a body deeper than JSON is read", route="/v1/batch")  # fmt: skip
case("deep_properties_252_ok", b'{"userId":"u1","event":"E","properties":'
     + nested(252).encode() + b"}", 200, None, "253 levels: stored whole",
     stored=1)  # fmt: skip

# --- gzip -------------------------------------------------------------------------------
GZ = {"content-encoding": "gzip"}
case("gzip_bomb", gzip.compress(b" " * (64 * 1024 * 1024), 9), 413, "request_too_large",
     "64 MiB of spaces in 64 KB: refused once past the limit", headers=GZ)  # fmt: skip
case(
    "gzip_bomb_small_source",
    gzip.compress(b'{"userId":"u1","event":"E","p":"' + b"0" * 100_000 + b'"}', 9),
    413,
    "request_too_large",
    "a small gzip body that inflates past the small source's limit",
    headers=GZ,
    key="small-key",
)
case("gzip_truncated", gzip.compress(TRACK)[:-10], 400, "invalid_gzip", "cut", headers=GZ)
case("gzip_not_gzip", TRACK, 400, "invalid_gzip", "plain JSON said to be gzip", headers=GZ)
case("gzip_empty", b"", 400, "invalid_gzip", "no body said to be gzip", headers=GZ)
case("gzip_bad_crc", gzip.compress(TRACK)[:-8] + b"\0\0\0\0" + gzip.compress(TRACK)[-4:], 400,
     "invalid_gzip", "checksum wrong", headers=GZ)  # fmt: skip
case("gzip_multi_member", gzip.compress(TRACK[:20]) + gzip.compress(TRACK[20:]), 200, None,
     "two members: the body is both (RFC 1952)", headers=GZ, stored=1)  # fmt: skip
case("gzip_member_then_junk", gzip.compress(TRACK) + b"junk", 400, "invalid_gzip",
     "a member, then bytes that are not one", headers=GZ)  # fmt: skip
case("gzip_of_invalid_json", gzip.compress(TRACK[:-3]), 400, "invalid_json",
     "inflates to invalid JSON", headers=GZ)  # fmt: skip
case("encoding_br", TRACK, 415, "unsupported_encoding", "brotli",
     headers={"content-encoding": "br"})  # fmt: skip
case("encoding_deflate", TRACK, 415, "unsupported_encoding", "deflate",
     headers={"content-encoding": "deflate"})  # fmt: skip


# --- wrong auth forms -------------------------------------------------------------------
def b64(text: bytes) -> str:
    return base64.b64encode(text).decode()


case("auth_none", TRACK, 401, "missing_write_key", "no key anywhere", key=None)
case("auth_unknown_key", TRACK, 401, "invalid_write_key", "unknown key", key="nope")
case("auth_not_base64", TRACK, 401, "invalid_auth", "Basic !!!", key=None,
     headers={"authorization": "Basic !!!"})  # fmt: skip
case("auth_not_utf8", TRACK, 401, "invalid_auth", "Basic of latin-1 bytes", key=None,
     headers={"authorization": "Basic " + b64(b"\xff\xfe:")})  # fmt: skip
case("auth_empty_user", TRACK, 401, "missing_write_key", "Basic ':'", key=None,
     headers={"authorization": "Basic " + b64(b":")})  # fmt: skip
case("auth_bearer_only", TRACK, 401, "missing_write_key", "Bearer, no body key", key=None,
     headers={"authorization": "Bearer open-key"})  # fmt: skip
case("auth_body_key_number", track(writeKey=123), 401, "missing_write_key", "writeKey: 123",
     key=None)  # fmt: skip
case("auth_body_key_unknown", track(writeKey="nope"), 401, "invalid_write_key", "body key",
     key=None)  # fmt: skip
case("auth_query_key_unknown", b'{"batch":[' + TRACK[:-1] + b',"type":"track"}]}', 401,
     "invalid_write_key", "beacon ?writeKey=", key=None,
     route="/beacon/v1/batch?writeKey=nope")  # fmt: skip
case("auth_password_key", TRACK, 401, "missing_write_key", "key as the password", key=None,
     headers={"authorization": "Basic " + b64(b":open-key")})  # fmt: skip

# --- CORS: a page elsewhere with a restricted source's key -------------------------------
case("origin_not_allowed", TRACK, 403, "origin_not_allowed", "web-key from another site",
     key="web-key", headers={"origin": "https://evil.example"})  # fmt: skip
case("origin_null", TRACK, 403, "origin_not_allowed", "a sandboxed frame (Origin: null)",
     key="web-key", headers={"origin": "null"})  # fmt: skip
case("origin_lookalike", TRACK, 403, "origin_not_allowed", "shop.example.evil.example",
     key="web-key", headers={"origin": "https://shop.example.evil.example"})  # fmt: skip

# --- HTTP framing HTTP/1.1 refuses (answered by the HTTP layer, before the routes) --------
case("length_negative", raw_request(["Content-Length: -5"], b"{}"), 400, "invalid_http",
     "negative Content-Length", raw=True)  # fmt: skip
case("length_twice", raw_request(["Content-Length: 2", "Content-Length: 3"], b"{}"), 400,
     "invalid_http", "two different Content-Lengths", raw=True)  # fmt: skip
case("length_and_chunked", raw_request(["Content-Length: 5", "Transfer-Encoding: chunked"],
     b"0\r\n\r\n"), 400, "invalid_http", "Content-Length with chunked", raw=True)  # fmt: skip
case("length_not_a_number", raw_request(["Content-Length: 2x"], b"{}"), 400, "invalid_http",
     "Content-Length: 2x", raw=True)  # fmt: skip


def main() -> None:
    for old in HERE.glob("*.body"):
        old.unlink()
    for old in HERE.glob("*.json"):
        old.unlink()
    for c in CASES:
        (HERE / f"{c['name']}.body").write_bytes(c["body"])
        sidecar = {k: v for k, v in c.items() if k not in ("name", "body")}
        (HERE / f"{c['name']}.json").write_text(json.dumps(sidecar, indent=1) + "\n")
    print(f"{len(CASES)} cases written to {HERE}")


if __name__ == "__main__":
    main()
