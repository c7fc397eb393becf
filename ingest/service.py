"""The ingest service: MQTT in, columns through, idempotent COPY out, ack after commit.

Three named tasks in one :class:`asyncio.TaskGroup` form a pipeline:

``ingest-mqtt``
    keeps the broker connection (:class:`~ingest.mqtt.MqttReceiver`); paho's
    callbacks append each message to the current inbox, which is sealed when
    it holds ``batch_max_messages`` messages or ``batch_max_bytes`` bytes;
``ingest-decode``
    takes the next sealed inbox, or the current one once its oldest message
    is ``batch_max_age_ms`` old, and decodes it into columns
    (:func:`~ingest.decode.decode_messages`) while the previous batch is
    still being written;
``ingest-write``
    writes each decoded batch in one transaction (:class:`~ingest.store.Store`),
    retrying with backoff (and reconnecting) until it commits, then
    acknowledges the batch's messages in arrival order and calls the rules
    hook with its columns.

Batches are committed and acknowledged strictly in arrival order. Nothing
is acknowledged before it is committed, so a crash at any point loses
nothing: the broker redelivers what was not acknowledged and the natural keys
absorb what had already been committed.

:meth:`Ingestor.stop` (SIGTERM) stops reading, writes and acknowledges what
is held, disconnects cleanly (the session stays) and returns; if the database
stays away longer than ``shutdown_timeout_s``, it gives up on what is not
committed, which the broker then redelivers to the next run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Self

import asyncpg
import numpy as np

from core.settings import MqttUrl, Settings
from ingest.columns import IngestBatch, RulesHook, no_rules
from ingest.decode import CHANNELS, BatchDecoder, Decoded, Limits
from ingest.metrics import IngestMetrics
from ingest.mqtt import Backoff, Inbox, MqttReceiver
from ingest.store import Store, Written

__all__ = ["IngestConfig", "Ingestor"]

log = logging.getLogger("anxiao.ingest")

#: Errors that mean "the database went away": reconnect quietly and retry.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.InsufficientResourcesError,
)


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """Everything ingest needs to run; :meth:`from_settings` reads it from the settings."""

    database_url: str
    mqtt: MqttUrl
    client_id: str = "anxiao-ingest"
    share_group: str | None = None
    topic: str = "anxiao/v1/dev/+/+"
    session_expiry_s: int = 7 * 86400
    receive_maximum: int = 20000
    batch_max_messages: int = 5000
    batch_max_bytes: int = 4 * 1024 * 1024
    batch_max_age_ms: int = 50
    device_refresh_s: float = 60.0
    keepalive_s: int = 30
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 10.0
    shutdown_timeout_s: float = 30.0
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Self:
        """The configuration the settings describe, with keyword overrides."""
        config = cls(
            database_url=settings.database_url,
            mqtt=settings.mqtt,
            client_id=settings.ingest_client_id,
            share_group=settings.ingest_share_group,
            topic=settings.ingest_topic,
            session_expiry_s=settings.ingest_session_expiry_s,
            receive_maximum=settings.ingest_receive_maximum,
            batch_max_messages=settings.ingest_batch_max_messages,
            batch_max_bytes=settings.ingest_batch_max_bytes,
            batch_max_age_ms=settings.ingest_batch_max_age_ms,
            device_refresh_s=settings.ingest_device_refresh_s,
            keepalive_s=settings.ingest_keepalive_s,
            backoff_initial_s=settings.ingest_backoff_initial_s,
            backoff_max_s=settings.ingest_backoff_max_s,
            shutdown_timeout_s=settings.ingest_shutdown_timeout_s,
            limits=Limits(
                max_past_ms=settings.max_past_s * 1000,
                max_future_ms=settings.max_future_s * 1000,
                max_speed_kmh=settings.max_speed_kmh,
                max_payload_bytes=settings.ingest_max_payload_bytes,
            ),
        )
        return replace(config, **overrides)

    @property
    def topic_filter(self) -> str:
        """The subscription: the topic, through the shared group if there is one."""
        return f"$share/{self.share_group}/{self.topic}" if self.share_group else self.topic


class Ingestor:
    """One ingest worker (see the module docstring)."""

    def __init__(
        self,
        config: IngestConfig,
        *,
        hook: RulesHook = no_rules,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or IngestMetrics()
        self._hook = hook
        self._store = Store(database_url=config.database_url, refresh_s=config.device_refresh_s)
        self._receiver = MqttReceiver(
            url=config.mqtt,
            client_id=config.client_id,
            topic_filter=config.topic_filter,
            session_expiry_s=config.session_expiry_s,
            receive_maximum=config.receive_maximum,
            keepalive_s=config.keepalive_s,
            batch_max_messages=config.batch_max_messages,
            batch_max_bytes=config.batch_max_bytes,
            backoff_initial_s=config.backoff_initial_s,
            backoff_max_s=config.backoff_max_s,
            metrics=self.metrics,
        )
        self._decoded: asyncio.Queue[tuple[Inbox, Decoded] | None] = asyncio.Queue(maxsize=1)
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def ready(self) -> asyncio.Event:
        """Set once the database is connected and the broker acknowledged the subscription."""
        return self._receiver.subscribed

    async def run(self) -> None:
        """Run until :meth:`stop` has been called and what was held is written."""
        try:
            await self._connect_store()
            if self._stopping:
                return
            async with asyncio.TaskGroup() as tasks:
                self._tasks = [
                    tasks.create_task(self._receiver.run(), name="ingest-mqtt"),
                    tasks.create_task(self._decode_loop(), name="ingest-decode"),
                    tasks.create_task(self._write_loop(), name="ingest-write"),
                ]
        finally:
            await self._receiver.close()
            await self._store.close()
            self.metrics.database_connected = False

    def stop(self) -> None:
        """Stop reading, write and acknowledge what is held, then let :meth:`run` return."""
        if self._stopping:
            return
        self._stopping = True
        log.info("ingest stopping: writing what it holds")
        self._receiver.drain()
        loop = asyncio.get_running_loop()
        loop.call_later(self.config.shutdown_timeout_s, self._give_up)

    def _give_up(self) -> None:
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            log.error(
                "could not write what it held within %.0f s: exiting without it"
                " (nothing uncommitted was acknowledged; the broker redelivers it)",
                self.config.shutdown_timeout_s,
            )
            for task in pending:
                task.cancel()

    # ------------------------------------------------------------------ tasks

    async def _connect_store(self) -> None:
        backoff = Backoff(initial_s=self.config.backoff_initial_s, max_s=self.config.backoff_max_s)
        while not self._stopping:
            try:
                await self._store.connect()
            except _CONNECTION_ERRORS as exc:
                delay_s = backoff.next_delay()
                log.warning("database unavailable (%s); retrying in %.2f s", exc, delay_s)
                await asyncio.sleep(delay_s)
            else:
                self.metrics.database_connected = True
                return

    async def _decode_loop(self) -> None:
        max_age_s = self.config.batch_max_age_ms / 1000
        while (inbox := await self._receiver.next_inbox(max_age_s)) is not None:
            decoder = self._decoder(inbox)
            while not decoder.done:
                decoder.step()
                # Let the batch being written meanwhile have its round trips.
                await asyncio.sleep(0)
            await self._decoded.put((inbox, decoder.result()))
        await self._decoded.put(None)

    def _decoder(self, inbox: Inbox) -> BatchDecoder:
        received_ms = (np.array(inbox.received_s, dtype=np.float64) * 1000).astype(np.int64)
        return BatchDecoder(
            inbox.topics,
            inbox.payloads,
            received_ms,
            directory=self._store.directory,
            limits=self.config.limits,
        )

    async def _write_loop(self) -> None:
        while (item := await self._decoded.get()) is not None:
            inbox, decoded = item
            written = await self._write(inbox, decoded)
            self._acknowledge(inbox)
            self._count(written, decoded, inbox)
            await self._call_hook(written, inbox)

    async def _write(self, inbox: Inbox, decoded: Decoded) -> Written:
        """Commit one batch, retrying (and reconnecting) until it is done."""
        backoff = Backoff(initial_s=self.config.backoff_initial_s, max_s=self.config.backoff_max_s)
        while True:
            try:
                if not self._store.connected:
                    await self._store.connect()
                    self.metrics.database_connected = True
                    self.metrics.reconnects["database"] += 1
                    log.info("database connection re-established")
                due = self._store.directory_due(decoded.unknown_ids)
                if due and await self._store.refresh_directory():
                    # Devices were registered or retired since the batch was decoded.
                    decoded = self._decoder(inbox).result()
                started = time.perf_counter()
                written = await self._store.write(decoded)
                self.metrics.commit_seconds.observe(time.perf_counter() - started)
                return written
            except _CONNECTION_ERRORS as exc:
                delay_s = backoff.next_delay()
                log.warning("batch not written (%s); retrying in %.2f s", exc, delay_s)
            except Exception:
                # A bug or an unexpected refusal: never drop the batch, keep trying
                # (nothing after it is acknowledged either, so nothing is lost).
                delay_s = backoff.next_delay()
                log.exception("batch not written; retrying in %.2f s", delay_s)
            self.metrics.store_retries += 1
            self.metrics.database_connected = False
            await self._store.close()
            await asyncio.sleep(delay_s)

    def _acknowledge(self, inbox: Inbox) -> None:
        metrics = self.metrics
        if self._receiver.ack(inbox):
            metrics.messages_acked += len(inbox.mids)
            lag_s = time.time() - np.array(inbox.received_s, dtype=np.float64)
            metrics.ack_lag_seconds.observe(lag_s)
        else:
            metrics.acks_dropped += len(inbox.mids)
        metrics.pending_messages = (
            metrics.messages_received - metrics.messages_acked - metrics.acks_dropped
        )

    def _count(self, written: Written, decoded: Decoded, inbox: Inbox) -> None:
        metrics = self.metrics
        metrics.batches += 1
        metrics.batch_messages.observe(len(inbox))
        for channel in CHANNELS:
            metrics.readings_stored[channel] += written.inserted[channel]
            metrics.duplicates[channel] += (
                written.duplicates[channel] + decoded.batch_duplicates[channel]
            )
        for reason, count in decoded.dead.counts().items():
            metrics.dead_letters[reason] += count

    async def _call_hook(self, written: Written, inbox: Inbox) -> None:
        batch = IngestBatch(
            gps=written.gps,
            heartbeat=written.heartbeat,
            smoke=written.smoke,
            button=written.button,
            committed_ms=int(time.time() * 1000),
            messages=len(inbox),
            dead_letters=written.dead_letters,
        )
        try:
            await self._hook(batch)
        except Exception:
            self.metrics.hook_errors += 1
            log.exception("rules hook failed on a committed batch")
