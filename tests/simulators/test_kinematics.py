"""The closed-form speed profile against a plain step-by-step one, and its physics."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators._geo import densify
from simulators.kinematics import ACCEL_MS2, BRAKE_MS2, bend_cap_kmh, drive


def slow_profile(s, cap_kmh, accel, brake):
    """Forward then backward pass, one point at a time."""
    v2 = [(c / 3.6) ** 2 for c in cap_kmh]
    v2[0] = v2[-1] = 0.0
    for i in range(1, len(v2)):
        v2[i] = min(v2[i], v2[i - 1] + 2 * accel * (s[i] - s[i - 1]))
    for i in range(len(v2) - 2, -1, -1):
        v2[i] = min(v2[i], v2[i + 1] + 2 * brake * (s[i + 1] - s[i]))
    return [math.sqrt(max(x, 0.0)) for x in v2]


caps = st.lists(st.floats(min_value=0.0, max_value=90.0), min_size=3, max_size=120)


@settings(max_examples=150, deadline=None)
@given(caps=caps, seg=st.floats(min_value=50.0, max_value=800.0))
def test_profile_matches_step_by_step(caps, seg):
    n = len(caps)
    path = densify(np.array([0.0, seg * n / 5]), np.array([0.0, 0.0]), step_m=seg / 5)
    cap = np.interp(np.linspace(0, 1, len(path.x)), np.linspace(0, 1, n), caps)
    prof = drive(path, cap, np.zeros(len(path.x)))
    fast = prof.v_ms[0::2]
    slow = slow_profile(path.s_m.tolist(), cap.tolist(), ACCEL_MS2, BRAKE_MS2)
    assert fast.dtype == np.float64 and fast.shape == (len(path.x),)
    # Squares: the closed form reorders sums, and sqrt magnifies rounding near 0.
    np.testing.assert_allclose(fast**2, np.square(slow), rtol=1e-9, atol=1e-7)
    assert np.all(fast**2 <= (cap / 3.6) ** 2 + 1e-7)


def test_acceleration_and_braking_are_bounded():
    path = densify(np.array([0.0, 3000.0]), np.array([0.0, 0.0]))
    cap = np.full(len(path.x), 50.0)
    cap[300] = 0.0
    dwell = np.zeros(len(path.x))
    dwell[300] = 30.0
    prof = drive(path, cap, dwell)
    t = np.arange(0.0, prof.duration_s, 0.5)
    v = prof.state(t)[3] / 3.6
    a = np.diff(v) / 0.5
    assert a.max() <= ACCEL_MS2 + 0.05 and a.min() >= -BRAKE_MS2 - 0.05
    stopped = t[v < 0.01]
    assert stopped.size and (stopped[(stopped > 10) & (stopped < prof.duration_s - 10)].size >= 55)
    # 3 km at up to 50 km/h with one 30 s stop: about 4 minutes.
    assert 3000 / (50 / 3.6) + 30 < prof.duration_s < 3000 / (50 / 3.6) + 80


def test_bends_slow_the_bus():
    path = densify(np.array([0.0, 500.0, 500.0]), np.array([0.0, 0.0, 500.0]))
    cap = bend_cap_kmh(path)
    corner = int(np.argmin(np.hypot(path.x - 500, path.y)))
    assert 10 < cap[corner] < 25
    assert cap[: corner - 10].min() > 100
