"""The live event hub behind ``GET /stream`` (Server-Sent Events).

Alert changes arrive by ``LISTEN anxiao_alerts`` (one connection per API
process, decision 6): the hub loads each committed alert event once and fans
it out to every connected client whose scope sees it. Positions are published
in-process by ``serve``'s rules hook and throttled per bus, so a bus reporting
every second costs a client at most one message per ``position_interval_s``.

Each client's pending messages (:class:`SubscriberQueue`) are kept apart:
alert events in a queue of their own, always sent first, one per write (the
route skips replayed ones by the id that leads a write); positions as the
newest one per bus, replaced in place, so what a slow client holds is bounded
by the number of buses, and all of them leave in one write. Under load the
event loop is busy with ingest and the rules, and one write per message let a
client fall behind by hundreds of positions, with the alerts behind them. If
even a client's alert events overflow, its stream ends and the browser
reconnects with ``Last-Event-ID``, which replays what it missed from
``alert_events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from alerts.store import NOTIFY_CHANNEL

__all__ = ["ALERT_EVENT_SQL", "EventHub", "Subscriber", "SubscriberQueue", "format_sse"]

log = logging.getLogger(__name__)

#: One alert event with its alert, as the stream shows it.
ALERT_EVENT_SQL = """
SELECT e.id AS event_id, e.action, e.at, a.id, a.kind, a.severity, a.state, a.acknowledged,
       a.late, a.device_id, a.bus_id, a.school_id, a.operator_id, a.district_id,
       a.started_at, a.ended_at, a.details
  FROM alert_events e JOIN alerts a ON a.id = e.alert_id
"""


def alert_event_payload(row: Any) -> dict[str, Any]:
    """An alert event row as JSON-ready data."""
    data = dict(row)
    data["id"] = str(data["id"])
    if isinstance(data["details"], str):
        data["details"] = json.loads(data["details"])
    for key in ("at", "started_at", "ended_at"):
        if data[key] is not None:
            data[key] = data[key].isoformat()
    return data


def format_sse(event: str, data: Any, *, event_id: int | None = None) -> bytes:
    """One Server-Sent Events message."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{head}event: {event}\ndata: {body}\n\n".encode()


class SubscriberQueue:
    """One client's pending messages: alert events first, then the newest position per bus.

    :meth:`get` is what the route awaits: the next write to the client, or
    None once the stream is to end.
    """

    #: Alert events a client may fall behind by before its stream is ended.
    MAX_ALERTS = 1000

    def __init__(self) -> None:
        self._alerts: deque[bytes] = deque()
        #: Bus → its newest position message; a newer one replaces it in place.
        self._positions: dict[str, bytes] = {}
        self._ended = False
        self._ready = asyncio.Event()

    def put_alert(self, message: bytes) -> bool:
        """Queue an alert event; False (nothing queued) if the client is too far behind."""
        if len(self._alerts) >= self.MAX_ALERTS:
            return False
        self._alerts.append(message)
        self._ready.set()
        return True

    def put_position(self, bus: str, message: bytes) -> None:
        """Hold a bus's position, replacing the one it holds for that bus."""
        self._positions[bus] = message
        self._ready.set()

    def end(self, *, drop: bool = False) -> None:
        """End the stream after what is pending (or at once, dropping it)."""
        if drop:
            self._alerts.clear()
            self._positions.clear()
        self._ended = True
        self._ready.set()

    def empty(self) -> bool:
        """Whether nothing is pending (not even the end)."""
        return not self._alerts and not self._positions and not self._ended

    def qsize(self) -> int:
        """Messages pending."""
        return len(self._alerts) + len(self._positions)

    async def get(self) -> bytes | None:
        """The next write: one alert event, else every pending position; None at the end."""
        while True:
            if self._alerts:
                return self._alerts.popleft()
            if self._positions:
                write = b"".join(self._positions.values())
                self._positions.clear()
                return write
            if self._ended:
                return None
            self._ready.clear()
            await self._ready.wait()


