"""The TOML configuration file: read, interpolate the environment, check everything, build a
frozen :class:`~heaprelay.config.Config`.

Every problem is collected (not just the first) with where it is: the file, the line when it
can be found, and the TOML path (``sources[1].destinations[0].app_id``). ``heaprelay config
check`` prints them; ``heaprelay serve --config`` refuses to start on any of them.

Secrets and the environment:

- any string value may hold ``${VAR}`` (the variable must be set and non-empty) or
  ``${VAR:-default}``; ``$${`` stands for a literal ``${``;
- ``write_key_env = "VAR"`` / ``app_id_env = "VAR"`` read the whole value from a variable
  (instead of ``write_key`` / ``app_id``);
- ``HEAPRELAY_HOST``, ``HEAPRELAY_PORT``, ``HEAPRELAY_DATA_DIR``, ``HEAPRELAY_QUEUE``,
  ``HEAPRELAY_ROLE``, ``HEAPRELAY_PUBLIC_URL``, ``HEAPRELAY_ADMIN_TOKEN`` and
  ``HEAPRELAY_METRICS_TOKEN`` override the file's ``[server]`` table.

The format is documented in ``examples/heaprelay.toml``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, cast, get_args, get_type_hints

from heaprelay.audiences._key import AudienceKeyError, audience_key, check_key
from heaprelay.config import (
    DEFAULT_AUDIENCE_EVERY,
    DEFAULT_HEAP_SCRIPT_URL,
    DEFAULT_RETRY_WINDOW,
    Audience,
    AudienceRule,
    Config,
    Consent,
    DeliverySettings,
    Destination,
    EventFilter,
    Limits,
    Role,
    Source,
    default_data_dir,
    origin_problem,
)
from heaprelay.transform import DestinationSettings, SettingsError, check_options, get_profile
from heaprelay.transform.browser import DEVICE_PROFILES

__all__ = [
    "ConfigError",
    "Problem",
    "check_config",
    "load_config",
    "load_queue_location",
    "parse_duration",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration file, and where."""

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(ValueError):
    """A configuration that cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def load_config(path: str | Path, env: Mapping[str, str]) -> Config:
    """Read and check ``path``; :class:`ConfigError` with every problem if it is not valid."""
    config, problems = _read(Path(path), env)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def check_config(path: str | Path, env: Mapping[str, str]) -> list[Problem]:
    """Every problem of the file at ``path`` (empty when it is valid)."""
    return _read(Path(path), env)[1]


def load_queue_location(path: str | Path, env: Mapping[str, str]) -> tuple[str | None, Path]:
    """Only what a command that opens the queue (``status``, ``dlq``, ``db migrate``) needs
    from the file: ``[server]``'s ``queue_url`` (``None``: SQLite in the data dir) and
    ``data_dir``, with ``HEAPRELAY_QUEUE`` / ``HEAPRELAY_DATA_DIR`` on top. The sources and
    their secrets are not read: :class:`ConfigError` only for problems of these settings."""
    name = str(Path(path))
    parsed = _parse(Path(path))
    if isinstance(parsed, list):
        raise ConfigError(parsed)
    text, data = parsed
    reader = _Reader(name, env, _line_index(text))
    server = reader.table(data.get("server", {}), "server") or {}
    overrides = {key: env[var] for var, key in _ENV_OVERRIDES.items() if env.get(var)}
    server = {**server, **{k: v for k, v in overrides.items() if k in ("queue_url", "data_dir")}}
    data_dir = reader.string(server, "data_dir", "server")
    queue_url = reader.string(server, "queue_url", "server")
    _check_queue_url(reader, queue_url)
    if reader.problems:
        raise ConfigError(reader.problems)
    return queue_url, Path(data_dir).expanduser() if data_dir else default_data_dir()


def _check_queue_url(r: _Reader, queue_url: str | None) -> None:
    if queue_url and not re.match(r"(sqlite|postgres|postgresql)://", queue_url):
        r.problem(
            "server.queue_url",
            f"{queue_url!r}: expected sqlite:///path, postgresql://… or postgres://…",
        )


# --- durations ----------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a string like ``"90s"``, ``"15m"``, ``"4h"``,
    ``"1h30m"``, ``"7d"``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.replace(" ", "")
        parts = list(_DURATION.finditer(text))
        if parts and "".join(p.group(0) for p in parts) == text:
            return sum(float(p.group(1)) * _UNITS[p.group(2)] for p in parts)
    raise ValueError(
        f"{value!r} is not a duration; write seconds (3600) or a string like "
        '"90s", "15m", "4h", "1h30m", "7d"'
    )


# --- reading -----------------------------------------------------------------------------


@dataclass
class _Reader:
    """Walks the parsed TOML, collecting problems instead of stopping at the first."""

    file: str
    env: Mapping[str, str]
    lines: dict[str, int]
    problems: list[Problem] = field(default_factory=list)

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.file, path, message, _line_of(self.lines, path)))

    def table(self, value: Any, path: str) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.problem(path, f"expected a table, got {_kind(value)}")
        return None

    def keys(self, table: Mapping[str, Any], path: str, accepted: tuple[str, ...]) -> None:
        for key in table:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.problem(
                    _join(path, key),
                    f"unknown key{hint}; accepted here: {', '.join(accepted)}",
                )

    def string(self, table: Mapping[str, Any], key: str, path: str) -> str | None:
        """A string (numbers are accepted as their text), with ``${VAR}`` interpolated."""
        if key not in table:
            return None
        value = table[key]
        where = _join(path, key)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            self.problem(where, f"expected a string, got {_kind(value)}")
            return None
        return self.interpolate(value, where)

    def interpolate(self, value: str, where: str) -> str | None:
        missing: list[str] = []

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            name, default = m.group(1), m.group(3)
            found = self.env.get(name, "")
            if found:
                return found
            if default is not None:
                return default
            missing.append(name)
            return ""

        result = _INTERPOLATION.sub(sub, value)
        for name in missing:
            self.problem(where, f"environment variable {name} is not set (used as ${{{name}}})")
        return None if missing else result

    def from_env(self, table: Mapping[str, Any], key: str, path: str) -> str | None:
        """``key`` or ``key_env`` (the name of a variable holding it), exactly one of them."""
        env_key = f"{key}_env"
        if key in table and env_key in table:
            self.problem(path, f"set either {key} or {env_key}, not both")
            return None
        if env_key in table:
            name = self.string(table, env_key, path)
            if name is None:
                return None
            found = self.env.get(name, "")
            if not found:
                self.problem(
                    _join(path, env_key), f"environment variable {name} is not set or empty"
                )
                return None
            return found
        value = self.string(table, key, path)
        if key in table and value is not None and not value.strip():
            self.problem(_join(path, key), "must not be empty")
            return None
        if key not in table:
            self.problem(path, f"{key} is required (or {env_key}, naming an environment variable)")
        return value

    def typed(
        self,
        table: Mapping[str, Any],
        key: str,
        path: str,
        check: Callable[[Any], T],
        default: T,
    ) -> T:
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, str):
            interpolated = self.interpolate(value, _join(path, key))
            if interpolated is None:
                return default
            value = interpolated
        try:
            return check(value)
        except ValueError as e:
            self.problem(_join(path, key), str(e))
            return default

    def string_list(self, table: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
        if key not in table:
            return ()
        value = table[key]
        where = _join(path, key)
        if not isinstance(value, list):
            self.problem(where, f"expected a list of strings, got {_kind(value)}")
            return ()
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.problem(f"{where}[{i}]", f"expected a string, got {_kind(item)}")
            elif (text := self.interpolate(item, f"{where}[{i}]")) is not None:
                out.append(text)
        return tuple(out)


_INTERPOLATION = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    kinds |= {list: "a list", dict: "a table"}
    return kinds.get(type(value), type(value).__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _positive_int(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def _positive_number(value: Any) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"expected a positive number, got {value!r}")
    return float(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _port(value: Any) -> int:
    port = _positive_int(value)
    if port > 65535:
        raise ValueError(f"expected a port number (1-65535), got {port}")
    return port


def _one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"got {value!r}; accepted: {', '.join(choices)}")
        return cast(str, value)

    return check


def _url(value: Any) -> str:
    if not isinstance(value, str) or not re.match(r"https?://[^/\s]+", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _duration(value: Any) -> float:
    return parse_duration(value)


def _script_url(value: Any) -> str:
    """A ``heap_script_url``: an http(s) URL template that names ``{app_id}``."""
    if not isinstance(value, str) or not re.match(r"https?://[^/\s]+(/|$)", value):
        raise ValueError(
            f'expected an http:// or https:// URL, got {value!r} (e.g. "{DEFAULT_HEAP_SCRIPT_URL}")'
        )
    if "{app_id}" not in value:
        raise ValueError(
            f"{value!r} does not contain {{app_id}}: write where the App ID goes, e.g. "
            '"https://heap-proxy.example.com/js/heap-{app_id}.js"'
        )
    if re.search(r"\s", value):
        raise ValueError(f"{value!r} contains white space")
    return value


# --- the schema ----------------------------------------------------------------------------

_TOP = ("server", "delivery", "sources", "audiences", "computed_traits")
_SERVER = (
    "host",
    "port",
    "data_dir",
    "queue_url",
    "role",
    "sandbox",
    "retention",
    "public_url",
    "admin_token",
    "metrics_token",
    "header_timeout",
    "body_timeout",
    "keep_alive_timeout",
    "max_connections",
)
_SOURCE = (
    "name",
    "write_key",
    "write_key_env",
    "cors_origins",
    "cors_credentials",
    "dedupe_window",
    "partial_batches",
    "history_window",
    "limits",
    "destinations",
)
_DESTINATION = (
    "id",
    "app_id",
    "app_id_env",
    "region",
    "base_url",
    "profile",
    "options",
    "event_filter",
    "consent",
    "onetrust_cookie_categories",
    "ketch_consent_purposes",
    "retry_window",
    "enabled",
    "device_mode",
    "device_mode_server_side",
    "heap_script_url",
    "integration_names",
)
_EVENT_FILTER = ("mode", "events")
_FILTER_MODES = {
    "disable": "disable",
    "allow": "allow",
    "deny": "deny",
    # RudderStack's names, so that its settings can be copied as they are
    "whitelistedEvents": "allow",
    "blacklistedEvents": "deny",
}
_CONSENT = ("provider", "categories", "resolution")
_PROVIDERS = ("oneTrust", "ketch", "iubenda", "custom")
_ENV_OVERRIDES = {
    "HEAPRELAY_HOST": "host",
    "HEAPRELAY_PORT": "port",
    "HEAPRELAY_DATA_DIR": "data_dir",
    "HEAPRELAY_QUEUE": "queue_url",
    "HEAPRELAY_ROLE": "role",
    "HEAPRELAY_PUBLIC_URL": "public_url",
    "HEAPRELAY_ADMIN_TOKEN": "admin_token",
    "HEAPRELAY_METRICS_TOKEN": "metrics_token",
}


def _parse(path: Path) -> tuple[str, dict[str, Any]] | list[Problem]:
    """The file's text and its TOML, or why it cannot be read."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [Problem(name, "", "no such file")]
    except IsADirectoryError:
        return [Problem(name, "", "is a directory, not a file")]
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return [Problem(name, "", f"cannot read the file: {reason}")]
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        return [Problem(name, "", f"not valid TOML: {e}", int(m.group(1)) if m else None)]


