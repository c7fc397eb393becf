"""The local projection against an independent geodesic (Vincenty's inverse on WGS-84)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence import _projection, project, project_geometry
from tests.geofence.numpy_projection import project_numpy

ORIGIN = (120.7, 31.3)
#: How far the polynomials near the origin may be from the series (m); see _projection.
NEAR_BOUND_M = 2e-8


def project_exact(lon, lat, origin):
    """The series at every point (what :func:`project` did before the polynomials)."""
    lon = np.ascontiguousarray(lon, dtype=np.float64)
    lat = np.ascontiguousarray(lat, dtype=np.float64)
    x, y = np.empty(lon.size), np.empty(lon.size)
    _projection._project_exact(lon, lat, float(origin[0]), float(origin[1]), x, y)
    return x, y


def vincenty_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Geodesic distance on WGS-84 (Vincenty 1975 inverse), metres; fine below 1000 km."""
    a = 6378137.0
    f = 1 / 298.257223563
    b = a * (1 - f)
    big_l = math.radians(lon2 - lon1)
    u1 = math.atan((1 - f) * math.tan(math.radians(lat1)))
    u2 = math.atan((1 - f) * math.tan(math.radians(lat2)))
    su1, cu1, su2, cu2 = math.sin(u1), math.cos(u1), math.sin(u2), math.cos(u2)
    lam = big_l
    for _ in range(200):
        sl, cl = math.sin(lam), math.cos(lam)
        ss = math.hypot(cu2 * sl, cu1 * su2 - su1 * cu2 * cl)
        if ss == 0:
            return 0.0
        cs = su1 * su2 + cu1 * cu2 * cl
        sigma = math.atan2(ss, cs)
        sa = cu1 * cu2 * sl / ss
        c2a = 1 - sa * sa
        c2sm = cs - 2 * su1 * su2 / c2a if c2a else 0.0
        c = f / 16 * c2a * (4 + f * (4 - 3 * c2a))
        previous = lam
        lam = big_l + (1 - c) * f * sa * (sigma + c * ss * (c2sm + c * cs * (-1 + 2 * c2sm**2)))
        if abs(lam - previous) < 1e-13:
            break
    u_sq = c2a * (a * a - b * b) / (b * b)
    big_a = 1 + u_sq / 16384 * (4096 + u_sq * (-768 + u_sq * (320 - 175 * u_sq)))
    big_b = u_sq / 1024 * (256 + u_sq * (-128 + u_sq * (74 - 47 * u_sq)))
    ds = (
        big_b
        * ss
        * (
            c2sm
            + big_b
            / 4
            * (cs * (-1 + 2 * c2sm**2) - big_b / 6 * c2sm * (-3 + 4 * ss**2) * (-3 + 4 * c2sm**2))
        )
    )
    return b * big_a * (sigma - ds)


def offset_deg(origin: tuple[float, float], east_m: float, north_m: float) -> tuple[float, float]:
    """A point roughly east_m/north_m from origin (spherical approximation is enough here)."""
    lat = origin[1] + math.degrees(north_m / 6_371_000.0)
    lon = origin[0] + math.degrees(east_m / (6_371_000.0 * math.cos(math.radians(origin[1]))))
    return lon, lat


def planar_m(a: tuple[float, float], b: tuple[float, float], origin: tuple[float, float]) -> float:
    x, y = project([a[0], b[0]], [a[1], b[1]], origin=origin)
    return math.hypot(float(x[1] - x[0]), float(y[1] - y[0]))


def test_vincenty_reference_is_sane() -> None:
    # One degree of latitude at the equator and along a meridian at 45°, known values.
    assert vincenty_m(0, 0, 0, 1) == pytest.approx(110574.389, abs=1e-2)
    assert vincenty_m(0, 0, 1, 0) == pytest.approx(111319.491, abs=1e-2)


def test_origin_maps_to_zero_and_axes_point_east_and_north() -> None:
    x, y = project(
        [ORIGIN[0], ORIGIN[0] + 0.01, ORIGIN[0]], [ORIGIN[1], ORIGIN[1], 31.31], origin=ORIGIN
    )
    assert x[0] == 0.0 and y[0] == 0.0
    assert x[1] > 900 and abs(y[1]) < 1.0  # east; TM bends parallels slightly
    assert y[2] > 1100 and x[2] == 0.0  # north, on the central meridian


