"""10,000+ mixed valid and malformed messages through the broker: all accounted for."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from core.settings import Settings
from ingest import IngestConfig, Limits
from tests.ingest.oracle import expect
from tests.ingest.support import (
    dead_letters,
    now_ms,
    publish_all,
    register_devices,
    running_ingestor,
    scalar,
    wait_async,
)

MESSAGES = 10_500
JUNK: list[Any] = [None, True, "x", [1], {}, -1, 1e300, 2**64 - 1, "2026-11-23T07:31:05"]


class Stream:
    """Seeded traffic: valid readings, each with a (device, ts) of its own, and mutants."""

    def __init__(self, prefix: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.prefix = prefix
        self.now = now_ms()
        self.clock = self.now - 3_000_000  # every valid ts is unique: a counter
        self.devices = {
            "gps": [f"{prefix}g{i}" for i in range(20)],
            "smoke": [f"{prefix}s{i}" for i in range(5)],
            "button": [f"{prefix}b{i}" for i in range(5)],
        }

    def ts(self) -> int:
        self.clock += 7
        return self.clock

    def fix(self) -> dict[str, Any]:
        reading: dict[str, Any] = {
            "ts": self.ts(),
            "lat": self.rng.uniform(-89, 89),
            "lon": self.rng.uniform(-179, 179),
        }
        for name, low, high in (("speed", 0, 250), ("heading", 0, 359.9), ("hdop", 0, 9)):
            if self.rng.random() < 0.5:
                reading[name] = round(self.rng.uniform(low, high), 2)
        if self.rng.random() < 0.3:
            reading["alarm"] = self.rng.choice([0, 1, 1 << 28, 2**32 - 1])
        return reading

    def reading(self, channel: str) -> dict[str, Any]:
        if channel == "gps":
            return self.fix()
        if channel == "heartbeat":
            return {"ts": self.ts(), "battery": self.rng.randint(0, 100)}
        if channel == "smoke":
            return {"ts": self.ts(), "state": self.rng.choice(["normal", "alarm", "fault", "test"])}
        return {"ts": self.ts(), "event": self.rng.choice(["press", "reset", "tamper", "test"])}

    def mutate(self, reading: dict[str, Any]) -> dict[str, Any]:
        """Break one field (a broken ts is never a valid one, so no reading repeats)."""
        name = self.rng.choice(list(reading))
        changed = dict(reading)
        if name == "ts":
            changed["ts"] = self.rng.choice(
                [
                    None,
                    "2026-11-23T07:31:05",
                    1.5,
                    True,
                    self.now - 9 * 86_400_000,
                    self.now + 3_600_000,
                ]
            )
        elif self.rng.random() < 0.3:
            del changed[name]
        else:
            changed[name] = self.rng.choice([*JUNK, 1000, -1000, 0])
        return changed

    def message(self) -> tuple[str, bytes]:
        rng = self.rng
        channel = rng.choice(["gps", "gps", "gps", "heartbeat", "smoke", "button"])
        kind = "gps" if channel in ("gps", "heartbeat") else channel
        device = rng.choice(self.devices[kind])
        roll = rng.random()
        if roll < 0.03:
            device = f"{self.prefix}ghost{rng.randint(0, 3)}"
        elif roll < 0.05:
            device = f"{self.prefix}bad id"
        elif roll < 0.06:
            channel = "temperature"
        topic = f"anxiao/v1/dev/{device}/{channel}"
        roll = rng.random()
        if roll < 0.04:
            return topic, bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 30)))
        if roll < 0.07:
            return topic, orjson.dumps(self.reading(channel))[: rng.randint(0, 10)]
        if roll < 0.08:
            return topic, orjson.dumps(rng.choice([[1, 2], "text", 3, None]))
        if roll < 0.0805:
            return topic, b'{"ts": 1, "pad": "' + b"x" * (256 * 1024) + b'"}'
        if channel == "gps" and rng.random() < 0.3:
            fixes = [self.fix() for _ in range(rng.randint(1, 6))]
            fixes = [self.mutate(f) if rng.random() < 0.3 else f for f in fixes]
            document: Any = {"fixes": fixes, "backfill": rng.random() < 0.5}
            if rng.random() < 0.05:
                document = {"fixes": rng.choice([[], "x", None]), "backfill": True}
        else:
            document = self.reading(channel if channel != "temperature" else "gps")
            if rng.random() < 0.5:
                document = self.mutate(document)
        return topic, orjson.dumps(document)


async def test_mixed_traffic_is_stored_or_dead_lettered_never_lost(
    broker: Settings,
    database_url: str,
    make_config: Callable[..., IngestConfig],
    prefix: str,
) -> None:
    stream = Stream(prefix, seed=20261123)
    register_devices(database_url, stream.devices["gps"])
    register_devices(database_url, stream.devices["smoke"], "smoke")
    register_devices(database_url, stream.devices["button"], "button")
    known = {d for ds in stream.devices.values() for d in ds}
    messages = [stream.message() for _ in range(MESSAGES)]
    expected_rows: Counter[str] = Counter()
    expected_dead: Counter[str] = Counter()
    for topic, payload in messages:
        # Valid ts lie 0-50 minutes before the receive time, broken ones days
        # away: the oracle's verdict does not depend on the exact receive time.
        for outcome in expect(topic, payload, stream.now, known, Limits()):
            if outcome.channel is None:
                expected_dead[str(outcome.reason)] += 1
            else:
                expected_rows[outcome.channel] += 1
    expected_total = sum(expected_rows.values()) + sum(expected_dead.values())
    assert len(expected_dead) == 7, "the stream must exercise every reason code"
    assert sum(expected_rows.values()) > 3000

    async with running_ingestor(make_config(prefix, batch_max_messages=1000)) as ingestor:
        await asyncio.to_thread(publish_all, broker.mqtt, messages, client_id=f"{prefix}pub")
        await wait_async(
            lambda: _stored(database_url, prefix) + _dead(database_url, prefix) >= expected_total,
            timeout_s=90,
            what=f"{expected_total} readings accounted for",
        )
        metrics = ingestor.metrics

    got_dead = Counter(d["reason"] for d in dead_letters(database_url, prefix))
    assert got_dead == expected_dead
    assert _stored_by_channel(database_url, prefix) == expected_rows
    assert metrics.hook_errors == 0 and metrics.store_retries == 0


def _stored_by_channel(database_url: str, prefix: str) -> Counter[str]:
    got: Counter[str] = Counter()
    for channel, table, extra in (
        ("gps", "gps_fixes", ""),
        ("heartbeat", "heartbeats", ""),
        ("smoke", "sensor_events", " AND t.channel = 'smoke'"),
        ("button", "sensor_events", " AND t.channel = 'button'"),
    ):
        count = scalar(
            database_url,
            f"SELECT count(*) FROM {table} t JOIN devices d ON d.key = t.device_key"
            f" WHERE d.id LIKE %s{extra}",
            prefix + "%",
        )
        if count:
            got[channel] = int(count)
    return got


def _stored(database_url: str, prefix: str) -> int:
    return sum(_stored_by_channel(database_url, prefix).values())


def _dead(database_url: str, prefix: str) -> int:
    return int(
        scalar(
            database_url,
            "SELECT count(*) FROM dead_letters WHERE topic LIKE %s",
            f"anxiao/v1/dev/{prefix}%",
        )
    )