def _read(path: Path, env: Mapping[str, str]) -> tuple[Config | None, list[Problem]]:
    name = str(path)
    parsed = _parse(path)
    if isinstance(parsed, list):
        return None, parsed
    text, data = parsed
    reader = _Reader(name, env, _line_index(text))
    config = _build(reader, data)
    problems = sorted(reader.problems, key=lambda p: p.line or 0)
    return (None if problems else config), problems


def _build(r: _Reader, data: dict[str, Any]) -> Config:
    r.keys(data, "", _TOP)
    server = r.table(data.get("server", {}), "server") or {}
    r.keys(server, "server", _SERVER)
    overrides = {key: r.env[var] for var, key in _ENV_OVERRIDES.items() if r.env.get(var)}
    server = {**server, **overrides}
    defaults = Config(sources=())

    data_dir = r.string(server, "data_dir", "server")
    role: str = r.typed(server, "role", "server", _one_of(*get_args(Role)), str(defaults.role))
    config_kw: dict[str, Any] = {
        "host": r.string(server, "host", "server") or defaults.host,
        "port": r.typed(server, "port", "server", _port, defaults.port),
        "data_dir": Path(data_dir).expanduser() if data_dir else default_data_dir(),
        "queue_url": r.string(server, "queue_url", "server"),
        "role": cast(Role, role),
        "sandbox": r.typed(server, "sandbox", "server", _boolean, False),
        "retention": r.typed(server, "retention", "server", _positive_duration, defaults.retention),
        "public_url": r.typed(server, "public_url", "server", _url, cast(str | None, None)),
        "delivery": _delivery(r, data.get("delivery", {})),
        "admin_token": _token(r, server, "admin_token"),
        "metrics_token": _token(r, server, "metrics_token"),
        "header_timeout": r.typed(
            server, "header_timeout", "server", _positive_duration, defaults.header_timeout
        ),
        "body_timeout": r.typed(
            server, "body_timeout", "server", _positive_duration, defaults.body_timeout
        ),
        "keep_alive_timeout": r.typed(
            server, "keep_alive_timeout", "server", _positive_duration, defaults.keep_alive_timeout
        ),
        "max_connections": r.typed(
            server, "max_connections", "server", _positive_int, defaults.max_connections
        ),
    }
    _check_queue_url(r, config_kw["queue_url"])

    sources_value = data.get("sources")
    if sources_value is None:
        r.problem("", "no [[sources]]: add at least one source with its write key")
        sources_value = []
    if not isinstance(sources_value, list):
        r.problem("sources", f"expected [[sources]] tables, got {_kind(sources_value)}")
        sources_value = []
    sources = [
        s for i, v in enumerate(sources_value) if (s := _source(r, v, f"sources[{i}]")) is not None
    ]
    _unique(r, sources)
    audiences = _audiences(r, data.get("audiences", []), sources_value, sources)
    audiences += _audiences(
        r, data.get("computed_traits", []), sources_value, sources, "computed_traits", audiences
    )
    return Config(
        sources=tuple(_with_history(r, sources, sources_value, audiences)),
        audiences=audiences,
        **config_kw,
    )


