"""Schemathesis against the API's own OpenAPI document: no input makes it answer 5xx.

The API runs in a real uvicorn on a database of this module's own (seeded
with a fleet, fixes and alerts), because fuzzing ``PUT /fleet`` with an admin
token may change or prune the reference data and must not touch the shared
session database. ``GET /stream`` never ends, so it is fuzzed apart: only its
status is read before the connection is dropped.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psycopg
import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)

from alerts.store import EpisodeChange, apply_changes
from api import create_app
from core.credentials import create_token
from core.fleet import import_fleet
from core.migrate import migrate
from tests.conftest import create_database, drop_database
from tests.core.sample_fleet import sample_fleet

#: Every answer must be well formed as documented, and never a server error.
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]
FUZZ_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def fuzz_target(admin_database_url: str) -> Iterator[dict[str, Any]]:
    """A seeded database of this module's own, served by uvicorn; base URL and admin token."""
    url = create_database(admin_database_url, prefix="anxiao_fuzz")
    migrate(database_url=url)
    import_fleet(sample_fleet("fz"), database_url=url)
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO gps_fixes (device_key, ts, received_at, lat, lon, speed_kmh)"
            " SELECT key, %s + make_interval(secs => g), now(), 31.3, 120.70 + g / 1e4, 30"
            " FROM devices, generate_series(0, 9) g WHERE id = 'GPS-B1-fz'",
            (t0,),
        )

    async def alerts() -> None:
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await apply_changes(
                    conn,
                    [
                        EpisodeChange(
                            "open", "speeding", "GPS-B1-fz", t0, details={"limit_kmh": 60}
                        ),
                        EpisodeChange("open", "panic_button", "BTN-S001-1-fz", t0),
                    ],
                )
        finally:
            await conn.close()

    asyncio.run(alerts())
    token = create_token(database_url=url, role="admin", scope_id=None)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(database_url=url), log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:  # readiness: uvicorn sets it once the lifespan is up
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield {"base": f"http://127.0.0.1:{port}", "token": token}
    server.should_exit = True
    thread.join(10)
    drop_database(admin_database_url, url)


# The document is the app's own; building the app opens nothing (the pool opens
# with the lifespan), so the schema is known at collection time.
# (schemathesis.pytest.from_fixture would load it from the server, but its
# lazy loader does not run under pytest 9.)
schema = schemathesis.openapi.from_dict(create_app(database_url="postgresql:///unused").openapi())


@schema.exclude(path="/api/v1/stream").parametrize()
@FUZZ_SETTINGS
def test_no_server_errors(case: Any, fuzz_target: dict[str, Any]) -> None:
    case.call_and_validate(
        base_url=fuzz_target["base"],
        headers={"Authorization": f"Bearer {fuzz_target['token']}"},
        checks=CHECKS,
        timeout=10,
    )


@schema.include(path="/api/v1/stream").parametrize()
@settings(max_examples=15, deadline=None)
def test_stream_never_answers_server_errors(case: Any, fuzz_target: dict[str, Any]) -> None:
    request = case.as_transport_kwargs(
        base_url=fuzz_target["base"],
        headers={"Authorization": f"Bearer {fuzz_target['token']}"},
    )
    with requests.request(**request, stream=True, timeout=10) as response:
        assert response.status_code < 500, response.text
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("text/event-stream")
