"""Compile every kernel of the rules' hot path before the first batch.

Numba compiles a kernel the first time it is called (about 15 s for all of
them here) and caches the machine code on disk. :func:`warm_up` runs a tiny
fleet through a whole :class:`alerts.engine.AlertEngine` (projection,
distance, zones, windows, every rule, the clock tick) so that a process
that calls it, as the engine does when it is built, has every kernel
compiled or loaded before it reports ready. ``make test`` and the image
build call it once to fill the cache.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from core.registry import Bus, Device, Registry, Route, SpeedZone

__all__ = ["warm_up"]

_done = False


def _registry() -> Registry:
    lon, lat = 120.70, 31.30
    route = Route(
        id="R",
        school_id=None,
        corridor_m=100.0,
        coordinates=((lon, lat), (lon + 0.01, lat), (lon + 0.01, lat + 0.01)),
    )
    bus = Bus(
        id="B",
        plate="B",
        operator_id=None,
        school_id=None,
        route_ids=("R",),
        service_windows=({"days": "daily", "start": "07:00", "end": "08:00"},),
    )
    zone = SpeedZone(
        id="Z",
        limit_kmh=30.0,
        area={
            "type": "Polygon",
            "coordinates": [[[lon, lat], [lon + 0.01, lat], [lon, lat + 0.01], [lon, lat]]],
        },
        valid_from=None,
        valid_to=None,
    )
    device = Device(
        key=0,
        id="GPS-B",
        kind="gps",
        bus_id="B",
        school_id=None,
        operator_id=None,
        district_id=None,
        offline_after_s=300,
        registered_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        retired=False,
    )
    return Registry(
        timezone="Asia/Shanghai",
        devices={0: device},
        buses={"B": bus},
        routes={"R": route},
        zones=(zone,),
    )


def warm_up() -> None:
    """Compile (or load from the cache) every kernel of the hot path; once per process."""
    global _done
    if _done:
        return
    _done = True  # before the engine below, whose constructor calls this
    from alerts.engine import AlertEngine, RuleSet
    from alerts.fleet import warm_up as warm_fleet
    from core.settings import Settings
    from ingest.columns import (
        ButtonColumns,
        GpsColumns,
        HeartbeatColumns,
        IngestBatch,
        SmokeColumns,
    )

    warm_fleet()
    engine = AlertEngine(
        RuleSet.from_settings(Settings(), clock="event"), clock="event", registry=_registry()
    )
    t0 = int(
        dt.datetime(2026, 11, 23, 7, 10, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp()
        * 1000
    )
    n = 40
    ts = t0 + np.arange(n, dtype=np.int64) * 1_000
    gps = GpsColumns(
        device_key=np.zeros(n, np.int32),
        ts_ms=ts,
        received_ms=ts + 500,
        lat=np.full(n, 31.301) + np.arange(n) * 1e-4,
        lon=np.full(n, 120.701),
        speed_kmh=np.full(n, 50.0, np.float32),
        heading_deg=np.zeros(n, np.float32),
        alt_m=np.full(n, np.nan, np.float32),
        sats=np.full(n, -1, np.int16),
        hdop=np.full(n, np.nan, np.float32),
        seq=np.full(n, -1, np.int64),
        alarm=np.where(np.arange(n) == 5, 1, 0).astype(np.int64),
        status=np.full(n, -1, np.int64),
        backfill=np.zeros(n, np.bool_),
        new=np.ones(n, np.bool_),
    )
    for part in (slice(0, n // 2), slice(n // 2, n)):
        engine.process(
            IngestBatch(
                gps=gps.select(np.arange(n)[part]),
                heartbeat=HeartbeatColumns.empty(),
                smoke=SmokeColumns.empty(),
                button=ButtonColumns.empty(),
                committed_ms=int(ts[part][-1]) + 500,
                messages=n // 2,
                dead_letters=0,
            )
        )
        engine.tick(force=True)