#: Shorter tokens are refused: a dashboard token is a password.
MIN_TOKEN_LENGTH = 12


def _token(r: _Reader, server: Mapping[str, Any], key: str) -> str | None:
    value = r.string(server, key, "server")
    if value is not None and len(value.strip()) < MIN_TOKEN_LENGTH:
        r.problem(
            f"server.{key}",
            f"too short ({len(value.strip())} characters): use at least {MIN_TOKEN_LENGTH} "
            '(e.g. python3 -c "import secrets; print(secrets.token_urlsafe())")',
        )
        return None
    return value.strip() if value is not None else None


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero, got {value!r}")
    return seconds


#: ``[delivery]`` keys with a check of their own; every other field of
#: :class:`DeliverySettings` is accepted too, checked by its type (see :func:`_delivery_checks`).
_DELIVERY_CHECKS: dict[str, Callable[[Any], Any]] = {
    "batch_size": _positive_int,
    "flush_interval": _duration,
    "rate_limits": _boolean,
    "app_events_per_minute": _positive_int,
    "identity_events_per_minute": _positive_int,
    "time_scale": _positive_number,
    "concurrency": _positive_int,
    "request_timeout": _positive_duration,
    "retry_base": _positive_duration,
    "retry_cap": _positive_duration,
    "lease_seconds": _positive_duration,
}


