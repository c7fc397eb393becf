"""The alerts engine's I/O: rebuild after a restart, filings, resolutions, storing changes.

:class:`EngineRunner` wraps one :class:`alerts.engine.AlertEngine` for
``anxiao serve``: it is the ingest rules hook (:meth:`EngineRunner.on_batch`),
and its :meth:`EngineRunner.run` loop ticks the clock, follows the filings
(``NOTIFY anxiao_filings``) and the panic alerts people resolve. Changes are
stored with :func:`alerts.store.apply_changes` in one transaction per batch
(with their ``NOTIFY``); if the database is away they are kept and stored with
the next batch, in order, so none is lost. asyncpg: this is the hot path.

Restart (architecture decision 5): the state is rebuilt from the database —
last heard times from ``device_status``, open offline and panic alerts, and the
readings of the last ``rules_rebuild_lookback_s`` (further back for episodes
still active) replayed through the rules. The store writes nothing for a
change that changes nothing, so the replay is silent where nothing was missed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import numpy as np

from alerts.engine import AlertEngine, Clock, RuleSet
from alerts.geometry import Filing
from alerts.store import EpisodeChange, apply_changes
from core.heap import freeze_long_lived
from core.registry import Registry
from core.settings import Settings
from ingest import IngestBatch
from ingest.columns import ButtonColumns, GpsColumns, HeartbeatColumns, SmokeColumns

__all__ = ["EngineRunner", "batch_from_rows"]

log = logging.getLogger("anxiao.alerts")

#: How far back an active episode's readings are replayed at most, seconds.
_MAX_REPLAY_S: Final = 24 * 3600
#: Readings replayed per batch during a rebuild.
_REPLAY_CHUNK: Final = 50_000


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


class EngineRunner:
    """The rules inside ``anxiao serve``; see the module docstring."""

    def __init__(self, settings: Settings, *, clock: Clock, registry: Registry) -> None:
        self.settings = settings
        self.clock: Clock = clock
        self.engine = AlertEngine(
            RuleSet.from_settings(settings, clock=clock), clock=clock, registry=registry
        )
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._unstored: list[EpisodeChange] = []
        self._last_event_id = 0
        self._filings_changed = asyncio.Event()
        self._key_by_id: dict[str, int] = {d.id: k for k, d in registry.devices.items()}
        self.ready = asyncio.Event()
        #: Counters for /metrics.
        self.batches = 0
        self.stored = 0
        self.refused = 0

    async def start(self) -> None:
        """Connect, load the filings and rebuild the state from the database."""
        self._pool = await asyncpg.create_pool(self.settings.database_url, min_size=1, max_size=2)
        async with self._lock:
            await self._load_filings()
            self._last_event_id = int(
                await self._pool.fetchval("SELECT coalesce(max(id), 0) FROM alert_events")
            )
            await self._rebuild()
        # The rebuilt states live as long as the process: out of the collector's way.
        freeze_long_lived()
        self.ready.set()

    async def close(self) -> None:
        """Release the database pool."""
        if self._pool is not None:
            await self._pool.close()

    # -- the hook ------------------------------------------------------------------------------

    async def on_batch(self, batch: IngestBatch, registry: Registry) -> None:
        """Rules for one committed batch (the ingest hook)."""
        await self.ready.wait()
        async with self._lock:
            self._follow(registry)
            changes = self.engine.process(batch)
            changes += self.engine.tick()
            await self._store(changes)
            self.batches += 1

    def _follow(self, registry: Registry) -> None:
        if registry is not self.engine.registry:
            self.engine.set_registry(registry)
            self._key_by_id = {d.id: k for k, d in registry.devices.items()}
            freeze_long_lived()  # the new devices' states

    async def _store(self, changes: Sequence[EpisodeChange]) -> None:
        self._unstored.extend(changes)
        if not self._unstored or self._pool is None:
            return
        try:
            async with self._pool.acquire() as conn:
                try:
                    async with conn.transaction():
                        await apply_changes(conn, self._unstored)
                except asyncpg.PostgresError as exc:
                    if isinstance(exc, asyncpg.PostgresConnectionError):
                        raise
                    # One change the database refuses must not hold back the others.
                    log.exception("alert changes refused as a batch; storing one by one")
                    for change in self._unstored:
                        try:
                            async with conn.transaction():
                                await apply_changes(conn, [change])
                        except asyncpg.PostgresError:
                            log.exception("alert change refused: %r", change)
                            self.refused += 1
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            log.warning("%d alert changes not stored yet (%s); kept", len(self._unstored), exc)
            return
        self.stored += len(self._unstored)
        self._unstored = []

    def render_metrics(self) -> str:
        """The engine's counters in the Prometheus text format."""
        p = "anxiao_rules_"
        return "".join(
            f"# TYPE {p}{name} {kind}\n{p}{name} {value}\n"
            for name, kind, value in (
                ("batches_total", "counter", self.batches),
                ("alert_changes_stored_total", "counter", self.stored),
                ("alert_changes_unstored", "gauge", len(self._unstored)),
                ("alert_changes_refused_total", "counter", self.refused),
            )
        )

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick the clock, follow filings and resolutions, until cancelled."""
        assert self._pool is not None, "start() first"
        listener = await asyncpg.connect(self.settings.database_url)
        try:
            await listener.add_listener("anxiao_filings", lambda *_a: self._filings_changed.set())
            while True:
                await asyncio.sleep(self.settings.rules_tick_s)
                try:
                    async with self._lock:
                        if self._filings_changed.is_set():
                            self._filings_changed.clear()
                            await self._load_filings()
                        await self._follow_resolutions()
                        await self._store(self.engine.tick())
                except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
                    log.warning("rules tick skipped: %s", exc)
        finally:
            await listener.close()

    async def _load_filings(self) -> None:
        assert self._pool is not None
        rows = await self._pool.fetch(
            "SELECT id, bus_id, kind, valid_from, valid_to, path FROM filings"
            " WHERE valid_to > now() - make_interval(days => $1)",
            int(self.settings.max_past_s // 86400) + 2,
        )
        self.engine.set_filings(Filing.from_row(r) for r in rows)

    async def _follow_resolutions(self) -> None:
        """Panic alerts resolved by a person: later presses open a new alert."""
        assert self._pool is not None
        rows = await self._pool.fetch(
            "SELECT e.id, a.device_id, a.resolved_at FROM alert_events e"
            " JOIN alerts a ON a.id = e.alert_id"
            " WHERE e.id > $1 AND e.action = 'resolve' AND a.kind = 'panic_button' ORDER BY e.id",
            self._last_event_id,
        )
        for row in rows:
            self._last_event_id = int(row["id"])
            key = self._key_by_id.get(row["device_id"])
            if key is not None:
                at = _ms(row["resolved_at"]) if self.clock == "live" else None
                self.engine.resolved(key, at_ms=at)

    async def resolve_now(self) -> None:
        """Follow resolutions at once (tests and the API's in-process path)."""
        async with self._lock:
            await self._follow_resolutions()

    # -- rebuild -------------------------------------------------------------------------------

    async def _rebuild(self) -> None:
        assert self._pool is not None
        engine = self.engine
        column = "last_event_at" if self.clock == "event" else "last_seen_at"
        status = await self._pool.fetch(f"SELECT device_key, {column} AS t FROM device_status")
        if not status:
            return
        newest = max(_ms(r["t"]) for r in status)
        now = newest if self.clock == "event" else _ms(datetime.now(UTC))
        active = await self._pool.fetch(
            "SELECT device_id, kind, started_at, details FROM alerts WHERE state = 'active'"
        )
        start = now - int(self.settings.rules_rebuild_lookback_s * 1000)
        for row in active:
            if row["kind"] not in ("device_offline", "panic_button"):
                start = min(start, _ms(row["started_at"]) - 300_000)
        start = max(start, now - _MAX_REPLAY_S * 1000)
        await self._replay(start, now)
        # Seeds the replay cannot give: silences and latched alarms older than the window.
        engine.seed(
            last_heard_ms={int(r["device_key"]): _ms(r["t"]) for r in status},
            active=[
                (self._key_by_id.get(r["device_id"]), r["kind"], _ms(r["started_at"]), _details(r))
                for r in active
            ],
        )
        await self._store(engine.tick(force=True))
        log.info(
            "rules rebuilt from %s: %d devices heard, %d active alerts",
            datetime.fromtimestamp(start / 1000, UTC).isoformat(),
            len(status),
            len(active),
        )

    async def _replay(self, start_ms: int, end_ms: int) -> None:
        assert self._pool is not None
        since = datetime.fromtimestamp(start_ms / 1000, UTC)
        until = datetime.fromtimestamp(end_ms / 1000, UTC) + timedelta(milliseconds=1)
        gps = await self._pool.fetch(
            "SELECT device_key, ts, received_at, lat, lon, speed_kmh, alarm, backfill"
            " FROM gps_fixes WHERE ts >= $1 AND ts < $2 ORDER BY ts",
            since,
            until,
        )
        sensors = await self._pool.fetch(
            "SELECT device_key, channel, ts, received_at, state, obscuration"
            " FROM sensor_events WHERE ts >= $1 AND ts < $2 ORDER BY ts",
            since,
            until,
        )
        for lo in range(0, max(len(gps), 1), _REPLAY_CHUNK):
            part = gps[lo : lo + _REPLAY_CHUNK]
            batch = batch_from_rows(part, sensors if lo == 0 else [])
            await self._store(self.engine.process(batch, replay=True))


def _details(row: Any) -> dict[str, Any]:
    d = row["details"]
    return dict(json.loads(d) if isinstance(d, str) else d or {})


def batch_from_rows(gps: Sequence[Any], sensors: Sequence[Any]) -> IngestBatch:
    """An :class:`IngestBatch` of stored readings (for a rebuild), sorted as ingest sorts."""
    n = len(gps)

    def col(name: str, dtype: Any, rows: Sequence[Any], fill: Any = None) -> Any:
        return np.array([fill if r[name] is None else r[name] for r in rows], dtype=dtype)

    def ms(name: str, rows: Sequence[Any]) -> Any:
        return np.array([_ms(r[name]) for r in rows], dtype=np.int64)

    g = GpsColumns(
        device_key=col("device_key", np.int32, gps),
        ts_ms=ms("ts", gps),
        received_ms=ms("received_at", gps),
        lat=col("lat", np.float64, gps),
        lon=col("lon", np.float64, gps),
        speed_kmh=col("speed_kmh", np.float32, gps, np.nan),
        heading_deg=np.full(n, np.nan, np.float32),
        alt_m=np.full(n, np.nan, np.float32),
        sats=np.full(n, -1, np.int16),
        hdop=np.full(n, np.nan, np.float32),
        seq=np.full(n, -1, np.int64),
        alarm=col("alarm", np.int64, gps, -1),
        status=np.full(n, -1, np.int64),
        backfill=col("backfill", np.bool_, gps, False),
        new=np.ones(n, np.bool_),
    )
    smoke_rows = [r for r in sensors if r["channel"] == "smoke"]
    button_rows = [r for r in sensors if r["channel"] == "button"]
    smoke = SmokeColumns(
        device_key=col("device_key", np.int32, smoke_rows),
        ts_ms=ms("ts", smoke_rows),
        received_ms=ms("received_at", smoke_rows),
        state=col("state", "<U7", smoke_rows),
        obscuration=col("obscuration", np.float32, smoke_rows, np.nan),
        battery_pct=np.full(len(smoke_rows), np.nan, np.float32),
        new=np.ones(len(smoke_rows), np.bool_),
    )
    button = ButtonColumns(
        device_key=col("device_key", np.int32, button_rows),
        ts_ms=ms("ts", button_rows),
        received_ms=ms("received_at", button_rows),
        event=col("state", "<U7", button_rows),
        new=np.ones(len(button_rows), np.bool_),
    )

    def by_device(c: Any) -> Any:
        return c.select(np.lexsort((c.ts_ms, c.device_key))) if len(c) else c

    return IngestBatch(
        gps=by_device(g),
        heartbeat=HeartbeatColumns.empty(),
        smoke=by_device(smoke),
        button=by_device(button),
        committed_ms=0,
        messages=0,
        dead_letters=0,
    )
