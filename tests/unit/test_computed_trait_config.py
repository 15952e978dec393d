"""``[[computed_traits]]`` in the configuration file: good tables load into
``Config.audiences`` as kind "trait" (and give their source its history window); broken ones
are reported with line and path, and names and keys are distinct from the audiences'."""

from __future__ import annotations

from pathlib import Path

import pytest
from _config_files import assert_reported, write
from click.testing import CliRunner

from heaprelay.cli import main
from heaprelay.config import AudienceRule
from heaprelay.config_file import load_config

GOOD = """
[[sources]]
name = "web"
write_key = "k1"

  [[sources.destinations]]
  app_id = "123"

[[audiences]]
name = "Repeat Buyers"
source = "web"
  [audiences.rule]
  event = "Order Completed"
  within = "7d"

[[computed_traits]]
name = "Orders Last 30 Days"
source = "web"
every = "1h"
  [computed_traits.rule]
  event = "Order Completed"
  within = "30d"
  count = true
"""


def test_a_computed_trait_loads_as_a_trait_with_its_key(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), {})
    audience, trait = config.audiences
    assert (audience.kind, trait.kind) == ("audience", "trait")
    assert (trait.name, trait.key, trait.source, trait.every) == (
        "Orders Last 30 Days",
        "orders_last_30_days",
        "web",
        3600.0,
    )
    assert trait.rule == AudienceRule(event="Order Completed", within=30 * 86400.0, count=True)
    assert config.audience("orders_last_30_days") is trait
    # The source keeps its events as long as its longest window, the trait's.
    assert config.sources[0].history_window == 30 * 86400.0


def test_a_sum_trait_records_its_property_for_its_source_only(tmp_path: Path) -> None:
    text = GOOD.replace("  count = true\n", '  sum = "revenue"\n') + (
        '\n[[sources]]\nname = "other"\nwrite_key = "k2"\n'
        '  [[sources.destinations]]\n  app_id = "456"\n'
    )
    config = load_config(write(tmp_path, text), {})
    trait = config.audiences[1]
    assert (trait.kind, trait.rule.count, trait.rule.sum) == ("trait", False, "revenue")
    web, other = config.sources
    assert web.history_sums == (("Order Completed", "revenue"),)
    assert (other.history_sums, other.history_window) == ((), 0.0)
    # A count trait records no property.
    assert load_config(write(tmp_path, GOOD), {}).sources[0].history_sums == ()


def test_a_key_overrides_the_name(tmp_path: Path) -> None:
    text = GOOD.replace('name = "Orders Last 30 Days"\n', 'name = "Orders"\nkey = "n_orders"\n')
    assert load_config(write(tmp_path, text), {}).audiences[1].key == "n_orders"


BAD = [
    ("  count = true\n", "", 20, "computed_traits[0].rule", "exactly one of count"),
    ("  count = true\n", "  count = false\n", 23, "computed_traits[0].rule.count", "exactly one"),
    ("  count = true\n", "  count = 1\n", 23, "computed_traits[0].rule.count", "exactly one"),
    (
        "  count = true\n",
        '  count = true\n  sum = "revenue"\n',
        20,
        "computed_traits[0].rule",
        "exactly one of count",
    ),
    ("  count = true\n", '  sum = ""\n', 23, "computed_traits[0].rule.sum", "numeric property"),
    ("  count = true\n", "  sum = [1]\n", 23, "computed_traits[0].rule.sum", "expected a string"),
    (
        "  count = true\n",
        '  count = false\n  sum = "revenue"\n',
        20,
        "computed_traits[0].rule",
        "exactly one of count",
    ),
    (
        "  count = true\n",
        "  count = true\n  at_least = 2\n",
        24,
        "computed_traits[0].rule.at_least",
        "unknown key",
    ),
    ('  within = "30d"\n', "", 20, "computed_traits[0].rule", "within is required"),
    ('  within = "30d"\n', '  within = "a while"\n', 22, "computed_traits[0].rule.within", ""),
    ('every = "1h"\n', 'every = "0s"\n', 19, "computed_traits[0].every", "above zero"),
    (
        'source = "web"\nevery',
        'source = "shop"\nevery',
        18,
        "computed_traits[0].source",
        "no source",
    ),
    (
        'name = "Orders Last 30 Days"\n',
        'name = "Repeat Buyers"\n',
        17,
        "computed_traits[0].name",
        "is also [[audiences]] 'Repeat Buyers'",
    ),
    (
        'name = "Orders Last 30 Days"\n',
        'name = "Orders"\nkey = "repeat_buyers"\n',
        16,
        "computed_traits[0]",
        "also the key of [[audiences]] 'Repeat Buyers'",
    ),
]


@pytest.mark.parametrize(("old", "new", "line", "path", "needle"), BAD)
def test_bad_computed_traits_are_reported_with_line_and_path(
    tmp_path: Path, old: str, new: str, line: int, path: str, needle: str
) -> None:
    assert_reported(tmp_path, GOOD, old, new, line, path, needle)


def test_config_check_prints_the_line_of_a_trait_without_count(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("  count = true\n", ""))
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 1
    assert f"{path}:20: computed_traits[0].rule: exactly one of count" in result.output
