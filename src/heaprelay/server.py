"""The server's lifecycle: build the ASGI app from a :class:`~heaprelay.config.Config`, open
the queue on startup, run the background services (the router workers) next to the API,
and shut down cleanly.

Shutdown (SIGTERM / SIGINT, handled by uvicorn): stop accepting connections, let in-flight
requests finish (each is answered only after its messages are committed), then the lifespan
shutdown: :attr:`Runtime.stopping` is set so that services drain, services still running
after :data:`SERVICE_GRACE_SECONDS` are cancelled, and the queue is closed.

Background services: a :data:`Service` is ``async def service(runtime: Runtime) -> None``.
It runs for the life of the server and returns soon after ``runtime.stopping`` is set.
:func:`default_services` says which services ``heaprelay serve`` starts for a config.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Final
from urllib.parse import urlsplit

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from heaprelay import __version__
from heaprelay._http import BodyDeadline, Protocol, UvicornConfig
from heaprelay.clock import Clock, SystemClock
from heaprelay.config import Config, Source
from heaprelay.dashboard import Access, Dashboard, History, LiveFeed, Monitor, dashboard_mount
from heaprelay.device import device_routes
from heaprelay.ingest import IngestObserver, IngestState, ingest_routes
from heaprelay.logs import FailureLog, LogFormat, configure
from heaprelay.messages.incoming import Prepared
from heaprelay.metrics import CONTENT_TYPE_LATEST, Metrics
from heaprelay.queue import open_queue, queue_url_for, redact_url, sqlite_path
from heaprelay.queue.health import AppendFailure, AppendHealth, filesystem_problem
from heaprelay.router.observer import DeliveryLog, Observers
from heaprelay.runtime import Runtime, Service

log = logging.getLogger("heaprelay.server")

SERVICE_GRACE_SECONDS: Final = 10.0
#: How long uvicorn waits for in-flight requests on shutdown.
REQUEST_GRACE_SECONDS: Final = 30


def default_services(config: Config) -> list[Service]:
    """The background services ``heaprelay serve`` runs for ``config``.

    Roles ``all`` and ``worker`` run the delivery (router) workers, retention (deleting
    delivered and skipped jobs older than ``Config.retention``) and the search index of the
    debugger, and with ``[[audiences]]`` their schedule (:mod:`heaprelay.audiences.rules`).
    (:func:`build_app` adds the dashboard's monitor to them, in every role.)
    """
    services: list[Service] = []
    if config.role in ("all", "worker"):
        from heaprelay.queue.retention import retention_service
        from heaprelay.queue.search import search_index_service
        from heaprelay.router import delivery_service

        services += [delivery_service, retention_service, search_index_service]
        if config.audiences:
            from heaprelay.audiences.rules import audience_service

            services.append(audience_service)
    return services


class _IngestObservers:
    """Several ingest observers as one."""

    def __init__(self, *observers: IngestObserver) -> None:
        self.observers = observers

    def stored(self, source: Source, route: str, messages: Sequence[Prepared], now: float) -> None:
        for o in self.observers:
            o.stored(source, route, messages, now)

    def answered(self, route: str, status: int, seconds: float, body: bytes) -> None:
        for o in self.observers:
            o.answered(route, status, seconds, body)


def build_app(
    config: Config,
    *,
    clock: Clock | None = None,
    services: Sequence[Service] | None = None,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The whole server as one ASGI app (the lifespan opens the queue and starts services).

    ``services``: ``None`` means :func:`default_services` and the dashboard's monitor.
    ``extra_routes`` are mounted before the API's routes (the benchmark's do-nothing
    endpoint). Also served: ``/metrics`` (Prometheus), the dashboard at ``/ui`` (``/``
    redirects there), ``/healthz`` and ``/readyz``.
    """
    sandbox_routes: list[BaseRoute] = []
    if config.sandbox:  # destinations point at an embedded fake Heap (serve --sandbox)
        from heaprelay.heap.fake import sandbox

        config, mount = sandbox(config)
        sandbox_routes.append(mount)
    runtime = Runtime(config=config, clock=clock or SystemClock())
    metrics = Metrics(config.delivery, monotonic=runtime.clock.monotonic, now=runtime.clock.now)
    feed = LiveFeed(runtime.clock)
    delivery_log = DeliveryLog(
        FailureLog(logging.getLogger("heaprelay.delivery"), monotonic=runtime.clock.monotonic)
    )
    runtime.observer = Observers(metrics, feed, delivery_log)
    history = History()
    access = Access(config.admin_token, config.host)
    board = Dashboard(runtime, access, feed, history, metrics.budget_use)
    append_log = FailureLog(
        logging.getLogger("heaprelay.ingest"), monotonic=runtime.clock.monotonic
    )

    def probe() -> AppendFailure | None:
        path = getattr(runtime.queue, "path", None)  # SQLite: its file
        return filesystem_problem(path) if isinstance(path, Path) else None

    health = AppendHealth(
        append_log,
        monotonic=runtime.clock.monotonic,
        probe=probe if config.queue_url is None or config.queue_url.startswith("sqlite") else None,
    )

    def tick() -> None:
        delivery_log.flush()
        append_log.flush()

    monitor = Monitor(history, tick=tick)
    chosen: list[Service] = (
        [*default_services(config), monitor] if services is None else list(services)
    )
    ingest = IngestState(
        sources=config.sources,
        clock=runtime.clock,
        observer=_IngestObservers(metrics, feed),
        health=health,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        url = queue_url_for(config.queue_url, config.data_dir)
        if runtime.queue is None:  # :func:`run` opens it before serving
            runtime.queue = await open_queue(url)
        ingest.queue = runtime.queue
        tasks = [
            asyncio.create_task(service(runtime), name=getattr(service, "__name__", "service"))
            for service in chosen
        ]
        runtime.ready = True
        for line in startup_summary(config, url, access):
            log.info("%s", line)
        log.info("heaprelay ready: queue %s, %d service(s)", redact_url(url), len(tasks))
        try:
            yield
        finally:
            runtime.ready = False
            runtime.stopping.set()
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=SERVICE_GRACE_SECONDS)
                for task in pending:
                    task.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                for task, result in zip(tasks, results, strict=True):
                    if isinstance(result, Exception):
                        log.error("service %s failed: %r", task.get_name(), result)
            ingest.queue = None
            await runtime.queue.close()
            runtime.queue = None

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(request: Request) -> Response:
        problem = health.problem() if runtime.ready else None
        if problem is not None:  # the queue is open but cannot store (disk full, read-only)
            return Response(
                orjson.dumps({"code": "queue_unavailable", "message": problem.reason}),
                status_code=503,
                media_type="application/json",
            )
        if runtime.ready:
            return Response(b'{"status":"ready"}', media_type="application/json")
        return Response(
            b'{"code":"not_ready","message":"the queue is not open (starting or stopping)"}',
            status_code=503,
            media_type="application/json",
        )

    async def scrape(request: Request) -> Response:
        token = config.metrics_token
        if token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), token.encode()
            ):
                return Response(
                    b'{"code":"unauthorized","message":"/metrics needs Authorization: Bearer '
                    b'<metrics_token>"}',
                    status_code=401,
                    headers={"www-authenticate": "Bearer"},
                    media_type="application/json",
                )
        stats = await runtime.queue.stats() if runtime.queue is not None else None
        return Response(metrics.render(stats), media_type=CONTENT_TYPE_LATEST)

    async def home(request: Request) -> Response:
        return RedirectResponse("/ui/", 307)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        # Before the ingest routes: Starlette tries routes in order, so a route placed after
        # the twenty ingest paths would pay for matching them all (the benchmark's do-nothing
        # endpoint must cost what the ingest routes cost to reach).
        *extra_routes,
    ]
    if config.role in ("all", "api"):
        routes += ingest_routes(ingest)
        # what the browser SDKs fetch for device mode (settings, the Heap integration)
        routes += device_routes(config.sources, config.public_url)
    routes += [
        Route("/metrics", scrape, methods=["GET"]),
        Route("/", home, methods=["GET"]),
        dashboard_mount(board),
        *sandbox_routes,
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error}
    )
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.state.feed = feed
    app.state.monitor = monitor
    if config.role == "worker":  # so that its 404 can say why the events it got went nowhere
        app.state.ingest_paths = frozenset(
            route.path for route in ingest_routes(ingest) if isinstance(route, Route)
        )
    return app


