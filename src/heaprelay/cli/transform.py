"""``heaprelay transform``: a dry run. Events in, the Heap requests they become out.

Input (FILE, or stdin when FILE is absent or ``-``): NDJSON events, a JSON array of events,
one event object, or a Segment batch object ``{"batch": [...]}`` (its ``context`` and
``integrations`` merged into each item, the item's own values winning, and its ``sentAt``
given to items without one, as Segment does).

Output, in input order: one line per Heap request on stdout,
``{"method": "POST", "url": "...", "body": {...}}``; one line per event not sent on stderr,
``{"index": i, "messageId": ..., "reason": "...", "detail": "..."}``. Exit 0 when the input
was read (even if some events were not sent), 2 with a message when it or the settings could
not be used.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson

from heaprelay.heap.models import HeapRequest
from heaprelay.transform import (
    PROFILE_NAMES,
    DestinationSettings,
    SettingsError,
    Skip,
    get_profile,
    transform,
    validate_settings,
)


class InputError(ValueError):
    """The input cannot be read as events; the message says where and why."""


def _fail(message: str) -> NoReturn:
    click.echo(f"heaprelay transform: {message}", err=True)
    raise SystemExit(2)


def _loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as first:
        # orjson refuses integers beyond 64 bits, which are valid JSON; NaN/Infinity are not.
        def no_constants(name: str) -> Any:
            raise ValueError(f"{name} is not JSON")

        try:
            return json.loads(data, parse_constant=no_constants)
        except (ValueError, RecursionError):
            raise first from None


def parse_events(data: bytes) -> list[Any]:
    """The events held by ``data`` (see the module docstring for the accepted forms)."""
    stripped = data.lstrip()
    if stripped.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
        stripped = stripped[3:].lstrip()
    if not stripped:
        return []
    if stripped[:1] in (b"[", b"{"):
        try:
            doc = _loads(stripped)
        except orjson.JSONDecodeError:
            doc = None  # maybe NDJSON: several documents, one per line
        if isinstance(doc, list):
            return doc
        if isinstance(doc, dict):
            return _batch_items(doc) if "batch" in doc else [doc]
        if stripped[:1] == b"[":
            _loads_or_raise(stripped, "the input")
    events: list[Any] = []
    for lineno, line in enumerate(stripped.split(b"\n"), start=1):
        if line.strip():
            events.append(_loads_or_raise(line, f"line {lineno}"))
    return events


def _loads_or_raise(data: bytes, where: str) -> Any:
    try:
        return _loads(data)
    except orjson.JSONDecodeError as e:
        raise InputError(f"{where} is not valid JSON: {e}") from None


def _batch_items(doc: Mapping[str, Any]) -> list[Any]:
    items = doc["batch"]
    if not isinstance(items, list):
        raise InputError(f"'batch' must be an array of events, not {type(items).__name__}")
    defaults = {k: doc[k] for k in ("context", "integrations") if isinstance(doc.get(k), dict)}
    sent_at = doc.get("sentAt")
    out: list[Any] = []
    for item in items:
        if isinstance(item, dict):
            item = dict(item)
            for key, value in defaults.items():
                own = item.get(key)
                item[key] = _merge(value, own) if isinstance(own, dict) else value
            if sent_at is not None and item.get("sentAt") is None:
                item["sentAt"] = sent_at
        out.append(item)
    return out


def _merge(base: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in own.items():
        under = merged.get(key)
        merged[key] = (
            _merge(under, value) if isinstance(value, dict) and isinstance(under, dict) else value
        )
    return merged


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


def _parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="'--option'")
        if key in options:
            raise click.BadParameter(f"{key!r} given twice", param_hint="'--option'")
        options[key] = value
    return options


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
@click.option("--base-url", default=None, help="Send to this base URL (a fake Heap) instead.")
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
    options = _parse_options(option_pairs)
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
