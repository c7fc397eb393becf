"""The database side of ingest: device directory and idempotent batch writes.

One asyncpg connection (architecture decision 7: asyncpg on this hot path; a
single writer connection, because batches are committed strictly in order
and acknowledged after their commit). Each batch is one transaction:

1. every channel's rows are encoded once as a binary COPY stream
   (:mod:`ingest._pgcopy`);
2. the stream is first COPYed straight into the hypertable inside a
   savepoint. The table's unique natural-key index refuses a duplicate, and
   then the savepoint is rolled back and the same stream goes the way
   architecture decision 2 prescribes: COPY into a temporary staging table,
   ``INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING`` the natural keys
   that were new. After a batch with duplicates the next batch goes the
   staging way directly, and the direct way is tried again after a clean one.
   Why: on this machine the staging way runs at roughly half the rate of a
   plain COPY into the indexed hypertable, and duplicates only come in
   bursts (a redelivery after a reconnect or a restart), so the direct COPY
   is the common case and the database still decides what is a duplicate;
3. dead letters are COPYed into ``dead_letters``;
4. ``device_status`` gets one upsert for the batch's devices (in key order,
   so that concurrent workers lock rows in the same order);
5. commit.

The directory (device id -> key of registered, unretired devices) is loaded
at connect, reloaded on ``NOTIFY anxiao_fleet`` (sent by fleet imports), when
a batch names a well-formed id the directory does not know (at most once a
second), and at least every ``refresh_s``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import numpy as np
from numpy.typing import NDArray

from core.errors import StoreError
from ingest._pgcopy import CopyColumn, encode_copy
from ingest.columns import (
    BUTTON_EVENTS,
    SMOKE_STATES,
    ButtonColumns,
    GpsColumns,
    HeartbeatColumns,
    SmokeColumns,
)
from ingest.decode import DeadLetters, Decoded

__all__ = ["Store", "Written"]

log = logging.getLogger("anxiao.ingest.store")

_SENSOR_STATES: Final = tuple(dict.fromkeys(SMOKE_STATES + BUTTON_EVENTS))
_SENSOR_STATE_CODE: Final = {s: i for i, s in enumerate(_SENSOR_STATES)}
#: Unknown ids trigger a directory reload at most this often.
_UNKNOWN_RELOAD_S: Final = 1.0

_STATUS_UPSERT: Final = """
INSERT INTO device_status AS d (device_key, last_seen_at, last_event_at, clock_offset_s)
SELECT u.k, to_timestamp(u.seen_ms / 1000.0), to_timestamp(u.event_ms / 1000.0), u.offset_s
FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::float4[]) AS u(k, seen_ms, event_ms, offset_s)
JOIN devices ON devices.key = u.k
ORDER BY u.k
ON CONFLICT (device_key) DO UPDATE SET
    last_seen_at = GREATEST(d.last_seen_at, EXCLUDED.last_seen_at),
    last_event_at = GREATEST(d.last_event_at, EXCLUDED.last_event_at),
    clock_offset_s = CASE
        WHEN EXCLUDED.clock_offset_s IS NULL OR EXCLUDED.last_seen_at < d.last_seen_at
        THEN d.clock_offset_s ELSE EXCLUDED.clock_offset_s END
