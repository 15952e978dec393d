"""Routing from one configuration file: ``heaprelay serve --config FILE`` as a real process,
two sources (each with its own write key and a real SDK: segment-analytics-python for "web",
rudder-sdk-python for "backend") and three Heap destinations (web -> a US and an EU app with
different profiles, backend -> a third app) on a real fake Heap on loopback. The fake records
the region from the path prefix (``/us``, ``/eu``) the destination's base URL points at.

Every event must reach exactly the destinations its source, the integrations object, the
event-name filters and consent allow, in the bulk form of each destination's profile; every
event held back must be in the queue with its reason.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner
from rudderstack.analytics.client import Client as RudderClient  # type: ignore[import-untyped]
from segment.analytics.client import Client as SegmentClient  # type: ignore[import-untyped]

from heaprelay.cli import main
from heaprelay.config_file import load_config
from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.router.batcher import items_of
from heaprelay.router.worker import with_idempotency_key
from heaprelay.testing.servers import free_port, serve_in_thread
from heaprelay.transform import Skip, transform

WEB_KEY = "web-write-key-0001"
BACKEND_KEY = "backend-write-key-0002"
US_APP, EU_APP, BACKEND_APP = "1001", "2002", "3003"

CONFIG = """
[server]
host = "127.0.0.1"
port = 1                                     # replaced by --port
data_dir = "{data_dir}"

[delivery]
flush_interval = "20ms"
retry_base = "100ms"
retry_cap = "1s"
rate_limits = false
concurrency = 2

[[sources]]
name = "web"
write_key_env = "ROUTING_WEB_KEY"

  [[sources.destinations]]
  id = "web-us"
  app_id = "{us_app}"
  base_url = "{heap}/us"
  profile = "heap"
  event_filter = {{ mode = "deny", events = ["Internal Debug"] }}

    [[sources.destinations.consent]]
    provider = "oneTrust"
    categories = ["C0002"]

  [[sources.destinations]]
  id = "web-eu"
  app_id = "${{ROUTING_EU_APP}}"
  region = "EU"
  base_url = "{heap}/eu"
  profile = "segment-actions"

[[sources]]
name = "backend"
write_key = "${{ROUTING_BACKEND_KEY}}"

  [[sources.destinations]]
  id = "backend-prod"
  app_id = "{backend_app}"
  base_url = "{heap}/us"
  profile = "rudderstack"

    [sources.destinations.event_filter]
    mode = "allow"
    events = ["Order Completed"]
"""

ENV = {"ROUTING_WEB_KEY": WEB_KEY, "ROUTING_EU_APP": EU_APP, "ROUTING_BACKEND_KEY": BACKEND_KEY}


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.03)


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "heaprelay", "serve", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")}
    return {**env, **extra}


class Relay:
    """``heaprelay serve --config FILE --port PORT`` as a child process."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = serve_command("--config", str(config), "--port", str(self.port))
        self.proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"serve exited {self.proc.returncode}: {stderr}")
            try:
                return httpx.get(self.url + "/readyz", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, what="the relay to listen")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - only on a hung server
            self.proc.kill()
            self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture
def heap() -> Iterator[tuple[FakeHeap, str]]:
    fake = FakeHeap(FakeHeapSettings(rate_limits=False, seed=6))
    with serve_in_thread(fake.app) as url:
        yield fake, url


