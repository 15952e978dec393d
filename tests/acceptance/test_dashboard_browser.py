"""The dashboard in headless Chromium (Debian's, driven by Playwright; the ``browser`` fixture
of conftest.py), on a real
``heaprelay serve`` process with an admin token, delivering to a fake Heap; events come from
a real SDK (segment-analytics-python).

What a person does: is refused without the token and with a wrong one; logs in; watches the
live debugger while the SDK sends an event, sees its Heap request and then "delivered"; sees
a refused event with its reason; sees a dead letter, replays it from the dead-letter page
(after the confirmation) and sees it delivered. Screenshots of every page are saved
(``HEAPRELAY_SCREENSHOTS`` names the folder; default: the test's temporary folder; the
latest are committed under ``docs/screenshots/``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from segment.analytics.client import Client
from tests.acceptance._browser import serve_relay

from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.testing.servers import serve_in_thread

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TOKEN = "browser-admin-token-0123"
KEY = "browser-dash-key"
APP = "55555"
DEADLINE_MS = 20_000


@pytest.fixture
def heap() -> Iterator[tuple[FakeHeap, str]]:
    fake = FakeHeap(FakeHeapSettings(rate_limits=False, reject_identities=("dead-user",)))
    with serve_in_thread(fake.app) as url:
        yield fake, url


@contextlib.contextmanager
def relay_process(tmp_path: Path, heap_url: str) -> Iterator[str]:
    """``heaprelay serve --config`` with the admin token (its flag wins over the file)."""
    config = tmp_path / "heaprelay.toml"
    config.write_text(
        f"""
[delivery]
rate_limits = false
flush_interval = "50ms"
retry_base = "100ms"
retry_cap = "1s"

[[sources]]
name = "web"
write_key = "{KEY}"

  [[sources.destinations]]
  id = "heap"
  app_id = "{APP}"
  base_url = "{heap_url}"