def _delivery_checks() -> dict[str, Callable[[Any], Any]]:
    """A check for every field of :class:`DeliverySettings`, so that a setting added there
    is accepted in ``[delivery]`` at once: ints are positive integers, floats durations
    (seconds or "90s"), booleans true/false."""
    by_type: dict[Any, Callable[[Any], Any]] = {
        int: _positive_int,
        float: _duration,
        bool: _boolean,
    }
    hints = get_type_hints(DeliverySettings)
    checks: dict[str, Callable[[Any], Any]] = {}
    for f in fields(DeliverySettings):
        check = _DELIVERY_CHECKS.get(f.name) or by_type.get(hints.get(f.name))
        if check is not None:
            checks[f.name] = check
    return checks


def _delivery(r: _Reader, value: Any) -> DeliverySettings:
    default = DeliverySettings()
    table = r.table(value, "delivery")
    if table is None:
        return default
    checks = _delivery_checks()
    r.keys(table, "delivery", tuple(checks))
    kw = {
        key: r.typed(table, key, "delivery", check, getattr(default, key))
        for key, check in checks.items()
        if key in table
    }
    if kw.get("batch_size", 0) > 1000:
        r.problem("delivery.batch_size", "Heap accepts at most 1000 items per bulk request")
    retry_base = kw.get("retry_base", default.retry_base)
    if retry_base > kw.get("retry_cap", default.retry_cap):
        where = "delivery.retry_cap" if "retry_cap" in table else "delivery.retry_base"
        r.problem(where, "retry_cap is below retry_base (backoff: retry_base * 2**n, at most cap)")
    return dataclasses.replace(default, **kw)


