"""Conformance vectors: loading, settings, and the two checks every vector file gets.

The format is ``tests/data/conformance/README.md``. A test module for one file needs only::

    from _vectors import case_id, check_case, check_file_via_cli, load_cases

    CASES = load_cases("rudderstack.json")

    @pytest.mark.parametrize("case", CASES, ids=case_id)
    def test_vector(case):
        check_case(case)            # in process: url, method, headers, body(ies), Skip, settings

    def test_cli():
        check_file_via_cli(CASES)   # black box: the ``heaprelay transform`` command

(``tests/conformance`` is put on ``sys.path`` by pytest's rootdir-relative import of the
conftest next to this file, so ``import _vectors`` works from any test module here.)

Mapping from a vector's ``settings`` / ``options`` to heaprelay's destination settings:

- ``settings.app_id`` → ``app_id`` (``null`` → ``""``: not configured);
- ``settings.data_residency`` (RudderStack) → region ``eu`` only when exactly ``"eu"``,
  as RudderStack's transformer switches (``"EU"`` stays US);
- ``settings.region`` (Segment Actions, ``"US"``/``"EU"``) → ``region_setting`` as written,
  and ``region`` its lower-case form when that is ``us``/``eu``;
- ``options`` → ``DestinationSettings.options`` (``--option KEY=VALUE`` on the command line);
- ``settings_invalid: true`` → :func:`heaprelay.transform.validate_settings` must raise
  :class:`~heaprelay.transform.SettingsError` (and the command must exit 2).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from heaprelay.transform import _base
from heaprelay.transform._base import DestinationSettings, SettingsError, Skip
from heaprelay.transform._js import stringify

DATA_DIR = Path(__file__).parents[1] / "data" / "conformance"

Case = dict[str, Any]

#: peer_error texts that name one of heaprelay's reasons exactly (others are informative).
_PEER_ERROR_REASONS = {"not subscribed": "not_subscribed"}
#: (profile, beginning of the peer's error) -> the reason heaprelay gives for it.
_PEER_ERROR_PREFIXES: dict[tuple[str, str], str] = {
    ("rudderstack", "message Type is not present"): "missing_type",
    ("rudderstack", "invalid message type for heap"): "missing_type",  # v0: no type
    ("rudderstack", "message type "): "unsupported_type",
    ("rudderstack", "event is required"): "missing_event",
    ("rudderstack", "traits are required"): "missing_traits",
    ("rudderstack", "userId is required"): "missing_identity",
    ("segment", "message.userId is required"): "missing_identity",
    ("segment", "settings.appId is required"): "invalid_app_id",
}


def expected_reason(case: Case) -> str | None:
    """The reason heaprelay must give for a case the peer does not send, when pinned."""
    error = case["expect"].get("peer_error", "")
    if error in _PEER_ERROR_REASONS:
        return _PEER_ERROR_REASONS[error]
    for (profile, prefix), reason in _PEER_ERROR_PREFIXES.items():
        if case["profile"] == profile and error.startswith(prefix):
            return reason
    return None


def load_cases(file: str | Path) -> list[Case]:
    """Every case of a vector file (a name in ``tests/data/conformance`` or a path)."""
    path = Path(file)
    if not path.is_absolute() and not path.exists():
        path = DATA_DIR / path
    cases: list[Case] = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(cases, list), f"{path}: expected a JSON array"
    assert cases, f"{path}: no cases"
    for i, case in enumerate(cases):
        case.setdefault("name", f"{path.name}#{i}")
        missing = {"input", "expect", "profile"} - set(case)
        assert not missing, f"{case['name']}: missing {sorted(missing)}"
    return cases


def case_id(case: Case) -> str:
    """A short pytest id for a case."""
    return str(case["name"])[:90]


def region_of(case: Case) -> tuple[str, str | None]:
    """(region ``us``/``eu``, region as the user wrote it or ``None``) for a case."""
    settings = case.get("settings") or {}
    if "region" in settings:
        raw = settings["region"]
        low = raw.lower() if isinstance(raw, str) else None
        return (low if low in ("us", "eu") else "us"), raw
    # RudderStack: Config.dataResidency === 'eu' is the only switch to the EU host.
    return ("eu" if settings.get("data_residency") == "eu" else "us"), None


def options_of(case: Case) -> dict[str, str]:
    return {str(k): str(v) for k, v in (case.get("options") or {}).items()}


def settings_for(case: Case) -> DestinationSettings:
    """The heaprelay destination settings equivalent to the case's peer settings."""
    settings = case.get("settings") or {}
    region, raw = region_of(case)
    app_id = settings.get("app_id")
    return DestinationSettings(
        app_id="" if app_id is None else str(app_id),
        profile=case["profile"],
        region=region,  # type: ignore[arg-type]
        options=options_of(case),
        region_setting=raw,
    )


