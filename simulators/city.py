"""A synthetic city around Suzhou Industrial Park, and its fleet document.

The city is a jittered street grid (500 m blocks, finer for many schools)
over about 120.60–120.85 E, 31.25–31.40 N with one east–west expressway,
16 safety districts (片区), schools at intersections, bus depots, one route
per bus from its depot through its stops to its school, speed zones (30 km/h
around every school, 80 km/h on the expressway, temporary 20 km/h roadworks
with validity windows) and several bus operators. Everything is drawn from
``numpy.random.default_rng`` streams keyed by the seed and a purpose, so the
same seed and sizes give the same city — and :func:`dump_fleet` the same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any, Final, Literal

import numpy as np
import shapely
from numpy.typing import NDArray

from simulators._geo import (
    LAT0,
    LON0,
    M_PER_DEG_LAT,
    M_PER_DEG_LON,
    lonlat_list,
    to_lonlat,
    to_xy,
)
from simulators._time import TIMEZONE, SchoolCalendar, format_rfc3339, local_datetime

__all__ = [
    "Bus",
    "City",
    "CitySpec",
    "Device",
    "Route",
    "School",
    "Zone",
    "build_city",
    "dump_fleet",
    "fleet_document",
    "rng_for",
]

F64 = NDArray[np.float64]
TsFormat = Literal["ms", "rfc3339"]

#: The city's extent (degrees).
WEST, EAST, SOUTH, NORTH = 120.60, 120.85, 31.25, 31.40
#: Default speed limit where no zone applies (contract §3).
DEFAULT_LIMIT_KMH: Final = 60.0
SCHOOL_ZONE_RADIUS_M: Final = 150.0
EXPRESSWAY_HALF_WIDTH_M: Final = 60.0
TEMP_ZONE_LENGTH_M: Final = 300.0
TEMP_ZONE_HALF_WIDTH_M: Final = 40.0

_PLACES = (
    "星湖", "金鸡湖", "独墅湖", "斜塘", "娄葑", "唯亭", "胜浦", "星港", "青剑湖", "阳澄湖",
    "湖东", "湖西", "月亮湾", "东沙湖", "翰林", "景城", "星洲", "方洲", "莲花", "车坊",
    "跨塘", "东延", "钟南", "旺墩", "苏胜", "沙湖", "朝前", "星华", "玲珑", "凤凰",
)  # fmt: skip
_SCHOOL_KINDS = (
    "实验小学", "中心小学", "小学", "外国语学校", "实验学校", "初级中学", "学校", "幼儿园",
)  # fmt: skip
_OPERATORS = (
    "苏州园区安达校车服务有限公司", "苏州金湖学生交通有限公司", "苏州星洲校车运营有限公司",
    "苏州独墅湖客运有限公司", "苏州东沙湖校车服务有限公司", "苏州娄葑公交客运有限公司",
    "苏州唯亭校车有限公司", "苏州胜浦学生接送服务有限公司", "苏州斜塘交通服务有限公司",
    "苏州阳澄湖校车服务有限公司", "苏州青剑湖客运有限公司", "苏州月亮湾校车有限公司",
)  # fmt: skip
_NUMERALS = "一二三四五六七八九十"
_PLATE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
#: Urban canyons near the CBD where GNSS error is worse: lon, lat, radius (m).
_CANYONS = ((120.672, 31.318, 700.0), (120.700, 31.312, 600.0), (120.742, 31.334, 600.0))
CANYON_NOISE_FACTOR: Final = 2.5


def rng_for(seed: int, *purpose: int) -> np.random.Generator:
    """Return an independent generator for one purpose (e.g. ``(seed, 3, bus)``)."""
    return np.random.default_rng([seed, *purpose])


# Purposes of random streams; never reorder, only append.
_P_GRID, _P_SCHOOLS, _P_DEPOTS, _P_BUSES, _P_ROUTES, _P_DEVICES, _P_ZONES, _P_DISTRICTS = range(8)


@dataclass(frozen=True)
class CitySpec:
    """Sizes and identity of a city; ``start_ms``/``end_ms`` place temporary zones in time."""

    buses: int = 5
    schools: int = 2
    seed: int = 7
    start_ms: int = 0
    end_ms: int = 0
    id_prefix: str = ""


@dataclass(frozen=True)
class School:
    """A school: its gate is the grid node its buses' routes end at."""

    id: str
    name: str
    district: str
    x: float
    y: float
    gate: tuple[int, int]


