"""The TOML configuration: good files load into the frozen Config; broken ones report every
problem, with its line and TOML path; ``heaprelay config check`` prints them and exits 1."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from _config_files import write
from click.testing import CliRunner

from heaprelay.cli import main
from heaprelay.config import Config, Consent, DeliverySettings, EventFilter
from heaprelay.config_file import (
    ConfigError,
    _delivery_checks,
    check_config,
    load_config,
    parse_duration,
)
from heaprelay.heap.models import EU_BASE_URL

CONFIGS = Path(__file__).parent.parent / "data" / "configs"
EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "heaprelay.toml"
ENV = {"WEB_WRITE_KEY": "web-key-123456", "EU_APP_ID": "2222222222"}


MINIMAL = """
[[sources]]
name = "web"
write_key = "k1"

  [[sources.destinations]]
  app_id = "123"
"""


def test_good_file_loads_every_setting() -> None:
    config = load_config(CONFIGS / "good_two_sources.toml", ENV)
    assert [s.name for s in config.sources] == ["web", "backend"]
    web, backend = config.sources
    assert web.write_key == "web-key-123456"
    assert web.cors_origins == ("https://shop.example.com",)
    assert backend.write_key == "backend-dev-key"  # ${VAR:-default}
    assert backend.dedupe_window == 12 * 3600
    assert config.delivery.batch_size == 500
    assert config.delivery.flush_interval == pytest.approx(0.2)

    us, eu = web.destinations
    assert us.id == "web-us"
    assert us.settings.app_id == "1111111111"
    assert us.settings.region == "us"
    assert us.retry_window == 4 * 3600
    assert us.event_filter == EventFilter(mode="deny", events=("Product Viewed",))
    assert us.consent == (Consent(provider="oneTrust", categories=("C0002",)),)
    assert eu.settings.app_id == "2222222222"
    assert eu.settings.heap_base_url == EU_BASE_URL
    assert eu.consent == (Consent(provider="oneTrust", categories=("C0004",), legacy=True),)

    (b,) = backend.destinations
    assert b.id == "backend.3333333333"  # default id: source.app_id; numbers accepted
    assert b.settings.heap_base_url == "http://127.0.0.1:9999"
    assert b.event_filter.mode == "allow"
    assert config.source_for_key("backend-dev-key") is backend
    assert set(config.destinations()) == {"web-us", "web-eu", "backend.3333333333"}


def test_environment_wins_over_interpolation_default() -> None:
    config = load_config(CONFIGS / "good_two_sources.toml", {**ENV, "BACKEND_WRITE_KEY": "prod"})
    assert config.sources[1].write_key == "prod"


def test_heaprelay_env_overrides_server_settings(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 1000\nhost = "0.0.0.0"\n' + MINIMAL)
    config = load_config(path, {"HEAPRELAY_PORT": "9001", "HEAPRELAY_QUEUE": "sqlite:///q.db"})
    assert config.port == 9001
    assert config.host == "0.0.0.0"
    assert config.queue_url == "sqlite:///q.db"


def test_dollar_escape(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('"k1"', '"a$${B}c"'))
    assert load_config(path, {}).sources[0].write_key == "a${B}c"


def test_rudderstack_filter_names_are_accepted(tmp_path: Path) -> None:
    extra = '  event_filter = { mode = "whitelistedEvents", events = ["A"] }\n'
    config = load_config(write(tmp_path, MINIMAL + extra), {})
    assert config.sources[0].destinations[0].event_filter == EventFilter("allow", ("A",))


def test_integration_names_are_a_list_of_strings(tmp_path: Path) -> None:
    extra = '  integration_names = ["Webhooks", "Heap Cloud (Actions)"]\n'
    config = load_config(write(tmp_path, MINIMAL + extra), {})
    assert config.sources[0].destinations[0].integration_names == (
        "Webhooks",
        "Heap Cloud (Actions)",
    )
    with pytest.raises(ConfigError, match=r"integration_names.*expected a list of strings"):
        load_config(write(tmp_path, MINIMAL + '  integration_names = "Webhooks"\n'), {})


def test_missing_variable_is_reported_where_it_is_used(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('"123"', '"${PROD_APP_ID}"'))
    (problem,) = check_config(path, {})
    assert problem.path == "sources[0].destinations[0].app_id"
    assert problem.line == 7
    assert "PROD_APP_ID is not set" in problem.message


def test_unknown_option_is_refused_by_the_profile(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '  options = { no_such_option = "x" }\n')
    (problem,) = check_config(path, {})
    assert problem.path == "sources[0].destinations[0].options.no_such_option"
    assert problem.line == 8  # the options line, not the table's header
    assert "no_such_option" in problem.message


def test_every_problem_of_a_destination_is_reported_each_at_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[sources]]
name = "web"
write_key = "k1"

  [[sources.destinations]]
  app_id = ""
  region = "us"
  profile = "segment-actions"

    [sources.destinations.options]
    identity = "anonymousId"
    bogus = "x"
""",
    )
    found = {
        (p.line, p.path.removeprefix("sources[0].destinations[0].")) for p in check_config(path, {})
    }
    assert found == {
        (7, "app_id"),
        (8, "region"),  # segment-actions takes US or EU, as Segment does
        (12, "options.identity"),
        (13, "options.bogus"),
    }


