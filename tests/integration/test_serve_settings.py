"""``heaprelay serve`` settings reachable without a file (``--option``, ``HEAPRELAY_OPTION``,
``HEAPRELAY_SANDBOX``), the README's first run, and what a ``--role worker`` relay answers.
Real ``heaprelay serve`` processes on loopback ports."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from heaprelay.config import Config, Destination, Source
from heaprelay.server import build_app
from heaprelay.testing.servers import free_port, serve_in_thread
from heaprelay.transform import DestinationSettings

README = Path(__file__).resolve().parents[2] / "README.md"


@contextlib.contextmanager
def serving(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, Path]]:
    """``heaprelay serve ARGS`` on a free port (HEAPRELAY_PORT) with its data in tmp_path;
    yields (its URL, the file holding its stderr) once it is ready; stops it with SIGTERM."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")}
    full_env = {
        **clean,
        "HEAPRELAY_PORT": str(port),
        "HEAPRELAY_DATA_DIR": str(tmp_path / "data"),
        **(env or {}),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "heaprelay", "serve", *args], env=full_env, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url, proc, log), "the relay to be ready")
        yield url, log
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()


def _ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, log.read_text()
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def states(data_dir: Path) -> dict[str, int]:
    with sqlite3.connect(data_dir / "heaprelay.db") as conn:
        return dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())


