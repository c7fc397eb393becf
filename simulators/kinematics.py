"""Bus kinematics along a path: speed caps to a feasible speed profile over time.

A leg is a :class:`~simulators._geo.DensePath` with a speed cap at every
point (road class, speed zones, bends, stops, traffic lights, congestion).
:func:`drive` turns the caps into the fastest profile a bus can drive with
bounded acceleration and braking — the classic forward/backward pass, done
in closed form with ``minimum.accumulate`` — and integrates it over time,
adding dwell at stops. The result answers "where is the bus, how fast, at
time t" for any array of times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from simulators._geo import DensePath

__all__ = ["ACCEL_MS2", "BRAKE_MS2", "Profile", "bend_cap_kmh", "drive"]

F64 = NDArray[np.float64]

#: Comfortable acceleration and braking of a loaded school bus.
ACCEL_MS2 = 0.8
BRAKE_MS2 = 1.2
#: Lateral acceleration a bus driver accepts in a bend.
LATERAL_MS2 = 1.5
#: Half-width of the window over which a bend's curvature is measured.
_BEND_WINDOW_M = 10.0


@dataclass(frozen=True)
class Profile:
    """A driven leg: time, distance and speed at breakpoints.

    ``t_s`` is non-decreasing seconds since departure; equal distances at
    consecutive breakpoints mean the bus stands still (a stop's dwell).
    """

    path: DensePath
    t_s: F64
    s_m: F64
    v_ms: F64

    @property
    def duration_s(self) -> float:
        """Seconds from departure to arrival, dwell included."""
        return float(self.t_s[-1])

    def state(self, t_s: F64) -> tuple[F64, F64, F64, F64]:
        """Return x, y, heading and speed (km/h) at times ``t_s`` after departure."""
        s = np.interp(t_s, self.t_s, self.s_m)
        v = np.interp(t_s, self.t_s, self.v_ms) * 3.6
        x, y, heading = self.path.at(s)
        return x, y, heading, v

    def time_at(self, s_m: float) -> float:
        """Seconds after departure at which the bus first reaches distance ``s_m``."""
        idx = int(np.searchsorted(self.s_m, s_m, side="left"))
        idx = min(idx, len(self.s_m) - 1)
        if idx == 0:
            return float(self.t_s[0])
        s0, s1 = self.s_m[idx - 1], self.s_m[idx]
        t0, t1 = self.t_s[idx - 1], self.t_s[idx]
        if s1 <= s0:
            return float(t1)
        return float(t0 + (t1 - t0) * (s_m - s0) / (s1 - s0))


def bend_cap_kmh(path: DensePath) -> F64:
    """Speed a driver takes each point of ``path`` at, from the bend's curvature."""
    turn = np.radians(path.turn_deg)
    # Heading change within +-10 m, from a cumulative sum over distance.
    cum = np.concatenate([[0.0], np.cumsum(turn)])
    lo = np.searchsorted(path.s_m, path.s_m - _BEND_WINDOW_M, side="left")
    hi = np.searchsorted(path.s_m, path.s_m + _BEND_WINDOW_M, side="right")
    change = cum[hi] - cum[lo]
    radius = 2 * _BEND_WINDOW_M / np.maximum(change, 1e-9)
    cap: F64 = np.sqrt(LATERAL_MS2 * radius) * 3.6
    return cap


def drive(
    path: DensePath,
    cap_kmh: F64,
    dwell_s: F64,
    *,
    accel_ms2: float = ACCEL_MS2,
    brake_ms2: float = BRAKE_MS2,
) -> Profile:
    """Drive ``path`` as fast as ``cap_kmh`` allows, standing ``dwell_s`` at each point.

    The bus starts and ends at rest. ``dwell_s`` is non-zero at stops and red
    lights (whose cap must be 0).
    """
    ds = np.diff(path.s_m)
    w = (np.asarray(cap_kmh, dtype=np.float64) / 3.6) ** 2
    w[0] = 0.0
    w[-1] = 0.0
    # Forward pass: v_i^2 <= v_{i-1}^2 + 2 a ds, i.e. w_i = min_j (c_j + 2a (s_i - s_j)).
    s = path.s_m
    k = 2 * accel_ms2
    w = np.minimum.accumulate(w - k * s) + k * s
    # Backward pass with braking.
    kb = 2 * brake_ms2
    r = (s[-1] - s)[::-1]
    w = (np.minimum.accumulate(w[::-1] - kb * r) + kb * r)[::-1]
    v = np.sqrt(np.maximum(w, 0.0))
    # Creep at 1 m/s at least: two stops next to each other must not take minutes.
    mean_v = np.maximum((v[:-1] + v[1:]) / 2, 1.0)
    dt = ds / mean_v
    arrive = np.concatenate([[0.0], np.cumsum(dt)])
    dwell = np.asarray(dwell_s, dtype=np.float64)
    waited = np.concatenate([[0.0], np.cumsum(dwell)[:-1]])
    arrive = arrive + waited
    depart = arrive + dwell
    t = np.empty(2 * len(s))
    t[0::2], t[1::2] = arrive, depart
    return Profile(path=path, t_s=t, s_m=np.repeat(s, 2), v_ms=np.repeat(v, 2))
