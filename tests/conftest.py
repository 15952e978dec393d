"""Shared test configuration. Tier-specific fixtures live in each tier's conftest.py."""

import os

import pytest

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
