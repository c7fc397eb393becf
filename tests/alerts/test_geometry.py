"""FleetGeometry's per-batch queries against the geofence kernels they wrap."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from alerts.fleet import NO_TS
from alerts.geometry import FleetGeometry, WindowEdges, next_window_start, window_end
from core.registry import Bus, Registry, Route
from geofence import distance_to_routes, service_window_mask
from tests.alerts.registry import gps_device

ORIGIN = (120.7, 31.3)


def registry() -> Registry:
    def route(rid: str, corridor_m: float, *points: tuple[float, float]) -> Route:
        return Route(id=rid, school_id=None, corridor_m=corridor_m, coordinates=points)

    routes = {
        "R1": route("R1", 100.0, (120.70, 31.30), (120.71, 31.30), (120.71, 31.31)),
        "R2": route("R2", 50.0, (120.70, 31.30), (120.71, 31.30), (120.72, 31.29)),
        "R3": route("R3", 80.0, (120.68, 31.32), (120.69, 31.33)),
        "R4": route("R4", 80.0, (120.68, 31.32)),  # one point: no segment
    }

    def bus(bid: str, *route_ids: str) -> Bus:
        return Bus(
            id=bid,
            plate=bid,
            operator_id=None,
            school_id=None,
            route_ids=route_ids,
            service_windows=(),
        )

    buses = {
        "B1": bus("B1", "R1", "R2"),  # a main route and a variant sharing a stretch
        "B2": bus("B2", "R3"),
        "B3": bus("B3"),  # no route
        "B4": bus("B4", "R4", "R9"),  # a degenerate route and an unknown one
    }

    devices = {
        k: gps_device(k, f"D{k}", b)
        for k, b in [(0, "B1"), (1, "B2"), (2, "B3"), (3, "B4"), (5, None)]
    }
    return Registry(timezone="Asia/Shanghai", devices=devices, buses=buses, routes=routes)


def test_distances_match_the_kernel_and_fixes_without_a_route_are_far() -> None:
    geometry = FleetGeometry(registry())
    rng = np.random.default_rng(5)
    n = 600
    keys = rng.choice(np.array([0, 1, 2, 3, 5, 9]), n)  # 9: unknown device
    lon = rng.uniform(120.675, 120.725, n)
    lat = rng.uniform(31.285, 31.335, n)
    lon[:3], lat[:3] = 120.705, 31.30  # on the stretch both of B1's routes share
    keys[:3] = 0
    x, y = geometry.project(lon, lat)
    bus = geometry.bus_of(keys)
    got = geometry.distances(x, y, bus)
    assert got.distance_m.shape == got.route_index.shape == got.within_corridor.shape == (n,)

    routed = geometry.routed(bus)
    assert routed.any() and (~routed).any()
    want = distance_to_routes(
        x[routed], y[routed], set_index=bus[routed], routes=geometry.routes, sets=geometry.sets
    )
    np.testing.assert_array_equal(got.distance_m[routed], want.distance_m)
    np.testing.assert_array_equal(got.route_index[routed], want.route_index)
    np.testing.assert_array_equal(got.within_corridor[routed], want.within_corridor)
    assert np.all(np.isinf(got.distance_m[~routed]))
    assert np.all(got.route_index[~routed] == -1)
    assert not got.within_corridor[~routed].any()
    # A tie between B1's routes goes to the first one it lists.
    assert list(got.route_index[:3]) == [geometry.route_ids.index("R1")] * 3
    # B4's only known route has no segment: its fixes are far from everything.
    b4 = bus == geometry.bus_index["B4"]
    assert b4.any() and np.all(np.isinf(got.distance_m[b4]))


def test_empty_batch_and_a_fleet_without_routes() -> None:
    geometry = FleetGeometry(registry())
    empty = geometry.distances(np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64))
    assert empty.distance_m.shape == (0,)
    bare = FleetGeometry(Registry(timezone="Asia/Shanghai"))
    assert bare.sets.n_sets == 0
    got = bare.distances(np.array([1.0]), np.array([2.0]), np.array([-1]))
    assert np.isinf(got.distance_m[0]) and got.route_index[0] == -1


@pytest.mark.parametrize("tz", ["Asia/Shanghai", "Europe/Berlin"])
@pytest.mark.parametrize("start", [False, True])
def test_window_edges_match_the_scalar_edges(tz: str, start: bool) -> None:
    # Times walk forward through days and windows as an open episode's would, with
    # jumps and steps back, over five days; Berlin's Sunday 2026-10-25 has 25 hours.
    windows = [
        (),
        ({"days": "school", "start": "06:30", "end": "08:30"},),
        (
            {"days": "school", "start": "06:30", "end": "08:30"},
            {"days": "weekdays", "start": "15:45", "end": "17:30"},
            {"days": [6], "start": "09:00", "end": "11:00"},
        ),
        ({"days": "daily", "start": "00:00", "end": "23:59"},),
        ({"days": [7], "start": "06:00", "end": "08:00"},),
    ]
    buses = {
        f"B{i}": Bus(
            id=f"B{i}",
            plate=f"B{i}",
            operator_id=None,
            school_id=None,
            route_ids=(),
            service_windows=w,
        )
        for i, w in enumerate(windows)
    }
    geometry = FleetGeometry(Registry(timezone=tz, buses=buses))
    edges = WindowEdges(geometry, start=start)
    scalar = next_window_start if start else window_end
    rng = np.random.default_rng(17)
    t0 = int(dt.datetime(2026, 10, 23, tzinfo=dt.UTC).timestamp() * 1000)
    steps = rng.choice([1_000, 59_000, 600_000, 1_800_000, 3_600_000, -300_000], size=(400, 6))
    times = t0 + np.cumsum(steps, axis=0)
    seen = set()
    for row in times:
        bus = rng.integers(0, len(windows), 6)
        got = edges.at(bus, row)
        want = [scalar(geometry, int(b), int(t)) for b, t in zip(bus, row, strict=True)]
        assert got.tolist() == [NO_TS if w is None else w for w in want]
        seen.update(w is None for w in want)
    assert seen == {True, False}


def test_calendar_masks_of_fixes_with_and_without_a_bus() -> None:
    windows = ({"days": "school", "start": "06:30", "end": "08:30"},)
    buses = {
        "B0": Bus(
            id="B0",
            plate="B0",
            operator_id=None,
            school_id=None,
            route_ids=(),
            service_windows=windows,
        )
    }
    geometry = FleetGeometry(Registry(timezone="Asia/Shanghai", buses=buses))
    rng = np.random.default_rng(3)
    t0 = int(dt.datetime(2026, 9, 28, tzinfo=dt.UTC).timestamp() * 1000)  # National Day week
    ts = t0 + rng.integers(0, 14 * 86_400_000, 2_000)
    bus = rng.choice(np.array([-1, 0]), ts.size)
    inside, school = geometry.calendar_masks(ts, bus)
    want = service_window_mask(
        ts, windows=list(windows), calendar=geometry.calendar, tz="Asia/Shanghai"
    )
    np.testing.assert_array_equal(inside, want & (bus == 0))
    np.testing.assert_array_equal(school, geometry.school_days(ts))
    assert inside.any() and school.any() and not school.all()
    # A fleet without buses: never in a window, school days as ever.
    bare = FleetGeometry(Registry(timezone="Asia/Shanghai"))
    none, days = bare.calendar_masks(ts, np.full(ts.size, -1))
    assert not none.any()
    np.testing.assert_array_equal(days, school)
