"""``heaprelay serve``: run the ingest API (and the delivery workers) in one process."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

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
        destinations=(Destination(id="heap", settings=settings),),
    )
    return Config(sources=(source,), data_dir=data_dir, queue_url=queue_url, host=host, port=port)


@click.command()
@click.option(
    "--app-id",
    envvar="HEAPRELAY_APP_ID",
    default=None,
    help="Heap app id (required, except with --sandbox).",
)
@click.option(
    "--write-key",
    envvar="HEAPRELAY_WRITE_KEY",
    default=None,
    help="The write key the SDKs send (HTTP Basic user or 'writeKey' in the body); "
    "required, except with --sandbox (default there: sandbox).",
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
    "--sandbox",
    is_flag=True,
    help="Deliver to an embedded fake Heap at http://HOST:PORT/fake-heap instead of Heap "
    "(see what arrives at /fake-heap/_fake/report, /_fake/events, /_fake/users).",
)
def command(
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
    sandbox: bool,
) -> None:
    """Accept Segment/RudderStack events and relay them to Heap.

    Point an SDK's host at http://HOST:PORT. Stops cleanly on SIGTERM/SIGINT.
    """
    from heaprelay import server

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
    if app_id is None:
        raise click.BadParameter("required (or use --sandbox)", param_hint="--app-id")
    if write_key is None:
        raise click.BadParameter("required (or use --sandbox)", param_hint="--write-key")
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
