"""``GET /stream`` over a real HTTP connection: alerts as they commit, replay by Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from alerts.store import EpisodeChange, apply_changes


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    event: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if "event" in event:
                yield event
            event = {}
        elif line.startswith("id: "):
            event["id"] = int(line[4:])
        elif line.startswith("event: "):
            event["event"] = line[7:]
        elif line.startswith("data: "):
            event["data"] = json.loads(line[6:])


def _open(database_url: str, device: str, kind: str, started: datetime) -> list[int]:
    # A fault source of its own, so no other test's episode on this device is refined instead.
    change = EpisodeChange("open", kind, device, started, episode_key=f"stream-{time.time_ns()}")

    async def write() -> list[int]:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                return await apply_changes(conn, [change])
        finally:
            await conn.close()

    return asyncio.run(write())


def _first_alert(response: httpx.Response, device: str) -> dict[str, Any]:
    for event in _events(response.iter_lines()):
        if event["event"] == "alert" and event["data"]["device_id"] == device:
            return event
    raise AssertionError("stream ended without the alert")


def test_alert_reaches_the_stream_and_scope_filters_it(
    server: str, world: dict[str, Any], database_url: str
) -> None:
    a, b, tokens = world["a"], world["b"], world["tokens"]
    started = datetime(2026, 11, 23, 9, 0, int(time.time()) % 60, tzinfo=UTC)
    timeout = httpx.Timeout(10.0)
    with (
        httpx.Client(base_url=server, timeout=timeout) as http,
        http.stream(
            "GET", "/api/v1/stream", headers={"Authorization": f"Bearer {tokens['school_a']}"}
        ) as mine,
    ):
        assert mine.status_code == 200
        assert mine.headers["content-type"].startswith("text/event-stream")
        lines = mine.iter_lines()
        assert next(lines) == ": connected"
        # Another school's alert first, then ours: only ours may arrive.
        _open(database_url, f"SMK-S001-1-{b}", "device_fault", started)
        ids = _open(database_url, f"SMK-S001-1-{a}", "device_fault", started)
        for event in _events(lines):
            if event["event"] == "alert":
                assert event["data"]["school_id"] == f"S001-{a}", event
                assert event["id"] == ids[0]
                assert (event["data"]["kind"], event["data"]["action"]) == ("device_fault", "open")
                break

    # Resuming after the event before it replays it from the database.
    with (
        httpx.Client(base_url=server, timeout=timeout) as http,
        http.stream(
            "GET",
            "/api/v1/stream",
            headers={
                "Authorization": f"Bearer {tokens['monitor']}",
                "Last-Event-ID": str(ids[0] - 1),
            },
        ) as resumed,
    ):
        event = _first_alert(resumed, f"SMK-S001-1-{a}")
        assert event["id"] == ids[0]


def test_stream_needs_a_token(server: str) -> None:
    with httpx.Client(base_url=server, timeout=5.0) as http:
        assert http.get("/api/v1/stream").status_code == 401
