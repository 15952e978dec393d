"""Computed traits over stored events, end to end: a randomised history sent through the real
SDK clients (segment-analytics-python, rudder-sdk-python) to a running relay (SQLite and
PostgreSQL), evaluated three times with ``heaprelay audiences run`` (more events between),
gives exactly the per-user counts a brute-force count in Python over the same calls gives,
and the fake Heap receives exactly the values that changed (``0`` for a user whose count is
gone), nothing for users whose value stayed; for a count and for a sum of a property."""

from __future__ import annotations

import datetime
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from _history_sdks import send, server_lines, settled
from click.testing import CliRunner

from heaprelay.cli import main
from heaprelay.config_file import load_config
from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.server import build_app
from heaprelay.testing.servers import serve_in_thread, wait_until

KEY = "trait-write-key"
APP = "4242"
TRAIT = "Orders Last 30 Days"
TRAIT_KEY = "orders_last_30_days"
REVENUE = "Revenue Last 30 Days"
REVENUE_KEY = "revenue_last_30_days"
DAY = 86400.0
WITHIN = 30 * DAY

CONFIG = """
[server]
{server}

[[sources]]
name = "web"
write_key = "{key}"

  [[sources.destinations]]
  id = "heap"
  app_id = "{app}"
  profile = "heap"
  base_url = "{heap}"

[[computed_traits]]
name = "{trait}"
source = "web"
every = "1000d"
  [computed_traits.rule]
  event = "Order Completed"
  within = "30d"
  count = true

[[computed_traits]]
name = "{revenue}"
source = "web"
every = "1000d"
  [computed_traits.rule]
  event = "Order Completed"
  within = "30d"
  sum = "revenue"
"""


def calls_for(rng: random.Random, users: list[str], at: float, n: int) -> list[dict[str, Any]]:
    """``n`` calls around the evaluation time ``at``: orders and views at the window's edges
    (a minute inside and outside), inside it, in the future; plan changes."""
    offsets = [-WITHIN - 60, -WITHIN + 60, -WITHIN + 2 * DAY, -10 * DAY, -3600.0, 60.0]
    out: list[dict[str, Any]] = []
    for _ in range(n):
        user = rng.choice(users)
        call: dict[str, Any] = {"user": user, "id": str(uuid.uuid4())}
        if rng.random() < 0.2:
            plan = rng.choice(["pro", "pro", "free"])
            call |= {"kind": "identify", "traits": {"plan": plan}, "ts": at - rng.random() * DAY}
        else:
            event = rng.choice(["Order Completed", "Order Completed", "Viewed"])
            call |= {"kind": "track", "event": event, "ts": at + rng.choice(offsets)}
            # Revenue: numbers (exact in binary, so that any order of addition gives the
            # same sum), and values a sum ignores.
            revenue = rng.choice([10, 2.5, 0, 99.75, "12", True, None, "missing"])
            call["props"] = {"n": 1} if revenue == "missing" else {"n": 1, "revenue": revenue}
        out.append(call)
    return out


def brute_force(calls: list[dict[str, Any]], at: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each user's values at ``at`` over ``calls``, computed in Python: their orders in the
    window (distinct messageIds), and the sum of those orders' numeric revenues (booleans
    and strings ignored); users without one left out."""
    orders: dict[str, dict[str, Any]] = {}
    for c in calls:
        if c["kind"] != "track" or c["event"] != "Order Completed":
            continue
        if at - WITHIN <= c["ts"] <= at:
            orders.setdefault(c["user"], {})[c["id"]] = c["props"].get("revenue")
    counts = {u: len(ids) for u, ids in orders.items()}
    sums: dict[str, Any] = {}
    for user, revenues in orders.items():
        numbers = [v for v in revenues.values() if type(v) in (int, float)]
        if numbers:
            sums[user] = sum(numbers)
    return counts, sums


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> tuple[str, str]:
    """(the [server] lines, the queue URL) of a store of the test's own."""
    return server_lines(store_url, tmp_path), store_url


def shown(value: float) -> str:
    """A value as the fake Heap keeps it: a whole number as an integer."""
    return str(int(value)) if float(value).is_integer() else str(value)


def test_counts_sums_and_three_diffs_are_exact_at_heap(
    tmp_path: Path, store: tuple[str, str]
) -> None:
    server, queue_url = store
    heap = FakeHeap(FakeHeapSettings(rate_limits=False, seed=5))
    rng = random.Random(1516)
    users = [f"user-{i}" for i in range(24)]
    start = float(int(datetime.datetime.now(datetime.UTC).timestamp()))
    # Far enough apart that the first round's events leave the window by the third.
    evaluations = [start, start + 20 * DAY, start + 45 * DAY]
    traits = ((TRAIT, TRAIT_KEY), (REVENUE, REVENUE_KEY))
    with serve_in_thread(heap.app) as heap_url:
        path = tmp_path / "heaprelay.toml"
        text = CONFIG.format(
            server=server, key=KEY, app=APP, heap=heap_url, trait=TRAIT, revenue=REVENUE
        )
        path.write_text(text)
        config = load_config(path, {})
        sent: list[dict[str, Any]] = []
        ever: dict[str, set[str]] = {TRAIT_KEY: set(), REVENUE_KEY: set()}
        previous: dict[str, dict[str, Any]] = {TRAIT_KEY: {}, REVENUE_KEY: {}}
        changes = 0
        with serve_in_thread(build_app(config)) as relay_url:
            for n, at in enumerate(evaluations):
                # Fewer users each round: the others' values fall, then go back to 0.
                calls = calls_for(rng, users[: 24 - 8 * n], at, 120)
                # The same event sent twice (one messageId) counts once.
                calls += [c for c in calls[:10] if c["kind"] == "track"]
                send(relay_url, KEY, calls)
                sent += calls
                jobs = len(sent)
                wait_until(lambda j=jobs: settled(queue_url, j), "the SDKs' events delivered")
                stamp = datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat()
                counts, sums = brute_force(sent, at)
                for (name, key), values in zip(traits, (counts, sums), strict=True):
                    before = heap.report()["accepted_users"]
                    result = CliRunner().invoke(
                        main, ["audiences", "run", name, "--config", str(path), "--now", stamp]
                    )
                    assert result.exit_code == 0, result.output
                    old = previous[key]
                    changed = {u for u in values if old.get(u) != values[u]}
                    changed |= {u for u in old if u not in values}
                    changes += len(changed)
                    jobs += len(changed)
                    wait_until(lambda j=jobs: settled(queue_url, j), "the trait's updates")
                    # Exactly one user-property update a changed value, none for the others.
                    assert heap.report()["accepted_users"] - before == len(changed), (n, key)
                    ever[key] |= set(values)
                    got = {
                        identity: str(props[key])
                        for identity, props in heap.users(APP).items()
                        if key in props
                    }
                    assert got == {u: shown(values.get(u, 0)) for u in ever[key]}, (n, key)
                    previous[key] = values
        # Values changed and some went back to 0: the history was not so thin that nothing
        # happened.
        for key in (TRAIT_KEY, REVENUE_KEY):
            assert set(previous[key]) != ever[key], key
        assert changes > len(ever[TRAIT_KEY]) + len(ever[REVENUE_KEY])
        # A sum can be 0 (orders of revenue 0 only) and still be a value.
        listed = CliRunner().invoke(main, ["audiences", "show", TRAIT, "--config", str(path)])
        assert listed.exit_code == 0, listed.output
        assert "kind         trait" in listed.output
        assert f"with value   {len(previous[TRAIT_KEY])}" in listed.output
