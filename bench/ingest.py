"""Ingest throughput, each figure next to a baseline measured in the same run.

``single``: N one-fix GPS messages. ``ingest_msgs_per_s`` is anxiao's ingest
draining them into TimescaleDB (first message received to last batch
committed and acknowledged); ``broker_msgs_per_s`` is a minimal paho-mqtt
subscriber (same client library, QoS 1, manual ack, same Receive Maximum)
doing nothing but acknowledging the same stream from the same broker.

``batch``: M messages of 50 fixes each. ``ingest_fixes_per_s`` as above;
``copy_rows_per_s`` is a plain COPY of the same rows into the same indexed
hypertable (``gps_fixes``, emptied before each run) the way an application
writes one: asyncpg's ``copy_records_to_table`` from row tuples built before
the clock starts. ``copy_binary_rows_per_s`` is the database's ceiling: a
binary COPY stream encoded before the clock starts, no client work timed.

``ingest_cpu_us_per_msg`` (single) and ``ingest_cpu_us_per_fix`` (batch):
the CPU time (``time.process_time``) of the process running ingest during
the drain, per row stored: what one message costs ingest at full rate
(``bench/rules.py`` divides the rules' CPU per fix by it).

Method: both consumers' persistent sessions are created first, then a
separate publisher process publishes the stream once (QoS 1) and the broker
queues it for both; each consumer then drains its queue alone, so neither
competes with the publisher or with the other for the machine's 2 cores.
Each stream is measured in several rounds and the best figure of each side
counts (the machine is shared; the best is the least disturbed).
Everything runs on loopback against the local stack (``make stack-up``); a
throwaway database is created and dropped. The result is printed as one JSON
object and written to ``bench/results/ingest.json``.

    .venv/bin/python bench/ingest.py [--single 20000] [--batch 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import orjson
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.migrate import migrate  # noqa: E402
from core.settings import MqttUrl, Settings  # noqa: E402
from ingest import IngestBatch, IngestConfig, Ingestor  # noqa: E402
from ingest._pgcopy import CopyColumn, encode_copy  # noqa: E402

FIXES_PER_BATCH = 50
DEVICES = 200
RECEIVE_MAXIMUM = 20000
TOPIC = "anxiao/v1/dev/+/+"
DRAIN_TIMEOUT_S = 300.0


@dataclass
class Drain:
    """Progress of one consumer: readings seen, first and last times (seconds)."""

    seen: int = 0
    first: float = 0.0
    last: float = 0.0


# ------------------------------------------------------------------ the stream


def stream_rows(kind: str, count: int, base_ms: int) -> dict[str, np.ndarray]:
    """The fixes of the stream as columns: message index, device index, ts and values."""
    per_message = 1 if kind == "single" else FIXES_PER_BATCH
    message = np.repeat(np.arange(count), per_message)
    within = np.tile(np.arange(per_message), count)
    device = message % DEVICES
    ts_ms = base_ms + ((message // DEVICES) * per_message + within) * 1000
    return {
        "message": message,
        "device": device,
        "ts_ms": ts_ms,
        "lat": 31.30 + (ts_ms % 100_000) * 1e-7,
        "lon": 120.70 + device * 1e-4,
        "speed": (ts_ms % 600) / 10.0,
        "heading": (ts_ms % 3600) / 10.0,
    }


def payloads(kind: str, count: int, base_ms: int, prefix: str) -> list[tuple[str, bytes]]:
    """The stream's (topic, payload) pairs, the same for every consumer."""
    rows = stream_rows(kind, count, base_ms)
    fixes = [
        {"ts": t, "lat": la, "lon": lo, "speed": s, "heading": h}
        for t, la, lo, s, h in zip(
            rows["ts_ms"].tolist(),
            rows["lat"].tolist(),
            rows["lon"].tolist(),
            rows["speed"].tolist(),
            rows["heading"].tolist(),
            strict=True,
        )
    ]
    out = []
    for m in range(count):
        topic = f"anxiao/v1/dev/{prefix}{m % DEVICES}/gps"
        if kind == "single":
            body: dict[str, Any] = fixes[m]
        else:
            body = {
                "fixes": fixes[m * FIXES_PER_BATCH : (m + 1) * FIXES_PER_BATCH],
                "backfill": False,
            }
        out.append((topic, orjson.dumps(body)))
    return out


