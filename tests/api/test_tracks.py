"""``GET /buses/{bus_id}/track``: scopes, time order, the since/until window, the cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import get

T0 = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def track_world(world: dict[str, Any], database_url: str) -> dict[str, Any]:
    a = world["a"]
    # Fixes inserted out of time order, ten seconds apart, moving east.
    with psycopg.connect(database_url) as conn:
        for i in (3, 0, 4, 1, 2):
            conn.execute(
                "INSERT INTO gps_fixes (device_key, ts, received_at, lat, lon, speed_kmh, backfill)"
                " SELECT key, %s, now(), 31.30, %s, %s, %s FROM devices WHERE id = %s",
                (
                    T0 + timedelta(seconds=10 * i),
                    round(120.70 + i / 1000, 3),
                    30.0 + i,
                    i == 4,
                    f"GPS-B1-{a}",
                ),
            )
    return world


def _track(client: TestClient, token: str, bus: str, **params: Any) -> Any:
    return get(client, token, f"/api/v1/buses/{bus}/track", **params)


def test_track_is_time_ordered_within_since_until(
    client: TestClient, track_world: dict[str, Any]
) -> None:
    a, monitor = track_world["a"], track_world["tokens"]["monitor"]
    since, until = T0 + timedelta(seconds=10), T0 + timedelta(seconds=40)
    r = _track(client, monitor, f"B1-{a}", since=since.isoformat(), until=until.isoformat())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bus_id"] == f"B1-{a}"
    # since is inclusive, until exclusive.
    stamps = [datetime.fromisoformat(p["ts"]) for p in body["items"]]
    assert stamps == [T0 + timedelta(seconds=s) for s in (10, 20, 30)]
    assert [p["lon"] for p in body["items"]] == [120.701, 120.702, 120.703]
    assert [p["speed_kmh"] for p in body["items"]] == [31.0, 32.0, 33.0]
    assert {p["device_id"] for p in body["items"]} == {f"GPS-B1-{a}"}
    assert body["next"] is None


def test_track_is_capped_and_resumes_by_cursor(
    client: TestClient, track_world: dict[str, Any]
) -> None:
    a, admin = track_world["a"], track_world["tokens"]["admin"]
    window = {"since": T0.isoformat(), "until": (T0 + timedelta(minutes=5)).isoformat()}
    first = _track(client, admin, f"B1-{a}", limit=2, **window).json()
    assert len(first["items"]) == 2 and first["next"] is not None
    rest = _track(client, admin, f"B1-{a}", limit=10, cursor=first["next"], **window).json()
    points = first["items"] + rest["items"]
    assert [p["lon"] for p in points] == [120.70, 120.701, 120.702, 120.703, 120.704]
    assert [p["backfill"] for p in points] == [False, False, False, False, True]
    assert rest["next"] is None


def test_track_default_window_is_the_last_hour(
    client: TestClient, track_world: dict[str, Any]
) -> None:
    a, bureau = track_world["a"], track_world["tokens"]["bureau"]
    body = _track(client, bureau, f"B1-{a}").json()
    since, until = datetime.fromisoformat(body["since"]), datetime.fromisoformat(body["until"])
    assert until - since == timedelta(hours=1)
    assert abs((until - datetime.now(UTC)).total_seconds()) < 60
    assert body["items"] == []  # T0 lies in 2026-11, not in the last hour


@pytest.mark.parametrize(
    ("who", "visible"),
    [("school_a", True), ("operator_a", True), ("operator_a2", False)],
)
def test_track_scopes(
    client: TestClient, track_world: dict[str, Any], who: str, visible: bool
) -> None:
    a, b, token = track_world["a"], track_world["b"], track_world["tokens"][who]
    window = {"since": T0.isoformat(), "until": (T0 + timedelta(minutes=5)).isoformat()}
    mine = _track(client, token, f"B1-{a}", **window)
    assert mine.status_code == (200 if visible else 404), mine.text
    if visible:
        assert len(mine.json()["items"]) == 5
    else:
        assert mine.json()["error"]["code"] == "not_found"
    # Another fleet's bus is invisible, exactly like a bus that does not exist.
    theirs = _track(client, token, f"B1-{b}", **window)
    missing = _track(client, token, "no-such-bus", **window)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == "not_found"


def test_track_refuses_bad_windows_and_cursors(
    client: TestClient, track_world: dict[str, Any]
) -> None:
    a, monitor = track_world["a"], track_world["tokens"]["monitor"]
    bus = f"B1-{a}"
    backwards = _track(client, monitor, bus, since=T0.isoformat(), until=T0.isoformat())
    assert backwards.status_code == 422
    assert backwards.json()["error"]["code"] == "invalid_request"
    naive = _track(client, monitor, bus, since="2026-11-24T07:00:00")
    assert naive.status_code == 422
    assert _track(client, monitor, bus, cursor="!!").status_code == 422
    assert _track(client, monitor, bus, limit=0).status_code == 422
    assert client.get(f"/api/v1/buses/{bus}/track").status_code == 401
