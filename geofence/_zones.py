"""Speed limit at many points and times from speed zones with validity windows."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import shapely

from core.jit import jit

__all__ = ["DEFAULT_LIMIT_KMH", "PreparedZones", "speed_limit_kmh"]

#: Limit where no speed zone applies (contract §3).
DEFAULT_LIMIT_KMH: Final = 60.0

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_MAX_CELLS: Final = 1 << 20
_OPEN_FROM: Final = np.iinfo(np.int64).min
_OPEN_TO: Final = np.iinfo(np.int64).max


def _bounds_ms(values: Iterable[int | None] | None, n: int, open_ms: int) -> _I64:
    """Epoch-ms bounds, one per zone, with ``None`` for open-ended."""
    if values is None:
        return np.full(n, open_ms, dtype=np.int64)
    items = list(values)
    if len(items) != n:
        raise ValueError(f"expected {n} validity bounds, got {len(items)}")
    return np.array([open_ms if v is None else int(v) for v in items], dtype=np.int64)


class PreparedZones:
    """Speed zones (Polygon or MultiPolygon areas in metres) prepared for point queries.

    ``areas``: shapely polygons in the projected frame (see
    :func:`geofence.project_geometry`). ``limit_kmh``: each zone's limit.
    ``valid_from_ms`` / ``valid_to_ms``: each zone's validity as epoch
    milliseconds (UTC), ``None`` (the whole argument or one item) for
    open-ended; a zone applies at ``t`` when ``valid_from_ms <= t <
    valid_to_ms``. ``cell_m``: size of the grid of zone bounding boxes that
    narrows each point to the zones near it (grows on its own for very large
    extents).
    """

    def __init__(
        self,
        areas: Sequence[Any] | npt.NDArray[np.object_],
        *,
        limit_kmh: float | npt.ArrayLike,
        valid_from_ms: Iterable[int | None] | None = None,
        valid_to_ms: Iterable[int | None] | None = None,
        cell_m: float = 500.0,
    ) -> None:
        geoms = np.asarray(areas, dtype=object).reshape(-1)
        n = geoms.size
        if n and not np.all(np.isin(shapely.get_type_id(geoms), (3, 6))):
            raise ValueError("every zone area must be a Polygon or MultiPolygon")
        limits = np.broadcast_to(np.asarray(limit_kmh, dtype=np.float64), (n,)).copy()
        if np.any(~np.isfinite(limits)) or np.any(limits <= 0):
            raise ValueError("limit_kmh must be finite and > 0")
        if not math.isfinite(cell_m) or cell_m <= 0:
            raise ValueError(f"cell_m must be finite and > 0, got {cell_m}")
        self.areas: npt.NDArray[np.object_] = geoms
        self.limit_kmh: _F64 = limits
        self.valid_from_ms: _I64 = _bounds_ms(valid_from_ms, n, _OPEN_FROM)
        self.valid_to_ms: _I64 = _bounds_ms(valid_to_ms, n, _OPEN_TO)
        shapely.prepare(geoms)

        # Each zone is listed in every cell its bounding box touches (dense CSR).
        box = shapely.bounds(geoms).reshape(-1, 4) if n else np.zeros((0, 4))
        usable = np.all(np.isfinite(box), axis=1)  # empty polygons have NaN bounds
        if np.any(usable):
            lo = box[usable, :2].min(axis=0)
            hi = box[usable, 2:].max(axis=0)
        else:
            lo = hi = np.zeros(2)
        extent = hi - lo
        cell = max(float(cell_m), math.sqrt(float(extent[0] * extent[1]) / _MAX_CELLS))
        self.cell_m: float = cell
        self._x0, self._y0 = float(lo[0]), float(lo[1])
        self._nx = int(extent[0] // cell) + 1
        self._ny = int(extent[1] // cell) + 1
        zone = np.flatnonzero(usable)
        ix0 = ((box[zone, 0] - self._x0) // cell).astype(np.int64)
        iy0 = ((box[zone, 1] - self._y0) // cell).astype(np.int64)
        ix1 = np.minimum(((box[zone, 2] - self._x0) // cell).astype(np.int64), self._nx - 1)
        iy1 = np.minimum(((box[zone, 3] - self._y0) // cell).astype(np.int64), self._ny - 1)
        width = ix1 - ix0 + 1
        count = width * (iy1 - iy0 + 1)
        t = np.repeat(np.arange(zone.size), count)
        local = np.arange(t.size) - np.repeat(np.cumsum(count) - count, count)
        cell_no = (iy0[t] + local // width[t]) * self._nx + ix0[t] + local % width[t]
        order = np.argsort(cell_no, kind="stable")
        self._cell_zone: _I64 = zone[t[order]]
        self._cell_offsets: _I64 = np.zeros(self._nx * self._ny + 1, dtype=np.int64)
        np.cumsum(np.bincount(cell_no, minlength=self._nx * self._ny), out=self._cell_offsets[1:])

    @property
    def n_zones(self) -> int:
        """Number of zones."""
        return int(self.areas.size)


def speed_limit_kmh(
    x_m: npt.ArrayLike,
    y_m: npt.ArrayLike,
    ts_ms: npt.ArrayLike,
    *,
    zones: PreparedZones,
    default_kmh: float = DEFAULT_LIMIT_KMH,
) -> _F64:
    """Speed limit in km/h for each point at its time.

    ``x_m``, ``y_m``: positions in the projected frame of ``zones``;
    ``ts_ms``: epoch milliseconds (UTC), all 1-D of length N. The limit is
    the lowest ``limit_kmh`` among the zones that contain the point (its
    interior: a point exactly on a zone's boundary is outside, as in
    ``Polygon.contains``) and are valid at that time; ``default_kmh`` where
    there is none, even when a zone's limit is higher. Returns float64 (N,).
    """
    x = np.ascontiguousarray(x_m, dtype=np.float64).reshape(-1)
    y = np.ascontiguousarray(y_m, dtype=np.float64).reshape(-1)
    ts = np.asarray(ts_ms)
    if ts.dtype.kind not in "iu":
        raise TypeError(f"ts_ms must be integer epoch milliseconds, got dtype {ts.dtype}")
    ts = ts.astype(np.int64, copy=False).reshape(-1)
    n = x.size
    if y.size != n or ts.size != n:
        raise ValueError("x_m, y_m and ts_ms must have the same length")
    limit = np.full(n, float(default_kmh))
    if n and zones._cell_zone.size:
        # Candidates: zones whose box's cells hold the point and that are valid then.
        pair_point, pair_zone = _candidates(
            x,
            y,
            ts,
            np.array([zones._x0, zones._y0, zones.cell_m]),
            zones._nx,
            zones._ny,
            zones._cell_offsets,
            zones._cell_zone,
            zones.valid_from_ms,
            zones.valid_to_ms,
        )
        hit = shapely.contains_xy(zones.areas[pair_zone], x[pair_point], y[pair_point])
        _lowest(limit, pair_point[hit], zones.limit_kmh[pair_zone[hit]], float(default_kmh))
    return limit


@jit
def _candidates(
    x: _F64,
    y: _F64,
    ts_ms: _I64,
    grid: _F64,
    nx: int,
    ny: int,
    cell_offsets: _I64,
    cell_zone: _I64,
    valid_from_ms: _I64,
    valid_to_ms: _I64,
) -> tuple[_I64, _I64]:
    """(point, zone) pairs: the zones listed in the point's cell and valid at its time.

    ``grid`` is ``(x0, y0, cell_m)``. Points and, per point, zones in cell order.
    """
    x0, y0, cell_m = grid[0], grid[1], grid[2]
    n = x.size
    cell = np.empty(n, dtype=np.int64)
    n_pairs = 0
    for i in range(n):
        fx = (x[i] - x0) / cell_m
        fy = (y[i] - y0) / cell_m
        # NaN and far-away points fail these comparisons and see no zone.
        if fx >= 0 and fx < nx and fy >= 0 and fy < ny:
            cell[i] = int(fy) * nx + int(fx)
            for k in range(cell_offsets[cell[i]], cell_offsets[cell[i] + 1]):
                n_pairs += _valid(valid_from_ms, valid_to_ms, cell_zone[k], ts_ms[i])
        else:
            cell[i] = -1
    pair_point = np.empty(n_pairs, dtype=np.int64)
    pair_zone = np.empty(n_pairs, dtype=np.int64)
    p = 0
    for i in range(n):
        if cell[i] < 0:
            continue
        for k in range(cell_offsets[cell[i]], cell_offsets[cell[i] + 1]):
            if _valid(valid_from_ms, valid_to_ms, cell_zone[k], ts_ms[i]):
                pair_point[p] = i
                pair_zone[p] = cell_zone[k]
                p += 1
    return pair_point, pair_zone


@jit
def _valid(valid_from_ms: _I64, valid_to_ms: _I64, zone: int, ts_ms: int) -> bool:
    """Whether ``zone`` applies at ``ts_ms`` (from inclusive, to exclusive)."""
    return bool(valid_from_ms[zone] <= ts_ms < valid_to_ms[zone])


@jit
def _lowest(limit_kmh: _F64, point: _I64, zone_limit_kmh: _F64, default_kmh: float) -> None:
    """Lower ``limit_kmh[point]`` to each zone's limit; the default only where no zone applies."""
    first = np.ones(limit_kmh.size, dtype=np.bool_)
    for p in range(point.size):
        i = point[p]
        if first[i] or zone_limit_kmh[p] < limit_kmh[i]:
            limit_kmh[i] = zone_limit_kmh[p]
            first[i] = False
