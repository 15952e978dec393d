"""``heaprelay transform``: a dry run. Events in, the Heap requests they become out.

Input (FILE, or stdin when FILE is absent or ``-``): NDJSON events, a JSON array of events,
one event object, or a Segment batch object ``{"batch": [...]}`` (its ``context`` and
``integrations`` merged into each item, the item's own values winning, and its ``sentAt``
given to items without one, as Segment does).

Output, in input order: one line per Heap request on stdout,
``{"method": "POST", "url": "...", "body": {...}}``; one line per event not sent on stderr,
``{"index": i, "messageId": ..., "reason": "...", "detail": "..."}`` (``index``: the event's
place in the input, each NDJSON line counting as one). An NDJSON line that is not JSON is such
a line too (reason ``invalid_json``, the detail saying the line and column); the other lines
are transformed all the same. Exit 0 when the input was read (even if some events were not
sent), 1 when some line could not be read, 2 with a message when the input or the settings
could not be used at all.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson

from heaprelay.cli._events import InputError, Unreadable, parse_events
from heaprelay.cli.config import parse_options
from heaprelay.heap.models import HeapRequest
from heaprelay.messages.reasons import Reason
from heaprelay.transform import (
    PROFILE_NAMES,
    DestinationSettings,
    SettingsError,
    Skip,
    get_profile,
    transform,
    validate_settings,
)


def _fail(message: str) -> NoReturn:
    click.echo(f"heaprelay transform: {message}", err=True)
    raise SystemExit(2)


def _dumps(obj: Any) -> bytes:
    """Compact JSON, numbers as the body holds them (see ``transform._js.json_number``)."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # integers beyond 64 bits, lone surrogates: still valid JSON out
        return _dumps_each(obj)


def _dumps_each(obj: Any) -> bytes:
    """:func:`_dumps` value by value: what orjson refuses is written by ``json``."""
    if isinstance(obj, Mapping):
        items = (_dumps_each(str(k)) + b":" + _dumps_each(v) for k, v in obj.items())
        return b"{" + b",".join(items) + b"}"
    if isinstance(obj, list | tuple):
        return b"[" + b",".join(_dumps_each(v) for v in obj) + b"]"
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, ensure_ascii=True).encode()


def run(events: list[Any], settings: DestinationSettings) -> tuple[list[bytes], list[bytes]]:
    """Transform ``events``: (stdout lines, stderr lines), each ending with a newline."""
    out: list[bytes] = []
    err: list[bytes] = []
    for index, event in enumerate(events):
        if isinstance(event, Unreadable):
            record = {"index": index, "messageId": None, "reason": str(Reason.INVALID_JSON)}
            err.append(_dumps({**record, "detail": event.detail}) + b"\n")
            continue
        result = transform(event, settings)
        if isinstance(result, Skip):
            message_id = event.get("messageId") if isinstance(event, Mapping) else None
            record = {
                "index": index,
                "messageId": message_id,
                "reason": str(result.reason),
                "detail": result.detail,
            }
            err.append(_dumps(record) + b"\n")
        else:
            out.extend(_dumps(_line(r)) + b"\n" for r in result)
    return out, err


def _line(request: HeapRequest) -> dict[str, Any]:
    return request.to_json_obj()


def _profiles_help() -> str:
    lines = []
    for name in PROFILE_NAMES:
        try:
            profile = get_profile(name)
        except (SettingsError, ImportError):
            continue
        opts = "; ".join(
            f"{k}={'|'.join(v) if v else 'TEXT'}" for k, v in sorted(profile.options.items())
        )
        lines.append(f"{name}" + (f" (options: {opts})" if opts else ""))
    return "Profiles: " + ", ".join(lines) + "."


class _Command(click.Command):
    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        formatter.write_text(_profiles_help())
        super().format_epilog(ctx, formatter)


@click.command(
    "transform",
    cls=_Command,
    epilog="Example: heaprelay transform --profile segment --app-id 123 events.ndjson",
)
@click.option(
    "--profile",
    default="heap",
    show_default=True,
    help="Transform profile: " + ", ".join(PROFILE_NAMES) + ".",
)
@click.option("--app-id", default="", help="The Heap app_id (environment id).")
@click.option(
    "--region",
    default=None,
    metavar="us|eu",
    help="Heap region (US https://heapanalytics.com, EU https://c.eu.heap-api.com); "
    "default us. Profiles that reproduce Segment's Actions destinations want US or EU.",
)
@click.option(
    "--base-url",
    default=None,
    help="Write the requests for this Heap base URL (e.g. a fake Heap's) instead of the "
    "region's; nothing is sent.",
)
@click.option(
    "--option",
    "option_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A profile option; repeat for several.",
)
@click.argument("file", required=False, default="-")
def command(
    profile: str,
    app_id: str,
    region: str | None,
    base_url: str | None,
    option_pairs: tuple[str, ...],
    file: str,
) -> None:
    """Dry run: print the Heap requests that events become (stdout), and why any event is
    not sent (stderr). FILE holds NDJSON events, a JSON array of events, or a Segment batch
    ({"batch": [...]}); without FILE (or with -) stdin is read."""
    options = parse_options(option_pairs)
    normalised = (region or "us").lower()
    if normalised not in ("us", "eu"):
        raise click.BadParameter(f"{region!r}; accepted: us, eu", param_hint="'--region'")
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise click.BadParameter(
            f"{base_url!r} is not an http:// or https:// URL", param_hint="'--base-url'"
        )
    settings = DestinationSettings(
        app_id=app_id,
        profile=profile,
        region="eu" if normalised == "eu" else "us",
        base_url=base_url,
        options=options,
        region_setting=region,
    )
    try:
        validate_settings(settings)
    except SettingsError as e:
        _fail(str(e))
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as e:
        _fail(f"cannot read {file}: {e.strerror or e}")
    try:
        events = parse_events(data)
    except InputError as e:
        _fail(f"{'stdin' if file == '-' else file}: {e}")
    out, err = run(events, settings)
    sys.stdout.buffer.write(b"".join(out))
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(b"".join(err))
    sys.stderr.buffer.flush()
    if any(isinstance(e, Unreadable) for e in events):
        raise SystemExit(1)
