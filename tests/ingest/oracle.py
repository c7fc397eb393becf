"""The slow, obvious reading of contract §1, message by message (conventions #3).

The fast decoder (``ingest.decode``) is checked against this: same rows, same
dead letters, same reason codes. Written as plainly as possible, from the
contract's text, without sharing code with the decoder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import orjson

from ingest import Limits

ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
SMOKE = {"normal", "alarm", "fault", "test"}
BUTTON = {"press", "reset", "tamper", "fault", "restore", "test"}


@dataclass(frozen=True)
class Outcome:
    """What should become of one reading: a row of ``channel`` or a dead letter."""

    channel: str | None  # None: a dead letter
    reason: str | None = None
    ts_ms: int | None = None
    values: tuple[object, ...] = ()
    backfill: bool = False


def is_number(value: object) -> bool:
    return type(value) in (int, float)


def parse_ts(value: object) -> int | None:
    if type(value) is int:
        return value if abs(value) < 2**53 else None
    if type(value) is str and RFC3339.fullmatch(value):
        try:
            moment = datetime.fromisoformat(value.upper())
        except ValueError:
            return None
        whole = int(moment.timestamp())
        return whole * 1000 + moment.microsecond // 1000
    return None


def dead(reason: str) -> Outcome:
    return Outcome(None, reason)


def check_ts(reading: dict[str, object], received_ms: int, limits: Limits) -> Outcome | int:
    ts = parse_ts(reading["ts"])
    if ts is None:
        return dead("bad_time")
    if received_ms - ts > limits.max_past_ms or ts - received_ms > limits.max_future_ms:
        return dead("bad_time")
    return ts


def optional_in(reading: dict[str, object], name: str, low: float, high: float) -> bool:
    value = reading.get(name)
    if value is None:
        return True
    return is_number(value) and low <= value <= high  # type: ignore[operator]


def check_fix(fix: object, received_ms: int, limits: Limits, backfill: bool) -> Outcome:
    if type(fix) is not dict:
        return dead("out_of_range")
    for name in ("ts", "lat", "lon"):
        if fix.get(name) is None:
            return dead("missing_field")
    ts = check_ts(fix, received_ms, limits)
    if isinstance(ts, Outcome):
        return ts
    lat, lon = fix["lat"], fix["lon"]
    if not is_number(lat) or not is_number(lon):
        return dead("out_of_range")
    if abs(lat) > 90 or abs(lon) > 180 or (lat == 0 and lon == 0):
        return dead("out_of_range")
    if not optional_in(fix, "speed", 0, limits.max_speed_kmh):
        return dead("out_of_range")
    heading = fix.get("heading")
    if heading is not None and not (is_number(heading) and 0 <= heading < 360):
        return dead("out_of_range")
    if not optional_in(fix, "alt", -100_000, 100_000) or not optional_in(fix, "hdop", 0, 1000):
        return dead("out_of_range")
    sats = fix.get("sats")
    if sats is not None and not (is_number(sats) and 0 <= sats <= 255 and sats == int(sats)):
        return dead("out_of_range")
    for name in ("seq", "alarm", "status"):
        value = fix.get(name)
        if value is not None and not (type(value) is int and 0 <= value < 2**32):
            return dead("out_of_range")
    return Outcome("gps", ts_ms=ts, values=(float(lat), float(lon)), backfill=backfill)


def expect(
    topic: str, payload: bytes, received_ms: int, known: set[str], limits: Limits
) -> list[Outcome]:
    """The outcome of every reading of one message."""
    if len(payload) > limits.max_payload_bytes:
        return [dead("too_large")]
    parts = topic.split("/")
    if (
        len(parts) != 5
        or parts[:3] != ["anxiao", "v1", "dev"]
        or not ID.fullmatch(parts[3])
        or parts[4] not in ("gps", "heartbeat", "smoke", "button")
    ):
        return [dead("bad_topic")]
    device, channel = parts[3], parts[4]
    if device not in known:
        return [dead("unknown_device")]
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return [dead("bad_json")]
    if type(document) is not dict:
        return [dead("bad_json")]
    if channel == "gps":
        if "fixes" not in document:
            return [check_fix(document, received_ms, limits, False)]
        fixes, backfill = document["fixes"], document.get("backfill", False)
        if type(fixes) is not list:
            return [dead("out_of_range")]
        if not fixes:
            return [dead("missing_field")]
        if len(fixes) > limits.max_batch_fixes:
            return [dead("out_of_range")]
        if backfill is not None and type(backfill) is not bool:
            return [dead("out_of_range")]
        return [check_fix(f, received_ms, limits, bool(backfill)) for f in fixes]
    required = {"heartbeat": (), "smoke": ("state",), "button": ("event",)}[channel]
    for name in ("ts", *required):
        if document.get(name) is None:
            return [dead("missing_field")]
    ts = check_ts(document, received_ms, limits)
    if isinstance(ts, Outcome):
        return [ts]
    if channel == "heartbeat":
        ok = optional_in(document, "battery", 0, 100) and optional_in(document, "rssi", -200, 0)
    elif channel == "smoke":
        ok = (
            type(document["state"]) is str
            and document["state"] in SMOKE
            and optional_in(document, "obscuration", 0, 100)
            and optional_in(document, "battery", 0, 100)
        )
    else:
        ok = type(document["event"]) is str and document["event"] in BUTTON
    if not ok:
        return [dead("out_of_range")]
    return [Outcome(channel, ts_ms=ts)]
