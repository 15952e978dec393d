"""``heaprelay serve``: run the ingest API (and the delivery workers) in one process."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import click
from click.core import ParameterSource

from heaprelay.cli.config import parse_options
from heaprelay.config import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_PORT,
    Config,
    Destination,
    Role,
    Source,
    default_data_dir,
)
from heaprelay.logs import LogFormat
from heaprelay.queue import redact_url
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
    options: Mapping[str, str] | None = None,
) -> Config:
    """Zero-config mode: one source (the write key) with one Heap destination (the app id)."""
    settings = DestinationSettings(
        app_id=app_id,
        profile=profile,
        region="eu" if (region or "").lower() == "eu" else "us",
        base_url=base_url,
        options=dict(options or {}),
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
PER_DESTINATION_FLAGS = (
    "app_id",
    "write_key",
    "profile",
    "region",
    "base_url",
    "option_pairs",
    "device_mode",
)
#: Flags that, given explicitly (or by their ``HEAPRELAY_*`` variable), win over the file.
SERVER_FLAGS = (
    "host",
    "port",
    "data_dir",
    "queue_url",
    "role",
    "admin_token",
    "metrics_token",
    "header_timeout",
    "body_timeout",
    "keep_alive_timeout",
    "max_connections",
)


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
@click.option(
    "--port",
    envvar="HEAPRELAY_PORT",
    type=click.IntRange(1, 65535),
    default=DEFAULT_PORT,
    show_default=True,
)
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
    "--option",
    "option_pairs",
    envvar="HEAPRELAY_OPTION",
    multiple=True,
    metavar="KEY=VALUE",
    help="A profile option (repeat for several; HEAPRELAY_OPTION holds them separated by "
    "spaces). `heaprelay transform --help` lists each profile's options.",
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
    "--log-format",
    envvar="HEAPRELAY_LOG_FORMAT",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line (time, level, logger, message).",
)
@click.option(
    "--admin-token",
    envvar="HEAPRELAY_ADMIN_TOKEN",
    default=None,
    help="Token to log in to the dashboard (/ui) with; at least 12 characters. Prefer the "
    "variable HEAPRELAY_ADMIN_TOKEN (a flag shows in the process list). Without one, /ui is "
    "served only when listening on loopback.",
)
@click.option(
    "--metrics-token",
    envvar="HEAPRELAY_METRICS_TOKEN",
    default=None,
    help="Require Authorization: Bearer TOKEN on /metrics (default: open). Prefer the "
    "variable HEAPRELAY_METRICS_TOKEN.",
)
@click.option(
    "--header-timeout",
    envvar="HEAPRELAY_HEADER_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help=f"Seconds a connection has to send a request's headers; then 408 and it is closed "
    f"[default: {DEFAULT_HEADER_TIMEOUT:g}].",
)
@click.option(
    "--body-timeout",
    envvar="HEAPRELAY_BODY_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help=f"Seconds a request has to send its body; then 408, nothing of it stored "
    f"[default: {DEFAULT_BODY_TIMEOUT:g}].",
)
@click.option(
    "--keep-alive-timeout",
    envvar="HEAPRELAY_KEEP_ALIVE_TIMEOUT",
    type=click.FloatRange(min=1),
    default=None,
    help=f"Seconds an idle keep-alive connection stays open "
    f"[default: {DEFAULT_KEEP_ALIVE_TIMEOUT:g}].",
)
@click.option(
    "--max-connections",
    envvar="HEAPRELAY_MAX_CONNECTIONS",
    type=click.IntRange(min=1),
    default=None,
    help=f"Connections served at once; requests past it are answered 503 "
    f"[default: {DEFAULT_MAX_CONNECTIONS}].",
)
@click.option(
    "--sandbox",
    envvar="HEAPRELAY_SANDBOX",
    is_flag=True,
    help="Deliver to an embedded fake Heap at http://HOST:PORT/fake-heap instead of Heap "
    "(see what arrives at /fake-heap/_fake/report, /_fake/events, /_fake/users). "
    "HEAPRELAY_SANDBOX=1 does the same.",
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
    option_pairs: tuple[str, ...],
    queue_url: str | None,
    role: Role,
    log_level: str,
    device_mode: bool | None,
    log_format: LogFormat,
    admin_token: str | None,
    metrics_token: str | None,
    header_timeout: float | None,
    body_timeout: float | None,
    keep_alive_timeout: float | None,
    max_connections: int | None,
    sandbox: bool,
) -> None:
    """Accept Segment/RudderStack events and relay them to Heap.

    Point an SDK's host at http://HOST:PORT. Stops cleanly on SIGTERM/SIGINT.

    One source and one Heap destination from the flags (--write-key, --app-id, ...), or any
    number of both from a configuration file (--config FILE).

    Exit status: 0 after a clean stop; 1 when the --config file has problems (all listed);
    2 for bad flags, or when the relay cannot start (the port is taken, the queue cannot be
    opened, the data dir cannot be created), with the reason on one line.
    """
    if config_file is not None:
        config = _config_from_file(config_file, sandbox=sandbox)
        banner = (
            f"sandbox: delivering to the embedded fake Heap; what it accepted: "
            f"http://{config.host}:{config.port}/fake-heap/_fake/report"
        )
    else:
        if sandbox:
            if base_url:
                raise click.UsageError(
                    "--sandbox delivers to the embedded fake Heap; drop --base-url"
                )
            app_id = app_id or "sandbox-app"
            write_key = write_key or "sandbox"
        if app_id is None:
            raise click.BadParameter(
                "required (or use --sandbox or --config)", param_hint="--app-id"
            )
        if write_key is None:
            raise click.BadParameter(
                "required (or use --sandbox or --config)", param_hint="--write-key"
            )
        if not app_id.strip():
            raise click.BadParameter("must not be empty", param_hint="--app-id")
        if not write_key.strip():
            raise click.BadParameter("must not be empty", param_hint="--write-key")
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
            options=parse_options(option_pairs),
        )
        config = dataclasses.replace(
            config,
            role=role,
            sandbox=sandbox,
            admin_token=_token(admin_token, "--admin-token"),
            metrics_token=_token(metrics_token, "--metrics-token"),
        )
        limits = {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "keep_alive_timeout": keep_alive_timeout,
            "max_connections": max_connections,
        }
        config = dataclasses.replace(
            config,
            **{k: v for k, v in limits.items() if v is not None},  # type: ignore[arg-type]
        )
        try:
            validate_settings(config.sources[0].destinations[0].settings)
        except SettingsError as e:
            raise click.UsageError(str(e)) from None
        except ImportError:  # a registered profile whose module is not there: reported on use
            pass
        banner = (
            f"sandbox: delivering to the embedded fake Heap; what it accepted: "
            f"http://{host}:{port}/fake-heap/_fake/report "
            f"(write key {write_key!r}, app id {app_id!r})"
        )
        if device_mode is not False:
            banner += (
                f"\nsandbox: device mode: web pages whose SDK takes its settings from "
                f"http://{host}:{port} load the fake Heap's heap.js; what they sent to Heap: "
                f"http://{host}:{port}/fake-heap/_fake/browser (--no-device-mode: off)"
            )
    banner += (
        "\nsandbox: /fake-heap/_fake/* (every event Heap got, and the fake's controls) "
        "answers only clients on this machine (127.0.0.0/8, ::1), never another site's pages"
    )
    _start(
        config,
        log_level=log_level,
        log_format=log_format,
        banner=banner if config.sandbox else None,
    )


class CannotStart(click.ClickException):
    """The relay cannot start (port, queue, data dir): one line, exit 2."""

    exit_code = 2


def _start(config: Config, *, log_level: str, log_format: LogFormat, banner: str | None) -> None:
    """Check what can be checked before serving, then serve; every reason not to start is
    one line (:class:`CannotStart`)."""
    from heaprelay import server
    from heaprelay.cli.config import echo_warnings

    if config.queue_url is not None and not config.queue_url.startswith(_QUEUE_SCHEMES):
        raise click.BadParameter(
            f"{redact_url(config.queue_url)!r}: use sqlite:///PATH or postgresql://USER@HOST/DB",
            param_hint="--queue",
        )
    if config.queue_url is None:  # the SQLite file goes in the data dir
        try:
            if not config.data_dir.exists():  # queued events are for the relay's user alone
                config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                config.data_dir.chmod(0o700)
        except OSError as e:
            raise CannotStart(
                f"cannot create the data dir {config.data_dir}: {e.strerror or e}"
            ) from None
    echo_warnings(config)

    def announce() -> None:
        if banner:
            click.echo(banner, err=True)

    try:
        server.run(config, log_level=log_level, log_format=log_format, announce=announce)
    except server.StartupError as e:
        raise CannotStart(str(e)) from None


_QUEUE_SCHEMES = ("sqlite:", "postgresql:", "postgres:")


def _token(value: str | None, flag: str) -> str | None:
    from heaprelay.config_file import MIN_TOKEN_LENGTH

    if value is None:
        return None
    if len(value.strip()) < MIN_TOKEN_LENGTH:
        raise click.BadParameter(
            f"too short: use at least {MIN_TOKEN_LENGTH} characters", param_hint=flag
        )
    return value.strip()


def _config_from_file(path: Path, *, sandbox: bool) -> Config:
    """``--config``: the file (on any problem, print them all as ``config check`` does and
    exit 1), with the server flags given explicitly or by their ``HEAPRELAY_*`` variable on
    top, and ``--sandbox``. Per-destination flags on the command line are a usage error; set
    by their variables they are ignored, with a warning."""
    from heaprelay.cli.config import load_or_exit

    ctx = click.get_current_context()
    ignored: list[str] = []
    params = {p.name: p for p in ctx.command.params}
    for name in PER_DESTINATION_FLAGS:
        source = ctx.get_parameter_source(name)
        param = params[name]
        if source is ParameterSource.COMMANDLINE:
            flag = max(param.opts, key=len)
            raise click.UsageError(
                f"{flag} cannot be combined with --config: set it in the file's "
                "[[sources]] / [[sources.destinations]]"
            )
        if source is ParameterSource.ENVIRONMENT and isinstance(param, click.Option):
            ignored.append(str(param.envvar))
    if ignored:
        click.echo(f"warning: --config given; ignoring {', '.join(ignored)}", err=True)
    config = load_or_exit(path)
    for flag in ("admin_token", "metrics_token"):
        if ctx.params[flag] is not None:
            _token(ctx.params[flag], "--" + flag.replace("_", "-"))
    overrides: dict[str, object] = {
        name: ctx.params[name]
        for name in SERVER_FLAGS
        if ctx.get_parameter_source(name)
        in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
        and ctx.params[name] is not None
    }
    if sandbox:
        overrides["sandbox"] = True
    return dataclasses.replace(config, **overrides)  # type: ignore[arg-type]