def expected_requests(case: Case) -> list[dict[str, Any]]:
    """The requests a sent case expects, in order (``expect.requests`` or the one request)."""
    expect = case["expect"]
    assert expect["sent"], case["name"]
    return list(expect.get("requests") or [expect])


class Number(str):
    """A JSON number token exactly as written (``67`` and ``67.0`` differ)."""

    def __repr__(self) -> str:
        return f"Number({self!s})"


def tokens(text: str | bytes) -> Any:
    """``text`` parsed with every number kept as its :class:`Number` token: two serialised
    bodies are equal iff they hold the same keys and values written with the same bytes (key
    order aside, which the vectors do not pin: see README.md)."""
    return json.loads(text, parse_int=Number, parse_float=Number, parse_constant=Number)


def sent_bytes(body: Any) -> bytes:
    """A body as heaprelay sends it (``HeapClient.post`` and ``heaprelay transform`` both
    write it with orjson)."""
    return orjson.dumps(body)


def assert_same_bytes(sent: str | bytes, want: Any, what: str) -> None:
    """``sent`` (the serialised body heaprelay sends) holds the bytes the peer sends for its
    expected body ``want``: ``JSON.stringify(want)``, as the peers run on Node.js (a number
    in ``want`` is written as JavaScript writes it: ``67.0`` as ``67``)."""
    shown = sent.decode() if isinstance(sent, bytes) else sent
    assert_same_tokens(tokens(sent), want, what, shown)


def assert_same_tokens(got: Any, want: Any, what: str, shown: str) -> None:
    """:func:`assert_same_bytes` for a body already parsed by :func:`tokens`."""
    peer = stringify(want)
    if got != tokens(peer):
        raise AssertionError(f"{what}: not the peer's bytes\nheaprelay: {shown}\npeer:      {peer}")


def assert_same_json(got: Any, want: Any, what: str) -> None:
    """``got`` (a body heaprelay built) is sent as the bytes of the peer's body ``want``."""
    assert_same_bytes(sent_bytes(got), want, what)


def check_case(case: Case) -> None:
    """Run one case in process and assert heaprelay does what the peer does."""
    name = case["name"]
    s = settings_for(case)
    if case.get("settings_invalid"):
        message = ""
        try:
            _base.validate_settings(s)
        except SettingsError as e:
            message = str(e) or "(empty message)"
        if not message:
            raise AssertionError(f"{name}: settings the peer refuses were accepted: {s}")
        assert message != "(empty message)", f"{name}: SettingsError without a message"
        return
    _base.validate_settings(s)
    out = _base.transform(case["input"], s)
    expect = case["expect"]
    if not expect["sent"]:
        assert isinstance(out, Skip), f"{name}: the peer does not send this, heaprelay did: {out}"
        assert out.reason, name
        want_reason = expected_reason(case)
        if want_reason is not None:
            assert out.reason == want_reason, f"{name}: reason {out.reason}, want {want_reason}"
        return
    assert not isinstance(out, Skip), f"{name}: the peer sends this, heaprelay skipped: {out}"
    want = expected_requests(case)
    assert len(out) == len(want), f"{name}: {len(out)} requests, want {len(want)}"
    for i, (r, w) in enumerate(zip(out, want, strict=True)):
        where = f"{name} request {i}"
        assert r.url == w["url"], f"{where}: url {r.url}"
        assert r.method == w.get("method", "POST"), f"{where}: method {r.method}"
        if "headers" in w:
            assert dict(r.headers) == w["headers"], f"{where}: headers"
        assert_same_json(r.body, w["body"], f"{where}: body")


