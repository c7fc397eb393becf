"""Session fixtures for the real local stack (PostgreSQL + TimescaleDB, Mosquitto).

``make test`` brings the stack up first; these fixtures only check that it is
reachable (a bounded readiness probe) and give each test session its own
freshly migrated database, so tests never see each other's rows or the
developer's data. Tests use their own device ids and topic prefixes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from core.migrate import migrate
from core.settings import Settings
from tests.support import wait_for_broker, wait_for_database


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings as an entry point would read them (defaults: the local stack)."""
    return Settings()


@pytest.fixture(scope="session")
def admin_database_url(settings: Settings) -> str:
    """The stack's own database, used only to create and drop test databases."""
    wait_for_database(settings.database_url)
    return settings.database_url


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database(admin_url: str, *, prefix: str) -> str:
    """Create an empty database (timescaledb comes from template1) and return its URL."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_database(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    """Drop a test database, ending its connections first."""
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(admin_database_url: str) -> Iterator[str]:
    """A migrated database shared by the session; tests use their own ids in it."""
    url = create_database(admin_database_url, prefix="anxiao_test")
    migrate(database_url=url)
    yield url
    drop_database(admin_database_url, url)


@pytest.fixture
def empty_database_url(admin_database_url: str) -> Iterator[str]:
    """A database of this test's own with no schema at all."""
    url = create_database(admin_database_url, prefix="anxiao_empty")
    yield url
    drop_database(admin_database_url, url)


@pytest.fixture
def fresh_database_url(empty_database_url: str) -> str:
    """A freshly migrated database of this test's own."""
    migrate(database_url=empty_database_url)
    return empty_database_url


@pytest.fixture(scope="session")
def broker(settings: Settings) -> Settings:
    """Settings, once the broker answers the service account."""
    wait_for_broker(settings.mqtt)
    return settings
