"""Speed limit at many points and times from speed zones with validity windows."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import shapely

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
    limit = np.full(n, np.inf)
    if n and zones._cell_zone.size:
        fx = (x - zones._x0) / zones.cell_m
        fy = (y - zones._y0) / zones.cell_m
        # NaN and far-away points fail these comparisons and see no zone.
        inside = (fx >= 0) & (fx < zones._nx) & (fy >= 0) & (fy < zones._ny)
        point = np.flatnonzero(inside)
        cell = fy[point].astype(np.int64) * zones._nx + fx[point].astype(np.int64)
        lo = zones._cell_offsets[cell]
        count = zones._cell_offsets[cell + 1] - lo
        pair_point = np.repeat(point, count)
        first = np.cumsum(count) - count
        zone = zones._cell_zone[np.arange(pair_point.size) + np.repeat(lo - first, count)]
        t = ts[pair_point]
        # Validity first: it is cheaper than point-in-polygon.
        keep = (zones.valid_from_ms[zone] <= t) & (t < zones.valid_to_ms[zone])
        pair_point, zone = pair_point[keep], zone[keep]
        hit = shapely.contains_xy(zones.areas[zone], x[pair_point], y[pair_point])
        np.minimum.at(limit, pair_point[hit], zones.limit_kmh[zone[hit]])
    limit[np.isinf(limit)] = float(default_kmh)
    return limit
