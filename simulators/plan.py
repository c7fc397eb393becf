"""What each bus does: legs on its route in its service windows, and their kinematics.

A :class:`Leg` is one drive along a dense path (depot to school, school to
depot, or an out-and-back trip). Its speed caps come from the speed zones
that may apply within 40 m of each point (so GNSS noise never puts a fix in
a stricter zone than the driver obeyed), the driver's pace, bends, traffic
lights, congestion and stops; scenarios add overrides (a speeding stretch)
or replace the path (a detour). A :class:`BusPlan` holds a bus's legs and the
timed scenario events of its terminal (alarm bits, silence, clock skew,
blind areas).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
import shapely
from numpy.typing import NDArray

from simulators._geo import DensePath, densify
from simulators._time import day_start_ms, local_dates
from simulators.city import DEFAULT_LIMIT_KMH, SAFETY_MARGIN_M, Bus, City, rng_for
from simulators.kinematics import Profile, bend_cap_kmh, drive

__all__ = ["BusPlan", "Leg", "PathLimits", "build_plans", "cruise_kmh"]

F64 = NDArray[np.float64]
IDX = NDArray[np.intp]

_P_LEG, _P_DAY, _P_BUSPLAN = 100, 101, 102
#: Legs may not need longer than this past departure (for zone validity).
_LEG_SPAN_MS = 3 * 3_600_000
#: Gaps shorter than this between legs keep the engine (ACC) on.
_ACC_GAP_MS = 20 * 60_000


def cruise_kmh(limit_kmh: F64) -> F64:
    """Speed a careful driver keeps under a limit: 52.8 in 60, 26.4 in 30, 16 in 20."""
    return limit_kmh - np.maximum(4.0, 0.12 * limit_kmh)


class PathLimits:
    """The speed limits that may apply within the safety margin of each point of a path."""

    def __init__(self, near_pt: IDX, near_zone: IDX, core_pt: IDX, core_zone: IDX, n: int) -> None:
        self.near_pt, self.near_zone = near_pt, near_zone
        self.core_pt, self.core_zone = core_pt, core_zone
        self.n = n

    @classmethod
    def of(cls, city: City, path: DensePath) -> PathLimits:
        """Query the city's zones for every point of ``path``."""
        points = shapely.points(path.x, path.y)
        near = city.zone_tree.query(points, predicate="dwithin", distance=SAFETY_MARGIN_M)
        core = city.zone_cores.query(points, predicate="intersects")
        return cls(near[0], near[1], core[0], core[1], len(path.x))

    def reversed(self) -> PathLimits:
        """The same limits for the path driven backwards."""
        last = self.n - 1
        return PathLimits(
            last - self.near_pt, self.near_zone, last - self.core_pt, self.core_zone, self.n
        )

    def limit_kmh(self, city: City, active: NDArray[np.bool_]) -> F64:
        """Strictest limit that may apply at each point, given which zones are valid."""
        limits = np.array([z.limit_kmh for z in city.zones], dtype=np.float64)
        out = np.full(self.n, np.inf)
        keep = active[self.near_zone]
        np.minimum.at(out, self.near_pt[keep], limits[self.near_zone[keep]])
        covered = np.zeros(self.n, dtype=bool)
        covered[self.core_pt[active[self.core_zone]]] = True
        out[~covered] = np.minimum(out[~covered], DEFAULT_LIMIT_KMH)
        return out


