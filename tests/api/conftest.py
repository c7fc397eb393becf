"""Fixtures for API tests: two schools' worth of fleet, tokens of every role, a client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from api import create_app
from core.credentials import create_token
from core.fleet import import_fleet
from tests.core.sample_fleet import sample_fleet


def get(client: TestClient, token: str, path: str, **params: Any) -> Any:
    """GET with a bearer token."""
    return client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})


def post(client: TestClient, token: str, path: str, body: Any) -> Any:
    """POST JSON with a bearer token."""
    return client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="session")
def world(database_url: str) -> dict[str, Any]:
    a, b = f"a{time.monotonic_ns() % 10**7}", f"b{time.monotonic_ns() % 10**7}"
    import_fleet(sample_fleet(a), database_url=database_url)
    import_fleet(sample_fleet(b), database_url=database_url)
    tokens = {
        role: create_token(database_url=database_url, role=role, scope_id=None)
        for role in ("admin", "bureau", "monitor")
    }
    tokens["school_a"] = create_token(
        database_url=database_url, role="school", scope_id=f"S001-{a}"
    )
    tokens["operator_a"] = create_token(
        database_url=database_url, role="operator", scope_id=f"OP1-{a}"
    )
    tokens["operator_a2"] = create_token(
        database_url=database_url, role="operator", scope_id=f"OP2-{a}"
    )
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO device_status (device_key, last_seen_at, last_event_at)"
            " SELECT key, now() - interval '10 seconds', now() - interval '11 seconds' FROM devices"
            " WHERE id = %s",
            (f"GPS-B1-{a}",),
        )
        conn.execute(
            "INSERT INTO device_status (device_key, last_seen_at, last_event_at)"
            " SELECT key, now() - interval '1 hour', now() - interval '1 hour' FROM devices"
            " WHERE id = %s",
            (f"BTN-S001-1-{a}",),
        )
    return {"a": a, "b": b, "tokens": tokens}


@pytest.fixture(scope="session")
def client(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(database_url=database_url)) as c:
        yield c


def _get(client: TestClient, token: str, path: str, **params: Any) -> Any:
    return client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="session")
def server(database_url: str) -> Iterator[str]:
    """The API served by a real uvicorn on a loopback port; yields its base URL."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(database_url=database_url)
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:  # readiness: uvicorn sets it once the lifespan is up
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)
