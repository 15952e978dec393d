"""Transform throughput: ``.venv/bin/python bench/transform.py [-n N] [--repeat R]``.

Makes a deterministic, realistic mix of N events with ``bench/make_events.py`` (70% track:
flat, nested, with arrays, a few large; 25% identify; 5% page/screen/group/alias), then, in
one process on one core, times for every profile (``heaprelay.transform.PROFILE_NAMES``):

    transform cost = stored event bytes -> request body bytes
                   = orjson.loads(event) + transform(event, settings) + orjson.dumps(body)
                     for every request the event becomes (a skipped event costs its decision)

next to the JSON baseline of the same events, ``orjson.dumps(orjson.loads(event))``, and
prints events/s, µs per event and the ratio to the baseline. Each figure is the best of R
runs (default 3), so a noisy neighbour on a shared machine inflates it less.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
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


def make_events(n: int) -> list[bytes]:
    out = subprocess.run(
        [sys.executable, str(HERE / "make_events.py"), str(n)],
        check=True,
        capture_output=True,
    ).stdout
    return [line for line in out.split(b"\n") if line]


def settings_for(profile: str) -> DestinationSettings | None:
    """Settings the profile accepts (Segment's Actions profiles want a region as ``US``)."""
    for region_setting in (None, "US"):
        s = DestinationSettings(app_id="1535634150", profile=profile, region_setting=region_setting)
        try:
            validate_settings(s)
            return s
        except SettingsError:
            continue
        except ImportError:
            return None
    return None


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="events in the mix (20000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure, best kept (3)")
    args = parser.parse_args()

    lines = make_events(args.n)
    n = len(lines)
    size = sum(len(x) for x in lines)
    loads, dumps = orjson.loads, orjson.dumps

    def baseline() -> None:
        for line in lines:
            dumps(loads(line))

    base = best_of(args.repeat, baseline)
    print(
        f"{n} events, {size / n:.0f} bytes on average (bench/make_events.py), best of {args.repeat}"
    )
    print(f"{'':22} {'events/s':>10} {'µs/event':>9} {'× JSON':>7}  sent/skipped/requests")
    print(f"{'JSON parse+serialise':22} {n / base:>10,.0f} {base / n * 1e6:>9.2f} {1.0:>7.2f}")

    for name in PROFILE_NAMES:
        try:
            get_profile(name)
        except (ImportError, AttributeError):
            print(f"{name:22} (profile module not available; skipped)")
            continue
        settings = settings_for(name)
        if settings is None:
            print(f"{name:22} (no settings accepted; skipped)")
            continue
        transform = get_profile(name).transform
        counts = [0, 0, 0]

        def run(
            transform: Callable[..., object] = transform, s: DestinationSettings = settings
        ) -> None:
            for line in lines:
                result = transform(loads(line), s)
                if type(result) is not Skip:
                    for request in result:  # type: ignore[attr-defined]
                        dumps(request.body)

        for line in lines:  # counts, outside the timing
            result = transform(loads(line), settings)
            if isinstance(result, Skip):
                counts[1] += 1
            else:
                counts[0] += 1
                counts[2] += len(result)
        t = best_of(args.repeat, run)
        print(
            f"{name:22} {n / t:>10,.0f} {t / n * 1e6:>9.2f} {t / base:>7.2f}  "
            f"{counts[0]}/{counts[1]}/{counts[2]}"
        )


if __name__ == "__main__":
    main()
