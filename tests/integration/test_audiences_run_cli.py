"""``heaprelay audiences run``: what it refuses, in one line with the exit status 2."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner

from heaprelay.cli import main
from heaprelay.queue import open_queue

CONFIG = """
[server]
data_dir = "{data_dir}"

[[sources]]
name = "web"
write_key = "k1"

  [[sources.destinations]]
  app_id = "123"
{audiences}
"""

AUDIENCE = """
[[audiences]]
name = "Repeat Buyers"
source = "web"
  [audiences.rule]
  event = "Order Completed"
  within = "30d"
"""


def config(tmp_path: Path, audiences: str = AUDIENCE) -> Path:
    path = tmp_path / "heaprelay.toml"
    path.write_text(CONFIG.format(data_dir=tmp_path, audiences=audiences))
    return path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "audiences run needs --config FILE"),
        (["Nobody", "--config", "{config}"], "no audience named 'Nobody'"),
        (["--config", "{config}", "--now", "yesterday"], "--now 'yesterday' is not a time"),
    ],
)
def test_audiences_run_refuses_in_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    path = config(tmp_path)
    argv = ["audiences", "run", *(a.replace("{config}", str(path)) for a in args)]
    result = CliRunner().invoke(main, argv, env={"HEAPRELAY_CONFIG": ""})
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_audiences_run_without_audiences(tmp_path: Path) -> None:
    path = config(tmp_path, audiences="")
    result = CliRunner().invoke(main, ["audiences", "run", "--config", str(path)])
    assert result.exit_code == 2
    assert "defines no [[audiences]] or [[computed_traits]]" in result.output


def test_audiences_run_on_a_bad_config_prints_its_problems(tmp_path: Path) -> None:
    path = config(tmp_path, audiences=AUDIENCE.replace('within = "30d"', 'within = "soon"'))
    result = CliRunner().invoke(main, ["audiences", "run", "--config", str(path)])
    assert result.exit_code == 1
    assert f"{path}:17: audiences[0].rule.within" in result.output


def test_audiences_run_refuses_a_key_other_than_the_first_syncs(tmp_path: Path) -> None:
    path = config(tmp_path)
    members = tmp_path / "members.csv"
    members.write_text("user_id\nu1\n")

    async def create() -> None:  # the relay's queue, as serve leaves it
        await (await open_queue(f"sqlite:///{tmp_path / 'heaprelay.db'}")).close()

    asyncio.run(create())
    first = ["audiences", "sync", "Repeat Buyers", str(members), "--key", "vip"]
    synced = CliRunner().invoke(main, [*first, "--config", str(path)])
    assert synced.exit_code == 0, synced.output
    result = CliRunner().invoke(main, ["audiences", "run", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "has key 'vip' since its first sync" in result.output
    assert len(result.output.strip().splitlines()) == 1
