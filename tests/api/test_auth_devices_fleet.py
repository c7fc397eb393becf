"""Auth, scopes, devices and fleet endpoints against the real database."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import get as _get
from tests.core.sample_fleet import sample_fleet


def _ids(client: TestClient, token: str, tag: str) -> set[str]:
    ids: set[str] = set()
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = _get(client, token, "/api/v1/devices", **params).json()
        ids |= {d["id"] for d in body["items"]}
        cursor = body["next"]
        if cursor is None:
            return {i for i in ids if i.endswith(tag)}


def test_healthz_needs_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer axo_not-a-token", "Basic abc"])
def test_missing_or_bad_token_is_401(client: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = client.get("/api/v1/devices", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_readers_see_every_device(client: TestClient, world: dict[str, Any]) -> None:
    a, b = world["a"], world["b"]
    for role in ("admin", "bureau", "monitor"):
        assert len(_ids(client, world["tokens"][role], a)) == 3
        assert len(_ids(client, world["tokens"][role], b)) == 3


def test_scoped_roles_see_only_their_own(client: TestClient, world: dict[str, Any]) -> None:
    a, b = world["a"], world["b"]
    tokens = world["tokens"]
    assert _ids(client, tokens["school_a"], a) == {
        f"GPS-B1-{a}",
        f"SMK-S001-1-{a}",
        f"BTN-S001-1-{a}",
    }
    assert _ids(client, tokens["school_a"], b) == set()
    assert _ids(client, tokens["operator_a"], a) == {f"GPS-B1-{a}"}
    assert _ids(client, tokens["operator_a2"], a) == set()
    # Outside the scope is 404, exactly like an id that does not exist.
    outside = _get(client, tokens["school_a"], f"/api/v1/devices/GPS-B1-{b}")
    missing = _get(client, tokens["school_a"], "/api/v1/devices/NO-SUCH-DEVICE")
    assert outside.status_code == missing.status_code == 404
    assert outside.json()["error"]["code"] == "not_found"
    assert _get(client, tokens["operator_a"], f"/api/v1/devices/GPS-B1-{a}").status_code == 200


def test_device_health(client: TestClient, world: dict[str, Any]) -> None:
    a = world["a"]
    token = world["tokens"]["monitor"]
    gps = _get(client, token, f"/api/v1/devices/GPS-B1-{a}").json()
    assert gps["online"] is True and gps["offline_after_s"] == 300
    assert gps["last_seen_at"] > gps["last_event_at"]
    button = _get(client, token, f"/api/v1/devices/BTN-S001-1-{a}").json()
    assert button["online"] is False
    smoke = _get(client, token, f"/api/v1/devices/SMK-S001-1-{a}").json()
    assert smoke["online"] is False and smoke["last_seen_at"] is None
    assert smoke["offline_after_s"] == 900


def test_bad_cursor_is_422(client: TestClient, world: dict[str, Any]) -> None:
    response = _get(client, world["tokens"]["admin"], "/api/v1/devices", cursor="!!!")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_fleet_put_is_admin_only(client: TestClient, world: dict[str, Any]) -> None:
    doc = sample_fleet(f"put{time.monotonic_ns() % 10**7}")
    for role in ("monitor", "bureau", "school_a", "operator_a"):
        response = client.put(
            "/api/v1/fleet", json=doc, headers={"Authorization": f"Bearer {world['tokens'][role]}"}
        )
        assert response.status_code == 403, role
    admin = {"Authorization": f"Bearer {world['tokens']['admin']}"}
    response = client.put("/api/v1/fleet", json=doc, headers=admin)
    assert response.status_code == 200
    assert response.json()["inserted"]["buses"] == 1
    doc["buses"][0]["routes"] = ["R99"]
    rejected = client.put("/api/v1/fleet", json=doc, headers=admin)
    assert rejected.status_code == 422
    assert any("unknown route R99" in p for p in rejected.json()["error"]["details"])


def test_fleet_get_scoped_roles_refused(client: TestClient, world: dict[str, Any]) -> None:
    assert _get(client, world["tokens"]["school_a"], "/api/v1/fleet").status_code == 403
    body = _get(client, world["tokens"]["bureau"], "/api/v1/fleet").json()
    assert any(bus["id"] == f"B1-{world['a']}" for bus in body["buses"])
