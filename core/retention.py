"""Retention: drop telemetry chunks older than a horizon.

On the TSL edition of TimescaleDB (the official image) a retention policy
does it; the Apache edition has no job scheduler, so the service calls
:func:`enforce_retention` itself every ``retention_interval_s`` seconds.
Synchronous psycopg: a batch job, not a hot path.
"""

from __future__ import annotations

from typing import Any

import psycopg

from core.errors import StoreError

__all__ = ["enforce_retention", "hypertables", "timescaledb_edition"]


def timescaledb_edition(conn: psycopg.Connection[Any]) -> str:
    """``apache`` or ``timescale`` (the TSL edition)."""
    row = conn.execute("SHOW timescaledb.license").fetchone()
    return str(row[0]) if row else "unknown"


def hypertables(conn: psycopg.Connection[Any]) -> list[str]:
    """The hypertables of the public schema."""
    return [
        str(name)
        for (name,) in conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables"
            " WHERE hypertable_schema = 'public' ORDER BY hypertable_name"
        )
    ]


def enforce_retention(*, database_url: str, horizon_days: int) -> list[str]:
    """Drop every chunk entirely older than ``horizon_days``; return the dropped chunks.

    On the TSL edition, also (re)installs a retention policy with the same
    horizon so the database keeps doing it on its own.
    """
    if horizon_days < 1:
        raise StoreError(f"retention horizon must be at least 1 day, got {horizon_days}")
    dropped: list[str] = []
    horizon = f"{horizon_days} days"
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            tsl = timescaledb_edition(conn) == "timescale"
            for table in hypertables(conn):
                dropped += [
                    str(chunk)
                    for (chunk,) in conn.execute(
                        "SELECT drop_chunks(%s::regclass, older_than => now() - %s::interval)",
                        (table, horizon),
                    )
                ]
                if tsl:
                    conn.execute("SELECT remove_retention_policy(%s, if_exists => true)", (table,))
                    conn.execute(
                        "SELECT add_retention_policy(%s, drop_after => %s::interval)",
                        (table, horizon),
                    )
    except psycopg.OperationalError as exc:
        raise StoreError(f"cannot reach the database: {exc}") from exc
    return dropped
