import pytest
from hypothesis import given
from hypothesis import strategies as st

from heaprelay.router.ratelimit import RateLimiter, TokenBucket


def test_bucket_grants_burst_then_paces_at_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=5)
    assert bucket.reserve(5, now=0.0) == 0.0
    assert bucket.reserve(10, now=0.0) == 1.0  # 10 more tokens take a second
    assert bucket.reserve(1, now=0.5) == 1.1  # still in debt until 1.0


def test_bucket_refills_only_to_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=5)
    bucket.reserve(5, now=0.0)
    assert bucket.available_at(5, now=100.0) == 100.0
    assert bucket.available_at(6, now=100.0) == 100.1


@given(st.lists(st.tuples(st.integers(1, 1000), st.floats(0, 5)), min_size=1, max_size=60))
def test_never_more_than_budget_in_any_window(requests: list[tuple[int, float]]) -> None:
    """Sending each booking at the time it says never exceeds burst + rate * elapsed."""
    limiter = RateLimiter(app_per_minute=15_000, time_scale=1.0, app_burst=1000)
    now = 0.0
    sends: list[tuple[float, int]] = []
    for n, gap in requests:
        now += gap
        wait = limiter.reserve("app", {f"user{n % 7}": 0} | {"x": n}, now)
        sends.append((now + wait, n))
        now += wait  # a worker waits before booking the next one
    sends.sort()
    for i, (start, _) in enumerate(sends):
        total = 0
        for t, n in sends[i:]:
            total += n
            assert total <= 1000 + 250 * (t - start) + 1e-6


def test_time_scale_compresses_the_window() -> None:
    limiter = RateLimiter(app_per_minute=15_000, time_scale=60.0, app_burst=1000)
    assert limiter.reserve("a", {f"u{i}": 10 for i in range(100)}, 0.0) == 0.0
    # a minute's budget per second: 15,000 tokens/s
    assert abs(limiter.reserve("a", {f"v{i}": 15 for i in range(1000)}, 0.0) - 1.0) < 1e-9


def test_identity_limit_paces_a_hot_identity() -> None:
    limiter = RateLimiter(identity_per_minute=1000, identity_burst=100)
    assert limiter.reserve("a", {"hot": 100}, 0.0) == 0.0
    wait = limiter.reserve("a", {"hot": 100, "cold": 1}, 0.0)
    assert abs(wait - 6.0) < 1e-9  # 100 events at 1000/min
    assert limiter.identity_wait("a", "cold", 1, 0.0) == 0.0


def test_disabled_limiter_never_waits() -> None:
    limiter = RateLimiter(enabled=False)
    assert limiter.reserve("a", {"u": 10**6}, 0.0) == 0.0
    assert limiter.debt_wait(0.0) == 0.0


def test_debt_wait_reports_app_debt() -> None:
    limiter = RateLimiter(app_per_minute=600, app_burst=10)  # 10 per second
    limiter.reserve("a", {"u": 30}, 0.0)
    assert abs(limiter.debt_wait(0.0) - 2.0) < 1e-9
    assert limiter.debt_wait(2.0) == 0.0


def test_claim_wait_lets_workers_claim_two_requests_ahead() -> None:
    limiter = RateLimiter(app_per_minute=60_000, app_burst=1000)  # 1000 per second
    assert limiter.claim_wait(0.0) == 0.0  # no app seen yet
    limiter.reserve("a", {f"u{i}": 1 for i in range(1000)}, 0.0)  # burst used
    assert limiter.claim_wait(0.0) == 0.0
    for _ in range(3):
        limiter.reserve("a", {f"u{i}": 1 for i in range(1000)}, 0.0)
    # 3 s of debt, 2 s of lookahead: claim again in 1 s
    assert abs(limiter.claim_wait(0.0) - 1.0) < 1e-9
    assert limiter.claim_wait(1.0) == 0.0


def test_pause_after_a_429_holds_every_sender_of_the_app() -> None:
    limiter = RateLimiter(app_per_minute=60_000, app_burst=1000)  # 1000 per second
    limiter.pause("a", 5.0, now=10.0)
    assert abs(limiter.reserve("a", {"u": 1}, 10.0) - 5.001) < 1e-9
    assert limiter.reserve("b", {"u": 1}, 10.0) == 0.0
    RateLimiter(enabled=False).pause("a", 5.0, now=0.0)  # no-op when limits are off


