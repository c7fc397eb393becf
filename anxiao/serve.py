"""``anxiao serve``: ingest, the rules and the API in one process, supervised.

Wiring only: each long-lived loop is a named task in one ``asyncio.TaskGroup``
(conventions #7); SIGTERM/SIGINT stop ingest first (it writes and acknowledges
what it holds), then the rules finish every batch handed to them, then the API.

Ingest's hook publishes a committed batch's positions and hands the batch to
the rules through a bounded queue (:class:`RulesHandOff`), a task of its own:
the next batch's commit, mostly a wait on PostgreSQL, overlaps the rules of
the last one instead of following them (bench/latency.py: ~30 ms of commit per
batch ran back to back with the rules, the cycle a button press waits on). The
queue keeps the order, and when the rules are ``max_batches`` behind, the hook
waits, so ingest slows down to them rather than holding more in memory;
readings are stored and acknowledged before the hand-off, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import numpy as np
import uvicorn
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from alerts.closing import ClosingLoop
from alerts.runner import EngineRunner
from api import create_app
from api.stream import EventHub
from core.db import create_pool
from core.registry import Registry, load_registry
from core.retention import enforce_retention
from core.settings import Settings
from ingest import IngestBatch, IngestConfig, IngestMetrics, Ingestor, render_metrics

__all__ = ["RulesHandOff", "Service", "main"]

log = logging.getLogger("anxiao.serve")

Clock = Literal["live", "event"]

#: Committed batches waiting for the rules at most (the hand-off's bound).
RULES_QUEUE_BATCHES = 2


class RulesHandOff:
    """Committed batches from ingest's write loop to the rules, in order, through a bounded queue.

    :meth:`hook` is ingest's rules hook: it returns as soon as the batch is
    queued, and waits while ``max_batches`` are. :meth:`run` is the rules
    task; a batch whose rules raise is logged and counted in
    ``metrics.hook_errors`` (``anxiao_ingest_hook_errors_total``, as when the
    rules ran inside the hook) and the next one goes on. :meth:`close` lets
    :meth:`run` return once every batch queued before it is done.
    """

    def __init__(
        self,
        rules: Callable[[IngestBatch], Awaitable[None]],
        *,
        max_batches: int,
        metrics: IngestMetrics,
    ) -> None:
        self._rules = rules
        self._metrics = metrics
        self._queue: asyncio.Queue[IngestBatch | None] = asyncio.Queue(max_batches)

    @property
    def queued(self) -> int:
        """Batches waiting for the rules (not counting the one being processed)."""
        return self._queue.qsize()

    async def hook(self, batch: IngestBatch) -> None:
        """Hand a committed batch to the rules (ingest's hook)."""
        await self._queue.put(batch)

    async def close(self) -> None:
        """No more batches: :meth:`run` returns after the ones queued."""
        await self._queue.put(None)

    async def run(self) -> None:
        """Run the rules on each batch, in the order handed over, until :meth:`close`."""
        while (batch := await self._queue.get()) is not None:
            try:
                await self._rules(batch)
            except Exception:
                self._metrics.hook_errors += 1
                log.exception("rules failed on a committed batch")


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the service owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class Service:
    """The running service: ingest → hook → (positions, rules) and the API."""

    def __init__(self, settings: Settings, *, clock: Clock = "live") -> None:
        self.settings = settings
        self.clock = clock
        self.app: FastAPI = create_app(database_url=settings.database_url)
        self.hub: EventHub = self.app.state.hub
        self.app.state.basemap_tile_url = settings.basemap_tile_url
        metrics = IngestMetrics()
        self.handoff = RulesHandOff(
            self.run_rules, max_batches=RULES_QUEUE_BATCHES, metrics=metrics
        )
        self.ingestor = Ingestor(
            IngestConfig.from_settings(settings), hook=self.on_batch, metrics=metrics
        )
        self.app.state.metrics = lambda: (
            render_metrics(self.ingestor.metrics)
            + "# TYPE anxiao_rules_queued_batches gauge\n"
            + f"anxiao_rules_queued_batches {self.handoff.queued}\n"
            + ("" if self.engine is None else self.engine.render_metrics())
        )
        self._registry_loaded = False
        self.app.state.readiness = lambda: {
            "ingest": self.ingestor.ready.is_set(),
            "registry": self._registry_loaded,
            "rules": self.engine is not None and self.engine.ready.is_set(),
        }
        self.registry = Registry(timezone=settings.timezone)
        self.rules: list[Callable[[IngestBatch, Registry], Awaitable[None]]] = []
        #: The alerts engine, made once the registry is loaded (:meth:`run`).
        self.engine: EngineRunner | None = None
        self._server = _QuietServer(
            uvicorn.Config(
                self.app,
                host=settings.http_host,
                port=settings.http_port,
                log_level="warning",
                lifespan="on",
            )
        )

    async def on_batch(self, batch: IngestBatch) -> None:
        """Ingest's hook: publish positions, then hand the batch to the rules."""
        self.publish_positions(batch)
        await self.handoff.hook(batch)

    async def run_rules(self, batch: IngestBatch) -> None:
        """The rules on one committed batch (the rules task, through the hand-off)."""
        for rule in self.rules:
            await rule(batch, self.registry)

    def publish_positions(self, batch: IngestBatch) -> None:
        """Each bus's newest fix in the batch goes to the live stream."""
        gps = batch.gps
        if len(gps) == 0:
            return
        # The newest row per device: sort by (device, ts) and keep each run's last.
        order = np.lexsort((gps.ts_ms, gps.device_key))
        keys = gps.device_key[order]
        last = order[np.r_[keys[1:] != keys[:-1], True]]
        for row in last.tolist():
            device = self.registry.devices.get(int(gps.device_key[row]))
            if device is None or device.bus_id is None:
                continue
            speed = float(gps.speed_kmh[row])
            self.hub.publish_position(
                {
                    "bus_id": device.bus_id,
                    "device_id": device.id,
                    "school_id": device.school_id,
                    "operator_id": device.operator_id,
                    "ts_ms": int(gps.ts_ms[row]),
                    "lon": float(gps.lon[row]),
                    "lat": float(gps.lat[row]),
                    "speed_kmh": None if np.isnan(speed) else round(speed, 1),
                }
            )

    async def reload_registry(self) -> None:
        """Load the fleet registry again (at start and after each fleet import)."""
        pool = await create_pool(database_url=self.settings.database_url, max_size=1)
        try:
            async with pool.acquire() as conn:
                self.registry = await load_registry(conn, default_timezone=self.settings.timezone)
            self._registry_loaded = True
        finally:
            await pool.close()
        log.info(
            "registry: %d devices, %d buses", len(self.registry.devices), len(self.registry.buses)
        )

    async def _watch_fleet(self) -> None:
        import asyncpg

        changed = asyncio.Event()
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            await conn.add_listener("anxiao_fleet", lambda *_a: changed.set())
            while True:
                await changed.wait()
                changed.clear()
                await self.reload_registry()
        finally:
            await conn.close()

    async def _retention(self) -> None:
        while True:
            try:
                dropped = await run_in_threadpool(
                    enforce_retention,
                    database_url=self.settings.database_url,
                    horizon_days=self.settings.retention_days,
                )
                if dropped:
                    log.info("retention: dropped %d chunks", len(dropped))
            except Exception:
                log.exception("retention round failed")
            await asyncio.sleep(self.settings.retention_interval_s)

    def stop(self) -> None:
        """Stop ingest (it finishes what it holds), then the API."""
        log.info("stopping")
        self.ingestor.stop()
        self._server.should_exit = True

    async def run(self) -> None:
        """Run everything until stopped."""
        await self.reload_registry()
        self.engine = EngineRunner(self.settings, clock=self.clock, registry=self.registry)
        await self.engine.start()
        self.rules.append(self.engine.on_batch)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        async with asyncio.TaskGroup() as tasks:
            background = [
                tasks.create_task(self._watch_fleet(), name="fleet-watch"),
                tasks.create_task(self._retention(), name="retention"),
                tasks.create_task(self.engine.run(), name="rules-clock"),
                # Notices, ledger scans, the daily digest and the outbox (issue 7).
                tasks.create_task(ClosingLoop(self.settings).run(), name="closing"),
            ]
            api = tasks.create_task(self._server.serve(), name="api")
            rules = tasks.create_task(self.handoff.run(), name="rules")
            ingest = tasks.create_task(self.ingestor.run(), name="ingest")
            log.info(
                "serving on http://%s:%d (clock %s)",
                self.settings.http_host,
                self.settings.http_port,
                self.clock,
            )
            await ingest
            # Every committed batch was handed over; the rules finish them before the end.
            await self.handoff.close()
            await rules
            self._server.should_exit = True
            await api
            for task in background:
                task.cancel()
        await self.engine.close()


def main(*, settings: Settings, clock: Clock) -> int:
    """Run the service in the foreground; return the exit status."""
    asyncio.run(Service(settings, clock=clock).run())
    return 0
