"""The fleet registry prepared for the geofence kernels, and the filings that suppress rules.

Pure: built from a :class:`core.registry.Registry` (and the filings) once per
fleet import, then queried per ingest batch with whole columns. Everything is
projected to one local metric frame centred on the fleet (see
:func:`geofence.project` for its error bound: within 25 km of the centre,
distances are off by at most 8e-6 of their length).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import shape

from core.registry import Registry
from geofence import (
    PreparedRoutes,
    PreparedZones,
    RouteDistances,
    RouteSets,
    SchoolCalendar,
    ServiceWindows,
    calendar_masks,
    distance_to_routes,
    project,
    project_geometry,
    school_day_mask,
    service_window_mask,
)

__all__ = [
    "Filing",
    "FilingIndex",
    "FleetGeometry",
    "WindowEdges",
    "next_window_start",
    "window_end",
]

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_BOOL = npt.NDArray[np.bool_]

#: Origin when the fleet has no geometry at all (nothing is measured against it).
_NO_ORIGIN: Final = (0.0, 0.0)
#: Corridor of a detour path, metres (the filing has none of its own).
DETOUR_CORRIDOR_M: Final = 100.0
#: ``None`` in int64 time columns (as :data:`alerts.fleet.NO_TS`).
_NO_TS: Final = int(np.iinfo(np.int64).min)
_DAY_MS: Final = 86_400_000
_MINUTE_MS: Final = 60_000


def _ms(value: dt.datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


class FleetGeometry:
    """Routes, route sets, speed zones, service windows and calendar of one registry.

    Buses are numbered in ``bus_ids`` order; ``device_bus[key]`` is the bus
    index of the device with that key (``-1``: none, e.g. a campus sensor).
    ``route_ids[i]`` names route ``i`` of ``routes``; ``bus_has_routes[b]``
    says whether bus ``b`` has any route (without one, deviation is unknown).
    """

    def __init__(self, registry: Registry) -> None:
        self.tz: str = registry.timezone
        route_ids = sorted(registry.routes)
        self.route_ids: list[str] = route_ids
        points = [p for r in route_ids for p in registry.routes[r].coordinates]
        areas = [shape(z.area) for z in registry.zones]
        self.origin: tuple[float, float] = _origin(points, areas)
        lines = [
            shapely.LineString(registry.routes[r].coordinates)
            if len(registry.routes[r].coordinates) >= 2
            else shapely.LineString()
            for r in route_ids
        ]
        corridors = [float(registry.routes[r].corridor_m) for r in route_ids]
        self.routes = PreparedRoutes(
            project_geometry(np.asarray(lines, dtype=object), origin=self.origin)
            if lines
            else np.asarray([], dtype=object),
            corridor_m=corridors if corridors else 100.0,
        )
        position = {r: i for i, r in enumerate(route_ids)}
        self.bus_ids: list[str] = sorted(registry.buses)
        self.bus_index: dict[str, int] = {b: i for i, b in enumerate(self.bus_ids)}
        buses = [registry.buses[b] for b in self.bus_ids]
        self.sets = RouteSets.from_lists(
            [[position[r] for r in bus.route_ids if r in position] for bus in buses]
        )
        self.bus_has_routes: _BOOL = np.diff(self.sets.offsets) > 0
        # The same sets and one more, empty, for fixes without a bus: inf, -1, outside.
        self._sets_and_none = RouteSets(
            offsets=np.append(self.sets.offsets, self.sets.offsets[-1]),
            route_index=self.sets.route_index,
        )
        self.windows_doc: list[list[dict[str, Any]]] = [
            [dict(w) for w in bus.service_windows] for bus in buses
        ]
        self.windows = ServiceWindows.from_document(self.windows_doc)
        self.zones = PreparedZones(
            project_geometry(np.asarray(areas, dtype=object), origin=self.origin)
            if areas
            else np.asarray([], dtype=object),
            limit_kmh=[z.limit_kmh for z in registry.zones] if areas else 60.0,
            valid_from_ms=[_ms(z.valid_from) for z in registry.zones],
            valid_to_ms=[_ms(z.valid_to) for z in registry.zones],
        )
        cal = registry.calendar
        self.calendar = SchoolCalendar(
            breaks=cal.breaks,
            extra_school_days=cal.extra_school_days,
            extra_days_off=cal.extra_days_off,
        )
        top = max(registry.devices, default=-1)
        self.device_bus: _I64 = np.full(top + 1, -1, dtype=np.int64)
        for key, device in registry.devices.items():
            if device.bus_id is not None and device.bus_id in self.bus_index:
                self.device_bus[key] = self.bus_index[device.bus_id]

    def project(self, lon_deg: _F64, lat_deg: _F64) -> tuple[_F64, _F64]:
        """Positions in the fleet's metric frame."""
        return project(lon_deg, lat_deg, origin=self.origin)

    def bus_of(self, keys: _I64) -> _I64:
        """Bus index per device key (``-1``: none or unknown key)."""
        out = np.full(keys.shape, -1, dtype=np.int64)
        known = keys < self.device_bus.size
        out[known] = self.device_bus[keys[known]]
        return out

    def calendar_masks(self, ts_ms: _I64, bus: _I64) -> tuple[_BOOL, _BOOL]:
        """Inside one of the bus's service windows (``False`` without a bus); on a school day."""
        has = bus >= 0
        if self.windows.n_buses == 0 or not has.any():
            return np.zeros(ts_ms.shape, dtype=bool), self.school_days(ts_ms)
        inside, school = calendar_masks(
            ts_ms,
            windows=self.windows,
            bus_index=np.where(has, bus, 0),
            calendar=self.calendar,
            tz=self.tz,
        )
        return inside & has, school

    def school_days(self, ts_ms: _I64) -> _BOOL:
        """On a school day, by local date."""
        return school_day_mask(ts_ms, calendar=self.calendar, tz=self.tz)

    def distances(self, x_m: _F64, y_m: _F64, bus: _I64) -> RouteDistances:
        """Distance to the nearest assigned route (``inf``/``-1`` for buses without one)."""
        return distance_to_routes(
            x_m,
            y_m,
            set_index=np.where(bus >= 0, bus, self.sets.n_sets),
            routes=self.routes,
            sets=self._sets_and_none,
        )

    def routed(self, bus: _I64) -> _BOOL:
        """The fix's bus has at least one route."""
        out = bus >= 0
        out[out] = self.bus_has_routes[bus[out]]
        return out


