"""``heaprelay serve``: run the ingest API (and the delivery workers) in one process."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
from click.core import ParameterSource

from heaprelay.config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Config,
    Destination,
    Role,
    Source,
    default_data_dir,
)
from heaprelay.transform import PROFILE_NAMES, DestinationSettings, SettingsError, validate_settings


def config_from_flags(
    *,
    app_id: str,
    write_key: str,
    host: str,
    port: int,
    data_dir: Path,
    profile: str,
    region: str | None,
    base_url: str | None,
    queue_url: str | None,
    device_mode: bool = False,
) -> Config:
    """Zero-config mode: one source (the write key) with one Heap destination (the app id)."""
    settings = DestinationSettings(
        app_id=app_id,
        profile=profile,
        region="eu" if (region or "").lower() == "eu" else "us",
        base_url=base_url,
        region_setting=region,  # as written: segment-actions / segment-heap-cloud check it
    )
    source = Source(
        name="default",
        write_key=write_key,
        destinations=(Destination(id="heap", settings=settings, device_mode=device_mode),),
    )
    return Config(sources=(source,), data_dir=data_dir, queue_url=queue_url, host=host, port=port)


#: Flags that describe the one source and destination of the zero-config mode: with
#: ``--config`` they belong in the file.
PER_DESTINATION_FLAGS = ("app_id", "write_key", "profile", "region", "base_url", "device_mode")
#: Flags that, given explicitly (or by their ``HEAPRELAY_*`` variable), win over the file.
SERVER_FLAGS = ("host", "port", "data_dir", "queue_url", "role")


@click.command()
@click.option(
    "--config",
    "config_file",
    envvar="HEAPRELAY_CONFIG",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML file with sources, destinations and filters (see examples/heaprelay.toml; "
    "check it with `heaprelay config check FILE`). --host, --port, --data-dir, --queue, "
    "--role and --sandbox override it; the per-destination flags cannot be combined with it.",
)
@click.option(
    "--app-id",
    envvar="HEAPRELAY_APP_ID",
    default=None,
    help="Heap app id (required, except with --sandbox or --config).",
)
@click.option(
    "--write-key",
    envvar="HEAPRELAY_WRITE_KEY",
    default=None,
    help="The write key the SDKs send (HTTP Basic user or 'writeKey' in the body); "
    "required, except with --sandbox (default there: sandbox) or --config.",
)
@click.option("--host", envvar="HEAPRELAY_HOST", default=DEFAULT_HOST, show_default=True)
@click.option("--port", envvar="HEAPRELAY_PORT", type=int, default=DEFAULT_PORT, show_default=True)
@click.option(
    "--data-dir",
    envvar="HEAPRELAY_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the SQLite queue lives [default: $XDG_DATA_HOME/heaprelay].",
)
@click.option(
    "--profile",
    envvar="HEAPRELAY_PROFILE",
    type=click.Choice(PROFILE_NAMES),
    default="heap",
    show_default=True,
    help="How events become Heap requests (a peer to reproduce, or heap).",
)
@click.option(
    "--region",
    envvar="HEAPRELAY_REGION",
    type=click.Choice(["us", "eu", "US", "EU"]),
    default=None,
    help="Heap region [default: us]. Profiles segment-actions and segment-heap-cloud take it "
    "as Segment does: exactly US or EU (segment-heap-cloud requires it).",
)
@click.option(
    "--base-url", envvar="HEAPRELAY_BASE_URL", default=None, help="Heap API base URL override."
)
@click.option(
    "--queue",
    "queue_url",
    envvar="HEAPRELAY_QUEUE",
    default=None,
    help="Queue URL: sqlite:///PATH or postgresql://… [default: SQLite in the data dir].",
)
@click.option(
    "--role",
    envvar="HEAPRELAY_ROLE",
    type=click.Choice(["all", "api", "worker"]),
    default="all",
    show_default=True,
    help="all: accept and deliver events in this process; api: only accept them; worker: only "
    "deliver them. Run several of each against one PostgreSQL queue (--queue postgresql://…).",
)
@click.option(
    "--log-level",
    envvar="HEAPRELAY_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--device-mode/--no-device-mode",
    envvar="HEAPRELAY_DEVICE_MODE",
    default=None,
    help="Web pages load Heap's own script through the relay (their SDKs fetch settings "
    "here); browser SDKs' events then reach Heap from the browser, not server-side "
    "[default: on with --sandbox, else off].",
)
@click.option(
    "--sandbox",
    is_flag=True,
    help="Deliver to an embedded fake Heap at http://HOST:PORT/fake-heap instead of Heap "
    "(see what arrives at /fake-heap/_fake/report, /_fake/events, /_fake/users).",
)
def command(
    config_file: Path | None,
    app_id: str | None,
    write_key: str | None,
    host: str,
    port: int,
    data_dir: Path | None,
    profile: str,
    region: str | None,
    base_url: str | None,
    queue_url: str | None,
    role: Role,
    log_level: str,
    device_mode: bool | None,
    sandbox: bool,
) -> None:
    """Accept Segment/RudderStack events and relay them to Heap.

    Point an SDK's host at http://HOST:PORT. Stops cleanly on SIGTERM/SIGINT.

    One source and one Heap destination from the flags (--write-key, --app-id, ...), or any
    number of both from a configuration file (--config FILE).
    """
    from heaprelay import server

    if config_file is not None:
        config = _config_from_file(config_file, sandbox=sandbox)
        if config.sandbox:
            click.echo(
                f"sandbox: delivering to the embedded fake Heap; what it accepted: "
                f"http://{config.host}:{config.port}/fake-heap/_fake/report",
                err=True,
            )
        server.run(config, log_level=log_level)
        return
    if sandbox:
        if base_url:
            raise click.UsageError("--sandbox delivers to the embedded fake Heap; drop --base-url")
        app_id = app_id or "sandbox-app"
        write_key = write_key or "sandbox"
        click.echo(
            f"sandbox: delivering to the embedded fake Heap; what it accepted: "
            f"http://{host}:{port}/fake-heap/_fake/report "
            f"(write key {write_key!r}, app id {app_id!r})",
            err=True,
        )
        if device_mode is not False:
            click.echo(
                f"sandbox: device mode: web pages whose SDK takes its settings from "
                f"http://{host}:{port} load the fake Heap's heap.js; what they sent to Heap: "
                f"http://{host}:{port}/fake-heap/_fake/browser (--no-device-mode: off)",
                err=True,
            )
    if app_id is None:
        raise click.BadParameter("required (or use --sandbox or --config)", param_hint="--app-id")
    if write_key is None:
        raise click.BadParameter(
            "required (or use --sandbox or --config)", param_hint="--write-key"
        )
    config = config_from_flags(
        app_id=app_id,
        write_key=write_key,
        host=host,
        port=port,
        data_dir=data_dir or default_data_dir(),
        profile=profile,
        region=region,
        base_url=base_url,
        queue_url=queue_url,
        device_mode=sandbox if device_mode is None else device_mode,
    )
    config = dataclasses.replace(config, role=role)
    if not app_id.strip():
        raise click.BadParameter("must not be empty", param_hint="--app-id")
    if not write_key.strip():
        raise click.BadParameter("must not be empty", param_hint="--write-key")
    try:
        validate_settings(config.sources[0].destinations[0].settings)
    except SettingsError as e:
        raise click.UsageError(str(e)) from None
    except ImportError:  # a registered profile whose module is not there: reported on use
        pass
    config.data_dir.mkdir(parents=True, exist_ok=True)
    server.run(dataclasses.replace(config, sandbox=sandbox), log_level=log_level)


def _config_from_file(path: Path, *, sandbox: bool) -> Config:
    """``--config``: the file (on any problem, print them all as ``config check`` does and
    exit 1), with the server flags given explicitly or by their ``HEAPRELAY_*`` variable on
    top, and ``--sandbox``. Per-destination flags on the command line are a usage error; set
    by their variables they are ignored, with a warning."""
    from heaprelay.cli.config import load_or_exit

    ctx = click.get_current_context()
    ignored: list[str] = []
    for name in PER_DESTINATION_FLAGS:
        source = ctx.get_parameter_source(name)
        flag = "--" + name.replace("_", "-")
        if source is ParameterSource.COMMANDLINE:
            raise click.UsageError(
                f"{flag} cannot be combined with --config: set it in the file's "
                "[[sources]] / [[sources.destinations]]"
            )
        if source is ParameterSource.ENVIRONMENT:
            ignored.append(f"HEAPRELAY_{name.upper()}")
    if ignored:
        click.echo(f"warning: --config given; ignoring {', '.join(ignored)}", err=True)
    config = load_or_exit(path)
    overrides: dict[str, object] = {
        name: ctx.params[name]
        for name in SERVER_FLAGS
        if ctx.get_parameter_source(name)
        in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
        and ctx.params[name] is not None
    }
    if sandbox:
        overrides["sandbox"] = True
    config = dataclasses.replace(config, **overrides)  # type: ignore[arg-type]
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return config
