"""``heaprelay fake-heap``: run the fake Heap server (see :mod:`heaprelay.heap.fake`)."""

from __future__ import annotations

import click


def _outage(value: str) -> tuple[float, float]:
    start, sep, end = value.partition("-")
    try:
        a, b = float(start), float(end)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use START-END in seconds, e.g. 30-90") from None
    if not sep or b <= a or a < 0:
        raise click.BadParameter(f"{value!r}: use START-END in seconds with START < END")
    return a, b


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8788, show_default=True)
@click.option(
    "--rate-limits/--no-rate-limits",
    default=True,
    show_default=True,
    help="Answer 429 + Retry-After beyond Heap's documented limits.",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Divide the rate-limit windows (e.g. 60: a minute's budget per second).",
)
@click.option(
    "--error-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of requests answered with --error-status.",
)
@click.option("--error-status", type=click.IntRange(400, 599), default=503, show_default=True)
@click.option(
    "--latency", type=click.FloatRange(min=0), default=0.0, help="Seconds added to each answer."
)
@click.option(
    "--outage",
    "outages",
    multiple=True,
    callback=lambda ctx, param, values: tuple(_outage(v) for v in values),
    help="START-END seconds after start during which every request gets 503 (repeatable).",
)
@click.option("--seed", type=int, default=None, help="Seed for injected failures.")
def command(
    host: str,
    port: int,
    rate_limits: bool,
    time_scale: float,
    error_rate: float,
    error_status: int,
    latency: float,
    outages: tuple[tuple[float, float], ...],
    seed: int | None,
) -> None:
    """Run a fake Heap API that checks Heap's documented rules and limits.

    Point a destination's base URL at http://HOST:PORT (EU paths also under /eu). What it
    accepted: GET /_fake/report, /_fake/events, /_fake/users. Change failure injection at
    run time: POST /_fake/settings '{"outage_seconds": 10}' (Content-Type: application/json).
    /_fake/* answers only clients on this machine, never another site's pages.

    Device mode: a recording heap.js at /js/heap-APP_ID.js (heap_script_url =
    "http://HOST:PORT/js/heap-{app_id}.js"); every call pages made on it: GET /_fake/browser.
    """
    import uvicorn

    from heaprelay.heap.fake import FakeHeap, FakeHeapSettings

    settings = FakeHeapSettings(
        rate_limits=rate_limits,
        time_scale=time_scale,
        error_rate=error_rate,
        error_status=error_status,
        latency=latency,
        outages=outages,
        seed=seed,
    )
    from heaprelay.server import StartupError, bind

    fake = FakeHeap(settings)
    try:
        sock = bind(host, port)
    except StartupError as e:
        raise CannotListen(str(e)) from None
    click.echo(f"fake Heap on http://{host}:{port}  (report: http://{host}:{port}/_fake/report)")
    config = uvicorn.Config(fake.app, host=host, port=port, log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


class CannotListen(click.ClickException):
    """The port cannot be had: one line, exit 2."""

    exit_code = 2
