"""PostgreSQL for the PDF-notes tests: probed once; skipped with the reason, or failed under CI=true."""

from __future__ import annotations

import os

import pytest

from tests import harness

POSTGRES_DSN = os.environ.get("TURBO_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
_problem: list[str | None] = []


def _probe_postgres() -> str | None:
    try:
        import psycopg

        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


@pytest.fixture
def postgres_dsn() -> str:
    """The test PostgreSQL's DSN (``TURBO_TEST_POSTGRES_DSN``)."""
    if not _problem:
        _problem.append(_probe_postgres())
    if _problem[0] is not None:
        message = f"PostgreSQL is not reachable at {POSTGRES_DSN} ({_problem[0]})"
        if harness.IN_CI:
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return POSTGRES_DSN
