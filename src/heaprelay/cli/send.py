"""``heaprelay send FILE|-``: import a file of events into a running relay (``--url``,
``--write-key``: HTTP batches, as an SDK sends them) or straight into a queue
(``--data-dir`` / ``--queue`` / ``--config``).

Input: NDJSON (one event a line, read as a stream), a JSON array of events, a Segment batch
object ``{"batch": [...]}``, or CSV (``--format csv``, or a ``.csv`` file) with a header row
whose columns name fields (``userId``, ``event``, ``properties.plan``) or are mapped to them
with ``--map COLUMN=FIELD`` (``FIELD:number``, ``:bool`` or ``:json`` to convert the text).

Resumable, and never twice: each event without a ``messageId`` gets one derived from its
place in the file and its content (the same on every run), and after every batch the relay
acknowledged, a state file (``FILE.send-state`` unless ``--state``) records how far the
input was sent. Run the same command again after an interruption (Ctrl-C, kill, the relay
down) and it goes on from there; a batch whose answer was lost is sent again with the same
messageIds, and the relay's deduplication (same source, within its window, default 24 h)
skips what it had stored already. Events the relay (or this command) refuses are listed with
their line (or item) number and reason, at the end and in the state file.

Exit status: 0 when the whole input was read (even if some events were refused), 1 when it
stopped before (interrupted, relay unreachable: run it again to go on), 2 for a usage,
input or state problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal

import click
import orjson
from click.core import ParameterSource

from heaprelay.cli._events import InputError, Unreadable, loads, parse_events
from heaprelay.cli._queue import choose_source, queue_options, resolve_queue_url

#: Namespace of the messageIds given to events that have none (uuid5 of place and content).
ID_NAMESPACE: Final = uuid.UUID("6f1d4c1e-8f0e-4b7a-9d3e-5c1b2a3d4e5f")
#: Bytes of the input hashed to recognise it when resuming.
HEAD_BYTES: Final = 1 << 20
#: Refusals kept in the state file and shown at the end (the count is always exact).
MAX_REFUSALS: Final = 1000
STATE_VERSION: Final = 1

Format = Literal["auto", "ndjson", "json", "csv"]


class SendError(click.ClickException):
    """Input, usage or state problem: one line, exit 2."""

    exit_code = 2


class Stopped(Exception):
    """Sending stopped before the end (the relay is unreachable): exit 1, resumable."""


# --- reading the input ------------------------------------------------------------------------


@dataclass(slots=True)
class Event:
    """One event of the input: ``n`` (0-based, its place), ``where`` (``line 12`` or
    ``item 3``), the event or why it cannot be sent, and where to resume after it."""

    n: int
    where: str
    data: dict[str, Any] | None
    error: tuple[str, str] | None = None
    #: NDJSON: the byte offset just after its line (resume by seeking there).
    offset: int = -1


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    path: tuple[str, ...]
    kind: Literal["text", "number", "bool", "json"] = "text"


def parse_mapping(pairs: Sequence[str], header: Sequence[str]) -> list[Column]:
    """``--map COLUMN=FIELD[:kind]`` over the CSV header (unmapped columns are taken as field
    paths themselves)."""
    mapped: dict[str, tuple[str, str]] = {}
    for pair in pairs:
        column, sep, target = pair.partition("=")
        if not sep or not column or not target:
            raise SendError(f"--map {pair!r}: expected COLUMN=FIELD (e.g. user_id=userId)")
        if column not in header:
            raise SendError(f"--map {pair!r}: no column {column!r} (columns: {', '.join(header)})")
        path, _, kind = target.partition(":")
        if kind not in ("", "text", "number", "bool", "json"):
            raise SendError(f"--map {pair!r}: the kind is one of text, number, bool, json")
        mapped[column] = (path, kind or "text")
    columns = []
    for name in header:
        path, kind = mapped.get(name, (name, "text"))
        columns.append(Column(name, tuple(path.split(".")), kind))  # type: ignore[arg-type]
    return columns


def _convert(value: str, kind: str) -> Any:
    if kind == "number":
        number = float(value)
        return int(number) if number.is_integer() and "." not in value else number
    if kind == "bool":
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"{value!r} is not true/false")
    if kind == "json":
        return loads(value)
    return value


def csv_event(row: Sequence[str], columns: Sequence[Column], default_type: str) -> dict[str, Any]:
    """An event from a CSV row (empty cells are left out)."""
    event: dict[str, Any] = {}
    if len(row) > len(columns):
        raise ValueError(f"{len(row)} cells but {len(columns)} columns")
    for cell, column in zip(row, columns, strict=False):
        if cell == "":
            continue
        try:
            value = _convert(cell, column.kind)
        except (ValueError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"column {column.name!r}: {exc}") from None
        target = event
        for part in column.path[:-1]:
            inner = target.setdefault(part, {})
            if not isinstance(inner, dict):
                raise ValueError(f"column {column.name!r}: {part!r} is not an object")
            target = inner
        target[column.path[-1]] = value
    event.setdefault("type", default_type)
    return event


def detect(head: bytes, name: str, fmt: Format) -> Literal["ndjson", "json", "csv"]:
    if fmt != "auto":
        return fmt
    if name.lower().endswith(".csv"):
        return "csv"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"["):
        return "json"
    if stripped.startswith(b"{"):
        # One object over several lines (a batch object), or NDJSON?
        first_line = stripped.split(b"\n", 1)[0]
        try:
            orjson.loads(first_line)
        except orjson.JSONDecodeError:
            return "json"
        return "ndjson"
    return "ndjson"


def read_ndjson(stream: BinaryIO, *, offset: int, first: int) -> Iterator[Event]:
    """NDJSON from ``offset`` (bytes), numbering events from ``first``."""
    if offset:
        stream.seek(offset)
    n = first
    position = offset
    # Line numbers are only known when read from the start; after a seek, count from there.
    lineno = None if offset else 0
    for line in stream:
        position += len(line)
        if lineno is not None:
            lineno += 1
        if not line.strip():
            continue
        where = f"line {lineno}" if lineno is not None else f"event {n + 1}"
        try:
            data = loads(line)
        except orjson.JSONDecodeError as exc:
            yield Event(n, where, None, ("invalid_json", str(exc)), position)
        else:
            if isinstance(data, dict):
                yield Event(n, where, data, None, position)
            else:
                kind = type(data).__name__
                yield Event(n, where, None, ("invalid_message", f"not an object: {kind}"), position)
        n += 1


def read_whole(data: bytes, *, skip: int) -> Iterator[Event]:
    """A JSON array or batch object (parsed whole), from its ``skip``-th event on."""
    try:
        events = parse_events(data)
    except InputError as exc:
        raise SendError(str(exc)) from None
    for n, item in enumerate(events[skip:], start=skip):
        if isinstance(item, dict):
            yield Event(n, f"item {n + 1}", item)
        elif isinstance(item, Unreadable):  # NDJSON after all: a line that is not JSON
            yield Event(n, f"item {n + 1}", None, ("invalid_json", item.detail))
        else:
            yield Event(n, f"item {n + 1}", None, ("invalid_message", "not an object"))


def read_csv(
    text: io.TextIOBase, *, skip: int, mapping: Sequence[str], default_type: str
) -> Iterator[Event]:
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    columns = parse_mapping(mapping, header)
    for n, row in enumerate(reader):
        if n < skip:
            continue
        where = f"line {reader.line_num}"
        if not any(row):
            continue
        try:
            yield Event(n, where, csv_event(row, columns, default_type))
        except ValueError as exc:
            yield Event(n, where, None, ("invalid_row", str(exc)))


def message_id_for(event: dict[str, Any], n: int) -> str:
    """The messageId of an event of the input that has none: the same for the same place and
    content on every run (a resend is then a duplicate the relay skips)."""
    canonical = orjson.dumps(event, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    digest = hashlib.sha256(b"%d\x00" % n + canonical).hexdigest()
    return str(uuid.uuid5(ID_NAMESPACE, digest))


# --- the state file ---------------------------------------------------------------------------


@dataclass(slots=True)
class State:
    """How far an input was sent (written after each acknowledged batch)."""

    path: Path | None
    input: dict[str, Any]
    target: str
    #: Events of the input done (sent or refused).
    done: int = 0
    #: NDJSON: where to go on reading.
    offset: int = 0
    sent: int = 0
    refused: int = 0
    refusals: list[dict[str, str]] = field(default_factory=list)
    finished: bool = False

    def save(self) -> None:
        if self.path is None:
            return
        body = {
            "version": STATE_VERSION,
            "input": self.input,
            "target": self.target,
            "done": self.done,
            "offset": self.offset,
            "sent": self.sent,
            "refused": self.refused,
            "refusals": self.refusals,
            "finished": self.finished,
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(orjson.dumps(body, option=orjson.OPT_INDENT_2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path, fingerprint: dict[str, Any], target: str) -> State | None:
        try:
            body = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise SendError(
                f"cannot read the state file {path}: {exc}; --restart ignores it"
            ) from None
        if not isinstance(body, dict) or body.get("version") != STATE_VERSION:
            raise SendError(f"{path} is not a state file of this version; --restart ignores it")
        recorded = body.get("input", {})
        if recorded.get("head") != fingerprint.get("head") or recorded.get(
            "size", 0
        ) > fingerprint.get("size", 0):
            raise SendError(
                f"the input changed since {path} was written (another file, or edited): "
                "--restart to send it from the start, or --state for another state file"
            )
        return cls(
            path,
            fingerprint,
            str(body.get("target", target)),
            int(body["done"]),
            int(body["offset"]),
            int(body["sent"]),
            int(body["refused"]),
            list(body.get("refusals", [])),
            bool(body.get("finished")),
        )

    def refuse(self, where: str, code: str, message: str) -> None:
        self.refused += 1
        if len(self.refusals) < MAX_REFUSALS:
            self.refusals.append({"where": where, "code": code, "message": message})


def fingerprint(path: Path | None, data: bytes | None) -> dict[str, Any]:
    if path is None:
        return {"head": hashlib.sha256((data or b"")[:HEAD_BYTES]).hexdigest(), "size": 0}
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    return {
        "file": str(path),
        "head": hashlib.sha256(head).hexdigest(),
        "size": path.stat().st_size,
    }


# --- the targets ------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    #: (index in the batch, code, message) of the events refused.
    refused: list[tuple[int, str, str]] = field(default_factory=list)


class HttpTarget:
    """A running relay's ``/v1/batch`` (what the SDKs use), with the write key."""

    def __init__(self, url: str, write_key: str, *, retry_for: float, on_wait: Any) -> None:
        import httpx

        self.url = url.rstrip("/") + "/v1/batch"
        self.retry_for = retry_for
        self.on_wait = on_wait
        self._client = httpx.AsyncClient(auth=(write_key, ""), timeout=60.0)
        #: Set on Ctrl-C / SIGTERM: stop waiting for a relay that is down.
        self.interrupted: asyncio.Event | None = None

    def describe(self) -> str:
        return self.url

    async def close(self) -> None:
        await self._client.aclose()

    async def send(self, events: list[dict[str, Any]], sizes: list[int]) -> Outcome:
        """Store ``events`` in the relay (all, but those it refuses)."""
        outcome = Outcome()
        await self._send(list(range(len(events))), events, outcome)
        return outcome

    async def _send(self, indexes: list[int], events: list[dict[str, Any]], out: Outcome) -> None:
        while indexes:
            body = b'{"batch":[' + b",".join(orjson.dumps(events[i]) for i in indexes) + b"]}"
            status, answer = await self._post(body)
            if status == 200:
                for rejected in answer.get("rejected", []):  # a source with partial_batches
                    index = rejected.get("index")
                    if isinstance(index, int) and 0 <= index < len(indexes):
                        out.refused.append((indexes[index], rejected["code"], rejected["message"]))
                return
            code = str(answer.get("code", f"http_{status}"))
            message = str(answer.get("message", ""))
            if status in (401, 403):
                raise SendError(f"the relay refused the write key ({status} {code}: {message})")
            if status == 404:
                raise SendError(f"{self.url}: 404: no ingest API there (is --url the relay's?)")
            index = answer.get("index")
            if status == 400 and isinstance(index, int) and 0 <= index < len(indexes):
                out.refused.append((indexes[index], code, message))
                indexes = indexes[:index] + indexes[index + 1 :]  # the others again
                continue
            if len(indexes) > 1:  # too large, or refused without saying which: halve it
                half = len(indexes) // 2
                await self._send(indexes[:half], events, out)
                indexes = indexes[half:]
                continue
            out.refused.append((indexes[0], code, message))
            return

    async def _post(self, body: bytes) -> tuple[int, dict[str, Any]]:
        import httpx

        failing_since: float | None = None
        attempt = 0
        while True:
            problem: str
            try:
                response = await self._client.post(
                    self.url, content=body, headers={"content-type": "application/json"}
                )
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code not in (408, 429) and response.status_code < 500:
                    try:
                        answer = response.json()
                    except ValueError:
                        answer = {}
                    return response.status_code, answer if isinstance(answer, dict) else {}
                problem = f"answered {response.status_code}"
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > self.retry_for:
                raise Stopped(f"{self.url} {problem}, for {self.retry_for:g} s")
            attempt += 1
            delay = min(10.0, 0.25 * 2 ** min(attempt, 6))
            self.on_wait(f"{problem}; retrying in {delay:.1f}s")
            if self.interrupted is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.interrupted.wait(), delay)
                if self.interrupted.is_set():
                    raise Stopped(f"interrupted while {self.url} {problem}")


