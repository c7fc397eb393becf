"""Migrations against a real PostgreSQL + TimescaleDB."""

from __future__ import annotations

import psycopg
import pytest

from core.errors import MigrationError
from core.migrate import available_migrations, migrate


def test_migrate_applies_everything_once(empty_database_url: str) -> None:
    latest = max(m.version for m in available_migrations())
    applied, version = migrate(database_url=empty_database_url)
    assert applied and version == latest
    again, version_again = migrate(database_url=empty_database_url)
    assert again == [] and version_again == latest
    with psycopg.connect(empty_database_url) as conn:
        recorded = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]
        assert recorded == len(available_migrations())


def test_telemetry_tables_are_hypertables_with_daily_chunks(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = dict(
            conn.execute(
                "SELECT hypertable_name, time_interval FROM timescaledb_information.dimensions"
                " WHERE hypertable_schema = 'public'"
            ).fetchall()
        )
        for table in ("gps_fixes", "sensor_events", "heartbeats", "dead_letters"):
            assert rows[table].days == 1, table
        # One unique index on the natural key, nothing else, on the hot tables.
        for table, columns in (
            ("gps_fixes", "device_key, ts"),
            ("heartbeats", "device_key, ts"),
            ("sensor_events", "device_key, channel, ts"),
        ):
            indexes = conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = %s", (table,)
            ).fetchall()
            assert len(indexes) == 1, indexes
            assert "UNIQUE" in indexes[0][0] and f"({columns})" in indexes[0][0]


def test_natural_key_absorbs_duplicates(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        for _ in range(2):
            conn.execute(
                "INSERT INTO gps_fixes (device_key, ts, received_at, lat, lon)"
                " VALUES (-1, '2026-11-23T07:00:00+08', now(), 31.3, 120.7)"
                " ON CONFLICT DO NOTHING"
            )
        assert (
            conn.execute("SELECT count(*) FROM gps_fixes WHERE device_key = -1").fetchone()[0] == 1
        )
        conn.rollback()


def test_changed_migration_is_refused(fresh_database_url: str) -> None:
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'tampered' WHERE version = 1")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(database_url=fresh_database_url)


def test_database_ahead_of_code_is_refused(fresh_database_url: str) -> None:
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'x', 'y')"
        )
    with pytest.raises(MigrationError, match="upgrade anxiao"):
        migrate(database_url=fresh_database_url)
