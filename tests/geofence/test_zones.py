"""speed_limit_kmh against a per-point loop with Polygon.contains."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Point, Polygon, box

from geofence import DEFAULT_LIMIT_KMH, PreparedZones, speed_limit_kmh

T0 = 1_790_000_000_000  # 2026-09-21 (epoch ms)
HOUR_MS = 3_600_000


def reference(x, y, ts, areas, limits, valid_from, valid_to, default):
    out = []
    for xi, yi, ti in zip(x, y, ts, strict=True):
        best = math.inf
        for area, limit, vf, vt in zip(areas, limits, valid_from, valid_to, strict=True):
            if vf is not None and ti < vf:
                continue
            if vt is not None and ti >= vt:
                continue
            if math.isfinite(xi) and math.isfinite(yi) and area.contains(Point(xi, yi)):
                best = min(best, limit)
        out.append(default if math.isinf(best) else best)
    return np.array(out, dtype=float)


def check(
    x,
    y,
    ts,
    areas,
    limits,
    valid_from=None,
    valid_to=None,
    default=DEFAULT_LIMIT_KMH,
    want=None,
    **kw,
):
    n_zones = len(areas)
    vf = valid_from if valid_from is not None else [None] * n_zones
    vt = valid_to if valid_to is not None else [None] * n_zones
    zones = PreparedZones(
        areas, limit_kmh=limits, valid_from_ms=valid_from, valid_to_ms=valid_to, **kw
    )
    got = speed_limit_kmh(
        np.asarray(x, float),
        np.asarray(y, float),
        np.asarray(ts, np.int64),
        zones=zones,
        default_kmh=default,
    )
    assert got.shape == (len(x),)
    assert got.dtype == np.float64
    if want is None:
        want = reference(
            x, y, ts, areas, list(np.broadcast_to(limits, (n_zones,))), vf, vt, default
        )
    np.testing.assert_array_equal(got, want)
    return got


SCHOOL = box(0, 0, 300, 300)
TOWN = box(-2000, -2000, 2000, 2000)
DONUT = Polygon(
    [(500, 500), (900, 500), (900, 900), (500, 900)],
    [[(600, 600), (800, 600), (800, 800), (600, 800)]],
)


def test_lowest_valid_limit_wins_and_default_elsewhere() -> None:
    got = check([100, 1000, 5000], [100, 1000, 5000], [T0] * 3, [TOWN, SCHOOL], [40.0, 30.0])
    np.testing.assert_array_equal(got, [30.0, 40.0, 60.0])


def test_zone_higher_than_default_still_applies() -> None:
    got = check([0.0, 9000.0], [0.0, 0.0], [T0, T0], [TOWN], [80.0])
    np.testing.assert_array_equal(got, [80.0, 60.0])


def test_default_is_a_keyword() -> None:
    got = check([9000.0], [0.0], [T0], [TOWN], [80.0], default=50.0)
    np.testing.assert_array_equal(got, [50.0])


@pytest.mark.parametrize(
    ("valid_from", "valid_to", "ts", "expected"),
    [
        (T0, None, T0 - 1, 60.0),  # only valid_from, before it
        (T0, None, T0, 30.0),  # valid_from is inclusive
        (T0, None, T0 + 10**12, 30.0),  # open-ended
        (None, T0, T0 - 1, 30.0),  # only valid_to
        (None, T0, T0, 60.0),  # valid_to is exclusive
        (T0, T0 + HOUR_MS, T0 + HOUR_MS // 2, 30.0),
        (T0, T0 + HOUR_MS, T0 + 2 * HOUR_MS, 60.0),
    ],
)
def test_validity_windows(valid_from, valid_to, ts, expected) -> None:
    got = check(
        [100.0], [100.0], [ts], [SCHOOL], [30.0], valid_from=[valid_from], valid_to=[valid_to]
    )
    assert got[0] == expected


def test_boundary_holes_and_multipolygons() -> None:
    multi = MultiPolygon([box(2000, 0, 2100, 100), box(2200, 0, 2300, 100)])
    xs = [0.0, 150.0, 300.0, 700.0, 550.0, 2050.0, 2150.0, 2250.0, 600.0]
    ys = [0.0, 300.0, 150.0, 700.0, 550.0, 50.0, 50.0, 50.0, 700.0]
    got = check(xs, ys, [T0] * len(xs), [SCHOOL, DONUT, multi], [30.0, 20.0, 25.0])
    # On the boundary counts as outside; the hole is outside the donut.
    np.testing.assert_array_equal(got, [60, 60, 60, 60, 20, 25, 60, 25, 60])


def test_empty_batch_far_points_and_nan() -> None:
    check([], [], [], [SCHOOL], [30.0])
    got = check(
        [1e12, -1e300, np.nan, 100.0], [0.0, 1e300, 100.0, np.nan], [T0] * 4, [SCHOOL], [30.0]
    )
    np.testing.assert_array_equal(got, [60.0] * 4)


def test_no_zones_at_all() -> None:
    got = check([1.0, 2.0], [1.0, 2.0], [T0, T0], [], [])
    np.testing.assert_array_equal(got, [60.0, 60.0])


def test_many_zones_random_points_against_reference() -> None:
    rng = np.random.default_rng(3)
    areas = [
        Point(rng.uniform(-5000, 5000), rng.uniform(-5000, 5000)).buffer(rng.uniform(50, 1500))
        for _ in range(40)
    ]
    limits = rng.choice([20.0, 30.0, 40.0, 50.0, 70.0], 40)
    valid_from = [
        None if rng.uniform() < 0.5 else int(T0 + rng.integers(-5, 5) * HOUR_MS) for _ in range(40)
    ]
    valid_to = [
        None if rng.uniform() < 0.5 else int(T0 + rng.integers(0, 10) * HOUR_MS) for _ in range(40)
    ]
    n = 2000
    x = rng.uniform(-6000, 6000, n)
    y = rng.uniform(-6000, 6000, n)
    ts = T0 + rng.integers(-6 * HOUR_MS, 11 * HOUR_MS, n)
    want = reference(x, y, ts, areas, limits, valid_from, valid_to, DEFAULT_LIMIT_KMH)
    assert len(set(want)) > 3  # the scene exercises several limits and the default
    for cell_m in (100.0, 500.0, 5000.0):
        check(x, y, ts, areas, limits, valid_from, valid_to, want=want, cell_m=cell_m)


def test_validation() -> None:
    with pytest.raises(ValueError, match="Polygon"):
        PreparedZones([Point(0, 0)], limit_kmh=30)
    with pytest.raises(ValueError, match="limit_kmh"):
        PreparedZones([SCHOOL], limit_kmh=0)
    with pytest.raises(ValueError, match="validity"):
        PreparedZones([SCHOOL], limit_kmh=30, valid_from_ms=[T0, T0])
    zones = PreparedZones([SCHOOL], limit_kmh=30)
    assert zones.n_zones == 1
    with pytest.raises(TypeError, match="integer"):
        speed_limit_kmh([0.0], [0.0], [1.5], zones=zones)
    with pytest.raises(ValueError, match="same length"):
        speed_limit_kmh([0.0], [0.0, 1.0], [T0], zones=zones)


@st.composite
def scenes(draw):
    n_zones = draw(st.integers(0, 6))
    areas, limits, vfs, vts = [], [], [], []
    for _ in range(n_zones):
        x0, y0 = draw(st.floats(-3000, 3000)), draw(st.floats(-3000, 3000))
        w, h = draw(st.floats(1, 3000)), draw(st.floats(1, 3000))
        shape = draw(st.sampled_from(["box", "triangle", "circle"]))
        if shape == "box":
            areas.append(box(x0, y0, x0 + w, y0 + h))
        elif shape == "triangle":
            areas.append(Polygon([(x0, y0), (x0 + w, y0), (x0, y0 + h)]))
        else:
            areas.append(Point(x0, y0).buffer(w / 2))
        limits.append(draw(st.sampled_from([20.0, 30.0, 40.0, 80.0])))
        vf = draw(st.one_of(st.none(), st.integers(-10, 10)))
        vt = draw(st.one_of(st.none(), st.integers(-10, 10)))
        vfs.append(None if vf is None else T0 + vf * HOUR_MS)
        vts.append(None if vt is None else T0 + vt * HOUR_MS)
    n = draw(st.integers(0, 30))
    pts = []
    for _ in range(n):
        if areas and draw(st.booleans()):
            # A vertex of a zone: on its boundary.
            ring = np.asarray(areas[draw(st.integers(0, n_zones - 1))].exterior.coords)
            pts.append(tuple(ring[draw(st.integers(0, len(ring) - 1))]))
        else:
            pts.append((draw(st.floats(-7000, 7000)), draw(st.floats(-7000, 7000))))
    ts = [T0 + draw(st.integers(-12, 12)) * HOUR_MS + draw(st.integers(-1, 1)) for _ in range(n)]
    cell_m = draw(st.sampled_from([100.0, 300.0, 2000.0]))
    return pts, ts, areas, limits, vfs, vts, cell_m


@settings(max_examples=200, deadline=None)
@given(scenes())
def test_property_matches_reference(scene) -> None:
    pts, ts, areas, limits, vfs, vts, cell_m = scene
    xy = np.array(pts, dtype=float).reshape(-1, 2)
    check(xy[:, 0], xy[:, 1], ts, areas, limits, vfs, vts, cell_m=cell_m)
