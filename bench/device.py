"""Device-mode routes: ``.venv/bin/python bench/device.py`` (one command).

Every page view of a site in device mode asks the relay for its SDK's settings (browsers keep
them for ``max-age`` 300 s) and, on a first visit, for the integration. This starts
``heaprelay serve --config`` (a subprocess; one source with a device-mode destination, no
delivery) and drives it from another process with concurrent keep-alive connections, in
interleaved rounds, for:

- ``GET /healthz`` — the baseline: the same server stack answering a constant;
- ``GET /v1/projects/KEY/settings`` (analytics-next), and again with ``If-None-Match`` (304);
- ``GET /sourceConfig/?writeKey=KEY`` (RudderStack);
- ``GET /next-integrations/integrations/heap/VERSION/heap.dynamic.js.gz`` (gzip, 2 KB).

Prints requests/s, p50/p99 latency and the server's CPU a request (the steadier figure on a
shared machine), each as the range over the rounds, and the CPU a request next to the
baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _client import read_answer, server_cpu  # bench/ is the script's folder: first on sys.path

KEY = "bench-web"
CONFIG = """
[server]
host = "127.0.0.1"
port = {port}
role = "api"
[[sources]]
name = "web"
write_key = "{key}"
  [[sources.destinations]]
  app_id = "1234567"
  device_mode = true
"""


async def drive(
    port: int, path: str, headers: str, seconds: float, connections: int, pid: int
) -> dict[str, float]:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: https://shop.example\r\n"
        f"Accept-Encoding: gzip\r\n{headers}\r\n"
    ).encode()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    warmup_end = time.perf_counter() + min(1.0, seconds / 5)
    end = warmup_end + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (start := time.perf_counter()) < end:
            writer.write(request)
            status = (await read_answer(reader))[0].decode()
            if start >= warmup_end:
                latencies.append(time.perf_counter() - start)
                statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    cpu = asyncio.create_task(server_cpu(pid, warmup_end, end))
    await asyncio.gather(*(connection() for _ in range(connections)))
    latencies.sort()
    n = len(latencies)
    return {
        "requests_per_s": n / seconds,
        "cpu_us": 1e6 * (await cpu) / max(n, 1),
        "p50_ms": 1000 * statistics.median(latencies) if n else 0.0,
        "p99_ms": 1000 * latencies[int(n * 0.99)] if n else 0.0,
        "statuses": statuses,  # type: ignore[dict-item]
    }


def span(values: list[float], fmt: str) -> str:
    low, high = min(values), max(values)
    return (
        format(low, fmt) if format(low, fmt) == format(high, fmt) else f"{low:{fmt}}–{high:{fmt}}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per scenario and round (3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections (16)")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--headers", default="", help=argparse.SUPPRESS)
    parser.add_argument("--pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:  # the client, in a process of its own
        result = asyncio.run(
            drive(args.port, args.path, args.headers, args.seconds, args.connections, args.pid)
        )
        print(json.dumps(result))
        return

    from heaprelay.device import bundle
    from heaprelay.testing.servers import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "heaprelay.toml"
        config.write_text(CONFIG.format(port=port, key=KEY))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")}
        command = [sys.executable, "-m", "heaprelay", "serve", "--config", str(config)]
        command += ["--data-dir", tmp, "--log-level", "warning"]
        server = subprocess.Popen(command, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/readyz", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.05)
            with urllib.request.urlopen(f"{url}/v1/projects/{KEY}/settings") as answer:
                etag = answer.headers["etag"]
            scenarios = [
                ("GET /healthz (baseline)", "/healthz", ""),
                ("GET /v1/projects/KEY/settings", f"/v1/projects/{KEY}/settings", ""),
                (
                    "  same, If-None-Match (304)",
                    f"/v1/projects/{KEY}/settings",
                    f"If-None-Match: {etag}\r\n",
                ),
                ("GET /sourceConfig/?writeKey=KEY", f"/sourceConfig/?writeKey={KEY}", ""),
                (
                    "GET …/heap.dynamic.js.gz (gzip)",
                    f"/next-integrations/integrations/heap/{bundle().version}/heap.dynamic.js.gz",
                    "",
                ),
            ]
            results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in scenarios}
            for round_ in range(args.rounds):
                order = scenarios if round_ % 2 == 0 else scenarios[::-1]
                for name, path, headers in order:
                    out = subprocess.run(
                        [sys.executable, __file__, "--drive", "--port", str(port), "--path", path,
                         "--headers", headers, "--pid", str(server.pid),
                         "--seconds", str(args.seconds), "--connections", str(args.connections)],
                        check=True, capture_output=True, text=True,
                    ).stdout  # fmt: skip
                    results[name].append(json.loads(out))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)

    base = statistics.median(r["cpu_us"] for r in results[scenarios[0][0]])
    print(f"{args.rounds} interleaved rounds of {args.seconds:g} s, {args.connections} connections")
    print(
        f"{'':34} {'requests/s':>15} {'p50 ms':>11} {'p99 ms':>11} {'CPU µs/req':>13} {'× base':>7}"
    )
    for name, _, _ in scenarios:
        rs = results[name]
        statuses = sorted({s for r in rs for s in r["statuses"]})  # type: ignore[attr-defined]
        cpu = [r["cpu_us"] for r in rs]
        print(
            f"{name:34} {span([r['requests_per_s'] for r in rs], ',.0f'):>15} "
            f"{span([r['p50_ms'] for r in rs], '.2f'):>11} "
            f"{span([r['p99_ms'] for r in rs], '.2f'):>11} {span(cpu, '.0f'):>13} "
            f"{statistics.median(cpu) / base:>7.2f}  [{', '.join(statuses)}]"
        )


if __name__ == "__main__":
    main()