def first_run_block() -> list[str]:
    """The commands of README's block "With the relay of the first command running"."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index("With the relay of the first command running") :]
    block = re.search(r"```sh\n(.*?)```", after, flags=re.S)
    assert block is not None
    commands = block.group(1).replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in commands.splitlines() if line.strip()]


def test_readmes_first_run_works_against_the_sandbox(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    assert "heaprelay serve --sandbox\n```" in text  # the first command, as README gives it
    commands = first_run_block()
    assert commands[0].startswith("curl -u sandbox: http://127.0.0.1:8787/v1/track")
    with serving(tmp_path, "--sandbox") as (url, log):
        port = url.rsplit(":", 1)[1]
        outputs = []
        for command in commands:
            argv = shlex.split(command.replace("127.0.0.1:8787", f"127.0.0.1:{port}"))
            assert argv[0] == "curl"
            done = subprocess.run(
                [*argv, "--silent", "--show-error", "--fail-with-body"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            outputs.append(done.stdout)
        assert orjson.loads(outputs[0]) == {"success": True}
        wait_until(
            lambda: httpx.get(f"{url}/fake-heap/_fake/events").json(), "the fake Heap's event"
        )
        (event,) = httpx.get(f"{url}/fake-heap/_fake/events").json()
        assert (event["identity"], event["event"]) == ("u1", "Signed Up")
        assert event["properties"] == {"plan": "pro"}
    assert "sandbox: delivering to the embedded fake Heap" in log.read_text()


IDENTIFY = {"userId": "u1", "traits": {"plan": "pro"}}


def test_segment_profile_warns_and_its_identifies_are_refused_by_heap(tmp_path: Path) -> None:
    with serving(tmp_path, "--profile", "segment", env={"HEAPRELAY_SANDBOX": "1"}) as (url, log):
        answer = httpx.post(f"{url}/v1/identify", auth=("sandbox", ""), json=IDENTIFY)
        assert answer.status_code == 200
        wait_until(lambda: states(tmp_path / "data").get("dead"), "the dead letter")
    stderr = log.read_text()
    assert "warning: destination heap: profile 'segment' adds the user property id" in stderr
    dead = subprocess.run(
        [sys.executable, "-m", "heaprelay", "dlq", "list", "--json"],
        env={**os.environ, "HEAPRELAY_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        check=True,
    )
    (record,) = map(orjson.loads, dead.stdout.splitlines())
    assert record["reason"] == "heap_rejected"
    assert "id" in record["answer"]


def test_option_flag_and_variable_reach_the_profile(tmp_path: Path) -> None:
    for n, (args, env) in enumerate(
        [
            (("--sandbox", "--profile", "segment", "--option", "id_property=_id"), {}),
            (
                ("--sandbox",),
                {"HEAPRELAY_PROFILE": "segment", "HEAPRELAY_OPTION": "id_property=_id"},
            ),
        ]
    ):
        run_dir = tmp_path / str(n)
        run_dir.mkdir()
        with serving(run_dir, *args, env=env) as (url, log):
            answer = httpx.post(f"{url}/v1/identify", auth=("sandbox", ""), json=IDENTIFY)
            assert answer.status_code == 200

            def users() -> Any:
                return httpx.get(f"{url}/fake-heap/_fake/users").json()

            wait_until(users, "the user at the fake Heap")
            assert users() == {"u1": {"plan": "pro", "_id": "u1", "segment_library": ""}}
        assert "warning" not in log.read_text()
        assert states(run_dir / "data") == {"delivered": 1}


def test_a_worker_says_it_accepts_no_events(tmp_path: Path) -> None:
    settings = DestinationSettings(app_id="1")
    source = Source("s", "k", (Destination("heap", settings),))
    config = Config(sources=(source,), role="worker", data_dir=tmp_path)
    with serve_in_thread(build_app(config, services=[])) as url:
        for path in ("/v1/track", "/v1/batch", "/beacon/v1/batch"):
            answer = httpx.post(f"{url}{path}", auth=("k", ""), json={"userId": "u", "event": "E"})
            assert answer.status_code == 404, path
            body = answer.json()
            assert body["code"] == "ingest_not_served"
            assert "--role worker: it only delivers" in body["message"]
        for other_path in ("/nope", "/v1/nope", "/v1/projects/k/settings"):
            other = httpx.get(f"{url}{other_path}")
            assert other.json()["code"] == "not_found", other_path


def test_every_serve_flag_has_a_variable_listed_in_the_readme() -> None:
    import click

    from heaprelay.cli.serve import command

    listed = README.read_text(encoding="utf-8").split("every flag also from the environment:")[1]
    listed = listed.split("```")[0]
    options = [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]
    for option in options:
        assert isinstance(option.envvar, str), f"{option.opts} has no variable"
        assert option.envvar == "HEAPRELAY_" + option.opts[0].lstrip("-").replace("-", "_").upper()
        assert option.envvar in listed, f"README does not list {option.envvar}"


def test_every_serve_variable_sets_its_flag(monkeypatch: Any, tmp_path: Path) -> None:
    from heaprelay.cli.serve import command

    values = {
        "HEAPRELAY_CONFIG": (str(tmp_path / "h.toml"), "config_file", tmp_path / "h.toml"),
        "HEAPRELAY_APP_ID": ("42", "app_id", "42"),
        "HEAPRELAY_WRITE_KEY": ("wk", "write_key", "wk"),
        "HEAPRELAY_HOST": ("0.0.0.0", "host", "0.0.0.0"),
        "HEAPRELAY_PORT": ("9999", "port", 9999),
        "HEAPRELAY_DATA_DIR": (str(tmp_path), "data_dir", tmp_path),
        "HEAPRELAY_PROFILE": ("rudderstack", "profile", "rudderstack"),
        "HEAPRELAY_REGION": ("eu", "region", "eu"),
        "HEAPRELAY_BASE_URL": ("http://x", "base_url", "http://x"),
        "HEAPRELAY_OPTION": ("a=1 b=2", "option_pairs", ("a=1", "b=2")),
        "HEAPRELAY_QUEUE": ("sqlite:///q.db", "queue_url", "sqlite:///q.db"),
        "HEAPRELAY_ROLE": ("worker", "role", "worker"),
        "HEAPRELAY_LOG_LEVEL": ("debug", "log_level", "debug"),
        "HEAPRELAY_DEVICE_MODE": ("false", "device_mode", False),
        "HEAPRELAY_SANDBOX": ("1", "sandbox", True),
    }
    for name, (text, _, _) in values.items():
        monkeypatch.setenv(name, text)
    params = command.make_context("serve", []).params
    for name, (_, param, value) in values.items():
        assert params[param] == value, name
