"""Audiences over stored events, end to end: a randomised history sent through the real SDK
clients (segment-analytics-python, rudder-sdk-python) to a running relay (SQLite and
PostgreSQL), evaluated three times with ``heaprelay audiences run`` (more events between),
gives exactly the members a brute-force count in Python over the same calls gives, and the
fake Heap receives exactly who entered (``key = true``) and who left (``key = false``)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _python_sdks import CLIENT_SETUP
from click.testing import CliRunner

from heaprelay.cli import main
from heaprelay.config_file import load_config
from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.queue import open_queue
from heaprelay.server import build_app
from heaprelay.testing.postgres import own_database
from heaprelay.testing.servers import serve_in_thread, wait_until

KEY = "audience-write-key"
APP = "4242"
AUDIENCE = "Repeat Pro Buyers"
AUDIENCE_KEY = "repeat_pro_buyers"
DAY = 86400.0
WITHIN = 30 * DAY
AT_LEAST = 2

DRIVER = (
    r"""
import datetime, json, sys
sdk, host, key = sys.argv[1:4]
calls = json.loads(sys.stdin.read())
"""
    + CLIENT_SETUP
    + r"""
for c in calls:
    when = datetime.datetime.fromtimestamp(c["ts"], datetime.timezone.utc)
    if c["kind"] == "identify":
        client.identify(user_id=c["user"], traits=c["traits"], timestamp=when,
                        message_id=c["id"])
    else:
        client.track(user_id=c["user"], event=c["event"], properties={"n": 1},
                     timestamp=when, message_id=c["id"])
client.flush()
client.shutdown() if hasattr(client, "shutdown") else client.join()
print(json.dumps({"errors": errors}))
"""
)

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


def send(url: str, calls: list[dict[str, Any]]) -> None:
    """Each user's calls through one SDK, in order: even users Segment's, odd RudderStack's."""
    for sdk, parity in (("segment", 0), ("rudder", 1)):
        mine = [c for c in calls if int(c["user"].removeprefix("user-")) % 2 == parity]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, sdk, url, KEY],
            input=json.dumps(mine),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1])["errors"] == []


def settled(queue_url: str, received: int) -> bool:
    """Every job appended so far (at least ``received``) is finished."""

    async def read() -> bool:
        queue = await open_queue(queue_url)
        try:
            stats = await queue.stats()
        finally:
            await queue.close()
        total = sum(per.get("received", 0) for per in stats.totals.values())
        unfinished = sum(stats.by_state.get(s, 0) for s in ("pending", "leased", "retry"))
        return total >= received and unfinished == 0

    return asyncio.run(read())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(the [server] lines, the queue URL) of a store of its own."""
    if request.param == "sqlite":
        yield f'data_dir = "{tmp_path}"', f"sqlite:///{tmp_path / 'heaprelay.db'}"
        return

    pg_url: str = request.getfixturevalue("pg_url")
    with own_database(pg_url, "heaprelay_aud") as url:
        yield f'queue_url = "{url}"\ndata_dir = "{tmp_path}"', url


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
                send(relay_url, calls)
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
