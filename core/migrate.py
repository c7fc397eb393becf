"""Versioned SQL migrations: ``core/migrations/NNNN_name.sql``, applied in order.

Uses psycopg 3 (synchronous): migrations run from the CLI and tests, never on
a hot path. Each file runs in its own transaction under an advisory lock, so
two migrators never race, and is recorded with its checksum in
``schema_migrations``; re-running applies nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from core.errors import MigrationError, StoreError

__all__ = ["Migration", "available_migrations", "migrate", "schema_version"]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: Arbitrary constant identifying anxiao's migration lock.
_LOCK_KEY = 0x616E7869616F


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    """Every migration shipped with this code, in version order."""
    found = []
    for entry in resources.files("core.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return found


def migrate(*, database_url: str) -> tuple[list[str], int]:
    """Apply every pending migration; return (applied names, schema version)."""
    migrations = available_migrations()
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            try:
                return _apply(conn, migrations)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    except psycopg.OperationalError as exc:
        raise StoreError(f"cannot reach the database: {exc}") from exc


def _apply(
    conn: psycopg.Connection[tuple[object, ...]], migrations: list[Migration]
) -> tuple[list[str], int]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    rows: list[tuple[Any, ...]] = conn.execute(
        "SELECT version, checksum FROM schema_migrations"
    ).fetchall()
    done = {int(v): str(c) for v, c in rows}
    known = {m.version for m in migrations}
    ahead = sorted(set(done) - known)
    if ahead:
        raise MigrationError(
            f"the database has migrations {ahead} that this code does not know: upgrade anxiao"
        )
    applied = []
    for migration in migrations:
        label = f"{migration.version:04d}_{migration.name}"
        if migration.version in done:
            if done[migration.version] != migration.checksum:
                raise MigrationError(f"migration {label} was changed after it was applied")
            continue
        try:
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
        except psycopg.Error as exc:
            raise MigrationError(f"migration {label} failed: {exc}") from exc
        applied.append(label)
    return applied, max(known, default=0)


def schema_version(conn: psycopg.Connection[tuple[object, ...]]) -> int | None:
    """The highest applied migration, or None on an empty database."""
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return None
    row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return None if row is None or row[0] is None else int(str(row[0]))
