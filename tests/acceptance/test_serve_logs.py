"""The logs of a full run of ``heaprelay serve`` (a real process, PostgreSQL queue with a
password in its URL, a real SDK, a fake Heap that refuses, fails, and answers 429): what an
operator needs is there (startup summary, Heap failure classes with counts, 429 pauses, dead
letters), and no secret is: not the write key (nor its Basic header), the admin and metrics
tokens, the database password, or any Authorization header."""

from __future__ import annotations

import base64
import os
import re
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import psycopg
import pytest
from segment.analytics.client import Client

from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.testing.servers import free_port, run_process, serve_in_thread, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WRITE_KEY = "wk-live-7f3a9c1e5b2d"
ADMIN_TOKEN = "admin-tok-55e1c0ffee99"
METRICS_TOKEN = "metrics-tok-0b5e55ed77"
DB_PASSWORD = "pg-pass-d3adb33fcafe"
APP = "31415"


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_full_run_logs_what_matters_and_no_secret(
    tmp_path: Path, pg_url: str, log_format: str
) -> None:
    schema_db = f"logs_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{schema_db}"')
    queue_url = with_password(pg_url.rsplit("/", 1)[0] + f"/{schema_db}", DB_PASSWORD)
    fake = FakeHeap(
        FakeHeapSettings(
            rate_limits=True,
            time_scale=60.0,  # one-second windows: the burst below gets 429s
            app_events_per_minute=40,
            reject_identities=("dead-user",),
        )
    )
    try:
        with serve_in_thread(fake.app) as heap_url:
            log = _run(tmp_path, heap_url, queue_url, log_format, fake)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{schema_db}" WITH (FORCE)')
    text = log.read_text()
    basic = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    for secret in (WRITE_KEY, ADMIN_TOKEN, METRICS_TOKEN, DB_PASSWORD, basic, basic.rstrip("=")):
        assert secret not in text, f"{secret!r} is in the log"
    # No credentials of any Authorization header (Basic or Bearer), whoever sent them.
    assert not re.search(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9+/=._~-]{6,}", text)
    if log_format == "json":
        records = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
        messages = [r["message"] for r in records]
    else:
        messages = text.splitlines()
    joined = "\n".join(messages)
    # The startup summary, with the queue URL's password masked.
    assert "source web: heap (app_id 31415" in joined
    assert ":***@" in joined
    assert "dashboard /ui: log in with the admin token" in joined
    assert "metrics /metrics: needs Authorization: Bearer (metrics_token)" in joined
    # Failure classes with counts, pauses, dead letters: one line per class and interval.
    assert "heap track 503 (app_id 31415)" in joined
    assert "paused on 429 (app_id 31415)" in joined
    assert "dead letter (heap: heap_rejected)" in joined
    lines_503 = [m for m in messages if "heap track 503" in m]
    assert len(lines_503) <= 4, lines_503


def _run(tmp_path: Path, heap_url: str, queue_url: str, log_format: str, fake: FakeHeap) -> Path:
    port = free_port()
    config = tmp_path / "heaprelay.toml"
    config.write_text(
        f"""
[server]
port = {port}
queue_url = "${{RELAY_QUEUE}}"
admin_token = "${{RELAY_ADMIN}}"
metrics_token = "${{RELAY_METRICS}}"

[delivery]
# Limits off here, and stricter ones at the fake Heap: some bulk requests get 429s (pauses).
rate_limits = false
batch_size = 20
flush_interval = "50ms"
retry_base = "200ms"
retry_cap = "1s"

[[sources]]
name = "web"
write_key_env = "RELAY_WRITE_KEY"

  [[sources.destinations]]
  id = "heap"
  app_id = "{APP}"
  base_url = "{heap_url}"
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")}
    env |= {
        "RELAY_QUEUE": queue_url,
        "RELAY_ADMIN": ADMIN_TOKEN,
        "RELAY_METRICS": METRICS_TOKEN,
        "RELAY_WRITE_KEY": WRITE_KEY,
    }
    log = tmp_path / f"serve-{log_format}.log"
    command = [sys.executable, "-m", "heaprelay", "serve", "--config", str(config)]
    command += ["--log-level", "debug", "--log-format", log_format]
    relay = f"http://127.0.0.1:{port}"
    with run_process(command, log, ready=f"{relay}/readyz", env=env):
        sdk = Client(WRITE_KEY, host=relay, upload_interval=0.05, max_retries=2)
        fake.update({"outage_seconds": 1.5})  # 503s first
        for i in range(120):
            sdk.track(user_id=f"user-{i % 10}", event="Logged", properties={"i": i})
        sdk.track(user_id="dead-user", event="Refused")
        sdk.identify(user_id="user-1", traits={"email": "ada@example.com"})
        sdk.flush()
        # The dashboard and the metrics, with the right and wrong tokens.
        with httpx.Client(base_url=relay) as browser:
            assert browser.post("/ui/login", data={"token": "wrong-token-xx"}).status_code == 401
            assert browser.post("/ui/login", data={"token": ADMIN_TOKEN}).status_code == 303
            assert browser.get("/ui/").status_code == 200
        auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        assert httpx.get(f"{relay}/metrics", headers=auth).status_code == 200
        wrong = {"Authorization": "Bearer no"}
        assert httpx.get(f"{relay}/metrics", headers=wrong).status_code == 401
        unknown = httpx.post(f"{relay}/v1/track", json={"event": "x"}, auth=("wrong-key", ""))
        assert unknown.status_code == 401

        def delivered() -> bool:
            text = httpx.get(f"{relay}/metrics", headers=auth).text
            return 'heaprelay_queue_jobs{destination="heap",state="dead"} 1.0' in text and (
                'heaprelay_queue_jobs{destination="heap",state="delivered"} 121.0' in text
            )

        wait_until(delivered, "delivery through the outage and the 429s", timeout=90)
    return log
