"""A slow, obvious reference detector of contract §3 episodes, for checking ground truth.

It knows nothing of the simulator's internals: it reads the fleet document,
the filings and raw MQTT messages (topic, payload) exactly as a subscriber
receives them, and applies the contract's timing rules reading by reading.
Distances use its own spherical local projection (not the simulator's).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import chinese_calendar
import orjson
import shapely

LOCAL = timezone(timedelta(hours=8))
_R = 6_371_008.8
_LON0, _LAT0 = 120.7, 31.3


def project(lon: float, lat: float) -> tuple[float, float]:
    """Local metres on a sphere (deliberately not the simulator's projection)."""
    x = math.radians(lon - _LON0) * _R * math.cos(math.radians(_LAT0))
    y = math.radians(lat - _LAT0) * _R
    return x, y


def parse_ts(value: Any) -> int:
    """Contract ``ts``: epoch ms or RFC 3339 with offset, to epoch ms."""
    if isinstance(value, int):
        return value
    dt = datetime.fromisoformat(value)
    assert dt.tzinfo is not None, value
    return round(dt.timestamp() * 1000)


def parse_time(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


@dataclass
class Found:
    """One episode the reference found."""

    device: str
    kind: str
    start_ms: int
    end_ms: int | None
    filed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reading:
    ts_ms: int
    channel: str
    body: dict[str, Any]
    backfill: bool = False


def readings_by_device(messages: list[tuple[str, bytes]]) -> dict[str, list[Reading]]:
    """Unpack messages (batches into fixes), drop exact duplicates, sort by ts."""
    out: dict[str, dict[tuple[int, str, bytes], Reading]] = defaultdict(dict)
    for topic, payload in messages:
        parts = topic.split("/")
        assert parts[:3] == ["anxiao", "v1", "dev"] and len(parts) == 5, topic
        device, channel = parts[3], parts[4]
        body = orjson.loads(payload)
        items = (
            [(f, bool(body.get("backfill"))) for f in body["fixes"]]
            if "fixes" in body
            else [(body, False)]
        )
        for item, backfill in items:
            ts = parse_ts(item["ts"])
            key = (ts, channel, orjson.dumps(item, option=orjson.OPT_SORT_KEYS))
            out[device].setdefault(key, Reading(ts, channel, item, backfill))
    return {d: sorted(r.values(), key=lambda r: (r.ts_ms, r.channel)) for d, r in out.items()}


def episodes(
    ts: list[int], meets: list[bool], open_s: float, close_s: float
) -> list[tuple[int, int | None, int, int]]:
    """Contract timing, written out plainly: (start, end, first index, last index)."""
    found: list[tuple[int, int | None, int, int]] = []
    state = "idle"
    first = last = clear_from = -1
    for i, (t, m) in enumerate(zip(ts, meets, strict=True)):
        if state == "idle":
            if m:
                first = i
                state = "pending"
                if open_s <= 0:
                    state, last = "open", i
        elif state == "pending":
            if not m:
                state = "idle"
            elif t - ts[first] >= open_s * 1000:
                state, last, clear_from = "open", i, -1
        if state == "open" and i != first:
            if m:
                last, clear_from = i, -1
            else:
                if clear_from < 0:
                    clear_from = i
                if t - ts[clear_from] >= close_s * 1000:
                    found.append((ts[first], ts[last], first, last))
                    state = "idle"
        elif state == "open" and m:
            last = i
    if state == "open":
        found.append((ts[first], None, first, last))
    return found


class Reference:
    """The fleet document and filings, as the service would load them."""

    def __init__(self, fleet: dict[str, Any], filings: list[dict[str, Any]]) -> None:
        self.fleet = fleet
        self.filings = filings
        self.devices = {d["id"]: d for d in fleet["devices"]}
        self.buses = {b["id"]: b for b in fleet["buses"]}
        self.routes = {
            r["id"]: (
                shapely.LineString([project(*c) for c in r["path"]["coordinates"]]),
                float(r.get("corridor_m", 100)),
            )
            for r in fleet["routes"]
        }
        self.zones = [
            (
                shapely.Polygon([project(*c) for c in z["area"]["coordinates"][0]]),
                float(z["limit_kmh"]),
                parse_time(z["valid_from"]) if z["valid_from"] else None,
                parse_time(z["valid_to"]) if z["valid_to"] else None,
            )
            for z in fleet["speed_zones"]
        ]
        cal = fleet["calendar"]
        self.breaks = [
            (date.fromisoformat(b["start"]), date.fromisoformat(b["end"])) for b in cal["breaks"]
        ]
        self.extra = {date.fromisoformat(d) for d in cal["extra_school_days"]}
        self.off = {date.fromisoformat(d) for d in cal["extra_days_off"]}

    # ------------------------------------------------------------------ facts
    def school_day(self, day: date) -> bool:
        if day in self.off:
            return False
        if day in self.extra:
            return True
        if any(a <= day <= b for a, b in self.breaks):
            return False
        try:
            return bool(chinese_calendar.is_workday(day))
        except NotImplementedError:
            return day.weekday() < 5

    def in_window(self, bus_id: str, ts_ms: int) -> bool:
        local = datetime.fromtimestamp(ts_ms / 1000, LOCAL)
        if not self.school_day(local.date()):
            return False
        hhmm = local.strftime("%H:%M")
        return any(w["start"] <= hhmm < w["end"] for w in self.buses[bus_id]["service_windows"])

    def limit(self, x: float, y: float, ts_ms: int) -> float:
        point = shapely.Point(x, y)
        limits = [
            lim
            for poly, lim, vf, vt in self.zones
            if (vf is None or ts_ms >= vf) and (vt is None or ts_ms < vt) and poly.covers(point)
        ]
        return min(limits, default=60.0)

    def filed(self, bus_id: str, kind: str, start_ms: int, end_ms: int | None) -> bool:
        end = end_ms if end_ms is not None else start_ms
        return any(
            f["bus"] == bus_id
            and f["kind"] == kind
            and parse_time(f["from"]) <= start_ms
            and end <= parse_time(f["to"])
            for f in self.filings
        )

    # ------------------------------------------------------------------ rules
    def detect(self, readings: dict[str, list[Reading]]) -> list[Found]:
        found: list[Found] = []
        for device_id, rs in readings.items():
            device = self.devices[device_id]
            found += self._offline(device, rs)
            if device["kind"] == "gps":
                found += self._gps(device, [r for r in rs if r.channel == "gps"])
            else:
                found += self._campus(device, rs)
        return found

    def _offline(self, device: dict[str, Any], rs: list[Reading]) -> list[Found]:
        default = {"gps": 300, "button": 300, "smoke": 900}[device["kind"]]
        threshold_ms = device.get("offline_after_s", default) * 1000
        ts = sorted({r.ts_ms for r in rs})
        return [
            Found(device["id"], "device_offline", a + threshold_ms, b)
            for a, b in itertools.pairwise(ts)
            if b - a > threshold_ms
        ]

    def _gps(self, device: dict[str, Any], fixes: list[Reading]) -> list[Found]:
        bus_id = device["bus"]
        bus = self.buses[bus_id]
        ts = [r.ts_ms for r in fixes]
        xy = [project(r.body["lon"], r.body["lat"]) for r in fixes]
        speed = [float(r.body.get("speed", 0.0)) for r in fixes]
        out: list[Found] = []
        over = [s > self.limit(x, y, t) for s, (x, y), t in zip(speed, xy, ts, strict=True)]
        for a, b, i, j in episodes(ts, over, 10, 10):
            late = all(fixes[k].backfill for k in range(i, j + 1) if over[k])
            out.append(Found(device["id"], "speeding", a, b, extra={"late": late}))
        windows = [self.in_window(bus_id, t) for t in ts]
        moving_off = [s >= 5.0 and not w for s, w in zip(speed, windows, strict=True)]
        for a, b, _i, _j in episodes(ts, moving_off, 60, 120):
            filed = self.filed(bus_id, "movement", a, b)
            out.append(Found(device["id"], "out_of_hours", a, b, filed=filed))
        routes = [self.routes[r] for r in bus["routes"]]
        away = [
            w and all(line.distance(shapely.Point(x, y)) > c for line, c in routes)
            for (x, y), w in zip(xy, windows, strict=True)
        ]
        for a, b, _i, _j in episodes(ts, away, 30, 30):
            filed = self.filed(bus_id, "detour", a, b)
            out.append(Found(device["id"], "route_deviation", a, b, filed=filed))
        alarms = [int(r.body.get("alarm", 0)) for r in fixes]
        for bit in (0, 4, 5, 6, 7, 8):
            on = [bool(a >> bit & 1) for a in alarms]
            for a, b, _i, _j in episodes(ts, on, 0, 0):
                kind = "panic_button" if bit == 0 else "device_fault"
                out.append(Found(device["id"], kind, a, None if bit == 0 else b))
        return out

    def _campus(self, device: dict[str, Any], rs: list[Reading]) -> list[Found]:
        out: list[Found] = []
        if device["kind"] == "smoke":
            states = [(r.ts_ms, r.body["state"]) for r in rs if r.channel == "smoke"]
            for opening, closing, kind in (
                ("alarm", "normal", "smoke_alarm"),
                ("fault", "normal", "device_fault"),
            ):
                start = last = None
                for t, s in states:
                    if s == opening:
                        start = t if start is None else start
                        last = t
                    elif s == closing and start is not None:
                        out.append(Found(device["id"], kind, start, last))
                        start = last = None
                if start is not None:
                    out.append(Found(device["id"], kind, start, None))
        else:
            events = [(r.ts_ms, r.body["event"]) for r in rs if r.channel == "button"]
            start = last = None
            for t, e in events:
                if e == "press":
                    out.append(Found(device["id"], "panic_button", t, None))
                elif e in ("tamper", "fault"):
                    start = t if start is None else start
                    last = t
                elif e == "restore" and start is not None:
                    out.append(Found(device["id"], "device_fault", start, last))
                    start = last = None
        return out
