"""Retention drops old chunks and keeps newer ones."""

from __future__ import annotations

import psycopg

from core.retention import enforce_retention


def test_retention_drops_only_chunks_past_the_horizon(fresh_database_url: str) -> None:
    with psycopg.connect(fresh_database_url) as conn:
        for age_days in (40, 20, 1):
            conn.execute(
                "INSERT INTO gps_fixes (device_key, ts, received_at, lat, lon)"
                " VALUES (1, now() - %s::interval, now(), 31.3, 120.7)",
                (f"{age_days} days",),
            )
            conn.execute(
                "INSERT INTO heartbeats (device_key, ts, received_at)"
                " VALUES (1, now() - %s::interval, now())",
                (f"{age_days} days",),
            )
        conn.commit()
    dropped = enforce_retention(database_url=fresh_database_url, horizon_days=30)
    assert len(dropped) == 2  # the 40-day-old chunk of each table
    with psycopg.connect(fresh_database_url) as conn:
        for table in ("gps_fixes", "heartbeats"):
            ages = sorted(
                round(a)
                for (a,) in conn.execute(
                    f"SELECT extract(epoch FROM now() - ts) / 86400 FROM {table}"
                )
            )
            assert ages == [1, 20], table
    assert enforce_retention(database_url=fresh_database_url, horizon_days=30) == []
