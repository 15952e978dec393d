"""(Imported as ``_served``.) A real ``heaprelay serve`` process shared by the bad-input
tests (corpus, depth, CORS, fuzzing): three sources with their own write keys, SQLite in a
temporary data dir, the embedded fake Heap (``--sandbox``) as their destination."""

from __future__ import annotations

import base64
import os
import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from heaprelay.testing.servers import free_port, run_process

RELAY_CONFIG = """
[server]
host = "127.0.0.1"
port = {port}
data_dir = "{data_dir}"

[[sources]]
name = "open"
write_key = "open-key"

  [[sources.destinations]]
  id = "open-heap"
  app_id = "111"

[[sources]]
name = "web"
write_key = "web-key"
cors_origins = ["https://shop.example", "https://*.shop.example"]

  [[sources.destinations]]
  id = "web-heap"
  app_id = "222"

[[sources]]
name = "rudder"
write_key = "rudder-key"

  [[sources.destinations]]
  id = "rudder-heap"
  app_id = "444"
  profile = "rudderstack"

[[sources]]
name = "small"
write_key = "small-key"
limits = {{ max_request_bytes = 4000, max_message_bytes = 1000 }}

  [[sources.destinations]]
  id = "small-heap"
  app_id = "333"
"""


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


@dataclass
class ServedRelay:
    url: str
    host: str
    port: int
    db: Path
    http: httpx.Client

    def jobs(self) -> int:
        with sqlite3.connect(self.db) as conn:
            (n,) = conn.execute("SELECT count(*) FROM jobs").fetchone()
        return int(n)

    def finished(self, message_id: str) -> list[tuple[str, str | None, str]]:
        """(state, reason, detail) of the message's jobs, once none is pending or leased."""
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute(
                "SELECT state, reason, detail FROM jobs WHERE message_id = ?", (message_id,)
            ).fetchall()
        if not rows or any(state in ("pending", "leased", "retry") for state, _, _ in rows):
            return []
        return [(str(s), r, str(d)) for s, r, d in rows]

    def post(self, path: str, content: bytes, key: str | None = "open-key", **headers: str) -> Any:
        if key is not None:
            headers["authorization"] = basic(key)
        return self.http.post(path, content=content, headers=headers)


@pytest.fixture(scope="session")
def served_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedRelay]:
    """``heaprelay serve --sandbox --config FILE`` on a free loopback port."""
    root = tmp_path_factory.mktemp("served-relay")
    port = free_port()
    config = root / "relay.toml"
    config.write_text(RELAY_CONFIG.format(port=port, data_dir=root / "data"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")}
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "heaprelay", "serve", "--sandbox", "--config", str(config)]
    with (
        run_process(command, root / "serve.log", ready=f"{url}/readyz", env=env),
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        yield ServedRelay(url, "127.0.0.1", port, root / "data" / "heaprelay.db", http)
