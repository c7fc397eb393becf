"""Alerts, filings and live positions through the API, for every role."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psycopg
import pytest
from fastapi.testclient import TestClient

from alerts.store import EpisodeChange, apply_changes
from tests.api.conftest import get, post

T0 = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def alerts_world(world: dict[str, Any], database_url: str) -> dict[str, Any]:
    a, b = world["a"], world["b"]

    async def write() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                await apply_changes(
                    conn,
                    [
                        EpisodeChange(
                            "open", "speeding", f"GPS-B1-{a}", T0, details={"max_speed_kmh": 71.0}
                        ),
                        EpisodeChange(
                            "open",
                            "panic_button",
                            f"BTN-S001-1-{a}",
                            T0 + timedelta(minutes=1),
                            details={"source": "button"},
                        ),
                        EpisodeChange(
                            "open", "smoke_alarm", f"SMK-S001-1-{a}", T0 + timedelta(minutes=2)
                        ),
                        EpisodeChange("open", "speeding", f"GPS-B1-{b}", T0 + timedelta(minutes=3)),
                    ],
                )
        finally:
            await conn.close()

    asyncio.run(write())
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO gps_fixes (device_key, ts, received_at, lat, lon, speed_kmh)"
            " SELECT key, %s, now(), 31.305, 120.71, 42.5 FROM devices WHERE id = %s",
            (T0, f"GPS-B1-{a}"),
        )
    return world


def _kinds(client: TestClient, token: str, tag: str, **params: Any) -> list[str]:
    body = get(client, token, "/api/v1/alerts", **params).json()
    return [i["kind"] for i in body["items"] if i["device_id"].endswith(tag)]


def test_alert_queue_is_scoped(client: TestClient, alerts_world: dict[str, Any]) -> None:
    a, b, tokens = alerts_world["a"], alerts_world["b"], alerts_world["tokens"]
    assert _kinds(client, tokens["monitor"], a) == ["smoke_alarm", "panic_button", "speeding"]
    assert _kinds(client, tokens["monitor"], b) == ["speeding"]
    assert _kinds(client, tokens["school_a"], b) == []
    assert _kinds(client, tokens["operator_a"], a) == ["speeding"]
    item = get(client, tokens["monitor"], "/api/v1/alerts", device=f"GPS-B1-{a}").json()["items"][0]
    assert item["bus_id"] == f"B1-{a}" and item["operator_id"] == f"OP1-{a}"
    assert item["details"] == {"max_speed_kmh": 71.0}
    assert item["started_at"].startswith("2026-11-23T07:00:00")
    outside = get(client, tokens["school_a"], "/api/v1/alerts", device=f"GPS-B1-{b}").json()
    assert outside["items"] == []
    alien = get(client, tokens["monitor"], "/api/v1/alerts", device=f"GPS-B1-{b}").json()["items"][
        0
    ]
    assert get(client, tokens["school_a"], f"/api/v1/alerts/{alien['id']}").status_code == 404


def test_alert_filters_and_cursor(client: TestClient, alerts_world: dict[str, Any]) -> None:
    a, token = alerts_world["a"], alerts_world["tokens"]["bureau"]
    assert _kinds(client, token, a, kind="panic_button") == ["panic_button"]
    since = (T0 + timedelta(seconds=30)).isoformat()
    assert _kinds(client, token, a, since=since) == ["smoke_alarm", "panic_button"]
    assert _kinds(client, token, a, until=since) == ["speeding"]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1, "school": f"S001-{a}"}
        if cursor:
            params["cursor"] = cursor
        page = get(client, token, "/api/v1/alerts", **params).json()
        seen += [i["kind"] for i in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == ["smoke_alarm", "panic_button", "speeding"]
    naive = get(client, token, "/api/v1/alerts", since="2026-11-23T07:00:00")
    assert naive.status_code == 422  # times carry an offset


def test_ack_and_resolve(client: TestClient, alerts_world: dict[str, Any]) -> None:
    a, tokens = alerts_world["a"], alerts_world["tokens"]
    panic = get(
        client, tokens["monitor"], "/api/v1/alerts", kind="panic_button", device=f"BTN-S001-1-{a}"
    ).json()["items"][0]
    for role in ("bureau", "school_a", "operator_a"):
        refused = post(client, tokens[role], f"/api/v1/alerts/{panic['id']}/ack", {"note": "x"})
        assert refused.status_code == 403, role
    acked = post(client, tokens["monitor"], f"/api/v1/alerts/{panic['id']}/ack", {"note": "收到"})
    assert acked.status_code == 200
    assert acked.json()["acknowledged"] is True and acked.json()["state"] == "active"
    resolved = post(
        client,
        tokens["admin"],
        f"/api/v1/alerts/{panic['id']}/resolve",
        {"note": "学生误触，已复位"},
    )
    body = resolved.json()
    assert body["state"] == "cleared" and body["resolution_note"] == "学生误触，已复位"
    assert post(client, tokens["monitor"], "/api/v1/alerts/not-a-uuid/ack", {}).status_code == 404


def test_filings(client: TestClient, alerts_world: dict[str, Any]) -> None:
    a, b, tokens = alerts_world["a"], alerts_world["b"], alerts_world["tokens"]
    filing = {
        "bus": f"B1-{a}",
        "kind": "movement",
        "from": "2026-11-28T09:00:00+08:00",
        "to": "2026-11-28T12:00:00+08:00",
        "reason": "周六研学活动",
    }
    created = post(client, tokens["operator_a"], "/api/v1/filings", filing)
    assert created.status_code == 201, created.text
    assert created.json()["from"].startswith("2026-11-28T01:00:00")
    assert (
        post(
            client, tokens["operator_a"], "/api/v1/filings", {**filing, "bus": f"B1-{b}"}
        ).status_code
        == 404
    )
    assert post(client, tokens["school_a"], "/api/v1/filings", filing).status_code == 201
    assert (
        post(client, tokens["bureau"], "/api/v1/filings", {**filing, "bus": f"B1-{b}"}).status_code
        == 201
    )
    backwards = post(client, tokens["admin"], "/api/v1/filings", {**filing, "to": filing["from"]})
    assert backwards.status_code == 422
    detour = {
        **filing,
        "kind": "detour",
        "path": {"type": "LineString", "coordinates": [[120.7, 31.3], [120.71, 31.31]]},
    }
    assert post(client, tokens["monitor"], "/api/v1/filings", detour).status_code == 201
    listed = get(client, tokens["operator_a"], "/api/v1/filings", bus=f"B1-{a}").json()
    assert {f["kind"] for f in listed} == {"movement", "detour"}


def test_live_buses(client: TestClient, alerts_world: dict[str, Any]) -> None:
    a, tokens = alerts_world["a"], alerts_world["tokens"]
    mine = get(client, tokens["operator_a"], "/api/v1/live/buses").json()
    assert [bus["bus_id"] for bus in mine] == [f"B1-{a}"]
    bus = mine[0]
    assert (bus["lon"], bus["lat"], bus["speed_kmh"]) == (120.71, 31.305, 42.5)
    assert bus["open_alerts"] == ["speeding"]
    everyone = get(client, tokens["monitor"], "/api/v1/live/buses").json()
    assert {f"B1-{a}", f"B1-{alerts_world['b']}"} <= {bus["bus_id"] for bus in everyone}
