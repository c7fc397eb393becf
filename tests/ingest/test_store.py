"""The batch writer against the real database: idempotence, ``new`` flags, device status."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import psycopg
import pytest

from core.errors import StoreError
from ingest import Decoded, Limits, decode_messages
from ingest.store import Store
from tests.ingest.support import now_ms, register_devices


def decoded(
    directory: dict[str, int], messages: list[tuple[str, dict[str, Any]]], received_ms: int
) -> Decoded:
    return decode_messages(
        [t for t, _ in messages],
        [orjson.dumps(p) for _, p in messages],
        np.full(len(messages), received_ms, dtype=np.int64),
        directory=directory,
        limits=Limits(),
    )


def fetch(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()


async def test_rewriting_a_batch_changes_nothing_and_flags_only_new_rows(
    database_url: str, prefix: str
) -> None:
    gps, smoke, beat = f"{prefix}gps", f"{prefix}smk", f"{prefix}hb"
    keys = register_devices(database_url, [gps, beat]) | register_devices(
        database_url, [smoke], "smoke"
    )
    t = now_ms() - 60_000

    def traffic(first: int, last: int) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for i in range(first, last):
            out.append((f"anxiao/v1/dev/{gps}/gps", {"ts": t + i, "lat": 31.3, "lon": 120.7}))
            out.append((f"anxiao/v1/dev/{smoke}/smoke", {"ts": t + i, "state": "normal"}))
            out.append((f"anxiao/v1/dev/{beat}/heartbeat", {"ts": t + i, "rssi": -60}))
        return out

    store = Store(database_url=database_url, refresh_s=60)
    await store.connect()
    try:
        directory = store.directory
        assert {gps, smoke, beat} <= directory.keys()
        first = await store.write(decoded(directory, traffic(0, 10), t + 1000))
        assert first.inserted == {"gps": 10, "heartbeat": 10, "smoke": 10, "button": 0}
        assert first.gps.new.all() and first.smoke.new.all() and first.heartbeat.new.all()
        # Half old, half new: the direct COPY is refused, the staging way sorts it out.
        second = await store.write(decoded(directory, traffic(5, 15), t + 2000))
        assert second.inserted == {"gps": 5, "heartbeat": 5, "smoke": 5, "button": 0}
        assert second.duplicates == {"gps": 5, "heartbeat": 5, "smoke": 5, "button": 0}
        for columns in (second.gps, second.smoke, second.heartbeat):
            assert columns.new.tolist() == [False] * 5 + [True] * 5
            assert columns.ts_ms.tolist() == [t + i for i in range(5, 15)]
        # All old: nothing inserted, nothing flagged new.
        third = await store.write(decoded(directory, traffic(0, 15), t + 3000))
        assert sum(third.inserted.values()) == 0
        assert not third.gps.new.any()
        # And the direct way comes back once a batch has no duplicates.
        fourth = await store.write(decoded(directory, traffic(15, 20), t + 4000))
        fifth = await store.write(decoded(directory, traffic(20, 25), t + 5000))
        assert fourth.inserted["gps"] == fifth.inserted["gps"] == 5
    finally:
        await store.close()
    counts = fetch(
        database_url,
        "SELECT (SELECT count(*) FROM gps_fixes WHERE device_key = %s),"
        " (SELECT count(*) FROM sensor_events WHERE device_key = %s),"
        " (SELECT count(*) FROM heartbeats WHERE device_key = %s)",
        keys[gps],
        keys[smoke],
        keys[beat],
    )
    assert counts == [(25, 25, 25)]


async def test_device_status_only_moves_forward_and_ignores_backfill_for_the_offset(
    database_url: str, prefix: str
) -> None:
    device = f"{prefix}gps"
    key = register_devices(database_url, [device])[device]
    topic = f"anxiao/v1/dev/{device}/gps"
    received = now_ms()
    live = {"ts": received - 4000, "lat": 31.3, "lon": 120.7}
    old = {"fixes": [{"ts": received - 3_600_000, "lat": 31.3, "lon": 120.7}], "backfill": True}
    store = Store(database_url=database_url, refresh_s=60)
    await store.connect()
    try:
        await store.write(decoded(store.directory, [(topic, live)], received))
        # Blind-area data arriving later: seen now, but neither the event time
        # nor the clock offset may go back to it.
        await store.write(decoded(store.directory, [(topic, old)], received + 10_000))
        # A batch that had been held up (received earlier) moves nothing back.
        late = {"ts": received - 9000, "lat": 31.3, "lon": 120.7}
        await store.write(decoded(store.directory, [(topic, late)], received - 5000))
    finally:
        await store.close()
    ((seen_ms, event_ms, offset_s),) = fetch(
        database_url,
        "SELECT (extract(epoch FROM last_seen_at) * 1000)::int8,"
        " (extract(epoch FROM last_event_at) * 1000)::int8, clock_offset_s"
        " FROM device_status WHERE device_key = %s",
        key,
    )
    assert seen_ms == received + 10_000
    assert event_ms == received - 4000
    assert offset_s == -4.0


async def test_dead_letters_are_stored_with_topic_payload_and_time(
    database_url: str, prefix: str
) -> None:
    store = Store(database_url=database_url, refresh_s=60)
    await store.connect()
    received = now_ms()
    try:
        written = await store.write(
            decode_messages(
                [f"anxiao/v1/dev/{prefix}nobody/gps"],
                [b"\x00\xffbinary"],
                np.array([received], dtype=np.int64),
                directory=store.directory,
                limits=Limits(),
            )
        )
    finally:
        await store.close()
    assert written.dead_letters == 1
    rows = fetch(
        database_url,
        "SELECT (extract(epoch FROM received_at) * 1000)::int8, payload, reason, device_id"
        " FROM dead_letters WHERE topic = %s",
        f"anxiao/v1/dev/{prefix}nobody/gps",
    )
    assert rows == [(received, b"\x00\xffbinary", "unknown_device", f"{prefix}nobody")]


async def test_an_unmigrated_database_is_a_clear_error(empty_database_url: str) -> None:
    store = Store(database_url=empty_database_url, refresh_s=60)
    with pytest.raises(StoreError, match="anxiao migrate"):
        await store.connect()
    assert not store.connected