@dataclass(eq=False)
class Subscriber:
    """One connected client: its scope and its pending messages."""

    school_id: str | None
    operator_id: str | None
    queue: SubscriberQueue = field(default_factory=SubscriberQueue)

    def sees(self, item: dict[str, Any]) -> bool:
        """Whether this client's scope covers an alert or position."""
        if self.school_id is not None:
            return bool(item.get("school_id") == self.school_id)
        if self.operator_id is not None:
            return bool(item.get("operator_id") == self.operator_id)
        return True


class EventHub:
    """Fans alert events and positions out to SSE subscribers."""

    def __init__(self, *, position_interval_s: float = 1.0) -> None:
        self.position_interval_s = position_interval_s
        self._subscribers: set[Subscriber] = set()
        self._last_position_s: dict[str, float] = {}
        self._held_positions: dict[str, dict[str, Any]] = {}
        self._listener: asyncpg.Connection[Any] | None = None
        self._pending: asyncio.Queue[int] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, database_url: str) -> None:
        """LISTEN for alert events and start loading them."""
        self._listener = await asyncpg.connect(database_url)
        await self._listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
        self._task = asyncio.create_task(self._load_events(database_url), name="sse-alert-loader")

    async def stop(self) -> None:
        """Stop listening and end every stream."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listener is not None:
            await self._listener.close()
        for subscriber in list(self._subscribers):
            subscriber.queue.end()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        self._pending.put_nowait(int(str(payload)))

    async def _load_events(self, database_url: str) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            while True:
                ids = [await self._pending.get()]
                while not self._pending.empty():
                    ids.append(self._pending.get_nowait())
                rows = await conn.fetch(
                    ALERT_EVENT_SQL + " WHERE e.id = ANY($1::bigint[]) ORDER BY e.id", ids
                )
                for row in rows:
                    self.publish_alert(alert_event_payload(row))
        finally:
            await conn.close()

    def publish_alert(self, payload: dict[str, Any]) -> None:
        """Send one alert event to every subscriber that sees it."""
        message = format_sse("alert", payload, event_id=payload["event_id"])
        for subscriber in list(self._subscribers):
            if subscriber.sees(payload) and not subscriber.queue.put_alert(message):
                # Too slow even for alerts: end its stream; it resumes by Last-Event-ID.
                self._subscribers.discard(subscriber)
                subscriber.queue.end(drop=True)

    def publish_position(self, position: dict[str, Any]) -> None:
        """Send a bus position, at most once per ``position_interval_s`` per bus.

        A position inside the interval is held, the newest replacing older
        ones, and sent when the interval ends: the last fix of a burst (a bus
        that stops reporting) is late by at most the interval, never lost.
        """
        now_s = time.monotonic()
        bus = str(position.get("bus_id"))
        wait_s = self._last_position_s.get(bus, -1e9) + self.position_interval_s - now_s
        if wait_s <= 0:
            self._send_position(bus, position, now_s)
            return
        if bus not in self._held_positions:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to send it later from: drop it, as before
                return
            loop.call_later(wait_s, self._send_held_position, bus)
        self._held_positions[bus] = position

    def _send_held_position(self, bus: str) -> None:
        position = self._held_positions.pop(bus, None)
        if position is not None:
            self._send_position(bus, position, time.monotonic())

    def _send_position(self, bus: str, position: dict[str, Any], now_s: float) -> None:
        self._last_position_s[bus] = now_s
        message = format_sse("position", position)
        for subscriber in list(self._subscribers):
            if subscriber.sees(position):
                subscriber.queue.put_position(bus, message)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, *, school_id: str | None, operator_id: str | None
    ) -> AsyncIterator[Subscriber]:
        """Register a client for as long as its stream lasts."""
        subscriber = Subscriber(school_id, operator_id)
        self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)