@dataclass(eq=False)
class Leg:
    """One drive of a bus; times are epoch ms, indices are dense-path points."""

    bus: int
    kind: str
    depart_ms: int
    path: DensePath
    limits: PathLimits
    node_idx: IDX
    stop_idx: IDX
    key: tuple[int, ...]
    window_ms: tuple[int, int] | None = None
    #: The leg this one follows after a dwell at school, and that dwell.
    follows: Leg | None = None
    dwell_before_ms: int = 0
    turnaround_idx: int | None = None
    overrides: list[tuple[int, int, float]] = field(default_factory=list)
    clear: list[tuple[int, int]] = field(default_factory=list)
    #: Stretches driven no faster than a speed (a side street), after ``clear``.
    slow: list[tuple[int, int, float]] = field(default_factory=list)
    scenario: str | None = None
    _profile: Profile | None = None
    _duration_s: float | None = None

    def invalidate(self) -> None:
        """Forget the computed profile after a change."""
        self._profile = None
        self._duration_s = None

    def active_zones(self, city: City) -> NDArray[np.bool_]:
        """Zones valid at any time the leg may be driven (a cautious driver's view)."""
        end = self.depart_ms + _LEG_SPAN_MS
        return np.array([z.valid_during(self.depart_ms, end) for z in city.zones], dtype=bool)

    def limit_kmh(self, city: City) -> F64:
        """The strictest limit that may apply at each point of the leg."""
        return self.limits.limit_kmh(city, self.active_zones(city))

    def caps(self, city: City) -> tuple[F64, F64]:
        """Speed cap (km/h) and dwell (s) at each point of the leg."""
        bus = city.buses[self.bus]
        path = self.path
        base = np.minimum(cruise_kmh(self.limit_kmh(city)) * bus.pace, bend_cap_kmh(path))
        cap = base.copy()
        dwell = np.zeros(len(path.x))
        g = rng_for(city.spec.seed, _P_LEG, *self.key)
        # Draw everything first so that scenarios never shift the random stream.
        light_on = g.random(len(self.node_idx)) < 0.3
        light_wait = g.uniform(3, 40, len(self.node_idx))
        n_slow = int(g.poisson(0.8))
        slow_s0 = g.uniform(0, path.length_m, n_slow)
        slow_len = g.uniform(60, 200, n_slow)
        slow_cap = g.uniform(10, 25, n_slow)
        stop_wait = g.uniform(20, 60, len(self.stop_idx))
        turn_wait = float(g.uniform(20, 45))
        for i, on, wait in zip(self.node_idx, light_on, light_wait, strict=True):
            if on:
                cap[i], dwell[i] = 0.0, wait
        for s0, length, c in zip(slow_s0, slow_len, slow_cap, strict=True):
            mask = (path.s_m >= s0) & (path.s_m <= s0 + length)
            cap[mask] = np.minimum(cap[mask], c)
        cap[self.stop_idx] = 0.0
        dwell[self.stop_idx] = stop_wait
        if self.turnaround_idx is not None:
            cap[self.turnaround_idx], dwell[self.turnaround_idx] = 0.0, turn_wait
        for i0, i1 in self.clear:
            cap[i0:i1] = base[i0:i1]
            dwell[i0:i1] = 0.0
        for i0, i1, value in self.slow:
            cap[i0:i1] = np.minimum(cap[i0:i1], value)
        for i0, i1, value in self.overrides:
            cap[i0:i1] = value
        return cap, dwell

    def profile(self, city: City) -> Profile:
        """The driven profile.

        Only legs with a scenario keep theirs (probes ask again and again);
        others recompute it, so ten thousand buses do not hold every profile.
        """
        if self._profile is not None:
            return self._profile
        cap, dwell = self.caps(city)
        profile = drive(self.path, cap, dwell)
        self._duration_s = profile.duration_s
        if self.scenario is not None:
            self._profile = profile
        return profile

    def duration_s(self, city: City) -> float:
        """Seconds from departure to arrival (computed once until invalidated)."""
        if self._duration_s is None:
            self._duration_s = self.profile(city).duration_s
        return self._duration_s

    def arrive_ms(self, city: City) -> int:
        """Arrival time (epoch ms)."""
        return self.depart_ms + round(self.duration_s(city) * 1000)


