"""Run an ASGI app on a real loopback socket (uvicorn), or a command as a real process, for
tests and benchmarks; wait for what they should do."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

T = TypeVar("T")


def wait_until(check: Callable[[], T], what: str, timeout: float = 60.0) -> T:
    """Poll ``check`` until it returns something true (returned); AssertionError naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


@contextlib.contextmanager
def run_process(
    command: Sequence[str],
    log: Path,
    *,
    ready: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (output to ``log``) until the block ends, then SIGTERM it (SIGKILL if
    it has not ended ``timeout`` seconds later). ``ready``: a URL to wait for a 200 from
    first. ``env`` defaults to this process's environment without ``HEAPRELAY_*``."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")}
    with log.open("wb") as out:
        process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        if ready is not None:

            def answers() -> bool:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{command[0]} exited {process.returncode}:\n{log.read_text()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    return httpx.get(ready, timeout=1).status_code == 200
                return False

            wait_until(answers, f"{ready} (log: {log})", timeout)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields its base URL.

    The server runs its own event loop in the thread and is shut down (lifespan included)
    when the block exits.
    """
    port = port or free_port(host)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"server on {host}:{port} failed to start")
        if time.monotonic() > deadline:
            raise TimeoutError(f"server on {host}:{port} did not start within 15 s")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