class QueueTarget:
    """Straight into a queue, as ingest would store the events (checked, enriched, fanned
    out to the source's destinations)."""

    def __init__(self, url: str, source: Any) -> None:
        self.url = url
        self.source = source
        self.queue: Any = None

    def describe(self) -> str:
        from heaprelay.queue import redact_url

        return f"{redact_url(self.url)} (source {self.source.name})"

    async def open(self) -> None:
        from heaprelay.queue import open_queue

        try:
            self.queue = await open_queue(self.url)
        except Exception as exc:
            raise SendError(f"cannot open the queue: {' '.join(str(exc).split())}") from None

    async def close(self) -> None:
        if self.queue is not None:
            await self.queue.close()

    async def send(self, events: list[dict[str, Any]], sizes: list[int]) -> Outcome:
        from heaprelay.ingest import append, fan_out
        from heaprelay.messages.incoming import Rejection, prepare

        now = time.time()
        prepared = prepare(
            {"batch": events},
            route_type=None,
            received_at=now,
            max_message_bytes=self.source.limits.max_message_bytes,
            body_bytes=sum(sizes),
            partial=True,
        )
        if isinstance(prepared, Rejection):  # the whole batch (cannot happen: not empty)
            return Outcome([(i, prepared.code, prepared.message) for i in range(len(events))])
        await append(self.queue, self.source, prepared, fan_out(self.source, prepared, now), now)
        refused = [(r.index or 0, r.code, r.message) for r in prepared.rejected]
        return Outcome(refused)


