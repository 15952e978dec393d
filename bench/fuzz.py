"""Fuzzing for minutes: ``.venv/bin/python bench/fuzz.py [--minutes 10]``.

Runs the strategies and checks of ``heaprelay.testing.fuzz`` (the same as the short run in
``pytest``: tests/unit/test_fuzz.py, tests/integration/test_fuzz_ingest.py), randomly seeded,
on three targets in interleaved rounds until the time is up:

- ``transform``: every profile's transform, with any of its options, on any message and on
  values nested up to 1,100 levels (the baseline: no parsing, no I/O);
- ``ingest+transform``: ingest's pure path (parse, check, enrich) on any JSON body, cut or
  not, then every profile on what it stored;
- ``http``: any route, body (mutated, gzip'd, junk) and authentication form sent to a real
  ``heaprelay serve --sandbox`` on loopback: a 200 that stored every message, or a 4xx
  ``{"code", "message"}`` that stored nothing, never a 5xx.

Prints, per target, the cases run, the failures (the first few with their input) and cases/s
next to the transform's; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from heaprelay.testing.fuzz import (
    DEEP,
    MESSAGES,
    FuzzRequest,
    check_answer,
    check_pipeline,
    check_transform,
    destination_settings,
    encode,
    fuzz_requests,
)
from heaprelay.testing.servers import free_port, run_process

CONFIG = """
[server]
host = "127.0.0.1"
port = {port}
data_dir = "{data_dir}"

[[sources]]
name = "open"
write_key = "open-key"

  [[sources.destinations]]
  id = "open-heap"
  app_id = "111"

[[sources]]
name = "small"
write_key = "small-key"
limits = {{ max_request_bytes = 4000, max_message_bytes = 1000 }}

  [[sources.destinations]]
  id = "small-heap"
  app_id = "333"
"""
ROUND = settings(
    max_examples=100,
    deadline=None,
    database=None,
    phases=[Phase.generate],  # failures are recorded, not raised: nothing to shrink
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Target:
    name: str
    cases: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def record(self, check: Callable[[], Any], what: Callable[[], str]) -> None:
        self.cases += 1
        try:
            check()
        except Exception as exc:
            self.failures.append((f"{type(exc).__name__}: {exc}"[:400], what()[:400]))


def depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack += [(v, level + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


def describe(message: Any, s: Any) -> str:
    """A failing transform case: the profile, the depth of each field, the message's start."""
    depths = {k: depth(v) for k, v in message.items()} if isinstance(message, dict) else {}
    return f"{s.profile} {dict(s.options)} depths {depths} {message!r}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.minutes * 60

    transform_t, pipeline_t, http_t = (
        Target("transform"),
        Target("ingest+transform"),
        Target("http"),
    )

    @ROUND
    @given(MESSAGES | DEEP.map(lambda d: {"type": "track", "userId": "u", "event": "E",
                                         "properties": {"p": d}, "traits": {"t": d}}),
           destination_settings())  # fmt: skip
    def run_transform(message: Any, s: Any) -> None:
        transform_t.record(lambda: check_transform(message, s), lambda: describe(message, s))

    @ROUND
    @given(
        st.lists(MESSAGES, max_size=3).map(lambda items: {"batch": items}) | MESSAGES,
        destination_settings(),
        st.integers(0, 10_000) | st.none(),
    )
    def run_pipeline(value: Any, s: Any, cut: int | None) -> None:
        body = encode(value)
        if cut is not None:
            body = body[:cut]
        kind = None if "batch" in value else "track"
        pipeline_t.record(lambda: check_pipeline(body, kind, s), lambda: repr((body, s)))

    with tempfile.TemporaryDirectory(prefix="heaprelay-fuzz-") as tmp:
        root = Path(tmp)
        port = free_port()
        (root / "relay.toml").write_text(CONFIG.format(port=port, data_dir=root / "data"))
        url = f"http://127.0.0.1:{port}"
        db = root / "data" / "heaprelay.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")}
        command = [sys.executable, "-m", "heaprelay", "serve", "--sandbox"]
        command += ["--config", str(root / "relay.toml")]
        with (
            run_process(command, root / "serve.log", ready=f"{url}/readyz", env=env),
            httpx.Client(base_url=url, timeout=30) as http,
            sqlite3.connect(db) as conn,
        ):

            def jobs() -> int:
                return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])

            def send(request: FuzzRequest) -> None:
                before = jobs()
                answer = http.post(request.route, content=request.body, headers=request.headers)
                check_answer(
                    answer.status_code, answer.headers.get("content-type", ""), answer.content
                )
                stored = jobs() - before
                expected = request.messages if answer.status_code == 200 else 0
                assert stored == expected, f"{answer.status_code}: stored {stored} jobs"

            @ROUND
            @given(fuzz_requests(("open-key", "small-key")))
            def run_http(request: FuzzRequest) -> None:
                http_t.record(lambda: send(request), lambda: repr(request))

            rounds = 0
            while time.monotonic() < deadline:
                order = [(transform_t, run_transform), (pipeline_t, run_pipeline)]
                order.append((http_t, run_http))
                for target, run in order if rounds % 2 == 0 else order[::-1]:
                    started = time.perf_counter()
                    run()
                    target.seconds += time.perf_counter() - started
                rounds += 1

    base = transform_t.cases / transform_t.seconds if transform_t.seconds else 0.0
    print(f"fuzzed for {args.minutes:g} min, {rounds} rounds of 100 cases a target")
    print(f"{'target':<18} {'cases':>8} {'failures':>9} {'cases/s':>9} {'vs transform':>13}")
    failed = 0
    for t in (transform_t, pipeline_t, http_t):
        rate = t.cases / t.seconds if t.seconds else 0.0
        ratio = f"{rate / base:.3f}x" if base else "-"
        print(f"{t.name:<18} {t.cases:>8} {len(t.failures):>9} {rate:>9.0f} {ratio:>13}")
        failed += len(t.failures)
    print(
        f"total: {sum(t.cases for t in (transform_t, pipeline_t, http_t))} cases, {failed} failures"
    )
    for t in (transform_t, pipeline_t, http_t):
        for problem, case in t.failures[:5]:
            print(f"  {t.name}: {problem}\n    input: {case}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
