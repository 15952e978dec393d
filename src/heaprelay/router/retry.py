"""The retry policy: what one Heap answer means for one job. Pure: no I/O, no clock.

``decide`` returns the job's outcome as a value (:class:`Delivered`, :class:`RetryAt` or
:class:`DeadLetter`). A 400 on a *bulk* request is not decided here: the worker first splits
the request to find the offending items (see :mod:`heaprelay.router.worker`); only a
request that still fails on its own reaches :func:`decide`.

Backoff: ``base * 2**attempts`` capped at ``cap``, with "equal jitter" (half fixed, half
random) so that workers that failed together do not come back together. A ``Retry-After``
from Heap is a floor. Retries go on until ``retry_window`` seconds after the first attempt;
the last retry is scheduled at the window's end, so every job gets a try then. An answer
after the window has passed dead-letters the job with ``retry_window_exceeded``.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass
from typing import Literal, Protocol

from heaprelay.heap.client import HeapAnswer
from heaprelay.messages.reasons import Reason
from heaprelay.queue.base import DeadLetter, Delivered, RetryAt

__all__ = ["Kind", "RetryPolicy", "classify", "decide", "parse_retry_after"]

Kind = Literal["ok", "retry", "reject"]


class Random(Protocol):
    def random(self) -> float: ...


def classify(answer: HeapAnswer) -> Kind:
    """2xx: ok. Network errors, 408, 429 and 5xx: retry. Any other status: reject."""
    if answer.ok:
        return "ok"
    if answer.status == 0 or answer.status in (408, 429) or answer.status >= 500:
        return "retry"
    return "reject"


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: float = 1.0
    cap: float = 300.0

    def backoff(self, attempts: int, rng: Random) -> float:
        """Delay before the next try, after ``attempts`` failed ones (``attempts >= 1``)."""
        full = min(self.cap, self.base * 2.0 ** max(0, attempts - 1))
        return full / 2 + rng.random() * full / 2


def decide(
    job_id: int,
    answer: HeapAnswer,
    *,
    attempts: int,
    first_attempt_at: float | None,
    now: float,
    retry_window: float,
    policy: RetryPolicy | None = None,
    rng: Random | None = None,
) -> Delivered | RetryAt | DeadLetter:
    """The outcome of one job whose request got ``answer`` at ``now``.

    ``attempts`` counts earlier tries (as in :class:`~heaprelay.queue.base.Job`);
    ``first_attempt_at`` is ``None`` when this was the first one.
    """
    kind = classify(answer)
    text = answer.describe()
    if kind == "ok":
        return Delivered(job_id, answer=text)
    if kind == "reject":
        return DeadLetter(
            job_id, Reason.HEAP_REJECTED, f"Heap answered {answer.status}", answer=text
        )
    first = now if first_attempt_at is None else first_attempt_at
    deadline = first + retry_window
    if now >= deadline:
        return DeadLetter(
            job_id,
            Reason.RETRY_WINDOW_EXCEEDED,
            f"still failing {now - first:.0f}s after the first attempt "
            f"(retry window {retry_window:.0f}s)",
            answer=text,
        )
    delay = (policy or RetryPolicy()).backoff(attempts + 1, rng or random.Random())
    hinted = parse_retry_after(answer.retry_after, now=now)
    if hinted is not None:
        delay = max(delay, hinted)
    reason = "network_error" if answer.status == 0 else f"http_{answer.status}"
    return RetryAt(job_id, at=min(now + delay, deadline), reason=reason, answer=text)