# --- the command ------------------------------------------------------------------------------


@click.command()
@click.argument("file", default="-")
@click.option(
    "--url",
    envvar="HEAPRELAY_URL",
    default=None,
    help="A running relay, e.g. http://127.0.0.1:8787.",
)
@click.option(
    "--write-key",
    envvar="HEAPRELAY_WRITE_KEY",
    default=None,
    help="The source's write key (with --url).",
)
@queue_options
@click.option(
    "--source", "source_name", default=None, help="Queue mode with --config: the source (by name)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "ndjson", "json", "csv"]),
    default="auto",
    show_default=True,
    help="auto: .csv files are CSV; else a JSON array, a batch object or NDJSON.",
)
@click.option(
    "--map",
    "mapping",
    multiple=True,
    metavar="COLUMN=FIELD[:KIND]",
    help="CSV: a column to a field (properties.plan, traits.email; KIND: number, bool or "
    "json). Repeat.",
)
@click.option(
    "--type",
    "default_type",
    default="track",
    show_default=True,
    help="CSV: the type of rows without a type column.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    help="Events per batch at most.",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(1024),
    default=500_000,
    show_default=True,
    help="Bytes per batch at most (Segment's SDKs send 500 KB; a relay answering 413 gets halves).",
)
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The resume state file [default: FILE.send-state; none for stdin].",
)
@click.option("--restart", is_flag=True, help="Ignore the state file: send from the start.")
@click.option(
    "--retry-for",
    type=click.FloatRange(0),
    default=300.0,
    show_default=True,
    help="Seconds to keep retrying a relay that is down or busy before stopping (resumable).",
)
@click.option(
    "--no-progress", is_flag=True, help="No progress bar (also when stderr is not a terminal)."
)
def command(
    file: str,
    url: str | None,
    write_key: str | None,
    queue_url: str | None,
    data_dir: Path | None,
    config_file: Path | None,
    source_name: str | None,
    fmt: Format,
    mapping: tuple[str, ...],
    default_type: str,
    batch_size: int,
    max_bytes: int,
    state_file: Path | None,
    restart: bool,
    retry_for: float,
    no_progress: bool,
) -> None:
    """Send the events of FILE (NDJSON, a JSON array, a Segment batch object, or CSV; - or
    nothing: stdin) to a running relay (--url, --write-key) or straight into a queue
    (--data-dir, --queue or --config). Resumable: after an interruption, the same command
    goes on where it stopped, and no event is delivered twice."""
    if url is not None:
        ctx = click.get_current_context()
        given = [
            flag
            for name, flag in (("queue_url", "--queue"), ("data_dir", "--data-dir"))
            if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
        ]
        if given:
            raise click.UsageError(f"give --url (a running relay) or {given[0]}, not both")
    if url is not None and not write_key:
        raise click.UsageError("--url needs --write-key (the source's write key)")
    if url is not None and not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} is not an http:// or https:// URL", param_hint="--url")
    path = None if file == "-" else Path(file)
    if path is not None and not path.is_file():
        raise SendError(f"{file}: no such file")
    data = sys.stdin.buffer.read() if path is None else None
    if path is None:
        head = (data or b"")[:HEAD_BYTES]
    else:
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
    kind = detect(head, file, fmt)
    if mapping and kind != "csv":
        raise click.UsageError("--map is for CSV input")
    console = _console(no_progress)
    wait_note: list[str] = []

    def on_wait(text: str) -> None:
        wait_note[:] = [text]

    target: HttpTarget | QueueTarget
    if url is not None:
        target = HttpTarget(url, str(write_key), retry_for=retry_for, on_wait=on_wait)
    else:
        resolved = resolve_queue_url(queue_url, data_dir, config_file)
        target = QueueTarget(resolved, choose_source(config_file, source_name, write_key)[1])
    state_path = state_file or (path.with_name(path.name + ".send-state") if path else None)
    printed = fingerprint(path, data)
    state = None if restart or state_path is None else State.load(state_path, printed, "")
    if state is not None and state.finished:
        click.echo(
            f"{file}: already sent ({state.sent} events, {state.refused} refused) according to "
            f"{state_path}; --restart sends it again"
        )
        return
    resumed = state is not None
    if state is None:
        state = State(state_path, printed, target.describe())
    reading = _Reading(path, data, kind, mapping, default_type, batch_size, max_bytes)
    code, count, elapsed = asyncio.run(_run(target, state, reading, console, wait_note))
    _summary(state, file, resumed, count, elapsed)
    if code:
        raise SystemExit(code)


