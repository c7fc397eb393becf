"""Values the database cannot take are the caller's error (422), never a 500.

Regressions found while fuzzing: a NUL character in a text parameter, and an
aware datetime that leaves PostgreSQL's range once converted to UTC, made
asyncpg raise DataError, which the API answered with 500.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import create_app
from tests.api.conftest import get, post
from tests.core.sample_fleet import sample_fleet

TOO_EARLY = "0001-01-01T00:00:00+14:00"  # year 0 in UTC
TOO_LATE = "9999-12-31T23:59:59-14:00"  # year 10000 in UTC


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/alerts", {"since": TOO_EARLY}),
        ("/api/v1/alerts", {"until": TOO_LATE}),
        ("/api/v1/alerts", {"bus": "B\x001"}),
        ("/api/v1/alerts", {"school": "\x00"}),
        ("/api/v1/devices/GPS%00", {}),
        ("/api/v1/devices", {"cursor": "AA"}),  # decodes to a lone NUL
        ("/api/v1/buses/B%001/track", {}),
        ("/api/v1/filings", {"bus": "\x00"}),
    ],
)
def test_unstorable_values_are_refused_with_422(
    client: TestClient, world: dict[str, Any], path: str, params: dict[str, str]
) -> None:
    r = get(client, world["tokens"]["admin"], path, **params)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"


def test_track_window_out_of_range_is_refused(client: TestClient, world: dict[str, Any]) -> None:
    bus = f"B1-{world['a']}"
    r = get(client, world["tokens"]["admin"], f"/api/v1/buses/{bus}/track", since=TOO_EARLY)
    assert r.status_code == 422, r.text


def test_filing_with_nul_is_refused(client: TestClient, world: dict[str, Any]) -> None:
    body = {
        "bus": f"B1-{world['a']}",
        "kind": "movement",
        "from": "2026-11-23T08:00:00+08:00",
        "to": "2026-11-23T09:00:00+08:00",
        "reason": "校外活动\x00",
    }
    r = post(client, world["tokens"]["admin"], "/api/v1/filings", body)
    assert r.status_code == 422, r.text


def test_fleet_with_nul_is_refused_and_changes_nothing(fresh_database_url: str) -> None:
    from core.credentials import create_token

    token = create_token(database_url=fresh_database_url, role="admin", scope_id=None)
    doc = sample_fleet("nul")
    doc["schools"][0]["name"] = "星海\x00小学"
    with TestClient(create_app(database_url=fresh_database_url)) as c:
        headers = {"Authorization": f"Bearer {token}"}
        r = c.put("/api/v1/fleet", json=doc, headers=headers)
        assert r.status_code == 422, r.text
        assert c.get("/api/v1/fleet", headers=headers).json()["schools"] == []
