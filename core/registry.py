"""The fleet registry in memory: what the rules and the live views need to know.

Loaded whole from the reference tables (a city's fleet is a few megabytes) and
reloaded when an import sends ``NOTIFY anxiao_fleet``. asyncpg: it is loaded by
the running service.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final

from core.db import AsyncConnection

__all__ = [
    "DEFAULT_OFFLINE_AFTER_S",
    "Bus",
    "Calendar",
    "Device",
    "Registry",
    "Route",
    "SpeedZone",
    "load_registry",
]

#: Contract §3 defaults, per device kind.
DEFAULT_OFFLINE_AFTER_S: Final = {"gps": 300, "button": 300, "smoke": 900}


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device and the ids it belongs to."""

    key: int
    id: str
    kind: str
    bus_id: str | None
    school_id: str | None
    operator_id: str | None
    district_id: str | None
    offline_after_s: int
    registered_at: datetime
    retired: bool


@dataclass(frozen=True, slots=True)
class Bus:
    """A bus: its routes and service windows."""

    id: str
    plate: str
    operator_id: str | None
    school_id: str | None
    route_ids: tuple[str, ...]
    service_windows: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Route:
    """An approved route: its corridor and path (``[lon, lat]`` positions)."""

    id: str
    school_id: str | None
    corridor_m: float
    coordinates: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class SpeedZone:
    """A speed zone with its validity (None = open-ended)."""

    id: str
    limit_kmh: float
    area: dict[str, Any]
    valid_from: datetime | None
    valid_to: datetime | None


@dataclass(frozen=True, slots=True)
class Calendar:
    """Local school calendar: breaks and overrides of the national calendar."""

    breaks: tuple[tuple[date, date], ...] = ()
    extra_school_days: frozenset[date] = frozenset()
    extra_days_off: frozenset[date] = frozenset()


@dataclass(frozen=True, slots=True)
class Registry:
    """The whole fleet, indexed the way the hot path looks things up."""

    timezone: str
    devices: dict[int, Device] = field(default_factory=dict)
    buses: dict[str, Bus] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    zones: tuple[SpeedZone, ...] = ()
    calendar: Calendar = field(default_factory=Calendar)

    def device_by_id(self, device_id: str) -> Device | None:
        """A device by its text id (a linear scan: not for the hot path)."""
        return next((d for d in self.devices.values() if d.id == device_id), None)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def load_registry(conn: AsyncConnection, *, default_timezone: str) -> Registry:
    """Read the reference tables into a :class:`Registry`."""
    tz = await conn.fetchval("SELECT timezone FROM fleet_meta") or default_timezone
    devices = {
        row["key"]: Device(
            key=row["key"],
            id=row["id"],
            kind=row["kind"],
            bus_id=row["bus_id"],
            school_id=row["school_id"],
            operator_id=row["operator_id"],
            district_id=row["district_id"],
            offline_after_s=row["offline_after_s"] or DEFAULT_OFFLINE_AFTER_S[row["kind"]],
            registered_at=row["registered_at"],
            retired=row["retired_at"] is not None,
        )
        for row in await conn.fetch(
            "SELECT d.key, d.id, d.kind, d.bus_id, s.id AS school_id, b.operator_id,"
            " s.district_id, d.offline_after_s, d.registered_at, d.retired_at"
            " FROM devices d LEFT JOIN buses b ON b.id = d.bus_id"
            " LEFT JOIN schools s ON s.id = coalesce(d.school_id, b.school_id)"
        )
    }
    buses = {
        row["id"]: Bus(
            id=row["id"],
            plate=row["plate"],
            operator_id=row["operator_id"],
            school_id=row["school_id"],
            route_ids=tuple(row["route_ids"]),
            service_windows=tuple(_json(row["service_windows"])),
        )
        for row in await conn.fetch(
            "SELECT b.id, b.plate, b.operator_id, b.school_id, b.service_windows,"
            " coalesce(array_agg(br.route_id ORDER BY br.route_id)"
            "   FILTER (WHERE br.route_id IS NOT NULL), '{}') AS route_ids"
            " FROM buses b LEFT JOIN bus_routes br ON br.bus_id = b.id GROUP BY b.id"
        )
    }
    routes = {
        row["id"]: Route(
            id=row["id"],
            school_id=row["school_id"],
            corridor_m=row["corridor_m"],
            coordinates=tuple(
                (float(p[0]), float(p[1])) for p in _json(row["path"])["coordinates"]
            ),
        )
        for row in await conn.fetch("SELECT id, school_id, corridor_m, path FROM routes")
    }
    zones = tuple(
        SpeedZone(
            id=row["id"],
            limit_kmh=row["limit_kmh"],
            area=_json(row["area"]),
            valid_from=row["valid_from"],
            valid_to=row["valid_to"],
        )
        for row in await conn.fetch(
            "SELECT id, limit_kmh, area, valid_from, valid_to FROM speed_zones ORDER BY id"
        )
    )
    breaks = tuple(
        (row["start_date"], row["end_date"])
        for row in await conn.fetch("SELECT start_date, end_date FROM calendar_breaks")
    )
    overrides = await conn.fetch("SELECT day, kind FROM calendar_overrides")
    calendar = Calendar(
        breaks=breaks,
        extra_school_days=frozenset(r["day"] for r in overrides if r["kind"] == "school_day"),
        extra_days_off=frozenset(r["day"] for r in overrides if r["kind"] == "day_off"),
    )
    return Registry(
        timezone=tz, devices=devices, buses=buses, routes=routes, zones=zones, calendar=calendar
    )
