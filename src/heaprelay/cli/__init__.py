"""The ``heaprelay`` command. Each subcommand lives in its own module of this package and is
loaded only when used, so ``heaprelay --help`` stays fast and a module that is not there is
not listed."""

from __future__ import annotations

import importlib
import importlib.util

import click

from heaprelay import __version__

#: subcommand -> module in heaprelay.cli (the module defines a click command named ``command``).
COMMANDS: dict[str, str] = {
    "serve": "serve",
    "transform": "transform",
    "send": "send",
    "fake-heap": "fake_heap",
    "dlq": "dlq",
    "status": "status",
    "config": "config",
    "db": "db",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(
            name
            for name, module in COMMANDS.items()
            if importlib.util.find_spec(f"heaprelay.cli.{module}") is not None
        )

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None or importlib.util.find_spec(f"heaprelay.cli.{module}") is None:
            return None
        command: click.Command = importlib.import_module(f"heaprelay.cli.{module}").command
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="heaprelay")
def main() -> None:
    """heaprelay: a self-hosted Heap destination for Segment and RudderStack events."""
