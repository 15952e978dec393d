import random

import pytest

from heaprelay.heap.client import HeapAnswer
from heaprelay.messages.reasons import Reason
from heaprelay.queue.base import DeadLetter, Delivered, RetryAt
from heaprelay.router.retry import RetryPolicy, classify, decide, parse_retry_after

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "ok"),
        (204, "ok"),
        (0, "retry"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (400, "reject"),
        (404, "reject"),
        (413, "reject"),
        (301, "reject"),
    ],
)
def test_classify(status: int, kind: str) -> None:
    assert classify(HeapAnswer(status)) == kind


def test_success_is_delivered_with_the_answer() -> None:
    out = decide(7, HeapAnswer(200), attempts=0, first_attempt_at=None, now=NOW, retry_window=60)
    assert out == Delivered(7, answer="200")


def test_rejection_dead_letters_at_once_with_heaps_answer() -> None:
    answer = HeapAnswer(400, "Bad Request: events[0].identity: longer than 255 characters")
    out = decide(3, answer, attempts=5, first_attempt_at=NOW - 10, now=NOW, retry_window=3600)
    assert isinstance(out, DeadLetter)
    assert out.reason is Reason.HEAP_REJECTED
    assert "identity: longer than 255" in out.answer


def test_backoff_grows_exponentially_within_jitter_and_cap() -> None:
    policy = RetryPolicy(base=1.0, cap=60.0)
    rng = random.Random(1)
    for attempts in range(12):
        out = decide(
            1,
            HeapAnswer(503),
            attempts=attempts,
            first_attempt_at=NOW,
            now=NOW,
            retry_window=10**6,
            policy=policy,
            rng=rng,
        )
        assert isinstance(out, RetryAt)
        full = min(60.0, 2.0**attempts)
        assert full / 2 <= out.at - NOW <= full
        assert out.reason == "http_503"


def test_jitter_spreads_workers_that_failed_together() -> None:
    rng = random.Random(5)
    delays = {
        decide(
            1,
            HeapAnswer(0, error="x"),
            attempts=4,
            first_attempt_at=NOW,
            now=NOW,
            retry_window=10**6,
            rng=rng,
        ).at  # type: ignore[union-attr]
        for _ in range(20)
    }
    assert len(delays) > 15


def test_retry_after_is_a_floor() -> None:
    out = decide(
        1,
        HeapAnswer(429, retry_after="30"),
        attempts=0,
        first_attempt_at=None,
        now=NOW,
        retry_window=3600,
        rng=random.Random(0),
    )
    assert isinstance(out, RetryAt)
    assert out.at == NOW + 30


def test_retry_after_http_date() -> None:
    assert parse_retry_after("Tue, 14 Nov 2023 22:14:20 GMT", now=1699999990.0) == 70.0
    assert parse_retry_after("soon", now=NOW) is None
    assert parse_retry_after(None, now=NOW) is None


def test_last_retry_lands_at_the_window_end_then_dead_letter() -> None:
    out = decide(
        1,
        HeapAnswer(503),
        attempts=20,
        first_attempt_at=NOW - 95,
        now=NOW,
        retry_window=100,
        policy=RetryPolicy(cap=300),
    )
    assert isinstance(out, RetryAt)
    assert out.at == NOW + 5
    late = decide(
        1,
        HeapAnswer(503, "down"),
        attempts=21,
        first_attempt_at=NOW - 100,
        now=NOW,
        retry_window=100,
    )
    assert isinstance(late, DeadLetter)
    assert late.reason is Reason.RETRY_WINDOW_EXCEEDED
    assert late.answer == "503 down"


def test_network_error_is_retried_and_described() -> None:
    out = decide(
        1,
        HeapAnswer(0, error="ConnectError: refused"),
        attempts=0,
        first_attempt_at=None,
        now=NOW,
        retry_window=60,
    )
    assert isinstance(out, RetryAt)
    assert out.reason == "network_error"
    assert "ConnectError" in out.answer
