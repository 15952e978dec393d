"""``heaprelay audiences sync / list / show`` with membership files, against a real relay
(``heaprelay serve --sandbox``: its embedded fake Heap) on a real SQLite file and on real
PostgreSQL (a database of its own per test)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from heaprelay.testing.postgres import own_database
from heaprelay.testing.servers import free_port

NAME = "Order Completed Last 30days"
KEY = "order_completed_last_30days"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """The queue flags of the relay and of the commands: a data dir, or a PostgreSQL
    database of the test's own."""
    if request.param == "sqlite":
        yield ["--data-dir", str(tmp_path / "data")]
        return
    pg_url: str = request.getfixturevalue("pg_url")
    with own_database(pg_url, "heaprelay_aud") as url:
        yield ["--queue", url]


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


@contextlib.contextmanager
def relay(tmp_path: Path, flags: list[str]) -> Iterator[str]:
    """``heaprelay serve --sandbox`` (profile heap) on the store; yields its URL."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    env = {**_clean_env(), "HEAPRELAY_PORT": str(port)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "heaprelay", "serve", "--sandbox", *flags],
            env=env,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, "the relay to be ready")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()


def audiences(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heaprelay", "audiences", *args],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
        check=False,
    )


def sync(flags: list[str], file: Path, *extra: str) -> dict[str, Any]:
    done = audiences("sync", NAME, str(file), *flags, "--json", *extra)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def show(flags: list[str]) -> dict[str, Any]:
    done = audiences("show", NAME, *flags, "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def sent_users(url: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """How many user-property updates the fake Heap accepted, and the users it holds."""
    updates = sum(
        r["items"]
        for r in httpx.get(f"{url}/fake-heap/_fake/requests").json()
        if "user_properties" in r["endpoint"] and r["status"] == 200
    )
    return updates, httpx.get(f"{url}/fake-heap/_fake/users").json()


def delivered(flags: list[str], jobs: int) -> bool:
    c = show(flags)["destinations"].get("heap", {})
    return bool(c.get("delivered", 0) == jobs and c.get("pending", 0) == 0)


def test_three_syncs_send_exactly_the_differences_across_restarts(
    tmp_path: Path, store: list[str]
) -> None:
    first = tmp_path / "members-1.csv"
    first.write_text("user_id,plan\nu1,pro\nu2,\nu3,free\n")
    if store[0] == "--data-dir":
        # The queue must exist (as for `heaprelay send`): the relay creates it.
        with relay(tmp_path, store):
            pass
    else:
        migrated = subprocess.run(
            [sys.executable, "-m", "heaprelay", "db", "migrate", *store],
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=60,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stderr

    # Run 1, relay stopped: every member, true, with its traits.
    one = sync(store, first)
    assert (one["sync"], one["first"], one["key"]) == (1, True, KEY)
    assert (one["entered"], one["left"], one["jobs"]) == (["u1", "u2", "u3"], [], 3)
    with relay(tmp_path, store) as url:
        wait_until(lambda: delivered(store, 3), "sync 1 delivered")
        assert sent_users(url) == (
            3,
            {
                "u1": {"plan": "pro", KEY: "true"},
                "u2": {KEY: "true"},
                "u3": {"plan": "free", KEY: "true"},
            },
        )
        # The same file again: nothing to send, nothing enqueued.
        again = sync(store, first)
        assert (again["sync"], again["entered"], again["left"], again["jobs"]) == (2, [], [], 0)
        assert show(store)["last_jobs"] == 0

    # Run 3 after a restart: u1 leaves, u4 enters; u3's changed trait alone is not sent.
    second = tmp_path / "members-2.ndjson"
    second.write_text(
        '{"user_id": "u2"}\n{"user_id": "u3", "plan": "pro"}\n{"user_id": "u4", "n": 7}\n'
    )
    three = sync(store, second)
    assert (three["entered"], three["left"], three["unchanged"]) == (["u4"], ["u1"], 2)
    with relay(tmp_path, store) as url:
        wait_until(lambda: delivered(store, 2), "sync 3 delivered")
        # A new relay: its fake Heap saw only this sync's updates.
        assert sent_users(url) == (2, {"u1": {KEY: "false"}, "u4": {"n": 7, KEY: "true"}})
        # Run 4 while the relay runs: u2 leaves, u1 comes back.
        third = tmp_path / "members-3.csv"
        third.write_text("user_id\nu3\nu4\nu1\n")
        four = sync(store, third)
        assert (four["entered"], four["left"], four["members"]) == (["u1"], ["u2"], 3)
        wait_until(lambda: delivered(store, 2), "sync 4 delivered")
        assert sent_users(url) == (
            4,
            {"u1": {KEY: "true"}, "u2": {KEY: "false"}, "u4": {"n": 7, KEY: "true"}},
        )

    shown = show(store)
    assert shown["syncs"] == 4
    assert (shown["members"], shown["last_entered"], shown["last_left"]) == (3, 1, 1)
    assert shown["destinations"] == {
        "heap": {"delivered": 2, "pending": 0, "dead": 0, "skipped": 0}
    }
    listed = audiences("list", *store, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(a["name"], a["key"], a["members"]) for a in orjson.loads(listed.stdout)] == [
        (NAME, KEY, 3)
    ]
    table = audiences("list", *store)
    assert table.returncode == 0
    assert KEY in table.stdout
    assert "heap: 2/0/0" in table.stdout


def test_bad_files_are_refused_with_their_line_and_nothing_is_enqueued(
    tmp_path: Path, store: list[str]
) -> None:
    if store[0] == "--data-dir":
        with relay(tmp_path, store):
            pass
    good = tmp_path / "good.csv"
    good.write_text("user_id\na\nb\n")
    sync(store, good)
    bad = {
        "no-column.csv": ("email\nx@example.com\n", ":1: no user_id column"),
        "empty-id.csv": ("user_id,plan\na,pro\n,free\n", ":3: user_id is empty"),
        "long-id.ndjson": (
            '{"user_id": "a"}\n{"user_id": "' + "x" * 256 + '"}\n',
            ":2: user_id is 256",
        ),
        "bad-json.ndjson": ('{"user_id": "a"}\n\n{"user_id": "b"\n', ":3: not JSON"),
        "no-id.ndjson": ('{"user_id": "a"}\n{"email": "b"}\n', ":2: no user_id"),
    }
    for name, (text, _) in bad.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "latin1.csv").write_bytes("user_id\na\nb\nJos\u00e9\n".encode("latin-1"))
    bad["latin1.csv"] = ("", ":4: not valid UTF-8")
    for name, (_, expected) in bad.items():
        done = audiences("sync", NAME, str(tmp_path / name), *store)
        assert done.returncode == 1, (name, done.stderr)
        line = done.stderr.strip()
        assert "\n" not in line, line
        assert expected in line, line
        assert "nothing synced" in line, line
    shown = show(store)
    assert (shown["syncs"], shown["members"], shown["last_jobs"]) == (1, 2, 2)
    # A file of no members (a truncated export?) would make everyone leave: refused unless
    # asked for.
    empty = tmp_path / "empty.csv"
    empty.write_text("user_id\n\n")
    done = audiences("sync", NAME, str(empty), *store)
    assert done.returncode == 1, done.stderr
    assert "lists no members" in done.stderr, done.stderr
    assert "--allow-empty" in done.stderr, done.stderr
    assert show(store)["syncs"] == 1
    done = audiences("sync", NAME, str(empty), *store, "--allow-empty", "--json")
    assert done.returncode == 0, done.stderr
    assert sorted(orjson.loads(done.stdout)["left"]) == ["a", "b"]


def test_the_key_is_fixed_at_the_first_sync(tmp_path: Path, store: list[str]) -> None:
    if store[0] == "--data-dir":
        with relay(tmp_path, store):
            pass
    members = tmp_path / "m.csv"
    members.write_text("user_id\na\n")
    dry = audiences("sync", NAME, str(members), *store, "--key", "big_spenders", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0] == "+ a"
    assert "would send (dry run) 1 updates" in dry.stdout
    assert audiences("show", NAME, *store).returncode == 2  # a dry run stored nothing
    first = sync(store, members, "--key", "big_spenders")
    assert first["key"] == "big_spenders"
    other = audiences("sync", NAME, str(members), *store, "--key", KEY)
    assert other.returncode == 2
    assert "has key 'big_spenders' since its first sync" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    # Without --key the stored key is used; another audience cannot take the key.
    assert sync(store, members)["key"] == "big_spenders"
    taken = audiences("sync", "Big Spenders!", str(members), *store, "--key", "big_spenders")
    assert taken.returncode == 2
    assert "already audience" in taken.stderr
    assert show(store)["syncs"] == 2