def _source(r: _Reader, value: Any, path: str) -> Source | None:
    table = r.table(value, path)
    if table is None:
        return None
    r.keys(table, path, _SOURCE)
    name = r.string(table, "name", path)
    if name is None:
        if "name" not in table:
            r.problem(path, "name is required (letters, digits, '_', '.', '-')")
        name = f"source{path}"
    elif not _NAME.fullmatch(name):
        r.problem(_join(path, "name"), f"{name!r}: use letters, digits, '_', '.', '-'")
    write_key = r.from_env(table, "write_key", path) or ""

    limits = Limits()
    limits_table = r.table(table.get("limits", {}), _join(path, "limits"))
    if limits_table is not None:
        lpath = _join(path, "limits")
        r.keys(limits_table, lpath, ("max_request_bytes", "max_message_bytes"))
        limits = Limits(
            max_request_bytes=r.typed(
                limits_table, "max_request_bytes", lpath, _positive_int, limits.max_request_bytes
            ),
            max_message_bytes=r.typed(
                limits_table, "max_message_bytes", lpath, _positive_int, limits.max_message_bytes
            ),
        )
        if limits.max_message_bytes > limits.max_request_bytes:
            r.problem(lpath, "max_message_bytes is larger than max_request_bytes")

    cors = r.string_list(table, "cors_origins", path) if "cors_origins" in table else ("*",)
    for i, origin in enumerate(cors):
        if (problem := origin_problem(origin)) is not None:
            r.problem(f"{_join(path, 'cors_origins')}[{i}]", problem)
    source_defaults = Source(name="", write_key="", destinations=())
    destinations_value = table.get("destinations")
    if destinations_value is None:
        r.problem(path, f"source {name!r} has no [[sources.destinations]]: add at least one")
        destinations_value = []
    if not isinstance(destinations_value, list):
        r.problem(
            _join(path, "destinations"),
            f"expected [[sources.destinations]] tables, got {_kind(destinations_value)}",
        )
        destinations_value = []
    destinations = [
        d
        for i, v in enumerate(destinations_value)
        if (d := _destination(r, v, f"{path}.destinations[{i}]", name)) is not None
    ]
    return Source(
        name=name,
        write_key=write_key,
        destinations=tuple(destinations),
        limits=limits,
        cors_origins=cors,
        cors_credentials=r.typed(table, "cors_credentials", path, _boolean, False),
        dedupe_window=r.typed(
            table, "dedupe_window", path, _duration, source_defaults.dedupe_window
        ),
        partial_batches=r.typed(table, "partial_batches", path, _boolean, False),
        history_window=r.typed(table, "history_window", path, _positive_duration, 0.0),
    )


def _destination(r: _Reader, value: Any, path: str, source: str) -> Destination | None:
    table = r.table(value, path)
    if table is None:
        return None
    r.keys(table, path, _DESTINATION)
    app_id = r.from_env(table, "app_id", path)
    # profiles that reproduce a peer's settings check the region as written (region_setting)
    region_setting = r.string(table, "region", path)
    region = (region_setting or "us").lower()
    if region not in ("us", "eu"):
        r.problem(_join(path, "region"), f"got {region_setting!r}; accepted: us, eu (or US, EU)")
        region = "us"
    base_url = r.typed(table, "base_url", path, _url, cast(str | None, None))
    profile = r.string(table, "profile", path) or "heap"
    options: dict[str, str] = {}
    options_table = r.table(table.get("options", {}), _join(path, "options"))
    for key, v in (options_table or {}).items():
        if isinstance(v, bool):
            options[key] = "true" if v else "false"
        elif (text := r.string(options_table or {}, key, _join(path, "options"))) is not None:
            options[key] = text

    dest_id = r.string(table, "id", path)
    if dest_id is None:
        dest_id = f"{source}.{app_id}" if app_id else f"{source}{path}"
    elif not _NAME.fullmatch(dest_id):
        r.problem(_join(path, "id"), f"{dest_id!r}: use letters, digits, '_', '.', '-'")

    settings = DestinationSettings(
        app_id=app_id or "",
        profile=profile,
        region=cast(Any, region),
        base_url=base_url,
        options=options,
        region_setting=region_setting,
    )
    _check_settings(r, path, settings)

    device_mode = r.typed(table, "device_mode", path, _boolean, False)
    if device_mode and profile not in DEVICE_PROFILES:
        r.problem(
            _join(path, "device_mode"),
            f"device mode cleans properties as profile heap or segment do; profile {profile!r} "
            f"has no browser integration (use one of: {', '.join(DEVICE_PROFILES)})",
        )
    return Destination(
        id=dest_id,
        settings=settings,
        event_filter=_event_filter(r, table.get("event_filter"), _join(path, "event_filter")),
        consent=_consent(r, table, path),
        retry_window=r.typed(table, "retry_window", path, _duration, DEFAULT_RETRY_WINDOW),
        enabled=r.typed(table, "enabled", path, _boolean, True),
        device_mode=device_mode,
        device_mode_server_side=r.typed(table, "device_mode_server_side", path, _boolean, False),
        heap_script_url=r.typed(
            table, "heap_script_url", path, _script_url, DEFAULT_HEAP_SCRIPT_URL
        ),
        integration_names=r.string_list(table, "integration_names", path),
    )


