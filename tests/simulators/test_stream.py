"""The message stream's contract shape, impairments and batching (no broker needed)."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import datetime

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators import RunSpec, simulate
from simulators._time import parse_rfc3339_ms

SPEC = RunSpec(buses=8, schools=3, duration_s=3 * 3600, seed=5)


@pytest.fixture(scope="module")
def sim():
    return simulate(SPEC)


def _ts(value):
    if isinstance(value, int):
        return value
    assert datetime.fromisoformat(value).tzinfo is not None
    return parse_rfc3339_ms(value)


def _readings(sim):
    for m in sim.messages:
        body = orjson.loads(m.payload)
        channel = m.topic.rsplit("/", 1)[1]
        if "fixes" in body:
            assert set(body) == {"fixes", "backfill"} and 1 <= len(body["fixes"]) <= 1000
            for fix in body["fixes"]:
                yield m, channel, fix, body["backfill"]
        else:
            yield m, channel, body, None


def test_payloads_follow_the_contract(sim):
    channels = Counter()
    for _m, channel, body, _backfill in _readings(sim):
        channels[channel] += 1
        ts = _ts(body["ts"])
        assert SPEC.start_ms - 600_000 <= ts < SPEC.end_ms
        if channel == "gps":
            assert -90 <= body["lat"] <= 90 and -180 <= body["lon"] <= 180
            assert 0 <= body["speed"] <= 250 and 0 <= body["heading"] < 360
            assert (
                0 <= body["seq"] < 2**32 and body["alarm"] >= 0 and body["status"] in (0, 1, 2, 3)
            )
        elif channel == "smoke":
            assert body["state"] in ("normal", "alarm", "fault", "test")
        elif channel == "button":
            assert body["event"] in ("press", "reset", "tamper", "fault", "restore", "test")
        else:
            assert set(body) <= {"ts", "battery", "rssi"}
    assert set(channels) == {"gps", "heartbeat", "smoke", "button"}


def test_impairments_are_present(sim):
    payloads = Counter(m.payload for m in sim.messages)
    assert any(n > 1 for n in payloads.values()), "no duplicate delivery"
    backfills = [b for _m, c, _f, b in _readings(sim) if b]
    assert backfills, "no backfill batch"
    seqs = {}
    gaps = 0
    out_of_order = 0
    last_ts = {}
    for m, channel, fix, _b in _readings(sim):
        if channel != "gps":
            continue
        device = m.topic.split("/")[3]
        ts = _ts(fix["ts"])
        if ts < last_ts.get(device, 0):
            out_of_order += 1
        last_ts[device] = max(ts, last_ts.get(device, 0))
        seqs.setdefault(device, set()).add(fix["seq"])
    for values in seqs.values():
        ordered = sorted(values)
        gaps += sum(1 for a, b in itertools.pairwise(ordered) if b - a > 1)
    assert out_of_order > 0, "nothing arrives out of order"
    assert gaps > 0, "no fix was ever lost"
    assert any(s > 4294967000 for v in seqs.values() for s in v) and any(
        s < 1000 for v in seqs.values() for s in v
    ), "the wrapping seq counter did not wrap"


def test_clean_run_has_no_impairments():
    sim = simulate(RunSpec(buses=3, schools=1, duration_s=3600, scenarios=(), impairments=False))
    payloads = Counter(m.payload for m in sim.messages)
    assert max(payloads.values()) == 1
    assert not any(b'"backfill":true' in m.payload for m in sim.messages)


def test_reporting_intervals_and_parked_heartbeats(sim):
    gaps = Counter()
    last = {}
    for m, channel, fix, backfill in _readings(sim):
        if channel == "gps" and backfill is None:
            device = m.topic.split("/")[3]
            ts = _ts(fix["ts"])
            if device in last and fix["status"] & 1:
                gaps[(ts - last[device]) // 1000] += 1
            last[device] = ts
    assert {1, 2, 5}.issubset(gaps) or {2, 5, 10}.issubset(gaps)
    heartbeats = [m for m in sim.messages if m.topic.endswith("/heartbeat") and "/GPS-" in m.topic]
    assert heartbeats, "parked buses send no heartbeat"


def test_batches_carry_the_same_readings():
    one = simulate(RunSpec(buses=4, schools=1, duration_s=3600, scenarios=(), seed=2))
    fifty = simulate(RunSpec(buses=4, schools=1, duration_s=3600, scenarios=(), seed=2, batch=50))
    cutoff = one.spec.end_ms - 120_000

    def fixes(sim):
        out = set()
        for m in sim.messages:
            if m.topic.endswith("/gps"):
                body = orjson.loads(m.payload)
                for fix in body.get("fixes", [body]):
                    if _ts(fix["ts"]) < cutoff:
                        out.add((m.topic, orjson.dumps(fix)))
        return out

    assert fixes(one) == fixes(fifty)
    sizes = [len(orjson.loads(m.payload).get("fixes", [])) for m in fifty.messages
             if m.topic.endswith("/gps") and b'"backfill":false' in m.payload]  # fmt: skip
    assert sizes and max(sizes) <= 50 and max(sizes) > 10
    gps = [sum(1 for m in s.messages if m.topic.endswith("/gps")) for s in (one, fifty)]
    assert gps[1] < gps[0] / 3


def test_ground_truth_lines(sim):
    lines = sim.ground_truth_bytes().splitlines()
    assert len(lines) == len(sim.ground_truth) >= 20
    for line in lines:
        record = orjson.loads(line)
        assert list(record)[:5] == ["device", "kind", "start", "end", "expected"]
        assert record["expected"] in ("alert", "none")
        assert record["kind"] in (
            "speeding", "route_deviation", "out_of_hours", "device_offline",
            "smoke_alarm", "panic_button", "device_fault", "clock_skew",
        )  # fmt: skip
        for key in ("start", "end"):
            if record[key] is not None:
                assert datetime.fromisoformat(record[key]).utcoffset() is not None


@given(st.lists(st.integers(1_600_000_000_000, 1_900_000_000_000), max_size=50))
def test_vectorised_timestamps_match_the_scalar_ones(values):
    from simulators._time import format_rfc3339
    from simulators.stream import _rfc3339_many

    values += [1_795_384_800_000, 1_795_384_800_250]
    fast = _rfc3339_many(np.asarray(values, dtype=np.int64))
    assert fast == [format_rfc3339(v) for v in values]
