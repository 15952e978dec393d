"""The router against the real fake Heap (loopback HTTP) with the in-memory reference queue."""

import asyncio
import functools
import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from heaprelay.clock import ManualClock, SystemClock
from heaprelay.config import Config, DeliverySettings, Destination, Source
from heaprelay.heap.client import HeapClient
from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.messages.reasons import Reason
from heaprelay.queue.base import NewJob
from heaprelay.queue.memory import MemoryQueue
from heaprelay.router import Router
from heaprelay.router.retry import RetryPolicy
from heaprelay.router.service import delivery_service
from heaprelay.runtime import Runtime
from heaprelay.testing.servers import serve_in_thread
from heaprelay.transform import DestinationSettings

APP = "4242"


def sync(fn: Callable[..., Any]) -> Callable[..., None]:
    """Run an async test body on a fresh event loop (no async pytest plugin here)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


@pytest.fixture
def fake() -> FakeHeap:
    return FakeHeap(FakeHeapSettings(rate_limits=False, seed=7))


@pytest.fixture
def heap_url(fake: FakeHeap) -> Iterator[str]:
    with serve_in_thread(fake.app) as url:
        yield url


def destination(
    url: str, retry_window: float = 3600.0, profile: str = "segment-actions"
) -> Destination:
    region = "US" if profile.startswith("segment-") else None
    settings = DestinationSettings(app_id=APP, profile=profile, region_setting=region, base_url=url)
    return Destination(id="heap", settings=settings, retry_window=retry_window)


def identify(n: int, identity: str, traits: dict[str, Any]) -> NewJob:
    message = {
        "type": "identify",
        "userId": identity,
        "messageId": f"m{n}",
        "traits": traits,
        "timestamp": "2026-01-01T00:00:00Z",
    }
    return NewJob("src", "heap", f"m{n}", identity, orjson.dumps(message), 0.0)


def track(n: int, identity: str) -> NewJob:
    message = {
        "type": "track",
        "event": "Played",
        "userId": identity,
        "anonymousId": f"a-{identity}",
        "messageId": f"track-msg-{n}",
        "properties": {"n": n},
        "timestamp": "2026-01-01T00:00:00Z",
    }
    return NewJob("src", "heap", f"track-msg-{n}", identity, orjson.dumps(message), 0.0)


async def drive(
    queue: MemoryQueue, router: Router, done: Callable[[], bool], timeout: float = 20.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        assert loop.time() < deadline, "delivery did not finish in time"
        if await router.run_once() == 0:
            await asyncio.sleep(0.02)


def finished(queue: MemoryQueue) -> Callable[[], bool]:
    def check() -> bool:
        return not any(
            queue.state_of(i) in ("pending", "leased", "retry")
            for i in range(1, 100_000)
            if queue.state_of(i) is not None
        )

    return check


async def run(
    jobs: list[NewJob],
    url: str,
    *,
    settings: DeliverySettings | None = None,
    retry_window: float = 3600.0,
    timeout: float = 20.0,
) -> tuple[MemoryQueue, Router]:
    queue = MemoryQueue()
    clock = SystemClock()
    await queue.append(jobs, now=clock.now())
    async with HeapClient() as client:
        router = Router(
            queue,
            {"heap": destination(url, retry_window)},
            client,
            clock,
            settings or DeliverySettings(flush_interval=0.0, rate_limits=False),
            policy=RetryPolicy(base=0.05, cap=0.3),
            rng=random.Random(3),
        )
        await drive(queue, router, finished(queue), timeout)
    return queue, router


@sync
async def test_jobs_go_out_in_bulk_requests(heap_url: str, fake: FakeHeap) -> None:
    jobs = [identify(i, f"user{i % 10}", {"n": i}) for i in range(50)]
    jobs += [track(i, f"user{i % 10}") for i in range(30)]
    queue, _router = await run(jobs, heap_url)
    assert sorted((r["endpoint"], r["items"]) for r in fake.requests()) == [
        ("add_user_properties", 50),
        ("integrations/track", 30),
    ]
    assert fake.users(APP)["user3"] == {"n": "43"}
    assert len(fake.events(APP)) == 30
    assert {e["idempotency_key"] for e in fake.events(APP)} == {f"track-msg-{i}" for i in range(30)}
    assert (await queue.stats()).by_state["delivered"] == 80


@sync
async def test_outage_every_event_delivered_once_none_dead(heap_url: str, fake: FakeHeap) -> None:
    fake.update({"outage_seconds": 1.0})
    jobs = [track(i, f"user{i % 7}") for i in range(200)]
    queue, _router = await run(jobs, heap_url)
    stats = await queue.stats()
    assert stats.by_state["delivered"] == 200
    assert stats.by_state["dead"] == 0
    assert fake.report()["by_status"].get("503", 0) >= 1
    keys = [e["idempotency_key"] for e in fake.events(APP)]
    assert sorted(keys) == sorted(f"track-msg-{i}" for i in range(200))


@sync
async def test_lost_answers_only_repeat_idempotency_keys(heap_url: str, fake: FakeHeap) -> None:
    fake.update({"accept_then_fail_rate": 0.5})
    jobs = [track(i, f"user{i % 7}") for i in range(100)]
    queue, _ = await run(
        jobs,
        heap_url,
        settings=DeliverySettings(batch_size=10, flush_interval=0.0, rate_limits=False),
    )
    assert (await queue.stats()).by_state["delivered"] == 100
    report = fake.report()
    assert report["accepted_events"] == 100
    assert report["duplicates"] > 0  # resent after a lost answer, absorbed by the key


@sync
async def test_one_invalid_item_is_isolated_and_dead_lettered(
    heap_url: str, fake: FakeHeap
) -> None:
    jobs = [identify(i, f"user{i}", {"n": i}) for i in range(20)]
    jobs[13] = identify(13, "x" * 300, {"n": 13})
    queue, _ = await run(jobs, heap_url)
    assert len(fake.users(APP)) == 19
    [dead] = await queue.dead_letters()
    assert dead.id == 14
    assert dead.reason == Reason.HEAP_REJECTED
    assert dead.answer.startswith("400 Bad Request: users[0].identity: longer than 255")
    stats = await queue.stats()
    assert stats.by_state["delivered"] == 19


@sync
async def test_order_per_identity_survives_failures(heap_url: str, fake: FakeHeap) -> None:
    fake.update({"error_rate": 0.3, "accept_then_fail_rate": 0.1})
    jobs = [identify(i, "alice", {"version": i}) for i in range(200)]
    queue, _ = await run(
        jobs,
        heap_url,
        settings=DeliverySettings(
            batch_size=7, flush_interval=0.0, rate_limits=False, concurrency=4
        ),
        timeout=60,
    )
    assert (await queue.stats()).by_state["delivered"] == 200
    assert fake.users(APP) == {"alice": {"version": "199"}}


@sync
async def test_retry_window_ends_in_a_dead_letter_with_the_last_answer(
    heap_url: str, fake: FakeHeap
) -> None:
    fake.update({"outage_seconds": 60})
    queue, _ = await run([track(1, "bob")], heap_url, retry_window=0.5)
    [dead] = await queue.dead_letters()
    assert dead.reason == Reason.RETRY_WINDOW_EXCEEDED
    assert dead.answer.startswith("503")
    assert dead.attempts >= 2


@sync
async def test_network_errors_are_retried() -> None:
    # nothing listens on this port until the fake starts
    from heaprelay.testing.servers import free_port

    port = free_port()
    fake = FakeHeap(FakeHeapSettings(rate_limits=False))
    queue = MemoryQueue()
    clock = SystemClock()
    await queue.append([track(1, "bob")], now=clock.now())
    async with HeapClient() as client:
        router = Router(
            queue,
            {"heap": destination(f"http://127.0.0.1:{port}")},
            client,
            clock,
            DeliverySettings(flush_interval=0.0),
            policy=RetryPolicy(base=0.05, cap=0.1),
        )
        await router.run_once()
        assert queue.state_of(1) == "retry"
        with serve_in_thread(fake.app, port=port):
            await drive(queue, router, finished(queue))
    assert queue.state_of(1) == "delivered"
    assert router.stats.requests[0] >= 1


@sync
async def test_unknown_destination_and_skips_are_recorded(heap_url: str) -> None:
    orphan = NewJob("src", "gone", "m1", "k", b'{"type":"track"}', 0.0)
    filtered = identify(2, "u", {"a": 1})
    msg = orjson.loads(filtered.payload) | {"integrations": {"Heap": False}}
    filtered = NewJob("src", "heap", "m2", "u", orjson.dumps(msg), 0.0)
    queue, _ = await run([orphan, filtered], heap_url)
    [dead] = await queue.dead_letters()
    assert dead.reason == Reason.DESTINATION_REMOVED
    assert (await queue.stats()).by_reason.get("filtered_integrations") == 1


@sync
async def test_rate_limits_on_compressed_time_no_429(heap_url: str, fake: FakeHeap) -> None:
    """Heap's limits (scaled down and compressed, same factors on both sides): no 429."""
    limits = {"app_events_per_minute": 3000, "identity_events_per_minute": 1000}
    fake.update({"rate_limits": True, "time_scale": 60.0, **limits})
    queue = MemoryQueue()
    clock = SystemClock()
    await queue.append([track(i, f"user{i % 40}") for i in range(6000)], now=clock.now())
    settings = DeliverySettings(flush_interval=0.0, rate_limits=True, time_scale=60.0, **limits)
    async with HeapClient() as client:
        router = Router(
            queue, {"heap": destination(heap_url, profile="heap")}, client, clock, settings
        )
        await drive(queue, router, finished(queue), timeout=60)
    report = fake.report()
    assert report["accepted_events"] == 6000
    assert report["rate_limited"] == 0
    assert report["by_endpoint"] == {"track": report["requests"]}


