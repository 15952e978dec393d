"""The dashboard's routes (a Starlette app mounted at ``/ui``), server-rendered with Jinja2;
a small script of our own (``static/app.js``) draws the charts (uPlot, served from
``static/vendor``) and runs the live debugger (server-sent events)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

import jinja2
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from heaprelay.config import Destination
from heaprelay.dashboard._auth import SESSION_COOKIE, SESSION_SECONDS, Access, Visitor
from heaprelay.dashboard._live import History, LiveFeed, message_summary
from heaprelay.queue.base import SEARCH_FIELDS, JobRecord, Queue, SearchField
from heaprelay.router.filters import check
from heaprelay.router.worker import with_idempotency_key
from heaprelay.runtime import Runtime
from heaprelay.transform import Skip, transform

__all__ = ["Dashboard", "dashboard_app"]

HERE: Final = Path(__file__).parent
#: Seconds between two keep-alive comments on the event stream.
KEEPALIVE: Final = 15.0
#: A stream ends after this long (the browser reconnects at once), so that no connection is
#: held for ever.
STREAM_SECONDS: Final = 600.0
_SECURITY_HEADERS: Final = {
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}


@dataclass(slots=True)
class Dashboard:
    """What the pages read: the server's runtime (queue, config, routers), the live feed, the
    sampled history, and this process's rate-budget use."""

    runtime: Runtime
    access: Access
    feed: LiveFeed
    history: History
    budget: Callable[[], Mapping[str, float]]

    @property
    def queue(self) -> Queue | None:
        return self.runtime.queue

    def destinations(self) -> dict[str, Destination]:
        return self.runtime.config.destinations()


def _when(t: float | None) -> str:
    if t is None:
        return ""
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def heap_requests(record: JobRecord, destination: Destination | None) -> dict[str, Any]:
    """What delivery makes of a job: its Heap requests (as sent, with idempotency keys), or
    why it is not sent. Pure: the same transform the router runs."""
    if destination is None:
        return {"skip": "destination_removed", "detail": "not in the configuration"}
    try:
        message = orjson.loads(record.payload)
    except orjson.JSONDecodeError:
        return {"skip": "invalid_field", "detail": "the stored payload is not JSON"}
    if not isinstance(message, dict):
        return {"skip": "invalid_field", "detail": "the stored payload is not a JSON object"}
    skip = check(message, destination)
    if skip is not None:
        return {"skip": skip.reason.value, "detail": skip.detail}
    result = transform(message, destination.settings)
    if isinstance(result, Skip):
        return {"skip": result.reason.value, "detail": result.detail}
    key = record.message_id or f"heaprelay:{record.destination}:{record.id}"
    requests = []
    track = 0
    for request in result:
        if request.endpoint in ("track", "integrations/track"):
            request = with_idempotency_key(request, key if track == 0 else f"{key}:{track}")
            track += 1
        requests.append(request.to_json_obj())
    return {"requests": requests}