def jobs(db: Path) -> list[tuple[str, str, str, str | None, dict[str, Any]]]:
    """(source, destination, state, reason, payload) of every job."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT source, destination, state, reason, payload FROM jobs ORDER BY id"
        ).fetchall()
    return [(s, d, st, r, orjson.loads(p)) for s, d, st, r, p in rows]


def send_web(url: str) -> None:
    client = SegmentClient(WEB_KEY, host=url, max_retries=3, upload_interval=0.02)
    client.identify(user_id="ada", anonymous_id="anon-ada", traits={"plan": "pro"})
    client.track(
        user_id="ada", anonymous_id="anon-ada", event="Song Played", properties={"song": "Blue"}
    )
    client.track(
        user_id="ada", anonymous_id="anon-ada", event="Internal Debug", properties={"x": 1}
    )
    client.track(
        user_id="ada",
        anonymous_id="anon-ada",
        event="Ad Clicked",
        context={
            "consentManagement": {  # as RudderStack's SDKs send it
                "provider": "oneTrust",
                "resolutionStrategy": "and",
                "allowedConsentIds": ["C0001"],
                "deniedConsentIds": ["C0002"],
            }
        },
    )
    client.track(
        user_id="ada", anonymous_id="anon-ada", event="Secret", integrations={"Heap": False}
    )
    client.track(
        user_id="ada",
        anonymous_id="anon-ada",
        event="EU Only",
        integrations={"All": False, "web-eu": True},
    )
    client.flush()
    client.shutdown()


def send_backend(url: str) -> None:
    client = RudderClient(BACKEND_KEY, host=url, max_retries=3, upload_interval=0.02, gzip=True)
    client.identify(user_id="bob", traits={"tier": "gold"})
    client.track(user_id="bob", event="Order Completed", properties={"revenue": 12.5})
    client.track(user_id="bob", event="Cart Viewed", properties={"items": 2})
    client.flush()
    client.shutdown()


#: Per destination: the track events it must receive, and the ones held back with the reason.
DELIVERED = {
    "web-us": {"Song Played"},
    "web-eu": {"Song Played", "Internal Debug", "Ad Clicked", "EU Only"},
    "backend-prod": {"Order Completed"},
}
HELD_BACK = {
    ("web-us", "Internal Debug"): "filtered_event_name",
    ("web-us", "Ad Clicked"): "consent_denied",
    ("web-us", "Secret"): "filtered_integrations",
    ("web-eu", "Secret"): "filtered_integrations",
    ("web-us", "EU Only"): "filtered_integrations",
    ("backend-prod", "Cart Viewed"): "filtered_event_name",
}
#: (destination, app_id, region, endpoint of its bulk track form)
WHERE = [
    ("web-us", US_APP, "us", "track"),
    ("web-eu", EU_APP, "eu", "integrations/track"),
    ("backend-prod", BACKEND_APP, "us", "track"),
]


def test_two_sources_three_destinations_from_a_config_file(
    tmp_path: Path, heap: tuple[FakeHeap, str]
) -> None:
    fake, heap_url = heap
    data_dir = tmp_path / "data"
    config_path = tmp_path / "heaprelay.toml"
    config_path.write_text(
        CONFIG.format(
            data_dir=data_dir,
            heap=heap_url,
            us_app=US_APP,
            backend_app=BACKEND_APP,
        )
    )
    db = data_dir / "heaprelay.db"
    relay = Relay(config_path, child_env(**ENV))
    try:
        relay.wait_ready()
        send_web(relay.url)
        send_backend(relay.url)
        # 6 web messages x 2 destinations + 3 backend messages x 1
        wait_until(
            lambda: (
                len(rows := jobs(db)) == 15
                and all(state in ("delivered", "skipped", "dead") for _, _, state, _, _ in rows)
            ),
            what="every job to finish",
        )
        status = CliRunner().invoke(
            main, ["status", "--queue", f"sqlite:///{db}", "--interval", "0", "--json"]
        )
    finally:
        relay.stop()
    assert relay.proc.returncode == 0

    rows = jobs(db)
    assert {(src, dest) for src, dest, *_ in rows} == {
        ("web", "web-us"),
        ("web", "web-eu"),
        ("backend", "backend-prod"),
    }
    assert not [r for r in rows if r[2] == "dead"]
    held = {
        (dest, payload["event"]): reason
        for _, dest, state, reason, payload in rows
        if state == "skipped"
    }
    assert held == HELD_BACK

    # What each app received: exactly its events, in its region, in its profile's bulk form.
    config = load_config(config_path, ENV)
    destinations = config.destinations()
    for dest_id, app_id, region, track_endpoint in WHERE:
        got = fake.events(app_id)
        assert {e["region"] for e in got} == {region}, dest_id
        assert {e["endpoint"] for e in got} == {track_endpoint}, dest_id
        names = Counter(e["event"] for e in got)
        assert names == Counter(DELIVERED[dest_id]), dest_id

        # Byte for byte what the profile makes of each delivered message, as bulk items.
        expected_events: list[dict[str, Any]] = []
        expected_users: dict[str, dict[str, Any]] = {}
        for _, dest, state, _, payload in rows:
            if dest != dest_id or state != "delivered":
                continue
            result = transform(payload, destinations[dest_id].settings)
            assert not isinstance(result, Skip)
            for request in result:
                _, items = items_of(with_idempotency_key(request, payload["messageId"]))
                if request.endpoint.endswith("track"):
                    expected_events.extend(items)
                else:
                    for item in items:
                        identity = str(
                            item.get("identity") or item["user_identifier"].get("identity")
                        )
                        props = item.get("properties", item.get("custom_properties", {}))
                        expected_users.setdefault(identity, {}).update(props)
        received = [
            {k: v for k, v in e.items() if k not in ("app_id", "endpoint", "region", "received_at")}
            for e in got
        ]
        assert sorted(map(orjson.dumps, received)) == sorted(map(orjson.dumps, expected_events))
        assert fake.users(app_id) == expected_users, dest_id
    assert set(fake.users(US_APP)) == set(fake.users(EU_APP)) == {"ada"}
    assert set(fake.users(BACKEND_APP)) == {"bob"}
    assert all(r["status"] == 200 for r in fake.requests())

    # The reasons are visible where an operator looks: `heaprelay status --json`.
    assert status.exit_code == 0, status.output
    report = orjson.loads(status.output)
    assert report["by_reason"] == dict(Counter(HELD_BACK.values()))


BAD_CONFIG = """
[server]
port = 99999

