"""Fuzzing the ingest API through HTTP (issue 12), the short run of every ``pytest``: any
route, body (messages with wrong types and values nested to 1,100 levels, often mutated:
cut, a byte changed or added, junk; maybe gzip'd, maybe cut after) and authentication form,
sent to a real ``heaprelay serve``. Every answer is a 200 having stored each message, or a
4xx ``{"code", "message"}`` having stored nothing; never a 5xx. ``bench/fuzz.py`` runs the
same for minutes."""

from __future__ import annotations

from _served import ServedRelay
from hypothesis import event, given

from heaprelay.testing.fuzz import FuzzRequest, check_answer, ci_settings, fuzz_requests

KEYS = ("open-key", "small-key")


@ci_settings(150)
@given(fuzz_requests(KEYS))
def test_any_request_is_stored_whole_or_refused_with_a_4xx(
    served_relay: ServedRelay, request: FuzzRequest
) -> None:
    before = served_relay.jobs()
    answer = served_relay.http.post(request.route, content=request.body, headers=request.headers)
    data = check_answer(answer.status_code, answer.headers.get("content-type", ""), answer.content)
    after = served_relay.jobs()
    if answer.status_code == 200:
        event("stored")
        assert after == before + request.messages, (request, data)
    else:
        event(f"{answer.status_code} {data['code']}")
        assert after == before, (request, data)