def test_shape_dtype_and_broadcast() -> None:
    lon = np.full((2, 3), 120.71)
    x, y = project(lon, 31.29, origin=ORIGIN)
    assert x.shape == y.shape == (2, 3)
    assert x.dtype == y.dtype == np.float64
    x, y = project([], [], origin=ORIGIN)
    assert x.shape == y.shape == (0,)
    x, y = project([np.nan], [31.3], origin=ORIGIN)
    assert np.isnan(x[0]) and np.isnan(y[0])


def test_bad_origin_is_refused() -> None:
    with pytest.raises(ValueError, match="origin"):
        project([0.0], [0.0], origin=(0.0, 90.0))
    with pytest.raises(ValueError, match="origin"):
        project([0.0], [0.0], origin=(math.nan, 0.0))


def test_antimeridian_is_folded_next_to_the_origin() -> None:
    x, _ = project([-179.99], [0.0], origin=(179.99, 0.0))
    assert 2000 < x[0] < 2300  # 0.02° east, not 359.98° west


@pytest.mark.parametrize(
    ("east_m", "north_m"),
    [(50_000, 0), (0, 50_000), (35_355, 35_355), (-50_000, 0), (-30_000, -40_000), (100, 0)],
)
def test_distance_from_origin_within_bound(east_m: float, north_m: float) -> None:
    p = offset_deg(ORIGIN, east_m, north_m)
    geodesic = vincenty_m(*ORIGIN, *p)
    planar = planar_m(ORIGIN, p, ORIGIN)
    assert -1e-7 * geodesic <= planar - geodesic <= 3.2e-5 * geodesic


@pytest.mark.parametrize("origin", [ORIGIN, (116.4, 39.9), (113.3, 23.1), (87.6, 43.8)])
def test_short_distances_far_from_origin_keep_scale(origin: tuple[float, float]) -> None:
    # 100 m apart, 49 km east of the origin: the scale error there is ~3e-5.
    a = offset_deg(origin, 49_000, 1_000)
    b = offset_deg(origin, 49_070, 1_070)
    geodesic = vincenty_m(*a, *b)
    assert abs(planar_m(a, b, origin) - geodesic) <= 3.2e-5 * geodesic


within_50km = st.tuples(st.floats(0, 2 * math.pi), st.floats(0, 49_500)).map(
    lambda ar: (ar[1] * math.cos(ar[0]), ar[1] * math.sin(ar[0]))
)


@settings(max_examples=200, deadline=None)
@given(
    a=within_50km,
    b=within_50km,
    lat0=st.floats(18.0, 53.0),
    lon0=st.floats(73.0, 135.0),
)
def test_pairs_within_50km_of_origin(a, b, lat0, lon0) -> None:
    origin = (lon0, lat0)
    pa = offset_deg(origin, *a)
    pb = offset_deg(origin, *b)
    geodesic = vincenty_m(*pa, *pb)
    planar = planar_m(pa, pb, origin)
    # Spherical offsets are within ~0.5 % of the intended radius, so the 50 km bound holds.
    assert planar - geodesic <= 3.2e-5 * geodesic + 1e-6
    assert planar - geodesic >= -1e-7 * geodesic - 1e-6
    if max(math.hypot(*a), math.hypot(*b)) <= 24_800:
        assert planar - geodesic <= 8e-6 * geodesic + 1e-6


def test_project_geometry_matches_project() -> None:
    line = shapely.LineString([(120.70, 31.30), (120.71, 31.31), (120.73, 31.29)])
    projected = project_geometry(line, origin=ORIGIN)
    coords = shapely.get_coordinates(line)
    x, y = project(coords[:, 0], coords[:, 1], origin=ORIGIN)
    np.testing.assert_array_equal(shapely.get_coordinates(projected), np.column_stack([x, y]))
    many = project_geometry(np.array([line, shapely.Point(120.7, 31.3)]), origin=ORIGIN)
    assert many.shape == (2,)
    assert shapely.equals(many[1], shapely.Point(0, 0))