[[sources]]
name = "web"
write_key = "k"

  [[sources.destinations]]
  app_id = "1"
  profile = "amplitude"
"""


def test_serve_refuses_an_invalid_config_with_the_messages_of_config_check(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_CONFIG)
    served = subprocess.run(
        serve_command("--config", str(path)),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    checked = CliRunner().invoke(main, ["config", "check", str(path)], env={})
    assert served.returncode == 1
    assert checked.exit_code == 1
    assert served.stderr == checked.stderr
    assert f"{path}:3: server.port:" in served.stderr
    assert "unknown profile 'amplitude'" in served.stderr


def test_serve_config_from_the_environment_variable(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_CONFIG)
    served = subprocess.run(
        serve_command(),
        env=child_env(HEAPRELAY_CONFIG=str(path)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert served.returncode == 1
    assert "server.port" in served.stderr


@pytest.mark.parametrize("flag", [["--app-id", "1"], ["--write-key", "k"], ["--region", "eu"]])
def test_per_destination_flags_with_config_are_a_usage_error(
    tmp_path: Path, flag: list[str]
) -> None:
    path = tmp_path / "heaprelay.toml"
    path.write_text(
        '[[sources]]\nname = "a"\nwrite_key = "k"\n[[sources.destinations]]\napp_id = "1"\n'
    )
    result = CliRunner().invoke(main, ["serve", "--config", str(path), *flag], env={})
    assert result.exit_code == 2
    assert f"{flag[0]} cannot be combined with --config" in result.stderr


def test_flags_override_the_file(tmp_path: Path) -> None:
    """--data-dir and --port win over [server]; --sandbox delivers to the embedded fake Heap."""
    path = tmp_path / "heaprelay.toml"
    path.write_text(
        '[server]\nport = 1\ndata_dir = "/nonexistent/never-used"\nrole = "api"\n'
        '[[sources]]\nname = "a"\nwrite_key = "key-a"\n'
        '[[sources.destinations]]\napp_id = "77"\nbase_url = "http://127.0.0.1:9"\n'
        '[[sources.destinations]]\napp_id = "78"\nregion = "eu"\n'
    )
    port = free_port()
    data_dir = tmp_path / "flags"
    command = serve_command(
        "--config",
        str(path),
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--role",
        "all",
        "--sandbox",
    )
    proc = subprocess.Popen(command, env=child_env(), stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                return httpx.get(url + "/readyz", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, what="the relay to listen")
        answer = httpx.post(
            url + "/v1/track",
            json={"userId": "u", "event": "E", "messageId": "m1"},
            auth=("key-a", ""),
        )
        assert answer.status_code == 200, answer.text

        def delivered() -> bool:
            report = httpx.get(url + "/fake-heap/_fake/report").json()
            return bool(report["accepted_events"] == 2)

        wait_until(delivered, what="delivery to the embedded fake Heap")  # role all, sandbox
        events = httpx.get(url + "/fake-heap/_fake/events").json()
        # Each destination keeps its region in the sandbox's report.
        assert sorted((e["app_id"], e["region"]) for e in events) == [("77", "us"), ("78", "eu")]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
    assert (data_dir / "heaprelay.db").exists()


def test_per_destination_variables_with_config_are_ignored_with_a_warning(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_CONFIG)
    result = CliRunner().invoke(
        main, ["serve", "--config", str(path)], env={"HEAPRELAY_APP_ID": "9"}
    )
    assert result.exit_code == 1  # the file's problems, not a usage error
    assert "warning: --config given; ignoring HEAPRELAY_APP_ID" in result.stderr
    assert "unknown profile 'amplitude'" in result.stderr