@sync
async def test_429_answers_are_retried_after_retry_after(heap_url: str, fake: FakeHeap) -> None:
    """With our own limiter off, Heap's 429s pause delivery; nothing is lost or dead."""
    # A budget of 1,500 events a second (burst 1,500): the first pass's 4,000 events, bulk
    # requests of 1,000 sent back to back, overrun it unless they take over 1.6 s (3,000 a
    # second was too close to what a loaded machine sends: no 429 at all).
    limits = {"app_events_per_minute": 1500, "identity_events_per_minute": 100_000}
    fake.update({"rate_limits": True, "time_scale": 60.0, **limits})
    queue = MemoryQueue()
    clock = SystemClock()
    await queue.append([track(i, f"user{i % 40}") for i in range(7000)], now=clock.now())
    settings = DeliverySettings(flush_interval=0.0, rate_limits=False, concurrency=2)
    async with HeapClient() as client:
        router = Router(
            queue,
            {"heap": destination(heap_url, profile="heap")},
            client,
            clock,
            settings,
            policy=RetryPolicy(base=0.05, cap=0.2),
        )
        await drive(queue, router, finished(queue), timeout=60)
    report = fake.report()
    assert report["rate_limited"] >= 1
    assert report["accepted_events"] == 7000
    assert (await queue.stats()).by_state["dead"] == 0


