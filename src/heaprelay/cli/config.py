"""``heaprelay config check [FILE]``: validate a configuration file and explain every problem."""

from __future__ import annotations

import os
from pathlib import Path

import click

from heaprelay.config import DEFAULT_HEAP_SCRIPT_URL, Config, Destination
from heaprelay.config_file import ConfigError, Problem, load_config, load_queue_location

DEFAULT_CONFIG_FILE = "heaprelay.toml"


def default_config_path() -> str:
    """``$HEAPRELAY_CONFIG``, else ``./heaprelay.toml``."""
    return os.environ.get("HEAPRELAY_CONFIG") or DEFAULT_CONFIG_FILE


def echo_problems(problems: list[Problem], file: str) -> None:
    """Print problems the way ``config check`` and ``serve --config`` both do (on stderr):
    one alone on its line; several after a line that counts them, one a line."""
    if len(problems) == 1:
        click.echo(f"Error: {problems[0]}", err=True)
        return
    click.echo(f"{file}: {len(problems)} problems:", err=True)
    for problem in problems:
        click.echo(f"  {problem}", err=True)


def load_or_exit(path: Path) -> Config:
    """Load ``path`` for a command (``serve --config``); on any problem print them all, as
    ``config check`` does, and exit 1."""
    try:
        return load_config(path, os.environ)
    except ConfigError as e:
        echo_problems(e.problems, str(path))
        raise SystemExit(1) from None


def warnings(config: Config) -> list[str]:
    """What a valid configuration will surprise its user with (one line each), e.g. a
    profile whose requests Heap refuses (:func:`heaprelay.transform.settings_warnings`)."""
    from heaprelay.transform import settings_warnings

    return [
        f"warning: destination {d.id}: {text}"
        for source in config.sources
        for d in source.destinations
        for text in settings_warnings(d.settings)
    ]


def echo_warnings(config: Config) -> None:
    for line in warnings(config):
        click.echo(line, err=True)


def queue_location_or_exit(path: Path) -> tuple[str | None, Path]:
    """``[server]``'s queue URL and data dir from ``path`` (nothing else is read); on a
    problem print it as ``config check`` does and exit 1."""
    try:
        return load_queue_location(path, os.environ)
    except ConfigError as e:
        echo_problems(e.problems, str(path))
        raise SystemExit(1) from None


def parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--option KEY=VALUE`` flags (``serve``, ``transform``) as a dict; a usage error for a
    pair without ``=`` or a key given twice."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="'--option'")
        if key in options:
            raise click.BadParameter(f"{key!r} given twice", param_hint="'--option'")
        options[key] = value
    return options


def _mask(secret: str) -> str:
    return secret[:3] + "…" if len(secret) > 8 else "…"


def summary(config: Config) -> list[str]:
    """A short description of a valid configuration (write keys masked)."""
    n_dest = sum(len(s.destinations) for s in config.sources)
    lines = [
        f"{len(config.sources)} source{'s' if len(config.sources) != 1 else ''}, "
        f"{n_dest} destination{'s' if n_dest != 1 else ''}; "
        f"listening on {config.host}:{config.port}; queue: {config.queue_url or config.data_dir}"
    ]
    if config.public_url:
        lines.append(f"public URL (device-mode settings): {config.public_url}")
    for source in config.sources:
        lines.append(f"source {source.name} (write key {_mask(source.write_key)})")
        for d in source.destinations:
            s = d.settings
            where = s.base_url or s.region
            extras = []
            if d.event_filter.mode != "disable":
                extras.append(f"{d.event_filter.mode}-list of {len(d.event_filter.events)}")
            if d.consent:
                extras.append("consent: " + ", ".join(sorted({c.provider for c in d.consent})))
            if s.options:
                extras.append(", ".join(f"{k}={v}" for k, v in sorted(s.options.items())))
            if d.device_mode:
                extras.append(_device_mode(d))
            if not d.enabled:
                extras.append("disabled")
            tail = f" [{'; '.join(extras)}]" if extras else ""
            lines.append(f"  -> {d.id}: app_id {s.app_id}, {where}, profile {s.profile}{tail}")
    return lines


def _device_mode(d: Destination) -> str:
    script = (
        "" if d.heap_script_url == DEFAULT_HEAP_SCRIPT_URL else f", Heap's script {d.heap_script()}"
    )
    if d.device_mode_server_side:
        return f"device mode: browser SDKs' events sent both by the browser and server-side{script}"
    return f"device mode: browser SDKs' events sent by the browser only{script}"


@click.group(name="config")
def command() -> None:
    """Configuration files."""


@command.command(name="check")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
def check(file: Path | None) -> None:
    """Validate FILE (default: $HEAPRELAY_CONFIG or ./heaprelay.toml) and explain every problem.

    Exits 1 when the file is not valid; prints a summary of its sources and destinations
    when it is.
    """
    path = file or Path(default_config_path())
    config = load_or_exit(path)
    click.echo(f"{path}: valid")
    for line in summary(config):
        click.echo(f"  {line}")
    echo_warnings(config)
