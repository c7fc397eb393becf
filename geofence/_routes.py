"""Distance from many fixes to their buses' assigned routes.

Routes are prepared once into a uniform grid. For every (cell, route) pair
within the cutoff of each other the grid keeps the short runs of that
route's consecutive segments that can be the nearest one for some point of
the cell *and* lie within the cutoff of it. A query then costs one lookup
per (fix, route) and a handful of point–segment distances, instead of one
distance per segment of the route.

Why the pruning is exact: for a cell ``C`` with centre ``o`` and half
diagonal ``h``, every point of ``C`` is within ``U = min_s dist(o, s) + h``
of the route, so its nearest segment ``s*`` has ``dist(C, s*) <= U``; a
segment farther than ``U`` from the cell can never be the nearest. Segments
farther than the cutoff from the cell are dropped too, so a fix farther than
the cutoff from a route finds no candidate within the cutoff and is
reported as "far".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt
import shapely

from core.jit import jit, prefetch

__all__ = ["PreparedRoutes", "RouteDistances", "RouteSets", "distance_to_routes"]

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_I32 = npt.NDArray[np.int32]
_BOOL = npt.NDArray[np.bool_]

#: (segment, cell) pairs examined at once while building: bounds memory, and arrays
#: this small stay in the CPU cache (5x fewer would cost Python overhead).
_BUILD_CHUNK_PAIRS: Final = 200_000
#: Dense cell table limit; beyond it the cell size grows (8 bytes per cell).
_MAX_CELLS: Final = 1 << 22
#: Pruning keeps this much more than the bounds ask for, against rounding (metres).
_SLACK_M: Final = 1e-6
#: Runs of candidate segments separated by at most this many other segments are merged.
_RUN_GAP: Final = 2
#: Fixes (or pairs of a fix and a route) ahead that the query asks the memory for.
_AHEAD: Final = 8


class RouteDistances(NamedTuple):
    """Result of :func:`distance_to_routes`, one entry per fix.

    ``distance_m`` (float64): distance in metres from the fix to the nearest
    of its assigned routes, in the projected frame; ``inf`` when the fix has
    no usable route, or when it is farther than ``cutoff_m`` from all of them
    and the exact fallback was turned off.
    ``route_index`` (int64): index (in :class:`PreparedRoutes` order) of that
    nearest route; ``-1`` whenever ``distance_m`` is ``inf``. Ties go to the
    route listed first in the fix's route set.
    ``within_corridor`` (bool): the fix is within ``corridor_m`` (inclusive)
    of at least one of its assigned routes, each route with its own corridor.
    Always exact, because ``cutoff_m >= corridor_m`` for every route.
    """

    distance_m: _F64
    route_index: _I64
    within_corridor: _BOOL


@dataclass(frozen=True)
class RouteSets:
    """Ragged sets of route indices, e.g. the routes assigned to each bus.

    Set ``s`` is ``route_index[offsets[s]:offsets[s + 1]]``; indices refer to
    the routes of a :class:`PreparedRoutes`. A set may be empty (a bus with
    no route): its fixes get ``inf`` and ``route_index == -1``.
    """

    offsets: _I64
    route_index: _I64

    def __post_init__(self) -> None:
        offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        route_index = np.ascontiguousarray(self.route_index, dtype=np.int64)
        if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0:
            raise ValueError("offsets must be a 1-D array starting at 0")
        if np.any(np.diff(offsets) < 0) or offsets[-1] != route_index.size:
            raise ValueError("offsets must be non-decreasing and end at len(route_index)")
        if route_index.ndim != 1 or (route_index.size and route_index.min() < 0):
            raise ValueError("route_index must be a 1-D array of indices >= 0")
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "route_index", route_index)

    @classmethod
    def from_lists(cls, sets: Sequence[Sequence[int]]) -> RouteSets:
        """Build from one sequence of route indices per set."""
        sizes = np.fromiter((len(s) for s in sets), dtype=np.int64, count=len(sets))
        offsets = np.zeros(len(sets) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        flat = np.fromiter(
            (int(r) for s in sets for r in s), dtype=np.int64, count=int(offsets[-1])
        )
        return cls(offsets=offsets, route_index=flat)

    @property
    def n_sets(self) -> int:
        """Number of sets."""
        return int(self.offsets.size - 1)


class PreparedRoutes:
    """Route LineStrings in metres (see :func:`geofence.project_geometry`), prepared for queries.

    ``lines``: a sequence or array of shapely LineStrings in the projected
    frame; an empty LineString is allowed and is never near anything.
    ``corridor_m``: each route's corridor half-width in metres (a scalar or
    one per route), used for ``within_corridor``.
    ``cutoff_m``: distances up to this many metres come from the grid;
    beyond it a fix is "far" (exact fallback or ``inf``, see
    :func:`distance_to_routes`). Must be at least every ``corridor_m``;
    defaults to ``max(corridor_m)`` but not less than 100 m.
    ``cell_m``: grid cell size in metres (default 200); smaller cells mean
    fewer candidate segments per fix but more memory. It grows on its own if
    the routes' extent would need more than 4 million cells.

    Memory is 16 to 32 bytes (a hash table slot at most 2/3 full) per
    (cell, route) pair within ``cutoff_m`` of each other, i.e. about
    ``24 * length_m * (cell_m + 2 * cutoff_m) / cell_m²`` per route, plus 16
    bytes per vertex.
    """

    def __init__(
        self,
        lines: Sequence[Any] | npt.NDArray[np.object_],
        *,
        corridor_m: float | npt.ArrayLike = 100.0,
        cutoff_m: float | None = None,
        cell_m: float = 200.0,
    ) -> None:
        geoms = np.asarray(lines, dtype=object).reshape(-1)
        if geoms.size and not np.all(shapely.get_type_id(geoms) == 1):
            raise ValueError("every route must be a LineString")
        n_routes = geoms.size
        corridor = np.broadcast_to(np.asarray(corridor_m, dtype=np.float64), (n_routes,)).copy()
        if np.any(~np.isfinite(corridor)) or np.any(corridor < 0):
            raise ValueError("corridor_m must be finite and >= 0")
        max_corridor = float(corridor.max()) if n_routes else 0.0
        cutoff = float(cutoff_m) if cutoff_m is not None else max(max_corridor, 100.0)
        if not math.isfinite(cutoff) or cutoff < max_corridor or cutoff <= 0:
            raise ValueError(f"cutoff_m must be finite, > 0 and >= every corridor_m, got {cutoff}")
        if not math.isfinite(cell_m) or cell_m <= 0:
            raise ValueError(f"cell_m must be finite and > 0, got {cell_m}")
        self.lines: npt.NDArray[np.object_] = geoms
        self.corridor_m: _F64 = corridor
        self.cutoff_m: float = cutoff
        self.cell_m: float = float(cell_m)
        self._build()

    @property
    def n_routes(self) -> int:
        """Number of routes."""
        return int(self.lines.size)

    # The runs as cell lists, the layout the NumPy reference query in the tests
    # reads; rebuilt from the hash table on each access (queries never use it).

    @property
    def _cell_offsets(self) -> _I64:
        return self._cell_entries()[0]

    @property
    def _entry_route(self) -> _I32:
        return self._cell_entries()[1]

    @property
    def _entry_run(self) -> _I32:
        return self._cell_entries()[2]

    def _cell_entries(self) -> tuple[_I64, _I32, _I32]:
        """``(cell_offsets, entry_route, entry_run)`` of the runs, cell by cell.

        Cell ``c``'s entries are ``cell_offsets[c]:cell_offsets[c + 1]``,
        sorted by route and then by first vertex; ``entry_run`` rows are
        (first vertex, segment count).
        """
        used = self._slots[:, 0] >= 0
        key, value = self._slots[used, 0], self._slots[used, 1]
        vertex, count = value & 0xFFFFFFFF, value >> 32
        runs = np.where(count < 0, -count, 1)
        key = np.repeat(key, runs)
        seg_n = np.repeat(count, runs)
        vertex = np.repeat(vertex, runs)
        many = seg_n < 0
        # Row of each pair's own extra runs: its first plus its place among them.
        place = np.arange(key.size) - np.repeat(np.cumsum(runs) - runs, runs)
        extra = vertex[many] + place[many]
        vertex[many] = self._extra_runs[extra, 0]
        seg_n[many] = self._extra_runs[extra, 1]
        route, cell = key // self._ncells, key % self._ncells
        order = np.lexsort((vertex, route, cell))
        cell_offsets = np.zeros(self._ncells + 1, dtype=np.int64)
        np.cumsum(np.bincount(cell, minlength=self._ncells), out=cell_offsets[1:])
        entry_route: _I32 = route[order].astype(np.int32)
        entry_run: _I32 = np.column_stack([vertex[order], seg_n[order]]).astype(np.int32)
        return cell_offsets, entry_route, entry_run

    def _build(self) -> None:
        coords, owner = shapely.get_coordinates(self.lines, return_index=True)
        coords = np.asarray(coords, dtype=np.float64)
        owner = np.asarray(owner, dtype=np.int64)
        if coords.size and not np.all(np.isfinite(coords)):
            raise ValueError("route coordinates must be finite")
        if owner.size >= np.iinfo(np.int32).max:
            raise ValueError("too many route vertices")
        # Queries read vertices only: a segment is numbered by its start vertex,
        # and the vertices of one segment run are adjacent in memory.
        self._xy: _F64 = np.ascontiguousarray(coords)
        # A segment joins consecutive vertices of the same route.
        seg_vertex = np.flatnonzero(owner[1:] == owner[:-1])
        a = coords[seg_vertex]
        d = coords[seg_vertex + 1] - a
        seg_route = owner[seg_vertex]
        len2 = np.einsum("ij,ij->i", d, d)
        # Zero-length segments get 1/|d|² = 0, which makes them their start point;
        # so do segments shorter than 1e-150 m, whose 1/|d|² would overflow.
        inv_len2 = np.divide(1.0, len2, out=np.zeros_like(len2), where=len2 > 1e-300)
        segments = (a[:, 0].copy(), a[:, 1].copy(), d[:, 0].copy(), d[:, 1].copy(), inv_len2)
        # Each route's first vertex and segment count, for the exact fallback.
        n_coords = np.bincount(owner, minlength=self.n_routes)
        self._route_vertex: _I64 = np.cumsum(n_coords) - n_coords
        self._route_n: _I64 = np.maximum(n_coords - 1, 0)

        cutoff = self.cutoff_m
        if coords.size:
            lo = coords.min(axis=0) - cutoff
            hi = coords.max(axis=0) + cutoff
        else:
            lo = hi = np.zeros(2)
        extent = hi - lo
        self.cell_m = max(self.cell_m, math.sqrt(float(extent[0] * extent[1]) / _MAX_CELLS))
        cell = self.cell_m
        self._x0, self._y0 = float(lo[0]) - cell, float(lo[1]) - cell
        self._nx = int(extent[0] // cell) + 3
        self._ny = int(extent[1] // cell) + 3
        self._ncells = self._nx * self._ny
        # What the query needs of the grid's frame, as one array for the compiled loop.
        self._grid: _F64 = np.array([self._x0, self._y0, 1.0 / cell, self.cutoff_m])

        # Runs are found per chunk of whole routes, then sorted cell-major.
        runs: list[tuple[_I64, _I64, _I64]] = []
        n_seg = seg_route.size
        # Pieces as long as the band is wide keep the enumerated cells near the
        # band's own area (total ∝ length * (piece + 2 cutoff)² / piece).
        self._piece_m = max(cell, 2.0 * cutoff)
        length = np.sqrt(len2)
        span = (np.minimum(length, self._piece_m) + 2.0 * cutoff) / cell + 2.0
        est = np.ceil(length / self._piece_m + 1e-9) * span * span
        cum = np.cumsum(est)
        start = 0
        while start < n_seg:
            end = int(np.searchsorted(cum, cum[start] - est[start] + _BUILD_CHUNK_PAIRS))
            end = min(max(end, start + 1), n_seg)
            end = int(np.searchsorted(seg_route, seg_route[end - 1], side="right"))
            runs.append(self._build_runs(start, end, seg_route, segments))
            start = end
        if runs:
            key = np.concatenate([r[0] for r in runs])
            seg_lo = np.concatenate([r[1] for r in runs])
            seg_n = np.concatenate([r[2] for r in runs])
        else:
            key = seg_lo = seg_n = np.zeros(0, dtype=np.int64)
        # One slot per (route, cell) pair with runs, in an open-addressing hash
        # table keyed by ``route * ncells + cell``: a query reaches the run from
        # the pair in one cache line, without the cell's list of routes.
        order = np.lexsort((seg_lo, key))
        key, seg_lo, seg_n = key[order], seg_lo[order], seg_n[order]
        run_vertex = seg_vertex[seg_lo]
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else seg_lo
        count = np.diff(np.append(first, key.size))
        # A pair with one run keeps it in its slot; one with several (rare) keeps
        # their index in ``_extra_runs`` and minus their count, in order of segment.
        many = count > 1
        slot_vertex = run_vertex[first].copy()
        slot_n = seg_n[first].copy()
        in_many = np.repeat(many, count)
        extra_vertex, extra_n = run_vertex[in_many], seg_n[in_many]
        slot_vertex[many] = (np.cumsum(count * many) - count)[many]
        slot_n[many] = -count[many]
        self._extra_runs: _I64 = np.column_stack([extra_vertex, extra_n]).astype(np.int64)
        # At most 2/3 full, so that a search meets an empty slot within a few.
        bits = max(2, math.ceil(math.log2(max(1.5 * first.size, 4.0))))
        if bits > 32:
            raise ValueError("too many (cell, route) pairs")
        self._hash_bits: int = bits
        self._slots: _I64 = np.full((1 << bits, 2), -1, dtype=np.int64)
        _fill_slots(self._slots, bits, key[first], (slot_n << 32) | slot_vertex)

    def _build_runs(
        self,
        start: int,
        end: int,
        seg_route: _I64,
        segments: tuple[_F64, _F64, _F64, _F64, _F64],
    ) -> tuple[_I64, _I64, _I64]:
        """(route-major key, first segment, segment count) of candidate runs in a chunk."""
        cell, cutoff = self.cell_m, self.cutoff_m
        half_diag = cell * math.sqrt(0.5)
        ax, ay, ux, uy, inv = (column[start:end] for column in segments)
        # Cells are enumerated around pieces of at most _piece_m, so that a long
        # diagonal segment covers a band of cells rather than its bounding box.
        pieces = np.maximum(1, np.ceil(np.hypot(ux, uy) / self._piece_m)).astype(np.int64)
        p_seg = np.repeat(np.arange(end - start), pieces)
        p_no = np.arange(p_seg.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        f0 = p_no / pieces[p_seg]
        f1 = (p_no + 1) / pieces[p_seg]
        x0 = ax[p_seg] + f0 * ux[p_seg]
        x1 = ax[p_seg] + f1 * ux[p_seg]
        y0 = ay[p_seg] + f0 * uy[p_seg]
        y1 = ay[p_seg] + f1 * uy[p_seg]
        ix0 = np.floor((np.minimum(x0, x1) - cutoff - self._x0) / cell).astype(np.int64)
        ix1 = np.floor((np.maximum(x0, x1) + cutoff - self._x0) / cell).astype(np.int64)
        iy0 = np.floor((np.minimum(y0, y1) - cutoff - self._y0) / cell).astype(np.int64)
        iy1 = np.floor((np.maximum(y0, y1) + cutoff - self._y0) / cell).astype(np.int64)
        width = ix1 - ix0 + 1
        n_cells = width * (iy1 - iy0 + 1)
        t_piece = np.repeat(np.arange(p_seg.size), n_cells)
        local = np.arange(t_piece.size) - np.repeat(np.cumsum(n_cells) - n_cells, n_cells)
        cx = ix0[t_piece] + local % width[t_piece]
        cy = iy0[t_piece] + local // width[t_piece]
        t_seg = p_seg[t_piece]
        ox = self._x0 + (cx + 0.5) * cell
        oy = self._y0 + (cy + 0.5) * cell
        d_centre = np.sqrt(
            _point_segment_d2(ox, oy, ax[t_seg], ay[t_seg], ux[t_seg], uy[t_seg], inv[t_seg])
        )
        keep = d_centre <= cutoff + half_diag + _SLACK_M
        t_seg, cx, cy, d_centre = t_seg[keep], cx[keep], cy[keep], d_centre[keep]
        key = seg_route[start + t_seg] * self._ncells + cy * self._nx + cx
        # Stable, so each key's segments stay in increasing order, and the copies
        # of a (cell, segment) that neighbouring pieces of one segment produce
        # end up next to each other.
        order = np.argsort(key, kind="stable")
        key, t_seg, d_centre = key[order], t_seg[order], d_centre[order]
        if key.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        once = np.r_[True, (key[1:] != key[:-1]) | (t_seg[1:] != t_seg[:-1])]
        key, t_seg, d_centre = key[once], t_seg[once], d_centre[once]
        group_start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        group_n = np.diff(np.append(group_start, key.size))
        best_centre = np.repeat(np.minimum.reduceat(d_centre, group_start), group_n)
        bound = np.minimum(best_centre + half_diag, cutoff) + _SLACK_M
        # The distance to the cell is at least the distance to its centre minus the
        # half diagonal, and at most the distance to its centre: only the cases in
        # between need the exact cell distance.
        keep = d_centre - half_diag <= bound
        key, t_seg, bound, d_centre = key[keep], t_seg[keep], bound[keep], d_centre[keep]
        unsure = np.flatnonzero(d_centre > bound)
        cell_no = key[unsure] % self._ncells
        sel = t_seg[unsure]
        keep = np.ones(key.size, dtype=bool)
        keep[unsure] = _segment_near_cell(
            ax[sel],
            ay[sel],
            ux[sel],
            uy[sel],
            inv[sel],
            self._x0 + (cell_no % self._nx) * cell,
            self._y0 + (cell_no // self._nx) * cell,
            cell,
            bound[unsure],
        )
        key, seg = key[keep], t_seg[keep] + start
        if key.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        new_run = np.r_[True, (key[1:] != key[:-1]) | (seg[1:] - seg[:-1] > _RUN_GAP + 1)]
        run_start = np.flatnonzero(new_run)
        run_end = np.append(run_start[1:], key.size) - 1
        return key[run_start], seg[run_start], seg[run_end] - seg[run_start] + 1


def _point_segment_d2(
    px: _F64, py: _F64, ax: _F64, ay: _F64, ux: _F64, uy: _F64, inv_len2: _F64
) -> _F64:
    """Squared distance in m² from points to segments ``a + t u``, ``t`` in [0, 1]."""
    dx = px - ax
    dy = py - ay
    t = dx * ux
    t += dy * uy
    t *= inv_len2
    np.clip(t, 0.0, 1.0, out=t)
    dx -= t * ux
    dy -= t * uy
    dx *= dx
    dy *= dy
    dx += dy
    return dx


def _segment_near_cell(
    ax: _F64,
    ay: _F64,
    ux: _F64,
    uy: _F64,
    inv_len2: _F64,
    x0: _F64,
    y0: _F64,
    size: float,
    bound: _F64,
) -> _BOOL:
    """Whether segments come within ``bound`` metres of the square cells at ``(x0, y0)``.

    The distance is zero when they touch; otherwise it is attained at a
    segment end or a cell corner.
    """
    x1 = x0 + size
    y1 = y0 + size
    d2 = np.full(ax.shape, np.inf)
    for cx, cy in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
        np.minimum(d2, _point_segment_d2(cx, cy, ax, ay, ux, uy, inv_len2), out=d2)
    for ex, ey in ((ax, ay), (ax + ux, ay + uy)):
        ddx = np.maximum(np.maximum(x0 - ex, ex - x1), 0.0)
        ddy = np.maximum(np.maximum(y0 - ey, ey - y1), 0.0)
        np.minimum(d2, ddx * ddx + ddy * ddy, out=d2)
    near: _BOOL = d2 <= bound * bound
    rest = np.flatnonzero(~near)
    near[rest] = _segment_hits_cell(
        ax[rest], ay[rest], ux[rest], uy[rest], x0[rest], y0[rest], x1[rest], y1[rest]
    )
    return near


def _segment_hits_cell(
    ax: _F64, ay: _F64, ux: _F64, uy: _F64, x0: _F64, y0: _F64, x1: _F64, y1: _F64
) -> _BOOL:
    """Whether segments ``a + t u`` (t in [0, 1]) touch closed rectangles (Liang–Barsky)."""
    t0 = np.zeros_like(ax)
    t1 = np.ones_like(ax)
    hit = np.ones(ax.shape, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for p, q in ((-ux, ax - x0), (ux, x1 - ax), (-uy, ay - y0), (uy, y1 - ay)):
            parallel = p == 0
            hit &= ~(parallel & (q < 0))
            r = q / np.where(parallel, 1.0, p)
            t0 = np.where(~parallel & (p < 0), np.maximum(t0, r), t0)
            t1 = np.where(~parallel & (p > 0), np.minimum(t1, r), t1)
    result: _BOOL = hit & (t0 <= t1)
    return result


def distance_to_routes(
    x_m: npt.ArrayLike,
    y_m: npt.ArrayLike,
    *,
    set_index: npt.ArrayLike,
    routes: PreparedRoutes,
    sets: RouteSets,
    exact_beyond_cutoff: bool = True,
) -> RouteDistances:
    """Distance in metres from each fix to the nearest route of its route set.

    ``x_m``, ``y_m``: fix positions in the projected frame of ``routes``
    (1-D, length N). ``set_index``: for each fix, the index of its route set
    in ``sets`` (e.g. its bus). Returns a :class:`RouteDistances` of arrays
    of length N.

    Contract, with ``d`` the true planar distance from the fix to the nearest
    of its routes (what ``shapely.distance`` gives on the same coordinates):

    * ``d <= routes.cutoff_m``: ``distance_m == d`` up to float rounding
      (~1e-9 m), from the grid.
    * ``d > routes.cutoff_m``: with ``exact_beyond_cutoff`` (default) the
      distance is still exact, from a fallback that measures those fixes
      against every segment of their routes (a few ns per segment); without
      it, ``distance_m`` is ``inf`` and ``route_index`` is ``-1``, meaning
      only "farther than ``cutoff_m`` from every assigned route".
    * ``within_corridor`` is exact in both modes.

    Non-finite coordinates count as far from everything (``inf``).

    The route-deviation condition needs only ``within_corridor``: with
    ``exact_beyond_cutoff=False`` a batch costs the grid lookups alone, and
    exact distances can be asked for the (few) fixes outside afterwards.
    A detour filing with a path is one more route in ``routes`` and a route
    set of its own for the fixes it covers.

    The query is one compiled loop over the fixes (:func:`core.jit.jit`),
    about 0.1 µs per fix and route near a route, plus a few ns per segment
    for the fixes that need the fallback.
    """
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
    distance = np.empty(n)
    route = np.empty(n, dtype=np.int64)
    within = np.empty(n, dtype=np.bool_)
    _query(
        x,
        y,
        s,
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
        exact_beyond_cutoff,
        distance,
        route,
        within,
    )
    return RouteDistances(distance_m=distance, route_index=route, within_corridor=within)


#: Fibonacci hashing of a key folded to 32 bits: the top bits of its product with
#: ``2**32 / golden ratio``, modulo ``2**32``, pick the slot. No step overflows 64 bits,
#: so plain Python (``NUMBA_DISABLE_JIT=1``) computes the same slots.
_GOLDEN32: Final = np.uint64(0x9E3779B9)
_LOW32: Final = np.uint64(0xFFFFFFFF)


@jit
def _home_slot(key: int, bits: int) -> np.int64:
    """The slot where the search for ``key`` starts, in a table of ``2**bits`` slots."""
    k = np.uint64(key)
    folded = (k ^ (k >> np.uint64(32))) & _LOW32
    return np.int64(((folded * _GOLDEN32) & _LOW32) >> np.uint64(32 - bits))


@jit
def _fill_slots(slots: _I64, bits: int, keys: _I64, values: _I64) -> None:
    """Insert distinct ``keys`` (>= 0) with their ``values`` by linear probing; -1 is empty."""
    mask = slots.shape[0] - 1
    for k in range(keys.size):
        h = _home_slot(keys[k], bits)
        while slots[h, 0] >= 0:
            h = (h + 1) & mask
        slots[h, 0] = keys[k]
        slots[h, 1] = values[k]


@jit
def _query(
    x: _F64,
    y: _F64,
    set_index: _I64,
    set_offsets: _I64,
    set_routes: _I64,
    grid: _F64,
    nx: int,
    ny: int,
    ncells: int,
    slots: _I64,
    bits: int,
    extra_runs: _I64,
    xy: _F64,
    route_vertex: _I64,
    route_n: _I64,
    corridor_m: _F64,
    exact: bool,
    out_distance: _F64,
    out_route: _I64,
    out_within: _BOOL,
) -> None:
    """The loop of :func:`distance_to_routes`: fills ``out_*`` (length N).

    ``grid`` is ``(x0, y0, 1 / cell_m, cutoff_m)``. Per fix and route of its
    set: the fix's cell, the slot of the (route, cell) pair in the hash
    table and its runs, the minimum over them; beyond the cutoff ``inf``.
    A fix with no route within the cutoff is measured against every segment
    of its routes when ``exact``. The first route attaining the minimum wins.

    The tables are far larger than the CPU caches and each step needs the
    one before (slot, vertices), so the passes ask for what they will read
    :data:`_AHEAD` pairs ahead (:func:`core.jit.prefetch`), which changes no
    result. The slot is found from the pair alone, so a pair costs one cache
    line of the table before its vertices, where a search among the cell's
    routes cost the cell's offsets, its route list and then the run's row.
    """
    x0, y0, inv_cell, cutoff = grid[0], grid[1], grid[2], grid[3]
    n = x.size
    mask = slots.shape[0] - 1
    # The fixes' cells (-1: outside the grid) and the number of (fix, route) pairs.
    cell = np.empty(n, dtype=np.int64)
    n_pairs = 0
    for i in range(n):
        fx = (x[i] - x0) * inv_cell
        fy = (y[i] - y0) * inv_cell
        # NaN and far-away fixes fail these comparisons and never reach the grid.
        if fx >= 0.0 and fx < nx and fy >= 0.0 and fy < ny:
            cell[i] = int(fy) * nx + int(fx)
        else:
            cell[i] = -1
        n_pairs += set_offsets[set_index[i] + 1] - set_offsets[set_index[i]]

    # Per (fix, route) pair, its key (-1: outside the grid) and home slot.
    pair_key = np.empty(n_pairs, dtype=np.int64)
    pair_home = np.zeros(n_pairs, dtype=np.int64)
    p = 0
    for i in range(n):
        for k in range(set_offsets[set_index[i]], set_offsets[set_index[i] + 1]):
            if cell[i] >= 0:
                key = set_routes[k] * ncells + cell[i]
                pair_key[p] = key
                pair_home[p] = _home_slot(key, bits)
            else:
                pair_key[p] = -1
            p += 1

    # Per pair, its run: first vertex and segment count (0: none; < 0: -count
    # runs from row ``pair_vertex`` of ``extra_runs``).
    pair_vertex = np.zeros(n_pairs, dtype=np.int64)
    pair_n = np.zeros(n_pairs, dtype=np.int64)
    for p in range(n_pairs):
        ahead = p + _AHEAD
        if ahead < n_pairs and pair_key[ahead] >= 0:
            prefetch(slots, 2 * pair_home[ahead])
        key = pair_key[p]
        if key < 0:
            continue
        h = pair_home[p]
        while slots[h, 0] >= 0:
            if slots[h, 0] == key:
                value = slots[h, 1]
                pair_vertex[p] = value & 0xFFFFFFFF
                pair_n[p] = value >> 32
                break
            h = (h + 1) & mask

    # Distances, per fix over its pairs.
    p = 0
    for i in range(n):
        ahead = p + _AHEAD
        if ahead < n_pairs and pair_n[ahead] > 0:
            vertex = pair_vertex[ahead]
            last = vertex + pair_n[ahead]
            for v in range(vertex, last, 4):  # 4 vertices per 64-byte cache line
                prefetch(xy, 2 * v)
            prefetch(xy, 2 * last)
        px = x[i]
        py = y[i]
        k0 = set_offsets[set_index[i]]
        k1 = set_offsets[set_index[i] + 1]
        best = math.inf
        best_route = -1
        within = False
        for k in range(k0, k1):
            r = set_routes[k]
            d2 = math.inf
            m = pair_n[p]
            if m > 0:
                d2 = min(d2, _run_min_d2(xy, pair_vertex[p], m, px, py))
            else:
                for e in range(pair_vertex[p], pair_vertex[p] - m):
                    d2 = min(d2, _run_min_d2(xy, extra_runs[e, 0], extra_runs[e, 1], px, py))
            p += 1
            d = math.sqrt(d2)
            if d > cutoff:
                d = math.inf
            if d < best:
                best = d
                best_route = r
            if d <= corridor_m[r]:
                within = True
        if best_route < 0 and exact and math.isfinite(px) and math.isfinite(py):
            # Far from every route: each segment of each route is a candidate.
            for k in range(k0, k1):
                r = set_routes[k]
                if route_n[r] == 0:
                    continue
                d = math.sqrt(_run_min_d2(xy, route_vertex[r], route_n[r], px, py))
                if not math.isfinite(d):
                    # Squares of absurd distances (beyond 1e154 m) overflow: redo
                    # with distances, which cannot below 1e306 m ("far" beyond).
                    d = _run_min_d(xy, route_vertex[r], route_n[r], px, py)
                    if math.isnan(d):
                        d = math.inf
                if d < best:
                    best = d
                    best_route = r
                if d <= corridor_m[r]:
                    within = True
        out_distance[i] = best
        out_route[i] = best_route
        out_within[i] = within


@jit
def _run_min_d2(xy: _F64, vertex: int, n_seg: int, px: float, py: float) -> float:
    """Smallest squared distance in m² from a point to a run of segments; NaN if any is NaN.

    The run is the ``n_seg`` segments joining vertices ``xy[vertex]``, ...,
    ``xy[vertex + n_seg]``. Zero-length segments count as their start point.
    """
    best = math.inf
    nan = False
    for j in range(vertex, vertex + n_seg):
        ax = xy[j, 0]
        ay = xy[j, 1]
        ux = xy[j + 1, 0] - ax
        uy = xy[j + 1, 1] - ay
        dx = px - ax
        dy = py - ay
        len2 = max(ux * ux + uy * uy, 1e-300)
        t = (dx * ux + dy * uy) / len2
        # Clipped to [0, 1] without branches; NaN stays NaN, as with np.clip.
        t = min(max(t, 0.0), 1.0)
        dx -= t * ux
        dy -= t * uy
        d2 = dx * dx + dy * dy
        best = min(best, d2)
        nan |= d2 != d2
    return math.nan if nan else best


@jit
def _run_min_d(xy: _F64, vertex: int, n_seg: int, px: float, py: float) -> float:
    """:func:`_run_min_d2` as a distance in m, without squaring (no overflow below 1e306 m)."""
    best = math.inf
    nan = False
    for j in range(vertex, vertex + n_seg):
        ax = xy[j, 0]
        ay = xy[j, 1]
        ux = xy[j + 1, 0] - ax
        uy = xy[j + 1, 1] - ay
        dx = px - ax
        dy = py - ay
        len2 = max(ux * ux + uy * uy, 1e-300)
        t = (dx * ux + dy * uy) / len2
        # Clipped to [0, 1] without branches; NaN stays NaN, as with np.clip.
        t = min(max(t, 0.0), 1.0)
        d = math.hypot(dx - t * ux, dy - t * uy)
        best = min(best, d)
        nan |= d != d
    return math.nan if nan else best