@sync
async def test_hot_identity_is_released_not_held_and_keeps_order(
    heap_url: str, fake: FakeHeap
) -> None:
    """An identity over its per-minute budget does not hold the others, nor its jobs leased."""
    limits = {"app_events_per_minute": 100_000, "identity_events_per_minute": 600}
    fake.update({"rate_limits": True, "time_scale": 10.0, **limits})  # 100 per identity per s
    jobs = [track(i, "hot" if i % 2 else f"cold{i}") for i in range(600)]
    queue = MemoryQueue()
    clock = SystemClock()
    await queue.append(jobs, now=clock.now())
    settings = DeliverySettings(
        flush_interval=0.0, rate_limits=True, time_scale=10.0, lease_seconds=0.9, **limits
    )
    async with HeapClient() as client:
        router = Router(
            queue, {"heap": destination(heap_url, profile="heap")}, client, clock, settings
        )
        await drive(queue, router, finished(queue), timeout=60)
    report = fake.report()
    assert report["rate_limited"] == 0
    assert report["accepted_events"] == 600
    assert router.stats.released_jobs > 0
    hot = [e["properties"]["n"] for e in fake.events(APP) if e["identity"] == "hot"]
    assert hot == sorted(hot)


# --- several worker processes share Heap's rate budget ---------------------------------------


@pytest.mark.slow
@sync
async def test_two_workers_on_one_queue_share_the_rate_budget(
    heap_url: str, fake: FakeHeap
) -> None:
    """Two relays' delivery services on one queue (each would use the whole budget alone):
    they heartbeat, each takes half, and Heap (the fake, same limits) answers no 429."""
    limits = {"app_events_per_minute": 1200, "identity_events_per_minute": 100_000}
    fake.update({"rate_limits": True, "time_scale": 60.0, **limits})  # 1,200 events/s
    queue = MemoryQueue()
    clock = SystemClock()
    total = 4000  # 3.3 s of the budget; twice the budget would run into 429s within 1 s
    # one identity per event: a claim leases whole identities, the other worker must find work
    await queue.append([track(i, f"user{i}") for i in range(total)], now=clock.now())
    settings = DeliverySettings(
        batch_size=200,
        flush_interval=0.0,
        rate_limits=True,
        time_scale=60.0,
        concurrency=2,  # so that one worker's loops do not claim the whole backlog at once
        **limits,
    )
    source = Source("src", "key", (destination(heap_url, profile="heap"),))
    runtimes = [
        Runtime(config=Config(sources=(source,), delivery=settings), clock=clock, queue=queue)
        for _ in range(2)
    ]
    services = [
        asyncio.create_task(delivery_service(rt, name=f"w{n}", heartbeat=0.2))
        for n, rt in enumerate(runtimes)
    ]
    live: set[int] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not finished(queue)():
        assert loop.time() < deadline, "delivery did not finish in time"
        live.add(await queue.heartbeat("observer", now=clock.now(), ttl=0.6) - 1)
        await queue.leave("observer")
        await asyncio.sleep(0.1)
    for rt in runtimes:
        rt.stopping.set()
    await asyncio.gather(*services)
    report = fake.report()
    assert report["rate_limited"] == 0
    assert report["accepted_events"] == total
    assert 2 in live  # both were delivering together
    assert await queue.heartbeat("observer", now=clock.now(), ttl=0.6) == 1  # both left