def _origin(points: Sequence[tuple[float, float]], areas: Sequence[Any]) -> tuple[float, float]:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    for area in areas:
        if not area.is_empty:
            x0, y0, x1, y1 = area.bounds
            xs += [x0, x1]
            ys += [y0, y1]
    if not xs:
        return _NO_ORIGIN
    return ((min(xs) + max(xs)) / 2.0, (min(ys) + max(ys)) / 2.0)


# -- filings ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filing:
    """A movement filing (报备) or detour of one bus, valid in ``[valid_from_ms, valid_to_ms)``."""

    id: int
    bus_id: str
    kind: str
    valid_from_ms: int
    valid_to_ms: int
    path: tuple[tuple[float, float], ...] | None = None

    @staticmethod
    def from_row(row: Any) -> Filing:
        """From a ``filings`` row."""
        path = row["path"]
        if isinstance(path, str):
            path = json.loads(path)
        coords = (
            None if not path else tuple((float(p[0]), float(p[1])) for p in path["coordinates"])
        )
        return Filing(
            id=int(row["id"]),
            bus_id=str(row["bus_id"]),
            kind=str(row["kind"]),
            valid_from_ms=int(row["valid_from"].timestamp() * 1000),
            valid_to_ms=int(row["valid_to"].timestamp() * 1000),
            path=coords,
        )


