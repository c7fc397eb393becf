"""Plane geometry for the synthetic city: a local projection and dense paths.

The city is built in metres on a local equirectangular projection around the
middle of Suzhou Industrial Park; across the ~25 km of the city its scale
error is far below the 1 m guard bands the scenarios keep, so the service's
own projection (whatever it is) sees the same distances to within centimetres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import shapely
from numpy.typing import NDArray

__all__ = [
    "LAT0",
    "LON0",
    "DensePath",
    "densify",
    "to_lonlat",
    "to_xy",
]

F64 = NDArray[np.float64]

#: Projection origin (degrees): the middle of the simulated city.
LON0: Final = 120.725
LAT0: Final = 31.325
#: Metres per degree of latitude and of longitude at ``LAT0`` (WGS-84 ellipsoid).
_A = 6378137.0
_E2 = 6.69437999014e-3
_PHI = math.radians(LAT0)
_W = math.sqrt(1 - _E2 * math.sin(_PHI) ** 2)
M_PER_DEG_LAT: Final = math.radians(1) * _A * (1 - _E2) / _W**3
M_PER_DEG_LON: Final = math.radians(1) * _A * math.cos(_PHI) / _W


def to_xy(lon: F64 | float, lat: F64 | float) -> tuple[F64, F64]:
    """Project WGS-84 degrees to local metres (x east, y north)."""
    x = (np.asarray(lon, dtype=np.float64) - LON0) * M_PER_DEG_LON
    y = (np.asarray(lat, dtype=np.float64) - LAT0) * M_PER_DEG_LAT
    return x, y


def to_lonlat(x: F64 | float, y: F64 | float) -> tuple[F64, F64]:
    """Inverse of :func:`to_xy`."""
    lon = np.asarray(x, dtype=np.float64) / M_PER_DEG_LON + LON0
    lat = np.asarray(y, dtype=np.float64) / M_PER_DEG_LAT + LAT0
    return lon, lat


def lonlat_list(x: F64, y: F64) -> list[list[float]]:
    """Return ``[[lon, lat], ...]`` rounded to 6 decimals (~0.1 m) for GeoJSON."""
    lon, lat = to_lonlat(x, y)
    return [[float(a), float(b)] for a, b in zip(np.round(lon, 6), np.round(lat, 6), strict=True)]


@dataclass(frozen=True)
class DensePath:
    """A polyline sampled every few metres.

    ``s_m`` is the distance along the path, ``heading_deg`` the direction of
    travel (0 = north, clockwise) and ``turn_deg`` the change of heading at
    each point (degrees between the segments before and after it).
    """

    x: F64
    y: F64
    s_m: F64
    heading_deg: F64
    turn_deg: F64

    @property
    def length_m(self) -> float:
        """Total length in metres."""
        return float(self.s_m[-1])

    def at(self, s_m: F64) -> tuple[F64, F64, F64]:
        """Return x, y and heading at distances ``s_m`` along the path."""
        x = np.interp(s_m, self.s_m, self.x)
        y = np.interp(s_m, self.s_m, self.y)
        idx = np.clip(np.searchsorted(self.s_m, s_m, side="right") - 1, 0, len(self.s_m) - 1)
        return x, y, self.heading_deg[idx]

    def reversed(self) -> DensePath:
        """The same path driven the other way."""
        return from_points(self.x[::-1].copy(), self.y[::-1].copy())

    def slice(self, s0_m: float, s1_m: float) -> DensePath:
        """The part of the path between two distances."""
        keep = (self.s_m >= s0_m) & (self.s_m <= s1_m)
        return from_points(self.x[keep], self.y[keep])

    def line(self) -> shapely.LineString:
        """A shapely LineString of the dense points (metres)."""
        return shapely.linestrings(np.column_stack([self.x, self.y]))


def densify(vx: F64, vy: F64, *, step_m: float = 5.0) -> DensePath:
    """Sample the polyline through vertices ``(vx, vy)`` about every ``step_m``."""
    xs: list[F64] = []
    ys: list[F64] = []
    for i in range(len(vx) - 1):
        length = math.hypot(vx[i + 1] - vx[i], vy[i + 1] - vy[i])
        if length < 1e-6:
            continue
        n = max(1, math.ceil(length / step_m))
        f = np.arange(n, dtype=np.float64) / n
        xs.append(vx[i] + f * (vx[i + 1] - vx[i]))
        ys.append(vy[i] + f * (vy[i + 1] - vy[i]))
    xs.append(np.array([vx[-1]], dtype=np.float64))
    ys.append(np.array([vy[-1]], dtype=np.float64))
    return from_points(np.concatenate(xs), np.concatenate(ys))


def from_points(x: F64, y: F64) -> DensePath:
    """Build a :class:`DensePath` from already dense points (no repeated points)."""
    dx, dy = np.diff(x), np.diff(y)
    s = np.concatenate([[0.0], np.cumsum(np.hypot(dx, dy))])
    seg = np.degrees(np.arctan2(dx, dy)) % 360.0
    heading = np.concatenate([seg, seg[-1:]]) if len(seg) else np.zeros(len(x))
    turn = np.zeros(len(x))
    if len(seg) > 1:
        turn[1:-1] = np.abs((np.diff(seg) + 180.0) % 360.0 - 180.0)
    return DensePath(x=x, y=y, s_m=s, heading_deg=heading, turn_deg=turn)


def offset_path(
    path: DensePath, s0_m: float, s1_m: float, offset_m: float, ramp_m: float
) -> DensePath:
    """Shift the stretch ``[s0_m, s1_m]`` of ``path`` sideways by ``offset_m``.

    The shift ramps in and out over ``ramp_m`` on either side (a smooth
    cosine), to the left of the direction of travel for positive offsets.
    Used for detours, swerves and driving along a corridor's edge.
    """
    s = path.s_m
    lateral = np.zeros_like(s)
    a, b = s0_m - ramp_m, s1_m + ramp_m
    up = (s > a) & (s < s0_m)
    lateral[up] = 0.5 - 0.5 * np.cos(np.pi * (s[up] - a) / ramp_m)
    lateral[(s >= s0_m) & (s <= s1_m)] = 1.0
    down = (s > s1_m) & (s < b)
    lateral[down] = 0.5 + 0.5 * np.cos(np.pi * (s[down] - s1_m) / ramp_m)
    # Smooth normals: the direction over +-20 m, so vertex kinks do not fold the offset.
    win = 20.0
    xa, ya = np.interp(s - win, s, path.x), np.interp(s - win, s, path.y)
    xb, yb = np.interp(s + win, s, path.x), np.interp(s + win, s, path.y)
    norm = np.hypot(xb - xa, yb - ya)
    norm[norm == 0] = 1.0
    nx, ny = -(yb - ya) / norm, (xb - xa) / norm
    return from_points(path.x + nx * lateral * offset_m, path.y + ny * lateral * offset_m)


def join(first: DensePath, second: DensePath) -> DensePath:
    """Concatenate two paths where the second starts at the first's end."""
    x = np.concatenate([first.x, second.x[1:]])
    y = np.concatenate([first.y, second.y[1:]])
    return from_points(x, y)
