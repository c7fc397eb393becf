"""The alert store against the real database: idempotent episodes, events and NOTIFY."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from alerts.store import NOTIFY_CHANNEL, EpisodeChange, acknowledge, apply_changes, resolve
from core.fleet import import_fleet
from tests.core.sample_fleet import sample_fleet

T0 = datetime(2026, 11, 23, 7, 31, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def tag(database_url: str) -> str:
    t = f"st{time.monotonic_ns() % 10**8}"
    import_fleet(sample_fleet(t), database_url=database_url)
    return t


async def _rows(conn: asyncpg.Connection, device: str) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM alerts WHERE device_id = $1 ORDER BY started_at", device)


async def test_episode_is_stored_once_and_resolves_ids(database_url: str, tag: str) -> None:
    device = f"GPS-B1-{tag}"
    conn = await asyncpg.connect(database_url)
    try:
        opening = EpisodeChange("open", "speeding", device, T0, details={"max_speed_kmh": 70.0})
        async with conn.transaction():
            await apply_changes(conn, [opening])
        async with conn.transaction():  # a replay of the same episode changes nothing
            assert await apply_changes(conn, [opening]) == []
        async with conn.transaction():  # a later reading refines it
            await apply_changes(
                conn,
                [
                    EpisodeChange(
                        "update",
                        "speeding",
                        device,
                        T0 - timedelta(seconds=2),
                        details={"max_speed_kmh": 74.2},
                    )
                ],
            )
        rows = await _rows(conn, device)
        assert len(rows) == 1
        row = rows[0]
        assert (row["state"], row["severity"], row["started_at"]) == (
            "active",
            "major",
            T0 - timedelta(seconds=2),
        )
        assert (row["bus_id"], row["school_id"], row["operator_id"], row["district_id"]) == (
            f"B1-{tag}",
            f"S001-{tag}",
            f"OP1-{tag}",
            f"D01-{tag}",
        )
        async with conn.transaction():
            await apply_changes(
                conn,
                [
                    EpisodeChange(
                        "close",
                        "speeding",
                        device,
                        T0 - timedelta(seconds=2),
                        ended_at=T0 + timedelta(seconds=40),
                        details={"duration_s": 42},
                    )
                ],
            )
        row = (await _rows(conn, device))[0]
        assert row["state"] == "cleared" and row["ended_at"] == T0 + timedelta(seconds=40)
        assert json_details(row) == {"max_speed_kmh": 74.2, "duration_s": 42}
        actions = [
            r["action"]
            for r in await conn.fetch(
                "SELECT action FROM alert_events WHERE alert_id = $1 ORDER BY id", row["id"]
            )
        ]
        assert actions == ["open", "update", "close"]
        replayed = EpisodeChange(
            "open",
            "speeding",
            device,
            T0 - timedelta(seconds=2),
            details={"max_speed_kmh": 74.2, "duration_s": 42},
        )
        async with conn.transaction():  # the refined episode replayed after a restart
            assert await apply_changes(conn, [replayed]) == []
        assert len(await _rows(conn, device)) == 1
    finally:
        await conn.close()


def json_details(row: Any) -> Any:
    return json.loads(row["details"])


async def test_panic_is_latched_until_resolved(database_url: str, tag: str) -> None:
    device = f"BTN-S001-1-{tag}"
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await apply_changes(
                conn,
                [EpisodeChange("open", "panic_button", device, T0, details={"source": "button"})],
            )
            await apply_changes(conn, [EpisodeChange("close", "panic_button", device, T0)])
        row = (await _rows(conn, device))[0]
        assert (row["state"], row["severity"], row["school_id"]) == (
            "active",
            "critical",
            f"S001-{tag}",
        )
        async with conn.transaction():
            assert await acknowledge(conn, row["id"], by="监控室", note="已电话联系")
        row = (await _rows(conn, device))[0]
        assert row["acknowledged"] and row["state"] == "active"
        async with conn.transaction():
            assert await resolve(conn, row["id"], by="值班员", note="误触")
        row = (await _rows(conn, device))[0]
        assert row["state"] == "cleared" and row["resolved_by"] == "值班员"
    finally:
        await conn.close()


async def test_changes_are_notified_after_commit(database_url: str, tag: str) -> None:
    device = f"SMK-S001-1-{tag}"
    listener = await asyncpg.connect(database_url)
    writer = await asyncpg.connect(database_url)
    received: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(NOTIFY_CHANNEL, lambda *args: received.put_nowait(args[3]))
    try:
        async with writer.transaction():
            ids = await apply_changes(writer, [EpisodeChange("open", "smoke_alarm", device, T0)])
            assert received.empty()  # nothing leaves before the commit
        got = await asyncio.wait_for(received.get(), timeout=5)
        assert got == str(ids[0])
        offline = EpisodeChange("open", "device_offline", f"BTN-S001-1-{tag}", T0)
        async with writer.transaction():
            await apply_changes(writer, [offline])
        severity = await writer.fetchval(
            "SELECT severity FROM alerts WHERE device_id = $1 AND kind = 'device_offline'",
            f"BTN-S001-1-{tag}",
        )
        assert severity == "major"  # an offline button is major (contract §3)
    finally:
        await listener.close()
        await writer.close()
