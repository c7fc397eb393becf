"""``anxiao serve`` as a user runs it: a real process, real broker, real database."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.credentials import create_token
from core.fleet import import_fleet
from core.settings import Settings
from tests.core.sample_fleet import sample_fleet
from tests.support import connect_mqtt, running_serve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def service(fresh_database_url: str, broker: Settings) -> Iterator[dict[str, Any]]:
    tag = f"sv{time.monotonic_ns() % 10**8}"
    import_fleet(sample_fleet(tag), database_url=fresh_database_url)
    with running_serve(
        fresh_database_url, clock="event", client_id=f"serve-test-{tag}", root=ROOT
    ) as (base, process):
        token = create_token(database_url=fresh_database_url, role="monitor", scope_id=None)
        yield {"base": base, "tag": tag, "token": token, "process": process}


def test_serve_ingests_and_answers(service: dict[str, Any], broker: Settings) -> None:
    tag, headers = service["tag"], {"Authorization": f"Bearer {service['token']}"}
    device = f"GPS-B1-{tag}"
    gateway = connect_mqtt(broker.mqtt_gateway, client_id=f"gw-{tag}")
    try:
        # A fix of a minute ago: ingest refuses one older than max_past_s (7 days), so a
        # fixed date would stop being stored a week after it was written.
        at = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
        fix = {"ts": at.isoformat(), "lat": 31.305, "lon": 120.71, "speed": 35.5}
        gateway.publish(f"anxiao/v1/dev/{device}/gps", json.dumps(fix), qos=1).wait_for_publish(5)
    finally:
        gateway.disconnect()
        gateway.loop_stop()
    with httpx.Client(base_url=service["base"], headers=headers, timeout=5.0) as http:
        deadline = time.monotonic() + 15
        while True:  # the fix is committed asynchronously; poll the API until it shows
            buses = http.get("/api/v1/live/buses").json()
            mine = [b for b in buses if b["bus_id"] == f"B1-{tag}"]
            if mine and mine[0]["ts"] is not None:
                break
            assert time.monotonic() < deadline, buses
            time.sleep(0.05)
        assert (mine[0]["lon"], mine[0]["lat"], mine[0]["speed_kmh"]) == (120.71, 31.305, 35.5)
        device_view = http.get(f"/api/v1/devices/{device}").json()
        assert dt.datetime.fromisoformat(device_view["last_event_at"]) == at
        metrics = http.get("/metrics").text
        assert 'anxiao_ingest_readings_stored_total{channel="gps"}' in metrics
    process = service["process"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
