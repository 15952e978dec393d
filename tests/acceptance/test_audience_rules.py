"""Audiences over stored events, end to end: a randomised history sent through the real SDK
clients (segment-analytics-python, rudder-sdk-python) to a running relay (SQLite and
PostgreSQL), evaluated three times with ``heaprelay audiences run`` (more events between),
gives exactly the members a brute-force count in Python over the same calls gives, and the
fake Heap receives exactly who entered (``key = true``) and who left (``key = false``)."""

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

KEY = "audience-write-key"
APP = "4242"
AUDIENCE = "Repeat Pro Buyers"
AUDIENCE_KEY = "repeat_pro_buyers"
DAY = 86400.0
WITHIN = 30 * DAY
AT_LEAST = 2

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

[[audiences]]
name = "{audience}"
source = "web"
every = "1000d"
  [audiences.rule]
  event = "Order Completed"
  at_least = {at_least}
  within = "30d"
  traits = {{ plan = "pro" }}
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
        out.append(call)
    return out


def brute_force(calls: list[dict[str, Any]], at: float) -> set[str]:
    """Members at ``at`` over ``calls`` (in the order sent): the rule, counted in Python."""
    orders: dict[str, int] = {}
    plan: dict[str, Any] = {}
    for c in calls:
        if c["kind"] == "identify":
            plan[c["user"]] = c["traits"]["plan"]
        elif c["event"] == "Order Completed" and at - WITHIN <= c["ts"] <= at:
            orders[c["user"]] = orders.get(c["user"], 0) + 1
    return {u for u, n in orders.items() if n >= AT_LEAST and plan.get(u) == "pro"}


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> tuple[str, str]:
    """(the [server] lines, the queue URL) of a store of the test's own."""
    return server_lines(store_url, tmp_path), store_url


def test_rule_members_and_three_diffs_are_exact_at_heap(
    tmp_path: Path, store: tuple[str, str]
) -> None:
    server, queue_url = store
    heap = FakeHeap(FakeHeapSettings(rate_limits=False, seed=3))
    rng = random.Random(1515)
    users = [f"user-{i}" for i in range(24)]
    start = float(int(datetime.datetime.now(datetime.UTC).timestamp()))
    evaluations = [start, start + 5 * DAY, start + 11 * DAY]
    with serve_in_thread(heap.app) as heap_url:
        path = tmp_path / "heaprelay.toml"
        path.write_text(
            CONFIG.format(
                server=server,
                key=KEY,
                app=APP,
                heap=heap_url,
                audience=AUDIENCE,
                at_least=AT_LEAST,
            )
        )
        config = load_config(path, {})
        sent: list[dict[str, Any]] = []
        ever: set[str] = set()
        previous: set[str] = set()
        with serve_in_thread(build_app(config)) as relay_url:
            for n, at in enumerate(evaluations):
                calls = calls_for(rng, users, at, 160)
                send(relay_url, KEY, calls)
                sent += calls
                jobs = len(sent)
                wait_until(lambda j=jobs: settled(queue_url, j), "the SDKs' events delivered")
                before = heap.report()["accepted_users"]
                stamp = datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat()
                result = CliRunner().invoke(
                    main, ["audiences", "run", AUDIENCE, "--config", str(path), "--now", stamp]
                )
                assert result.exit_code == 0, result.output
                members = brute_force(sent, at)
                entered, left = members - previous, previous - members
                jobs = len(sent) + len(entered) + len(left)
                wait_until(lambda j=jobs: settled(queue_url, j), "the audience's updates")
                # Exactly one user-property update a change, none for users unchanged.
                assert heap.report()["accepted_users"] - before == len(entered) + len(left), n
                ever |= members
                got = {
                    identity: str(props[AUDIENCE_KEY]).lower()
                    for identity, props in heap.users(APP).items()
                    if AUDIENCE_KEY in props
                }
                assert got == {u: "true" if u in members else "false" for u in ever}, n
                previous = members
        # Some entered, some left: the history was not so thin that nothing happened.
        assert len(ever) >= 4
        assert previous != ever