@dataclass(eq=False)
class BusPlan:
    """Everything a bus and its terminal do during the run."""

    bus: int
    legs: list[Leg]
    interval_s: int
    phase_ms: int
    #: Timed terminal events, each (start_ms, end_ms, ...).
    alarm_bits: list[tuple[int, int, int]] = field(default_factory=list)
    freezes: list[tuple[int, int]] = field(default_factory=list)
    silences: list[tuple[int, int]] = field(default_factory=list)
    skews: list[tuple[int, int, int]] = field(default_factory=list)
    blinds: list[tuple[int, int]] = field(default_factory=list)
    #: Intervals where no reading may be dropped (scenario windows).
    protected: list[tuple[int, int]] = field(default_factory=list)
    #: Intervals taken by scenarios (no two scenarios overlap on one terminal).
    reserved: list[tuple[int, int]] = field(default_factory=list)

    def is_free(self, start_ms: int, end_ms: int, *, pad_ms: int = 300_000) -> bool:
        """Return whether no scenario holds the terminal in the padded interval."""
        return all(end_ms + pad_ms <= a or start_ms - pad_ms >= b for a, b in self.reserved)

    def retime(self, city: City) -> None:
        """Move legs that follow a dwell to start after their predecessor arrives."""
        for leg in sorted(self.legs, key=lambda leg: leg.depart_ms):
            if leg.follows is not None:
                leg.depart_ms = leg.follows.arrive_ms(city) + leg.dwell_before_ms
        self.legs.sort(key=lambda leg: leg.depart_ms)

    def acc_on(self, city: City) -> list[tuple[int, int]]:
        """Engine-on intervals: each leg with idling before and after, short gaps merged."""
        g = rng_for(city.spec.seed, _P_BUSPLAN, self.bus)
        spans = []
        for leg in self.legs:
            before = int(g.uniform(60, 150) * 1000)
            after = int(g.uniform(30, 90) * 1000)
            spans.append((leg.depart_ms - before, leg.arrive_ms(city) + after))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for a, b in spans:
            if merged and a - merged[-1][1] < _ACC_GAP_MS:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        return merged

    def parked(self, city: City, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
        """Engine-off intervals within ``[start_ms, end_ms)``."""
        out = []
        cursor = start_ms
        for a, b in self.acc_on(city):
            if a > cursor:
                out.append((cursor, min(a, end_ms)))
            cursor = max(cursor, b)
        if cursor < end_ms:
            out.append((cursor, end_ms))
        return [(a, b) for a, b in out if b > a]


class RouteCache:
    """Dense paths and zone queries of each route, computed once."""

    def __init__(self, city: City) -> None:
        self.city = city
        self._paths: dict[int, tuple[DensePath, PathLimits, IDX, IDX]] = {}
        self._back: dict[int, tuple[DensePath, PathLimits, IDX, IDX]] = {}

    def forward(self, route: int) -> tuple[DensePath, PathLimits, IDX, IDX]:
        """Path, limits, intersection indices and stop indices, depot to school."""
        if route not in self._paths:
            r = self.city.routes[route]
            path = densify(r.vx, r.vy)
            vert_s = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(r.vx), np.diff(r.vy)))])
            node_idx = np.searchsorted(path.s_m, vert_s[1:-1])
            stop_idx = np.searchsorted(path.s_m, np.asarray(r.stops_m, dtype=np.float64))
            limits = PathLimits.of(self.city, path)
            self._paths[route] = (path, limits, node_idx, stop_idx)
        return self._paths[route]

    def backward(self, route: int) -> tuple[DensePath, PathLimits, IDX, IDX]:
        """The same, school to depot."""
        if route not in self._back:
            path, limits, node_idx, stop_idx = self.forward(route)
            last = len(path.x) - 1
            self._back[route] = (
                path.reversed(),
                limits.reversed(),
                np.sort(last - node_idx),
                np.sort(last - stop_idx),
            )
        return self._back[route]


def build_plans(city: City, routes: RouteCache, start_ms: int, end_ms: int) -> list[BusPlan]:
    """Every bus's service legs in the school days of ``[start_ms, end_ms)``."""
    plans = []
    dates = local_dates(start_ms - 3 * 3_600_000, end_ms)
    for b, bus in enumerate(city.buses):
        g = rng_for(city.spec.seed, _P_BUSPLAN, b, 0)
        interval = bus.interval_s
        plan = BusPlan(b, [], interval, int(g.integers(0, interval)) * 1000)
        for day in dates:
            if not city.school_calendar.is_school_day(day):
                continue
            for w, window in enumerate(bus.windows):
                plan.legs.extend(
                    _window_legs(city, routes, bus, b, day, w, window, start_ms, end_ms)
                )
        plan.retime(city)
        plans.append(plan)
    return plans


def _window_legs(
    city: City,
    routes: RouteCache,
    bus: Bus,
    b: int,
    day: date,
    w: int,
    window: tuple[str, int, int],
    start_ms: int,
    end_ms: int,
) -> list[Leg]:
    _days, first_min, last_min = window
    w0 = day_start_ms(day) + first_min * 60_000
    w1 = day_start_ms(day) + last_min * 60_000
    if w1 <= start_ms or w0 >= end_ms:
        return []
    g = rng_for(city.spec.seed, _P_DAY, b, day.toordinal(), w)
    depart = w0 + int(g.uniform(3 * 60, 12 * 60)) * 1000
    dwell = int(g.uniform(5 * 60, 8 * 60) if w == 0 else g.uniform(8 * 60, 12 * 60)) * 1000
    fwd = routes.forward(bus.route)
    back = routes.backward(bus.route)
    no_stops = np.zeros(0, dtype=np.intp)
    morning = w == 0
    first = Leg(
        bus=b,
        kind="am_out" if morning else "pm_out",
        depart_ms=depart,
        path=fwd[0],
        limits=fwd[1],
        node_idx=fwd[2],
        stop_idx=fwd[3] if morning else no_stops,
        key=(b, day.toordinal(), w, 0),
        window_ms=(w0, w1),
    )
    second = Leg(
        bus=b,
        kind="am_back" if morning else "pm_back",
        depart_ms=0,
        path=back[0],
        limits=back[1],
        node_idx=back[2],
        stop_idx=no_stops if morning else back[3],
        key=(b, day.toordinal(), w, 1),
        window_ms=(w0, w1),
        follows=first,
        dwell_before_ms=dwell,
    )
    return [first, second]