def test_an_unknown_profile_is_reported_at_its_line_next_to_an_empty_app_id(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, MINIMAL.replace('app_id = "123"', 'app_id = ""\n  profile = "nope"'))
    found = {(p.line, p.path.rpartition(".")[2]) for p in check_config(path, {})}
    assert found == {(7, "app_id"), (8, "profile")}


def test_problems_have_lines_and_paths() -> None:
    problems = check_config(CONFIGS / "bad_many.toml", {})
    text = [str(p) for p in problems]
    expected = {
        (3, "server.port"),
        (4, "server.role"),
        (7, "delivery.batch_size"),
        (8, "delivery.flush_intervall"),
        (12, "sources[0].write_key_env"),
        (14, "sources[0].destinations[0]"),
        (15, "sources[0].destinations[0].region"),
        (16, "sources[0].destinations[0].retry_window"),
        (19, "sources[0].destinations[1].id"),
        (22, "sources[0].destinations[1].event_filter.mode"),
        (24, "sources[0].destinations[1].consent[0]"),
        (29, "sources[1].name"),
        (30, "sources[1].write_key"),
    }
    assert expected <= {(p.line, p.path) for p in problems}, text
    assert any("did you mean 'flush_interval'" in t for t in text)
    assert any("unknown profile 'amplitude'" in t for t in text)
    assert any("no [[sources.destinations]]" in t for t in text)
    assert [p.line or 0 for p in problems] == sorted(p.line or 0 for p in problems)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("bad_syntax.toml", r"bad_syntax\.toml:3: not valid TOML"),
        ("bad_no_sources.toml", r"no \[\[sources\]\]"),
        ("bad_duplicates.toml", r":9: sources\[1\]: same write key as sources\[0\]"),
        ("bad_duplicates.toml", r"destination id 'prod' is also sources\[0\]\.destinations\[0\]"),
        ("bad_consent.toml", r":11: .*consent\[0\]\.resolution: only the custom provider"),
        ("bad_consent.toml", r':13: .*consent\[1\]: provider "custom" needs resolution'),
        ("bad_consent.toml", r":18: .*consent\[2\]\.provider: ketch is configured twice"),
        ("bad_many.toml", r"environment variable NOT_SET_ANYWHERE_FOR_TESTS is not set"),
    ],
)
def test_config_check_prints_each_problem_and_fails(name: str, needle: str) -> None:
    result = CliRunner().invoke(main, ["config", "check", str(CONFIGS / name)], env={})
    assert result.exit_code == 1
    assert re.search(needle, result.stderr), result.stderr


def test_config_check_on_a_missing_file() -> None:
    result = CliRunner().invoke(main, ["config", "check", str(CONFIGS / "nope.toml")])
    assert result.exit_code == 1
    assert "no such file" in result.stderr


def test_config_check_summarises_a_valid_file() -> None:
    result = CliRunner().invoke(
        main, ["config", "check", str(CONFIGS / "good_two_sources.toml")], env=ENV
    )
    assert result.exit_code == 0, result.output
    assert "valid" in result.stdout
    assert "2 sources, 3 destinations" in result.stdout
    assert "web-eu: app_id 2222222222, eu" in result.stdout
    assert "web-key-123456" not in result.stdout  # secrets are masked


def test_example_config_is_valid_as_shipped_and_takes_the_keys_from_the_environment() -> None:
    assert check_config(EXAMPLE, {}) == []
    result = CliRunner().invoke(main, ["config", "check", str(EXAMPLE)], env={})
    assert result.exit_code == 0, result.stderr
    assert "valid" in result.stdout
    env = {"WEB_WRITE_KEY": "w" * 20, "IOS_WRITE_KEY": "i" * 20, "BACKEND_WRITE_KEY": "b" * 20}
    config = load_config(EXAMPLE, env)
    assert [s.write_key for s in config.sources] == ["w" * 20, "i" * 20, "b" * 20]


