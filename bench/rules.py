"""Benchmark: the alerts engine's rule evaluation on one core, next to shapely 2 and a Python loop.

Fleet (synthetic, deterministic seed, built in memory as a
:class:`core.registry.Registry`, no database): 10,000 buses in a ~50 km
square around 120.7E 31.3N, each with one 200-vertex route (a random walk of
20–60 m steps; a fifth of the buses have a second, variant route), a 100 m
corridor, two school-day service windows (1 % of the buses only an afternoon
one, so they are out of service in the morning), 300 speed zones (30 or
40 km/h, most around points of the routes, half valid only from 07:00 that
day) and one GPS device per bus. Traffic: batches as ingest hands them over
(an :class:`ingest.IngestBatch` of NumPy columns sorted by device and time),
one fix per bus per batch, 10,000 fixes a batch, consecutive batches 1–10 s
apart in event time from Monday 2026-11-23 07:30 local (a school day, in the
morning service window). Buses move along their routes at 15–35 km/h with
5 m GPS noise; 3 % drive 300–800 m off their route, 3 % report 65–80 km/h,
and the buses outside service drive on (so speeding, route-deviation and
out-of-hours episodes open and update during the run). Devices report speed,
``alarm`` 0, no backfill, every fix new.

Measured on the same batches, CPU time (``time.process_time``) on one
pinned core:

* ``fixes_per_s``: :meth:`alerts.engine.AlertEngine.process` (all rules:
  projection, speed, speed limit, distance to the assigned routes, service
  window and school-day masks, filings, every rule's ``feed_many``, alert
  changes) plus :meth:`~alerts.engine.AlertEngine.tick` per batch, as
  ``anxiao serve`` runs them under the event clock, over ``--batches`` (48)
  timed batches after ``--warmup`` (26) untimed ones on a fresh engine,
  whose long-lived states are then frozen out of the garbage collector's
  walks as serve's are (:func:`core.heap.freeze_long_lived`: without it, a
  full collection walking ~550,000 objects, 0.12 s, lands in some rounds).
  The engine's cost per batch is not flat: a device with nothing under way
  keeps its readings in its fleet row until the row is full (48 readings,
  one a batch here) and then finalizes them in one go, every device in the
  same batch since they all report in step (a real fleet spreads this out).
  The 48 timed batches are one whole such cycle, that batch included, so
  the figure is the engine's mean cost over time. The machine is noisy
  (the same round varies by up to a third between runs), so the engine
  runs ``--engine-rounds`` (5) rounds, each on a fresh engine and each
  followed at once by a round of both shapely baselines below, so that
  engine and baseline are timed in the same few seconds; the best round of
  each counts (``engine_rounds_fixes_per_s`` lists the engine's rounds,
  ``ratio_vs_shapely_rounds`` each round's ratio to the faster baseline of
  the same round, ``ratio_vs_shapely_rounds_median`` their median);
  ``process_*`` figures leave the tick out;
* ``shapely_fixes_per_s``: the faster of vectorized ``shapely.distance`` and
  prepared ``shapely.dwithin(route, point, corridor)`` from each fix to each
  of its bus's routes (minimum / any over a bus's routes): the distance part
  alone, as issue 5 asks. Shapely's points and (fix, route) pairs are made
  before its clock starts and its inputs are already projected, so the
  comparison favours shapely. ``ratio_vs_shapely`` = ``fixes_per_s`` /
  ``shapely_fixes_per_s``; ``kernel_ratio_vs_shapely`` compares the engine's
  distance kernel alone (:meth:`alerts.geometry.FleetGeometry.distances`)
  on the same projected fixes (checked against shapely: distances and
  corridor hits agree);
* ``loop_fixes_per_s``: a straightforward per-fix Python loop doing the same
  rule work: projection (equirectangular), speed-zone lookup by a loop over
  the zones (box and validity test, then a prepared ``contains_xy``),
  speed-limit check, shapely point distance to each assigned route, service
  window and school day from the local time, and a small per-device state
  machine per rule (speeding 10 s, deviation 30 s, out of hours 60 s);
  ``loop_opened`` counts its openings (it has no lateness, so it opens
  ~30 s of event time before the engine). Its cost per fix does not vary
  over the cycle, so it runs the first ``--loop-batches`` (10) timed
  batches only (a 48-batch round would take a minute);
* ``ingest_cpu_overhead``: the extra CPU per message that the rules add to
  ingest at full rate: the engine's CPU (process and tick) per fix divided
  by ingest's CPU per one-fix message at full rate, as ``bench/ingest.py``
  measured it (``single.ingest_cpu_us_per_msg`` in
  ``bench/results/ingest.json``: the whole ingest process, MQTT client,
  decoding, COPY, status upsert and acknowledgements, draining a backlog
  into the local stack); ``ingest_cpu_overhead_fifty_fix_messages`` divides
  by ingest's CPU per fix with 50-fix messages (``batch.ingest_cpu_us_per_fix``),
  where ingest's own cost per fix is far lower. ``ingest_cpu_overhead_vs_decode_only``
  divides by a lower bound of ingest's CPU per fix, measured in-process without
  the database or the broker: :func:`ingest.decode_messages` of the same
  fixes sent as one-fix MQTT JSON messages (how a bus reports; 5,000
  messages a batch, ingest's default) plus the binary COPY encoding of the
  decoded columns (``ingest/_pgcopy.py``, the columns ingest's store
  writes). Ingest's MQTT client, asyncpg and the device-status upsert are
  left out, so the real ingest CPU per message is higher and this ratio is
  an upper bound. ``rules_cores_at_ingest_rate`` is the engine's CPU per
  fix times ingest's measured throughput in ``bench/results/ingest.json``
  (one-fix and 50-fix messages): the cores the rules would need to keep up.

The fleet above is a stress test: 3 % of the buses speeding, 3 % off their
route and 1 % out of service, all the time, so ~1,000 devices a batch have
an episode under way or a candidate (the speed zones add ~400 buses near
their limits). ``typical`` repeats the run (engine, both shapely baselines and
ingest, same seed) with ``--typical-scale`` (0.03) times those shares:
0.09 % speeding, 0.09 % off route, 0.03 % out of service, still with every
speed zone, nearer what a fleet shows (the simulator's default scenario day
has 17 alerts over 40 buses and 60 h, one bus in ~2,500 in an episode at a
time).

The other baselines (kernel, loop, ingest) run ``--rounds`` (3)
interleaved rounds after the engine's, the best counts. After
the timed batches the same engine runs ``--profile-batches`` (1) more under
cProfile (not timed): ``profile_parts`` gives the cumulative share of the
engine's main steps, ``profile_top`` the functions with the largest own
time. Prints one JSON object and writes it to ``bench/results/rules.json``
(not with ``--quick``, 1,000 buses). Takes five minutes or so:
``.venv/bin/python bench/rules.py [--quick]``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import functools
import gc
import json
import math
import os
import platform
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import chinese_calendar
import numpy as np
import numpy.typing as npt
import orjson
import shapely

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alerts.engine import AlertEngine, RuleSet  # noqa: E402
from core.heap import freeze_long_lived  # noqa: E402
from core.registry import Bus, Device, Registry, Route, SpeedZone  # noqa: E402
from core.settings import Settings  # noqa: E402
from ingest import (  # noqa: E402
    ButtonColumns,
    GpsColumns,
    HeartbeatColumns,
    IngestBatch,
    Limits,
    SmokeColumns,
    decode_messages,
)
from ingest._pgcopy import encode_copy  # noqa: E402
from ingest.store import _gps_copy  # noqa: E402

RESULT = ROOT / "bench" / "results" / "rules.json"
INGEST_RESULT = ROOT / "bench" / "results" / "ingest.json"
ORIGIN = (120.7, 31.3)
EARTH_R_M = 6_371_000.0
TZ = "Asia/Shanghai"
#: Monday 2026-11-23 07:30 local: a school day, inside the morning service window.
START_MS = int(dt.datetime(2026, 11, 23, 7, 30, tzinfo=ZoneInfo(TZ)).timestamp() * 1000)
DAY0_MS = int(dt.datetime(2026, 11, 23, tzinfo=ZoneInfo(TZ)).timestamp() * 1000)
CORRIDOR_M = 100.0
INGEST_BATCH_MESSAGES = 5_000

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_BOOL = npt.NDArray[np.bool_]


# ------------------------------------------------------------------------------- the fleet


def to_lonlat(x_m: _F64, y_m: _F64) -> tuple[_F64, _F64]:
    """Local metres to degrees (spherical); the engine then projects properly."""
    lat = ORIGIN[1] + np.degrees(y_m / EARTH_R_M)
    lon = ORIGIN[0] + np.degrees(x_m / (EARTH_R_M * math.cos(math.radians(ORIGIN[1]))))
    return lon, lat


def random_walks(
    rng: np.random.Generator, start_x: _F64, start_y: _F64, n_vertices: int
) -> npt.NDArray[np.float64]:
    """Polylines from the given starts, 20–60 m steps, gently turning: (n, vertices, 2) metres."""
    n = start_x.size
    heading = rng.uniform(0, 2 * np.pi, n)[:, None] + np.cumsum(
        rng.normal(0, 0.15, (n, n_vertices - 1)), axis=1
    )
    step = rng.uniform(20, 60, (n, n_vertices - 1))
    x = np.concatenate(
        [start_x[:, None], start_x[:, None] + np.cumsum(step * np.cos(heading), 1)], 1
    )
    y = np.concatenate(
        [start_y[:, None], start_y[:, None] + np.cumsum(step * np.sin(heading), 1)], 1
    )
    return np.stack([x, y], axis=-1)


@dataclass
class Fleet:
    """The registry and what the traffic generator and the baselines need of it."""

    registry: Registry
    #: First route of each bus in local metres, (buses, vertices, 2); the bus drives it.
    main_xy: npt.NDArray[np.float64]
    #: Route ids of each bus.
    bus_routes: list[list[str]]
    #: Bus index -> device key.
    device_key: _I64
    #: Buses with a morning service window.
    in_service: _BOOL
    #: Zones: (x0, y0, x1, y1) boxes in local metres, limit, validity.
    zone_box: npt.NDArray[np.float64]
    zone_limit_kmh: _F64
    zone_from_ms: _I64


def make_fleet(
    rng: np.random.Generator,
    n_buses: int,
    n_vertices: int,
    n_zones: int,
    *,
    out_of_service_share: float = 0.01,
) -> Fleet:
    start_x = rng.uniform(-25_000, 20_000, n_buses)
    start_y = rng.uniform(-25_000, 20_000, n_buses)
    main_xy = random_walks(rng, start_x, start_y, n_vertices)
    two = np.flatnonzero(rng.uniform(0, 1, n_buses) < 0.2)
    # The variant starts at the same stop and parts ways.
    variant_xy = random_walks(rng, start_x[two], start_y[two], n_vertices)
    routes: dict[str, Route] = {}
    bus_routes: list[list[str]] = [[] for _ in range(n_buses)]

    def add(route_id: str, xy: npt.NDArray[np.float64]) -> None:
        lon, lat = to_lonlat(xy[:, 0], xy[:, 1])
        coords = tuple(zip(lon.tolist(), lat.tolist(), strict=True))
        routes[route_id] = Route(
            id=route_id, school_id=None, corridor_m=CORRIDOR_M, coordinates=coords
        )

    for b in range(n_buses):
        add(f"r{b:05d}a", main_xy[b])
        bus_routes[b].append(f"r{b:05d}a")
    for j, b in enumerate(two.tolist()):
        add(f"r{b:05d}b", variant_xy[j])
        bus_routes[b].append(f"r{b:05d}b")

    in_service = rng.uniform(0, 1, n_buses) >= out_of_service_share
    morning = {"days": "school", "start": "06:30", "end": "08:30"}
    afternoon = {"days": "school", "start": "15:30", "end": "17:30"}
    registered = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
    buses: dict[str, Bus] = {}
    devices: dict[int, Device] = {}
    device_key = np.arange(1, n_buses + 1, dtype=np.int64)
    for b in range(n_buses):
        bus_id = f"bus{b:05d}"
        buses[bus_id] = Bus(
            id=bus_id,
            plate=f"苏E{b:05d}",
            operator_id=None,
            school_id=None,
            route_ids=tuple(bus_routes[b]),
            service_windows=(morning, afternoon) if in_service[b] else (afternoon,),
        )
        key = int(device_key[b])
        devices[key] = Device(
            key=key,
            id=f"gps{b:05d}",
            kind="gps",
            bus_id=bus_id,
            school_id=None,
            operator_id=None,
            district_id=None,
            offline_after_s=300,
            registered_at=registered,
            retired=False,
        )

    # School zones around points of the routes, a few at random, five large ones.
    on_route = main_xy[rng.integers(0, n_buses, n_zones), rng.integers(0, n_vertices, n_zones)]
    anywhere = rng.uniform(-25_000, 25_000, (n_zones, 2))
    centre = np.where((np.arange(n_zones) % 6 == 5)[:, None], anywhere, on_route)
    half = rng.uniform(150, 400, n_zones)
    half[:5] = 3_000.0
    box = np.column_stack([centre - half[:, None], centre + half[:, None]])
    limit = np.where(np.arange(n_zones) % 3 == 0, 40.0, 30.0)
    from_ms = np.where(np.arange(n_zones) % 2 == 0, DAY0_MS + 7 * 3_600_000, -1).astype(np.int64)
    zones = []
    for i in range(n_zones):
        x0, y0, x1, y1 = box[i]
        lon, lat = to_lonlat(np.array([x0, x1, x1, x0, x0]), np.array([y0, y0, y1, y1, y0]))
        valid_from = (
            None if from_ms[i] < 0 else dt.datetime.fromtimestamp(from_ms[i] / 1000, dt.UTC)
        )
        zones.append(
            SpeedZone(
                id=f"z{i:03d}",
                limit_kmh=float(limit[i]),
                area={
                    "type": "Polygon",
                    "coordinates": [list(zip(lon.tolist(), lat.tolist(), strict=True))],
                },
                valid_from=valid_from,
                valid_to=None,
            )
        )
    registry = Registry(
        timezone=TZ, devices=devices, buses=buses, routes=routes, zones=tuple(zones)
    )
    return Fleet(
        registry=registry,
        main_xy=main_xy,
        bus_routes=bus_routes,
        device_key=device_key,
        in_service=in_service,
        zone_box=box,
        zone_limit_kmh=limit,
        zone_from_ms=from_ms,
    )


# ----------------------------------------------------------------------------- the traffic


def make_batches(
    rng: np.random.Generator,
    fleet: Fleet,
    n_batches: int,
    *,
    speeder_share: float = 0.03,
    off_route_share: float = 0.03,
) -> list[IngestBatch]:
    """Batches of one fix per bus, 1–10 s apart, buses moving along (or off) their routes."""
    xy = fleet.main_xy
    n_buses, n_vertices, _ = xy.shape
    seg = np.diff(xy, axis=1)
    seg_len = np.hypot(seg[..., 0], seg[..., 1])
    cum = np.concatenate([np.zeros((n_buses, 1)), np.cumsum(seg_len, axis=1)], axis=1)
    length = cum[:, -1]
    # Flattened so that one searchsorted finds every bus's segment.
    stride = float(length.max()) + 1.0
    flat = (cum + stride * np.arange(n_buses)[:, None]).ravel()

    speeder = rng.uniform(0, 1, n_buses) < speeder_share
    off_route = rng.uniform(0, 1, n_buses) < off_route_share
    speed_kmh = np.where(speeder, rng.uniform(65, 80, n_buses), rng.uniform(15, 35, n_buses))
    offset_m = np.where(off_route, rng.uniform(300, 800, n_buses), 0.0) * rng.choice(
        [-1, 1], n_buses
    )
    s = rng.uniform(0, 0.3, n_buses) * length
    t_ms = START_MS
    batches = []
    for _ in range(n_batches):
        t_ms += int(rng.integers(1_000, 10_001))
        s = np.minimum(s + speed_kmh / 3.6 * rng.uniform(1, 10, n_buses), length - 1e-6)
        i = np.searchsorted(flat, s + stride * np.arange(n_buses), side="right") - 1
        i = np.clip(i - np.arange(n_buses) * n_vertices, 0, n_vertices - 2)
        bus = np.arange(n_buses)
        frac = (s - cum[bus, i]) / seg_len[bus, i]
        d = seg[bus, i] / seg_len[bus, i][:, None]
        p = xy[bus, i] + d * (frac * seg_len[bus, i])[:, None]
        x = p[:, 0] - d[:, 1] * offset_m + rng.normal(0, 5, n_buses)
        y = p[:, 1] + d[:, 0] * offset_m + rng.normal(0, 5, n_buses)
        lon, lat = to_lonlat(x, y)
        ts: _I64 = np.asarray(t_ms - rng.integers(0, 1_000, n_buses), dtype=np.int64)
        reported = speed_kmh + rng.normal(0, 1.5, n_buses)
        heading = np.degrees(np.arctan2(d[:, 0], d[:, 1])) % 360.0
        n = n_buses
        gps = GpsColumns(
            device_key=fleet.device_key.astype(np.int32),
            ts_ms=ts,
            received_ms=ts + rng.integers(200, 1_500, n, dtype=np.int64),
            lat=lat,
            lon=lon,
            speed_kmh=np.round(np.maximum(reported, 0.0), 1).astype(np.float32),
            heading_deg=(np.round(heading, 1) % 360.0).astype(np.float32),
            alt_m=np.full(n, np.nan, np.float32),
            sats=np.full(n, -1, np.int16),
            hdop=np.full(n, np.nan, np.float32),
            seq=np.full(n, -1, np.int64),
            alarm=np.zeros(n, np.int64),
            status=np.full(n, -1, np.int64),
            backfill=np.zeros(n, np.bool_),
            new=np.ones(n, np.bool_),
        )
        batches.append(
            IngestBatch(
                gps=gps,
                heartbeat=HeartbeatColumns.empty(),
                smoke=SmokeColumns.empty(),
                button=ButtonColumns.empty(),
                committed_ms=int(gps.received_ms.max()),
                messages=n,
                dead_letters=0,
            )
        )
    return batches


# ----------------------------------------------------------------------------- contenders


def engine_for(registry: Registry) -> AlertEngine:
    settings = Settings()
    return AlertEngine(
        RuleSet.from_settings(settings, clock="event"), clock="event", registry=registry
    )


def run_engine(engine: AlertEngine, batches: list[IngestBatch]) -> dict[str, int]:
    """Process and tick every batch, as serve does; changes counted by kind and action."""
    counts: dict[str, int] = {}
    for batch in batches:
        changes = engine.process(batch)
        changes += engine.tick()
        for c in changes:
            name = f"{c.kind}:{c.action}"
            counts[name] = counts.get(name, 0) + 1
    return counts


@dataclass
class ShapelyInputs:
    """Per batch: shapely points and (fix, route) pairs, made before the clock starts."""

    points: list[npt.NDArray[np.object_]]
    pair_fix: list[_I64]
    pair_route: list[_I64]
    pair_start: list[_I64]


def shapely_inputs(engine: AlertEngine, batches: list[IngestBatch]) -> ShapelyInputs:
    geometry = engine.geometry
    sets = geometry.sets
    out = ShapelyInputs([], [], [], [])
    for batch in batches:
        x, y = geometry.project(batch.gps.lon, batch.gps.lat)
        bus = geometry.bus_of(batch.gps.device_key.astype(np.int64))
        size = sets.offsets[bus + 1] - sets.offsets[bus]
        start = np.cumsum(size) - size
        pair_fix = np.repeat(np.arange(bus.size), size)
        pos = np.arange(int(size.sum())) + np.repeat(sets.offsets[bus] - start, size)
        out.points.append(shapely.points(x, y))
        out.pair_fix.append(pair_fix)
        out.pair_route.append(sets.route_index[pos])
        out.pair_start.append(start)
    return out


def shapely_distance(lines: npt.NDArray[np.object_], inp: ShapelyInputs) -> float:
    total = 0.0
    for points, fix, route, start in zip(
        inp.points, inp.pair_fix, inp.pair_route, inp.pair_start, strict=True
    ):
        d = np.minimum.reduceat(shapely.distance(lines[route], points[fix]), start)
        total += float(d[0])
    return total


def shapely_dwithin(prepared: npt.NDArray[np.object_], inp: ShapelyInputs) -> int:
    inside = 0
    for points, fix, route, start in zip(
        inp.points, inp.pair_fix, inp.pair_route, inp.pair_start, strict=True
    ):
        hit = shapely.dwithin(prepared[route], points[fix], CORRIDOR_M)
        inside += int(np.logical_or.reduceat(hit, start).sum())
    return inside


def kernel_distances(engine: AlertEngine, projected: list[tuple[_F64, _F64, _I64]]) -> int:
    inside = 0
    for x, y, bus in projected:
        inside += int(engine.geometry.distances(x, y, bus).within_corridor.sum())
    return inside


class LoopRules:
    """The naive baseline: every fix through plain Python, one at a time."""

    def __init__(self, fleet: Fleet, lines_m: dict[str, Any]) -> None:
        self.zones = [
            (
                *fleet.zone_box[i].tolist(),
                float(fleet.zone_limit_kmh[i]),
                int(fleet.zone_from_ms[i]),
            )
            for i in range(fleet.zone_box.shape[0])
        ]
        self.zone_shapes = [shapely.box(*fleet.zone_box[i]) for i in range(fleet.zone_box.shape[0])]
        for z in self.zone_shapes:
            shapely.prepare(z)
        self.routes = {
            int(fleet.device_key[b]): [lines_m[r] for r in rs]
            for b, rs in enumerate(fleet.bus_routes)
        }
        self.windows = {
            int(fleet.device_key[b]): [(390, 510), (930, 1050)] if ok else [(930, 1050)]
            for b, ok in enumerate(fleet.in_service.tolist())
        }
        self.kx = EARTH_R_M * math.cos(math.radians(ORIGIN[1])) * math.pi / 180.0
        self.ky = EARTH_R_M * math.pi / 180.0
        self.tz = ZoneInfo(TZ)
        # Per device and rule: [run start ms or None, open]; plus last heard.
        self.state: dict[tuple[int, str], list[Any]] = {}
        self.heard: dict[int, int] = {}
        self.opened: dict[str, int] = {"speeding": 0, "route_deviation": 0, "out_of_hours": 0}

    def _step(self, key: int, rule: str, ts: int, meets: bool, open_ms: int) -> None:
        st = self.state.get((key, rule))
        if st is None:
            st = self.state[(key, rule)] = [None, False, None]
        start, is_open, clear_start = st
        if meets:
            st[2] = None
            if start is None:
                st[0] = ts
            elif not is_open and ts - start >= open_ms:
                st[1] = True
                self.opened[rule] += 1
        else:
            st[0] = None
            if is_open:
                if clear_start is None:
                    st[2] = ts
                elif ts - clear_start >= open_ms:
                    st[1] = False
                    st[2] = None

    def feed_all(self, batches: list[IngestBatch]) -> None:
        """Feed the batches in order."""
        for batch in batches:
            self.feed(batch)

    def feed(self, batch: IngestBatch) -> None:
        """One batch, fix by fix."""
        g = batch.gps
        zones, zone_shapes = self.zones, self.zone_shapes
        for key, ts, lon, lat, speed in zip(
            g.device_key.tolist(),
            g.ts_ms.tolist(),
            g.lon.tolist(),
            g.lat.tolist(),
            g.speed_kmh.tolist(),
            strict=True,
        ):
            self.heard[key] = ts
            x = (lon - ORIGIN[0]) * self.kx
            y = (lat - ORIGIN[1]) * self.ky
            limit = 60.0
            for (x0, y0, x1, y1, zone_limit, valid_from), shape in zip(
                zones, zone_shapes, strict=True
            ):
                if (
                    x0 <= x <= x1
                    and y0 <= y <= y1
                    and zone_limit < limit
                    and (valid_from < 0 or ts >= valid_from)
                    and shapely.contains_xy(shape, x, y)
                ):
                    limit = zone_limit
            point = shapely.Point(x, y)
            distance = min(route.distance(point) for route in self.routes[key])
            local = dt.datetime.fromtimestamp(ts / 1000.0, self.tz)
            minute = local.hour * 60 + local.minute
            school = chinese_calendar.is_workday(local.date())
            window = school and any(a <= minute < b for a, b in self.windows[key])
            self._step(key, "speeding", ts, speed > limit, 10_000)
            self._step(key, "route_deviation", ts, window and distance > CORRIDOR_M, 30_000)
            self._step(key, "out_of_hours", ts, not window and speed >= 5.0, 60_000)


# --------------------------------------------------------------------------------- ingest


def ingest_payloads(
    fleet: Fleet, batches: list[IngestBatch]
) -> list[tuple[list[str], list[bytes], _I64]]:
    """The fixes as one-fix MQTT messages, cut into ingest batches of 5,000 messages."""
    topics: list[str] = []
    payloads: list[bytes] = []
    received: list[int] = []
    ids = {d.key: d.id for d in fleet.registry.devices.values()}
    for batch in batches:
        g = batch.gps
        for key, ts, rx, lat, lon, speed, heading in zip(
            g.device_key.tolist(),
            g.ts_ms.tolist(),
            g.received_ms.tolist(),
            g.lat.tolist(),
            g.lon.tolist(),
            g.speed_kmh.tolist(),
            g.heading_deg.tolist(),
            strict=True,
        ):
            topics.append(f"anxiao/v1/dev/{ids[key]}/gps")
            body = {
                "ts": ts,
                "lat": round(lat, 7),
                "lon": round(lon, 7),
                "speed": speed,
                "heading": heading,
                "alarm": 0,
            }
            payloads.append(orjson.dumps(body))
            received.append(rx)
    out = []
    for lo in range(0, len(topics), INGEST_BATCH_MESSAGES):
        hi = lo + INGEST_BATCH_MESSAGES
        out.append((topics[lo:hi], payloads[lo:hi], np.asarray(received[lo:hi], dtype=np.int64)))
    return out


def run_ingest(chunks: list[tuple[list[str], list[bytes], _I64]], directory: dict[str, int]) -> int:
    """Decode and COPY-encode every chunk as ingest does; returns the rows encoded."""
    limits = Limits()
    rows = 0
    for topics, payloads, received in chunks:
        decoded = decode_messages(topics, payloads, received, directory=directory, limits=limits)
        assert len(decoded.dead) == 0, decoded.dead.counts()
        encode_copy(_gps_copy(decoded.gps), len(decoded.gps))
        rows += len(decoded.gps)
    return rows


# ------------------------------------------------------------------------------- the run


def cpu_s(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(CPU seconds, wall seconds, result) of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - c0, time.perf_counter() - w0, result


@dataclass
class EngineRun:
    """One engine round: CPU and wall seconds of the timed batches, and what they decided."""

    build_s: float
    process_cpu_s: float
    tick_cpu_s: float
    wall_s: float
    changes: dict[str, int]
    #: The engine itself, while it is the round kept in memory (None after).
    engine: AlertEngine | None


def engine_round(
    registry: Registry, warm: list[IngestBatch], timed: list[IngestBatch]
) -> EngineRun:
    """A fresh engine: warm-up batches untimed, then process + tick per timed batch, timed."""
    t0 = time.perf_counter()
    engine = engine_for(registry)
    build_s = time.perf_counter() - t0
    run_engine(engine, warm)
    # As serve's rules do once their states are rebuilt (alerts.runner): the
    # long-lived states out of the collector's full walks.
    gc.unfreeze()
    freeze_long_lived()
    process_s = tick_s = wall_s = 0.0
    counts: dict[str, int] = {}
    for batch in timed:
        w0 = time.perf_counter()
        c0 = time.process_time()
        changes = engine.process(batch)
        c1 = time.process_time()
        changes += engine.tick()
        c2 = time.process_time()
        wall_s += time.perf_counter() - w0
        process_s += c1 - c0
        tick_s += c2 - c1
        for c in changes:
            name = f"{c.kind}:{c.action}"
            counts[name] = counts.get(name, 0) + 1
    return EngineRun(
        build_s=build_s,
        process_cpu_s=process_s,
        tick_cpu_s=tick_s,
        wall_s=wall_s,
        changes=dict(sorted(counts.items())),
        engine=engine,
    )


@dataclass
class Paired:
    """Engine rounds, each followed at once by a round of both shapely baselines."""

    runs: list[EngineRun]
    #: CPU seconds of shapely.distance and of prepared dwithin, one pair per round.
    shapely_s: list[tuple[float, float]]
    lines: npt.NDArray[np.object_]
    prepared: npt.NDArray[np.object_]
    inputs: ShapelyInputs

    def best_s(self) -> tuple[float, float]:
        """The best round of shapely.distance and of prepared dwithin (CPU seconds)."""
        return min(d for d, _ in self.shapely_s), min(w for _, w in self.shapely_s)

    def round_ratios(self) -> dict[str, Any]:
        """Each round's engine rate over the faster baseline's rate in the same round."""
        ratios = [
            round(min(pair) / (r.process_cpu_s + r.tick_cpu_s), 2)
            for r, pair in zip(self.runs, self.shapely_s, strict=True)
        ]
        return {
            "ratio_vs_shapely_rounds": ratios,
            "ratio_vs_shapely_rounds_median": float(np.median(ratios)),
        }


def paired_rounds(
    registry: Registry, warm: list[IngestBatch], timed: list[IngestBatch], rounds: int
) -> Paired:
    """``rounds`` engine rounds, each followed at once by a round of both shapely baselines.

    The machine's speed drifts (by up to a third between runs minutes apart),
    so each engine round is compared with baselines timed right after it.
    The last engine stays in memory (``runs[-1].engine``).
    """
    runs: list[EngineRun] = []
    shapely_s: list[tuple[float, float]] = []
    baseline: tuple[npt.NDArray[np.object_], npt.NDArray[np.object_], ShapelyInputs] | None = None
    for _ in range(rounds):
        if runs:
            runs[-1].engine = None  # one engine in memory at a time
        run = engine_round(registry, warm, timed)
        runs.append(run)
        if baseline is None:
            assert run.engine is not None
            lines = run.engine.geometry.routes.lines
            prepared = shapely.from_wkb(shapely.to_wkb(lines))
            shapely.prepare(prepared)
            baseline = (lines, prepared, shapely_inputs(run.engine, timed))
        lines, prepared, inputs = baseline
        distance_s = cpu_s(functools.partial(shapely_distance, lines, inputs))[0]
        dwithin_s = cpu_s(functools.partial(shapely_dwithin, prepared, inputs))[0]
        shapely_s.append((distance_s, dwithin_s))
    assert baseline is not None
    return Paired(runs, shapely_s, *baseline)


#: Functions whose cumulative share of the profile is reported, by (file, name).
PROFILE_PARTS = {
    ("alerts/engine.py", "process"): "AlertEngine.process",
    ("alerts/engine.py", "tick"): "AlertEngine.tick",
    ("alerts/engine.py", "_advance_episode_rules"): "tick: episode rules",
    ("alerts/engine.py", "_advance_offline"): "tick: offline",
    ("alerts/episodes.py", "quiet"): "EpisodeState.quiet",
    ("alerts/rules.py", "advance"): "rules' advance (states under way)",
    ("alerts/geometry.py", "window_end"): "window_end",
    ("alerts/geometry.py", "next_window_start"): "next_window_start",
    ("alerts/geometry.py", "bus_of"): "FleetGeometry.bus_of",
    ("alerts/episodes.py", "_settle"): "EpisodeDetector._settle",
    ("alerts/engine.py", "_heard"): "process: offline feed",
    ("alerts/engine.py", "_gps"): "process: GPS rules",
    ("alerts/episodes.py", "feed_many"): "EpisodeDetector.feed_many",
    ("alerts/rules.py", "feed_gps_many"): "panic/fault feed_gps_many",
    ("alerts/geometry.py", "distances"): "FleetGeometry.distances",
    ("geofence/_zones.py", "speed_limit_kmh"): "speed_limit_kmh",
    ("alerts/geometry.py", "calendar_masks"): "FleetGeometry.calendar_masks",
    ("alerts/geometry.py", "project"): "FleetGeometry.project",
    ("alerts/engine.py", "_changes"): "AlertEngine._changes",
}


def _where(path: str) -> str:
    if path == "~":
        return "builtins"
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return Path(path).name


def profile_engine(
    engine: AlertEngine, batches: list[IngestBatch], top: int
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Profile (cProfile) process + tick over more batches of the same engine.

    Returns the functions with the largest own time and the cumulative share
    of the engine's main parts (:data:`PROFILE_PARTS`).
    """
    profiler = cProfile.Profile()
    profiler.enable()
    run_engine(engine, batches)
    profiler.disable()
    raw: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    hot = [
        {
            "function": f"{_where(path)}:{line}({name})",
            "calls": calls,
            "own_share": round(tottime / total, 3),
            "cumulative_share": round(cumtime / total, 3),
        }
        for (path, line, name), (_cc, calls, tottime, cumtime, _callers) in rows
    ]
    parts: dict[str, float] = {}
    for (path, _line, name), (_cc, _calls, _tottime, cumtime, _callers) in raw.items():
        label = PROFILE_PARTS.get((_where(path), name))
        if label is not None:
            parts[label] = round(parts.get(label, 0.0) + cumtime / total, 3)
    return hot, dict(sorted(parts.items(), key=lambda kv: -kv[1]))


