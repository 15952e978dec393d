"""Device-mode settings in the configuration file: per destination ``device_mode``,
``device_mode_server_side`` and ``heap_script_url``; ``[server] public_url``. What ``config
check`` refuses (with the TOML path and line), and what its summary says."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from heaprelay.cli import main
from heaprelay.config import DEFAULT_HEAP_SCRIPT_URL
from heaprelay.config_file import check_config, load_config


def write(tmp_path: Path, destination: str = "", server: str = "", second: str = "") -> Path:
    path = tmp_path / "heaprelay.toml"
    path.write_text(
        f"[server]\n{server}\n"
        '[[sources]]\nname = "web"\nwrite_key = "k1"\n'
        f'  [[sources.destinations]]\n  app_id = "123"\n  {destination}\n'
        + (
            f'  [[sources.destinations]]\n  id = "second"\n  app_id = "456"\n  {second}\n'
            if second
            else ""
        )
    )
    return path


def test_defaults_device_mode_off_and_heaps_cdn(tmp_path: Path) -> None:
    config = load_config(write(tmp_path), {})
    d = config.sources[0].destinations[0]
    assert (d.device_mode, d.device_mode_server_side) == (False, False)
    assert d.heap_script_url == DEFAULT_HEAP_SCRIPT_URL
    assert d.heap_script() == "https://cdn.heapanalytics.com/js/heap-123.js"
    assert config.public_url is None


def test_device_mode_settings_load(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "device_mode = true\n  device_mode_server_side = true\n"
        '  heap_script_url = "https://heap.proxy.example/heap/${REGION:-us}/heap-{app_id}.js"',
        server='public_url = "https://relay.example/collect/"',
    )
    config = load_config(path, {})
    d = config.sources[0].destinations[0]
    assert (d.device_mode, d.device_mode_server_side) == (True, True)
    assert d.heap_script() == "https://heap.proxy.example/heap/us/heap-123.js"
    assert config.public_url == "https://relay.example/collect"
    env = load_config(path, {"HEAPRELAY_PUBLIC_URL": "http://10.0.0.5:8787"})
    assert env.public_url == "http://10.0.0.5:8787"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://heap.proxy.example/js/heap.js", "does not contain {app_id}"),
        ("//cdn.heapanalytics.com/js/heap-{app_id}.js", "http:// or https://"),
        ("ftp://cdn.example/heap-{app_id}.js", "http:// or https://"),
        ("/js/heap-{app_id}.js", "http:// or https://"),
        ("https:///heap-{app_id}.js", "http:// or https://"),
        ("https://cdn.example/heap {app_id}.js", "white space"),
    ],
)
def test_config_check_refuses_a_bad_heap_script_url(tmp_path: Path, url: str, says: str) -> None:
    path = write(tmp_path, f'device_mode = true\n  heap_script_url = "{url}"')
    problems = check_config(path, {})
    assert len(problems) == 1, problems
    assert problems[0].path == "sources[0].destinations[0].heap_script_url"
    assert says in problems[0].message
    assert problems[0].line == 9
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 1
    assert "heap_script_url" in result.output


def test_device_mode_needs_a_profile_with_a_browser_integration(tmp_path: Path) -> None:
    problems = check_config(write(tmp_path, 'profile = "rudderstack"\n  device_mode = true'), {})
    assert [p.path for p in problems] == ["sources[0].destinations[0].device_mode"]
    assert "heap, segment" in problems[0].message
    assert not check_config(write(tmp_path, 'profile = "segment"\n  device_mode = true'), {})


def test_one_device_mode_destination_a_source(tmp_path: Path) -> None:
    path = write(tmp_path, "device_mode = true", second="device_mode = true")
    problems = check_config(path, {})
    assert [p.path for p in problems] == ["sources[0].destinations[1].device_mode"]
    assert "one Heap environment" in problems[0].message
    # a disabled one does not count
    path = write(tmp_path, "device_mode = true", second="device_mode = true\n  enabled = false")
    assert not check_config(path, {})


def test_public_url_must_be_a_url(tmp_path: Path) -> None:
    problems = check_config(write(tmp_path, server='public_url = "relay.example"'), {})
    assert [p.path for p in problems] == ["server.public_url"]


@pytest.mark.parametrize(
    ("destination", "line"),
    [
        ("device_mode = true", "device mode: browser SDKs' events sent by the browser only"),
        (
            "device_mode = true\n  device_mode_server_side = true",
            "device mode: browser SDKs' events sent both by the browser and server-side",
        ),
    ],
)
def test_config_check_summary_says_where_browser_events_go(
    tmp_path: Path, destination: str, line: str
) -> None:
    result = CliRunner().invoke(main, ["config", "check", str(write(tmp_path, destination))])
    assert result.exit_code == 0, result.output
    assert line in result.output
    plain = CliRunner().invoke(main, ["config", "check", str(write(tmp_path))])
    assert "device mode" not in plain.output


def test_summary_names_a_script_url_of_ones_own(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'device_mode = true\n  heap_script_url = "https://heap.proxy.example/js/heap-{app_id}.js"',
        server='public_url = "https://relay.example"',
    )
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert "Heap's script https://heap.proxy.example/js/heap-123.js" in result.output
    assert "public URL (device-mode settings): https://relay.example" in result.output


def test_serve_device_mode_flag_is_for_the_zero_config_mode(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["serve", "--config", str(write(tmp_path)), "--device-mode"], env={}
    )
    assert result.exit_code == 2
    assert "--device-mode cannot be combined with --config" in result.output
