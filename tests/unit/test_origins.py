"""CORS origins are matched in one place, ``Source.allows_origin`` (issue 12 item 4): scheme,
host and port exactly (default ports implied, case ignored), ``https://*.example.com`` for
subdomains, ``"*"`` for any origin but ``null``, ``"null"`` only when listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from heaprelay.config import Source, origin_problem, parse_origin
from heaprelay.config_file import ConfigError, load_config


def source(*origins: str) -> Source:
    return Source(name="s", write_key="k", destinations=(), cors_origins=origins)


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [
        (("https://shop.example",), "https://shop.example", True),
        (("https://shop.example",), "https://SHOP.example", True),
        (("https://shop.example",), "https://shop.example:443", True),
        (("https://shop.example:443",), "https://shop.example", True),
        (("https://shop.example",), "http://shop.example", False),
        (("https://shop.example",), "https://shop.example:8443", False),
        (("https://shop.example",), "https://shop.example.evil.com", False),
        (("https://shop.example",), "https://evilshop.example", False),
        (("https://shop.example",), "https://a.shop.example", False),
        (("https://shop.example",), "null", False),
        (("https://shop.example",), "https://shop.example/path", False),
        (("https://*.shop.example",), "https://a.shop.example", True),
        (("https://*.shop.example",), "https://a.b.shop.example", True),
        (("https://*.shop.example",), "https://shop.example", False),
        (("https://*.shop.example",), "https://ashop.example", False),
        (("https://*.shop.example",), "http://a.shop.example", False),
        (("https://*.shop.example",), "https://*.shop.example", False),
        (("http://127.0.0.1:8000",), "http://127.0.0.1:8000", True),
        (("http://127.0.0.1:8000",), "http://127.0.0.1:8001", False),
        (("*",), "https://anything.example", True),
        (("*",), "null", False),
        (("*",), "not an origin", False),
        (("null",), "null", True),
        (("*", "null"), "null", True),
        ((), "https://shop.example", False),
    ],
)
def test_allows_origin(origins: tuple[str, ...], origin: str, allowed: bool) -> None:
    assert source(*origins).allows_origin(origin) is allowed


def test_parse_origin() -> None:
    assert parse_origin("HTTPS://Shop.Example:443") == ("https", "shop.example", None)
    assert parse_origin("http://[::1]:8080") == ("http", "::1", 8080)
    for bad in ("shop.example", "https://", "https://a/b", "https://u@a", "https://a:99999"):
        assert parse_origin(bad) is None, bad


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("https://shop.example", None),
        ("https://*.shop.example", None),
        ("*", None),
        ("null", None),
        ("shop.example", "not an origin"),
        ("https://shop.example/", "not an origin"),
        ("https://a.*.example", "wildcard"),
        ("https://*", "wildcard"),
    ],
)
def test_config_check_names_a_bad_origin(entry: str, problem: str | None) -> None:
    found = origin_problem(entry)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def test_config_file_refuses_a_bad_origin_and_reads_cors_credentials(tmp_path: Path) -> None:
    text = """
[[sources]]
name = "web"
write_key = "k1"
cors_origins = ["https://shop.example", "{bad}"]
cors_credentials = true

  [[sources.destinations]]
  app_id = "123"
"""
    path = tmp_path / "relay.toml"
    path.write_text(text.format(bad="https://shop.example/app"))
    with pytest.raises(ConfigError, match=r"sources\[0\]\.cors_origins\[1\]"):
        load_config(path, {})
    path.write_text(text.format(bad="https://*.shop.example"))
    (web,) = load_config(path, {}).sources
    assert web.cors_credentials is True
    assert web.allows_origin("https://x.shop.example")