# --- an event that becomes two requests -------------------------------------------------------


class Gate:
    """In front of the fake Heap: answers 503 to ``failing`` requests to paths ending in
    ``path_suffix``, and logs every request that reaches it: (path, status, item ids)."""

    def __init__(self, app: Any, path_suffix: str, failing: int) -> None:
        self.app, self.suffix, self.failing = app, path_suffix, failing
        self.log: list[tuple[str, int, list[int]]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"]
        ids = [_event_number(item) for item in _items(orjson.loads(body))]
        if path.endswith(self.suffix) and self.failing > 0:
            self.failing -= 1
            self.log.append((path, 503, ids))
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"down"})
            return
        status = [0]

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, replay, capture)
        self.log.append((path, status[0], ids))


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    for name in ("events", "users"):
        if isinstance(body.get(name), list):
            return list(body[name])
    return [body]


def _event_number(item: dict[str, Any]) -> int:
    if "idempotency_key" in item:
        return int(str(item["idempotency_key"]).removeprefix("track-msg-"))
    props = item.get("properties") or item.get("custom_properties") or {}
    return int(props["n"])


def track_with_traits(n: int, identity: str) -> NewJob:
    message = orjson.loads(track(n, identity).payload)
    message["context"] = {"traits": {"n": n}}
    return NewJob("src", "heap", f"track-msg-{n}", identity, orjson.dumps(message), 0.0)


@pytest.mark.parametrize(
    ("profile", "options", "users_path"),
    [
        ("segment-actions", {"identity": "userId"}, "/api/add_user_properties"),
        ("segment-heap-cloud", {}, "/api/integrations/add_user_properties"),
    ],
)
@sync
async def test_profile_update_goes_before_its_track_even_when_it_must_be_retried(
    fake: FakeHeap, profile: str, options: dict[str, str], users_path: str
) -> None:
    gate = Gate(fake.app, users_path, failing=3)
    jobs = [track_with_traits(i, f"user{i % 3}") for i in range(30)]
    with serve_in_thread(gate) as url:
        settings = DestinationSettings(
            app_id=APP, profile=profile, region_setting="US", base_url=url, options=options
        )
        queue = MemoryQueue()
        clock = SystemClock()
        await queue.append(jobs, now=clock.now())
        async with HeapClient() as client:
            router = Router(
                queue,
                {"heap": Destination(id="heap", settings=settings)},
                client,
                clock,
                DeliverySettings(batch_size=4, flush_interval=0.0, rate_limits=False),
                policy=RetryPolicy(base=0.05, cap=0.2),
                rng=random.Random(5),
            )
            await drive(queue, router, finished(queue))
    assert (await queue.stats()).by_state["delivered"] == 30
    assert [s for p, s, _ in gate.log if p == users_path].count(503) == 3
    # Every track went out only after its event's profile update had been accepted
    updated: set[int] = set()
    for path, status, ids in gate.log:
        if path == users_path:
            if status == 200:
                updated.update(ids)
        else:
            assert path.endswith("/track")
            assert set(ids) <= updated, f"track of {set(ids) - updated} before its update"
    # ... and per identity, the tracks arrived in event order
    n_events = [e["idempotency_key"] for e in fake.events(APP)]
    for who in range(3):
        mine = [int(k.removeprefix("track-msg-")) for k in n_events]
        mine = [n for n in mine if n % 3 == who]
        assert mine == sorted(mine)
    assert len(n_events) == 30


# --- stopping while a pass waits for rate budget ----------------------------------------------


def _slow_budget_router(queue: MemoryQueue, url: str, client: HeapClient) -> Router:
    # 60 events a minute, bulk requests of 60: the second request waits a minute.
    settings = DeliverySettings(
        batch_size=60,
        flush_interval=0.0,
        rate_limits=True,
        app_events_per_minute=60,
        identity_events_per_minute=10_000,
        concurrency=1,
        lease_seconds=600.0,
    )
    return Router(
        queue, {"heap": destination(url, profile="heap")}, client, SystemClock(), settings
    )