def publish_main(args: argparse.Namespace) -> int:
    """The publisher process: publish the stream at QoS 1, return once all are acknowledged."""
    url = MqttUrl(args.mqtt_url)
    messages = payloads(args.publish, args.count, args.base_ms, args.prefix)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{args.prefix}pub", protocol=mqtt.MQTTv5
    )
    client.username_pw_set(url.username, url.password)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(url.host, url.port)
    client.loop_start()
    info = None
    for topic, payload in messages:
        info = client.publish(topic, payload, qos=1)
    if info is not None:
        info.wait_for_publish(timeout=DRAIN_TIMEOUT_S)
    client.disconnect()
    client.loop_stop()
    return 0


# -------------------------------------------------------------------- helpers


def connect(url: MqttUrl, client_id: str, *, clean: bool, expiry_s: int) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    client.username_pw_set(url.username, url.password)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = expiry_s
    properties.ReceiveMaximum = RECEIVE_MAXIMUM
    answered = threading.Event()
    client.on_connect = lambda *_a: answered.set()
    client.connect(url.host, url.port, clean_start=clean, properties=properties)
    client.loop_start()
    if not answered.wait(10):
        raise RuntimeError("no CONNACK")
    return client


def make_session(url: MqttUrl, client_id: str) -> None:
    """Create a persistent session subscribed to the device topics, then leave it."""
    client = connect(url, client_id, clean=True, expiry_s=600)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    client.subscribe(TOPIC, qos=1)
    if not subscribed.wait(10):
        raise RuntimeError("no SUBACK")
    client.disconnect()
    client.loop_stop()


def drop_session(url: MqttUrl, client_id: str) -> None:
    client = connect(url, client_id, clean=True, expiry_s=0)
    client.disconnect()
    client.loop_stop()


def publish(settings: Settings, kind: str, count: int, base_ms: int, prefix: str) -> None:
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--publish",
            kind,
            "--count",
            str(count),
            "--base-ms",
            str(base_ms),
            "--prefix",
            prefix,
            "--mqtt-url",
            settings.mqtt_gateway_url,
        ],
        check=True,
        timeout=DRAIN_TIMEOUT_S,
    )


