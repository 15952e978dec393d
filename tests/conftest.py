"""Shared test configuration. Tier-specific fixtures live in each tier's conftest.py."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from heaprelay.testing.postgres import own_database

# --- PostgreSQL (issue 5) ------------------------------------------------------------------
PG_HOWTO = (
    "PostgreSQL tests need a server: set HEAPRELAY_TEST_PG_URL=postgresql://USER@HOST:PORT/DB, "
    "or run `source scripts/setup-test-env` (installs and starts a local cluster and exports "
    "it), or deselect them with `-m 'not postgres'`."
)


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The test database. Absent: skip locally, fail in CI (HEAPRELAY_REQUIRE_PG=1)."""
    url = os.environ.get("HEAPRELAY_TEST_PG_URL", "")
    if not url:
        if os.environ.get("HEAPRELAY_REQUIRE_PG") == "1":
            pytest.fail("HEAPRELAY_REQUIRE_PG=1 but HEAPRELAY_TEST_PG_URL is not set. " + PG_HOWTO)
        pytest.skip(PG_HOWTO)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a queue store of the test's own: an SQLite file in ``tmp_path``, then a
    PostgreSQL database of its own (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'heaprelay.db'}"
        return
    pg_url: str = request.getfixturevalue("pg_url")
    with own_database(pg_url, "heaprelay_store") as url:
        yield url