def loop_lines_m(registry: Registry) -> dict[str, Any]:
    """Routes as shapely lines in the loop's equirectangular metres."""
    kx = EARTH_R_M * math.cos(math.radians(ORIGIN[1])) * math.pi / 180.0
    ky = EARTH_R_M * math.pi / 180.0
    out = {}
    for rid, route in registry.routes.items():
        c = np.asarray(route.coordinates)
        out[rid] = shapely.LineString(
            np.column_stack([(c[:, 0] - ORIGIN[0]) * kx, (c[:, 1] - ORIGIN[1]) * ky])
        )
    return out


def _ratio(engine_us: float, ingest_us: float | None) -> float | None:
    return None if not ingest_us else round(engine_us / ingest_us, 2)


def typical_run(args: argparse.Namespace) -> dict[str, Any]:
    """The same fleet and traffic with ``--typical-scale`` times the violations (module doc)."""
    scale = args.typical_scale
    rng = np.random.default_rng(20261123)
    fleet = make_fleet(
        rng, args.buses, args.vertices, args.zones, out_of_service_share=0.01 * scale
    )
    batches = make_batches(
        rng,
        fleet,
        args.warmup + args.batches,
        speeder_share=0.03 * scale,
        off_route_share=0.03 * scale,
    )
    warm, timed = batches[: args.warmup], batches[args.warmup :]
    n_fixes = sum(len(b.gps) for b in timed)
    paired = paired_rounds(fleet.registry, warm, timed, args.engine_rounds)
    runs = paired.runs
    run = min(runs, key=lambda r: r.process_cpu_s + r.tick_cpu_s)
    chunks = ingest_payloads(fleet, timed)
    directory = {d.id: d.key for d in fleet.registry.devices.values()}
    ingest_s = math.inf
    for _ in range(args.rounds):
        ingest_s = min(ingest_s, cpu_s(functools.partial(run_ingest, chunks, directory))[0])
    distance_s, dwithin_s = paired.best_s()
    engine_s = run.process_cpu_s + run.tick_cpu_s
    fps = n_fixes / engine_s
    # The faster of the two, as for the stress fleet.
    shapely_fps = n_fixes / min(distance_s, dwithin_s)
    return {
        "violation_scale": scale,
        "fixes_per_s": round(fps),
        "shapely_fixes_per_s": round(shapely_fps),
        "ratio_vs_shapely": round(fps / shapely_fps, 4),
        "shapely_distance_fixes_per_s": round(n_fixes / distance_s),
        "shapely_dwithin_prepared_fixes_per_s": round(n_fixes / dwithin_s),
        "ingest_cpu_overhead_vs_decode_only": round(engine_s / ingest_s, 2),
        "engine_cpu_us_per_fix": round(engine_s / n_fixes * 1e6, 1),
        "process_cpu_us_per_fix": round(run.process_cpu_s / n_fixes * 1e6, 1),
        "tick_cpu_us_per_fix": round(run.tick_cpu_s / n_fixes * 1e6, 1),
        "ingest_cpu_us_per_fix": round(ingest_s / n_fixes * 1e6, 2),
        "engine_rounds_fixes_per_s": [
            round(n_fixes / (r.process_cpu_s + r.tick_cpu_s)) for r in runs
        ],
        **paired.round_ratios(),
        "alert_changes": run.changes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--buses", type=int, default=10_000)
    parser.add_argument("--vertices", type=int, default=200)
    parser.add_argument("--zones", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=26, help="batches before the timed ones")
    parser.add_argument(
        "--batches", type=int, default=48, help="batches timed (one cycle of the rows)"
    )
    parser.add_argument(
        "--loop-batches", type=int, default=10, help="timed batches the Python loop runs"
    )
    parser.add_argument("--profile-batches", type=int, default=1, help="batches profiled after")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the baselines")
    parser.add_argument(
        "--engine-rounds", type=int, default=5, help="rounds of the engine and shapely"
    )
    parser.add_argument(
        "--typical-scale",
        type=float,
        default=0.03,
        help="violations of the typical run, as a fraction of the stress run's",
    )
    parser.add_argument("--quick", action="store_true", help="1,000 buses, one round each")
    args = parser.parse_args()
    if args.quick:
        args.buses, args.rounds, args.engine_rounds = 1_000, 1, 1
    if hasattr(os, "sched_setaffinity"):
        # One core, as the target says; the other is shared with other work.
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    rng = np.random.default_rng(20261123)
    t0 = time.perf_counter()
    fleet = make_fleet(rng, args.buses, args.vertices, args.zones)
    batches = make_batches(rng, fleet, args.warmup + args.batches + args.profile_batches)
    warm = batches[: args.warmup]
    timed = batches[args.warmup : args.warmup + args.batches]
    profiled = batches[args.warmup + args.batches :]
    loop_batches = timed[: args.loop_batches]
    n_fixes = sum(len(b.gps) for b in timed)
    loop_lines = loop_lines_m(fleet.registry)
    chunks = ingest_payloads(fleet, timed)
    directory = {d.id: d.key for d in fleet.registry.devices.values()}
    setup_s = time.perf_counter() - t0

    paired = paired_rounds(fleet.registry, warm, timed, args.engine_rounds)
    runs = paired.runs
    run = min(runs, key=lambda r: r.process_cpu_s + r.tick_cpu_s)
    engine = runs[-1].engine
    assert engine is not None
    profile_top, profile_parts = profile_engine(engine, profiled, top=12)

    # The kernel on the engine's projected fixes, checked against shapely.
    geometry = engine.geometry
    lines, prepared, inputs = paired.lines, paired.prepared, paired.inputs
    projected = []
    for b in timed:
        x, y = geometry.project(b.gps.lon, b.gps.lat)
        projected.append((x, y, geometry.bus_of(b.gps.device_key.astype(np.int64))))
    max_error_m = 0.0
    inside_kernel = 0
    for (x, y, bus), p, f, r, s in zip(
        projected, inputs.points, inputs.pair_fix, inputs.pair_route, inputs.pair_start, strict=True
    ):
        reference = np.minimum.reduceat(shapely.distance(lines[r], p[f]), s)
        kernel = geometry.distances(x, y, bus)
        max_error_m = max(max_error_m, float(np.max(np.abs(kernel.distance_m - reference))))
        inside_kernel += int(kernel.within_corridor.sum())
    assert max_error_m < 1e-6, max_error_m
    assert shapely_dwithin(prepared, inputs) == inside_kernel

    best: dict[str, float] = {}
    loop_opened: dict[str, int] = {}
    for _ in range(args.rounds):
        loop = LoopRules(fleet, loop_lines)
        loop.feed_all(warm)
        loop.opened = dict.fromkeys(loop.opened, 0)
        contenders: dict[str, Callable[[], object]] = {
            "kernel": functools.partial(kernel_distances, engine, projected),
            "loop": functools.partial(loop.feed_all, loop_batches),
            "ingest": functools.partial(run_ingest, chunks, directory),
        }
        for name, fn in contenders.items():
            cpu, _, _ = cpu_s(fn)
            best[name] = min(best.get(name, math.inf), cpu)
        loop_opened = loop.opened

    engine_s = run.process_cpu_s + run.tick_cpu_s
    fps = n_fixes / engine_s
    distance_s, dwithin_s = paired.best_s()
    shapely_distance_fps = n_fixes / distance_s
    shapely_dwithin_fps = n_fixes / dwithin_s
    shapely_fps = max(shapely_distance_fps, shapely_dwithin_fps)
    kernel_fps = n_fixes / best["kernel"]
    loop_fps = sum(len(b.gps) for b in loop_batches) / best["loop"]
    engine_us = engine_s / n_fixes * 1e6
    ingest_us = best["ingest"] / n_fixes * 1e6
    ingest_bench: dict[str, Any] = {}
    if INGEST_RESULT.exists():
        ingest_bench = json.loads(INGEST_RESULT.read_text(encoding="utf-8"))
    batch_rate = ingest_bench.get("batch", {}).get("ingest_fixes_per_s")
    single_rate = ingest_bench.get("single", {}).get("ingest_msgs_per_s")
    single_cpu_us = ingest_bench.get("single", {}).get("ingest_cpu_us_per_msg")
    batch_cpu_us = ingest_bench.get("batch", {}).get("ingest_cpu_us_per_fix")
    out: dict[str, Any] = {
        "fixes_per_s": round(fps),
        "shapely_fixes_per_s": round(shapely_fps),
        "loop_fixes_per_s": round(loop_fps),
        "ratio_vs_shapely": round(fps / shapely_fps, 4),
        "ingest_cpu_overhead": _ratio(engine_us, single_cpu_us),
        "ingest_cpu_overhead_fifty_fix_messages": _ratio(engine_us, batch_cpu_us),
        "ingest_cpu_overhead_vs_decode_only": round(engine_us / ingest_us, 1),
        "kernel_fixes_per_s": round(kernel_fps),
        "kernel_ratio_vs_shapely": round(kernel_fps / shapely_fps, 2),
        "ratio_vs_loop": round(fps / loop_fps, 3),
        "process_only_fixes_per_s": round(n_fixes / run.process_cpu_s),
        "process_only_ratio_vs_shapely": round(n_fixes / run.process_cpu_s / shapely_fps, 3),
        "process_only_ingest_cpu_overhead": round(run.process_cpu_s / best["ingest"], 1),
        "shapely_distance_fixes_per_s": round(shapely_distance_fps),
        "shapely_dwithin_prepared_fixes_per_s": round(shapely_dwithin_fps),
        "engine_cpu_us_per_fix": round(engine_us, 1),
        "process_cpu_us_per_fix": round(run.process_cpu_s / n_fixes * 1e6, 1),
        "tick_cpu_s_per_batch": round(run.tick_cpu_s / len(timed), 2),
        "ingest_cpu_us_per_fix": round(ingest_us, 2),
        "rules_cores_at_ingest_rate": {
            "one_fix_messages": (
                None if single_rate is None else round(engine_us * 1e-6 * single_rate, 1)
            ),
            "fifty_fix_messages": (
                None if batch_rate is None else round(engine_us * 1e-6 * batch_rate, 1)
            ),
        },
        "engine_wall_fixes_per_s": round(n_fixes / run.wall_s),
        "engine_rounds_fixes_per_s": [
            round(n_fixes / (r.process_cpu_s + r.tick_cpu_s)) for r in runs
        ],
        **paired.round_ratios(),
        "alert_changes": run.changes,
        "loop_opened": loop_opened,
        "max_abs_error_m": max_error_m,
        "fixes_within_corridor_share": round(inside_kernel / n_fixes, 4),
        "profile_parts": profile_parts,
        "profile_top": profile_top,
        "setup": {
            "buses": args.buses,
            "routes": len(fleet.registry.routes),
            "vertices_per_route": args.vertices,
            "zones": args.zones,
            "fixes_per_batch": args.buses,
            "warmup_batches": len(warm),
            "timed_batches": len(timed),
            "profiled_batches": len(profiled),
            "timed_fixes": n_fixes,
            "event_span_s": round(
                (int(timed[-1].gps.ts_ms.max()) - int(warm[0].gps.ts_ms.min())) / 1000
            ),
            "engine_rounds": args.engine_rounds,
            "baseline_rounds": args.rounds,
            "clock": "event",
            "ingest_messages_per_batch": INGEST_BATCH_MESSAGES,
            "fixes_per_message": 1,
            "timing": "CPU (time.process_time) on one pinned core, best round",
            "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
            "engine_build_s": round(run.build_s, 1),
            "setup_s": round(setup_s, 1),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "shapely": shapely.__version__,
        },
    }
    for r in runs:
        r.engine = None
    del engine, geometry
    out["typical"] = typical = typical_run(args)
    typical["ingest_cpu_overhead"] = _ratio(typical["engine_cpu_us_per_fix"], single_cpu_us)
    typical["ingest_cpu_overhead_fifty_fix_messages"] = _ratio(
        typical["engine_cpu_us_per_fix"], batch_cpu_us
    )
    print(json.dumps(out, ensure_ascii=False))
    if not args.quick:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
