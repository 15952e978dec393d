"""Transform throughput: ``.venv/bin/python bench/transform.py [-n N] [--repeat R] [--only P]``.

Makes a deterministic, realistic mix of N events with ``bench/make_events.py`` (70% track:
flat, nested, with arrays, a few large; 25% identify; 5% page/screen/group/alias), then, in
one process on one core, times for every profile (``heaprelay.transform.PROFILE_NAMES``) and
for the option variants of the Segment Actions profiles (``segment-actions`` with
``identity=userId``; ``segment-heap-cloud`` with each ``nested_properties_mode``):

    transform cost = stored event bytes -> request body bytes
                   = orjson.loads(event) + transform(event, settings) + orjson.dumps(body)
                     for every request the event becomes (a skipped event costs its decision)

next to the JSON baseline of the same events, ``orjson.dumps(orjson.loads(event))``, and
prints events/s, µs per event, the ratio to the baseline and the ratio to the ``heap``
profile (the default; the others are meant to cost no more per event).

Measured in interleaved rounds so the comparison is fair on a shared machine: each round
times one pass of every variant, in forward order on even rounds and reverse order on odd
ones, and each figure is the best of R rounds (default 5). A noisy neighbour then slows all
variants alike within a round, and the best round of each is taken.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import orjson

from heaprelay.transform import (
    PROFILE_NAMES,
    DestinationSettings,
    SettingsError,
    Skip,
    get_profile,
    validate_settings,
)

HERE = Path(__file__).resolve().parent

#: Option variants timed besides each profile's defaults: (profile, options).
OPTION_VARIANTS: tuple[tuple[str, Mapping[str, str]], ...] = (
    ("segment-actions", {"identity": "userId"}),
    ("segment-heap-cloud", {"nested_properties_mode": "stringify"}),
    ("segment-heap-cloud", {"nested_properties_mode": "drop"}),
)


def make_events(n: int) -> list[bytes]:
    out = subprocess.run(
        [sys.executable, str(HERE / "make_events.py"), str(n)],
        check=True,
        capture_output=True,
    ).stdout
    return [line for line in out.split(b"\n") if line]


def settings_for(profile: str, options: Mapping[str, str]) -> DestinationSettings | None:
    """Settings the profile accepts (Segment's Actions profiles want a region as ``US``)."""
    for region_setting in (None, "US"):
        s = DestinationSettings(
            app_id="1535634150",
            profile=profile,
            region_setting=region_setting,
            options=dict(options),
        )
        try:
            validate_settings(s)
            return s
        except SettingsError:
            continue
        except ImportError:
            return None
    return None


def label_for(profile: str, options: Mapping[str, str]) -> str:
    if not options:
        return profile
    return profile + " " + ",".join(f"{k}={v}" for k, v in options.items())


def make_run(
    lines: list[bytes], transform: Callable[..., object], settings: DestinationSettings
) -> Callable[[], None]:
    loads, dumps = orjson.loads, orjson.dumps

    def run() -> None:
        for line in lines:
            result = transform(loads(line), settings)
            if type(result) is not Skip:
                for request in result:  # type: ignore[attr-defined]
                    dumps(request.body)

    return run


def counts_of(
    lines: list[bytes], transform: Callable[..., object], settings: DestinationSettings
) -> str:
    sent = skipped = requests = 0
    for line in lines:
        result = transform(orjson.loads(line), settings)
        if isinstance(result, Skip):
            skipped += 1
        else:
            sent += 1
            requests += len(result)  # type: ignore[arg-type]
    return f"{sent}/{skipped}/{requests}"


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="events in the mix (20000)")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds, best kept (5)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PROFILE",
        help="time only this profile (repeatable; heap is always timed, as the reference)",
    )
    args = parser.parse_args()

    lines = make_events(args.n)
    n = len(lines)
    size = sum(len(x) for x in lines)
    loads, dumps = orjson.loads, orjson.dumps

    def baseline() -> None:
        for line in lines:
            dumps(loads(line))

    wanted: list[tuple[str, Mapping[str, str]]] = [(name, {}) for name in PROFILE_NAMES] + list(
        OPTION_VARIANTS
    )
    if args.only:
        wanted = [(p, o) for p, o in wanted if p in args.only or p == "heap"]
    labels: list[str] = ["JSON parse+serialise"]
    runs: list[Callable[[], None]] = [baseline]
    notes: dict[str, str] = {"JSON parse+serialise": ""}
    unavailable: list[str] = []
    for name, options in wanted:
        label = label_for(name, options)
        try:
            profile = get_profile(name)
        except (ImportError, AttributeError):
            unavailable.append(f"{label:52} (profile module not available; skipped)")
            continue
        settings = settings_for(name, options)
        if settings is None:
            unavailable.append(f"{label:52} (no settings accepted; skipped)")
            continue
        labels.append(label)
        runs.append(make_run(lines, profile.transform, settings))
        notes[label] = counts_of(lines, profile.transform, settings)  # also warms up

    best = [float("inf")] * len(runs)
    order = list(range(len(runs)))
    for round_no in range(args.repeat):
        for i in order if round_no % 2 == 0 else reversed(order):
            best[i] = min(best[i], timed(runs[i]))

    base = best[0]
    heap = best[labels.index("heap")] if "heap" in labels else None
    print(
        f"{n} events, {size / n:.0f} bytes on average (bench/make_events.py), "
        f"best of {args.repeat} interleaved rounds"
    )
    print(
        f"{'':52} {'events/s':>10} {'µs/event':>9} {'× JSON':>7} {'× heap':>7}"
        "  sent/skipped/requests"
    )
    for label, t in zip(labels, best, strict=True):
        vs_heap = f"{t / heap:>7.3f}" if heap else f"{'-':>7}"
        print(
            f"{label:52} {n / t:>10,.0f} {t / n * 1e6:>9.2f} {t / base:>7.2f} {vs_heap}"
            f"  {notes[label]}"
        )
    for line in unavailable:
        print(line)


if __name__ == "__main__":
    main()