"""
    )
    data = tmp_path / "data"
    data.mkdir()
    with serve_relay(["--config", str(config), "--admin-token", TOKEN], data) as url:
        yield url


def shots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("HEAPRELAY_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_dashboard_in_chromium(browser: Any, heap: tuple[FakeHeap, str], tmp_path: Path) -> None:
    fake, heap_url = heap
    shots = shots_dir(tmp_path)
    with relay_process(tmp_path, heap_url) as relay:
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        page = context.new_page()
        page.set_default_timeout(DEADLINE_MS)
        try:
            # --- refused without the token, and with a wrong one ----------------------------
            page.goto(f"{relay}/ui/dead")
            assert page.url.startswith(f"{relay}/ui/login")
            assert page.locator("input[name=token]").is_visible()
            for headers in ({}, {"Authorization": "Bearer not-the-admin-token"}):
                for path in ("/ui/", "/ui/api/stream", "/ui/dead"):
                    answer = context.request.get(relay + path, headers=headers, max_redirects=0)
                    assert answer.status in (303, 401), path
                    assert "dead-user" not in answer.text()
                action = context.request.post(
                    f"{relay}/ui/dead/action",
                    form={
                        "action": "purge",
                        "scope": "all",
                        "destination": "heap",
                        "confirm": "yes",
                    },
                    headers=headers,
                    max_redirects=0,
                )
                assert action.status == 401
            page.fill("input[name=token]", "a-wrong-token-here")
            page.click("button[type=submit]")
            assert page.locator(".error").inner_text() == "Wrong token."
            page.screenshot(path=str(shots / "login.png"))

            # --- log in ----------------------------------------------------------------------
            page.fill("input[name=token]", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(f"{relay}/ui/dead")
            cookie = next(c for c in context.cookies() if c["name"] == "heaprelay_session")
            assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
                True,
                "Strict",
                "/ui",
            )

            # --- the live debugger: an SDK's event, its Heap request, "delivered" -------------
            page.goto(f"{relay}/ui/debugger")
            page.wait_for_selector("#live-status[data-state=connected]")
            sdk = Client(KEY, host=relay, upload_interval=0.05, max_retries=2)
            sdk.identify(user_id="ada", traits={"plan": "pro"}, message_id="browser-identify-1")
            sdk.track(
                user_id="ada",
                event="Order Completed",
                properties={"revenue": 12.5, "items": [1, 2]},
                message_id="browser-track-1",
            )
            sdk.page(user_id="ada", name="Home", message_id="browser-page-1")
            sdk.track(user_id="dead-user", event="Will Die", message_id="browser-dead-1")
            sdk.flush()
            row = page.locator("tr.live-row[data-message-id=browser-track-1]")
            row.locator("[data-state=delivered]").wait_for()
            row.click()
            detail = row.locator("xpath=following-sibling::tr[1]")
            request = detail.locator(".heap-requests pre")
            request.wait_for()
            text = request.inner_text()
            assert f"POST {heap_url}/api/track" in text
            assert '"event": "Order Completed"' in text
            assert '"idempotency_key": "browser-track-1"' in text
            # Not sent, with the reason: a page call (unsupported by Heap), a refused request.
            skipped = page.locator(
                "tr.live-row[data-message-id=browser-page-1] [data-state=skipped]"
            )
            assert "unsupported_type" in skipped.inner_text()
            refused = httpx.post(f"{relay}/v1/track", json={"event": "Nobody"}, auth=(KEY, ""))
            assert refused.status_code == 400
            refused_row = page.locator("tr.refused").first
            refused_row.wait_for()
            assert "missing_identity" in refused_row.inner_text()
            dead = page.locator("tr.live-row[data-message-id=browser-dead-1] [data-state=dead]")
            dead.wait_for()
            assert "heap_rejected" in dead.inner_text()
            page.screenshot(path=str(shots / "debugger.png"), full_page=True)

            # --- search over the retained jobs ----------------------------------------------
            page.select_option("select[name=field]", "event")
            page.fill("input[name=q]", "Order Completed")
            page.click("form.search button")
            page.wait_for_selector(".results")
            for _ in range(50):  # the index is written in the background (every 0.5 s)
                if "1 job(s)" in page.locator(".results h2").inner_text():
                    break
                page.wait_for_timeout(200)
                page.reload()
            assert "1 job(s) with event" in page.locator(".results h2").inner_text()
            page.click(".results a")
            assert "Order Completed" in page.locator("pre.request").inner_text()
            page.screenshot(path=str(shots / "job.png"), full_page=True)

            # --- the dead letter, replayed from the page -------------------------------------
            fake.update({"reject_identities": []})  # the cause is fixed
            page.goto(f"{relay}/ui/dead?destination=heap")
            dead_row = page.locator("table.dead tbody tr").first
            assert "heap_rejected" in dead_row.inner_text()
            assert "identity refused (injected)" in dead_row.inner_text()  # Heap's answer
            job_id = dead_row.get_attribute("data-job")
            page.screenshot(path=str(shots / "dead-letters.png"), full_page=True)
            dead_row.locator("button", has_text="Replay").click()
            page.wait_for_url(f"{relay}/ui/dead/action")
            assert f"1 dead letter(s): {job_id}" in page.locator(".confirm").inner_text()
            page.screenshot(path=str(shots / "confirm.png"))
            page.locator("button", has_text="Yes, replay").click()
            page.wait_for_selector(".done")
            assert page.locator(".done").inner_text() == "replayed 1 dead letter(s)"
            page.goto(f"{relay}/ui/jobs/{job_id}")
            for _ in range(100):
                if "delivered" in page.locator("h1").inner_text():
                    break
                page.wait_for_timeout(100)
                page.reload()
            assert "delivered" in page.locator("h1").inner_text()
            assert sorted(e["event"] for e in fake.events(APP)) == ["Order Completed", "Will Die"]

            # --- the overview (after a few samples: the charts) ------------------------------
            page.wait_for_timeout(5500)
            page.goto(f"{relay}/ui/")
            page.wait_for_selector("section.destination")
            overview = page.locator("section.destination").inner_text()
            assert "unsupported_type" in overview
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / "overview.png"), full_page=True)
            errors = page.locator("table.errors").inner_text()
            assert "heap_rejected" in errors
            assert "identity refused (injected)" in errors
        finally:
            context.close()
