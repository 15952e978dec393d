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
