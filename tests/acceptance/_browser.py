"""What the browser tests share: Debian's Chromium (driven by Playwright, never a downloaded
browser), the SDK bundles pinned in ``tests/browser``, the page server (the test pages, the
SDK bundles, a stand-in for RudderStack's control plane) on a loopback origin of its own, and
a real ``heaprelay serve`` process on another.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from heaprelay.testing.servers import free_port

BROWSER_DIR = Path(__file__).resolve().parents[1] / "browser"
NODE_MODULES = BROWSER_DIR / "node_modules"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # No CDN, no internet: only the loopback servers of this test can be reached.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]

# What the page server serves besides the pages: URL prefix -> directory.
SDK_DIRS = {
    "/sdk/segment/": NODE_MODULES / "@segment/analytics-next/dist/umd",
    # analytics-next's lazy chunks, were it to load any (window.analytics._cdn = page origin).
    "/analytics-next/bundles/": NODE_MODULES / "@segment/analytics-next/dist/umd",
    "/sdk/rudderstack/": NODE_MODULES / "@rudderstack/analytics-js/dist/npm/modern/bundled/umd",
}


def missing_prerequisites() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (scripts/setup-test-env installs it)"
    for directory in SDK_DIRS.values():
        if not (directory / "index.js").exists():
            return f"{directory}/index.js is missing (run npm ci in {BROWSER_DIR})"
    return None


def sdk_version(package: str) -> str:
    manifest = json.loads((NODE_MODULES / package / "package.json").read_text())
    version: str = manifest["version"]
    return version


# --- the page server: pages, SDK bundles, RudderStack's source config ---------------------


class PageHandler(SimpleHTTPRequestHandler):
    server: PageServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test records requests itself (below)

    csp: str | None = None

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        if self.csp:  # ?csp=POLICY on a page: served with that Content-Security-Policy
            self.send_header("Content-Security-Policy", self.csp)
        super().end_headers()

    def translate_path(self, path: str) -> str:
        url_path = urlsplit(path).path
        for prefix, directory in SDK_DIRS.items():
            if url_path.startswith(prefix):
                name = url_path.removeprefix(prefix)
                if "/" in name or name.startswith("."):
                    return str(directory / "nonexistent")
                return str(directory / name)
        return str(BROWSER_DIR / "pages" / url_path.lstrip("/").replace("..", ""))

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        url = urlsplit(self.path)
        self.csp = parse_qs(url.query).get("csp", [None])[0]
        if url.path.rstrip("/") == "/sourceConfig":
            self._source_config(parse_qs(url.query))
            return
        super().do_GET()

    def _source_config(self, query: dict[str, list[str]]) -> None:
        """What RudderStack's control plane answers: the source of this write key, no
        device-mode destinations (those scripts would come from a CDN)."""
        write_key = query.get("writeKey", [""])[0]
        expected_auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        if self.headers.get("Authorization") != expected_auth:
            self.send_error(401, "source config needs Basic auth with the write key")
            return
        config = json.loads((BROWSER_DIR / "rudderstack-source-config.json").read_text())
        config["source"]["writeKey"] = write_key
        body = json.dumps(config).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class PageServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, PageHandler)
        self.requests: list[str] = []


@contextlib.contextmanager
def page_server() -> Iterator[PageServer]:
    server = PageServer(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, name="page-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Headless Debian Chromium through Playwright (skipped without it, failed in CI)."""
    missing = missing_prerequisites()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


#: How long ``heaprelay serve`` may take to be ready (and to stop).
STARTUP_S = 20.0


@contextlib.contextmanager
def serve_relay(args: list[str], data_dir: Path) -> Iterator[str]:
    """``heaprelay serve ARGS`` in a process of its own, until the block ends (SIGTERM)."""
    port = free_port()
    log = data_dir / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")}
    command = [sys.executable, "-m", "heaprelay", "serve", *args, "--port", str(port)]
    command += ["--data-dir", str(data_dir)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"heaprelay serve exited {process.returncode}:\n{log.read_text()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"heaprelay serve not ready:\n{log.read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STARTUP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