def test_load_config_raises_with_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "bad_many.toml", {})
    assert len(info.value.problems) >= 13
    assert "server.port" in str(info.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(3600, 3600.0), (0.5, 0.5), ("90s", 90.0), ("15m", 900.0), ("4h", 14400.0),
     ("1h30m", 5400.0), ("7d", 604800.0), ("200ms", 0.2)],
)  # fmt: skip
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["4 hours", "h", "", "-1s", -5, True, "1x"])
def test_bad_durations(text: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_region_as_written_reaches_the_profile(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + '  region = "EU"\n'), {})
    settings = config.sources[0].destinations[0].settings
    assert settings.region == "eu"
    assert settings.region_setting == "EU"
    assert settings.heap_base_url == EU_BASE_URL


def test_segment_heap_cloud_needs_its_region_setting(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '  profile = "segment-heap-cloud"\n')
    (problem,) = check_config(path, {})
    assert problem.path == "sources[0].destinations[0]"
    assert "region" in problem.message
    assert (
        check_config(
            write(tmp_path, MINIMAL + '  profile = "segment-heap-cloud"\n  region = "US"\n'), {}
        )
        == []
    )


def test_delivery_accepts_every_delivery_setting(tmp_path: Path) -> None:
    text = (
        """
[server]
retention = "3d"

[delivery]
batch_size = 200
flush_interval = "50ms"
rate_limits = false
app_events_per_minute = 6000
identity_events_per_minute = 500
time_scale = 10
concurrency = 3
request_timeout = "5s"
retry_base = "500ms"
retry_cap = "2m"
lease_seconds = 90
"""
        + MINIMAL
    )
    config = load_config(write(tmp_path, text), {})
    assert config.retention == 3 * 86400
    assert config.delivery == DeliverySettings(
        batch_size=200,
        flush_interval=0.05,
        rate_limits=False,
        app_events_per_minute=6000,
        identity_events_per_minute=500,
        time_scale=10.0,
        concurrency=3,
        request_timeout=5.0,
        retry_base=0.5,
        retry_cap=120.0,
        lease_seconds=90.0,
    )


def test_every_delivery_field_is_a_key_of_the_file() -> None:
    """A setting added to DeliverySettings is accepted in [delivery] without more work."""
    assert set(_delivery_checks()) == {f.name for f in dataclasses.fields(DeliverySettings)}


def test_delivery_defaults_when_absent(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[delivery]\n" + MINIMAL), {})
    assert config.delivery == DeliverySettings()
    assert config.retention == Config(sources=()).retention


@pytest.mark.parametrize(
    ("line", "path", "needle"),
    [
        ("retry_cap = 0", "delivery.retry_cap", "above zero"),
        ('lease_seconds = "soon"', "delivery.lease_seconds", "not a duration"),
        ("retry_base = 60\nretry_cap = 10", "delivery.retry_cap", "below retry_base"),
        ("retry_capp = 10", "delivery.retry_capp", "did you mean 'retry_cap'"),
        ("concurrency = 0", "delivery.concurrency", "positive integer"),
        ("time_scale = -1", "delivery.time_scale", "positive number"),
    ],
)
def test_bad_delivery_settings(tmp_path: Path, line: str, path: str, needle: str) -> None:
    problems = check_config(write(tmp_path, f"[delivery]\n{line}\n" + MINIMAL), {})
    assert [(p.path, needle in p.message) for p in problems] == [(path, True)], problems


def test_bad_retention(tmp_path: Path) -> None:
    (problem,) = check_config(write(tmp_path, '[server]\nretention = "0s"\n' + MINIMAL), {})
    assert problem.path == "server.retention"
    assert problem.line == 2


def test_config_check_warns_about_a_profile_whose_identifies_heap_refuses(tmp_path: Path) -> None:
    segment = MINIMAL + '  profile = "segment"\n'
    result = CliRunner().invoke(main, ["config", "check", str(write(tmp_path, segment))])
    assert result.exit_code == 0  # valid: a warning, not a problem
    (line,) = result.stderr.splitlines()
    assert line.startswith("warning: destination web.123: profile 'segment' adds the user")
    chosen = segment + '  options = { id_property = "_id" }\n'
    result = CliRunner().invoke(main, ["config", "check", str(write(tmp_path, chosen))])
    assert (result.exit_code, result.stderr) == (0, "")