def _check_settings(r: _Reader, path: str, settings: DestinationSettings) -> None:
    """Every problem the profile finds in a destination's settings, each at its own key: the
    profile, each option, then the profile's own checks (as if there were an app_id when
    there is none: a missing app_id is reported by itself)."""
    where_profile = _join(path, "profile")
    try:
        profile = get_profile(settings.profile)
    except SettingsError as e:
        r.problem(where_profile, str(e))
        return
    except ImportError as e:  # a profile named in the registry but not installed
        r.problem(where_profile, f"profile {settings.profile!r} is not available: {e}")
        return
    valid: dict[str, str] = {}
    for key, value in settings.options.items():
        try:
            check_options(profile, {key: value})
        except SettingsError as e:
            r.problem(f"{_join(path, 'options')}.{key}", str(e))
        else:
            valid[key] = value
    checked = dataclasses.replace(settings, app_id=settings.app_id or "app_id", options=valid)
    try:
        profile.check_settings(checked)
    except SettingsError as e:
        r.problem(_join(path, e.key) if e.key else path, str(e))


def _event_filter(r: _Reader, value: Any, path: str) -> EventFilter:
    if value is None:
        return EventFilter()
    table = r.table(value, path)
    if table is None:
        return EventFilter()
    r.keys(table, path, _EVENT_FILTER)
    mode = r.typed(table, "mode", path, _one_of(*_FILTER_MODES), "")
    events = r.string_list(table, "events", path)
    if not mode:
        if "mode" not in table:
            r.problem(path, 'mode is required: "allow", "deny" or "disable"')
        return EventFilter()
    normalized = _FILTER_MODES[mode]
    if normalized != "disable" and not events and "events" not in table:
        r.problem(path, f"mode {mode!r} needs an events list")
    for i, event in enumerate(events):
        if not event.strip():
            r.problem(f"{path}.events[{i}]", "an event name cannot be empty")
    return EventFilter(mode=cast(Any, normalized), events=events)


def _consent(r: _Reader, table: Mapping[str, Any], path: str) -> tuple[Consent, ...]:
    out: list[Consent] = []
    value = table.get("consent", [])
    if not isinstance(value, list):
        r.problem(
            _join(path, "consent"),
            f"expected [[...consent]] tables or a list of tables, got {_kind(value)}",
        )
        value = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        cpath = f"{path}.consent[{i}]"
        entry = r.table(item, cpath)
        if entry is None:
            continue
        r.keys(entry, cpath, _CONSENT)
        provider = r.typed(entry, "provider", cpath, _one_of(*_PROVIDERS), "oneTrust")
        categories = r.string_list(entry, "categories", cpath)
        if not categories:
            r.problem(cpath, "categories must list at least one consent category id")
        resolution = r.typed(entry, "resolution", cpath, _one_of("and", "or"), "")
        if provider == "custom" and not resolution:
            r.problem(cpath, 'provider "custom" needs resolution = "and" or "or"')
        if provider != "custom" and resolution:
            r.problem(
                _join(cpath, "resolution"),
                f"only the custom provider takes a resolution; for {provider} the event's "
                "context.consentManagement.resolutionStrategy decides",
            )
        if provider in seen:
            r.problem(_join(cpath, "provider"), f"{provider} is configured twice")
        seen.add(provider)
        out.append(
            Consent(
                provider=cast(Any, provider),
                categories=categories,
                resolution=cast(Any, resolution or None),
            )
        )
    for key, provider in (
        ("onetrust_cookie_categories", "oneTrust"),
        ("ketch_consent_purposes", "ketch"),
    ):
        categories = r.string_list(table, key, path)
        if categories:
            out.append(Consent(provider=cast(Any, provider), categories=categories, legacy=True))
    return tuple(out)


