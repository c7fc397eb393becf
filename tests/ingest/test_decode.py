"""The decoder against contract §1, case by case and against the slow oracle."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import CHANNELS, Decoded, Limits, decode_messages
from ingest.decode import BatchDecoder, parse_ts_ms
from tests.ingest.oracle import expect

NOW_MS = 1_795_000_000_000  # 2026-11-17T...Z
LIMITS = Limits()
DIRECTORY = {"GPS-1": 1, "GPS-2": 2, "SMK-1": 3, "BTN-1": 4, "HB-1": 5}


def decode(messages: list[tuple[str, Any]], *, received_ms: int = NOW_MS) -> Decoded:
    topics = [t for t, _ in messages]
    payloads = [p if isinstance(p, bytes) else orjson.dumps(p) for _, p in messages]
    return decode_messages(
        topics,
        payloads,
        np.full(len(messages), received_ms, dtype=np.int64),
        directory=DIRECTORY,
        limits=LIMITS,
    )


def reasons(decoded: Decoded) -> list[str]:
    return decoded.dead.reason


def fix(**fields: Any) -> dict[str, Any]:
    return {"ts": NOW_MS - 1000, "lat": 31.3, "lon": 120.7, **fields}


GPS = "anxiao/v1/dev/GPS-1/gps"


# ------------------------------------------------------------ reason codes


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (GPS, b"x" * (256 * 1024 + 1), "too_large"),
        ("anxiao/v1/dev/GPS-1/temperature", fix(), "bad_topic"),
        ("anxiao/v1/dev/GPS-1/gps/extra", fix(), "bad_topic"),
        ("anxiao/v1/dev/bad id!/gps", fix(), "bad_topic"),
        ("anxiao/v1/dev//gps", fix(), "bad_topic"),
        ("anxiao/v2/dev/GPS-1/gps", fix(), "bad_topic"),
        ("anxiao/v1/dev/" + "A" * 65 + "/gps", fix(), "bad_topic"),
        ("anxiao/v1/dev/GHOST-1/gps", fix(), "unknown_device"),
        (GPS, b"{not json", "bad_json"),
        (GPS, b"\xff\xfe{}", "bad_json"),
        (GPS, b"[1, 2]", "bad_json"),
        (GPS, b'"just a string"', "bad_json"),
        (GPS, {"lat": 31.3, "lon": 120.7}, "missing_field"),
        (GPS, {"ts": NOW_MS, "lon": 120.7}, "missing_field"),
        (GPS, fix(lat=None), "missing_field"),
        (GPS, fix(ts="2026-11-17T07:31:05"), "bad_time"),
        (GPS, fix(ts="2026-11-17"), "bad_time"),
        (GPS, fix(ts=1.5e12), "bad_time"),
        (GPS, fix(ts=True), "bad_time"),
        (GPS, fix(ts=NOW_MS - 7 * 86_400_000 - 1), "bad_time"),
        (GPS, fix(ts=NOW_MS + 300_001), "bad_time"),
        (GPS, b'{"ts": 1180591620717411303424, "lat": 31.3, "lon": 120.7}', "bad_time"),
        (GPS, b'{"ts": 18446744073709551615, "lat": 31.3, "lon": 120.7}', "bad_time"),
        (GPS, fix(lat=90.5), "out_of_range"),
        (GPS, fix(lon=-180.1), "out_of_range"),
        (GPS, fix(lat=0, lon=0), "out_of_range"),
        (GPS, fix(lat="31.3"), "out_of_range"),
        (GPS, fix(lat=True), "out_of_range"),
        (GPS, fix(speed=250.1), "out_of_range"),
        (GPS, fix(speed=-1), "out_of_range"),
        (GPS, fix(heading=360), "out_of_range"),
        (GPS, fix(alt=1e9), "out_of_range"),
        (GPS, fix(sats=7.5), "out_of_range"),
        (GPS, fix(hdop=-0.1), "out_of_range"),
        (GPS, fix(seq=2**32), "out_of_range"),
        (GPS, fix(alarm=-1), "out_of_range"),
        (GPS, fix(status=1.0), "out_of_range"),
        (GPS, {"fixes": "many"}, "out_of_range"),
        (GPS, {"fixes": []}, "missing_field"),
        (GPS, {"fixes": [fix()] * 1001}, "out_of_range"),
        (GPS, {"fixes": [fix()], "backfill": "yes"}, "out_of_range"),
        ("anxiao/v1/dev/HB-1/heartbeat", {"battery": 50}, "missing_field"),
        ("anxiao/v1/dev/HB-1/heartbeat", {"ts": NOW_MS, "battery": 101}, "out_of_range"),
        ("anxiao/v1/dev/HB-1/heartbeat", {"ts": NOW_MS, "rssi": 3}, "out_of_range"),
        ("anxiao/v1/dev/SMK-1/smoke", {"ts": NOW_MS}, "missing_field"),
        ("anxiao/v1/dev/SMK-1/smoke", {"ts": NOW_MS, "state": "fire"}, "out_of_range"),
        ("anxiao/v1/dev/SMK-1/smoke", {"ts": NOW_MS, "state": ["alarm"]}, "out_of_range"),
        (
            "anxiao/v1/dev/SMK-1/smoke",
            {"ts": NOW_MS, "state": "alarm", "obscuration": -2},
            "out_of_range",
        ),
        ("anxiao/v1/dev/BTN-1/button", {"ts": NOW_MS, "event": "PRESS"}, "out_of_range"),
        ("anxiao/v1/dev/BTN-1/button", {"event": "press"}, "missing_field"),
    ],
)
def test_each_bad_message_gets_its_reason(topic: str, payload: Any, reason: str) -> None:
    decoded = decode([(topic, payload)])
    assert reasons(decoded) == [reason]
    assert decoded.readings == 0
    assert decoded.dead.topic == [topic]
    expected_payload = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    assert decoded.dead.payload == [expected_payload]
    assert decoded.dead.received_ms == [NOW_MS]
    assert decoded.dead.detail[0]


def test_missing_field_wins_over_other_problems() -> None:
    decoded = decode([(GPS, {"ts": "no offset", "lat": 91})])
    assert reasons(decoded) == ["missing_field"]
    assert "lon" in decoded.dead.detail[0]


def test_dead_letter_names_the_device_when_the_topic_does() -> None:
    decoded = decode(
        [("anxiao/v1/dev/GHOST-1/gps", fix()), (GPS, b"nope"), ("anxiao/v1/dev/a b/gps", fix())]
    )
    assert decoded.dead.device_id == ["GHOST-1", "GPS-1", None]
    assert decoded.unknown_ids == frozenset({"GHOST-1"})


# -------------------------------------------------------------------- time


@pytest.mark.parametrize(
    ("value", "expected_ms"),
    [
        (1_795_000_000_123, 1_795_000_000_123),
        ("2026-11-23T07:31:05+08:00", 1_795_390_265_000),
        ("2026-11-22T23:31:05Z", 1_795_390_265_000),
        ("2026-11-22t23:31:05z", 1_795_390_265_000),
        ("2026-11-22 23:31:05.5-00:00", 1_795_390_265_500),
        ("2026-11-22T23:31:05.123456789+00:00", 1_795_390_265_123),
        ("2026-11-23T07:31:05", None),
        ("2026-11-23T07:31+08:00", None),
        ("2026-02-30T07:31:05Z", None),
        ("2026-11-23T07:31:05+25:00", None),
        (" 2026-11-23T07:31:05Z", None),
        (1.795e12, None),
        (False, None),
        (None, None),
        ([1], None),
    ],
)
def test_parse_ts(value: object, expected_ms: int | None) -> None:
    assert parse_ts_ms(value) == expected_ms


def test_validity_window_is_inclusive() -> None:
    decoded = decode(
        [
            (GPS, fix(ts=NOW_MS - LIMITS.max_past_ms)),
            ("anxiao/v1/dev/GPS-2/gps", fix(ts=NOW_MS + LIMITS.max_future_ms)),
        ]
    )
    assert reasons(decoded) == []
    assert sorted(decoded.gps.ts_ms.tolist()) == [
        NOW_MS - LIMITS.max_past_ms,
        NOW_MS + LIMITS.max_future_ms,
    ]


def test_window_is_relative_to_each_message_receive_time() -> None:
    old = NOW_MS - 6 * 86_400_000
    decoded = decode_messages(
        [GPS, GPS],
        [orjson.dumps(fix(ts=old)), orjson.dumps(fix(ts=old + 1))],
        np.array([NOW_MS, NOW_MS + 2 * 86_400_000], dtype=np.int64),
        directory=DIRECTORY,
        limits=LIMITS,
    )
    assert decoded.gps.ts_ms.tolist() == [old]
    assert reasons(decoded) == ["bad_time"]


# ----------------------------------------------------------------- columns


def test_gps_columns_carry_every_field_with_units_and_dtypes() -> None:
    full = fix(
        ts="2026-11-17T08:00:00+08:00",
        lat=31.31,
        lon=120.72,
        speed=42.5,
        heading=359.9,
        alt=12.0,
        sats=9,
        hdop=0.8,
        seq=2**32 - 1,
        alarm=1 | 1 << 28,
        status=3,
    )
    bare = fix(ts=NOW_MS - 5)
    decoded = decode([(GPS, full), ("anxiao/v1/dev/GPS-2/gps", bare)])
    gps = decoded.gps
    assert len(gps) == 2
    dtypes = {name: getattr(gps, name).dtype for name in gps.__dataclass_fields__}
    assert dtypes == {
        "device_key": np.int32,
        "ts_ms": np.int64,
        "received_ms": np.int64,
        "lat": np.float64,
        "lon": np.float64,
        "speed_kmh": np.float32,
        "heading_deg": np.float32,
        "alt_m": np.float32,
        "sats": np.int16,
        "hdop": np.float32,
        "seq": np.int64,
        "alarm": np.int64,
        "status": np.int64,
        "backfill": np.bool_,
        "new": np.bool_,
    }
    first, second = gps.select(np.array([0])), gps.select(np.array([1]))
    assert first.device_key.tolist() == [1]
    assert first.ts_ms.tolist() == [1_794_873_600_000]
    assert first.received_ms.tolist() == [NOW_MS]
    assert (first.lat.tolist(), first.lon.tolist()) == ([31.31], [120.72])
    assert first.speed_kmh.tolist() == [42.5]
    assert first.heading_deg.tolist() == [pytest.approx(359.9, abs=1e-4)]
    assert (first.alt_m.tolist(), first.sats.tolist()) == ([12.0], [9])
    assert first.hdop.tolist() == [pytest.approx(0.8)]
    assert first.seq.tolist() == [2**32 - 1]
    assert first.alarm.tolist() == [1 | 1 << 28]
    assert first.status.tolist() == [3]
    assert second.device_key.tolist() == [2]
    for name in ("speed_kmh", "heading_deg", "alt_m", "hdop"):
        assert np.isnan(getattr(second, name)).all(), name
    for name in ("sats", "seq", "alarm", "status"):
        assert getattr(second, name).tolist() == [-1], name
    assert gps.new.all()
    assert not gps.backfill.any()


def test_batch_stores_good_fixes_and_dead_letters_each_bad_one() -> None:
    fixes = [
        fix(ts=NOW_MS - 4000),
        fix(ts=NOW_MS - 3000, lat=95),
        fix(ts=NOW_MS - 2000),
        {"lat": 31.3, "lon": 120.7},
        "not a fix",
        fix(ts=NOW_MS - 1000),
    ]
    decoded = decode([(GPS, {"fixes": fixes, "backfill": True})])
    assert decoded.gps.ts_ms.tolist() == [NOW_MS - 4000, NOW_MS - 2000, NOW_MS - 1000]
    assert decoded.gps.backfill.all()
    assert reasons(decoded) == ["out_of_range", "missing_field", "out_of_range"]
    assert [orjson.loads(p) for p in decoded.dead.payload] == [fixes[1], fixes[3], fixes[4]]
    assert [d.split(":")[0] for d in decoded.dead.detail] == ["fixes[1]", "fixes[3]", "fixes[4]"]


def test_batch_of_exactly_1000_fixes_is_accepted() -> None:
    fixes = [fix(ts=NOW_MS - i) for i in range(1000)]
    decoded = decode([(GPS, {"fixes": fixes})])
    assert len(decoded.gps) == 1000
    assert reasons(decoded) == []


def test_rows_are_sorted_by_device_and_time_and_deduplicated() -> None:
    messages = [
        ("anxiao/v1/dev/GPS-2/gps", fix(ts=NOW_MS - 10)),
        (GPS, fix(ts=NOW_MS - 5, speed=1)),
        (GPS, fix(ts=NOW_MS - 20)),
        (GPS, fix(ts=NOW_MS - 5, speed=2)),  # the same reading again: first arrival kept
        ("anxiao/v1/dev/GPS-2/gps", {"fixes": [fix(ts=NOW_MS - 10)]}),
    ]
    decoded = decode(messages)
    assert decoded.gps.device_key.tolist() == [1, 1, 2]
    assert decoded.gps.ts_ms.tolist() == [NOW_MS - 20, NOW_MS - 5, NOW_MS - 10]
    assert decoded.gps.speed_kmh.tolist()[1] == 1
    assert decoded.batch_duplicates == {"gps": 2, "heartbeat": 0, "smoke": 0, "button": 0}


def test_sensor_and_heartbeat_columns() -> None:
    decoded = decode(
        [
            ("anxiao/v1/dev/SMK-1/smoke", {"ts": NOW_MS, "state": "alarm", "obscuration": 3.5}),
            ("anxiao/v1/dev/SMK-1/smoke", {"ts": NOW_MS - 1, "state": "test", "battery": 80}),
            ("anxiao/v1/dev/BTN-1/button", {"ts": NOW_MS, "event": "restore"}),
            ("anxiao/v1/dev/HB-1/heartbeat", {"ts": NOW_MS, "battery": 55, "rssi": -71}),
            ("anxiao/v1/dev/GPS-1/heartbeat", {"ts": NOW_MS}),
        ]
    )
    assert reasons(decoded) == []
    assert decoded.smoke.state.tolist() == ["test", "alarm"]
    assert np.isnan(decoded.smoke.obscuration[0]) and decoded.smoke.obscuration[1] == 3.5
    assert decoded.smoke.battery_pct[0] == 80 and np.isnan(decoded.smoke.battery_pct[1])
    assert decoded.button.event.tolist() == ["restore"]
    assert decoded.button.device_key.tolist() == [4]
    assert decoded.heartbeat.device_key.tolist() == [1, 5]
    assert np.isnan(decoded.heartbeat.battery_pct[0])
    assert decoded.heartbeat.rssi_dbm[1] == -71


def test_many_chunks_give_the_same_result_as_one() -> None:
    messages = [
        (
            f"anxiao/v1/dev/GPS-{1 + i % 2}/gps",
            {"fixes": [fix(ts=NOW_MS - i * 10 - j) for j in range(7)]},
        )
        for i in range(300)
    ] + [(GPS, b"broken")] * 3
    payloads = [orjson.dumps(p) if not isinstance(p, bytes) else p for _, p in messages]
    topics = [t for t, _ in messages]
    received = np.full(len(messages), NOW_MS, dtype=np.int64)
    stepped = BatchDecoder(topics, payloads, received, directory=DIRECTORY, limits=LIMITS)
    steps = 0
    while not stepped.done:
        stepped.step(max_messages=13)
        steps += 1
    by_steps = stepped.result()
    whole = decode_messages(topics, payloads, received, directory=DIRECTORY, limits=LIMITS)
    assert steps > 10
    assert len(whole.gps) == 2100
    for name in whole.gps.__dataclass_fields__:
        assert np.array_equal(
            getattr(whole.gps, name), getattr(by_steps.gps, name), equal_nan=name != "backfill"
        ), name
    assert whole.dead.reason == by_steps.dead.reason == ["bad_json"] * 3


# ------------------------------------------------------ against the oracle

KNOWN = set(DIRECTORY)

#: Every bound of the contract and just beyond it.
EDGES = [0, -0.0, 1, -1, 0.5, 7.5, 90, 90.01, -90.01, 100, 100.5, 180, 180.01, 200, -200]
EDGES += [250, 250.01, 255, 256, 359.99, 360, 1000, 1000.1, 100_000, 100_001, -100_001]
EDGES += [2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
edges = st.sampled_from(EDGES)
numbers = st.one_of(
    edges,
    edges,
    st.integers(-400, 400),
    st.floats(-400, 400, allow_nan=False),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
)
junk = st.one_of(
    st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2), st.just({})
)
timestamps = st.one_of(
    st.integers(NOW_MS - 8 * 86_400_000, NOW_MS + 600_000),
    st.integers(NOW_MS - 3_600_000, NOW_MS),
    st.sampled_from(
        [
            "2026-11-17T08:00:00+08:00",
            "2026-11-17T00:00:00Z",
            "2026-11-17T08:00:00",
            "2026-11-10T00:00:00Z",
            "2026-13-01T00:00:00Z",
        ]
    ),
    junk,
    numbers,
)


valid_ts = st.one_of(
    st.integers(NOW_MS - LIMITS.max_past_ms, NOW_MS + LIMITS.max_future_ms),
    st.sampled_from(["2026-11-17T08:00:00+08:00", "2026-11-18T11:00:00.25Z"]),
)
dword = st.integers(0, 2**32 - 1)
#: Valid values of every field, per channel (required ones first).
VALID: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "gps": {
        "ts": valid_ts,
        "lat": st.floats(-90, 90),
        "lon": st.floats(-180, 180),
        "speed": st.floats(0, LIMITS.max_speed_kmh),
        "heading": st.floats(0, 360, exclude_max=True),
        "alt": st.floats(-100_000, 100_000),
        "sats": st.integers(0, 255),
        "hdop": st.floats(0, 1000),
        "seq": dword,
        "alarm": dword,
        "status": dword,
    },
    "heartbeat": {"ts": valid_ts, "battery": st.floats(0, 100), "rssi": st.floats(-200, 0)},
    "smoke": {
        "ts": valid_ts,
        "state": st.sampled_from(["normal", "alarm", "fault", "test"]),
        "obscuration": st.floats(0, 100),
        "battery": st.floats(0, 100),
    },
    "button": {
        "ts": valid_ts,
        "event": st.sampled_from(["press", "reset", "tamper", "fault", "restore", "test"]),
    },
}
#: Each field's bounds and the values just beyond them.
BOUNDS: dict[str, list[Any]] = {
    "lat": [-90, 90, -90.0001, 90.0001, 0],
    "lon": [-180, 180, -180.0001, 180.0001, 0],
    "speed": [0, LIMITS.max_speed_kmh, -0.001, LIMITS.max_speed_kmh + 0.001],
    "heading": [0, 359.999, 360, -0.001],
    "alt": [-100_000, 100_000, -100_000.5, 100_000.5],
    "sats": [0, 255, 256, -1, 7.5, 8.0],
    "hdop": [0, 1000, -0.001, 1000.001],
    "seq": [0, 2**32 - 1, 2**32, -1, 1.0],
    "alarm": [0, 2**32 - 1, 2**32, -1, 1.0],
    "status": [0, 2**32 - 1, 2**32, -1, 1.0],
    "battery": [0, 100, -0.001, 100.001],
    "rssi": [-200, 0, -200.001, 0.001],
    "obscuration": [0, 100, -0.001, 100.001],
    "state": ["normal", "ALARM", "", "fire"],
    "event": ["press", "Press", "", "release"],
}
REQUIRED = {"gps": 3, "heartbeat": 1, "smoke": 2, "button": 2}


def valid(channel: str) -> st.SearchStrategy[dict[str, Any]]:
    fields = VALID[channel]
    names = list(fields)
    required = {n: fields[n] for n in names[: REQUIRED[channel]]}
    optional = {n: fields[n] for n in names[REQUIRED[channel] :]}
    return st.fixed_dictionaries(required, optional=optional)


def mutated(channel: str) -> st.SearchStrategy[dict[str, Any]]:
    """A valid reading with one field changed to an edge value, junk, or removed."""

    def change(reading: dict[str, Any], name: str, value: Any, drop: bool) -> dict[str, Any]:
        changed = dict(reading)
        if drop:
            changed.pop(name, None)
        else:
            changed[name] = value
        return changed

    def field_and_value(name: str) -> st.SearchStrategy[tuple[str, Any]]:
        bad = st.sampled_from(BOUNDS.get(name, [])) if name in BOUNDS else timestamps
        return st.tuples(st.just(name), st.one_of(bad, bad, edges, junk))

    pick = st.sampled_from(list(VALID[channel])).flatmap(field_and_value)
    return st.builds(
        lambda reading, picked, drop: change(reading, picked[0], picked[1], drop),
        valid(channel),
        pick,
        st.booleans(),
    )


def readings(channel: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(valid(channel), mutated(channel), mutated(channel))


gps_documents = st.one_of(
    readings("gps"),
    st.builds(
        lambda fs, extra: {"fixes": fs, **extra},
        st.lists(st.one_of(readings("gps"), junk), max_size=6),
        st.one_of(st.just({}), st.one_of(st.booleans(), junk).map(lambda v: {"backfill": v})),
    ),
    st.builds(lambda v: {"fixes": v}, junk),
)
documents = {
    "gps": gps_documents,
    "heartbeat": readings("heartbeat"),
    "smoke": readings("smoke"),
    "button": readings("button"),
}
devices = st.sampled_from([*DIRECTORY, "GHOST-9", "bad id", ""])


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes]:
    channel = draw(st.sampled_from([*CHANNELS, "temp"]))
    topic = f"anxiao/v1/dev/{draw(devices)}/{channel}"
    kind = draw(st.sampled_from(["json", "json", "json", "bytes", "truncated"]))
    if kind == "bytes":
        return topic, draw(st.binary(max_size=40))
    document = draw(documents.get(channel, documents["gps"]))
    payload = orjson.dumps(document) if _dumpable(document) else b"{}"
    if kind == "truncated":
        payload = payload[: draw(st.integers(0, max(len(payload) - 1, 0)))]
    return topic, payload


def _dumpable(document: Any) -> bool:
    try:
        orjson.dumps(document)
    except TypeError:  # integers beyond 64 bits
        return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), min_size=1, max_size=25))
def test_decoder_agrees_with_the_oracle(batch: list[tuple[str, bytes]]) -> None:
    decoded = decode(batch)
    expected_rows: Counter[tuple[str, str, int]] = Counter()
    expected_dead: Counter[str] = Counter()
    for topic, payload in batch:
        for outcome in expect(topic, payload, NOW_MS, KNOWN, LIMITS):
            if outcome.channel is None:
                assert outcome.reason is not None
                expected_dead[outcome.reason] += 1
            else:
                assert outcome.ts_ms is not None
                expected_rows[(outcome.channel, topic.split("/")[3], outcome.ts_ms)] += 1
    keys = {v: k for k, v in DIRECTORY.items()}
    got_rows = Counter(
        (channel, keys[int(k)], int(t))
        for channel in CHANNELS
        for k, t in zip(
            getattr(decoded, channel).device_key, getattr(decoded, channel).ts_ms, strict=True
        )
    )
    assert Counter(decoded.dead.reason) == expected_dead
    assert got_rows == Counter(set(expected_rows))  # one row per reading
    assert sum(decoded.batch_duplicates.values()) == sum(expected_rows.values()) - len(
        expected_rows
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=30), st.binary(max_size=60)), max_size=20))
def test_arbitrary_input_is_always_accounted_for(batch: list[tuple[str, bytes]]) -> None:
    decoded = decode([(f"anxiao/v1/dev/{t}", p) for t, p in batch])
    # Arbitrary topics name no known device and arbitrary bytes are rarely
    # JSON objects: every message is at most one reading here.
    assert decoded.readings + len(decoded.dead) == len(batch)


BASE_READINGS: dict[str, dict[str, Any]] = {
    "gps": {
        "ts": NOW_MS - 1000,
        "lat": 31.3,
        "lon": 120.7,
        "speed": 10.0,
        "heading": 90.0,
        "alt": 5.0,
        "sats": 8,
        "hdop": 0.9,
        "seq": 7,
        "alarm": 0,
        "status": 3,
    },
    "heartbeat": {"ts": NOW_MS - 1000, "battery": 50, "rssi": -70},
    "smoke": {"ts": NOW_MS - 1000, "state": "normal", "obscuration": 1.0, "battery": 50},
    "button": {"ts": NOW_MS - 1000, "event": "press"},
}
DEVICE_OF = {"gps": "GPS-1", "heartbeat": "HB-1", "smoke": "SMK-1", "button": "BTN-1"}
EDGE_CASES = [
    (channel, name, value)
    for channel, reading in BASE_READINGS.items()
    for name in reading
    for value in [*BOUNDS.get(name, []), None, True, "1", [1], {}]
]


@pytest.mark.parametrize(("channel", "name", "value"), EDGE_CASES)
def test_every_bound_agrees_with_the_oracle(channel: str, name: str, value: Any) -> None:
    reading = {**BASE_READINGS[channel], name: value}
    topic = f"anxiao/v1/dev/{DEVICE_OF[channel]}/{channel}"
    payload = orjson.dumps(reading)
    (outcome,) = expect(topic, payload, NOW_MS, KNOWN, LIMITS)
    decoded = decode([(topic, payload)])
    if outcome.channel is None:
        assert decoded.dead.reason == [outcome.reason]
        assert decoded.readings == 0
    else:
        assert decoded.dead.reason == []
        assert len(getattr(decoded, channel)) == 1
