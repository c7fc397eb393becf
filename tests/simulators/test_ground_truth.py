"""Ground truth agrees with what a real MQTT subscriber receives from a simulated run.

One run (5 buses, 2 schools, Friday 06:00 to Saturday 10:00, every scenario)
is published through the local Mosquitto with the simulator's own publisher
and captured by a paho subscriber on the service account (QoS 1). A plain
reference detector then re-derives every episode from the captured bytes.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections import Counter

import orjson
import paho.mqtt.client as mqtt
import pytest

from core.settings import Settings
from simulators import RunSpec, Simulation, simulate
from simulators.mqtt import MqttPublisher
from simulators.publisher import publish_stream
from tests.simulators.reference import (
    Found,
    Reference,
    parse_time,
    parse_ts,
    readings_by_device,
)
from tests.support import connect_mqtt

FRIDAY = "2026-11-27T06:00:00+08:00"


class Capture:
    """A QoS 1 subscriber to every device topic that keeps messages of one id prefix."""

    def __init__(self, settings: Settings, prefix: str) -> None:
        self.prefix = f"anxiao/v1/dev/{prefix}"
        self.messages: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.client = connect_mqtt(settings.mqtt, client_id=f"test-sim-capture-{prefix}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.subscribe("anxiao/v1/dev/#", qos=1)
        assert self.subscribed.wait(10), "no SUBACK from the broker"

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith(self.prefix):
            with self.cond:
                self.messages.append((msg.topic, bytes(msg.payload)))
                self.cond.notify_all()

    def wait_for(self, count: int, timeout_s: float = 60.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.messages) >= count, timeout_s), (
                f"captured {len(self.messages)} of {count}"
            )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def run(broker: Settings) -> tuple[Simulation, list[tuple[str, bytes]]]:
    prefix = f"t{os.getpid()}{secrets.token_hex(2)}-"
    sim = simulate(RunSpec(start=FRIDAY, duration_s=28 * 3600, id_prefix=prefix))
    capture = Capture(broker, prefix)
    try:
        url = broker.mqtt_gateway
        client = MqttPublisher.for_url(url, client_id=f"test-sim-pub-{prefix}")
        client.connect()
        try:
            stats = publish_stream(sim.messages, client, speed=None, progress=False)
        finally:
            client.close()
        assert stats.messages == len(sim.messages)
        capture.wait_for(len(sim.messages))
    finally:
        capture.close()
    return sim, capture.messages


@pytest.fixture(scope="module")
def found(run: tuple[Simulation, list[tuple[str, bytes]]]) -> list[Found]:
    sim, captured = run
    reference = Reference(sim.fleet, sim.filings)
    return reference.detect(readings_by_device(captured))


def _ms(text: str | None) -> int | None:
    return None if text is None else parse_time(text)


def test_every_scenario_is_placed_as_intended(run):
    sim, _ = run
    assert sim.skipped == []
    assert {r["scenario"] for r in sim.ground_truth} == set(RunSpec().scenarios)
    assert [r for r in sim.ground_truth if "intended" in r] == []


def test_capture_is_the_stream(run):
    sim, captured = run
    sent = Counter((m.topic, m.payload) for m in sim.messages)
    got = Counter(captured)
    assert got == sent


def test_each_expected_alert_is_in_the_data(run, found):
    sim, _ = run
    alerts = [r for r in sim.ground_truth if r["expected"] == "alert" and r["kind"] != "clock_skew"]
    assert len(alerts) >= 15
    index = {(f.device, f.kind, f.start_ms): f for f in found if not f.filed}
    for record in alerts:
        key = (record["device"], record["kind"], _ms(record["start"]))
        assert key in index, f"not re-derived from the capture: {record}"
        episode = index[key]
        assert episode.end_ms == _ms(record["end"]), record
        if record["kind"] == "speeding":
            assert episode.extra["late"] == record["late"], record


def test_no_alert_beyond_the_ground_truth(run, found):
    """Background traffic (noise, drops, backfill, zones) raises nothing unscripted."""
    sim, _ = run
    expected = {
        (r["device"], r["kind"], _ms(r["start"]))
        for r in sim.ground_truth
        if r["expected"] == "alert"
    }
    extra = [f for f in found if not f.filed and (f.device, f.kind, f.start_ms) not in expected]
    assert extra == []


def test_near_misses_stay_below_their_thresholds(run, found):
    sim, _ = run
    near = {r["scenario"]: r for r in sim.ground_truth if r["expected"] == "none"}
    assert set(near) == {
        "speeding_short",
        "route_detour_filed",
        "route_swerve",
        "route_edge_jitter",
        "out_of_hours_night_filed",
        "out_of_hours_holiday_filed",
        "gps_clock_skew_small",
        "smoke_test",
        "smoke_silent_short",
        "button_test",
    }
    assert 0 < near["speeding_short"]["duration_s"] < 10
    assert near["speeding_short"]["max_speed_kmh"] > near["speeding_short"]["limit_kmh"]
    assert near["route_swerve"]["max_distance_m"] < near["route_swerve"]["corridor_m"]
    jitter = near["route_edge_jitter"]
    assert jitter["readings_outside"] > 0, "the edge scenario never touched the edge"
    assert jitter["duration_s"] < 30
    assert near["smoke_silent_short"]["gap_s"] < near["smoke_silent_short"]["threshold_s"]
    assert abs(near["gps_clock_skew_small"]["max_skew_s"]) <= 300
    # Filed episodes happen in the data but a filing covers each of them.
    for name, kind in (
        ("route_detour_filed", "route_deviation"),
        ("out_of_hours_night_filed", "out_of_hours"),
        ("out_of_hours_holiday_filed", "out_of_hours"),
    ):
        record = near[name]
        match = [f for f in found if f.device == record["device"] and f.kind == kind and f.filed]
        assert [f.start_ms for f in match] == [_ms(record["start"])], name


def test_clock_skew_is_in_the_stream(run):
    """Skew is judged against receive time: the simulated send time of each message."""
    sim, _ = run
    for record in (r for r in sim.ground_truth if r["kind"] == "clock_skew"):
        lags_s = []
        for m in sim.messages:
            if f"/{record['device']}/" in m.topic:
                body = orjson.loads(m.payload)
                readings = body.get("fixes", [body])
                lags_s += [(m.send_ms - parse_ts(r["ts"])) / 1000 for r in readings]
        assert (max(lags_s) > 300) == (record["expected"] == "alert"), record
        assert record["clock"] == "live"


def test_filings_are_post_bodies(run):
    sim, _ = run
    assert sim.filings
    for f in sim.filings:
        assert set(f) <= {"bus", "kind", "from", "to", "reason", "path"}
        assert f["kind"] in ("movement", "detour")
        assert parse_time(f["from"]) < parse_time(f["to"])
        assert f["bus"] in {b["id"] for b in sim.fleet["buses"]}


@pytest.mark.parametrize(("seed", "buses", "schools"), [(1, 8, 3), (2, 6, 2), (3, 12, 4)])
def test_ground_truth_holds_for_other_seeds(seed, buses, schools):
    """The same checks on the stream itself (no broker), for other cities."""
    sim = simulate(
        RunSpec(buses=buses, schools=schools, seed=seed, start=FRIDAY, duration_s=28 * 3600)
    )
    assert sim.skipped == []
    assert [r for r in sim.ground_truth if "intended" in r] == []
    found = Reference(sim.fleet, sim.filings).detect(
        readings_by_device([(m.topic, m.payload) for m in sim.messages])
    )
    expected = {
        (r["device"], r["kind"], _ms(r["start"]), _ms(r["end"]))
        for r in sim.ground_truth
        if r["expected"] == "alert" and r["kind"] != "clock_skew"
    }
    got = {(f.device, f.kind, f.start_ms, f.end_ms) for f in found if not f.filed}
    assert got == expected