def app_only(per_minute: int) -> RateLimiter:
    """A limiter whose identity limits are out of the way; app burst 1000."""
    return RateLimiter(
        app_per_minute=per_minute, identity_per_minute=10**9, app_burst=1000, identity_burst=10**9
    )


def test_share_scales_rate_and_burst() -> None:  # 1000 events per second at share 1
    limiter = app_only(60_000)
    limiter.set_share(0.5, now=0.0)
    assert limiter.reserve("a", {"u": 500}, 0.0) == 0.0  # burst 500
    assert abs(limiter.reserve("a", {"u": 500}, 0.0) - 1.0) < 1e-9  # 500 per second
    assert abs(limiter.claim_wait(0.0) - 0.0) < 1e-9  # lookahead scales with the share


def test_share_change_keeps_the_debt_and_refills_at_the_old_rate_first() -> None:
    limiter = app_only(60_000)
    assert limiter.reserve("a", {"u": 1000}, 0.0) == 0.0
    assert limiter.reserve("a", {"u": 2000}, 0.0) == 2.0  # 2000 in debt, to be sent at t = 2
    limiter.set_share(0.5, now=1.0)  # 1 s at the old rate: 1000 left in debt, now at 500/s
    assert abs(limiter.reserve("a", {"u": 1}, 1.0) - 2.002) < 1e-9
    # back to the whole budget: no tokens granted at once, the refill is faster
    limiter.set_share(1.0, now=3.002)  # debt paid exactly at 3.002
    assert abs(limiter.reserve("a", {"u": 1000}, 3.002) - 1.0) < 1e-9


def test_a_smaller_share_drops_tokens_above_the_new_burst() -> None:
    limiter = app_only(60_000)
    limiter.reserve("a", {"u": 1}, 0.0)
    limiter.set_share(0.25, now=10.0)  # the bucket was full (1000): now at most 250
    assert limiter.reserve("a", {"u": 250}, 10.0) == 0.0
    assert abs(limiter.reserve("a", {"u": 250}, 10.0) - 1.0) < 1e-9  # 250 per second


def test_identity_buckets_take_the_share_too() -> None:
    limiter = RateLimiter(identity_per_minute=1000, identity_burst=100)
    limiter.reserve("a", {"hot": 100}, 0.0)
    limiter.set_share(0.5, now=0.0)  # 100 tokens owed at 500/min now
    assert abs(limiter.identity_wait("a", "hot", 50, 0.0) - 6.0) < 1e-9  # min(0, 50 burst)
    assert limiter.identity_allowance("a", "cold", 0.0, 0.0) == 50


def test_share_must_be_a_fraction() -> None:
    limiter = RateLimiter()
    for bad in (0.0, -1.0, 1.5):
        with pytest.raises(ValueError, match="share"):
            limiter.set_share(bad, now=0.0)


@given(
    st.integers(1, 4),
    st.lists(st.tuples(st.integers(0, 3), st.integers(1, 250), st.floats(0, 2)), max_size=80),
)
def test_workers_at_their_share_never_exceed_the_whole_budget(
    workers: int, requests: list[tuple[int, int, float]]
) -> None:
    """N limiters at 1/N each, sending whenever their bookings allow: together they never send
    more than one limiter with the whole budget could (burst + rate * elapsed)."""
    limiters = []
    for _ in range(workers):
        limiter = app_only(15_000)
        limiter.set_share(1 / workers, now=0.0)
        limiters.append(limiter)
    clocks = [0.0] * workers
    sends: list[tuple[float, int]] = []
    for who, n, gap in requests:
        w = who % workers
        clocks[w] += gap
        wait = limiters[w].reserve("app", {"x": n}, clocks[w])
        clocks[w] += wait
        sends.append((clocks[w], n))
    sends.sort()
    for i, (start, _) in enumerate(sends):
        total = 0
        for t, n in sends[i:]:
            total += n
            assert total <= 1000 + 250 * (t - start) + 1e-6