def _unique(r: _Reader, sources: list[Source]) -> None:
    names: dict[str, int] = {}
    keys: dict[str, int] = {}
    ids: dict[str, str] = {}
    for i, source in enumerate(sources):
        if source.name in names:
            r.problem(
                f"sources[{i}].name", f"{source.name!r} is also sources[{names[source.name]}]"
            )
        names.setdefault(source.name, i)
        if source.write_key and source.write_key in keys:
            r.problem(
                f"sources[{i}]",
                f"same write key as sources[{keys[source.write_key]}]: "
                "each source needs its own write key",
            )
        keys.setdefault(source.write_key, i)
        device = [j for j, d in enumerate(source.destinations) if d.device_mode and d.enabled]
        for j in device[1:]:
            r.problem(
                f"sources[{i}].destinations[{j}].device_mode",
                f"sources[{i}].destinations[{device[0]}] already has device mode: a web page "
                "loads one Heap environment, so one destination of a source can have it",
            )
        for j, d in enumerate(source.destinations):
            where = f"sources[{i}].destinations[{j}]"
            if d.id in ids:
                r.problem(
                    where,
                    f'destination id {d.id!r} is also {ids[d.id]}; set a distinct id = "…"',
                )
            ids.setdefault(d.id, where)


# --- audiences -------------------------------------------------------------------------------

_AUDIENCE = ("name", "key", "source", "every", "rule")
_RULE = ("event", "at_least", "within", "traits")
_TRAIT_RULE = ("event", "within", "count", "sum")


def _audiences(
    r: _Reader,
    value: Any,
    sources_value: Any,
    sources: list[Source],
    table: str = "audiences",
    before: tuple[Audience, ...] = (),
) -> tuple[Audience, ...]:
    """The ``[[audiences]]`` (or, ``table`` "computed_traits", the computed traits: names
    and keys distinct from ``before``'s too)."""
    if not isinstance(value, list):
        r.problem(table, f"expected [[{table}]] tables, got {_kind(value)}")
        return ()
    known = {s.name for s in sources}
    found: list[Audience] = []
    names: dict[str, str] = {a.name: f"[[audiences]] {a.name!r}" for a in before}
    keys: dict[str, str] = {a.key: f"[[audiences]] {a.name!r}" for a in before}
    for i, item in enumerate(value):
        path = f"{table}[{i}]"
        audience = _audience(r, item, path, known, table)
        if audience is None:
            continue
        if audience.name in names:
            r.problem(_join(path, "name"), f"{audience.name!r} is also {names[audience.name]}")
        elif audience.key in keys:
            r.problem(
                path,
                f"key {audience.key!r} is also the key of {keys[audience.key]}; "
                'set a distinct key = "…"',
            )
        else:
            found.append(audience)
        names.setdefault(audience.name, path)
        keys.setdefault(audience.key, path)
    return tuple(found)