def broker_baseline(url: MqttUrl, client_id: str, count: int, prefix: str) -> float:
    """Messages per second a bare paho subscriber drains (ack each, nothing else)."""
    topic_prefix = f"anxiao/v1/dev/{prefix}"
    state = Drain()
    done = threading.Event()

    def on_message(client: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        client.ack(message.mid, message.qos)
        if not message.topic.startswith(topic_prefix):
            return  # other traffic on the shared stack broker
        if state.seen == 0:
            state.first = time.perf_counter()
        state.seen += 1
        if state.seen == count:
            state.last = time.perf_counter()
            done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    client.username_pw_set(url.username, url.password)
    client.on_message = on_message
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 600
    properties.ReceiveMaximum = RECEIVE_MAXIMUM
    client.connect(url.host, url.port, clean_start=False, properties=properties)
    client.loop_start()
    finished = done.wait(DRAIN_TIMEOUT_S)
    client.disconnect()
    client.loop_stop()
    if not finished:
        raise RuntimeError(f"baseline subscriber got {state.seen} of {count}")
    return count / (state.last - state.first)


async def ingest_drain(config: IngestConfig, rows: int) -> float:
    """Rows per second ingest stores: first receive to last commit + ack."""
    state = Drain()
    done = asyncio.Event()

    async def hook(batch: IngestBatch) -> None:
        if len(batch.gps) and state.seen == 0:
            state.first = float(batch.gps.received_ms.min()) / 1000
        state.seen += int(batch.gps.new.sum())
        if state.seen >= rows:
            state.last = time.time()
            done.set()

    ingestor = Ingestor(config, hook=hook)
    task = asyncio.create_task(ingestor.run())
    try:
        await asyncio.wait_for(done.wait(), DRAIN_TIMEOUT_S)
    finally:
        ingestor.stop()
        await task
    return rows / (state.last - state.first)


def copy_baselines(
    database_url: str, keys: np.ndarray, rows: dict[str, np.ndarray]
) -> tuple[float, float]:
    """Rows per second of two plain COPYs of the same rows into ``gps_fixes``.

    First, asyncpg's ``copy_records_to_table`` from row tuples built before the
    clock starts: a plain COPY as an application writes one (``copy_rows_per_s``).
    Second, a binary COPY stream encoded before the clock starts: the
    database's own ceiling, with no client work at all (``copy_binary_rows_per_s``).
    Both in transactions of 50,000 rows, each into an emptied table.
    """
    count = rows["ts_ms"].shape[0]
    received_ms = np.full(count, int(time.time() * 1000), dtype=np.int64)
    empty = np.ones(count, dtype=np.bool_)
    columns = [
        CopyColumn("device_key", "int4", keys[rows["device"]].astype(np.int32)),
        CopyColumn("ts", "timestamptz", rows["ts_ms"]),
        CopyColumn("received_at", "timestamptz", received_ms),
        CopyColumn("lat", "float8", rows["lat"]),
        CopyColumn("lon", "float8", rows["lon"]),
        CopyColumn("speed_kmh", "float4", rows["speed"].astype(np.float32)),
        CopyColumn("heading_deg", "float4", rows["heading"].astype(np.float32)),
        CopyColumn("alt_m", "float4", np.zeros(count, np.float32), empty),
        CopyColumn("sats", "int2", np.zeros(count, np.int16), empty),
        CopyColumn("hdop", "float4", np.zeros(count, np.float32), empty),
        CopyColumn("seq", "int8", np.zeros(count, np.int64), empty),
        CopyColumn("alarm", "int8", np.zeros(count, np.int64), empty),
        CopyColumn("status", "int8", np.zeros(count, np.int64), empty),
        CopyColumn("backfill", "bool", np.zeros(count, np.bool_)),
    ]
    names = [c.name for c in columns]
    chunk = 50_000
    streams = []
    for start in range(0, count, chunk):
        part = slice(start, min(start + chunk, count))
        picked = [
            CopyColumn(c.name, c.pgtype, c.values[part], None if c.null is None else c.null[part])
            for c in columns
        ]
        streams.append(encode_copy(picked, part.stop - part.start))
    nothing = (None,) * 6  # alt, sats, hdop, seq, alarm, status
    records = [
        (
            key,
            datetime.fromtimestamp(ts / 1000, UTC),
            datetime.fromtimestamp(rx / 1000, UTC),
            lat,
            lon,
            speed,
            heading,
            *nothing,
            False,
        )
        for key, ts, rx, lat, lon, speed, heading in zip(
            columns[0].values.tolist(),
            rows["ts_ms"].tolist(),
            received_ms.tolist(),
            rows["lat"].tolist(),
            rows["lon"].tolist(),
            columns[5].values.tolist(),
            columns[6].values.tolist(),
            strict=True,
        )
    ]

    async def copy_records() -> float:
        conn = await asyncpg.connect(database_url)
        try:
            started = time.perf_counter()
            for start in range(0, count, chunk):
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "gps_fixes", records=records[start : start + chunk], columns=names
                    )
            elapsed = time.perf_counter() - started
            await conn.execute("TRUNCATE gps_fixes")
        finally:
            await conn.close()
        return float(count / elapsed)

    records_rate = asyncio.run(copy_records())
    with psycopg.connect(database_url, autocommit=True) as conn:
        started = time.perf_counter()
        for stream in streams:
            with conn.transaction(), conn.cursor() as cursor:
                statement = f"COPY gps_fixes ({', '.join(names)}) FROM STDIN (FORMAT binary)"
                with cursor.copy(statement) as copy:
                    copy.write(stream)
        elapsed = time.perf_counter() - started
        conn.execute("TRUNCATE gps_fixes")
    return float(records_rate), float(count / elapsed)


# ----------------------------------------------------------------------- main


