"""The NumPy query of :func:`geofence.distance_to_routes`, kept as a reference.

Until the compiled loop replaced it, this was the production query: the same
grid (:class:`geofence.PreparedRoutes`), read with whole-batch array passes.
Tests compare the compiled loop to it value for value (distances, named
routes and corridor hits), since both evaluate the same point-segment
formula on the same candidate runs.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt

from geofence import PreparedRoutes, RouteDistances, RouteSets

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_BOOL = npt.NDArray[np.bool_]

_QUERY_CHUNK = 8192


class _NumpyTables:
    """The grid of a :class:`PreparedRoutes` in the layout the NumPy query read.

    The compiled query keeps a cell's entries as routes plus (vertex, count)
    rows; the NumPy one also had one sentinel route past the end (its search
    reads one past the last entry) and, on each (cell, route)'s first entry,
    how many entries that route has in the cell.
    """

    def __init__(self, routes: PreparedRoutes) -> None:
        self.cell_m, self._x0, self._y0 = routes.cell_m, routes._x0, routes._y0
        self._nx, self._ny, self._xy = routes._nx, routes._ny, routes._xy
        self._cell_offsets = routes._cell_offsets
        route = routes._entry_route.astype(np.int64)
        self._entry_route = np.append(routes._entry_route, np.int32(-1))
        self._entry_vertex = routes._entry_run[:, 0].copy()
        self._entry_n = routes._entry_run[:, 1].copy()
        cell_of = np.repeat(np.arange(routes._ncells), np.diff(routes._cell_offsets))
        group_start = np.flatnonzero(
            np.r_[True, (route[1:] != route[:-1]) | (cell_of[1:] != cell_of[:-1])]
        )
        self._entry_group_n = np.zeros(route.size + 1, dtype=np.int32)
        self._entry_group_n[group_start] = np.diff(np.append(group_start, route.size))


def distance_to_routes_numpy(
    x_m: npt.ArrayLike,
    y_m: npt.ArrayLike,
    *,
    set_index: npt.ArrayLike,
    routes: PreparedRoutes,
    sets: RouteSets,
    exact_beyond_cutoff: bool = True,
) -> RouteDistances:
    """:func:`geofence.distance_to_routes`, with whole-batch NumPy passes."""
    x = np.ascontiguousarray(x_m, dtype=np.float64).reshape(-1)
    y = np.ascontiguousarray(y_m, dtype=np.float64).reshape(-1)
    s = np.ascontiguousarray(set_index, dtype=np.int64).reshape(-1)
    n = x.size
    if y.size != n or s.size != n:
        raise ValueError("x_m, y_m and set_index must have the same length")
    if n and (s.min() < 0 or s.max() >= sets.n_sets):
        raise ValueError("set_index out of range of sets")
    if sets.route_index.size and sets.route_index.max() >= routes.n_routes:
        raise ValueError("sets refer to a route index beyond routes")

    # (fix, route) pairs; with one route per set a pair is a fix.
    set_size = sets.offsets[s + 1] - sets.offsets[s]
    single = bool(n == 0 or (set_size.min() == 1 and set_size.max() == 1))
    if single:
        pair_fix = np.arange(n, dtype=np.int64)
        pair_route = sets.route_index[sets.offsets[s]]
        pair_start = pair_fix
    else:
        n_pairs = int(set_size.sum())
        pair_start = np.cumsum(set_size) - set_size
        pair_fix = np.repeat(np.arange(n, dtype=np.int64), set_size)
        pos = np.arange(n_pairs, dtype=np.int64) + np.repeat(sets.offsets[s] - pair_start, set_size)
        pair_route = sets.route_index[pos]

    d2 = _grid_d2(_NumpyTables(routes), x, y, pair_fix, pair_route, single=single)
    pair_d = np.sqrt(d2)
    pair_d[pair_d > routes.cutoff_m] = np.inf
    if exact_beyond_cutoff:
        _exact_far(routes, x, y, pair_fix, pair_route, pair_d)

    pair_within = pair_d <= routes.corridor_m[pair_route]
    if single:
        best_d = pair_d
        within = pair_within
        best_route = pair_route.copy()
    else:
        best_d = np.full(n, np.inf)
        within = np.zeros(n, dtype=bool)
        best_route = np.full(n, -1, dtype=np.int64)
        has = set_size > 0
        if np.any(has):
            starts = pair_start[has]
            best_d[has] = np.minimum.reduceat(pair_d, starts)
            within[has] = np.logical_or.reduceat(pair_within, starts)
            # The first pair of each fix that attains the minimum names the route.
            hits = np.flatnonzero(pair_d == best_d[pair_fix])
            first = hits[np.r_[True, pair_fix[hits][1:] != pair_fix[hits][:-1]]]
            best_route[pair_fix[first]] = pair_route[first]
    best_route[~np.isfinite(best_d)] = -1
    return RouteDistances(distance_m=best_d, route_index=best_route, within_corridor=within)


def _exact_far(
    routes: PreparedRoutes, x: _F64, y: _F64, pair_fix: _I64, pair_route: _I64, pair_d: _F64
) -> None:
    """Fill in exact distances (m) for fixes with no route within the cutoff."""
    far_pairs = np.flatnonzero(np.isinf(pair_d) & (routes._route_n[pair_route] > 0))
    if far_pairs.size == 0:
        return
    # A far route of a fix that is near another of its routes cannot be the nearest.
    near_fix = np.zeros(x.size, dtype=bool)
    near_fix[pair_fix[np.isfinite(pair_d)]] = True
    far_fix = pair_fix[far_pairs]
    todo = far_pairs[~near_fix[far_fix] & np.isfinite(x[far_fix]) & np.isfinite(y[far_fix])]
    if todo.size:
        route = pair_route[todo]
        fix = pair_fix[todo]
        # Every segment of the route is a candidate: one run from its first vertex.
        vertex, n_seg = routes._route_vertex[route], routes._route_n[route]
        with np.errstate(over="ignore", invalid="ignore"):
            d = np.sqrt(_runs_min_d2(routes._xy, vertex, n_seg, x[fix], y[fix]))
            # Squares of absurd distances (beyond 1e154 m) overflow: redo those
            # few with distances, which cannot.
            huge = np.flatnonzero(~np.isfinite(d))
            if huge.size:
                d[huge] = _runs_min_d2(
                    routes._xy,
                    vertex[huge],
                    n_seg[huge],
                    x[fix[huge]],
                    y[fix[huge]],
                    squared=False,
                )
                # Beyond 1e306 m even products overflow: call that "far from everything".
                d[np.isnan(d)] = np.inf
        pair_d[todo] = d


def _grid_d2(
    routes: _NumpyTables,
    x: _F64,
    y: _F64,
    pair_fix: _I64,
    pair_route: _I64,
    *,
    single: bool,
) -> _F64:
    """Squared distance per (fix, route) pair over grid candidates; inf when none."""
    n_pairs = pair_fix.size
    out = np.full(n_pairs, np.inf)
    if n_pairs == 0 or routes._entry_n.size == 0:
        return out
    inv_cell = 1.0 / routes.cell_m
    fx = (x - routes._x0) * inv_cell
    fy = (y - routes._y0) * inv_cell
    # NaN and far-away fixes fail these comparisons and never reach the grid.
    inside = (fx >= 0) & (fx < routes._nx) & (fy >= 0) & (fy < routes._ny)
    # Outside fixes are sent to cell 0 (and masked) so the casts stay defined.
    fx[~inside] = 0.0
    fy[~inside] = 0.0
    cell = fy.astype(np.int64) * routes._nx + fx.astype(np.int64)
    if not single:
        cell = cell[pair_fix]
        inside = inside[pair_fix]
    first_entry = np.empty(n_pairs, dtype=np.int64)
    n_entries = np.empty(n_pairs, dtype=np.int64)
    # Chunks small enough for the CPU cache make the many passes below cheap.
    for c0 in range(0, n_pairs, _QUERY_CHUNK):
        c1 = min(c0 + _QUERY_CHUNK, n_pairs)
        first_entry[c0:c1], n_entries[c0:c1] = _find_entries(
            routes, cell[c0:c1], inside[c0:c1], pair_route[c0:c1]
        )
    pair = np.flatnonzero(n_entries)
    if pair.size == 0:
        return out
    if n_entries.max() == 1:
        entry = first_entry[pair]
        entry_pair = pair
    else:
        reps = n_entries[pair]
        first = np.cumsum(reps) - reps
        entry = np.arange(int(reps.sum())) + np.repeat(first_entry[pair] - first, reps)
        entry_pair = np.repeat(pair, reps)
    fix = pair_fix[entry_pair]
    entry_d2 = _runs_min_d2(
        routes._xy, routes._entry_vertex[entry], routes._entry_n[entry], x[fix], y[fix]
    )
    if entry_pair.size == pair.size:
        out[pair] = entry_d2
    else:
        np.minimum.at(out, entry_pair, entry_d2)
    return out


def _runs_min_d2(
    xy: _F64,
    vertex: npt.NDArray[np.integer[Any]],
    n_seg: npt.NDArray[np.integer[Any]],
    px: _F64,
    py: _F64,
    *,
    squared: bool = True,
) -> _F64:
    """Smallest squared distance in m² (or distance in m) from each point to its run of segments.

    Run ``i`` is the ``n_seg[i]`` segments joining vertices
    ``xy[vertex[i]], ..., xy[vertex[i] + n_seg[i]]``; ``n_seg`` must be > 0.
    """
    out = np.empty(px.size)
    # Runs with the same number of segments are evaluated as 2-D blocks, which
    # avoids ragged index arithmetic and a reduceat over every candidate.
    if n_seg.max() < np.iinfo(np.uint16).max:
        order = np.argsort(n_seg.astype(np.uint16), kind="stable")  # a radix sort
    else:
        order = np.argsort(n_seg, kind="stable")
    sorted_n = n_seg[order]
    bounds = np.flatnonzero(np.r_[True, sorted_n[1:] != sorted_n[:-1], True])
    for b0, b1 in itertools.pairwise(bounds):
        width = int(sorted_n[b0])
        steps = np.arange(width + 1)[:, None]
        # Blocks small enough for the CPU cache make the many passes cheap.
        rows = max(1, _QUERY_CHUNK * 6 // (width + 1))
        for c0 in range(b0, b1, rows):
            block = order[c0 : min(c0 + rows, b1)]
            run_xy = xy.take(steps + vertex[block], axis=0)
            d2 = _run_d2(
                px[block], py[block], run_xy[..., 0].copy(), run_xy[..., 1].copy(), squared
            )
            out[block] = np.minimum.reduce(d2, axis=0)
    return out


def _find_entries(
    routes: _NumpyTables, cell: _I64, inside: _BOOL, route: _I64
) -> tuple[_I64, _I64]:
    """First entry and number of entries of each (cell, route); 0 entries if none."""
    lo = routes._cell_offsets[cell]
    hi = routes._cell_offsets[cell + 1]
    count = np.where(inside, hi - lo, 0)
    entry_route = routes._entry_route
    route32 = route.astype(np.int32)
    # Vectorized lower bound of the route among the cell's entries, sorted by route.
    for _ in range(int(count.max()).bit_length()):
        half = count >> 1
        mid = lo + half
        go = entry_route[mid] < route32
        go &= count > 0
        lo[go] = mid[go] + 1
        count = np.where(go, count - half - 1, half)
    found = entry_route[lo] == route32
    found &= lo < hi
    found &= inside
    return lo, np.where(found, routes._entry_group_n[lo], 0)


def _run_d2(px: _F64, py: _F64, x: _F64, y: _F64, squared: bool = True) -> _F64:
    """Squared distances in m² (or distances in m) from points to runs of consecutive segments.

    ``x``, ``y`` have shape (W + 1, B): column ``b`` holds the W + 1 vertices
    of point ``b``'s run of W segments; ``px``, ``py`` have shape (B,).
    Returns shape (W, B).
    """
    ax = x[:-1]
    ay = y[:-1]
    ux = x[1:] - ax
    uy = y[1:] - ay
    dx = px - ax
    dy = py - ay
    len2 = ux * ux
    len2 += uy * uy
    # A zero-length segment has u = 0, so t = 0 / tiny = 0: its start point.
    np.maximum(len2, 1e-300, out=len2)
    t = dx * ux
    t += dy * uy
    t /= len2
    np.clip(t, 0.0, 1.0, out=t)
    dx -= t * ux
    dy -= t * uy
    if not squared:
        result: _F64 = np.hypot(dx, dy)
        return result
    dx *= dx
    dy *= dy
    dx += dy
    return dx