@sync
async def test_stop_while_waiting_for_budget_releases_the_unsent_jobs(
    heap_url: str, fake: FakeHeap
) -> None:
    queue = MemoryQueue()
    await queue.append([track(i, f"user{i}") for i in range(160)], now=SystemClock().now())
    async with HeapClient() as client:
        router = _slow_budget_router(queue, heap_url, client)
        stopping = asyncio.Event()
        task = asyncio.create_task(router.run(stopping))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while fake.report()["accepted_events"] < 60:  # the first request, then a long wait
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        stopping.set()
        await asyncio.wait_for(task, 5)  # returns at once, not after the wait
    states = Counter(queue.state_of(i) for i in range(1, 161))
    assert states == {"delivered": 60, "pending": 100}
    assert fake.report()["accepted_events"] == 60


@sync
async def test_a_cancelled_pass_releases_the_jobs_it_holds(heap_url: str, fake: FakeHeap) -> None:
    queue = MemoryQueue()
    await queue.append([track(i, f"user{i}") for i in range(160)], now=SystemClock().now())
    async with HeapClient() as client:
        router = _slow_budget_router(queue, heap_url, client)
        task = asyncio.create_task(router.run(asyncio.Event()))  # never told to stop
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while fake.report()["accepted_events"] < 60:
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert queue.state_of(160) == "leased"
        task.cancel()  # what the server does once its grace period is over
        with pytest.raises(asyncio.CancelledError):
            await task
    # the first 60 were recorded delivered as soon as Heap accepted them; all the other
    # claimed jobs are claimable again at once
    states = Counter(queue.state_of(i) for i in range(1, 161))
    assert states == {"delivered": 60, "pending": 100}
    jobs = await queue.claim("next", limit=200, lease_seconds=60, now=SystemClock().now())
    assert len(jobs) == 100


# --- a pass that outlasts its lease (issue 12.1) ----------------------------------------------


LEASE = 15.0


class ThievingClock(ManualClock):
    """A manual clock under which, each time a pass sleeps, another worker tries to claim
    everything claimable (as the other loops and relays do while a pass waits)."""

    def __init__(self, queue: MemoryQueue) -> None:
        super().__init__()
        self.queue = queue
        self.stolen: list[int] = []

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        taken = await self.queue.claim("thief", limit=1000, lease_seconds=LEASE, now=self.now())
        self.stolen += [j.id for j in taken]


@sync
async def test_a_pass_splitting_refused_requests_past_its_lease_keeps_its_jobs(
    heap_url: str, fake: FakeHeap
) -> None:
    """Budget 10 events a second, 100 jobs of which 10 are refused: finding them takes
    several leases' worth of budget. The pass renews its leases, records what it settled as
    it goes, and nobody can take its jobs over meanwhile."""
    fake.update({"reject_identities": ["bad"]})
    queue = MemoryQueue()
    clock = ThievingClock(queue)
    jobs = [track(i, "bad" if i % 10 == 3 else f"user{i}") for i in range(100)]
    await queue.append(jobs, now=clock.now())
    settings = DeliverySettings(
        batch_size=100,
        flush_interval=0.0,
        app_events_per_minute=600,
        identity_events_per_minute=100_000,
        lease_seconds=LEASE,
    )
    async with HeapClient() as client:
        router = Router(
            queue,
            {"heap": destination(heap_url, profile="heap")},
            client,
            clock,
            settings,
            claim_requests=1,
        )
        assert await router.run_once() == 100
    assert clock.now() - ManualClock().now() > 2 * LEASE  # the pass outlasted two leases
    assert clock.stolen == []
    states = Counter(queue.state_of(i) for i in range(1, 101))
    assert states == {"delivered": 90, "dead": 10}
    report = fake.report()
    assert (report["accepted_events"], report["duplicates"]) == (90, 0)


@sync
async def test_the_rate_limiter_forgets_identities_whose_budget_is_whole_again() -> None:
    """Memory does not grow with every identity ever sent (a backlog of millions of users)."""
    clock = ManualClock()
    settings = DeliverySettings(flush_interval=0.0)
    async with HeapClient() as client:
        router = Router(MemoryQueue(), {}, client, clock, settings)
        for n in range(1000):
            router.limiter.reserve("app", {f"user{n}": 1}, clock.monotonic())
        assert len(router.limiter._identities) == 1000
        clock.advance(30.0)  # their buckets refill; the router prunes them at its next pass
        assert await router.run_once() == 0
    assert len(router.limiter._identities) == 0
