"""Issue 12 item 2: properties nested deeper than ``orjson`` writes (254 levels) made ingest
answer 500 (SDKs retry a 5xx for ever). Now: stored whole up to the limit, refused over it
with a 400 that names the limit, nothing stored; over what ``orjson`` reads (1024 levels in
the body) the same code. Through HTTP to a real ``heaprelay serve``."""

from __future__ import annotations

import orjson
import pytest
from _served import ServedRelay

from heaprelay.messages.incoming import MAX_DEPTH
from heaprelay.testing.servers import wait_until


def nested(levels: int) -> str:
    """JSON text of ``levels`` objects nested in each other."""
    return '{"a":' * levels + "1" + "}" * levels


def track_with_properties(levels: int) -> bytes:
    """A track whose message is ``levels + 1`` levels deep (the message, then properties)."""
    return ('{"userId":"u1","event":"Deep","properties":' + nested(levels) + "}").encode()


@pytest.mark.parametrize("levels", [100, 253, 254, 255, 600, 1023, 1024, 1100])
def test_deep_properties_are_stored_or_refused_with_the_limit(served_relay: ServedRelay, levels):
    before = served_relay.jobs()
    answer = served_relay.post("/v1/track", track_with_properties(levels))
    depth = levels + 1
    if depth <= MAX_DEPTH:
        assert answer.status_code == 200, answer.text
        assert served_relay.jobs() == before + 1
        return
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["code"] == "nesting_too_deep"
    assert str(MAX_DEPTH) in body["message"]
    assert served_relay.jobs() == before


@pytest.mark.parametrize("levels", [252, 253, 600, 1020, 1100])
def test_deep_message_in_a_batch_refuses_the_whole_batch(served_relay: ServedRelay, levels):
    ok = {"type": "track", "userId": "u1", "event": "Fine"}
    deep = '{"type":"track","userId":"u1","event":"Deep","properties":' + nested(levels) + "}"
    body = ('{"batch":[' + orjson.dumps(ok).decode() + "," + deep + "]}").encode()
    before = served_relay.jobs()
    answer = served_relay.post("/v1/batch", body)
    if levels + 1 <= MAX_DEPTH:
        assert answer.status_code == 200, answer.text
        assert served_relay.jobs() == before + 2
        return
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "nesting_too_deep"
    assert served_relay.jobs() == before


@pytest.mark.parametrize("kind", ["track", "identify"])
def test_the_deepest_stored_message_is_delivered_or_dead_with_a_reason(
    served_relay: ServedRelay, kind: str
):
    """The router and the transform cope with what ingest stores: a message of exactly
    MAX_DEPTH levels ends delivered (the heap profile flattens it), or not sent with a reason."""
    field = "properties" if kind == "track" else "traits"
    message_id = f"deepest-{kind}"
    body = (
        f'{{"type":"{kind}","userId":"u1","event":"Deep","messageId":"{message_id}",'
        f'"{field}":' + nested(MAX_DEPTH - 1) + "}"
    ).encode()
    answer = served_relay.post("/v1/batch", b'{"batch":[' + body + b"]}")
    assert answer.status_code == 200, answer.text
    rows = wait_until(lambda: served_relay.finished(message_id), "the deep message's job")
    for state, reason, _ in rows:
        assert state == "delivered" or reason, rows


def test_a_deep_value_a_profile_moves_up_is_dead_lettered_not_a_stuck_job(
    served_relay: ServedRelay,
):
    """rudderstack moves ``properties.idempotencyKey`` as it is to the top-level
    ``idempotency_key``: from a message of MAX_DEPTH levels, a bulk request orjson cannot
    write. The router raised (the job stayed leased, a traceback a pass); now it is a dead
    letter with the reason."""
    message_id = "deep-idempotency-key"
    body = (
        f'{{"userId":"u1","event":"Deep","messageId":"{message_id}",'
        '"properties":{"idempotencyKey":' + nested(MAX_DEPTH - 2) + "}}"
    ).encode()
    answer = served_relay.post("/v1/track", body, key="rudder-key")
    assert answer.status_code == 200, answer.text
    rows = wait_until(lambda: served_relay.finished(message_id), "the job to finish", 30)
    assert [(state, reason) for state, reason, _ in rows] == [("dead", "invalid_field")]
    assert "cannot be written as JSON" in rows[0][2]