# --- black box: the command ---------------------------------------------------------------


def cli_args_for(case: Case) -> list[str]:
    """``heaprelay transform`` arguments equivalent to :func:`settings_for` (no FILE)."""
    s = settings_for(case)
    args = ["--profile", s.profile]
    if s.app_id:
        args += ["--app-id", s.app_id]
    raw = s.region_setting
    if isinstance(raw, str):
        args += ["--region", raw]  # as written: profiles that check it see the same text
    elif s.region != "us":
        args += ["--region", s.region]
    for k, v in sorted(s.options.items()):
        args += ["--option", f"{k}={v}"]
    return args


def run_cli(
    args: Sequence[str], stdin: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``heaprelay transform ARGS`` with ``stdin`` (text), in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "heaprelay", "transform", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _groups(cases: Iterable[Case]) -> dict[tuple[str, ...], list[Case]]:
    groups: dict[tuple[str, ...], list[Case]] = {}
    for case in cases:
        key = (*cli_args_for(case), "invalid" if case.get("settings_invalid") else "valid")
        groups.setdefault(key, []).append(case)
    return groups


def check_file_via_cli(cases: Sequence[Case]) -> int:
    """Pipe every case through the ``heaprelay transform`` command, one subprocess per
    distinct settings, and compare stdout (requests, in input order) and stderr (one line per
    event not sent, with its index and messageId). Returns the number of subprocesses run."""
    runs = 0
    for key, group in _groups(cases).items():
        args = list(key[:-1])
        stdin = "".join(json.dumps(c["input"], ensure_ascii=False) + "\n" for c in group)
        proc = run_cli(args, stdin)
        runs += 1
        names = [c["name"] for c in group]
        if key[-1] == "invalid":
            assert proc.returncode == 2, f"{args}: exit {proc.returncode}, want 2 ({names})"
            assert proc.stderr.strip(), f"{args}: exit 2 without a message"
            assert proc.stdout == "", f"{args}: output despite refused settings"
            continue
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stderr}"
        skipped: dict[int, dict[str, Any]] = {}
        for line in proc.stderr.splitlines():
            rec = json.loads(line)
            assert set(rec) == {"index", "messageId", "reason", "detail"}, rec
            assert isinstance(rec["reason"], str), rec
            assert rec["reason"], rec
            skipped[rec["index"]] = rec
        want_skipped = {i for i, c in enumerate(group) if not c["expect"]["sent"]}
        assert set(skipped) == want_skipped, (
            f"{args}: skipped indexes {sorted(skipped)}, want {sorted(want_skipped)}"
        )
        for i in want_skipped:
            assert skipped[i]["messageId"] == group[i]["input"].get("messageId"), skipped[i]
            want_reason = expected_reason(group[i])
            if want_reason is not None:
                assert skipped[i]["reason"] == want_reason, (group[i]["name"], skipped[i])
        want_lines: list[tuple[str, dict[str, Any]]] = []
        for c in group:
            if c["expect"]["sent"]:
                want_lines += [(c["name"], w) for w in expected_requests(c)]
        got_lines = proc.stdout.splitlines()
        assert len(got_lines) == len(want_lines), (
            f"{args}: {len(got_lines)} requests on stdout, want {len(want_lines)}"
        )
        for line, (name, w) in zip(got_lines, want_lines, strict=True):
            got = json.loads(line)
            assert set(got) == {"method", "url", "body"}, got
            assert got["url"] == w["url"], f"{name}: url {got['url']}"
            assert got["method"] == w.get("method", "POST"), name
            # The body's own bytes, as printed: numbers compared as written.
            assert_same_tokens(tokens(line)["body"], w["body"], f"{name}: command", line)
    return runs
