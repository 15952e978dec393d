"""Heap's rate limits, enforced on our side so that delivery does not provoke 429s.

A :class:`TokenBucket` is pure state that takes ``now`` (a monotonic reading): it never
sleeps. :meth:`TokenBucket.reserve` books tokens and says *when* the booking may be used;
the worker waits that long (backpressure as a signal) and then sends. Because bookings are
made in order, concurrent senders share the budget without exceeding it.

Heap documents (bulk track): 15,000 events per minute per app_id and 1,000 events per minute
per identity per app_id. :class:`RateLimiter` keeps one bucket per app_id and one per
(app_id, identity), refilled at ``limit / window`` and holding at most ``burst`` tokens.
``burst`` is kept small (one bulk request), far below Heap's own allowance of a whole
minute's budget, so a relay that restarts or a request that arrives late never overruns
Heap's bucket. ``time_scale`` divides the window (compressed-time benchmarks against the fake
Heap, which takes the same factor).

``share`` is this process's part of the budget when several worker processes deliver from one
queue (see :mod:`heaprelay.router.service`): every rate and burst is multiplied by it, so N
workers with ``share = 1/N`` together stay within Heap's budget. :meth:`RateLimiter.set_share`
changes it at run time, keeping each bucket's debt and bookings (see there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["RateLimiter", "TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    rate: float
    """Tokens per second."""
    burst: float
    tokens: float = field(default=-1.0)
    updated: float | None = None

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if self.updated is not None and now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        if self.updated is None or now > self.updated:
            self.updated = now

    def available_at(self, n: float, now: float) -> float:
        """The earliest time at which ``n`` tokens could be taken (``now`` if already)."""
        self._refill(now)
        if self.tokens >= n:
            return now
        return now + (n - self.tokens) / self.rate

    def reserve(self, n: float, now: float) -> float:
        """Book ``n`` tokens; return when they may be used (may leave the bucket in debt)."""
        at = self.available_at(n, now)
        self.tokens -= n
        return at


@dataclass(slots=True)
class RateLimiter:
    app_per_minute: int = 15_000
    identity_per_minute: int = 1_000
    time_scale: float = 1.0
    #: Tokens a bucket may hold (at most one bulk request's worth by default).
    app_burst: int = 1000
    identity_burst: int = 100
    enabled: bool = True
    #: This process's part of the budget (0 < share <= 1); change it with :meth:`set_share`.
    share: float = 1.0
    _apps: dict[str, TokenBucket] = field(default_factory=dict)
    _identities: dict[tuple[str, str], TokenBucket] = field(default_factory=dict)

    @property
    def window(self) -> float:
        return 60.0 / self.time_scale

    def _app_shape(self) -> tuple[float, float]:
        """(rate, burst) of an app bucket at the current share."""
        rate = self.app_per_minute / self.window * self.share
        return rate, min(self.app_burst, self.app_per_minute) * self.share

    def _identity_shape(self) -> tuple[float, float]:
        rate = self.identity_per_minute / self.window * self.share
        return rate, min(self.identity_burst, self.identity_per_minute) * self.share

    def _bucket_app(self, app_id: str) -> TokenBucket:
        bucket = self._apps.get(app_id)
        if bucket is None:
            bucket = self._apps[app_id] = TokenBucket(*self._app_shape())
        return bucket

    def _bucket_identity(self, app_id: str, identity: str) -> TokenBucket:
        key = (app_id, identity)
        bucket = self._identities.get(key)
        if bucket is None:
            bucket = self._identities[key] = TokenBucket(*self._identity_shape())
        return bucket

    def set_share(self, share: float, now: float) -> None:
        """Use ``share`` of the budget from ``now`` on (``0 < share <= 1``).

        Each bucket is first refilled up to ``now`` at the old rate, then takes the new rate
        and burst. Tokens above the new burst are dropped; a debt (bookings already made) is
        kept whole and is paid off at the new rate, so a smaller share makes the next booking
        wait longer and never lets this process send more than its new share from then on. A
        larger share only speeds up the refill (no tokens are granted at once)."""
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share!r}")
        if share == self.share:
            return
        self.share = share
        for buckets, (rate, burst) in (
            (self._apps.values(), self._app_shape()),
            (self._identities.values(), self._identity_shape()),
        ):
            for bucket in buckets:
                bucket.available_at(0.0, now)  # refill at the old rate up to now
                bucket.rate = rate
                bucket.burst = burst
                bucket.tokens = min(bucket.tokens, burst)

    def identity_wait(self, app_id: str, identity: str, n: int, now: float) -> float:
        """Seconds until ``n`` more events for the identity fit (without booking)."""
        if not self.enabled:
            return 0.0
        return self._bucket_identity(app_id, identity).available_at(n, now) - now

    def identity_allowance(self, app_id: str, identity: str, within: float, now: float) -> int:
        """How many events of the identity could be sent within ``within`` seconds."""
        if not self.enabled:
            return 1 << 62
        bucket = self._bucket_identity(app_id, identity)
        bucket.available_at(0.0, now)  # refill up to now
        return max(0, int(bucket.tokens + bucket.rate * within))

    def reserve(self, app_id: str, identities: Mapping[str, int], now: float) -> float:
        """Book a bulk track request (events per identity); return seconds to wait before
        sending it. A request larger than a bucket's burst is booked whole (it waits for the
        refill)."""
        if not self.enabled:
            return 0.0
        at = self._bucket_app(app_id).reserve(sum(identities.values()), now)
        for identity, n in identities.items():
            at = max(at, self._bucket_identity(app_id, identity).reserve(n, now))
        return max(0.0, at - now)

    def cancel(self, app_id: str, identities: Mapping[str, int]) -> None:
        """Give back a booking that will not be used."""
        if not self.enabled:
            return
        self._bucket_app(app_id).tokens += sum(identities.values())
        for identity, n in identities.items():
            self._bucket_identity(app_id, identity).tokens += n

    def debt_wait(self, now: float) -> float:
        """Seconds until no app bucket is in debt (claim more work only then)."""
        if not self.enabled:
            return 0.0
        at = max((b.available_at(0.0, now) for b in self._apps.values()), default=now)
        return max(0.0, at - now)

    def pause(self, app_id: str, seconds: float, now: float) -> None:
        """Heap answered 429: book no more for ``app_id`` for ``seconds`` from ``now``."""
        if not self.enabled:
            return
        bucket = self._bucket_app(app_id)
        bucket.available_at(0.0, now)  # refill up to now first
        bucket.tokens = min(bucket.tokens, -seconds * bucket.rate)

    def claim_wait(self, now: float, lookahead_requests: float = 2.0) -> float:
        """Seconds to wait before claiming more work: until the app budget's debt is down to
        ``lookahead_requests`` bulk requests' worth. Claiming that far ahead lets the next
        request be claimed and prepared while the budget refills, so the budget is used
        fully; not further, so that claimed jobs do not sit leased for long."""
        if not self.enabled:
            return 0.0
        wait = 0.0
        for bucket in self._apps.values():
            lead = lookahead_requests * bucket.burst / bucket.rate
            wait = max(wait, bucket.available_at(0.0, now) - now - lead)
        return wait

    def prune(self, now: float) -> None:
        """Forget full identity buckets (they behave like new ones)."""
        for key, bucket in list(self._identities.items()):
            if bucket.available_at(bucket.burst, now) <= now:
                del self._identities[key]
