"""Scripted episodes for every alert kind of contract §3, and near-misses.

Each scenario is placed on a bus leg, a parked bus or a campus device where
it fits in the run, changes what that device will do, and leaves a
:class:`Probe`. Once the stream is built, each probe reads what its device
actually emitted (after drops, duplicates, late and backfilled delivery)
and writes one ground-truth record, timed by the contract's rules: ``start``
is the first reading meeting the condition, ``end`` the last one (``null``
for latched panics); for ``device_offline`` ``start`` is last heard +
``offline_after_s`` and ``end`` the first message heard again; for
``clock_skew`` the device timestamps of the first and last skewed readings.
A near-miss (``expected: none``) records the excursion that stayed below
its threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import shapely
from numpy.typing import NDArray

from simulators._geo import DensePath, join, offset_path
from simulators._time import day_start_ms, format_rfc3339, local_dates, local_datetime
from simulators.city import DEFAULT_LIMIT_KMH, City, rng_for
from simulators.episodes import find_episodes, runs
from simulators.kinematics import bend_cap_kmh
from simulators.plan import BusPlan, Leg, PathLimits, RouteCache

__all__ = [
    "CATALOG",
    "DEFAULT_SCENARIOS",
    "SEVERITY",
    "CampusPlan",
    "CorridorGuard",
    "DeviceLog",
    "Planner",
    "Probe",
    "ScenarioInfo",
    "campus_phase_ms",
    "limit_at",
]

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]

SEVERITY: Final = {
    "speeding": "major",
    "route_deviation": "major",
    "out_of_hours": "major",
    "device_offline": "minor",
    "smoke_alarm": "critical",
    "panic_button": "critical",
    "device_fault": "minor",
    "clock_skew": "minor",
}
_MIN = 60_000


@dataclass(frozen=True)
class ScenarioInfo:
    """A scenario of the catalogue: its alert kind and what the service should do."""

    name: str
    kind: str
    expected: str
    description: str


_S = ScenarioInfo
CATALOG: Final = (
    _S("speeding_temp_zone", "speeding", "alert", "9 km/h over a temporary 20 km/h limit, ~15 s"),
    _S("speeding", "speeding", "alert", "12 km/h over 60 km/h for ~25 s"),
    _S("speeding_short", "speeding", "none", "6 km/h over the limit for only ~5 s"),
    _S(
        "speeding_backfill",
        "speeding",
        "alert",
        "10 km/h over for ~20 s in a blind area, sent late",
    ),
    _S("route_detour", "route_deviation", "alert", "leaves the route by 250 m for about a minute"),
    _S("route_detour_filed", "route_deviation", "none", "the same detour, covered by a filing"),
    _S("route_swerve", "route_deviation", "none", "a 60 m swerve around roadworks"),
    _S(
        "route_edge_jitter",
        "route_deviation",
        "none",
        "4 m inside the corridor edge, noise pokes out",
    ),
    _S(
        "panic_gps", "panic_button", "alert", "JT/T 808 alarm bit 0 (emergency) rises while driving"
    ),
    _S("gps_fault_undervoltage", "device_fault", "alert", "alarm bit 7 (undervoltage) for 3 min"),
    _S("gps_fault_antenna", "device_fault", "alert", "alarm bit 5 (antenna cut) for 2 min, no fix"),
    _S("out_of_hours_night", "out_of_hours", "alert", "moves outside its windows on a school day"),
    _S(
        "out_of_hours_night_filed", "out_of_hours", "none", "the same, covered by a movement filing"
    ),
    _S("out_of_hours_holiday", "out_of_hours", "alert", "moves on a non-school day, unfiled"),
    _S("out_of_hours_holiday_filed", "out_of_hours", "none", "a filed trip on a non-school day"),
    _S("gps_silent", "device_offline", "alert", "a parked bus's terminal is silent for 10 min"),
    _S("gps_clock_skew_small", "clock_skew", "none", "terminal clock 120 s slow for 20 min"),
    _S("smoke_alarm", "smoke_alarm", "alert", "a smoke sensor alarms for 2.5 min"),
    _S("smoke_test", "smoke_alarm", "none", "a smoke sensor's test"),
    _S("smoke_fault", "device_fault", "alert", "a smoke sensor reports a fault for 15 min"),
    _S("smoke_silent", "device_offline", "alert", "misses heartbeats past offline_after_s"),
    _S("smoke_silent_short", "device_offline", "none", "misses heartbeats, a period short of it"),
    _S("smoke_clock_skew", "clock_skew", "alert", "clock 7 min slow for 20 min (live clock only)"),
    _S("button_panic", "panic_button", "alert", "one-button alarm pressed, reset after 3 min"),
    _S("button_test", "panic_button", "none", "the monthly test press"),
    _S("button_tamper", "device_fault", "alert", "tamper, restored after 4 min"),
    _S("button_fault", "device_fault", "alert", "fault, restored after 10 min"),
    _S("button_silent", "device_offline", "alert", "a one-button alarm misses 6 heartbeats"),
)
DEFAULT_SCENARIOS: Final = tuple(s.name for s in CATALOG)
_INFO: Final = {s.name: s for s in CATALOG}


@dataclass
class DeviceLog:
    """What a device's published messages carried: first copies, sorted by ``ts``."""

    ts_ms: I64
    send_ms: I64
    fix_ts: I64
    fix_send: I64
    fix_x: F64
    fix_y: F64
    fix_speed: F64
    fix_alarm: I64
    fix_backfill: NDArray[np.bool_]
    #: (ts_ms, send_ms, channel, fields) of smoke and button messages.
    events: list[tuple[int, int, str, dict[str, Any]]]


@dataclass
class Probe:
    """Turns a device's log into the ground-truth record of one scenario."""

    scenario: str
    device: str
    evaluate: Callable[[DeviceLog], dict[str, Any]]