class FilingIndex:
    """Which fixes each filing covers, and the detour paths as routes of their own."""

    def __init__(self, filings: Iterable[Filing], geometry: FleetGeometry) -> None:
        kept = [f for f in filings if f.bus_id in geometry.bus_index]
        self._geometry = geometry
        self.movement = _Table([f for f in kept if f.kind == "movement"], geometry)
        detours = [f for f in kept if f.kind == "detour"]
        self._detours = _Table(detours, geometry)
        with_path = [i for i, f in enumerate(detours) if f.path and len(f.path) >= 2]
        self._detour_route = np.full(len(detours), -1, dtype=np.int64)
        self._detour_route[with_path] = np.arange(len(with_path))
        self.detour_route_ids: list[str] = [f"detour:{detours[i].id}" for i in with_path]
        lines = [shapely.LineString(detours[i].path) for i in with_path]
        self._detour_routes = (
            PreparedRoutes(
                project_geometry(np.asarray(lines, dtype=object), origin=geometry.origin),
                corridor_m=DETOUR_CORRIDOR_M,
            )
            if lines
            else None
        )

    def movement_covers(self, bus: _I64, ts_ms: _I64) -> _BOOL:
        """Fixes covered by a movement filing of their bus."""
        return self.movement.covering(bus, ts_ms) >= 0

    def detour(self, x_m: _F64, y_m: _F64, bus: _I64, ts_ms: _I64) -> tuple[_BOOL, RouteDistances]:
        """(covered by a detour, distance to the detour's path) per fix.

        A detour without a path covers its fixes entirely (deviation is not
        evaluated); with a path, a fix within its corridor counts as on route.
        """
        n = ts_ms.shape[0]
        which = self._detours.covering(bus, ts_ms)
        covered = which >= 0
        dist = np.full(n, np.inf)
        index = np.full(n, -1, dtype=np.int64)
        within = np.zeros(n, dtype=bool)
        if covered.any():
            route = np.full(n, -1, dtype=np.int64)
            route[covered] = self._detour_route[which[covered]]
            has_path = route >= 0
            if has_path.any() and self._detour_routes is not None:
                sets = RouteSets(
                    offsets=np.arange(self._detour_routes.n_routes + 1, dtype=np.int64),
                    route_index=np.arange(self._detour_routes.n_routes, dtype=np.int64),
                )
                rd = distance_to_routes(
                    x_m[has_path],
                    y_m[has_path],
                    set_index=route[has_path],
                    routes=self._detour_routes,
                    sets=sets,
                )
                dist[has_path], index[has_path], within[has_path] = rd
            # A detour without a path suppresses the fix's deviation outright.
            covered_only = covered & ~has_path
            return covered_only, RouteDistances(dist, index, within)
        return covered, RouteDistances(dist, index, within)


class _Table:
    def __init__(self, filings: Sequence[Filing], geometry: FleetGeometry) -> None:
        self.bus = np.array([geometry.bus_index[f.bus_id] for f in filings], dtype=np.int64)
        self.start = np.array([f.valid_from_ms for f in filings], dtype=np.int64)
        self.stop = np.array([f.valid_to_ms for f in filings], dtype=np.int64)

    def covering(self, bus: _I64, ts_ms: _I64) -> _I64:
        """Per fix, the index of a filing covering it (``-1``: none)."""
        out = np.full(ts_ms.shape, -1, dtype=np.int64)
        if self.bus.size == 0 or ts_ms.size == 0:
            return out
        lo, hi = int(ts_ms.min()), int(ts_ms.max())
        for i in np.flatnonzero((self.start <= hi) & (self.stop > lo)).tolist():
            hit = (bus == self.bus[i]) & (ts_ms >= self.start[i]) & (ts_ms < self.stop[i])
            out[hit & (out < 0)] = i
        return out


# -- service-window edges -----------------------------------------------------------------------


def _local_midnight_ms(ts_ms: int, tz: ZoneInfo, days: int = 0) -> tuple[dt.date, int]:
    day = dt.datetime.fromtimestamp(ts_ms / 1000.0, tz).date() + dt.timedelta(days=days)
    return day, int(dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)


