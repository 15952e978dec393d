"""The audiences' schedule inside ``serve`` (``audience_service``): each audience evaluated
once a period, by one relay of those sharing a store (two handles of one PostgreSQL database,
or of one SQLite file), with the diff enqueued; ``audiences run --dry-run`` enqueues nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from heaprelay.audiences.rules import audience_service
from heaprelay.cli import main
from heaprelay.clock import ManualClock
from heaprelay.config import Audience, AudienceRule, Config, Destination, Source
from heaprelay.queue import open_queue
from heaprelay.queue.base import AudienceStore, HistoryEvent, Queue
from heaprelay.runtime import Runtime
from heaprelay.transform import DestinationSettings

DAY = 86400.0
T0 = 1_767_323_045.0
EVERY = 3600.0


class Counting:
    """A queue handle that counts the schedule's looks (claim_audience_run) and passes every
    call to the real queue."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.looks = 0

    async def claim_audience_run(self, key: str, *, now: float, every: float) -> bool:
        self.looks += 1
        claimed: bool = await self.queue.claim_audience_run(  # type: ignore[attr-defined]
            key, now=now, every=every
        )
        return claimed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)


def config(queue_url: str, tmp_path: Path) -> Config:
    web = Source(
        "web",
        "web-key",
        (Destination("heap", DestinationSettings(app_id="1")),),
        history_window=30 * DAY,
    )
    rule = AudienceRule(event="Order Completed", within=30 * DAY)
    audience = Audience("Buyers", "buyers", "web", EVERY, rule)
    return Config(sources=(web,), data_dir=tmp_path, queue_url=queue_url, audiences=(audience,))


def test_two_relays_evaluate_an_audience_once_a_period(tmp_path: Path, store_url: str) -> None:
    cfg = config(store_url, tmp_path)
    clock = ManualClock(T0)

    async def main_() -> None:
        handles = [Counting(await open_queue(store_url)) for _ in range(2)]
        store = handles[0].queue
        assert isinstance(store, AudienceStore)
        orders = [
            HistoryEvent("web", u, "Order Completed", T0 - DAY, None, f"m-{u}")
            for u in ("u1", "u2")
        ]
        await store.append([], now=T0, history=orders)
        runtimes = [Runtime(config=cfg, clock=clock, queue=h) for h in handles]  # type: ignore[arg-type]
        tasks = [asyncio.create_task(audience_service(r, tick=0.02)) for r in runtimes]

        async def looks_by_both(n: int) -> None:
            """Until each relay has looked ``n`` more times at which audiences are due."""
            start = [h.looks for h in handles]
            for _ in range(3000):
                if all(h.looks >= s + n for h, s in zip(handles, start, strict=True)):
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("the schedule did not look at the audiences")

        try:
            await looks_by_both(3)
            first = await store.audience("Buyers")
            assert first is not None
            assert (first.syncs, first.members) == (1, 2)  # once, whichever relay it was
            # Within the period nothing more; one more event is not sent before the next one.
            u3 = orders[0]._replace(user_id="u3", message_id="m-u3")
            await store.append([], now=T0, history=[u3])
            clock.advance(EVERY - 1)
            await looks_by_both(3)
            assert (await store.audience("Buyers")).syncs == 1  # type: ignore[union-attr]
            clock.advance(1)
            await looks_by_both(3)
            second = await store.audience("Buyers")
            assert second is not None
            assert (second.syncs, second.members, second.last_entered) == (2, 3, 1)
            stats = await store.stats()
            assert stats.totals["heap"]["received"] == 3  # u1, u2, then u3: once each
        finally:
            for r in runtimes:
                r.stopping.set()
            await asyncio.gather(*tasks)
            for h in handles:
                await h.queue.close()

    asyncio.run(main_())


def test_dry_run_enqueues_nothing(tmp_path: Path, store_url: str) -> None:
    server = f'queue_url = "{store_url}"' if store_url.startswith("postgres") else ""
    path = tmp_path / "heaprelay.toml"
    path.write_text(
        f"""
[server]
data_dir = "{tmp_path}"
{server}

[[sources]]
name = "web"
write_key = "web-key"
  [[sources.destinations]]
  id = "heap"
  app_id = "1"

[[audiences]]
name = "Buyers"
source = "web"
  [audiences.rule]
  event = "Order Completed"
  within = "30d"
"""
    )

    async def seed() -> None:
        queue = await open_queue(store_url)
        try:
            await queue.append(
                [], now=T0, history=[HistoryEvent("web", "u1", "Order Completed", T0 - DAY)]
            )
        finally:
            await queue.close()

    asyncio.run(seed())
    run = ["audiences", "run", "--config", str(path), "--now", str(T0)]
    dry = CliRunner().invoke(main, [*run, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "1 members (first sync, 1 entered, 0 left, 0 unchanged); would send 1 updates" in (
        dry.output
    )
    real = CliRunner().invoke(main, run)
    assert real.exit_code == 0, real.output
    assert "enqueued 1 updates (1 jobs)" in real.output  # the dry run stored no snapshot
    again = CliRunner().invoke(main, run)
    assert "1 members (0 entered, 0 left, 1 unchanged); enqueued 0 updates" in again.output


def test_the_schedule_evaluates_computed_traits_too(tmp_path: Path, store_url: str) -> None:
    cfg = config(store_url, tmp_path)
    rule = AudienceRule(event="Order Completed", within=30 * DAY, count=True)
    trait = Audience("Orders", "orders", "web", EVERY, rule)
    cfg = Config(sources=cfg.sources, data_dir=tmp_path, queue_url=store_url, audiences=(trait,))
    clock = ManualClock(T0)

    async def main_() -> None:
        store = await open_queue(store_url)
        assert isinstance(store, AudienceStore)
        orders = [
            HistoryEvent("web", "u1", "Order Completed", T0 - DAY, None, m) for m in ("a", "b")
        ]
        await store.append([], now=T0, history=orders)
        runtime = Runtime(config=cfg, clock=clock, queue=store)
        task = asyncio.create_task(audience_service(runtime, tick=0.02))
        try:
            for _ in range(3000):
                if await store.audience("Orders") is not None:
                    break
                await asyncio.sleep(0.01)
            record = await store.audience("Orders")
            assert record is not None
            assert (record.kind, record.members) == ("trait", 1)
            assert await store.audience_values("Orders") == {"u1": 2.0}
        finally:
            runtime.stopping.set()
            await task
            await store.close()

    asyncio.run(main_())
