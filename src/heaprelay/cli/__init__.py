"""The ``heaprelay`` command. Each subcommand lives in its own module of this package and is
loaded only when used, so ``heaprelay --help`` stays fast and a module that is not there is
not listed.

Errors reach the user as one line on stderr, never a traceback: ``Error: …`` and the exit
status (README, "Exit status"): 1 when the command ran and says no (a config file with
problems, ids that are not dead letters, input lines that are not JSON, a prompt answered
no); 2 when it cannot do its work (bad flags or arguments, a file or setting it cannot use, a
queue, port or server it cannot reach)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any, NoReturn

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
    "audiences": "audiences",
}


class _LazyGroup(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("standalone_mode", True):
            return super().main(*args, **kwargs)
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as e:  # click prints usage + hint + error: one line instead
            where = e.ctx.command_path if e.ctx is not None else "heaprelay"
            _exit(f"Error: {e.format_message()} (see '{where} --help')", e.exit_code)
        except click.ClickException as e:
            _exit(f"Error: {' '.join(e.format_message().split())}", e.exit_code)
        except click.Abort:
            _exit("Aborted.", 1)
        sys.exit(code if isinstance(code, int) else 0)

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


def _exit(line: str, code: int) -> NoReturn:
    click.echo(line, err=True)
    sys.exit(code)
