"""``[[audiences]]`` in the configuration file: good tables load into ``Config.audiences``
(and give their source its history window); broken ones are reported with line and path."""

from __future__ import annotations

from pathlib import Path

import pytest
from _config_files import assert_reported, write
from click.testing import CliRunner

from heaprelay.audiences import audience_key
from heaprelay.audiences.rules import member_query
from heaprelay.cli import main
from heaprelay.config import AudienceRule
from heaprelay.config_file import check_config, load_config

SOURCES = """
[[sources]]
name = "web"
write_key = "k1"

  [[sources.destinations]]
  app_id = "123"

[[sources]]
name = "backend"
write_key = "k2"

  [[sources.destinations]]
  app_id = "456"
"""

GOOD = (
    SOURCES
    + """
[[audiences]]
name = "Repeat Buyers"
source = "web"
every = "1h"
  [audiences.rule]
  event = "Order Completed"
  at_least = 2
  within = "30d"
  traits = { plan = "pro", seats = 3, trial = false }

[[audiences]]
name = "Viewers"
key = "seen_it"
source = "web"
  [audiences.rule]
  event = "Viewed"
  within = "45d"
"""
)


def test_audiences_load_with_their_keys_and_rules(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), {})
    repeat, viewers = config.audiences
    assert (repeat.name, repeat.key, repeat.source, repeat.every) == (
        "Repeat Buyers",
        "repeat_buyers",
        "web",
        3600.0,
    )
    assert repeat.rule == AudienceRule(
        event="Order Completed",
        within=30 * 86400.0,
        at_least=2,
        traits=(("plan", "pro"), ("seats", 3), ("trial", False)),
    )
    assert (viewers.key, viewers.every, viewers.rule.at_least) == ("seen_it", 3600.0, 1)
    assert config.audience("seen_it") is viewers
    assert config.audience("Repeat Buyers") is repeat
    # Only sources with audiences keep a history: as long as their longest window.
    assert config.history_windows() == {"web": 45 * 86400.0}
    query = member_query(repeat, now=1e9)
    assert (query.start, query.end, query.at_least) == (1e9 - 30 * 86400.0, 1e9, 2)


def test_a_source_may_keep_its_history_longer(tmp_path: Path) -> None:
    text = GOOD.replace('name = "web"\n', 'name = "web"\nhistory_window = "90d"\n', 1)
    assert load_config(write(tmp_path, text), {}).history_windows() == {"web": 90 * 86400.0}


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("Order Completed Last 30days", "order_completed_last_30days"),
        ("Repeat Buyers", "repeat_buyers"),
        ("  --Dormant   Shoppers!! ", "dormant_shoppers"),
        ("VIP (EU)", "vip_eu"),
    ],
)
def test_audience_key(key: str, name: str) -> None:
    assert audience_key(key) == name


BAD = [
    ("  at_least = 2\n", "  at_least = 0\n", 22, "audiences[0].rule.at_least", "positive integer"),
    ('  within = "30d"\n', '  within = "soon"\n', 23, "audiences[0].rule.within", "not a duration"),
    ('  within = "30d"\n', "", 20, "audiences[0].rule", "within is required"),
    ('source = "web"\nevery', 'source = "shop"\nevery', 18, "audiences[0].source", "no source"),
    ('every = "1h"\n', 'every = "0s"\n', 19, "audiences[0].every", "above zero"),
    ('  event = "Order Completed"\n', "", 20, "audiences[0].rule", "event is required"),
    ("trial = false }", "trial = [1] }", 24, "audiences[0].rule.traits.trial", "a list"),
    (
        'name = "Viewers"\nkey = "seen_it"',
        'name = "Viewers"\nkey = "repeat_buyers"',
        26,
        "audiences[1]",
        "also the key of audiences[0]",
    ),
    ('name = "Viewers"\n', 'name = "Repeat Buyers"\n', 27, "audiences[1].name", "is also"),
    (
        'name = "Viewers"\nkey = "seen_it"\n',
        'name = "!!!"\n',
        27,
        "audiences[1].name",
        "no letters or digits",
    ),
    (
        '  within = "45d"\n',
        '  within = "45d"\n  count = 3\n',
        33,
        "audiences[1].rule.count",
        "unknown key",
    ),
]


@pytest.mark.parametrize(("old", "new", "line", "path", "needle"), BAD)
def test_bad_audiences_are_reported_with_line_and_path(
    tmp_path: Path, old: str, new: str, line: int, path: str, needle: str
) -> None:
    assert_reported(tmp_path, GOOD, old, new, line, path, needle)


def test_a_history_window_shorter_than_an_audience_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace('name = "web"\n', 'name = "web"\nhistory_window = "7d"\n', 1)
    problems = check_config(write(tmp_path, text), {})
    assert [p.path for p in problems] == ["sources[0].history_window"]
    assert problems[0].line == 4
    assert "shorter than the longest window" in problems[0].message


def test_config_check_prints_audience_problems_with_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('source = "web"\nevery', 'source = "shop"\nevery', 1))
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 1
    assert f"{path}:18: audiences[0].source: no source named 'shop'" in result.output
