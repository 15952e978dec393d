"""Issue 12 item 5: the sandbox's ``/fake-heap/_fake/*`` (every event delivered, and the
fake's controls) answered anyone, cross-site too. Now loopback clients only, never another
site's page, POSTs only as JSON; the fake's Heap API, ``/js/record`` and heap.js as before.
A real ``heaprelay serve --sandbox --host 0.0.0.0``, reached from this machine's own
non-loopback address for the remote client."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from heaprelay.testing.servers import free_port, run_process

READS = ["report", "events", "users", "requests", "browser"]


def own_address() -> str | None:
    """An address of this machine that is not loopback (None: there is none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: picks the outgoing interface
            address: str = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    root = tmp_path_factory.mktemp("sandbox-access")
    port = free_port("0.0.0.0")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")}
    env["HEAPRELAY_DATA_DIR"] = str(root / "data")
    command = [sys.executable, "-m", "heaprelay", "serve", "--sandbox"]
    command += ["--host", "0.0.0.0", "--port", str(port)]
    log = root / "serve.log"
    with run_process(command, log, ready=f"http://127.0.0.1:{port}/readyz", env=env):
        yield port, log


def test_startup_says_fake_controls_are_loopback_only(sandbox: tuple[int, Path]) -> None:
    _, log = sandbox
    assert "/fake-heap/_fake/* " in log.read_text()
    assert "answers only clients on this machine" in log.read_text()


def test_loopback_reads_and_json_posts_answer(sandbox: tuple[int, Path]) -> None:
    port, _ = sandbox
    base = f"http://127.0.0.1:{port}/fake-heap"
    for name in READS:
        assert httpx.get(f"{base}/_fake/{name}").status_code == 200, name
    assert httpx.post(f"{base}/_fake/settings", json={"latency": 0}).status_code == 200
    assert httpx.post(f"{base}/_fake/reset", json={}).status_code == 200
    # Same-origin requests from the relay's own pages keep working.
    own = {"origin": f"http://127.0.0.1:{port}", "sec-fetch-site": "same-origin"}
    assert httpx.get(f"{base}/_fake/report", headers=own).status_code == 200


def test_a_remote_client_is_refused(sandbox: tuple[int, Path]) -> None:
    port, _ = sandbox
    address = own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    base = f"http://{address}:{port}/fake-heap"
    # The relay itself answers remote clients (it listens on 0.0.0.0) ...
    assert httpx.get(f"http://{address}:{port}/healthz").status_code == 200
    # ... its fake Heap's Heap-like API too, but not what Heap received nor its controls.
    api = httpx.post(f"{base}/api/track", json={"app_id": "1", "identity": "a", "event": "e"})
    assert api.status_code == 200
    for name in READS:
        answer = httpx.get(f"{base}/_fake/{name}")
        assert answer.status_code == 403, name
        assert answer.json()["code"] == "loopback_only"
        assert address in answer.json()["message"]
    for name in ("reset", "settings"):
        answer = httpx.post(f"{base}/_fake/{name}", json={})
        assert answer.status_code == 403
    assert (
        httpx.get(f"http://127.0.0.1:{port}/fake-heap/_fake/report").json()["accepted_events"] == 1
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"sec-fetch-site": "cross-site"},
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"origin": "http://127.0.0.1:1"},  # another port: another origin
        {"host": "evil.example"},  # a DNS-rebound page: same origin, its own Host
    ],
)
def test_a_cross_site_request_is_refused(sandbox: tuple[int, Path], headers) -> None:
    port, _ = sandbox
    base = f"http://127.0.0.1:{port}/fake-heap"
    before = httpx.get(f"{base}/_fake/report").json()["settings"]
    answer = httpx.get(f"{base}/_fake/events", headers=headers)
    assert answer.status_code == 403
    assert answer.json()["code"] == "cross_site"
    posted = httpx.post(f"{base}/_fake/settings", json={"latency": 5}, headers=headers)
    assert posted.status_code == 403
    assert httpx.get(f"{base}/_fake/report").json()["settings"] == before


def test_a_form_post_is_refused(sandbox: tuple[int, Path]) -> None:
    """What an HTML form on any page can send (no preflight): not JSON, so refused."""
    port, _ = sandbox
    base = f"http://127.0.0.1:{port}/fake-heap"
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"content-type": content_type} if content_type else {}
        answer = httpx.post(f"{base}/_fake/settings", content=b'{"latency": 5}', headers=headers)
        assert answer.status_code == 415, content_type
        assert answer.json()["code"] == "json_required"
        answer = httpx.post(f"{base}/_fake/reset", content=b"x=1", headers=headers)
        assert answer.status_code == 415
    assert httpx.get(f"{base}/_fake/report").json()["settings"]["latency"] == 0


def test_heap_script_and_record_still_answer_any_page(sandbox: tuple[int, Path]) -> None:
    port, _ = sandbox
    base = f"http://127.0.0.1:{port}/fake-heap"
    page = {"origin": "https://shop.example", "sec-fetch-site": "cross-site"}
    script = httpx.get(f"{base}/js/heap-sandbox-app.js", headers=page)
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    call = {"method": "track", "args": ["e"], "app_id": "sandbox-app"}
    assert httpx.post(f"{base}/js/record", json=call, headers=page).status_code == 204
