"""The device-mode integration ships minified in the package: the committed
``heap-integration.min.js`` must be what ``scripts/build-device-js`` makes of the source
(terser, pinned in tests/browser/package.json), and the sandbox points pages at the fake Heap."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from heaprelay.config import Config, Destination, Source
from heaprelay.device import bundle
from heaprelay.heap.fake import sandbox
from heaprelay.transform import DestinationSettings

ROOT = Path(__file__).parents[2]
DEVICE = ROOT / "src" / "heaprelay" / "device"
TERSER = ROOT / "tests" / "browser" / "node_modules" / ".bin" / "terser"


def test_minified_integration_is_up_to_date(tmp_path: Path) -> None:
    if not TERSER.exists() or shutil.which("node") is None:
        message = f"{TERSER} is missing (scripts/setup-test-env runs npm ci in tests/browser)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    build = (ROOT / "scripts" / "build-device-js").read_text()
    # the script's own terser command, writing elsewhere
    args = build[build.index("--ecma") : build.index("--output")].replace("\\\n", " ").split()
    out = tmp_path / "built.min.js"
    subprocess.run(
        [str(TERSER), str(DEVICE / "heap-integration.js"), *args, "--output", str(out)],
        check=True,
    )
    assert out.read_bytes() == (DEVICE / "heap-integration.min.js").read_bytes(), (
        "heap-integration.min.js is stale: run scripts/build-device-js and commit the result"
    )


def test_the_package_serves_the_shipped_file() -> None:
    b = bundle()
    assert b.script == (DEVICE / "heap-integration.min.js").read_bytes()
    assert b.script.startswith(b"/*! heaprelay Heap integration */")


def test_sandbox_points_heap_script_at_the_embedded_fake() -> None:
    dest = Destination(id="d", settings=DestinationSettings(app_id="sandbox-app"), device_mode=True)
    config = Config(sources=(Source(name="s", write_key="k", destinations=(dest,)),))
    sandboxed, mount = sandbox(config)
    [d] = sandboxed.sources[0].destinations
    assert mount.path == "/fake-heap"
    assert d.heap_script() == "/fake-heap/js/heap-sandbox-app.js"  # on the relay's own URL
    assert d.device_mode