def startup_summary(config: Config, queue_url: str, access: Access) -> list[str]:
    """What ``serve`` logs when it is ready: queue, sources, destinations, access. Never a
    secret (no write key, no token, the queue URL without its password)."""
    d = config.delivery
    lines = [
        f"heaprelay {__version__}: role {config.role}, listening on "
        f"http://{config.host}:{config.port}, queue {redact_url(queue_url)}",
        f"delivery: batches of {d.batch_size}, {d.concurrency} in flight, rate limits "
        + (f"on ({d.app_events_per_minute}/min per app_id)" if d.rate_limits else "off")
        + f", retention {config.retention:g}s",
    ]
    for source in config.sources:
        names = ", ".join(
            f"{dest.id} (app_id {dest.settings.app_id}, "
            f"{dest.settings.base_url or dest.settings.region}, profile {dest.settings.profile}"
            + ("" if dest.enabled else ", disabled")
            + ")"
            for dest in source.destinations
        )
        lines.append(f"source {source.name}: {names or 'no destination'}")
    lines.append(access.describe())
    lines.append(
        "metrics /metrics: "
        + ("needs Authorization: Bearer (metrics_token)" if config.metrics_token else "open")
    )
    return lines


def secrets_of(config: Config) -> list[str]:
    """What logs must never show: the config's secrets and the queue URL's password."""
    found = config.secrets()
    password = urlsplit(config.queue_url or "").password
    if password:
        found.append(password)
    return found


class StartupError(Exception):
    """The server cannot start (the port is taken, the queue cannot be opened, …); the
    message says why on one line."""


