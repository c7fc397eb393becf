"""The alerts engine in-process on the real database: storing, restart, panic resolution."""

from __future__ import annotations

import gc
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from alerts.runner import EngineRunner, batch_from_rows
from alerts.store import resolve
from core.fleet import import_fleet
from core.registry import Registry, load_registry
from core.settings import Settings
from tests.core.sample_fleet import sample_fleet

#: Monday 2026-11-23 07:00 local: inside bus B1's morning service window.
T0 = datetime(2026, 11, 22, 23, 0, tzinfo=UTC)
#: On route R1, outside every speed zone (limit 60 km/h).
ON_ROUTE = (120.705, 31.3025)


@pytest.fixture
def tag(fresh_database_url: str) -> str:
    t = f"en{time.monotonic_ns() % 10**8}"
    import_fleet(sample_fleet(t), database_url=fresh_database_url)
    return t


async def _registry(url: str) -> Registry:
    conn = await asyncpg.connect(url)
    try:
        return await load_registry(conn, default_timezone="Asia/Shanghai")
    finally:
        await conn.close()


def _fixes(key: int, seconds: range, speed_kmh: float) -> list[dict[str, Any]]:
    return [
        {
            "device_key": key,
            "ts": T0 + timedelta(seconds=s),
            "received_at": T0 + timedelta(seconds=s, milliseconds=300),
            "lat": ON_ROUTE[1],
            "lon": ON_ROUTE[0],
            "speed_kmh": speed_kmh,
            "alarm": 0,
            "backfill": False,
        }
        for s in seconds
    ]


async def _commit(url: str, rows: list[dict[str, Any]]) -> None:
    """Store fixes as ingest does (the rebuild reads them back)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(
            "INSERT INTO gps_fixes (device_key, ts, received_at, lat, lon, speed_kmh, alarm,"
            " backfill) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [tuple(r.values()) for r in rows],
        )
        last = rows[-1]
        await conn.execute(
            "INSERT INTO device_status (device_key, last_seen_at, last_event_at)"
            " VALUES ($1, $2, $3) ON CONFLICT (device_key)"
            " DO UPDATE SET last_seen_at = $2, last_event_at = $3",
            last["device_key"],
            last["received_at"],
            last["ts"],
        )
    finally:
        await conn.close()


async def _alerts(url: str, kind: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(
            "SELECT a.*, array(SELECT action FROM alert_events e WHERE e.alert_id = a.id"
            " ORDER BY e.id) AS actions FROM alerts a WHERE kind = $1 ORDER BY started_at",
            kind,
        )
    finally:
        await conn.close()


async def _runner(settings: Settings, url: str) -> EngineRunner:
    runner = EngineRunner(
        settings.model_copy(update={"database_url": url}),
        clock="event",
        registry=await _registry(url),
    )
    gc.unfreeze()
    await runner.start()
    # The rebuilt engine's states are out of the collector's way (core.heap).
    assert gc.get_freeze_count() > 0
    return runner


async def test_a_restart_mid_episode_neither_duplicates_nor_loses_it(
    settings: Settings, fresh_database_url: str, tag: str
) -> None:
    url = fresh_database_url
    first = await _runner(settings, url)
    key = first.engine.registry.device_by_id(f"GPS-B1-{tag}").key  # type: ignore[union-attr]
    speeding = _fixes(key, range(0, 46), 80.0)
    await _commit(url, speeding)
    await first.on_batch(batch_from_rows(speeding, []), first.engine.registry)
    await first.close()  # the process dies here
    opened = await _alerts(url, "speeding")
    assert [(a["state"], a["started_at"]) for a in opened] == [("active", T0)]

    second = await _runner(settings, url)  # rebuilt from the database
    try:
        assert len(await _alerts(url, "speeding")) == 1
        slow = _fixes(key, range(46, 120), 40.0)
        await _commit(url, slow)
        await second.on_batch(batch_from_rows(slow, []), second.engine.registry)
    finally:
        await second.close()
    (alert,) = await _alerts(url, "speeding")
    assert alert["state"] == "cleared"
    assert (alert["started_at"], alert["ended_at"]) == (T0, T0 + timedelta(seconds=45))
    assert alert["actions"].count("open") == 1 and alert["actions"][-1] == "close"


def _press(key: int, second: int) -> dict[str, Any]:
    at = T0 + timedelta(seconds=second)
    return {"device_key": key, "channel": "button", "ts": at, "received_at": at,
            "state": "press", "obscuration": None}  # fmt: skip


async def test_a_panic_alert_latches_until_a_person_resolves_it(
    settings: Settings, fresh_database_url: str, tag: str
) -> None:
    url = fresh_database_url
    runner = await _runner(settings, url)
    try:
        registry = runner.engine.registry
        key = registry.device_by_id(f"BTN-S001-1-{tag}").key  # type: ignore[union-attr]
        await runner.on_batch(batch_from_rows([], [_press(key, 0)]), registry)
        await runner.on_batch(batch_from_rows([], [_press(key, 20)]), registry)  # still latched
        (alert,) = await _alerts(url, "panic_button")
        assert (alert["state"], alert["details"]) == ("active", '{"source": "button"}')
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                assert await resolve(conn, alert["id"], by="值班员", note="误触，已确认")
        finally:
            await conn.close()
        await runner.resolve_now()
        await runner.on_batch(batch_from_rows([], [_press(key, 60)]), registry)
    finally:
        await runner.close()
    first, second = await _alerts(url, "panic_button")
    assert first["state"] == "cleared" and first["resolved_by"] == "值班员"
    assert (second["state"], second["started_at"]) == ("active", T0 + timedelta(seconds=60))