@dataclass(frozen=True, slots=True)
class _Reading:
    """What to read, and how to cut it into batches."""

    path: Path | None
    data: bytes | None
    kind: str
    mapping: Sequence[str]
    default_type: str
    batch_size: int
    max_bytes: int

    def events(self, stream: BinaryIO, state: State) -> Iterator[Event]:
        if self.kind == "ndjson":
            return read_ndjson(stream, offset=state.offset, first=state.done)
        if self.kind == "csv":
            return self._csv(stream, state)
        return read_whole(stream.read(), skip=state.done)

    def _csv(self, stream: BinaryIO, state: State) -> Iterator[Event]:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        try:
            yield from read_csv(
                text, skip=state.done, mapping=self.mapping, default_type=self.default_type
            )
        finally:
            text.detach()  # the file is closed by its owner


def _console(no_progress: bool) -> Any:
    from rich.console import Console

    console = Console(stderr=True)
    return None if no_progress or not console.is_terminal else console


async def _run(
    target: HttpTarget | QueueTarget,
    state: State,
    reading: _Reading,
    console: Any,
    wait_note: list[str],
) -> tuple[int, int, float]:
    """Send what is left of the input; (exit status, events sent now, seconds)."""
    if isinstance(target, QueueTarget):
        await target.open()
    started = time.monotonic()
    sent_before = state.sent
    progress = _Progress(console, reading, state)
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    if isinstance(target, HttpTarget):
        target.interrupted = interrupted
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
        loop.add_signal_handler(signal.SIGTERM, interrupted.set)
    code = 0
    try:
        with _open_input(reading.path, reading.data) as stream:
            batch: list[Event] = []
            bodies: list[dict[str, Any]] = []
            sizes: list[int] = []
            size = 0
            for event in reading.events(stream, state):
                if event.data is not None:
                    if (
                        not isinstance(event.data.get("messageId"), str)
                        or not event.data["messageId"]
                    ):
                        event.data["messageId"] = message_id_for(event.data, event.n)
                    encoded = len(orjson.dumps(event.data))
                    full = len(bodies) >= reading.batch_size or size + encoded > reading.max_bytes
                    if bodies and full:
                        await _flush(target, state, batch, bodies, sizes, progress)
                        batch, bodies, sizes, size = [], [], [], 0
                    if interrupted.is_set():
                        break
                    bodies.append(event.data)
                    sizes.append(encoded)
                    size += encoded
                batch.append(event)
                progress.note(wait_note)
            else:
                if batch:
                    await _flush(target, state, batch, bodies, sizes, progress)
                state.finished = True
                state.save()
        if interrupted.is_set() and not state.finished:
            code = 1
    except Stopped as exc:
        progress.stop()
        click.echo(f"heaprelay send: stopped: {exc}", err=True)
        code = 1
    finally:
        progress.stop()
        await target.close()
    return code, state.sent - sent_before, time.monotonic() - started