@dataclass(frozen=True)
class Route:
    """One bus route: grid nodes from depot to school, with stops on its edges."""

    id: str
    school: int
    corridor_m: float
    nodes: tuple[tuple[int, int], ...]
    vx: F64
    vy: F64
    #: Distances along the route (m) of the bus stops.
    stops_m: tuple[float, ...]


@dataclass(frozen=True)
class Bus:
    """A school bus with its operator, route, service windows and terminal settings."""

    id: str
    plate: str
    operator: str
    school: int
    route: int
    #: (days, start minute, end minute) in local time.
    windows: tuple[tuple[str, int, int], ...]
    interval_s: int
    #: Fraction of the safe cap this driver cruises at.
    pace: float


@dataclass(frozen=True)
class Device:
    """A device: GPS terminal of a bus, or a campus smoke sensor or button."""

    id: str
    kind: Literal["gps", "smoke", "button"]
    bus: int | None
    school: int | None
    #: As written in the fleet document (None = the contract default).
    offline_after_s: int | None
    heartbeat_s: int
    ts_format: TsFormat

    @property
    def threshold_s(self) -> int:
        """The offline threshold in effect."""
        if self.offline_after_s is not None:
            return self.offline_after_s
        return 900 if self.kind == "smoke" else 300


@dataclass(frozen=True)
class Zone:
    """A speed zone in local metres, with its validity in epoch ms (None = open)."""

    id: str
    limit_kmh: float
    polygon: shapely.Polygon
    valid_from_ms: int | None
    valid_to_ms: int | None
    reason: str
    kind: Literal["school", "expressway", "temporary"]

    def valid_at(self, ts_ms: int) -> bool:
        """Return whether the zone applies at ``ts_ms``."""
        if self.valid_from_ms is not None and ts_ms < self.valid_from_ms:
            return False
        return self.valid_to_ms is None or ts_ms < self.valid_to_ms

    def valid_during(self, start_ms: int, end_ms: int) -> bool:
        """Return whether the zone applies at any time in ``[start_ms, end_ms]``."""
        if self.valid_from_ms is not None and end_ms < self.valid_from_ms:
            return False
        return self.valid_to_ms is None or start_ms < self.valid_to_ms


@dataclass
class City:
    """Everything the simulator knows about the city, in local metres."""

    spec: CitySpec
    spacing_m: float
    node_x: F64
    node_y: F64
    expressway_row: int
    districts: list[tuple[str, str, shapely.Polygon]]
    operators: list[dict[str, str]]
    schools: list[School]
    depots: list[tuple[int, int]]
    routes: list[Route]
    buses: list[Bus]
    devices: list[Device]
    zones: list[Zone]
    calendar: dict[str, Any]
    school_calendar: SchoolCalendar = field(repr=False)

    @cached_property
    def zone_tree(self) -> shapely.STRtree:
        """Spatial index of the zone polygons."""
        return shapely.STRtree([z.polygon for z in self.zones])

    @cached_property
    def zone_cores(self) -> shapely.STRtree:
        """Spatial index of the zones shrunk by the 40 m safety margin."""
        return shapely.STRtree([z.polygon.buffer(-SAFETY_MARGIN_M) for z in self.zones])

    @cached_property
    def gps_of_bus(self) -> dict[int, Device]:
        """The GPS terminal of each bus."""
        return {d.bus: d for d in self.devices if d.kind == "gps" and d.bus is not None}

    def noise_factor(self, x: F64, y: F64) -> F64:
        """GNSS error multiplier at points: 1 in open sky, more in urban canyons."""
        factor = np.ones_like(x)
        for lon, lat, radius in _CANYONS:
            cx, cy = to_xy(lon, lat)
            inside = np.hypot(x - cx, y - cy) < radius
            factor[inside] = CANYON_NOISE_FACTOR
        return factor


#: Distance from a zone's edge a bus keeps its speed for the stricter side.
SAFETY_MARGIN_M: Final = 40.0