"""


@dataclass(frozen=True, slots=True)
class Written:
    """What one committed batch did: its columns with ``new`` set, and counts."""

    gps: GpsColumns
    heartbeat: HeartbeatColumns
    smoke: SmokeColumns
    button: ButtonColumns
    #: Rows inserted per channel.
    inserted: dict[str, int]
    #: Readings already stored (absorbed by the natural key) per channel.
    duplicates: dict[str, int]
    dead_letters: int


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    stage: str
    columns: tuple[str, ...]
    #: SQL that RETURNING yields per inserted row, to tell new rows from duplicates.
    returning: str


_GPS: Final = _Table(
    "gps_fixes",
    "ingest_stage_gps",
    (
        "device_key",
        "ts",
        "received_at",
        "lat",
        "lon",
        "speed_kmh",
        "heading_deg",
        "alt_m",
        "sats",
        "hdop",
        "seq",
        "alarm",
        "status",
        "backfill",
    ),
    "device_key, (extract(epoch FROM ts) * 1000)::int8",
)
_SENSOR: Final = _Table(
    "sensor_events",
    "ingest_stage_sensor",
    ("device_key", "channel", "ts", "received_at", "state", "obscuration", "battery_pct"),
    "device_key, (extract(epoch FROM ts) * 1000)::int8, channel",
)
_HEARTBEAT: Final = _Table(
    "heartbeats",
    "ingest_stage_heartbeat",
    ("device_key", "ts", "received_at", "battery_pct", "rssi_dbm"),
    "device_key, (extract(epoch FROM ts) * 1000)::int8",
)


class Store:
    """Ingest's connection to the database (see the module docstring)."""

    def __init__(
        self, *, database_url: str, refresh_s: float, application_name: str = "anxiao-ingest"
    ) -> None:
        self._url = database_url
        self._refresh_s = refresh_s
        self._application_name = application_name
        self._conn: asyncpg.Connection[Any] | None = None
        self.directory: dict[str, int] = {}
        self._loaded_at = float("-inf")
        self._stale = True
        #: Per table: try the direct COPY first (the previous batch had no duplicate).
        self._direct: dict[str, bool] = {t.name: True for t in (_GPS, _SENSOR, _HEARTBEAT)}

    @property
    def connected(self) -> bool:
        """Whether a connection is open."""
        return self._conn is not None and not self._conn.is_closed()

    async def connect(self, *, timeout_s: float = 10.0) -> None:
        """Open the connection, create the staging tables and load the directory."""
        await self.close()
        conn: asyncpg.Connection[Any] = await asyncpg.connect(
            self._url,
            timeout=timeout_s,
            server_settings={"application_name": self._application_name},
        )
        try:
            for table in (_GPS, _SENSOR, _HEARTBEAT):
                # Temporary, so no WAL; emptied by every commit or rollback.
                await conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {table.stage}"
                    f" (LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
            await conn.add_listener("anxiao_fleet", self._on_fleet_changed)
        except asyncpg.UndefinedTableError as exc:
            conn.terminate()
            raise StoreError(
                f"the database has no anxiao schema ({exc}): run `anxiao migrate`"
            ) from exc
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._stale = True
        await self.refresh_directory()

    async def close(self) -> None:
        """Close the connection (quietly: it may already be broken)."""
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await conn.close(timeout=2.0)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()

    def _on_fleet_changed(self, *_args: object) -> None:
        self._stale = True

    def directory_due(self, unknown_ids: frozenset[str] = frozenset()) -> bool:
        """Whether the directory should be reloaded before writing a batch."""
        age_s = time.monotonic() - self._loaded_at
        return (
            self._stale
            or age_s >= self._refresh_s
            or (bool(unknown_ids) and age_s >= _UNKNOWN_RELOAD_S)
        )

    async def refresh_directory(self) -> bool:
        """Reload the device directory; return whether it changed."""
        conn = self._require()
        self._stale = False
        rows = await conn.fetch("SELECT id, key FROM devices WHERE retired_at IS NULL")
        directory = {str(r["id"]): int(r["key"]) for r in rows}
        changed = directory != self.directory
        self.directory = directory
        self._loaded_at = time.monotonic()
        return changed

    async def write(self, decoded: Decoded) -> Written:
        """Store one decoded batch in one transaction (see the module docstring)."""
        conn = self._require()
        async with conn.transaction():
            gps_new = await self._insert(conn, _GPS, _gps_copy(decoded.gps), decoded.gps)
            sensor_columns, sensor_rows = _sensor_copy(decoded.smoke, decoded.button)
            sensor_new = await self._insert(conn, _SENSOR, sensor_columns, None, sensor_rows)
            heartbeat_new = await self._insert(
                conn, _HEARTBEAT, _heartbeat_copy(decoded.heartbeat), decoded.heartbeat
            )
            if len(decoded.dead):
                await _copy_dead_letters(conn, decoded.dead)
            await _upsert_status(conn, decoded)
        smoke_count = len(decoded.smoke)
        gps = replace(decoded.gps, new=gps_new)
        heartbeat = replace(decoded.heartbeat, new=heartbeat_new)
        smoke = replace(decoded.smoke, new=sensor_new[:smoke_count])
        button = replace(decoded.button, new=sensor_new[smoke_count:])
        inserted = {
            "gps": int(gps_new.sum()),
            "heartbeat": int(heartbeat_new.sum()),
            "smoke": int(smoke.new.sum()),
            "button": int(button.new.sum()),
        }
        sizes = {
            "gps": len(gps),
            "heartbeat": len(heartbeat),
            "smoke": len(smoke),
            "button": len(button),
        }
        return Written(
            gps=gps,
            heartbeat=heartbeat,
            smoke=smoke,
            button=button,
            inserted=inserted,
            duplicates={c: sizes[c] - inserted[c] for c in sizes},
            dead_letters=len(decoded.dead),
        )

    def _require(self) -> asyncpg.Connection[Any]:
        if self._conn is None:
            raise asyncpg.ConnectionDoesNotExistError("ingest store is not connected")
        return self._conn

    async def _insert(
        self,
        conn: asyncpg.Connection[Any],
        table: _Table,
        columns: Sequence[CopyColumn],
        keyed: GpsColumns | HeartbeatColumns | None,
        rows: int | None = None,
    ) -> NDArray[np.bool_]:
        """Insert rows idempotently; return which of them were new."""
        count = len(keyed) if keyed is not None else int(rows or 0)
        if count == 0:
            return np.zeros(0, dtype=np.bool_)
        stream = encode_copy(columns, count)
        if self._direct[table.name]:
            try:
                async with conn.transaction():  # a savepoint: a refused COPY undoes only itself
                    await conn.copy_to_table(
                        table.name,
                        source=stream,  # type: ignore[arg-type]  # asyncpg takes buffers; its stubs lag
                        columns=table.columns,
                        format="binary",
                    )
            except asyncpg.UniqueViolationError:
                self._direct[table.name] = False
            else:
                return np.ones(count, dtype=np.bool_)
        await conn.copy_to_table(
            table.stage,
            source=stream,  # type: ignore[arg-type]
            columns=table.columns,
            format="binary",
        )
        names = ", ".join(table.columns)
        inserted = await conn.fetch(
            f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {table.stage}"
            f" ON CONFLICT DO NOTHING RETURNING {table.returning}"
        )
        # Back to the direct COPY once a batch comes without duplicates.
        self._direct[table.name] = len(inserted) == count
        if len(inserted) == count:
            return np.ones(count, dtype=np.bool_)
        if not inserted:
            return np.zeros(count, dtype=np.bool_)
        fresh = {tuple(r) for r in inserted}
        return np.fromiter(
            (k in fresh for k in _natural_keys(columns, count)), dtype=np.bool_, count=count
        )


