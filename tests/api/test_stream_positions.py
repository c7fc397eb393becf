"""The SSE hub's per-client delivery: positions throttled and bounded, alerts never behind them.

Regressions:

* a fix inside the interval used to be dropped, so a bus's final position (the
  bus stops reporting) never reached the dashboard;
* under load an alert event waited behind up to 900 position messages queued
  for the client (bench/latency.py: 8 s from the alert's commit to the client).
  Now a client holds at most one position per bus, its alerts go out first,
  and everything pending leaves in one write.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from api.stream import EventHub, SubscriberQueue


def _position(bus: str, lon: float) -> dict[str, Any]:
    return {"bus_id": bus, "school_id": "S", "operator_id": "OP", "lon": lon, "lat": 31.3}


def _alert(event_id: int, school: str = "S") -> dict[str, Any]:
    return {"event_id": event_id, "kind": "panic_button", "action": "open", "school_id": school}


def _events(write: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of one write to the client."""
    out = []
    for message in write.decode().split("\n\n"):
        if not message:
            continue
        fields = dict(line.split(": ", 1) for line in message.split("\n"))
        out.append((fields["event"], json.loads(fields["data"])))
    return out


async def _next_write(queue: SubscriberQueue, timeout_s: float) -> list[tuple[str, Any]]:
    write = await asyncio.wait_for(queue.get(), timeout_s)
    assert write is not None
    return _events(write)


async def _next_position(queue: SubscriberQueue, timeout_s: float) -> dict[str, Any]:
    [(event, data)] = await _next_write(queue, timeout_s)
    assert event == "position"
    return data


async def test_last_position_of_a_burst_is_delivered_after_the_interval() -> None:
    hub = EventHub(position_interval_s=0.3)
    async with hub.subscribe(school_id=None, operator_id=None) as subscriber:
        started = time.monotonic()
        hub.publish_position(_position("B1", 120.70))
        hub.publish_position(_position("B1", 120.71))  # held …
        hub.publish_position(_position("B1", 120.72))  # … and replaced by the newest
        hub.publish_position(_position("B2", 121.00))  # another bus is not throttled by B1
        # Both sent at once, and pending together: one write.
        first = await _next_write(subscriber.queue, 1)
        assert [data["lon"] for _, data in first] == [120.70, 121.00]
        held = await _next_position(subscriber.queue, 2)
        assert held["lon"] == 120.72
        assert time.monotonic() - started >= 0.29  # not before the interval ends
        # Nothing else was queued: one message per interval per bus.
        await asyncio.sleep(0)
        assert subscriber.queue.empty()


async def test_scoped_subscriber_gets_held_positions_of_its_scope_only() -> None:
    hub = EventHub(position_interval_s=0.1)
    async with hub.subscribe(school_id="S", operator_id=None) as mine:
        hub.publish_position(_position("B1", 120.70))
        hub.publish_position({**_position("B1", 120.75), "school_id": "OTHER"})
        hub.publish_position(_position("B1", 120.71))
        assert (await _next_position(mine.queue, 1))["lon"] == 120.70
        assert (await _next_position(mine.queue, 1))["lon"] == 120.71


async def test_a_slow_client_holds_one_position_per_bus_the_newest() -> None:
    hub = EventHub(position_interval_s=0.0)  # no throttle: every fix reaches the client
    async with hub.subscribe(school_id=None, operator_id=None) as subscriber:
        for i in range(3000):
            hub.publish_position(_position(f"B{i % 3}", 120.0 + i / 10_000))
        assert subscriber.queue.qsize() == 3  # bounded by the buses, not the fixes
        write = await _next_write(subscriber.queue, 1)
        newest = {f"B{i % 3}": 120.0 + i / 10_000 for i in range(3000)}
        assert {data["bus_id"]: data["lon"] for _, data in write} == newest
        assert subscriber.queue.empty()


async def test_alerts_go_out_before_pending_positions() -> None:
    hub = EventHub(position_interval_s=0.0)
    async with hub.subscribe(school_id=None, operator_id=None) as subscriber:
        for i in range(500):
            hub.publish_position(_position(f"B{i}", 120.7))
        hub.publish_alert(_alert(41))
        hub.publish_alert(_alert(42))
        # Each alert is its own write, led by its id (the route skips replayed ids by it).
        assert await _next_write(subscriber.queue, 1) == [("alert", _alert(41))]
        assert await _next_write(subscriber.queue, 1) == [("alert", _alert(42))]
        write = await _next_write(subscriber.queue, 1)
        assert len(write) == 500 and {event for event, _ in write} == {"position"}
        assert subscriber.queue.empty()


async def test_an_alert_write_starts_with_its_id() -> None:
    hub = EventHub()
    async with hub.subscribe(school_id=None, operator_id=None) as subscriber:
        hub.publish_alert(_alert(7))
        write = await asyncio.wait_for(subscriber.queue.get(), 1)
        assert write is not None and write.startswith(b"id: 7\nevent: alert\n")


async def test_a_client_too_slow_for_alerts_is_ended_and_others_are_not() -> None:
    hub = EventHub()
    async with (
        hub.subscribe(school_id=None, operator_id=None) as slow,
        hub.subscribe(school_id="OTHER", operator_id=None) as other,
    ):
        hub.publish_position(_position("B1", 120.7))
        for event_id in range(SubscriberQueue.MAX_ALERTS + 1):
            hub.publish_alert(_alert(event_id))
        # What it held is dropped: it resumes by Last-Event-ID from the database.
        assert await asyncio.wait_for(slow.queue.get(), 1) is None
        hub.publish_alert(_alert(10_000, school="OTHER"))
        assert await _next_write(other.queue, 1) == [("alert", _alert(10_000, school="OTHER"))]


async def test_stop_ends_each_stream_after_what_it_holds() -> None:
    hub = EventHub(position_interval_s=0.0)
    async with hub.subscribe(school_id=None, operator_id=None) as subscriber:
        hub.publish_position(_position("B1", 120.7))
        hub.publish_alert(_alert(1))
        await hub.stop()
        assert [e for e, _ in await _next_write(subscriber.queue, 1)] == ["alert"]
        assert [e for e, _ in await _next_write(subscriber.queue, 1)] == ["position"]
        assert await asyncio.wait_for(subscriber.queue.get(), 1) is None