def _applies(window: Mapping[str, Any], at_ms: int, geometry: FleetGeometry) -> bool:
    return bool(
        service_window_mask(
            np.asarray([at_ms], dtype=np.int64),
            windows=[window],
            calendar=geometry.calendar,
            tz=geometry.tz,
        )[0]
    )


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def window_end(geometry: FleetGeometry, bus: int, ts_ms: int) -> int | None:
    """End (epoch ms) of the bus's service window that contains ``ts_ms``; None outside all."""
    tz = ZoneInfo(geometry.tz)
    _, midnight = _local_midnight_ms(ts_ms, tz)
    ends = [
        midnight + _minutes(w["end"]) * 60_000
        for w in geometry.windows_doc[bus]
        if _applies(w, ts_ms, geometry)
    ]
    return max(ends) if ends else None


def next_window_start(
    geometry: FleetGeometry, bus: int, ts_ms: int, *, horizon_days: int = 8
) -> int | None:
    """Start (epoch ms) of the bus's first service window beginning after ``ts_ms``."""
    tz = ZoneInfo(geometry.tz)
    for offset in range(horizon_days):
        _, midnight = _local_midnight_ms(ts_ms, tz, offset)
        starts = sorted(
            start
            for w in geometry.windows_doc[bus]
            if (start := midnight + _minutes(w["start"]) * 60_000) > ts_ms
            and _applies(w, start, geometry)
        )
        if starts:
            return starts[0]
    return None


class WindowEdges:
    """:func:`window_end` (or, ``start``, :func:`next_window_start`) for many (bus, time) pairs.

    Within one local day, whether a window applies changes only at the
    windows' own start and end minutes, so both edges are the same for every
    time between two consecutive such minutes (a stretch). Each bus remembers
    its last stretch and edge, so a tick finds the edges of every open
    episode in a few NumPy steps and computes one only when an episode's
    time has moved into another stretch. A day that is not 24 hours long (a
    daylight-saving change) uses one-minute stretches.
    """

    def __init__(self, geometry: FleetGeometry, *, start: bool) -> None:
        self.geometry = geometry
        self.start = start
        self._tz = ZoneInfo(geometry.tz)
        n = len(geometry.windows_doc)
        # [lo, hi) of each bus's remembered stretch (empty at first) and its edge.
        self._lo: _I64 = np.zeros(n, np.int64)
        self._hi: _I64 = np.zeros(n, np.int64)
        self._edge: _I64 = np.full(n, _NO_TS, np.int64)
        self._minutes: dict[int, list[int]] = {}

    def at(self, bus: _I64, ts_ms: _I64) -> _I64:
        """The edge per pair (epoch ms; :data:`alerts.fleet.NO_TS` for none)."""
        hit = (self._lo[bus] <= ts_ms) & (ts_ms < self._hi[bus])
        out: _I64 = self._edge[bus]
        for i in np.flatnonzero(~hit).tolist():
            b, t = int(bus[i]), int(ts_ms[i])
            found = (next_window_start if self.start else window_end)(self.geometry, b, t)
            edge = _NO_TS if found is None else found
            self._lo[b], self._hi[b] = self._stretch(b, t)
            self._edge[b] = out[i] = edge
        return out

    def _stretch(self, bus: int, ts_ms: int) -> tuple[int, int]:
        _, midnight = _local_midnight_ms(ts_ms, self._tz)
        _, next_midnight = _local_midnight_ms(ts_ms, self._tz, 1)
        if next_midnight - midnight != _DAY_MS:
            lo = ts_ms - ts_ms % _MINUTE_MS
            return lo, lo + _MINUTE_MS
        minutes = self._minutes.get(bus)
        if minutes is None:
            doc = self.geometry.windows_doc[bus]
            edges = {_minutes(w[k]) for w in doc for k in ("start", "end")}
            minutes = self._minutes[bus] = sorted({0, 24 * 60} | edges)
        minute = (ts_ms - midnight) // _MINUTE_MS
        lo_min = max(m for m in minutes if m <= minute)
        hi_min = min((m for m in minutes if m > minute), default=24 * 60)
        return midnight + lo_min * _MINUTE_MS, min(midnight + hi_min * _MINUTE_MS, next_midnight)
