"""Shared fixtures: the storage matrix (SQLite, Optuna's journal file, PostgreSQL) and the rule for missing services.

PostgreSQL tests run when ``NAS_TEST_POSTGRES_URL`` names a server (any database on it; each test gets a fresh
database of its own, dropped afterwards). Without it they are skipped with a reason that says so; with
``NAS_REQUIRE_ALL_TESTS`` set (as ``.ci/run`` does) a missing service is a failure, so CI never skips one silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

POSTGRES_ENV = "NAS_TEST_POSTGRES_URL"
STORAGE_KINDS = ("sqlite", "journal", "postgresql")


def service_unavailable(reason: str) -> None:
    """Skips the calling test, or fails it when the environment requires every test to run."""
    if os.environ.get("NAS_REQUIRE_ALL_TESTS"):
        pytest.fail(f"{reason} (NAS_REQUIRE_ALL_TESTS is set, so this test may not be skipped)")
    pytest.skip(reason)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    server = os.environ.get(POSTGRES_ENV)
    if not server:
        service_unavailable(f"PostgreSQL tests not run: set {POSTGRES_ENV}=postgresql://USER@HOST:PORT/DB to run them")
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"nas_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield make_url(server).set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=STORAGE_KINDS)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One storage URL per kind of the matrix, empty at the start of the test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    if request.param == "journal":
        return f"journal:{tmp_path / 'study.journal'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial (and every expected failure's traceback); keep only errors while testing."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    yield
    optuna.logging.set_verbosity(verbosity)