async def _flush(
    target: HttpTarget | QueueTarget,
    state: State,
    batch: list[Event],
    bodies: list[dict[str, Any]],
    sizes: list[int],
    progress: _Progress,
) -> None:
    outcome = await target.send(bodies, sizes) if bodies else Outcome()
    refused = {index: (code, message) for index, code, message in outcome.refused}
    k = 0
    for event in batch:
        if event.data is None:
            assert event.error is not None
            state.refuse(event.where, *event.error)
            continue
        if k in refused:
            state.refuse(event.where, *refused[k])
        else:
            state.sent += 1
        k += 1
    last = batch[-1]
    state.done = last.n + 1
    if last.offset >= 0:
        state.offset = last.offset
    state.save()
    progress.advance(state)


@contextlib.contextmanager
def _open_input(path: Path | None, data: bytes | None) -> Iterator[BinaryIO]:
    if path is None:
        yield io.BytesIO(data or b"")
        return
    with path.open("rb") as f:
        yield f


class _Progress:
    """A rich progress bar on stderr (a terminal only): bytes of an NDJSON file, else events."""

    def __init__(self, console: Any, reading: _Reading, state: State) -> None:
        self.bar: Any = None
        path = reading.path
        if console is None:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.by_bytes = reading.kind == "ndjson" and path is not None
        total = path.stat().st_size if self.by_bytes and path is not None else None
        self.bar = Progress(
            TextColumn("[bold]send[/]"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[events]} events"),
            TextColumn("{task.fields[rate]} events/s"),
            TextColumn("[red]{task.fields[refused]}[/] refused"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            transient=False,
        )
        if not self.by_bytes:
            self.bar.columns = tuple(
                c for c in self.bar.columns if not isinstance(c, MofNCompleteColumn)
            )
        self.started = time.monotonic()
        self.first = state.sent
        self.task = self.bar.add_task(
            "send",
            total=total,
            completed=state.offset if self.by_bytes else state.done,
            events=f"{state.sent:,}",
            rate="-",
            refused=state.refused,
            note="",
        )
        self.bar.start()

    def advance(self, state: State) -> None:
        if self.bar is None:
            return
        elapsed = max(1e-9, time.monotonic() - self.started)
        self.bar.update(
            self.task,
            completed=state.offset if self.by_bytes else state.done,
            events=f"{state.sent:,}",
            rate=f"{(state.sent - self.first) / elapsed:,.0f}",
            refused=state.refused,
            note="",
        )

    def note(self, wait_note: list[str]) -> None:
        if self.bar is not None and wait_note:
            self.bar.update(self.task, note=wait_note.pop())

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _summary(state: State, file: str, resumed: bool, count: int, elapsed: float) -> None:
    rate = count / elapsed if elapsed > 0 else 0.0
    what = "sent" if state.finished else "stopped after sending"
    again = "" if state.finished else "; run the same command again to go on"
    click.echo(
        f"{file}: {what} {state.sent:,} events in all ({int(count):,} now, in {elapsed:.1f} s, "
        f"{rate:,.0f} events/s), {state.refused:,} refused{' (resumed)' if resumed else ''}{again}"
    )
    for refusal in state.refusals[:20]:
        click.echo(f"  refused {refusal['where']}: {refusal['code']}: {refusal['message']}")
    if state.refused > 20:
        listed = f"in {state.path}" if state.path else ""
        click.echo(f"  … {state.refused - 20} more {listed}".rstrip())