def dashboard_app(board: Dashboard) -> Starlette:
    """The ``/ui`` app (mount it at ``/ui``)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    templates = Jinja2Templates(env=env)
    templates.env.filters["when"] = _when
    templates.env.filters["pretty"] = _pretty
    templates.env.filters["ago"] = _ago
    access = board.access
    clock = board.runtime.clock

    def page(request: Request, name: str, visitor: Visitor | None, **context: Any) -> Response:
        context |= {"visitor": visitor, "access": access, "path": request.url.path}
        status = context.pop("status_code", 200)
        response: Response = templates.TemplateResponse(request, name, context, status_code=status)
        response.headers.update(_SECURITY_HEADERS)
        return response

    def refused(request: Request, *, api: bool = False) -> Response:
        if access.closed:
            body = {
                "code": "dashboard_disabled",
                "message": "the dashboard needs an admin token when the relay listens beyond "
                "loopback: set [server] admin_token or HEAPRELAY_ADMIN_TOKEN",
            }
            return JSONResponse(body, 401, headers=_SECURITY_HEADERS)
        if api or request.method != "GET" or "authorization" in request.headers:
            body = {"code": "unauthorized", "message": "log in at /ui/login or send a bearer token"}
            return JSONResponse(
                body, 401, headers={**_SECURITY_HEADERS, "www-authenticate": "Bearer"}
            )
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(target)}", 303)

    Handler = Callable[[Request, Visitor], Awaitable[Response]]

    def guarded(handler: Handler, *, api: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            visitor = access.visitor(request, clock.now())
            if visitor is None:
                return refused(request, api=api)
            if request.method == "POST":
                form = await request.form()
                token = form.get("csrf")
                given = token if isinstance(token, str) else None
                if not access.action_allowed(request, visitor, given):
                    body = {
                        "code": "csrf",
                        "message": "missing or wrong CSRF token, or a request from another site",
                    }
                    return JSONResponse(body, 403, headers=_SECURITY_HEADERS)
            return await handler(request, visitor)

        return endpoint

    def unavailable() -> Response:
        return JSONResponse(
            {"code": "not_ready", "message": "the queue is not open (starting or stopping)"}, 503
        )

    # --- login ------------------------------------------------------------------------------

    async def login(request: Request) -> Response:
        if access.closed:
            return refused(request)
        next_url = request.query_params.get("next", "/ui/")
        if not next_url.startswith("/ui"):
            next_url = "/ui/"
        if access.open:
            return RedirectResponse(next_url, 303)
        if request.method == "GET":
            return page(request, "login.html", None, next=next_url, error="")
        form = await request.form()
        token = form.get("token")
        next_field = form.get("next")
        if isinstance(next_field, str) and next_field.startswith("/ui"):
            next_url = next_field
        if not isinstance(token, str) or not access.check_token(token.strip()):
            await asyncio.sleep(0.5)  # slows guessing down; no answer tells more than "wrong"
            return page(
                request, "login.html", None, next=next_url, error="Wrong token.", status_code=401
            )
        response = RedirectResponse(next_url, 303)
        response.set_cookie(
            SESSION_COOKIE,
            access.new_session(clock.now()),
            max_age=SESSION_SECONDS,
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=access.secure(request),
        )
        return response

    async def logout(request: Request, visitor: Visitor) -> Response:
        response = RedirectResponse("/ui/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return response

    # --- overview ---------------------------------------------------------------------------

    async def overview(request: Request, visitor: Visitor) -> Response:
        queue = board.queue
        if queue is None:
            return unavailable()
        stats = await queue.stats()
        errors = await queue.recent_errors(limit=20)
        oldest = stats.oldest_pending_received_at
        lag = clock.now() - oldest if oldest is not None else None
        budget = board.budget()
        cards = []
        for dest_id, destination in board.destinations().items():
            per = stats.by_destination.get(dest_id, {})
            app_id = str(destination.settings.app_id)
            cards.append(
                {
                    "id": dest_id,
                    "destination": destination,
                    "states": per,
                    "reasons": stats.reasons.get(dest_id, {}),
                    "totals": stats.totals.get(dest_id, {}),
                    "budget": budget.get(app_id),
                }
            )
        known = set(board.destinations())
        others = sorted(d for d in stats.by_destination if d not in known)
        return page(
            request,
            "overview.html",
            visitor,
            stats=stats,
            cards=cards,
            others=others,
            lag=lag,
            errors=errors,
        )

    async def overview_api(request: Request, visitor: Visitor) -> Response:
        series = {d: board.history.series(d) for d in board.destinations()}
        return JSONResponse({"series": series}, headers=_SECURITY_HEADERS)

    # --- the debugger -----------------------------------------------------------------------

    async def debugger(request: Request, visitor: Visitor) -> Response:
        queue = board.queue
        if queue is None:
            return unavailable()
        field = request.query_params.get("field", "userId")
        value = request.query_params.get("q", "").strip()
        results: list[dict[str, Any]] | None = None
        if field not in SEARCH_FIELDS:
            field = "userId"
        if value:
            found = await queue.search(_field(field), value, limit=100)
            results = [_row(r) for r in found]
        return page(
            request,
            "debugger.html",
            visitor,
            fields=SEARCH_FIELDS,
            field=field,
            q=value,
            results=results,
        )

    async def job(request: Request, visitor: Visitor) -> Response:
        queue = board.queue
        if queue is None:
            return unavailable()
        try:
            job_id = int(request.path_params["job_id"])
        except ValueError:
            job_id = -1
        record = await queue.job(job_id)
        if record is None:
            return page(request, "job.html", visitor, record=None, status_code=404)
        destination = board.destinations().get(record.destination)
        return page(
            request,
            "job.html",
            visitor,
            record=record,
            message=message_summary(record.payload).get("payload"),
            heap=heap_requests(record, destination),
        )

    async def job_api(request: Request, visitor: Visitor) -> Response:
        queue = board.queue
        if queue is None:
            return unavailable()
        record = await queue.job(int(request.path_params["job_id"]))
        if record is None:
            return JSONResponse({"code": "not_found", "message": "no such job"}, 404)
        return JSONResponse(_row(record, payload=True), headers=_SECURITY_HEADERS)

    async def stream(request: Request, visitor: Visitor) -> Response:
        async def events() -> AsyncIterator[bytes]:
            async with board.feed.listen() as listener:
                seen = _int(request.headers.get("last-event-id"), 0)
                for event in board.feed.recent(after=seen):
                    seen = event["seq"]
                    yield _sse(event)
                started = last = clock.monotonic()
                while not board.runtime.stopping.is_set() and not board.runtime.closing:
                    now = clock.monotonic()
                    if now - started > STREAM_SECONDS:
                        return
                    try:
                        event = await asyncio.wait_for(listener.get(), 1.0)
                    except TimeoutError:
                        if now - last > KEEPALIVE:
                            last = now
                            yield b": keep-alive\n\n"
                        continue
                    last = now
                    if event["seq"] > seen:  # not sent already from the kept ones
                        yield _sse(event)

        headers = {**_SECURITY_HEADERS, "x-accel-buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    # --- dead letters -----------------------------------------------------------------------

    async def dead(request: Request, visitor: Visitor) -> Response:
        queue = board.queue
        if queue is None:
            return unavailable()
        destination = request.query_params.get("destination") or None
        offset = max(0, _int(request.query_params.get("offset"), 0))
        records = await queue.dead_letters(limit=100, offset=offset, destination=destination)
        stats = await queue.stats()
        counts = {d: per.get("dead", 0) for d, per in stats.by_destination.items()}
        return page(
            request,
            "dead.html",
            visitor,
            records=records,
            destination=destination,
            offset=offset,
            counts=counts,
            done=request.query_params.get("done", ""),
            summary=message_summary,
        )

    async def dead_action(request: Request, visitor: Visitor) -> Response:
        queue = board.queue
        if queue is None:
            return unavailable()
        form = await request.form()
        action = form.get("action")
        scope = form.get("scope")
        destination = form.get("destination") or None
        ids = [int(i) for i in form.getlist("ids") if isinstance(i, str) and i.isdigit()]
        row = form.get("row")  # a row's own button: "replay:42"
        if isinstance(row, str) and ":" in row:
            action, _, one = row.partition(":")
            scope, ids = "one", [int(one)] if one.isdigit() else []
        if action not in ("replay", "purge") or scope not in ("one", "selected", "all"):
            return JSONResponse(
                {"code": "bad_action", "message": "action: replay|purge; scope: one|selected|all"},
                400,
            )
        if scope == "all" and not isinstance(destination, str):
            return JSONResponse(
                {"code": "bad_action", "message": "'all' needs the destination it is for"}, 400
            )
        if scope != "all" and not ids:
            return RedirectResponse("/ui/dead?" + urlencode({"done": "nothing selected"}), 303)
        chosen = None if scope == "all" else ids
        where = destination if isinstance(destination, str) else None
        if form.get("confirm") != "yes":
            if chosen is None:
                stats = await queue.stats()
                count = stats.by_destination.get(str(where), {}).get("dead", 0)
            else:
                count = len(chosen)
            return page(
                request,
                "confirm.html",
                visitor,
                action=action,
                scope=scope,
                ids=ids,
                destination=where,
                count=count,
            )
        if action == "replay":
            done = await queue.replay(chosen, now=clock.now(), destination=where)
        else:
            done = await queue.purge(chosen, destination=where)
        verb = "replayed" if action == "replay" else "purged"
        back = {"done": f"{verb} {done} dead letter(s)"}
        if where:
            back["destination"] = where
        return RedirectResponse("/ui/dead?" + urlencode(back), 303)

    async def home(request: Request) -> Response:
        return RedirectResponse("/ui/", 307)

    routes = [
        Route("/", guarded(overview), methods=["GET"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", guarded(logout), methods=["POST"]),
        Route("/debugger", guarded(debugger), methods=["GET"]),
        Route("/jobs/{job_id:int}", guarded(job), methods=["GET"]),
        Route("/dead", guarded(dead), methods=["GET"]),
        Route("/dead/action", guarded(dead_action), methods=["POST"]),
        Route("/api/stream", guarded(stream, api=True), methods=["GET"]),
        Route("/api/overview", guarded(overview_api, api=True), methods=["GET"]),
        Route("/api/jobs/{job_id:int}", guarded(job_api, api=True), methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes)


def _field(name: str) -> SearchField:
    for field in SEARCH_FIELDS:
        if field == name:
            return field
    raise ValueError(name)


def _int(text: str | None, default: int) -> int:
    with contextlib.suppress(TypeError, ValueError):
        return int(text or "")
    return default


def _row(record: JobRecord, *, payload: bool = False) -> dict[str, Any]:
    summary = message_summary(record.payload)
    row: dict[str, Any] = {
        "job": record.id,
        "source": record.source,
        "destination": record.destination,
        "messageId": record.message_id,
        "type": summary.get("type"),
        "event": summary.get("event"),
        "userId": summary.get("userId"),
        "anonymousId": summary.get("anonymousId"),
        "state": record.state,
        "reason": record.reason,
        "detail": record.detail,
        "answer": record.answer,
        "attempts": record.attempts,
        "received_at": record.received_at,
        "finished_at": record.finished_at,
        "due_at": record.due_at,
    }
    if payload:
        row["payload"] = summary.get("payload")
    return row


def _sse(event: Mapping[str, Any]) -> bytes:
    return b"id: %d\ndata: " % event["seq"] + orjson.dumps(event) + b"\n\n"
