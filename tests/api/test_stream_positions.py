"""The position throttle of the SSE hub: at most one per interval per bus, the last one kept.

Regression: a fix inside the interval used to be dropped, so a bus's final
position (the bus stops reporting) never reached the dashboard.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from api.stream import EventHub


def _position(bus: str, lon: float) -> dict[str, Any]:
    return {"bus_id": bus, "school_id": "S", "operator_id": "OP", "lon": lon, "lat": 31.3}


async def _next_position(queue: asyncio.Queue[bytes | None], timeout_s: float) -> dict[str, Any]:
    message = await asyncio.wait_for(queue.get(), timeout_s)
    assert message is not None
    head, _, data = message.decode().partition("data: ")
    assert head == "event: position\n"
    return json.loads(data)


async def test_last_position_of_a_burst_is_delivered_after_the_interval() -> None:
    hub = EventHub(position_interval_s=0.3)
    async with hub.subscribe(school_id=None, operator_id=None) as subscriber:
        started = time.monotonic()
        hub.publish_position(_position("B1", 120.70))
        hub.publish_position(_position("B1", 120.71))  # held …
        hub.publish_position(_position("B1", 120.72))  # … and replaced by the newest
        hub.publish_position(_position("B2", 121.00))  # another bus is not throttled by B1
        assert (await _next_position(subscriber.queue, 1))["lon"] == 120.70
        assert (await _next_position(subscriber.queue, 1))["lon"] == 121.00
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
