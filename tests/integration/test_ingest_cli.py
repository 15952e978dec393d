"""``heaprelay serve`` configured by environment variables only, as a real process."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
from click.testing import CliRunner

from heaprelay.cli.serve import command
from heaprelay.testing.servers import free_port


def test_serve_from_environment_variables(tmp_path: Path):
    port = free_port()
    env = {
        **os.environ,
        "HEAPRELAY_APP_ID": "42",
        "HEAPRELAY_WRITE_KEY": "env-key",
        "HEAPRELAY_PORT": str(port),
        "HEAPRELAY_DATA_DIR": str(tmp_path / "data"),
        "HEAPRELAY_LOG_LEVEL": "warning",
        "HEAPRELAY_ROLE": "api",  # no delivery: nothing may try to reach Heap
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "heaprelay", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answer = httpx.post(
            f"{url}/v1/identify",
            auth=("env-key", ""),
            json={"userId": "u1", "traits": {"plan": "pro"}},
        )
        assert answer.status_code == 200, answer.text
        assert httpx.post(f"{url}/v1/identify", auth=("other", ""), json={}).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    conn = sqlite3.connect(tmp_path / "data" / "heaprelay.db")
    rows = conn.execute("SELECT source, destination, payload FROM jobs").fetchall()
    conn.close()
    assert [(s, d) for s, d, _ in rows] == [("default", "heap")]
    assert orjson.loads(rows[0][2])["traits"] == {"plan": "pro"}


def test_serve_says_what_is_missing():
    result = CliRunner().invoke(command, ["--write-key", "k"], env={"HEAPRELAY_APP_ID": None})
    assert result.exit_code == 2
    assert "--app-id" in result.output
    bad = CliRunner().invoke(command, ["--app-id", "1", "--write-key", "k", "--region", "asia"])
    assert bad.exit_code == 2
    assert "us" in bad.output
    assert "eu" in bad.output
