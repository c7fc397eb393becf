"""Facts about the database for ``anxiao status``."""

from __future__ import annotations

from typing import Any

import psycopg

from core.migrate import available_migrations, schema_version
from core.retention import timescaledb_edition

__all__ = ["database_status"]


def database_status(*, database_url: str) -> dict[str, Any]:
    """Schema version, TimescaleDB edition and version, and whether the database answers."""
    latest = max((m.version for m in available_migrations()), default=0)
    facts: dict[str, Any] = {
        "schema_version": None,
        "schema_latest": latest,
        "timescaledb_edition": None,
        "timescaledb_version": None,
        "database_ok": False,
    }
    try:
        with psycopg.connect(database_url, connect_timeout=3) as conn:
            facts["schema_version"] = schema_version(conn)
            facts["timescaledb_edition"] = timescaledb_edition(conn)
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
            ).fetchone()
            facts["timescaledb_version"] = row[0] if row else None
            facts["database_ok"] = True
    except psycopg.Error as exc:
        facts["database_error"] = (
            str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__
        )
    return facts