@settings(max_examples=200, deadline=None)
@given(
    lon0=st.floats(-180.0, 180.0),
    lat0=st.floats(-85.0, 85.0),
    spread_deg=st.sampled_from([1e-6, 0.01, 0.5, 2.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_the_numpy_series(lon0: float, lat0: float, spread_deg: float, seed: int) -> None:
    # The compiled series (multiple-angle recurrence) against the term-by-term one.
    rng = np.random.default_rng(seed)
    lon = lon0 + rng.uniform(-spread_deg, spread_deg, 200)
    lat = np.clip(lat0 + rng.uniform(-spread_deg, spread_deg, 200), -89.0, 89.0)
    lon[:2] = [lon0, lon0 + 360.0]  # the origin's meridian, also folded
    lat[:2] = lat0
    want_x, want_y = project_numpy(lon, lat, origin=(lon0, lat0))
    # An ulp of a northing (up to 1e7 m from the equator) is 1.9e-9 m.
    x, y = project_exact(lon, lat, (lon0, lat0))
    np.testing.assert_allclose(x, want_x, rtol=0, atol=5e-9)
    np.testing.assert_allclose(y, want_y, rtol=0, atol=5e-9)
    # project() evaluates polynomials near the origin, within NEAR_BOUND_M of the series.
    x, y = project(lon, lat, origin=(lon0, lat0))
    np.testing.assert_allclose(x, want_x, rtol=0, atol=5e-9 + NEAR_BOUND_M)
    np.testing.assert_allclose(y, want_y, rtol=0, atol=5e-9 + NEAR_BOUND_M)
    assert x[0] == 0.0 and y[0] == 0.0


def test_matches_the_numpy_series_on_the_fleet_area() -> None:
    rng = np.random.default_rng(1)
    lon = ORIGIN[0] + rng.uniform(-0.3, 0.3, 100_000)
    lat = ORIGIN[1] + rng.uniform(-0.3, 0.3, 100_000)
    want_x, want_y = project_numpy(lon, lat, origin=ORIGIN)
    x, y = project_exact(lon, lat, ORIGIN)
    np.testing.assert_allclose(x, want_x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(y, want_y, rtol=0, atol=1e-9)
    x, y = project(lon, lat, origin=ORIGIN)  # all inside the polynomials' box
    np.testing.assert_allclose(x, want_x, rtol=0, atol=1e-9 + NEAR_BOUND_M)
    np.testing.assert_allclose(y, want_y, rtol=0, atol=1e-9 + NEAR_BOUND_M)
    x, y = project([np.nan, 121.0, np.inf], [31.0, np.nan, 31.0], origin=ORIGIN)
    assert np.all(np.isnan(x)) and np.all(np.isnan(y))
    # The poles (a reading ingest lets through): finite, as before.
    lon, lat = np.array([120.7, 121.0, -60.0, 120.7]), np.array([90.0, 90.0, -90.0, -90.0])
    x, y = project(lon, lat, origin=ORIGIN)
    with np.errstate(divide="ignore"):
        want_x, want_y = project_numpy(lon, lat, origin=ORIGIN)
    np.testing.assert_allclose(x, want_x, rtol=0, atol=1e-8)
    np.testing.assert_allclose(y, want_y, rtol=0, atol=1e-8)


NEAR_ORIGINS = [
    ORIGIN,
    (87.6, 43.8),
    (126.6, 45.8),
    (109.5, 18.3),
    (-70.6, -33.4),
    (0.0, 0.0),
    (-0.3, 75.0),
    (151.2, -75.0),
    (179.9, 60.0),
    (-179.8, -12.0),
]


def near_box(origin: tuple[float, float]) -> tuple[float, float]:
    """Half-widths (lat, lon degrees) of the box where project() uses the polynomials."""
    return _projection._NEAR_LAT, _projection._NEAR_LAT / math.cos(math.radians(origin[1]))


def in_box(lon, lat, origin):
    """Where project() uses the polynomials (as its kernel tells)."""
    u = (lat - origin[1]) * (1.0 / _projection._NEAR_LAT)
    v = (lon - origin[0]) * (math.cos(math.radians(origin[1])) / _projection._NEAR_LAT)
    return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)


def box_points(origin, n, rng, scale=1.0):
    """n random points in the box (times scale), plus its edges and corners."""
    half_lat, half_lon = near_box(origin)
    u, v = rng.uniform(-1.0, 1.0, n), rng.uniform(-1.0, 1.0, n)
    edge = np.linspace(-1.0, 1.0, 1001)
    one = np.ones_like(edge)
    u = np.concatenate([u, edge, edge, one, -one, [0.0]])
    v = np.concatenate([v, one, -one, edge, edge, [0.0]])
    return origin[0] + scale * v * half_lon, origin[1] + scale * u * half_lat


@pytest.mark.parametrize("origin", NEAR_ORIGINS)
def test_near_origin_polynomials_match_the_series(origin: tuple[float, float]) -> None:
    lon, lat = box_points(origin, 200_000, np.random.default_rng(7))
    x, y = project(lon, lat, origin=origin)
    want_x, want_y = project_exact(lon, lat, origin)
    assert np.abs(x - want_x).max() <= NEAR_BOUND_M
    assert np.abs(y - want_y).max() <= NEAR_BOUND_M
    assert x[-1] == 0.0 and y[-1] == 0.0  # the origin itself


@settings(max_examples=300, deadline=None)
@given(
    lon0=st.floats(-180.0, 180.0),
    lat0=st.floats(-_projection._NEAR_MAX_LAT, _projection._NEAR_MAX_LAT),
    seed=st.integers(0, 2**32 - 1),
)
def test_near_origin_polynomials_match_the_series_anywhere(lon0, lat0, seed) -> None:
    lon, lat = box_points((lon0, lat0), 2_000, np.random.default_rng(seed))
    x, y = project(lon, lat, origin=(lon0, lat0))
    want_x, want_y = project_exact(lon, lat, (lon0, lat0))
    assert np.abs(x - want_x).max() <= NEAR_BOUND_M
    assert np.abs(y - want_y).max() <= NEAR_BOUND_M


@pytest.mark.parametrize("origin", [*NEAR_ORIGINS, (10.0, 75.01), (-45.0, -89.0)])
def test_outside_the_box_is_the_series_bit_for_bit(origin: tuple[float, float]) -> None:
    rng = np.random.default_rng(3)
    lon, lat = box_points(origin, 20_000, rng, scale=1.0 + 1e-9)
    keep = ~in_box(lon, lat, origin)
    lon, lat = lon[keep], lat[keep]  # the box's edges just outside, and the corners
    far_lon = origin[0] + rng.uniform(-20.0, 20.0, 20_000)
    far_lat = np.clip(origin[1] + rng.uniform(-20.0, 20.0, 20_000), -90.0, 90.0)
    specials_lon = [np.nan, origin[0], origin[0] + 360.0, origin[0] - 360.0, np.inf, 0.0]
    specials_lat = [origin[1], np.nan, origin[1], origin[1], origin[1], 90.0]
    lon = np.concatenate([lon, far_lon, specials_lon])
    lat = np.concatenate([lat, far_lat, specials_lat])
    x, y = project(lon, lat, origin=origin)
    want_x, want_y = project_exact(lon, lat, origin)
    far = ~in_box(lon, lat, origin)
    if abs(origin[1]) > _projection._NEAR_MAX_LAT:
        far[:] = True  # no polynomials: every point by the series
    assert far.sum() > 20_000
    np.testing.assert_array_equal(x[far], want_x[far])
    np.testing.assert_array_equal(y[far], want_y[far])


@pytest.mark.parametrize("lat0", np.linspace(-75.0, 75.0, 31))
def test_near_box_holds_60_km_around_the_origin(lat0: float) -> None:
    # 60 km along a meridian is at most 60 km / 6_335_439 m rad of latitude (the meridian's
    # radius of curvature is smallest at the equator); along a parallel at latitude lat,
    # at most 60 km / (a cos lat) rad of longitude (the prime vertical radius N >= a).
    half_lat, half_lon = near_box((0.0, lat0))
    dlat = math.degrees(60_000 / 6_335_439.0)
    assert half_lat >= dlat
    edge_lat = math.radians(min(abs(lat0) + dlat, 90.0))
    assert math.radians(half_lon) * 6_378_137.0 * math.cos(edge_lat) >= 60_000