def measure(
    kind: str,
    count: int,
    url: MqttUrl,
    settings: Settings,
    sessions: list[str],
    prefix: str,
    database_url: str,
    keys: np.ndarray,
    config: IngestConfig,
) -> dict[str, float]:
    """One round of one stream: its baseline(s), then ingest, per second."""
    base_ms = int(time.time() * 1000) - 86_400_000
    # The batch baseline is a COPY, not a subscriber: only ingest's session then.
    for client_id in sessions if kind == "single" else sessions[1:]:
        make_session(url, client_id)
    publish(settings, kind, count, base_ms, prefix)
    rows = count * (1 if kind == "single" else FIXES_PER_BATCH)
    result: dict[str, float] = {}
    if kind == "single":
        result["baseline"] = broker_baseline(url, sessions[0], count, prefix)
    else:
        result["baseline"], result["binary"] = copy_baselines(
            database_url, keys, stream_rows(kind, count, base_ms)
        )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE gps_fixes")
    cpu0 = time.process_time()
    result["ingest"] = asyncio.run(ingest_drain(config, rows))
    # Everything this process did for the drain (MQTT client, decoding, COPY, status
    # upsert, acknowledgements): ingest's CPU per stored row at full rate.
    result["ingest_cpu_us_per_row"] = (time.process_time() - cpu0) / rows * 1e6
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    url = settings.mqtt
    tag = secrets.token_hex(3)
    prefix = f"BENCH-{tag}-"
    admin = settings.database_url
    name = f"anxiao_bench_{os.getpid()}_{tag}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    sessions = [f"{prefix}base", f"{prefix}ingest"]
    try:
        migrate(database_url=database_url)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO devices (id, kind)"
                " SELECT %s || g, 'gps' FROM generate_series(0, %s) g",
                (prefix, DEVICES - 1),
            )
            keys = np.array(
                [
                    key
                    for (key,) in conn.execute(
                        "SELECT key FROM devices WHERE id LIKE %s"
                        " ORDER BY substr(id, length(%s) + 1)::int",
                        (prefix + "%", prefix),
                    )
                ]
            )
        config = IngestConfig.from_settings(
            settings,
            database_url=database_url,
            client_id=sessions[1],
            session_expiry_s=600,
            receive_maximum=RECEIVE_MAXIMUM,
        )
        measured: dict[str, list[dict[str, float]]] = {"single": [], "batch": []}
        for _ in range(args.rounds):
            for kind, count in (("single", args.single), ("batch", args.batch)):
                measured[kind].append(
                    measure(
                        kind, count, url, settings, sessions, prefix, database_url, keys, config
                    )
                )
        # Best of the rounds on each side: the machine is shared, and the best
        # figure is the one least disturbed by whatever else ran meanwhile.
        # (CPU per row: the least.)
        single = {
            k: (min if k.endswith("_per_row") else max)(r[k] for r in measured["single"])
            for k in measured["single"][0]
        }
        batch = {
            k: (min if k.endswith("_per_row") else max)(r[k] for r in measured["batch"])
            for k in measured["batch"][0]
        }
        result: dict[str, Any] = {
            "single": {
                "ingest_msgs_per_s": round(single["ingest"]),
                "broker_msgs_per_s": round(single["baseline"]),
                "ratio": round(single["ingest"] / single["baseline"], 3),
                "ingest_cpu_us_per_msg": round(single["ingest_cpu_us_per_row"], 1),
                "messages": args.single,
            },
            "batch": {
                "ingest_fixes_per_s": round(batch["ingest"]),
                "copy_rows_per_s": round(batch["baseline"]),
                "ratio": round(batch["ingest"] / batch["baseline"], 3),
                "copy_binary_rows_per_s": round(batch["binary"]),
                "ratio_vs_binary": round(batch["ingest"] / batch["binary"], 3),
                "ingest_cpu_us_per_fix": round(batch["ingest_cpu_us_per_row"], 2),
                "messages": args.batch,
                "fixes_per_message": FIXES_PER_BATCH,
            },
            "rounds": {
                kind: [{k: round(v, 1) for k, v in r.items()} for r in runs]
                for kind, runs in measured.items()
            },
        }
        result["setup"] = {
            "method": "backlog drain: sessions first, one publisher process, each consumer"
            " alone; best of the rounds on each side",
            "devices": DEVICES,
            "receive_maximum": RECEIVE_MAXIMUM,
            "batch_max_messages": config.batch_max_messages,
            "batch_max_age_ms": config.batch_max_age_ms,
            "cpus": os.cpu_count(),
        }
        return result
    finally:
        for client_id in sessions:
            drop_session(url, client_id)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=20_000, help="one-fix messages")
    parser.add_argument("--batch", type=int, default=5_000, help="messages of 50 fixes")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best of each counts")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    parser.add_argument("--publish", choices=["single", "batch"], help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--base-ms", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--mqtt-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        return publish_main(args)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