def _natural_keys(columns: Sequence[CopyColumn], count: int) -> list[tuple[object, ...]]:
    """The natural keys of the rows, shaped like the RETURNING clause's tuples."""
    by_name = {c.name: c for c in columns}
    keys = by_name["device_key"].values.tolist()
    ts = by_name["ts"].values.tolist()
    if "channel" in by_name:
        vocab = by_name["channel"].vocab
        channels = [vocab[c] for c in by_name["channel"].values.tolist()]
        return list(zip(keys, ts, channels, strict=True))
    return list(zip(keys, ts, strict=True))


def _nullable_float(name: str, values: NDArray[np.float32]) -> CopyColumn:
    return CopyColumn(name, "float4", values, np.isnan(values))


def _gps_copy(gps: GpsColumns) -> list[CopyColumn]:
    return [
        CopyColumn("device_key", "int4", gps.device_key),
        CopyColumn("ts", "timestamptz", gps.ts_ms),
        CopyColumn("received_at", "timestamptz", gps.received_ms),
        CopyColumn("lat", "float8", gps.lat),
        CopyColumn("lon", "float8", gps.lon),
        _nullable_float("speed_kmh", gps.speed_kmh),
        _nullable_float("heading_deg", gps.heading_deg),
        _nullable_float("alt_m", gps.alt_m),
        CopyColumn("sats", "int2", gps.sats, gps.sats < 0),
        _nullable_float("hdop", gps.hdop),
        CopyColumn("seq", "int8", gps.seq, gps.seq < 0),
        CopyColumn("alarm", "int8", gps.alarm, gps.alarm < 0),
        CopyColumn("status", "int8", gps.status, gps.status < 0),
        CopyColumn("backfill", "bool", gps.backfill),
    ]


