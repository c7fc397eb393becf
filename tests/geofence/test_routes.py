"""distance_to_routes against shapely, one point and one route at a time."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, Point

from geofence import PreparedRoutes, RouteDistances, RouteSets, distance_to_routes

TOL_M = 1e-6


def reference(x, y, set_index, lines, sets, corridor):
    """Per fix: min over its routes of LineString.distance(Point), first route on ties."""
    n = len(x)
    dist = np.full(n, np.inf)
    route = np.full(n, -1, dtype=np.int64)
    per_route = []
    for i in range(n):
        ds = []
        for r in sets[set_index[i]]:
            line = lines[r]
            if line.is_empty or not (math.isfinite(x[i]) and math.isfinite(y[i])):
                d = math.inf
            else:
                d = line.distance(Point(x[i], y[i]))
            ds.append((d, r))
            if d < dist[i]:
                dist[i], route[i] = d, r
        per_route.append(ds)
    return dist, route, per_route


def check(x, y, set_index, lines, sets, *, corridor=100.0, exact=True, **kw) -> RouteDistances:
    corridor_arr = np.broadcast_to(np.asarray(corridor, dtype=float), (len(lines),))
    routes = PreparedRoutes(lines, corridor_m=corridor_arr, **kw)
    got = distance_to_routes(
        x,
        y,
        set_index=set_index,
        routes=routes,
        sets=RouteSets.from_lists(sets),
        exact_beyond_cutoff=exact,
    )
    n = len(x)
    assert got.distance_m.shape == got.route_index.shape == got.within_corridor.shape == (n,)
    assert got.distance_m.dtype == np.float64
    assert got.route_index.dtype == np.int64
    assert got.within_corridor.dtype == np.bool_
    dist, _, per_route = reference(x, y, set_index, lines, sets, corridor_arr)
    for i in range(n):
        want = dist[i]
        if not exact and want > routes.cutoff_m:
            want = math.inf
        if math.isinf(want):
            assert math.isinf(got.distance_m[i]), (i, got.distance_m[i])
            assert got.route_index[i] == -1
        else:
            assert abs(got.distance_m[i] - want) <= TOL_M, (i, got.distance_m[i], want)
            # The named route is one that attains the minimum.
            named = {r: d for d, r in reversed(per_route[i])}[got.route_index[i]]
            assert abs(named - want) <= TOL_M
        # Within corridor: any route within its own corridor (ties at the edge skipped).
        margins = [d - corridor_arr[r] for d, r in per_route[i]]
        if all(abs(m) > TOL_M for m in margins if math.isfinite(m)):
            assert got.within_corridor[i] == any(m <= 0 for m in margins), i
    return got


ZIGZAG = LineString([(0, 0), (100, 0), (100, 100), (300, 100), (300, -200), (900, -150)])


@pytest.mark.parametrize(
    ("px", "py"),
    [
        (100.0, 0.0),  # exactly on a vertex
        (300.0, 100.0),  # a corner vertex
        (50.0, 0.0),  # on a segment
        (0.0, 0.0),  # the first vertex
        (900.0, -150.0),  # the last vertex
        (-30.0, -40.0),  # beyond the first vertex: 50 m
        (200.0, 40.0),  # inside the zigzag
        (600.0, 400.0),  # beyond the cutoff: exact fallback
        (1e7, -1e7),  # far outside every grid cell
        (-1e12, 1e12),
    ],
)
def test_single_route_points(px: float, py: float) -> None:
    check(np.array([px]), np.array([py]), np.array([0]), [ZIGZAG], [[0]])


def test_absurd_coordinates_do_not_overflow() -> None:
    # shapely squares and overflows to inf here; the kernel stays finite and warning-free.
    got = check_no_reference(np.array([-1e300, 1.7e308]), np.array([1e300, -1.7e308]), [ZIGZAG])
    assert got.distance_m[0] == pytest.approx(math.sqrt(2) * 1e300)
    assert got.distance_m[1] == math.inf


def check_no_reference(x, y, lines) -> RouteDistances:
    routes = PreparedRoutes(lines)
    sets = RouteSets.from_lists([[0]])
    return distance_to_routes(x, y, set_index=np.zeros(len(x), int), routes=routes, sets=sets)


def test_vertex_gives_exact_zero() -> None:
    got = check(
        np.array([100.0, 300.0]), np.array([0.0, -200.0]), np.array([0, 0]), [ZIGZAG], [[0]]
    )
    np.testing.assert_array_equal(got.distance_m, [0.0, 0.0])


def test_degenerate_zero_length_segments() -> None:
    line = LineString([(0, 0), (0, 0), (50, 0), (50, 0), (50, 0), (50, 80), (50, 80)])
    xs = np.array([0.0, -10.0, 50.0, 60.0, 55.0, 25.0, 50.0, -500.0])
    ys = np.array([0.0, 0.0, 0.0, -5.0, 40.0, 3.0, 90.0, 0.0])
    check(xs, ys, np.zeros(len(xs), dtype=int), [line], [[0]])


def test_route_of_one_repeated_point_and_empty_route() -> None:
    point_route = LineString([(10, 10), (10, 10)])
    empty = LineString()
    xs = np.array([10.0, 13.0, 40.0, 500.0, 13.0])
    ys = np.array([10.0, 14.0, 10.0, 10.0, 14.0])
    sets = [[0], [1], [1, 0]]
    got = check(xs, ys, np.array([0, 0, 0, 0, 1]), [point_route, empty], sets)
    assert got.distance_m[1] == pytest.approx(5.0)
    assert math.isinf(got.distance_m[4]) and got.route_index[4] == -1
    check(xs, ys, np.array([2, 2, 2, 2, 1]), [point_route, empty], sets)


def test_empty_batch() -> None:
    got = check(np.zeros(0), np.zeros(0), np.zeros(0, dtype=int), [ZIGZAG], [[0]])
    assert got.distance_m.size == 0


def test_no_routes_at_all() -> None:
    got = check(np.array([1.0]), np.array([2.0]), np.array([0]), [], [[]])
    assert math.isinf(got.distance_m[0])
    assert not got.within_corridor[0]


def test_non_finite_fix_is_far_from_everything() -> None:
    got = check(
        np.array([np.nan, 0.0, np.inf]),
        np.array([0.0, np.nan, 0.0]),
        np.zeros(3, int),
        [ZIGZAG],
        [[0]],
    )
    assert np.all(np.isinf(got.distance_m))


def test_each_route_has_its_own_corridor() -> None:
    # The nearest route (A, 30 m corridor) is 50 m away: outside it. Route B is
    # 120 m away but has a 150 m corridor: the fix is inside a corridor.
    a = LineString([(0, 50), (1000, 50)])
    b = LineString([(0, -120), (1000, -120)])
    got = check(
        np.array([500.0]), np.array([0.0]), np.array([0]), [a, b], [[0, 1]], corridor=[30.0, 150.0]
    )
    assert got.route_index[0] == 0
    assert got.distance_m[0] == pytest.approx(50.0)
    assert got.within_corridor[0]
    got = check(
        np.array([500.0]),
        np.array([0.0]),
        np.array([0]),
        [a, b],
        [[0, 1]],
        corridor=[30.0, 100.0],
        cutoff_m=150.0,
    )
    assert not got.within_corridor[0]


def test_ties_go_to_the_first_route_of_the_set() -> None:
    a = LineString([(0, 10), (100, 10)])
    b = LineString([(0, -10), (100, -10)])
    got = check(
        np.array([50.0, 50.0]), np.array([0.0, 0.0]), np.array([0, 1]), [a, b], [[0, 1], [1, 0]]
    )
    np.testing.assert_array_equal(got.route_index, [0, 1])


def test_far_fixes_without_fallback_are_inf_but_corridor_is_exact() -> None:
    line = LineString([(0, 0), (1000, 0)])
    xs = np.array([500.0, 500.0, 500.0, 500.0])
    ys = np.array([99.0, 101.0, 180.0, 5000.0])
    got = check(xs, ys, np.zeros(4, int), [line], [[0]], exact=False, cutoff_m=150.0)
    assert math.isinf(got.distance_m[2]) and got.route_index[2] == -1
    np.testing.assert_array_equal(got.within_corridor, [True, False, False, False])
    got = check(xs, ys, np.zeros(4, int), [line], [[0]], exact=True, cutoff_m=150.0)
    assert got.distance_m[3] == pytest.approx(5000.0)


def test_long_segments_and_out_and_back_route() -> None:
    # One 20 km diagonal segment, then back along itself with a small offset:
    # cells see two separate runs of the same route.
    out_back = LineString([(0, 0), (14_000, 14_000), (14_000, 14_030), (30, 30), (30, 3000)])
    rng = np.random.default_rng(7)
    t = rng.uniform(0, 14_000, 300)
    xs = t + rng.normal(0, 40, 300)
    ys = t + rng.normal(0, 40, 300)
    check(xs, ys, np.zeros(300, int), [out_back], [[0]])


@pytest.mark.parametrize("cell_m", [150.0, 200.0, 333.0])
def test_dense_lattice_around_a_serpentine_route(cell_m: float) -> None:
    # Legs 90 m apart: cells see several legs of one route, some just outside
    # the cell near a corner, which is where a too-eager pruning would go wrong.
    legs = []
    for k in range(6):
        xs = (0.0, 1000.0) if k % 2 == 0 else (1000.0, 0.0)
        legs += [(xs[0], 90.0 * k + 7.0 * (k % 3)), (xs[1], 90.0 * k + 11.0 * (k % 2))]
    line = LineString(legs)
    gx, gy = np.meshgrid(np.arange(-150.0, 1150.0, 23.0), np.arange(-150.0, 600.0, 19.0))
    xs, ys = gx.ravel(), gy.ravel()
    check(xs, ys, np.zeros(xs.size, int), [line], [[0]], cutoff_m=150.0, cell_m=cell_m)


def test_dense_lattice_around_a_slanted_serpentine() -> None:
    # Found by a random search against a deliberately weakened pruning bound:
    # legs ~106 m apart at an angle, 150 m cells.
    line = LineString(
        [
            (-41.5, 0.0),
            (-484.9, 870.0),
            (-561.8, 817.7),
            (-62.7, -52.3),
            (-175.6, -104.6),
            (-714.5, 765.4),
            (-811.5, 713.1),
            (-294.4, -156.9),
            (-326.2, -209.1),
            (-864.8, 660.8),
            (-914.8, 608.5),
            (-465.2, -261.4),
        ]
    )
    gx, gy = np.meshgrid(np.arange(-800.0, 0.0, 13.0), np.arange(-200.0, 1000.0, 11.0))
    xs, ys = gx.ravel(), gy.ravel()
    check(xs, ys, np.zeros(xs.size, int), [line], [[0]], cutoff_m=150.0, cell_m=150.0)


def test_tiny_segments() -> None:
    line = LineString([(0, 0), (0.001, 0), (0.001, 1e-9), (5, 5)])
    xs = np.array([0.001, 0.0005, -0.001, 0.0011, 3.0])
    ys = np.array([0.0001, -0.0002, 0.0, 0.0, 3.0000001])
    check(xs, ys, np.zeros(5, int), [line], [[0]])


def test_random_walk_routes_against_shapely() -> None:
    rng = np.random.default_rng(11)
    lines = []
    for _ in range(30):
        steps = rng.normal(0, 60, (rng.integers(2, 60), 2))
        steps[rng.uniform(size=len(steps)) < 0.1] = 0.0  # repeated vertices
        lines.append(LineString(np.cumsum(steps, axis=0) + rng.uniform(-3000, 3000, 2)))
    sets = [[i] for i in range(30)] + [[1, 2, 3], [4, 4], [], [29, 0]]
    n = 2000
    set_index = rng.integers(0, len(sets), n)
    anchor = np.array([lines[s[0]].coords[0] if s else (0.0, 0.0) for s in sets])[set_index]
    xs = anchor[:, 0] + rng.normal(0, 400, n)
    ys = anchor[:, 1] + rng.normal(0, 400, n)
    for cell_m in (17.0, 200.0, 1500.0):
        check(xs, ys, set_index, lines, sets, corridor=rng.uniform(20, 100, 30), cell_m=cell_m)


def test_validation() -> None:
    with pytest.raises(ValueError, match="LineString"):
        PreparedRoutes([Point(0, 0)])
    with pytest.raises(ValueError, match="cutoff_m"):
        PreparedRoutes([ZIGZAG], corridor_m=100.0, cutoff_m=50.0)
    with pytest.raises(ValueError, match="cell_m"):
        PreparedRoutes([ZIGZAG], cell_m=0.0)
    with pytest.raises(ValueError, match="offsets"):
        RouteSets(offsets=np.array([0, 2]), route_index=np.array([0]))
    routes = PreparedRoutes([ZIGZAG])
    with pytest.raises(ValueError, match="set_index"):
        distance_to_routes(
            [0.0], [0.0], set_index=[1], routes=routes, sets=RouteSets.from_lists([[0]])
        )
    with pytest.raises(ValueError, match="beyond routes"):
        distance_to_routes(
            [0.0], [0.0], set_index=[0], routes=routes, sets=RouteSets.from_lists([[1]])
        )
    with pytest.raises(ValueError, match="same length"):
        distance_to_routes(
            [0.0], [0.0, 1.0], set_index=[0], routes=routes, sets=RouteSets.from_lists([[0]])
        )


coordinate = st.floats(-2000, 2000, allow_nan=False)


@st.composite
def scenes(draw):
    n_routes = draw(st.integers(1, 5))
    lines = []
    for _ in range(n_routes):
        pts = draw(st.lists(st.tuples(coordinate, coordinate), min_size=2, max_size=12))
        # Sometimes repeat a vertex to make a zero-length segment.
        if draw(st.booleans()):
            k = draw(st.integers(0, len(pts) - 1))
            pts.insert(k, pts[k])
        lines.append(LineString(pts))
    sets = draw(
        st.lists(st.lists(st.integers(0, n_routes - 1), max_size=3), min_size=1, max_size=4)
    )
    n = draw(st.integers(0, 40))
    set_index = draw(st.lists(st.integers(0, len(sets) - 1), min_size=n, max_size=n))
    fixes = []
    for _ in range(n):
        kind = draw(st.sampled_from(["free", "vertex", "near"]))
        line = lines[draw(st.integers(0, n_routes - 1))]
        if kind == "vertex":
            fixes.append(line.coords[draw(st.integers(0, len(line.coords) - 1))])
        elif kind == "near":
            p = line.interpolate(draw(st.floats(0, 1)), normalized=True)
            fixes.append((p.x + draw(st.floats(-150, 150)), p.y + draw(st.floats(-150, 150))))
        else:
            fixes.append((draw(st.floats(-6000, 6000)), draw(st.floats(-6000, 6000))))
    corridor = draw(st.lists(st.floats(0, 120), min_size=n_routes, max_size=n_routes))
    cell_m = draw(st.sampled_from([50.0, 200.0, 700.0]))
    cutoff_m = draw(st.sampled_from([None, 130.0, 400.0]))
    exact = draw(st.booleans())
    xy = np.array(fixes, dtype=float).reshape(-1, 2)
    return xy, np.array(set_index, dtype=int), lines, sets, corridor, cell_m, cutoff_m, exact


@settings(max_examples=200, deadline=None)
@given(scenes())
def test_property_matches_shapely(scene) -> None:
    xy, set_index, lines, sets, corridor, cell_m, cutoff_m, exact = scene
    check(
        xy[:, 0],
        xy[:, 1],
        set_index,
        lines,
        sets,
        corridor=corridor,
        exact=exact,
        cell_m=cell_m,
        cutoff_m=cutoff_m,
    )


def test_accepts_a_shapely_array_and_reports_counts() -> None:
    lines = shapely.linestrings([[(0, 0), (10, 0)], [(0, 5), (10, 5)]])
    routes = PreparedRoutes(lines)
    assert routes.n_routes == 2
    assert RouteSets.from_lists([[0], [0, 1], []]).n_sets == 3
