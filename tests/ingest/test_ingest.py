"""Ingest end to end: stack broker → in-process worker → TimescaleDB, and the hook."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import psycopg
import pytest

from core.settings import Settings
from ingest import IngestBatch, IngestConfig, IngestMetrics, render_metrics
from tests.ingest.support import (
    Recorder,
    dead_letters,
    gps_count,
    now_ms,
    publish_all,
    register_devices,
    running_ingestor,
    scalar,
    wait_async,
)

ConfigFactory = Callable[..., IngestConfig]


def topic(device: str, channel: str) -> str:
    return f"anxiao/v1/dev/{device}/{channel}"


def rows(database_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()


def notify_fleet(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("NOTIFY anxiao_fleet")


async def publish(settings: Settings, messages: list[tuple[str, bytes]], client_id: str) -> None:
    import asyncio

    await asyncio.to_thread(publish_all, settings.mqtt, messages, client_id=client_id)


def total_readings(database_url: str, prefix: str) -> int:
    return int(
        scalar(
            database_url,
            "SELECT (SELECT count(*) FROM gps_fixes g JOIN devices d ON d.key = g.device_key"
            "        WHERE d.id LIKE %s)"
            " + (SELECT count(*) FROM sensor_events s JOIN devices d ON d.key = s.device_key"
            "        WHERE d.id LIKE %s)"
            " + (SELECT count(*) FROM heartbeats h JOIN devices d ON d.key = h.device_key"
            "        WHERE d.id LIKE %s)",
            prefix + "%",
            prefix + "%",
            prefix + "%",
        )
    )


async def test_every_channel_round_trips(
    broker: Settings, database_url: str, make_config: ConfigFactory, prefix: str
) -> None:
    gps, late, smoke, button, beat = (f"{prefix}{n}" for n in ("gps", "late", "smk", "btn", "hb"))
    keys = register_devices(database_url, [gps, late])
    keys |= register_devices(database_url, [smoke], "smoke")
    keys |= register_devices(database_url, [button, beat], "button")
    t = now_ms() - 60_000
    full_fix = {
        "ts": t,
        "lat": 31.3012345,
        "lon": 120.7098765,
        "speed": 42.5,
        "heading": 271.5,
        "alt": 12.25,
        "sats": 9,
        "hdop": 0.8,
        "seq": 4294967295,
        "alarm": (1 << 0) | (1 << 28),
        "status": 3,
    }
    messages = [
        (topic(gps, "gps"), full_fix),
        (topic(gps, "gps"), {"ts": t + 1000, "lat": 31.3, "lon": 120.7}),
        # 2 s after the first fix, as an RFC 3339 string in Beijing time.
        (topic(gps, "gps"), {"ts": _rfc3339(t + 2000), "lat": 31.4, "lon": 120.8}),
        (
            topic(late, "gps"),
            {
                "fixes": [
                    {"ts": t - 3_600_000 + i * 1000, "lat": 31.0, "lon": 120.0} for i in range(3)
                ],
                "backfill": True,
            },
        ),
        (topic(late, "gps"), {"fixes": [{"ts": t, "lat": 31.5, "lon": 120.5}]}),
        (topic(smoke, "smoke"), {"ts": t, "state": "alarm", "obscuration": 4.5, "battery": 90}),
        (topic(smoke, "smoke"), {"ts": t + 1, "state": "test"}),
        (topic(button, "button"), {"ts": t, "event": "press"}),
        (topic(beat, "heartbeat"), {"ts": t, "battery": 77, "rssi": -65}),
        (topic(button, "heartbeat"), {"ts": t + 5}),
    ]
    recorder = Recorder()
    async with running_ingestor(make_config(prefix), recorder) as ingestor:
        await publish(broker, [(tp, orjson.dumps(p)) for tp, p in messages], f"{prefix}pub")
        await wait_async(
            lambda: total_readings(database_url, prefix) == 12, timeout_s=20, what="12 readings"
        )
        await wait_async(
            lambda: sum(b.readings for b in recorder.batches) >= 12,
            timeout_s=10,
            what="the hook",
        )
        metrics = ingestor.metrics

    fixes = rows(
        database_url,
        "SELECT (extract(epoch FROM ts) * 1000)::int8, lat, lon, speed_kmh, heading_deg, alt_m,"
        " sats, hdop, seq, alarm, status, backfill FROM gps_fixes WHERE device_key = %s"
        " ORDER BY ts",
        keys[gps],
    )
    assert fixes[0] == (
        t,
        31.3012345,
        120.7098765,
        42.5,
        271.5,
        12.25,
        9,
        pytest.approx(0.8),
        4294967295,
        (1 << 0) | (1 << 28),
        3,
        False,
    )
    assert fixes[1] == (t + 1000, 31.3, 120.7, *[None] * 8, False)
    assert fixes[2][:3] == (t + 2000, 31.4, 120.8)
    late_rows = rows(
        database_url,
        "SELECT (extract(epoch FROM ts) * 1000)::int8, backfill FROM gps_fixes"
        " WHERE device_key = %s ORDER BY ts",
        keys[late],
    )
    assert late_rows == [(t - 3_600_000 + i * 1000, True) for i in range(3)] + [(t, False)]
    sensors = rows(
        database_url,
        "SELECT device_key, channel, (extract(epoch FROM ts) * 1000)::int8, state, obscuration,"
        " battery_pct FROM sensor_events WHERE device_key = ANY(%s) ORDER BY ts",
        [keys[smoke], keys[button]],
    )
    assert sorted(sensors) == sorted(
        [
            (keys[smoke], "smoke", t, "alarm", 4.5, 90.0),
            (keys[smoke], "smoke", t + 1, "test", None, None),
            (keys[button], "button", t, "press", None, None),
        ]
    )
    beats = rows(
        database_url,
        "SELECT device_key, (extract(epoch FROM ts) * 1000)::int8, battery_pct, rssi_dbm"
        " FROM heartbeats WHERE device_key = ANY(%s) ORDER BY device_key",
        [keys[beat], keys[button]],
    )
    assert sorted(beats) == sorted(
        [(keys[beat], t, 77.0, -65.0), (keys[button], t + 5, None, None)]
    )
    assert dead_letters(database_url, prefix) == []

    # Device status: receive time, newest event time, clock offset of live data.
    status = {
        k: (seen, event, offset)
        for k, seen, event, offset in rows(
            database_url,
            "SELECT device_key, extract(epoch FROM now() - last_seen_at),"
            " (extract(epoch FROM last_event_at) * 1000)::int8, clock_offset_s"
            " FROM device_status WHERE device_key = ANY(%s)",
            list(keys.values()),
        )
    }
    assert set(status) == set(keys.values())
    assert 0 <= status[keys[gps]][0] < 60
    assert status[keys[gps]][1] == t + 2000
    assert status[keys[gps]][2] == pytest.approx(-58, abs=3)  # ts is ~58 s behind receive
    assert status[keys[late]][1] == t
    assert status[keys[late]][2] == pytest.approx(-60, abs=3)  # not the backfill's hour
    assert status[keys[button]][1] == t + 5

    # The hook saw every reading once, as columns, after the commit.
    gps_rows = _concat(recorder.batches, "gps")
    assert len(gps_rows["ts_ms"]) == 7
    assert gps_rows["new"].all()
    assert set(zip(gps_rows["device_key"].tolist(), gps_rows["ts_ms"].tolist(), strict=True)) == {
        *((keys[gps], t + i * 1000) for i in range(3)),
        *((keys[late], t - 3_600_000 + i * 1000) for i in range(3)),
        (keys[late], t),
    }
    assert gps_rows["backfill"].sum() == 3
    assert sorted(_concat(recorder.batches, "smoke")["state"].tolist()) == ["alarm", "test"]
    assert _concat(recorder.batches, "button")["event"].tolist() == ["press"]
    assert len(_concat(recorder.batches, "heartbeat")["ts_ms"]) == 2
    assert all(b.committed_ms >= b.gps.received_ms.max(initial=0) for b in recorder.batches)

    assert metrics.readings_stored["gps"] >= 7
    assert metrics.messages_acked >= len(messages)


def _rfc3339(ms: int) -> str:
    from datetime import datetime, timedelta, timezone

    beijing = timezone(timedelta(hours=8))
    return datetime.fromtimestamp(ms / 1000, beijing).isoformat(timespec="milliseconds")


def _concat(batches: list[IngestBatch], channel: str) -> dict[str, np.ndarray]:
    sets = [getattr(b, channel) for b in batches]
    names = sets[0].__dataclass_fields__ if sets else {}
    return {n: np.concatenate([getattr(s, n) for s in sets]) for n in names}


async def test_duplicates_and_reordering_give_one_row_per_reading(
    broker: Settings, database_url: str, make_config: ConfigFactory, prefix: str
) -> None:
    devices = [f"{prefix}{i}" for i in range(5)]
    keys = register_devices(database_url, devices)
    smoke = f"{prefix}smk"
    keys |= register_devices(database_url, [smoke], "smoke")
    t = now_ms() - 600_000
    readings: list[tuple[str, bytes]] = []
    for i in range(300):
        device = devices[i % 5]
        readings.append(
            (topic(device, "gps"), orjson.dumps({"ts": t + i * 100, "lat": 31.3, "lon": 120.7}))
        )
    for i in range(40):
        readings.append((topic(smoke, "smoke"), orjson.dumps({"ts": t + i, "state": "normal"})))
    # The same fixes again, some of them inside GPS batches (a redelivery can
    # regroup readings), and a batch that repeats a fix within itself.
    batch_fixes = [{"ts": t + i * 100, "lat": 31.3, "lon": 120.7} for i in range(0, 300, 5)]
    rng = random.Random(7)
    first = readings[:]
    rng.shuffle(first)
    second = [
        *readings,
        (topic(devices[0], "gps"), orjson.dumps({"fixes": batch_fixes + batch_fixes[:3]})),
    ]
    rng.shuffle(second)
    recorder = Recorder()
    async with running_ingestor(make_config(prefix, batch_max_messages=97), recorder) as ingestor:
        metrics = ingestor.metrics
        await publish(broker, first, f"{prefix}pub1")
        await wait_async(
            lambda: sum(b.readings for b in recorder.batches) == 340,
            timeout_s=20,
            what="340 readings at the hook",
        )
        assert sum(metrics.duplicates.values()) == 0
        await publish(broker, second, f"{prefix}pub2")
        # Every reading of the second round is a duplicate: 340 single messages
        # and the 63 fixes of the batch (3 of them repeated within it).
        await wait_async(
            lambda: sum(metrics.duplicates.values()) == 403,
            timeout_s=20,
            what="403 duplicates",
        )
    assert total_readings(database_url, prefix) == 340
    assert dead_letters(database_url, prefix) == []
    gps = _concat(recorder.batches, "gps")
    new_per_reading = Counter(
        (k, ts)
        for k, ts, new in zip(
            gps["device_key"].tolist(), gps["ts_ms"].tolist(), gps["new"].tolist(), strict=True
        )
        if new
    )
    assert len(new_per_reading) == 300 and set(new_per_reading.values()) == {1}
    assert _concat(recorder.batches, "smoke")["new"].sum() == 40
    assert metrics.readings_stored["gps"] + metrics.readings_stored["smoke"] == 340


async def test_bad_messages_become_dead_letters_and_good_fixes_stay(
    broker: Settings, database_url: str, make_config: ConfigFactory, prefix: str
) -> None:
    gps, retired = f"{prefix}gps", f"{prefix}old"
    keys = register_devices(database_url, [gps, retired])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE devices SET retired_at = now() WHERE id = %s", (retired,))
    t = now_ms() - 10_000
    good = {"ts": t, "lat": 31.3, "lon": 120.7}
    batch = {
        "fixes": [good, {**good, "ts": t + 1, "lat": 99}, {**good, "ts": t + 2}],
        "backfill": False,
    }
    cases: list[tuple[str, bytes, str | None]] = [
        (topic(gps, "gps"), b"x" * (256 * 1024 + 1), "too_large"),
        (topic(gps, "temperature"), orjson.dumps(good), "bad_topic"),
        (topic(f"{prefix}bad id", "gps"), orjson.dumps(good), "bad_topic"),
        (topic(f"{prefix}ghost", "gps"), orjson.dumps(good), "unknown_device"),
        (topic(retired, "gps"), orjson.dumps(good), "unknown_device"),
        (topic(gps, "gps"), b'{"ts": 1, "lat":', "bad_json"),
        (topic(gps, "gps"), orjson.dumps({"ts": t, "lat": 31.3}), "missing_field"),
        (topic(gps, "gps"), orjson.dumps({**good, "ts": "2026-11-23T07:31:05"}), "bad_time"),
        (topic(gps, "gps"), orjson.dumps({**good, "ts": t - 8 * 86_400_000}), "bad_time"),
        (topic(gps, "gps"), orjson.dumps({**good, "speed": 300}), "out_of_range"),
        (topic(gps, "gps"), orjson.dumps(batch), None),
    ]
    async with running_ingestor(make_config(prefix)) as ingestor:
        await publish(broker, [(tp, p) for tp, p, _ in cases], f"{prefix}pub")
        await wait_async(
            lambda: (
                len(dead_letters(database_url, prefix)) == 11
                and gps_count(database_url, prefix) == 2
            ),
            timeout_s=20,
            what="11 dead letters and 2 fixes",
        )
        metrics = ingestor.metrics
    letters = dead_letters(database_url, prefix)
    expected = [(tp, p, r) for tp, p, r in cases if r is not None]
    expected.append((topic(gps, "gps"), orjson.dumps(batch["fixes"][1]), "out_of_range"))
    assert sorted((d["topic"], d["payload"], d["reason"]) for d in letters) == sorted(expected)
    by_reason = {d["reason"]: d for d in letters}
    assert by_reason["unknown_device"]["device_id"] in {f"{prefix}ghost", retired}
    assert all(d["detail"] for d in letters)
    stored = rows(
        database_url,
        "SELECT (extract(epoch FROM ts) * 1000)::int8 FROM gps_fixes"
        " WHERE device_key = %s ORDER BY ts",
        keys[gps],
    )
    assert stored == [(t,), (t + 2,)]
    assert metrics.dead_letters["bad_time"] >= 2 and metrics.dead_letters["too_large"] >= 1


async def test_devices_registered_or_retired_while_running(
    broker: Settings, database_url: str, make_config: ConfigFactory, prefix: str
) -> None:
    early, late = f"{prefix}early", f"{prefix}late"
    register_devices(database_url, [early])
    t = now_ms() - 10_000
    fix = orjson.dumps({"ts": t, "lat": 31.3, "lon": 120.7})
    async with running_ingestor(make_config(prefix)):
        register_devices(database_url, [late])
        notify_fleet(database_url)  # what a fleet import sends
        await publish(broker, [(topic(late, "gps"), fix)], f"{prefix}pub1")
        await wait_async(lambda: gps_count(database_url, prefix) == 1, timeout_s=20, what="fix")
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE devices SET retired_at = now() WHERE id = %s", (early,))
            conn.execute("NOTIFY anxiao_fleet")
        await publish(broker, [(topic(early, "gps"), fix)], f"{prefix}pub2")
        await wait_async(
            lambda: len(dead_letters(database_url, prefix)) == 1, timeout_s=20, what="dead letter"
        )
    assert [d["reason"] for d in dead_letters(database_url, prefix)] == ["unknown_device"]


async def test_a_failing_hook_does_not_stop_ingest(
    broker: Settings, database_url: str, make_config: ConfigFactory, prefix: str
) -> None:
    device = f"{prefix}gps"
    register_devices(database_url, [device])
    calls = []

    async def broken(batch: IngestBatch) -> None:
        calls.append(batch.readings)
        raise RuntimeError("rules exploded")

    t = now_ms() - 10_000
    messages = [
        (topic(device, "gps"), orjson.dumps({"ts": t + i, "lat": 31.3, "lon": 120.7}))
        for i in range(50)
    ]
    async with running_ingestor(make_config(prefix), broken) as ingestor:
        await publish(broker, messages, f"{prefix}pub")
        await wait_async(lambda: gps_count(database_url, prefix) == 50, timeout_s=20, what="rows")
        await wait_async(lambda: sum(calls) >= 50, timeout_s=10, what="hook calls")
        assert ingestor.metrics.hook_errors >= 1
        assert ingestor.metrics.messages_acked >= 50


def test_metrics_are_valid_prometheus_text() -> None:
    metrics = IngestMetrics()
    metrics.messages_received = 12
    metrics.dead_letters["bad_json"] = 2
    metrics.commit_seconds.observe([0.002, 0.02, 7.0, 11.0])
    metrics.batch_messages.observe(5000)
    text = render_metrics(metrics)
    assert text.endswith("\n")
    families: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            families[name] = kind
        elif not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert families["anxiao_ingest_messages_received_total"] == "counter"
    assert families["anxiao_ingest_commit_seconds"] == "histogram"
    assert samples["anxiao_ingest_messages_received_total"] == 12
    assert samples['anxiao_ingest_dead_letters_total{reason="bad_json"}'] == 2
    assert samples['anxiao_ingest_dead_letters_total{reason="too_large"}'] == 0
    assert samples['anxiao_ingest_commit_seconds_bucket{le="0.0025"}'] == 1
    assert samples['anxiao_ingest_commit_seconds_bucket{le="0.025"}'] == 2
    assert samples['anxiao_ingest_commit_seconds_bucket{le="10"}'] == 3
    assert samples['anxiao_ingest_commit_seconds_bucket{le="+Inf"}'] == 4
    assert samples["anxiao_ingest_commit_seconds_count"] == 4
    assert samples["anxiao_ingest_commit_seconds_sum"] == pytest.approx(18.022)
    assert samples['anxiao_ingest_batch_messages_bucket{le="5000"}'] == 1
    for name in samples:
        base = name.split("{")[0]
        assert base in families or base.rsplit("_", 1)[0] in families, name