def build_city(spec: CitySpec) -> City:
    """Build the city for ``spec``; the same spec always gives the same city."""
    if spec.buses < 0 or spec.schools < 1:
        raise ValueError("至少需要一所学校 need at least one school, and buses >= 0")
    pre = spec.id_prefix
    width_m = (EAST - WEST) * M_PER_DEG_LON
    height_m = (NORTH - SOUTH) * M_PER_DEG_LAT
    spacing = float(np.clip(math.sqrt(width_m * height_m / (spec.schools * 1.6)), 250.0, 500.0))
    nx = int(width_m // spacing) + 1
    ny = int(height_m // spacing) + 1
    g = rng_for(spec.seed, _P_GRID)
    x0_a, y0_a = to_xy(WEST, SOUTH)
    x0, y0 = float(x0_a), float(y0_a)
    jitter = min(25.0, spacing * 0.05)
    node_x = x0 + np.arange(nx)[None, :] * spacing + g.uniform(-jitter, jitter, (ny, nx))
    node_y = y0 + np.arange(ny)[:, None] * spacing + g.uniform(-jitter, jitter, (ny, nx))
    express_row = round(ny * 0.62)
    node_y[express_row, :] = y0 + express_row * spacing  # the expressway runs straight

    districts = _districts(spec, x0, y0, width_m, height_m)
    n_ops = int(np.clip(spec.buses // 150 + 2, 2, len(_OPERATORS)))
    operators = [_operator(pre, k, spec.seed) for k in range(n_ops)]

    # Schools at interior intersections away from the expressway.
    gs = rng_for(spec.seed, _P_SCHOOLS)
    candidates = [
        (i, j) for j in range(1, ny - 1) for i in range(1, nx - 1) if abs(j - express_row) > 1
    ]
    if spec.schools > len(candidates):
        raise ValueError(f"学校太多 too many schools for the city: max {len(candidates)}")
    picks = gs.choice(len(candidates), size=spec.schools, replace=False)
    names = _school_names(spec.schools, gs)
    district_polys = [d[2] for d in districts]
    schools: list[School] = []
    sw = max(3, len(str(spec.schools)))
    for k, c in enumerate(sorted(int(p) for p in picks)):
        i, j = candidates[c]
        angle = gs.uniform(0, 2 * math.pi)
        sx = float(node_x[j, i] + 30 * math.cos(angle))
        sy = float(node_y[j, i] + 30 * math.sin(angle))
        dk = _district_of(district_polys, sx, sy)
        schools.append(School(f"{pre}S{k + 1:0{sw}d}", names[k], districts[dk][0], sx, sy, (i, j)))
    school_nodes = {s.gate for s in schools}

    # Depots: a few spread at random, more made next to schools that lack one.
    gd = rng_for(spec.seed, _P_DEPOTS)
    depots: list[tuple[int, int]] = []
    depot_ops: list[int] = []

    def add_depot(node: tuple[int, int], operator: int) -> int:
        depots.append(node)
        depot_ops.append(operator)
        return len(depots) - 1

    free = [
        (i, j)
        for j in range(1, ny - 1)
        for i in range(1, nx - 1)
        if (i, j) not in school_nodes and abs(j - express_row) > 0
    ]
    n_depots = min(len(free), max(2, spec.buses // 30))
    for k, p in enumerate(gd.choice(len(free), size=n_depots, replace=False)):
        add_depot(free[int(p)], k % n_ops)

    gb = rng_for(spec.seed, _P_BUSES)
    gr = rng_for(spec.seed, _P_ROUTES)
    order = gb.permutation(spec.schools) if spec.schools else np.zeros(0, dtype=int)
    routes: list[Route] = []
    buses: list[Bus] = []
    bw = max(4, len(str(spec.buses)))
    plates = _plates(spec.buses, gb)
    for b in range(spec.buses):
        school = int(order[b % spec.schools])
        gate = schools[school].gate
        depot = _pick_depot(
            depots, depot_ops, b % n_ops, gate, gd, nx, ny, school_nodes, express_row, add_depot
        )
        nodes = _staircase(depots[depot], gate, express_row, gr)
        vx, vy = _on_grid_of_record(
            np.array([node_x[j, i] for i, j in nodes]), np.array([node_y[j, i] for i, j in nodes])
        )
        seg = np.hypot(np.diff(vx), np.diff(vy))
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        n_stops = int(gr.integers(2, 6))
        edges = (
            gr.choice(
                np.arange(1, len(seg) - 1), size=min(n_stops, max(0, len(seg) - 2)), replace=False
            )
            if len(seg) > 2
            else np.zeros(0, dtype=int)
        )
        stops = tuple(sorted(float(cum[e] + seg[e] * gr.uniform(0.35, 0.65)) for e in edges))
        corridor = float(gr.choice([100.0, 100.0, 100.0, 100.0, 150.0]))
        routes.append(Route(f"{pre}R{b + 1:0{bw}d}", school, corridor, tuple(nodes), vx, vy, stops))
        length_m = float(cum[-1])
        windows = _windows(length_m, len(stops), gb)
        interval = int(gb.choice([1, 2, 5, 10, 15, 30], p=[0.1, 0.15, 0.3, 0.25, 0.1, 0.1]))
        buses.append(
            Bus(
                id=f"{pre}B{b + 1:0{bw}d}",
                plate=plates[b],
                operator=operators[depot_ops[depot]]["id"],
                school=school,
                route=b,
                windows=windows,
                interval_s=interval,
                pace=float(gb.uniform(0.88, 1.0)),
            )
        )

    devices = _devices(spec, buses, schools, bw, sw)
    zones = _zones(spec, schools, routes, node_x, node_y, express_row)
    calendar = {
        "breaks": [
            {"start": "2027-01-23", "end": "2027-02-21", "name": "寒假"},
            {"start": "2027-07-03", "end": "2027-08-31", "name": "暑假"},
        ],
        "extra_school_days": [],
        "extra_days_off": [],
    }
    school_calendar = SchoolCalendar(
        breaks=[(date(2027, 1, 23), date(2027, 2, 21)), (date(2027, 7, 3), date(2027, 8, 31))]
    )
    return City(
        spec=spec,
        spacing_m=spacing,
        node_x=node_x,
        node_y=node_y,
        expressway_row=express_row,
        districts=districts,
        operators=operators,
        schools=schools,
        depots=depots,
        routes=routes,
        buses=buses,
        devices=devices,
        zones=zones,
        calendar=calendar,
        school_calendar=school_calendar,
    )


def _on_grid_of_record(x: F64, y: F64) -> tuple[F64, F64]:
    """Snap points to what the fleet document records (6 decimals), so distances agree."""
    lon, lat = to_lonlat(x, y)
    return to_xy(np.round(lon, 6), np.round(lat, 6))


def _numeral(n: int) -> str:
    if n <= 10:
        return _NUMERALS[n - 1]
    if n < 20:
        return "十" + _NUMERALS[n - 11]
    return str(n)


def _districts(
    spec: CitySpec, x0: float, y0: float, width_m: float, height_m: float
) -> list[tuple[str, str, shapely.Polygon]]:
    """16 districts: a 4 x 4 lattice whose inner corners are jittered, so they tile."""
    g = rng_for(spec.seed, _P_DISTRICTS)
    lx = x0 + np.linspace(0, width_m, 5)[None, :] + np.zeros((5, 1))
    ly = y0 + np.linspace(0, height_m, 5)[:, None] + np.zeros((1, 5))
    lx[1:4, 1:4] += g.uniform(-700, 700, (3, 3))
    ly[1:4, 1:4] += g.uniform(-500, 500, (3, 3))
    out = []
    k = 0
    for j in range(4):
        for i in range(4):
            k += 1
            ring = [
                (lx[j, i], ly[j, i]),
                (lx[j, i + 1], ly[j, i + 1]),
                (lx[j + 1, i + 1], ly[j + 1, i + 1]),
                (lx[j + 1, i], ly[j + 1, i]),
            ]
            poly = shapely.Polygon(ring)
            out.append((f"{spec.id_prefix}D{k:02d}", f"片区{_numeral(k)}", poly))
    return out


def _district_of(polys: Sequence[shapely.Polygon], x: float, y: float) -> int:
    point = shapely.Point(x, y)
    for k, poly in enumerate(polys):
        if poly.covers(point):
            return k
    return int(np.argmin([poly.distance(point) for poly in polys]))


def _operator(prefix: str, k: int, seed: int) -> dict[str, str]:
    op = {
        "id": f"{prefix}OP{k + 1}",
        "name": _OPERATORS[k],
        "email": f"ops{k + 1}@example.cn",
    }
    if k % 3 != 2:
        op["webhook"] = f"https://hooks.example.cn/anxiao/{prefix}OP{k + 1}"
    return op


def _school_names(n: int, g: np.random.Generator) -> list[str]:
    combos = len(_PLACES) * len(_SCHOOL_KINDS)
    order = g.permutation(combos)
    names = []
    for k in range(n):
        c = int(order[k % combos])
        base = _PLACES[c % len(_PLACES)] + _SCHOOL_KINDS[c // len(_PLACES)]
        rank = k // combos
        names.append(base if rank == 0 else f"{base}第{_numeral(rank + 1)}校区")
    return names


def _plates(n: int, g: np.random.Generator) -> list[str]:
    seen: set[str] = set()
    plates: list[str] = []
    while len(plates) < n:
        letter = _PLATE_LETTERS[int(g.integers(len(_PLATE_LETTERS)))]
        plate = f"苏E·{letter}{int(g.integers(10000)):04d}"
        if plate not in seen:
            seen.add(plate)
            plates.append(plate)
    return plates


def _pick_depot(
    depots: list[tuple[int, int]],
    depot_ops: list[int],
    operator: int,
    gate: tuple[int, int],
    g: np.random.Generator,
    nx: int,
    ny: int,
    school_nodes: set[tuple[int, int]],
    express_row: int,
    add_depot: Callable[[tuple[int, int], int], int],
) -> int:
    """A depot of ``operator`` 5–16 blocks from the school gate, made if none is."""
    fits = [
        k
        for k, (i, j) in enumerate(depots)
        if depot_ops[k] == operator and 5 <= abs(i - gate[0]) + abs(j - gate[1]) <= 16
    ]
    if fits:
        return int(fits[int(g.integers(len(fits)))])
    for _ in range(500):
        di, dj = int(g.integers(-9, 10)), int(g.integers(-7, 8))
        node = (gate[0] + di, gate[1] + dj)
        if (
            1 <= node[0] < nx - 1
            and 1 <= node[1] < ny - 1
            and 6 <= abs(di) + abs(dj) <= 14
            and node not in school_nodes
            and node[1] != express_row
        ):
            return add_depot(node, operator)
    raise RuntimeError("no room for a depot")  # pragma: no cover - the grid is large


def _staircase(
    start: tuple[int, int], end: tuple[int, int], express_row: int, g: np.random.Generator
) -> list[tuple[int, int]]:
    """A monotone grid path with straight runs of 2–5 blocks, via the expressway if long."""
    (i, j), (ti, tj) = start, end
    nodes = [(i, j)]

    def walk(di: int, dj: int, n: int) -> None:
        nonlocal i, j
        for _ in range(n):
            i, j = i + di, j + dj
            nodes.append((i, j))

    lo, hi = min(j, tj), max(j, tj)
    if abs(ti - i) >= 8 and lo < express_row < hi:
        walk(0, 1 if express_row > j else -1, abs(express_row - j))
        walk(1 if ti > i else -1, 0, abs(ti - i))
        walk(0, 1 if tj > j else -1, abs(tj - j))
        return nodes
    horizontal = bool(g.integers(2))
    while (i, j) != (ti, tj):
        if horizontal and i != ti:
            walk(1 if ti > i else -1, 0, min(abs(ti - i), int(g.integers(2, 6))))
        elif not horizontal and j != tj:
            walk(0, 1 if tj > j else -1, min(abs(tj - j), int(g.integers(2, 6))))
        horizontal = not horizontal
    return nodes


def _ceil10(minute: float) -> int:
    return int(math.ceil(minute / 10.0) * 10)


def _windows(
    length_m: float, n_stops: int, g: np.random.Generator
) -> tuple[tuple[str, int, int], ...]:
    """Morning and afternoon windows long enough for the run at a cautious 15 km/h."""
    leg_min = length_m / (15 / 3.6) / 60 + n_stops * 1.2 + 3
    need = 12 + leg_min + 10 + leg_min + 15
    am = int(g.choice([6 * 60 + 30, 6 * 60 + 40, 6 * 60 + 50]))
    pm = int(g.choice([15 * 60 + 30, 15 * 60 + 40, 16 * 60]))
    return (
        ("school", am, max(am + 120, am + _ceil10(need))),
        ("school", pm, max(pm + 120, pm + _ceil10(need))),
    )


def _devices(
    spec: CitySpec, buses: list[Bus], schools: list[School], bw: int, sw: int
) -> list[Device]:
    g = rng_for(spec.seed, _P_DEVICES)
    pre = spec.id_prefix
    out: list[Device] = []
    for b, bus in enumerate(buses):
        fmt: TsFormat = "rfc3339" if g.random() < 0.2 else "ms"
        out.append(Device(f"{pre}GPS-{bus.id.removeprefix(pre)}", "gps", b, None, None, 60, fmt))
    small = len(schools) <= 20
    for s, school in enumerate(schools):
        sid = school.id.removeprefix(pre)
        n_smoke = 2 if small else int(g.integers(1, 4))
        for k in range(n_smoke):
            slow = g.random() < 0.15
            fmt = "rfc3339" if g.random() < 0.5 else "ms"
            out.append(
                Device(
                    f"{pre}SMK-{sid}-{k + 1}",
                    "smoke",
                    None,
                    s,
                    1800 if slow else 900,
                    600 if slow else 300,
                    fmt,
                )
            )
        n_btn = 1 if small or g.random() < 0.8 else 2
        for k in range(n_btn):
            fmt = "rfc3339" if g.random() < 0.5 else "ms"
            out.append(Device(f"{pre}BTN-{sid}-{k + 1}", "button", None, s, None, 60, fmt))
    return out


def _circle(x: float, y: float, radius_m: float, n: int = 24) -> shapely.Polygon:
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return shapely.Polygon(np.column_stack([x + radius_m * np.cos(a), y + radius_m * np.sin(a)]))


def _zones(
    spec: CitySpec,
    schools: list[School],
    routes: list[Route],
    node_x: F64,
    node_y: F64,
    express_row: int,
) -> list[Zone]:
    pre = spec.id_prefix
    zones = [
        Zone(
            f"{pre}Z-{s.id.removeprefix(pre)}",
            30.0,
            _circle(s.x, s.y, SCHOOL_ZONE_RADIUS_M),
            None,
            None,
            "学校周边限速 school zone",
            "school",
        )
        for s in schools
    ]
    line = shapely.LineString(np.column_stack([node_x[express_row], node_y[express_row]]))
    zones.append(
        Zone(
            f"{pre}Z-EXP1",
            80.0,
            line.buffer(EXPRESSWAY_HALF_WIDTH_M, cap_style="flat"),
            None,
            None,
            "快速路 expressway",
            "expressway",
        )
    )
    # Temporary roadworks limits on route edges: active, expired, not yet, from mid-run.
    g = rng_for(spec.seed, _P_ZONES)
    n_temp = max(4, len(schools) // 25)
    day_ms = 86_400_000
    day0 = (
        int(
            local_datetime(spec.start_ms)
            .replace(hour=0, minute=0, second=0, microsecond=0)
            .timestamp()
        )
        * 1000
    )
    school_polys = shapely.union_all([z.polygon for z in zones])
    placed = 0
    attempts = 0
    while placed < n_temp and routes and attempts < 50 * n_temp:
        attempts += 1
        r = (
            routes[placed % len(routes)]
            if placed < len(routes)
            else routes[int(g.integers(len(routes)))]
        )
        if len(r.vx) < 4:
            continue
        e = int(g.integers(1, len(r.vx) - 2))
        (_i0, j0), (_i1, j1) = r.nodes[e], r.nodes[e + 1]
        if j0 == express_row and j1 == express_row:
            continue
        ax, ay, bx, by = r.vx[e], r.vy[e], r.vx[e + 1], r.vy[e + 1]
        length = math.hypot(bx - ax, by - ay)
        mid = 0.5
        half = TEMP_ZONE_LENGTH_M / 2 / length
        seg = shapely.LineString(
            [
                (ax + (bx - ax) * (mid - half), ay + (by - ay) * (mid - half)),
                (ax + (bx - ax) * (mid + half), ay + (by - ay) * (mid + half)),
            ]
        )
        poly = seg.buffer(TEMP_ZONE_HALF_WIDTH_M, cap_style="flat")
        # Keep clear of school zones where the city leaves room (dense cities do not).
        if poly.distance(school_polys) < 2 * SAFETY_MARGIN_M and attempts < 10 * n_temp:
            continue
        category = placed % 4
        if category == 0:  # roadworks during the whole run
            vf, vt = day0 - 2 * day_ms, day0 + 12 * day_ms
        elif category == 1:  # already over
            vf, vt = day0 - 9 * day_ms, day0 - 1 * day_ms
        elif category == 2:  # not yet begun
            vf, vt = spec.end_ms + day_ms, spec.end_ms + 8 * day_ms
        else:  # begins in the middle of the run, on the hour
            mid_ms = spec.start_ms + (spec.end_ms - spec.start_ms) // 2
            vf = mid_ms - mid_ms % 3_600_000
            vt = vf + 5 * day_ms
        reason = ("道路施工临时限速 roadworks", "雨雪天气临时限速 bad weather")[placed % 2]
        zones.append(Zone(f"{pre}Z-T{placed + 1:02d}", 20.0, poly, vf, vt, reason, "temporary"))
        placed += 1
    return zones


# ------------------------------------------------------------------ fleet document
def fleet_document(city: City) -> dict[str, Any]:
    """The fleet document (contract §2) of ``city``, keys in a fixed order."""
    spec = city.spec

    def area(poly: shapely.Polygon) -> dict[str, Any]:
        ring = np.asarray(poly.exterior.coords)
        return {"type": "Polygon", "coordinates": [lonlat_list(ring[:, 0], ring[:, 1])]}

    schools = []
    for s in city.schools:
        lonlat = lonlat_list(np.array([s.x]), np.array([s.y]))[0]
        schools.append({"id": s.id, "name": s.name, "district": s.district, "location": lonlat})
    routes = [
        {
            "id": r.id,
            "school": city.schools[r.school].id,
            "corridor_m": int(r.corridor_m) if r.corridor_m.is_integer() else r.corridor_m,
            "path": {"type": "LineString", "coordinates": lonlat_list(r.vx, r.vy)},
        }
        for r in city.routes
    ]
    buses = [
        {
            "id": b.id,
            "plate": b.plate,
            "operator": b.operator,
            "school": city.schools[b.school].id,
            "routes": [city.routes[b.route].id],
            "service_windows": [
                {"days": d, "start": _hhmm(a), "end": _hhmm(z)} for d, a, z in b.windows
            ],
        }
        for b in city.buses
    ]
    devices = []
    for d in city.devices:
        item: dict[str, Any] = {"id": d.id, "kind": d.kind}
        if d.bus is not None:
            item["bus"] = city.buses[d.bus].id
        if d.school is not None:
            item["school"] = city.schools[d.school].id
        if d.offline_after_s is not None:
            item["offline_after_s"] = d.offline_after_s
        devices.append(item)
    zones = [
        {
            "id": z.id,
            "limit_kmh": int(z.limit_kmh),
            "area": area(z.polygon),
            "valid_from": None if z.valid_from_ms is None else format_rfc3339(z.valid_from_ms),
            "valid_to": None if z.valid_to_ms is None else format_rfc3339(z.valid_to_ms),
            "reason": z.reason,
        }
        for z in city.zones
    ]
    return {
        "timezone": TIMEZONE,
        "districts": [{"id": i, "name": n, "area": area(p)} for i, n, p in city.districts],
        "operators": city.operators,
        "schools": schools,
        "routes": routes,
        "buses": buses,
        "devices": devices,
        "speed_zones": zones,
        "calendar": city.calendar,
        "x_simulator": {
            "seed": spec.seed,
            "buses": spec.buses,
            "schools": spec.schools,
            "projection_origin": [LON0, LAT0],
        },
    }


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def dump_fleet(document: dict[str, Any]) -> bytes:
    """Serialise a fleet document the same way every time (UTF-8, 1-space indent)."""
    return (json.dumps(document, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