def _heartbeat_copy(heartbeat: HeartbeatColumns) -> list[CopyColumn]:
    return [
        CopyColumn("device_key", "int4", heartbeat.device_key),
        CopyColumn("ts", "timestamptz", heartbeat.ts_ms),
        CopyColumn("received_at", "timestamptz", heartbeat.received_ms),
        _nullable_float("battery_pct", heartbeat.battery_pct),
        _nullable_float("rssi_dbm", heartbeat.rssi_dbm),
    ]


def _sensor_copy(smoke: SmokeColumns, button: ButtonColumns) -> tuple[list[CopyColumn], int]:
    """Smoke rows then button rows, as one ``sensor_events`` stream."""
    smoke_rows, button_rows = len(smoke), len(button)
    states = np.concatenate([smoke.state, button.event]).tolist()
    state_code = np.array([_SENSOR_STATE_CODE[s] for s in states], dtype=np.int64)
    no_value = np.full(button_rows, np.nan, dtype=np.float32)
    obscuration = np.concatenate([smoke.obscuration, no_value])
    battery = np.concatenate([smoke.battery_pct, no_value])
    columns = [
        CopyColumn("device_key", "int4", np.concatenate([smoke.device_key, button.device_key])),
        CopyColumn(
            "channel",
            "text",
            np.r_[np.zeros(smoke_rows, np.int64), np.ones(button_rows, np.int64)],
            vocab=("smoke", "button"),
        ),
        CopyColumn("ts", "timestamptz", np.concatenate([smoke.ts_ms, button.ts_ms])),
        CopyColumn(
            "received_at", "timestamptz", np.concatenate([smoke.received_ms, button.received_ms])
        ),
        CopyColumn("state", "text", state_code, vocab=_SENSOR_STATES),
        _nullable_float("obscuration", obscuration),
        _nullable_float("battery_pct", battery),
    ]
    return columns, smoke_rows + button_rows


async def _copy_dead_letters(conn: asyncpg.Connection[Any], dead: DeadLetters) -> None:
    records = [
        (datetime.fromtimestamp(ms / 1000, UTC), topic, payload, reason, detail, device)
        for ms, topic, payload, reason, detail, device in zip(
            dead.received_ms,
            dead.topic,
            dead.payload,
            dead.reason,
            dead.detail,
            dead.device_id,
            strict=True,
        )
    ]
    await conn.copy_records_to_table(
        "dead_letters",
        records=records,
        columns=("received_at", "topic", "payload", "reason", "detail", "device_id"),
    )


async def _upsert_status(conn: asyncpg.Connection[Any], decoded: Decoded) -> None:
    """One statement: latest receive time, event time and live clock offset per device."""
    parts = [decoded.gps, decoded.heartbeat, decoded.smoke, decoded.button]
    keys = np.concatenate([p.device_key for p in parts])
    if keys.shape[0] == 0:
        return
    seen_ms = np.concatenate([p.received_ms for p in parts])
    event_ms = np.concatenate([p.ts_ms for p in parts])
    live = np.concatenate(
        [~decoded.gps.backfill] + [np.ones(len(p), dtype=np.bool_) for p in parts[1:]]
    )
    order = np.lexsort((event_ms, seen_ms, keys))
    keys, seen_ms, event_ms, live = keys[order], seen_ms[order], event_ms[order], live[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], keys.shape[0]] - 1
    device_keys = keys[starts]
    last_seen = seen_ms[ends]  # sorted by receive time within a device
    last_event = np.maximum.reduceat(event_ms, starts)
    # Clock offset of the latest live reading: the last live row of each device.
    offsets: list[float | None] = [None] * device_keys.shape[0]
    live_rows = np.flatnonzero(live)
    if live_rows.shape[0]:
        group = np.searchsorted(starts, live_rows, side="right") - 1
        last_live = np.r_[group[1:] != group[:-1], True]
        for g, row in zip(group[last_live].tolist(), live_rows[last_live].tolist(), strict=True):
            offsets[g] = (int(event_ms[row]) - int(seen_ms[row])) / 1000.0
    await conn.execute(
        _STATUS_UPSERT, device_keys.tolist(), last_seen.tolist(), last_event.tolist(), offsets
    )
