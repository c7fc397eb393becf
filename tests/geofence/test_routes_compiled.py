"""The compiled query of distance_to_routes against the NumPy query it replaced.

Both read the same grid and evaluate the same point-segment formula on the
same candidate runs, so they must agree value for value: the named route and
the corridor flag exactly, distances to 1e-9 m (in practice bit for bit).
``test_routes.py`` checks the compiled query against shapely as well.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from shapely.geometry import LineString

from geofence import PreparedRoutes, RouteDistances, RouteSets, distance_to_routes
from geofence._routes import _query
from tests.geofence.numpy_routes import distance_to_routes_numpy
from tests.geofence.test_routes import ZIGZAG, scenes


def assert_same(got: RouteDistances, want: RouteDistances) -> None:
    assert got.distance_m.dtype == want.distance_m.dtype == np.float64
    assert got.route_index.dtype == want.route_index.dtype == np.int64
    assert got.within_corridor.dtype == want.within_corridor.dtype == np.bool_
    assert got.distance_m.shape == want.distance_m.shape
    np.testing.assert_allclose(got.distance_m, want.distance_m, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got.route_index, want.route_index)
    np.testing.assert_array_equal(got.within_corridor, want.within_corridor)


def compare(x, y, set_index, routes: PreparedRoutes, sets: RouteSets, *, exact=True) -> None:
    kw = {"set_index": set_index, "routes": routes, "sets": sets, "exact_beyond_cutoff": exact}
    assert_same(distance_to_routes(x, y, **kw), distance_to_routes_numpy(x, y, **kw))


def bus_routes(rng: np.random.Generator, n_routes: int) -> list[LineString]:
    """Random walks of 20-60 m steps in a 6 km square; every third one shares a stretch
    with the one before (a variant route), so that ties between routes are common."""
    lines = []
    for k in range(n_routes):
        n = int(rng.integers(2, 120))
        angle = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.4, n))
        step = rng.uniform(20, 60, n)
        xy = np.cumsum(np.column_stack([step * np.cos(angle), step * np.sin(angle)]), axis=0)
        xy += rng.uniform(-3000, 3000, 2)
        if k % 3 == 2:
            prev = np.asarray(lines[-1].coords)
            shared = prev[: max(2, len(prev) // 2)]
            xy = np.vstack([shared, shared[-1] + xy - xy[0]])
        xy[rng.uniform(size=len(xy)) < 0.05] = xy[0]  # repeated and returning vertices
        lines.append(LineString(xy))
    return lines


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cell_m", [23.0, 200.0, 900.0])
def test_random_fleets_match_the_numpy_query(seed: int, cell_m: float) -> None:
    rng = np.random.default_rng(seed)
    n_routes = 60
    lines = [*bus_routes(rng, n_routes), LineString()]
    sets = [[i] for i in range(n_routes)]
    # Main and variant routes, in both orders; a repeated route; an empty one; none.
    sets += [[i - 1, i] for i in range(2, n_routes, 3)] + [[i, i - 1] for i in range(2, 30, 3)]
    sets += [[5, 5], [n_routes], [n_routes, 7], []]
    n = 4000
    set_index = rng.integers(0, len(sets), n)
    # Fixes on vertices, near the route (inside and outside its corridor), far away.
    coords = [np.asarray(line.coords) for line in lines[:n_routes]]
    fixes = np.empty((n, 2))
    for i, s in enumerate(set_index):
        route = sets[s][0] if sets[s] and sets[s][0] < n_routes else int(rng.integers(n_routes))
        vertices = coords[route]
        kind = rng.uniform()
        fixes[i] = vertices[rng.integers(len(vertices))]
        if kind < 0.7:
            fixes[i] += rng.normal(0, 60, 2)
        elif kind < 0.85:
            fixes[i] += rng.normal(0, 600, 2)
        elif kind < 0.9:
            fixes[i] = rng.uniform(-1e5, 1e5, 2)
    fixes[rng.uniform(size=n) < 0.01] = np.nan
    corridor = rng.uniform(0, 100, n_routes + 1)
    for cutoff_m in (None, 250.0):
        routes = PreparedRoutes(lines, corridor_m=corridor, cell_m=cell_m, cutoff_m=cutoff_m)
        for exact in (True, False):
            route_sets = RouteSets.from_lists(sets)
            compare(fixes[:, 0], fixes[:, 1], set_index, routes, route_sets, exact=exact)


@settings(max_examples=300, deadline=None)
@given(scenes())
def test_property_matches_the_numpy_query(scene) -> None:
    xy, set_index, lines, sets, corridor, cell_m, cutoff_m, exact = scene
    routes = PreparedRoutes(lines, corridor_m=corridor, cell_m=cell_m, cutoff_m=cutoff_m)
    compare(xy[:, 0], xy[:, 1], set_index, routes, RouteSets.from_lists(sets), exact=exact)


def test_edge_cases_match_the_numpy_query() -> None:
    # Vertices, segments, exactly at the cutoff and corridor (100 m), beyond, non-finite.
    x = np.array([100.0, 50.0, 50.0, -30.0, 600.0, np.nan, np.inf, 1e7, -1e300, 1.7e308, 0.0])
    y = np.array([0.0, 0.0, -100.0, -40.0, 400.0, 0.0, 0.0, -1e7, 1e300, -1.7e308, np.nan])
    routes = PreparedRoutes([ZIGZAG, LineString(), LineString([(5, 5), (5, 5)])])
    sets = RouteSets.from_lists([[0], [1], [1, 0], [2, 0], []])
    for s in range(sets.n_sets):
        for exact in (True, False):
            compare(x, y, np.full(x.size, s), routes, sets, exact=exact)
    no_routes = PreparedRoutes([])
    compare(x, y, np.zeros(x.size, dtype=int), no_routes, RouteSets.from_lists([[]]))
    compare(x[:0], y[:0], np.zeros(0, dtype=int), routes, sets)


def test_interpreted_loop_agrees_with_the_compiled_one() -> None:
    # The loop as plain Python (as under NUMBA_DISABLE_JIT=1): the same semantics
    # of min, max and NaN as the machine code.
    rng = np.random.default_rng(3)
    lines = bus_routes(rng, 12)
    routes = PreparedRoutes(lines, corridor_m=rng.uniform(10, 100, 12), cell_m=150.0)
    sets = RouteSets.from_lists([[i] for i in range(12)] + [[2, 1], []])
    n = 300
    set_index = rng.integers(0, sets.n_sets, n)
    x = rng.uniform(-3500, 3500, n)
    y = rng.uniform(-3500, 3500, n)
    x[:3] = [np.nan, -1e300, 1.7e308]
    y[:3] = [0.0, 1e300, -1.7e308]
    compiled = distance_to_routes(x, y, set_index=set_index, routes=routes, sets=sets)
    out = (np.empty(n), np.empty(n, dtype=np.int64), np.empty(n, dtype=np.bool_))
    _query.py_func(
        x,
        y,
        set_index,
        sets.offsets,
        sets.route_index,
        routes._grid,
        routes._nx,
        routes._ny,
        routes._ncells,
        routes._slots,
        routes._hash_bits,
        routes._extra_runs,
        routes._xy,
        routes._route_vertex,
        routes._route_n,
        routes.corridor_m,
        True,
        *out,
    )
    assert_same(compiled, RouteDistances(*out))
    assert compiled.distance_m[1] == pytest.approx(math.sqrt(2) * 1e300)