def bind(host: str, port: int) -> socket.socket:
    """The listening socket on ``host:port`` (:class:`StartupError` when it cannot be had:
    the port is taken, the host is not this machine's, no permission)."""
    if not 0 <= port <= 65535:
        raise StartupError(f"cannot listen on {host}:{port}: a port is 0-65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError, OverflowError) as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {_reason(exc)}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except (OSError, OverflowError) as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {_reason(exc)}") from None
    sock.set_inheritable(True)
    return sock


async def open_runtime_queue(runtime: Runtime) -> None:
    """Open the queue of ``runtime`` (:class:`StartupError` with the reason when it cannot
    be opened: server down, bad URL, a data dir that cannot be written)."""
    import sqlite3

    import psycopg

    url = queue_url_for(runtime.config.queue_url, runtime.config.data_dir)
    try:
        runtime.queue = await open_queue(url)
    except (ValueError, OSError, sqlite3.Error, psycopg.Error) as exc:
        reason = _reason(exc)
        if url.startswith("sqlite:") and not isinstance(exc, OSError):
            # SQLite's own words ("unable to open database file") do not say why
            problem = filesystem_problem(sqlite_path(url))
            if problem is not None:
                reason += f" ({problem.reason})"
        raise StartupError(f"cannot open queue {redact_url(url)}: {reason}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


class _Server(uvicorn.Server):
    """uvicorn's server, except that it opens the queue before it serves (so that a queue
    that cannot be opened is a :class:`StartupError`, not a traceback from the lifespan),
    that a graceful stop on SIGTERM/SIGINT exits with status 0 (uvicorn re-raises the signal
    once it has shut down, which ends the process by it), that long requests (the debugger's
    event stream) are told at once (``on_exit``), and that the garbage collector is tuned for
    serving once started (:func:`tune_gc`)."""

    on_exit: Callable[[], None] | None = None

    def __init__(
        self,
        config: uvicorn.Config,
        runtime: Runtime | None = None,
        announce: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._runtime = runtime
        self._announce = announce

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        runtime = self._runtime
        if runtime is not None and runtime.queue is None:
            await open_runtime_queue(runtime)
        try:
            if self._announce is not None:
                self._announce()
            await super().serve(sockets=sockets)
        finally:
            if runtime is not None and runtime.queue is not None:  # the lifespan never ran
                await runtime.queue.close()
                runtime.queue = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        tune_gc()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.on_exit is not None:
            self.on_exit()
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()


#: Container allocations (net) between collections of the youngest generation (default 700).
GC_GEN0_THRESHOLD: Final = 50_000


def tune_gc() -> None:
    """For a started server. What startup made (modules, config, routes, the queue) lives as
    long as the process: freeze it out of the cyclic collector's sight. And collect the young
    generation less often: a request makes hundreds of containers (parsed JSON, jobs), nearly
    all freed by reference counting, so with the default threshold a collection ran every few
    requests, and under load it also walked everything that pending commits keep alive.
    Measured with bench/ingest.py: server CPU per 100-event /v1/batch about -20%, per
    /v1/track about -10%, and /v1/track's p99 latency 13 ms -> 4.3 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 10)


def run(
    config: Config,
    *,
    app: Starlette | None = None,
    log_level: str = "info",
    log_format: LogFormat = "text",
    announce: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (blocking).

    First binds the port and opens the queue: :class:`StartupError` when either cannot be
    done. ``announce`` is called once both are done, before serving (``serve --sandbox``
    prints its banner then). Exit status 1 if the server could not start afterwards. Logs
    (:func:`heaprelay.logs.configure`) go to stderr at ``log_level``, as ``log_format``, with
    the configuration's secrets masked."""
    configure(log_level, log_format, secrets=secrets_of(config))
    app = app or build_app(config)
    sock = bind(config.host, config.port)
    try:
        server = _Server(
            UvicornConfig(
                BodyDeadline(app, config.body_timeout),
                header_timeout=config.header_timeout,
                http=Protocol,
                timeout_keep_alive=max(1, round(config.keep_alive_timeout)),
                limit_concurrency=config.max_connections,
                host=config.host,
                port=config.port,
                lifespan="on",
                log_level=log_level,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=REQUEST_GRACE_SECONDS,
                server_header=False,
            ),
            runtime=getattr(app.state, "runtime", None),
            announce=announce,
        )
        runtime = getattr(app.state, "runtime", None)
        if isinstance(runtime, Runtime):

            def closing() -> None:
                runtime.closing = True

            server.on_exit = closing
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise SystemExit(1)


_ERROR_CODES: Final = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer JSON errors too."""
    assert isinstance(exc, HTTPException)
    code = _ERROR_CODES.get(exc.status_code, "http_error")
    message = f"{request.method} {request.url.path}: {exc.detail}"
    path = request.url.path
    if exc.status_code == 404 and path in getattr(request.app.state, "ingest_paths", ()):
        code = "ingest_not_served"
        message = (
            f"{request.method} {path}: this relay runs with --role worker: it only delivers "
            "queued events to Heap and accepts none; send events to a relay with --role api "
            "or --role all"
        )
    elif exc.status_code == 404:
        message += " (ingest routes are under /v1/, e.g. POST /v1/batch)"
    body = orjson.dumps({"code": code, "message": message})
    return Response(body, exc.status_code, headers=exc.headers, media_type="application/json")
