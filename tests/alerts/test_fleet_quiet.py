"""Quiet rows filling up: the kernels' shortcut for them against ``_settle`` and Python."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts import _fleet as kn
from alerts.episodes import EpisodeDetector, EpisodeEvent, EpisodeState
from alerts.fleet import FleetEpisodes
from tests.alerts.reference import CLEAR, END, MET, NEUTRAL, Reading
from tests.alerts.test_episodes import T0, detector_of, detectors
from tests.alerts.test_fleet import _scalar_reference, keyed, run_both

__all__ = ["_scalar_reference"]  # the fixture (autouse) applies here too

PROP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_QUIET_CODES = [CLEAR, CLEAR, NEUTRAL, END]
_FLOATS = st.one_of(st.just(math.nan), st.floats(-50.0, 50.0, allow_nan=False))


def _params(det: EpisodeDetector) -> np.ndarray:
    return FleetEpisodes(det).params


@PROP
@given(data=st.data(), params=detectors, track_path=st.booleans())
def test_settle_quiet_leaves_the_row_as_settle_does(
    data: st.DataObject, params: tuple[float, float, float | None], track_path: bool
) -> None:
    """A quiet row with any core and buffer: every column and slot as ``_settle`` leaves it."""
    det = detector_of(params, track_path=track_path)
    p = _params(det)
    cap = data.draw(st.sampled_from([2, 3, 8, 48]))
    rows, d = 3, data.draw(st.integers(0, 2))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    si = rng.integers(-(10**6), 10**6, (rows, kn.NI)).astype(np.int64)
    sf = rng.uniform(-90, 90, (rows, kn.NF))
    sf[rng.uniform(0, 1, sf.shape) < 0.3] = math.nan
    # The buffer as the rows hold it (views of one array; the expected rows are copies).
    bts, bf, bk = kn.buffer_views(np.zeros((rows, cap, kn.BW), np.int64))
    bts[:] = rng.integers(0, 10**6, (rows, cap))
    bf[:] = rng.uniform(-90, 90, (rows, cap, 4))
    bk[:] = rng.integers(-2, 2, (rows, cap, 3))
    # Row d: quiet, readings sorted, none meeting (some with MET, not quiet, below).
    n = data.draw(st.integers(0, cap))
    gaps = data.draw(st.lists(st.integers(1, 90_000), min_size=n, max_size=n))
    ts = T0 + np.cumsum(np.array(gaps, np.int64))
    bts[d, :n] = ts
    for i in range(n):
        bk[d, i] = (
            data.draw(st.sampled_from(_QUIET_CODES)),
            data.draw(st.booleans()),
            data.draw(st.booleans()),
        )
        bf[d, i] = [data.draw(_FLOATS) for _ in range(4)]
    met = data.draw(st.booleans()) and n > 0
    if met:
        bk[d, data.draw(st.integers(0, n - 1)), 0] = MET
    si[d, kn.I_PHASE] = kn.IDLE
    si[d, kn.I_NEM] = 0
    si[d, kn.I_NBUF] = n
    si[d, kn.I_NMET] = int(np.count_nonzero(bk[d, :n, 0] == MET))
    si[d, kn.I_LATE] = data.draw(st.integers(0, 1))
    si[d, kn.I_LAST_TS] = data.draw(st.sampled_from([kn.NO_TS, T0 - 5_000, T0 - 500_000]))
    wm = data.draw(
        st.one_of(
            st.just(kn.NO_TS),
            st.integers(T0 - 1_000, int(ts[-1]) + 1_000 if n else T0 + 1_000),
        )
    )
    si[d, kn.I_WM] = wm
    si[d, kn.I_DUE] = data.draw(st.sampled_from([kn.NO_TS, kn.NEVER, T0]))
    arrays = (si, sf, bts, bf, bk)
    want = [a.copy() for a in arrays]
    mi = np.zeros((rows, 8, kn.MI), np.int64)
    mf = np.zeros((rows, 8, kn.MF), np.float64)
    oi = np.zeros((kn.events_per_device(cap, 8), kn.OI), np.int64)
    of = np.zeros((oi.shape[0], kn.MF), np.float64)
    w_si, w_sf, w_bts, w_bf, w_bk = want
    no = kn._settle(d, w_si, w_sf, w_bts, w_bf, w_bk, mi, mf, p, *kn.scratch(cap), oi, of, 0)
    assert met or no == 0  # (quiet: nothing to emit)
    before = [a.copy() for a in arrays]
    if not kn._settle_quiet(d, *arrays):
        # Not the case (a final reading meets): nothing touched, _settle runs instead.
        assert met
        want = before
    for got, exp in zip(arrays, want, strict=True):
        np.testing.assert_array_equal(got, exp)


def _quiet_then_meeting(data: st.DataObject, quiet: int) -> list[Reading]:
    """``quiet`` non-meeting readings (positions, values, backfill at random), then a mix."""
    out: list[Reading] = []
    ts = T0
    n_after = data.draw(st.integers(0, 30))
    for i in range(quiet + n_after):
        ts += data.draw(st.sampled_from([1_000, 5_000, 10_000, 25_000, 70_000]))
        if i < quiet:
            code = data.draw(st.sampled_from(_QUIET_CODES))
        else:
            code = data.draw(st.sampled_from([MET, MET, MET, CLEAR, NEUTRAL, END]))
        has_pos = data.draw(st.sampled_from([True, True, False]))
        out.append(
            Reading(
                ts=ts,
                code=code,
                value=data.draw(st.sampled_from([math.nan, 40.0, 95.0 + i % 5])),
                tag=float(i),
                lon=120.7 + (ts % 997) * 1e-5 if has_pos else math.nan,
                lat=31.3 + (ts % 991) * 1e-5 if has_pos else math.nan,
                backfill=data.draw(st.booleans()),
            )
        )
    return out


@PROP
@given(data=st.data(), params=detectors)
def test_quiet_rows_past_their_capacity_equal_the_python_detector(
    data: st.DataObject, params: tuple[float, float, float | None]
) -> None:
    """Non-meeting readings well past a row's capacity, then meeting ones; every event, state."""
    det = detector_of(
        params, report_progress=data.draw(st.booleans()), track_path=data.draw(st.booleans())
    )
    capacity = data.draw(st.sampled_from([2, 3, 5, 8, 48]))
    n_dev = data.draw(st.integers(1, 3))
    streams_ = [
        _quiet_then_meeting(data, data.draw(st.integers(capacity, 3 * capacity + 10)))
        for _ in range(n_dev)
    ]
    # One reading per device per batch (some a little out of order, within the lateness).
    tagged = [
        (r.ts + data.draw(st.sampled_from([0, 0, 0, 3_000])), d, r)
        for d, rs in enumerate(streams_)
        for r in rs
    ]
    tagged.sort(key=lambda t: t[0])
    batches = [[t] for t in tagged]
    ticks: list[tuple[int, int | None] | None] = [
        data.draw(st.sampled_from([None, None, (30_000, None), (0, 4_000)])) for _ in batches
    ]
    fleet, ref, rows = run_both(det, n_dev, batches, ticks, capacity)
    # The states agree, settled at their (equal) watermarks: nothing moves the shortcut's
    # core fields but the readings between, if any.
    fleet.release(rows)
    for d in range(n_dev):
        assert rows[d].watermark_ms == ref[d].watermark_ms
        for s in (rows[d], ref[d]):
            det._settle(s, counter=s)
        assert rows[d].to_dict() == ref[d].to_dict()
        end = max(r.ts for r in streams_[d]) + 10**8
        want: list[EpisodeEvent] = det.advance(ref[d], watermark_ms=end)
        assert keyed(det.advance(rows[d], watermark_ms=end)) == keyed(want)
        assert rows[d].to_dict() == ref[d].to_dict()


def test_a_full_quiet_row_keeps_its_tail_in_the_kernels() -> None:
    """One fix every 5 s, 48 slots: the row fills, drops what is final and stays hot."""
    det = EpisodeDetector(open_after_s=10, close_after_s=10, lateness_s=30)
    fleet = FleetEpisodes(det, capacity=48)
    rows = [EpisodeState()]
    for i in range(60):
        got = fleet.feed_many(
            rows,
            np.array([0]),
            np.array([T0 + i * 5_000], np.int64),
            np.array([False]),
            lon_deg=np.array([math.nan if i == 59 else 120.7 + i * 1e-4]),
            lat_deg=np.array([31.3]),
        )
        assert got == {}
    assert fleet.hot[0]
    st_ = fleet.state(0, rows)
    assert 7 <= len(st_.buf) < 48
    assert st_.core.last_ts_ms is not None and T0 < st_.core.last_ts_ms < st_.buf.ts[0]
    assert st_.core.prev_lon == 120.7 + ((st_.core.last_ts_ms - T0) // 5_000) * 1e-4
