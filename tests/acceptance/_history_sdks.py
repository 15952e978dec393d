"""What the acceptance tests of audiences and computed traits over stored events share
(imported as ``_history_sdks``, next to ``_python_sdks``): a driver that sends a list of
identify / track calls through the real Python SDKs, the sending, the wait for a settled
queue, and the ``[server]`` lines of a relay on the ``store_url`` fixture's store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from _python_sdks import CLIENT_SETUP

from heaprelay.queue import open_queue

#: Reads ``[{"kind": "identify"|"track", "user", "id", "ts", "traits"|"event", "props"?}]``
#: on stdin and sends each call (track properties: ``props``, else ``{"n": 1}``).
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
        client.track(user_id=c["user"], event=c["event"], properties=c.get("props", {"n": 1}),
                     timestamp=when, message_id=c["id"])
client.flush()
client.shutdown() if hasattr(client, "shutdown") else client.join()
print(json.dumps({"errors": errors}))
"""
)


def send(url: str, key: str, calls: list[dict[str, Any]]) -> None:
    """Each user's calls through one SDK, in order: even users Segment's, odd RudderStack's."""
    for sdk, parity in (("segment", 0), ("rudder", 1)):
        mine = [c for c in calls if int(c["user"].removeprefix("user-")) % 2 == parity]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, sdk, url, key],
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


def server_lines(store_url: str, tmp_path: Path) -> str:
    """The ``[server]`` lines of a relay on the store at ``store_url`` (the ``store_url``
    fixture's: SQLite in ``tmp_path``, or PostgreSQL)."""
    lines = f'data_dir = "{tmp_path}"'
    return lines if store_url.startswith("sqlite:") else f'queue_url = "{store_url}"\n{lines}'