def _audience(
    r: _Reader, value: Any, path: str, sources: set[str], kind: str = "audiences"
) -> Audience | None:
    table = r.table(value, path)
    if table is None:
        return None
    r.keys(table, path, _AUDIENCE)
    problems = len(r.problems)
    name = r.string(table, "name", path)
    if name is None or not name.strip():
        r.problem(path if name is None else _join(path, "name"), "name is required (non-empty)")
        name = ""
    key = r.string(table, "key", path)
    try:
        if key is not None:
            key = check_key(key)
        elif name:
            key = audience_key(name)
    except AudienceKeyError as exc:
        where = "key" if "key" in table else "name"
        hint = "" if where == "key" else ' (set key = "…")'
        r.problem(_join(path, where), f"{exc}{hint}")
    key = key or ""
    source = r.string(table, "source", path)
    if source is None:
        if "source" not in table:
            r.problem(path, "source is required: the name of the source whose events it uses")
        source = ""
    elif source not in sources:
        close = difflib.get_close_matches(source, sorted(sources), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        r.problem(_join(path, "source"), f"no source named {source!r}{hint}")
    every = r.typed(table, "every", path, _positive_duration, DEFAULT_AUDIENCE_EVERY)
    if kind == "audiences":
        rule = _rule(r, table.get("rule"), _join(path, "rule"), "rule" in table)
    else:
        rule = _trait_rule(r, table.get("rule"), _join(path, "rule"), "rule" in table)
    if rule is None or len(r.problems) > problems:
        return None
    return Audience(name=name, key=key, source=source, every=every, rule=rule)


def _event_window(r: _Reader, table: Mapping[str, Any], path: str) -> tuple[str | None, float]:
    """A rule's ``event`` and ``within`` (both required; problems reported at their keys)."""
    event = r.string(table, "event", path)
    if event is None or not event.strip():
        r.problem(
            path if event is None else _join(path, "event"),
            "event is required: the name of the track event counted",
        )
    if "within" not in table:
        r.problem(path, 'within is required: the window events are counted in (e.g. "30d")')
    within = r.typed(table, "within", path, _positive_duration, 0.0)
    return event, within


def _rule(r: _Reader, value: Any, path: str, given: bool) -> AudienceRule | None:
    if not given:
        r.problem(path.rpartition(".")[0], "[audiences.rule] is required (event, within)")
        return None
    table = r.table(value, path)
    if table is None:
        return None
    r.keys(table, path, _RULE)
    event, within = _event_window(r, table, path)
    at_least = r.typed(table, "at_least", path, _positive_int, 1)
    traits: list[tuple[str, Any]] = []
    if "traits" in table:
        wanted = r.table(table["traits"], _join(path, "traits"))
        for k, v in (wanted or {}).items():
            if isinstance(v, str | int | float | bool):
                traits.append((k, v))
            else:
                r.problem(
                    _join(_join(path, "traits"), k),
                    f"expected a string, number or boolean, got {_kind(v)}",
                )
    if event is None or not within:
        return None
    return AudienceRule(event=event, within=within, at_least=at_least, traits=tuple(traits))


def _trait_rule(r: _Reader, value: Any, path: str, given: bool) -> AudienceRule | None:
    if not given:
        r.problem(
            path.rpartition(".")[0], "[computed_traits.rule] is required (event, within, count)"
        )
        return None
    table = r.table(value, path)
    if table is None:
        return None
    r.keys(table, path, _TRAIT_RULE)
    event, within = _event_window(r, table, path)
    count = table.get("count")
    total = r.string(table, "sum", path)
    if "sum" in table and (total is None or not total.strip()):
        r.problem(_join(path, "sum"), "sum is the name of a numeric property of the event")
        return None
    if (count is True) == (total is not None) or (count is not None and count is not True):
        where = path if count is None or total is not None else _join(path, "count")
        r.problem(where, 'exactly one of count = true or sum = "property" is required')
        return None
    if event is None or not within:
        return None
    return AudienceRule(event=event, within=within, count=count is True, sum=total)


def _with_history(
    r: _Reader, sources: list[Source], sources_value: Any, audiences: tuple[Audience, ...]
) -> list[Source]:
    """The sources, each with how long its events are kept: ``history_window`` when set (at
    least its audiences' longest window), else that longest window (0: none recorded)."""
    out: list[Source] = []
    tables = sources_value if isinstance(sources_value, list) else []
    for source in sources:
        # Its index in the file (a source with problems is not in ``sources``).
        i = next(
            (
                n
                for n, t in enumerate(tables)
                if isinstance(t, dict) and t.get("name") == source.name
            ),
            0,
        )
        longest = max((a.rule.within for a in audiences if a.source == source.name), default=0.0)
        if source.history_window and source.history_window < longest:
            r.problem(
                f"sources[{i}].history_window",
                f"shorter than the longest window of this source's audiences ({longest:g} s): "
                "their rules would count events no longer kept",
            )
        window = source.history_window or longest
        sums = sorted(
            {
                (a.rule.event, a.rule.sum)
                for a in audiences
                if a.source == source.name and a.rule.sum is not None
            }
        )
        out.append(dataclasses.replace(source, history_window=window, history_sums=tuple(sums)))
    return out


# --- line numbers ----------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=""")


def _unquote(part: str) -> str:
    part = part.strip()
    return part[1:-1] if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'" else part


def _line_index(text: str) -> dict[str, int]:
    """TOML path -> line number (1-based), for tables, array items and keys. Best effort: it
    knows headers and ``key =`` lines, which is how configuration files are written."""
    index: dict[str, int] = {}
    counters: dict[str, int] = {}
    current = ""
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        header = _HEADER.match(line)
        if header and not _KEY.match(line):
            parts = [_unquote(p) for p in header.group(2).split(".")]
            path = ""
            for k, part in enumerate(parts):
                path = _join(path, part)
                last = k == len(parts) - 1
                if last and header.group(1) == "[[":
                    counters[path] = counters.get(path, 0) + 1
                    path = f"{path}[{counters[path] - 1}]"
                elif path in counters:
                    path = f"{path}[{counters[path] - 1}]"
            current = path
            index.setdefault(path, number)
            continue
        key = _KEY.match(line)
        if key:
            index.setdefault(_join(current, _unquote(key.group(1))), number)
            for quote in ('"""', "'''"):
                if line.count(quote) % 2 == 1:
                    in_multiline = quote
    return index


def _line_of(index: Mapping[str, int], path: str) -> int | None:
    while path:
        if path in index:
            return index[path]
        shorter = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)
        if shorter == path:
            break
        path = shorter
    return None