@dataclass
class CampusPlan:
    """Timed events of one campus device."""

    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    silences: list[tuple[int, int]] = field(default_factory=list)
    skews: list[tuple[int, int, int]] = field(default_factory=list)
    protected: list[tuple[int, int]] = field(default_factory=list)
    reserved: list[tuple[int, int]] = field(default_factory=list)

    def is_free(self, start_ms: int, end_ms: int, *, pad_ms: int = 10 * _MIN) -> bool:
        """Return whether no scenario holds the device in the padded interval."""
        return all(end_ms + pad_ms <= a or start_ms - pad_ms >= b for a, b in self.reserved)


@dataclass
class CorridorGuard:
    """Keep fixes of a route scenario clear of the corridor edge (and short of 30 s out)."""

    bus: int
    leg: Leg
    s0_m: float
    s1_m: float
    route: int
    corridor_m: float
    max_run_s: float | None


class Planner:
    """Places scenarios on the plans of one run and keeps their probes and filings."""

    def __init__(
        self,
        city: City,
        routes: RouteCache,
        plans: list[BusPlan],
        start_ms: int,
        end_ms: int,
    ) -> None:
        self.city = city
        self.routes = routes
        self.plans = plans
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.campus = {k: CampusPlan() for k, d in enumerate(city.devices) if d.kind != "gps"}
        self.probes: list[Probe] = []
        self.filings: list[dict[str, Any]] = []
        self.skipped: list[tuple[str, str]] = []
        self.guards: list[CorridorGuard] = []
        self._finalizers: list[Callable[[], None]] = []
        self._route_lines: dict[int, shapely.LineString] = {}

    # ------------------------------------------------------------------ driving
    def place(self, names: list[str]) -> None:
        """Place the named scenarios, in catalogue order; unplaceable ones are skipped."""
        wanted = [s.name for s in CATALOG if s.name in set(names)]
        leg_phase = [n for n in wanted if n.startswith(("speeding", "route_"))]
        for k, name in enumerate(leg_phase):
            self._try(name, k)
        for plan in self.plans:
            plan.retime(self.city)
        for finalize in self._finalizers:
            finalize()
        rest = [n for n in wanted if n not in leg_phase]
        for k, name in enumerate(rest, start=len(leg_phase)):
            self._try(name, k)

    def _try(self, name: str, k: int) -> None:
        placer = getattr(self, f"_place_{name}")
        reason = placer(k)
        if reason is not None:
            self.skipped.append((name, reason))

    def route_line(self, route: int) -> shapely.LineString:
        """The route as recorded in the fleet document, in metres."""
        if route not in self._route_lines:
            r = self.city.routes[route]
            self._route_lines[route] = shapely.LineString(np.column_stack([r.vx, r.vy]))
        return self._route_lines[route]

    def _legs(self, k: int, *, in_window: bool = True, shared: bool = False) -> list[Leg]:
        """Legs free for a scenario, fully inside the run, spread over buses by ``k``.

        ``shared`` also offers legs that carry another scenario (for timed
        terminal events, which then must not overlap it in time).
        """
        n = len(self.plans)
        out = []
        for j in range(n):
            plan = self.plans[(j + k) % n]
            for leg in plan.legs:
                taken = leg.scenario is not None and not shared
                if taken or (in_window and leg.window_ms is None):
                    continue
                if leg.depart_ms < self.start_ms + 5 * _MIN:
                    continue
                if leg.arrive_ms(self.city) > self.end_ms - 15 * _MIN:
                    continue
                out.append(leg)
        return out

    def _good_stretches(
        self, leg: Leg, *, limit: float | None, min_bend_kmh: float, margin_m: float
    ) -> list[tuple[float, float]]:
        """Straight, open-sky stretches of a leg away from stops and its ends."""
        path = leg.path
        ok = (bend_cap_kmh(path) >= min_bend_kmh) & (self.city.noise_factor(path.x, path.y) == 1.0)
        if limit is not None:
            ok &= leg.limit_kmh(self.city) == limit
        ok &= (path.s_m > 150.0) & (path.s_m < path.length_m - 150.0)
        for i in leg.stop_idx:
            ok &= np.abs(path.s_m - path.s_m[i]) > 80.0
        out = []
        for i0, i1 in runs(ok.tolist()):
            s0, s1 = path.s_m[i0] + margin_m, path.s_m[i1] - margin_m
            if s1 > s0:
                out.append((float(s0), float(s1)))
        return out

    def _index(self, leg: Leg, s_m: float) -> int:
        return int(np.searchsorted(leg.path.s_m, s_m))

    def _leg_time(self, leg: Leg, s_m: float) -> int:
        return leg.depart_ms + round(leg.profile(self.city).time_at(s_m) * 1000)

    def _gps(self, bus: int) -> str:
        return self.city.gps_of_bus[bus].id

    def _base(self, name: str, device: str, **extra: Any) -> dict[str, Any]:
        info = _INFO[name]
        record = {"device": device, "kind": info.kind, "start": None, "end": None}
        record["expected"] = info.expected
        record["scenario"] = name
        record["severity"] = SEVERITY[info.kind]
        record.update(extra)
        return record

    # -------------------------------------------------------------- speeding
    def _speeding(
        self,
        name: str,
        k: int,
        *,
        margin_kmh: float,
        target_s: float,
        temporary: bool = False,
        blind: bool = False,
    ) -> str | None:
        city = self.city
        limit_of_zone = 20.0 if temporary else 60.0
        v_ms = (limit_of_zone + margin_kmh) / 3.6
        need_m = v_ms * (target_s + 4) + 2 * 60.0
        for leg in self._legs(k, in_window=False):
            stretches = self._good_stretches(
                leg,
                limit=limit_of_zone,
                min_bend_kmh=limit_of_zone + margin_kmh + 10,
                margin_m=10.0,
            )
            fits = [st for st in stretches if st[1] - st[0] >= need_m]
            if not fits:
                continue
            s_lo, s_hi = fits[0]
            if temporary:
                # Only truly temporary 20 km/h stretches (never a 20 km/h limit from elsewhere).
                mid = self._index(leg, (s_lo + s_hi) / 2)
                if not self._in_temporary_zone(leg, mid):
                    continue
            if not self._tune_speeding(leg, s_lo, s_hi, limit_of_zone, margin_kmh, target_s):
                leg.overrides, leg.clear = [], []  # leave the leg as it was
                leg.invalidate()
                continue
            # The platform asks for 1–2 s tracking (JT/T 808 0x8202) on this bus.
            plan = self.plans[leg.bus]
            plan.interval_s = min(plan.interval_s, 2)
            leg.scenario = name
            i0, i1, _v = leg.overrides[0]
            s0, s1 = float(leg.path.s_m[i0]), float(leg.path.s_m[i1])

            def finalize(leg: Leg = leg, s0: float = s0, s1: float = s1) -> None:
                t0, t1 = self._leg_time(leg, s0) - 40_000, self._leg_time(leg, s1) + 40_000
                plan = self.plans[leg.bus]
                plan.reserved.append((t0, t1))
                plan.protected.append((t0, t1))
                if blind:
                    plan.blinds.append((t0 - 30_000, t1 + 20_000))

            self._finalizers.append(finalize)
            bus_id = city.buses[leg.bus].id
            record = self._base(
                name,
                self._gps(leg.bus),
                bus=bus_id,
                limit_kmh=limit_of_zone,
                margin_kmh=margin_kmh,
                target_duration_s=target_s,
                late=blind,
            )
            self.probes.append(
                Probe(name, record["device"], self._speeding_probe(record, leg, s0, s1))
            )
            return None
        return "没有合适的直路段 no straight stretch with that limit on a leg inside the run"

    def _in_temporary_zone(self, leg: Leg, idx: int) -> bool:
        active = leg.active_zones(self.city)
        near = leg.limits.near_zone[leg.limits.near_pt == idx]
        return any(active[z] and self.city.zones[z].kind == "temporary" for z in near.tolist())

    def _tune_speeding(
        self, leg: Leg, s_lo: float, s_hi: float, limit: float, margin: float, target_s: float
    ) -> bool:
        """Size the speeding stretch so the bus is over the limit for about ``target_s``."""
        v_ms = (limit + margin) / 3.6
        length = v_ms * (target_s + 2)
        s0 = s_lo + 60.0
        c0 = self._index(leg, s_lo)
        c1 = self._index(leg, s_hi)
        for _ in range(6):
            s1 = s0 + length
            if s1 > s_hi - 60.0:
                return False
            leg.overrides = [(self._index(leg, s0), self._index(leg, s1), limit + margin)]
            leg.clear = [(c0, c1)]
            leg.invalidate()
            prof = leg.profile(self.city)
            t = np.arange(0.0, prof.duration_s, 0.1)
            s_at = np.interp(t, prof.t_s, prof.s_m)
            inside = (s_at >= s_lo) & (s_at <= s_hi)
            over_s = float(np.count_nonzero((prof.state(t)[3] > limit) & inside)) * 0.1
            if abs(over_s - target_s) <= 0.3:
                return True
            length = max(10.0, length + v_ms * (target_s - over_s))
        return True

    def _speeding_probe(
        self, record: dict[str, Any], leg: Leg, s0: float, s1: float
    ) -> Callable[[DeviceLog], dict[str, Any]]:
        def evaluate(log: DeviceLog) -> dict[str, Any]:
            t0, t1 = self._leg_time(leg, s0) - 30_000, self._leg_time(leg, s1) + 40_000
            sel = (log.fix_ts >= t0) & (log.fix_ts <= t1)
            ts, speed = log.fix_ts[sel], log.fix_speed[sel]
            limit = limit_at(self.city, log.fix_x[sel], log.fix_y[sel], ts)
            over = speed > limit
            out = dict(record)
            eps = find_episodes(ts.tolist(), over.tolist(), open_s=10, close_s=10)
            if over.any():
                first, last = np.flatnonzero(over)[[0, -1]]
                out["start"], out["end"] = _rfc(ts[first]), _rfc(ts[last])
                out["max_speed_kmh"] = float(speed[over].max())
                out["duration_s"] = (int(ts[last]) - int(ts[first])) / 1000
            out["late"] = bool(record["late"]) and bool(log.fix_backfill[sel][over].all())
            return _settle(out, len(eps) == 1 and eps[0].end_ms is not None)

        return evaluate

    def _place_speeding_temp_zone(self, k: int) -> str | None:
        return self._speeding("speeding_temp_zone", k, margin_kmh=9, target_s=15, temporary=True)

    def _place_speeding(self, k: int) -> str | None:
        return self._speeding("speeding", k, margin_kmh=12, target_s=25)

    def _place_speeding_short(self, k: int) -> str | None:
        return self._speeding("speeding_short", k, margin_kmh=6, target_s=5)

    def _place_speeding_backfill(self, k: int) -> str | None:
        return self._speeding("speeding_backfill", k, margin_kmh=10, target_s=20, blind=True)

    # ------------------------------------------------------------ route deviation
    def _lateral(
        self,
        name: str,
        k: int,
        *,
        offset_m: Callable[[float], float],
        hold_m: float,
        ramp_m: float,
        filed: bool = False,
        max_run_s: float | None = None,
        side_street_kmh: float | None = None,
    ) -> str | None:
        city = self.city
        for leg in self._legs(k, in_window=True):
            route = city.buses[leg.bus].route
            corridor = city.routes[route].corridor_m
            offset = offset_m(corridor)
            stretches = self._good_stretches(
                leg, limit=None, min_bend_kmh=60.0, margin_m=ramp_m + 30.0
            )
            fits = [st for st in stretches if st[1] - st[0] >= hold_m]
            if not fits:
                continue
            s_lo, s_hi = fits[0]
            s0 = (s_lo + s_hi) / 2 - hold_m / 2
            s1 = s0 + hold_m
            line = self.route_line(route)
            chosen: DensePath | None = None
            held = (leg.path.s_m >= s0) & (leg.path.s_m <= s1)
            for side in (1.0, -1.0):
                candidate = offset_path(leg.path, s0, s1, side * offset, ramp_m)
                d = shapely.distance(line, shapely.points(candidate.x[held], candidate.y[held]))
                if d.size and float(d.min()) > offset - 3.0:
                    chosen = candidate
                    break
            if chosen is None:
                continue
            # Indices survive the offset (same points, moved); distances do not.
            clear = (self._index(leg, s0 - ramp_m - 50), self._index(leg, s1 + ramp_m + 50))
            slow = (self._index(leg, s0 - ramp_m), self._index(leg, s1 + ramp_m))
            ia, ib = self._index(leg, s0 - ramp_m - 30), self._index(leg, s1 + ramp_m + 30)
            leg.path = chosen
            leg.limits = PathLimits.of(city, chosen)
            leg.clear = [clear]
            if side_street_kmh is not None:
                leg.slow = [(slow[0], slow[1], side_street_kmh)]
            leg.scenario = name
            leg.invalidate()
            plan = self.plans[leg.bus]
            plan.interval_s = min(plan.interval_s, 5)
            a_m, b_m = float(chosen.s_m[ia]), float(chosen.s_m[ib])
            self.guards.append(CorridorGuard(leg.bus, leg, a_m, b_m, route, corridor, max_run_s))
            bus_id = city.buses[leg.bus].id

            def finalize(
                leg: Leg = leg, a_m: float = a_m, b_m: float = b_m, bus_id: str = bus_id
            ) -> None:
                t0, t1 = self._leg_time(leg, a_m) - 60_000, self._leg_time(leg, b_m) + 60_000
                plan = self.plans[leg.bus]
                plan.reserved.append((t0, t1))
                plan.protected.append((t0, t1))
                if filed:
                    self.filings.append(
                        {
                            "bus": bus_id,
                            "kind": "detour",
                            "from": _rfc(_floor_min(t0 - 10 * _MIN)),
                            "to": _rfc(_floor_min(t1 + 11 * _MIN)),
                            "reason": "道路施工，交警指挥绕行 roadworks, police-directed detour",
                        }
                    )

            self._finalizers.append(finalize)
            record = self._base(
                name,
                self._gps(leg.bus),
                bus=bus_id,
                route=city.routes[route].id,
                corridor_m=corridor,
                offset_m=round(offset, 1),
                filed=filed,
            )
            self.probes.append(
                Probe(name, record["device"], self._route_probe(record, leg, a_m, b_m, route))
            )
            return None
        return "没有合适的直路段 no straight stretch on a leg inside a service window"

    def _route_probe(
        self, record: dict[str, Any], leg: Leg, a_m: float, b_m: float, route: int
    ) -> Callable[[DeviceLog], dict[str, Any]]:
        corridor = float(record["corridor_m"])
        line = self.route_line(route)

        def evaluate(log: DeviceLog) -> dict[str, Any]:
            t0, t1 = self._leg_time(leg, a_m) - 40_000, self._leg_time(leg, b_m) + 60_000
            sel = (log.fix_ts >= t0) & (log.fix_ts <= t1)
            ts = log.fix_ts[sel]
            d = shapely.distance(line, shapely.points(log.fix_x[sel], log.fix_y[sel]))
            out_ = d > corridor
            eps = find_episodes(ts.tolist(), out_.tolist(), open_s=30, close_s=30)
            out = dict(record)
            out["max_distance_m"] = round(float(d.max()), 1) if d.size else None
            out["readings_outside"] = int(out_.sum())
            if eps:
                out["start"] = _rfc(ts[eps[0].first])
                out["end"] = _rfc(ts[eps[-1].last]) if eps[-1].end_ms is not None else None
                out["duration_s"] = eps[0].duration_s
            elif out_.any():
                longest = max(runs(out_.tolist()), key=lambda r: int(ts[r[1]] - ts[r[0]]))
                out["start"], out["end"] = _rfc(ts[longest[0]]), _rfc(ts[longest[1]])
                out["duration_s"] = (int(ts[longest[1]]) - int(ts[longest[0]])) / 1000
            else:
                near = int(np.argmax(d)) if d.size else 0
                out["start"] = out["end"] = _rfc(ts[near]) if ts.size else None
                out["duration_s"] = 0.0
            happened = len(eps) == 1 and eps[0].end_ms is not None
            if record["filed"]:
                out["deviation_in_data"] = happened
                return _settle(out, False)
            return _settle(out, happened)

        return evaluate

    def _place_route_detour(self, k: int) -> str | None:
        return self._lateral(
            "route_detour", k, offset_m=lambda c: 250.0, hold_m=300, ramp_m=70,
            side_street_kmh=30.0,
        )  # fmt: skip

    def _place_route_detour_filed(self, k: int) -> str | None:
        return self._lateral(
            "route_detour_filed", k, offset_m=lambda c: 250.0, hold_m=300, ramp_m=70, filed=True,
            side_street_kmh=30.0,
        )  # fmt: skip

    def _place_route_swerve(self, k: int) -> str | None:
        return self._lateral("route_swerve", k, offset_m=lambda c: 60.0, hold_m=120, ramp_m=100)

    def _place_route_edge_jitter(self, k: int) -> str | None:
        return self._lateral(
            "route_edge_jitter", k, offset_m=lambda c: c - 4.0, hold_m=300, ramp_m=80,
            max_run_s=20.0,
        )  # fmt: skip

    # ------------------------------------------------------------ terminal alarms
    def _alarm(self, name: str, k: int, *, bit: int, hold_s: float, freeze: bool) -> str | None:
        for leg in self._legs(k, in_window=False, shared=True):
            prof = leg.profile(self.city)
            if prof.duration_s < hold_s + 240:
                continue
            plan = self.plans[leg.bus]
            for fraction in (0.3, 0.55, 0.2, 0.7):
                t0 = _floor_s(leg.depart_ms + int(prof.duration_s * 1000 * fraction))
                t1 = t0 + int(hold_s * 1000)
                if t1 < leg.arrive_ms(self.city) - 60_000 and plan.is_free(t0, t1):
                    break
            else:
                continue
            leg.scenario = leg.scenario or name
            plan.interval_s = min(plan.interval_s, 10)
            plan.alarm_bits.append((t0, t1, 1 << bit))
            if freeze:
                plan.freezes.append((t0, t1))
            plan.reserved.append((t0 - 60_000, t1 + 60_000))
            plan.protected.append((t0 - 60_000, t1 + 60_000))
            extra: dict[str, Any] = {"bus": self.city.buses[leg.bus].id, "alarm_bit": bit}
            if name == "panic_gps":
                extra["source"] = "gps_alarm"
            else:
                extra["fault"] = _GPS_FAULTS[bit]
            record = self._base(name, self._gps(leg.bus), **extra)
            self.probes.append(Probe(name, record["device"], _bit_probe(record, bit, t0, t1)))
            return None
        return "没有合适的行程 no leg inside the run"

    def _place_panic_gps(self, k: int) -> str | None:
        return self._alarm("panic_gps", k, bit=0, hold_s=120, freeze=False)

    def _place_gps_fault_undervoltage(self, k: int) -> str | None:
        return self._alarm("gps_fault_undervoltage", k, bit=7, hold_s=180, freeze=False)

    def _place_gps_fault_antenna(self, k: int) -> str | None:
        return self._alarm("gps_fault_antenna", k, bit=5, hold_s=120, freeze=True)

    # ------------------------------------------------------------ out of hours
    def _windows_touch(self, bus: int, a_ms: int, b_ms: int) -> bool:
        """Return whether ``[a_ms, b_ms]`` touches a service window on a school day."""
        for day in local_dates(a_ms - 86_400_000, b_ms + 86_400_000):
            if not self.city.school_calendar.is_school_day(day):
                continue
            for _d, w0, w1 in self.city.buses[bus].windows:
                s, e = day_start_ms(day) + w0 * _MIN, day_start_ms(day) + w1 * _MIN
                if a_ms < e and b_ms > s:
                    return True
        return False

    def _trip(self, name: str, k: int, *, holiday: bool, filed: bool) -> str | None:
        city = self.city
        n = len(self.plans)
        # Prefer the night for night trips and the daytime for holiday trips.
        for preferred_only in (True, False):
            for j in range(n):
                plan = self.plans[(j + k) % n]
                for a, b in plan.parked(city, self.start_ms + 3 * _MIN, self.end_ms - 3 * _MIN):
                    t = _ceil_min(a + 4 * _MIN)
                    while t + 25 * _MIN <= b:
                        day = local_datetime(t).date()
                        hour = local_datetime(t).hour + local_datetime(t).minute / 60
                        school_day = city.school_calendar.is_school_day(day)
                        night = hour >= 19 or hour < 6.5
                        preferred = (8 <= hour < 17) if holiday else night
                        fits = (not school_day if holiday else school_day) and (
                            preferred or not preferred_only
                        )
                        if fits and plan.is_free(t - 5 * _MIN, t + 25 * _MIN):
                            leg = self._trip_leg(plan, t)
                            end = leg.arrive_ms(city)
                            ok = end + 12 * _MIN <= b and plan.is_free(
                                t - 5 * _MIN, end + 10 * _MIN
                            )
                            ok = ok and not self._windows_touch(
                                plan.bus, t - 5 * _MIN, end + 10 * _MIN
                            )
                            if ok:
                                self._commit_trip(name, plan, leg, t, end, holiday, filed, night)
                                return None
                        t += 10 * _MIN
        what = (
            "非上学日 a non-school day"
            if holiday
            else "上学日服务时段外 off-window time on a school day"
        )
        return (
            f"运行期间没有{what.split(' ')[0]} no parked time on {what.split(' ', 1)[1]} in the run"
        )

    def _trip_leg(self, plan: BusPlan, t_ms: int) -> Leg:
        city = self.city
        route = city.buses[plan.bus].route
        fwd, _limits, node_idx, _stops = self.routes.forward(route)
        turn_m = min(2500.0, 0.7 * fwd.length_m)
        out = fwd.slice(0.0, turn_m)
        path = join(out, out.reversed())
        n_out = len(out.x)
        nodes_out = node_idx[node_idx < n_out - 1]
        nodes = np.sort(np.concatenate([nodes_out, len(path.x) - 1 - nodes_out]))
        # No traffic light right at the turning point (the stop there is the U-turn).
        nodes = nodes[np.abs(path.s_m[nodes] - path.s_m[n_out - 1]) > 30.0]
        return Leg(
            bus=plan.bus,
            kind="trip",
            depart_ms=t_ms,
            path=path,
            limits=PathLimits.of(city, path),
            node_idx=nodes,
            stop_idx=np.zeros(0, dtype=np.intp),
            key=(plan.bus, t_ms // 1000, 9),
            turnaround_idx=n_out - 1,
        )

    def _commit_trip(
        self,
        name: str,
        plan: BusPlan,
        leg: Leg,
        t: int,
        end: int,
        holiday: bool,
        filed: bool,
        night: bool,
    ) -> None:
        city = self.city
        leg.scenario = name
        plan.legs.append(leg)
        plan.legs.sort(key=lambda leg: leg.depart_ms)
        plan.interval_s = min(plan.interval_s, 15)
        plan.reserved.append((t - 5 * _MIN, end + 10 * _MIN))
        plan.protected.append((t - 5 * _MIN, end + 10 * _MIN))
        bus_id = city.buses[plan.bus].id
        if filed:
            reason = (
                "周末研学活动接送，已报备 weekend study trip, filed"
                if holiday
                else "车辆送修保养，已报备 driving to the garage, filed"
            )
            self.filings.append(
                {
                    "bus": bus_id,
                    "kind": "movement",
                    "from": _rfc(_floor_min(t - 15 * _MIN)),
                    "to": _rfc(_floor_min(end + 16 * _MIN)),
                    "reason": reason,
                }
            )
        context = "holiday" if holiday else ("night" if night else "off_window")
        record = self._base(name, self._gps(plan.bus), bus=bus_id, context=context, filed=filed)

        def evaluate(log: DeviceLog) -> dict[str, Any]:
            t0, t1 = t - 4 * _MIN, end + 9 * _MIN
            sel = (log.fix_ts >= t0) & (log.fix_ts <= t1)
            ts, speed = log.fix_ts[sel], log.fix_speed[sel]
            moving = speed >= 5.0
            eps = find_episodes(ts.tolist(), moving.tolist(), open_s=60, close_s=120)
            out = dict(record)
            if eps:
                out["start"] = _rfc(ts[eps[0].first])
                out["end"] = _rfc(ts[eps[0].last]) if eps[0].end_ms is not None else None
                out["duration_s"] = eps[0].duration_s
                x, y = (
                    log.fix_x[sel][eps[0].first : eps[0].last + 1],
                    log.fix_y[sel][eps[0].first : eps[0].last + 1],
                )
                out["distance_m"] = round(float(np.hypot(np.diff(x), np.diff(y)).sum()), 0)
            happened = len(eps) == 1 and eps[0].end_ms is not None
            if filed:
                out["movement_in_data"] = happened
                return _settle(out, False)
            return _settle(out, happened)

        self.probes.append(Probe(name, record["device"], evaluate))

    def _place_out_of_hours_night(self, k: int) -> str | None:
        return self._trip("out_of_hours_night", k, holiday=False, filed=False)

    def _place_out_of_hours_night_filed(self, k: int) -> str | None:
        return self._trip("out_of_hours_night_filed", k, holiday=False, filed=True)

    def _place_out_of_hours_holiday(self, k: int) -> str | None:
        return self._trip("out_of_hours_holiday", k, holiday=True, filed=False)

    def _place_out_of_hours_holiday_filed(self, k: int) -> str | None:
        return self._trip("out_of_hours_holiday_filed", k, holiday=True, filed=True)

    # ------------------------------------------------------------ parked terminals
    def _parked_slot(self, k: int, need_ms: int) -> tuple[BusPlan, int] | None:
        n = len(self.plans)
        for j in range(n):
            plan = self.plans[(j + k) % n]
            for a, b in plan.parked(self.city, self.start_ms + 3 * _MIN, self.end_ms - 5 * _MIN):
                t = _ceil_min(a + 3 * _MIN)
                while t + need_ms + 3 * _MIN <= b:
                    if plan.is_free(t, t + need_ms):
                        return plan, t
                    t += 10 * _MIN
        return None

    def _place_gps_silent(self, k: int) -> str | None:
        slot = self._parked_slot(k, 14 * _MIN)
        if slot is None:
            return "没有足够长的停车时段 no long enough parked time in the run"
        plan, t = slot
        t0, t1 = t + 60_000, t + 11 * _MIN
        plan.silences.append((t0, t1))
        plan.reserved.append((t, t + 14 * _MIN))
        plan.protected.append((t - 5 * _MIN, t + 19 * _MIN))
        device = self.city.gps_of_bus[plan.bus]
        record = self._base(
            "gps_silent",
            device.id,
            bus=self.city.buses[plan.bus].id,
            threshold_s=device.threshold_s,
        )
        self.probes.append(Probe("gps_silent", device.id, _offline_probe(record, t0, t1)))
        return None

    def _place_gps_clock_skew_small(self, k: int) -> str | None:
        slot = self._parked_slot(k, 25 * _MIN)
        if slot is None:
            return "没有足够长的停车时段 no long enough parked time in the run"
        plan, t = slot
        t0, t1 = t + 2 * _MIN, t + 22 * _MIN
        plan.skews.append((t0, t1, -120_000))
        plan.reserved.append((t, t + 25 * _MIN))
        plan.protected.append((t - 5 * _MIN, t + 30 * _MIN))
        device = self.city.gps_of_bus[plan.bus]
        record = self._base(
            "gps_clock_skew_small", device.id, bus=self.city.buses[plan.bus].id, skew_s=-120,
            clock="live",
        )  # fmt: skip
        self.probes.append(Probe(record["scenario"], device.id, _skew_probe(record, t0, t1)))
        return None

    # ------------------------------------------------------------ campus devices
    def _campus_slot(
        self, kind: str, k: int, need_ms: int, *, heartbeat_s: int | None = None
    ) -> tuple[int, CampusPlan, int] | None:
        devices = [
            i
            for i, d in enumerate(self.city.devices)
            if d.kind == kind and heartbeat_s in (None, d.heartbeat_s)
        ]
        if not devices:
            return None
        n = len(devices)
        for j in range(n):
            idx = devices[(j + k) % n]
            plan = self.campus[idx]
            t = _ceil_min(self.start_ms + 6 * _MIN + (k % 7) * _MIN)
            while t + need_ms + 6 * _MIN <= self.end_ms:
                if plan.is_free(t, t + need_ms):
                    return idx, plan, t
                t += 5 * _MIN
        return None

    def _campus(
        self,
        name: str,
        k: int,
        kind: str,
        need_ms: int,
        script: Callable[[int], list[tuple[int, str, dict[str, Any]]]],
        probe: Callable[[dict[str, Any], int], Callable[[DeviceLog], dict[str, Any]]],
        **extra: Any,
    ) -> str | None:
        slot = self._campus_slot(kind, k, need_ms)
        if slot is None:
            return "运行时间不够 the run is too short for it"
        idx, plan, t = slot
        t += 17_000  # not on the minute
        plan.events.extend(script(t))
        plan.reserved.append((t, t + need_ms))
        plan.protected.append((t - 5 * _MIN, t + need_ms + 5 * _MIN))
        device = self.city.devices[idx]
        school = self.city.schools[device.school] if device.school is not None else None
        record = self._base(name, device.id, school=school.id if school else None, **extra)
        self.probes.append(Probe(name, device.id, probe(record, t)))
        return None

    def _place_smoke_alarm(self, k: int) -> str | None:
        def script(t: int) -> list[tuple[int, str, dict[str, Any]]]:
            out = [
                (
                    t + j * 30_000,
                    "smoke",
                    {"state": "alarm", "obscuration": round(4.2 + 1.6 * j, 1)},
                )
                for j in range(6)
            ]
            out.append((t + 180_000, "smoke", {"state": "normal", "obscuration": 0.3}))
            return out

        return self._campus(
            "smoke_alarm", k, "smoke", 4 * _MIN, script,
            lambda r, t: _event_probe(r, "smoke", ("alarm",), ("normal",), latched=False),
        )  # fmt: skip

    def _place_smoke_test(self, k: int) -> str | None:
        def script(t: int) -> list[tuple[int, str, dict[str, Any]]]:
            return [
                (t, "smoke", {"state": "test", "obscuration": 0.0}),
                (t + 20_000, "smoke", {"state": "normal", "obscuration": 0.0}),
            ]

        return self._campus(
            "smoke_test", k, "smoke", 2 * _MIN, script,
            lambda r, t: _event_probe(r, "smoke", ("test",), ("normal",), latched=False, near=True),
            test=True,
        )  # fmt: skip

    def _place_smoke_fault(self, k: int) -> str | None:
        def script(t: int) -> list[tuple[int, str, dict[str, Any]]]:
            out: list[tuple[int, str, dict[str, Any]]] = [
                (t + j * 5 * _MIN, "smoke", {"state": "fault"}) for j in range(3)
            ]
            out.append((t + 15 * _MIN, "smoke", {"state": "normal", "obscuration": 0.2}))
            return out

        return self._campus(
            "smoke_fault", k, "smoke", 16 * _MIN, script,
            lambda r, t: _event_probe(r, "smoke", ("fault",), ("normal",), latched=False),
            fault="fault",
        )  # fmt: skip

    def _silent(self, name: str, k: int, kind: str, *, alert: bool) -> str | None:
        """Silence a campus device for whole heartbeats: just over or under its threshold."""
        candidates = [d for d in self.city.devices if d.kind == kind]
        if not candidates:
            return "没有这类设备 no such device"
        # The quickest heartbeat of the kind: the shortest scenario.
        quickest = min(candidates, key=lambda d: (d.heartbeat_s, d.threshold_s))
        hb = quickest.heartbeat_s * 1000
        threshold = quickest.threshold_s * 1000
        missed = threshold // hb + 1 if alert else max(1, threshold // hb - 2)
        slot = self._campus_slot(
            kind, k, (missed + 2) * hb + 3 * _MIN, heartbeat_s=quickest.heartbeat_s
        )
        if slot is None:
            return "运行时间不够 the run is too short for it"
        idx, plan, t = slot
        device = self.city.devices[idx]
        hb = device.heartbeat_s * 1000
        threshold = device.threshold_s * 1000
        missed = threshold // hb + 1 if alert else max(1, threshold // hb - 2)
        phase = campus_phase_ms(self.city, idx)
        first = t + 2 * _MIN
        beat = first + (phase - first) % hb
        t0, t1 = beat - 500, beat + (missed - 1) * hb + 500
        plan.silences.append((t0, t1))
        plan.reserved.append((t, t1 + hb + 2 * _MIN))
        plan.protected.append((t0 - 3 * hb, t1 + 3 * hb))
        school = self.city.schools[device.school] if device.school is not None else None
        record = self._base(
            name, device.id, school=school.id if school else None, threshold_s=device.threshold_s
        )
        self.probes.append(Probe(name, device.id, _offline_probe(record, t0, t1)))
        return None

    def _place_smoke_silent(self, k: int) -> str | None:
        return self._silent("smoke_silent", k, "smoke", alert=True)

    def _place_smoke_silent_short(self, k: int) -> str | None:
        return self._silent("smoke_silent_short", k, "smoke", alert=False)

    def _place_button_silent(self, k: int) -> str | None:
        return self._silent("button_silent", k, "button", alert=True)

    def _place_smoke_clock_skew(self, k: int) -> str | None:
        slot = self._campus_slot("smoke", k, 26 * _MIN)
        if slot is None:
            return "运行时间不够 the run is too short for it"
        idx, plan, t = slot
        t0, t1 = t + 3 * _MIN, t + 23 * _MIN
        plan.skews.append((t0, t1, -420_000))
        plan.reserved.append((t, t + 26 * _MIN))
        device = self.city.devices[idx]
        hb = device.heartbeat_s * 1000
        plan.protected.append((t0 - 3 * hb, t1 + 3 * hb))
        school = self.city.schools[device.school] if device.school is not None else None
        record = self._base(
            "smoke_clock_skew", device.id, school=school.id if school else None, skew_s=-420,
            clock="live",
        )  # fmt: skip
        self.probes.append(Probe("smoke_clock_skew", device.id, _skew_probe(record, t0, t1)))
        return None

    def _place_button_panic(self, k: int) -> str | None:
        def script(t: int) -> list[tuple[int, str, dict[str, Any]]]:
            return [(t, "button", {"event": "press"}), (t + 3 * _MIN, "button", {"event": "reset"})]

        return self._campus(
            "button_panic", k, "button", 4 * _MIN, script,
            lambda r, t: _event_probe(r, "button", ("press",), (), latched=True),
            source="button",
        )  # fmt: skip

    def _place_button_test(self, k: int) -> str | None:
        def script(t: int) -> list[tuple[int, str, dict[str, Any]]]:
            return [(t, "button", {"event": "test"})]

        return self._campus(
            "button_test", k, "button", 2 * _MIN, script,
            lambda r, t: _event_probe(r, "button", ("test",), (), latched=False, near=True),
            test=True,
        )  # fmt: skip

    def _place_button_tamper(self, k: int) -> str | None:
        def script(t: int) -> list[tuple[int, str, dict[str, Any]]]:
            return [
                (t, "button", {"event": "tamper"}),
                (t + 4 * _MIN, "button", {"event": "restore"}),
            ]

        return self._campus(
            "button_tamper", k, "button", 5 * _MIN, script,
            lambda r, t: _event_probe(r, "button", ("tamper",), ("restore",), latched=False),
            fault="tamper",
        )  # fmt: skip

    def _place_button_fault(self, k: int) -> str | None:
        def script(t: int) -> list[tuple[int, str, dict[str, Any]]]:
            return [
                (t, "button", {"event": "fault"}),
                (t + 10 * _MIN, "button", {"event": "restore"}),
            ]

        return self._campus(
            "button_fault", k, "button", 11 * _MIN, script,
            lambda r, t: _event_probe(r, "button", ("fault",), ("restore",), latched=False),
            fault="fault",
        )  # fmt: skip


_GPS_FAULTS: Final = {
    4: "gnss_fault",
    5: "gnss_antenna_cut",
    6: "gnss_antenna_short",
    7: "undervoltage",
    8: "power_off",
}


def limit_at(city: City, x: F64, y: F64, ts_ms: I64) -> F64:
    """Speed limit at fixes: the lowest valid zone containing each, else 60 km/h."""
    limit = np.full(len(x), DEFAULT_LIMIT_KMH)
    if not len(x):
        return limit
    pt, zone = city.zone_tree.query(shapely.points(x, y), predicate="intersects")
    for p, z in zip(pt.tolist(), zone.tolist(), strict=True):
        if city.zones[z].valid_at(int(ts_ms[p])):
            limit[p] = min(limit[p], city.zones[z].limit_kmh)
    return limit


def campus_phase_ms(city: City, device: int) -> int:
    """Offset of a campus device's heartbeat grid (whole seconds within one period)."""
    d = city.devices[device]
    return int(rng_for(city.spec.seed, _P_CAMPUS, device).integers(d.heartbeat_s)) * 1000


_P_CAMPUS: Final = 300


def _rfc(ts_ms: int | np.integer[Any]) -> str:
    return format_rfc3339(int(ts_ms))


def _floor_min(ts_ms: int) -> int:
    return ts_ms - ts_ms % _MIN


def _ceil_min(ts_ms: int) -> int:
    return -(-ts_ms // _MIN) * _MIN


def _floor_s(ts_ms: int) -> int:
    return ts_ms - ts_ms % 1000


def _settle(record: dict[str, Any], alert_in_data: bool) -> dict[str, Any]:
    """Make ``expected`` what the emitted data shows; note when it differs from the plan."""
    shown = "alert" if alert_in_data else "none"
    if shown != record["expected"]:
        record["intended"] = record["expected"]
        record["expected"] = shown
    return record


def _bit_probe(
    record: dict[str, Any], bit: int, t0: int, t1: int
) -> Callable[[DeviceLog], dict[str, Any]]:
    mask = 1 << bit

    def evaluate(log: DeviceLog) -> dict[str, Any]:
        sel = (log.fix_ts >= t0 - 120_000) & (log.fix_ts <= t1 + 120_000)
        ts, on = log.fix_ts[sel], (log.fix_alarm[sel] & mask) != 0
        out = dict(record)
        rising = on & ~np.concatenate([[False], on[:-1]])
        if not on.any():
            return _settle(out, False)
        first = int(np.flatnonzero(on)[0])
        last = int(np.flatnonzero(on)[-1])
        out["start"] = _rfc(ts[first])
        if bit == 0:
            out["end"] = None  # latched until a person resolves it
        else:
            out["end"] = _rfc(ts[last])
            cleared = np.flatnonzero(~on[last:])
            out["cleared_at"] = _rfc(ts[last + int(cleared[0])]) if cleared.size else None
        return _settle(out, int(rising.sum()) == 1)

    return evaluate


def _offline_probe(
    record: dict[str, Any], t0: int, t1: int
) -> Callable[[DeviceLog], dict[str, Any]]:
    threshold_ms = int(record["threshold_s"]) * 1000

    def evaluate(log: DeviceLog) -> dict[str, Any]:
        out = dict(record)
        before = log.ts_ms[log.ts_ms < t0]
        after = log.ts_ms[log.ts_ms >= t1]
        if not before.size or not after.size:
            return _settle(out, False)
        last, nxt = int(before.max()), int(after.min())
        out["last_seen"] = _rfc(last)
        out["gap_s"] = (nxt - last) / 1000
        if nxt - last > threshold_ms:
            out["start"], out["end"] = _rfc(last + threshold_ms), _rfc(nxt)
            return _settle(out, True)
        out["start"], out["end"] = _rfc(last), _rfc(nxt)
        return _settle(out, False)

    return evaluate


def _skew_probe(record: dict[str, Any], t0: int, t1: int) -> Callable[[DeviceLog], dict[str, Any]]:
    skew_ms = int(record["skew_s"]) * 1000

    def evaluate(log: DeviceLog) -> dict[str, Any]:
        out = dict(record)
        lag = log.ts_ms - log.send_ms
        skewed = (log.send_ms >= t0) & (log.send_ms < t1 + 60_000) & (lag <= skew_ms // 2)
        if not skewed.any():
            return _settle(out, False)
        ts, send = log.ts_ms[skewed], log.send_ms[skewed]
        first, last = int(np.argmin(send)), int(np.argmax(send))
        out["start"], out["end"] = _rfc(ts[first]), _rfc(ts[last])
        out["received_start"], out["received_end"] = _rfc(send[first]), _rfc(send[last])
        worst = int(np.abs(lag[skewed]).max())
        out["max_skew_s"] = round(worst / 1000, 1)
        return _settle(out, worst > 300_000)

    return evaluate


def _event_probe(
    record: dict[str, Any],
    channel: str,
    opens: tuple[str, ...],
    closes: tuple[str, ...],
    *,
    latched: bool,
    near: bool = False,
) -> Callable[[DeviceLog], dict[str, Any]]:
    key = "state" if channel == "smoke" else "event"

    def evaluate(log: DeviceLog) -> dict[str, Any]:
        out = dict(record)
        hits = [e for e in log.events if e[2] == channel and e[3].get(key) in opens]
        start_ms = None
        for e in log.events:
            if e[2] == channel and e[3].get(key) in opens:
                start_ms = e[0]
                break
        if start_ms is None:
            return _settle(out, False)
        first_close = next(
            (
                e
                for e in log.events
                if e[0] > start_ms and e[2] == channel and e[3].get(key) in closes
            ),
            None,
        )
        episode = [e for e in hits if first_close is None or e[0] < first_close[0]]
        out["start"] = _rfc(start_ms)
        out["end"] = None if latched else _rfc(episode[-1][0])
        if first_close is not None:
            out["cleared_at"] = _rfc(first_close[0])
        obscuration = [e[3]["obscuration"] for e in episode if "obscuration" in e[3]]
        if obscuration and not near:
            out["obscuration"] = max(obscuration)
        return _settle(out, not near)

    return evaluate
