"""The eight rules of contract §3, case by case, plus out-of-order and batch-split properties."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts import (
    AlertEvent,
    ClockSkew,
    DeviceFault,
    DeviceOffline,
    EpisodeState,
    FaultState,
    OfflineBook,
    OfflineState,
    OutOfHours,
    PanicButton,
    PanicState,
    Parking,
    RouteDeviation,
    SmokeAlarm,
    Speeding,
    severity,
)
from alerts.fleet import ACTIONS, NO_TS
from alerts.rules import round_rows
from tests.alerts.test_fleet import assert_same_changes

T0 = 1_795_000_000_000  # epoch ms
S = 1000


def secs(*s: float) -> np.ndarray:
    return T0 + (np.asarray(s, np.float64) * S).astype(np.int64)


def episodes(events: list[AlertEvent]) -> dict[tuple[object, ...], AlertEvent]:
    """Last event per episode; checks one open and at most one close per episode."""
    last: dict[tuple[object, ...], AlertEvent] = {}
    opens: set[tuple[object, ...]] = set()
    closes: set[tuple[object, ...]] = set()
    for ev in events:
        if ev.action == "open":
            assert ev.key not in opens, f"{ev.key} opened twice"
            opens.add(ev.key)
        else:
            assert ev.key in opens, f"{ev.action} of {ev.key} before its open"
        if ev.action == "close":
            assert ev.key not in closes, f"{ev.key} closed twice"
            closes.add(ev.key)
        last[ev.key] = ev
    return last


def spans(events: list[AlertEvent]) -> list[tuple[object, ...]]:
    """(kind, source, started_s, ended_s) of every episode, relative to T0, sorted."""

    def rel(t: int | None) -> float | None:
        return None if t is None else (t - T0) / S

    eps = episodes(events).values()
    return sorted(
        ((e.kind, e.source, rel(e.started_at_ms), rel(e.ended_at_ms)) for e in eps),
        key=lambda t: (str(t[0]), str(t[1]), t[2]),
    )


def test_severities_follow_the_contract() -> None:
    assert severity("smoke_alarm") == "critical"
    assert severity("device_offline", "gps") == "minor"
    assert severity("device_offline", "button") == "major"
    assert severity("speeding") == "major"


# -- speeding ---------------------------------------------------------------------------------


SPEED = Speeding(lateness_s=0)


def speeding_run(speed_kmh: list[float], *, limit: float = 60.0, step_s: float = 1.0):
    st_ = SPEED.new_state()
    n = len(speed_kmh)
    ts = secs(*[i * step_s for i in range(n)])
    lon = 120.70 + np.arange(n) * 1e-4
    lat = np.full(n, 31.30)
    ev = SPEED.feed(
        st_,
        ts_ms=ts,
        speed_kmh=speed_kmh,
        limit_kmh=np.full(n, limit),
        lon_deg=lon,
        lat_deg=lat,
    )
    ev += SPEED.advance(st_, watermark_ms=int(ts[-1]) + 1)
    return ev


def test_speeding_exactly_ten_seconds_over_opens_nine_does_not() -> None:
    ten = speeding_run([50] + [70] * 11 + [50] * 12)  # over from 1 s to 11 s: 10 s
    (ep,) = episodes(ten).values()
    assert (ep.started_at_ms - T0, ep.ended_at_ms - T0) == (1000, 11000)  # type: ignore[operator]
    opened = next(e for e in ten if e.action == "open")
    assert opened.at_ms == T0 + 11_000  # opens at the reading where 10 s is reached
    nine = speeding_run([50] + [70] * 10 + [50] * 12)
    assert nine == []


def test_speeding_near_miss_five_seconds_does_not_alert() -> None:
    assert speeding_run([50] * 5 + [75] * 6 + [50] * 20) == []


def test_speeding_at_the_limit_is_not_over_and_clears() -> None:
    assert speeding_run([60.0] * 30) == []


def test_speeding_single_slow_reading_does_not_close() -> None:
    ev = speeding_run([70] * 15 + [55] + [70] * 10 + [50] * 12)
    (ep,) = episodes(ev).values()
    assert ep.action == "close"
    assert ep.started_at_ms == T0
    assert ep.ended_at_ms == T0 + 25_000
    close = next(e for e in ev if e.action == "close")
    assert close.at_ms == T0 + 36_000  # 10 s at or below the limit, from 26 s


def test_speeding_details() -> None:
    ev = speeding_run([50, 65, 74.24, 70] + [66] * 10 + [40] * 11, limit=60.0)
    (ep,) = episodes(ev).values()
    d = ep.details
    assert d["max_speed_kmh"] == 74.2
    assert d["limit_kmh"] == 60
    assert d["duration_s"] == 12.0
    assert d["start"] == [pytest.approx(120.7001), 31.3]
    assert d["end"] == [pytest.approx(120.7013), 31.3]
    assert ep.late is False
    assert json.dumps(d)


def test_speeding_zone_limit_per_fix_and_default_when_unknown() -> None:
    st_ = SPEED.new_state()
    n = 30
    ev = SPEED.feed(
        st_,
        ts_ms=secs(*range(n)),
        speed_kmh=np.full(n, 45.0),
        limit_kmh=np.r_[np.full(12, 30.0), np.full(18, np.nan)],  # school zone, then none (60)
    )
    ev += SPEED.advance(st_, watermark_ms=T0 + 100_000)
    (ep,) = episodes(ev).values()
    assert ep.details["limit_kmh"] == 30
    assert ep.ended_at_ms == T0 + 11_000
    assert ep.action == "close"


def test_speeding_held_until_the_watermark_then_refined_by_a_late_fix() -> None:
    rule = Speeding()  # 30 s lateness
    st_ = rule.new_state()
    ev = rule.feed(st_, ts_ms=secs(*range(0, 12)), speed_kmh=[70] * 12, limit_kmh=[60] * 12)
    assert ev == []  # a slower fix in between may still arrive
    ev = rule.advance(st_, watermark_ms=T0 + 10_001)
    assert [e.action for e in ev] == ["open"]
    ev = rule.feed(st_, ts_ms=secs(40), speed_kmh=[80], limit_kmh=[60])
    assert [(e.action, e.details["max_speed_kmh"]) for e in ev] == [("update", 80)]


def test_backfilled_speeding_is_late() -> None:
    rule = Speeding()
    st_ = rule.new_state()
    ev = rule.feed(st_, ts_ms=secs(*range(1000, 1100)), speed_kmh=[40] * 100, limit_kmh=[60] * 100)
    ev += rule.feed(
        st_,
        ts_ms=secs(*range(100, 140)),
        speed_kmh=[70] * 20 + [40] * 20,
        limit_kmh=[60] * 40,
        backfill=[True] * 40,
    )
    ev += rule.advance(st_, watermark_ms=T0 + 2_000_000)
    (ep,) = episodes(ev).values()
    assert ep.late
    assert (ep.started_at_ms - T0, ep.ended_at_ms - T0) == (100_000, 119_000)  # type: ignore[operator]


# -- route deviation ---------------------------------------------------------------------------


DEV = RouteDeviation(lateness_s=0)


def deviation(distance: list[float], window: list[bool], *, detour=None, advance_to=None, cut=None):
    st_ = DEV.new_state()
    n = len(distance)
    ts = secs(*[5 * i for i in range(n)])  # a fix every 5 s
    ev = DEV.feed(
        st_,
        ts_ms=ts,
        distance_m=distance,
        in_service_window=window,
        school_day=[True] * n,
        route_index=np.where(np.asarray(distance) > 300, 1, 0),
        route_ids=["R1", "R2"],
        filing_covers=detour,
    )
    ev += DEV.advance(
        st_,
        watermark_ms=advance_to or int(ts[-1]) + 1,
        window_end_ms=cut,
        route_ids=["R1", "R2"],
    )
    return ev


def test_route_deviation_opens_after_thirty_seconds_outside_the_corridor() -> None:
    d = [20.0] * 4 + [150.0, 180, 250, 400, 350, 200, 160] + [30.0] * 8
    ev = deviation(d, [True] * len(d))
    (ep,) = episodes(ev).values()
    assert (ep.started_at_ms - T0, ep.ended_at_ms - T0) == (20_000, 50_000)  # type: ignore[operator]
    assert next(e for e in ev if e.action == "open").at_ms == T0 + 50_000
    assert ep.details["route_id"] == "R2"
    assert ep.details["max_distance_m"] == 400
    assert ep.details["duration_s"] == 30


def test_route_deviation_outside_a_window_does_not_alert() -> None:
    d = [500.0] * 20
    assert deviation(d, [False] * 20) == []


def test_route_deviation_with_a_detour_filing_does_not_alert() -> None:
    d = [500.0] * 20
    assert deviation(d, [True] * 20, detour=[True] * 20) == []


def test_window_ending_closes_an_open_deviation() -> None:
    d = [500.0] * 20
    ev = deviation(d, [True] * 12 + [False] * 8)
    (ep,) = episodes(ev).values()
    assert ep.action == "close"
    assert ep.ended_at_ms == T0 + 55_000
    assert next(e for e in ev if e.action == "close").at_ms == T0 + 60_000


def test_window_end_closes_a_deviation_of_a_silent_bus_through_advance() -> None:
    d = [500.0] * 12  # last fix at 55 s, then silence; the window ends at 90 s
    ev = deviation(d, [True] * 12, advance_to=T0 + 100_000, cut=T0 + 90_000)
    (ep,) = episodes(ev).values()
    assert ep.action == "close"
    assert ep.ended_at_ms == T0 + 55_000
    assert next(e for e in ev if e.action == "close").at_ms == T0 + 90_000


def test_route_deviation_uses_the_kernels_within_corridor_when_given() -> None:
    st_ = DEV.new_state()
    n = 12
    ev = DEV.feed(
        st_,
        ts_ms=secs(*[5 * i for i in range(n)]),
        distance_m=np.full(n, 120.0),  # beyond 100 m, but that route's corridor is 150 m
        within_corridor=np.ones(n, bool),
        in_service_window=np.ones(n, bool),
        school_day=np.ones(n, bool),
    )
    assert ev == []


def test_route_deviation_on_a_non_school_day_does_not_alert() -> None:
    st_ = DEV.new_state()
    n = 12
    ev = DEV.feed(
        st_,
        ts_ms=secs(*[5 * i for i in range(n)]),
        distance_m=np.full(n, 900.0),
        in_service_window=np.ones(n, bool),
        school_day=np.zeros(n, bool),
    )
    assert ev == []


# -- out of hours -----------------------------------------------------------------------------


OOH = OutOfHours(lateness_s=0)


def out_of_hours(speed, window, *, filing=None, step_s=10):
    st_ = OOH.new_state()
    n = len(speed)
    ts = secs(*[step_s * i for i in range(n)])
    ev = OOH.feed(
        st_,
        ts_ms=ts,
        speed_kmh=speed,
        in_service_window=window,
        school_day=[True] * n,
        filing_covers=filing,
        lon_deg=120.70 + np.arange(n) * 0.001,  # about 95 m per fix at this latitude
        lat_deg=np.full(n, 31.30),
    )
    ev += OOH.advance(st_, watermark_ms=int(ts[-1]) + 1)
    return ev


def test_out_of_hours_opens_after_a_minute_moving_and_closes_after_two_stationary() -> None:
    speed = [0.0] * 3 + [30.0] * 8 + [0.0] * 14
    ev = out_of_hours(speed, [False] * len(speed))
    (ep,) = episodes(ev).values()
    assert (ep.started_at_ms - T0, ep.ended_at_ms - T0) == (30_000, 100_000)  # type: ignore[operator]
    assert next(e for e in ev if e.action == "open").at_ms == T0 + 90_000
    assert next(e for e in ev if e.action == "close").at_ms == T0 + 230_000  # 110 s + 120 s
    assert ep.details["duration_s"] == 70
    assert ep.details["distance_m"] == pytest.approx(7 * 95.0, rel=0.01)


def test_out_of_hours_with_a_movement_filing_does_not_alert() -> None:
    speed = [30.0] * 20
    assert out_of_hours(speed, [False] * 20, filing=[True] * 20) == []


def test_out_of_hours_inside_a_window_does_not_alert_and_a_window_beginning_closes() -> None:
    assert out_of_hours([30.0] * 20, [True] * 20) == []
    ev = out_of_hours([30.0] * 20, [False] * 10 + [True] * 10)
    (ep,) = episodes(ev).values()
    assert ep.action == "close"
    assert ep.ended_at_ms == T0 + 90_000


def test_out_of_hours_short_stop_does_not_close() -> None:
    speed = [30.0] * 8 + [0.0] * 11 + [30.0] * 5 + [0.0] * 13  # a 100 s stop, then on
    ev = out_of_hours(speed, [False] * len(speed))
    (ep,) = episodes(ev).values()
    assert (ep.started_at_ms - T0, ep.ended_at_ms - T0) == (0, 230_000)  # type: ignore[operator]


# -- device offline ---------------------------------------------------------------------------


OFF = DeviceOffline(lateness_s=30)


def test_offline_started_at_is_last_heard_plus_threshold() -> None:
    st_ = OFF.new_state(offline_after_s=300, since_ms=T0)
    ev = OFF.feed(st_, heard_ms=secs(0, 10, 20))
    assert OFF.advance(st_, watermark_ms=T0 + 320_000) == []  # exactly 300 s: not more
    ev += OFF.advance(st_, watermark_ms=T0 + 320_001)
    (op,) = ev
    assert op.action == "open"
    assert op.started_at_ms == T0 + 320_000
    assert op.details == {"last_seen_at": "2026-11-18T11:07:00.000+00:00", "threshold_s": 300}
    ev = OFF.feed(st_, heard_ms=secs(1000))
    assert [(e.action, e.ended_at_ms) for e in ev] == [("close", T0 + 1_000_000)]
    assert severity(op.kind, "gps") == "minor"


def test_offline_never_heard_counts_from_since() -> None:
    st_ = OFF.new_state(offline_after_s=900, since_ms=T0)
    ev = OFF.advance(st_, watermark_ms=T0 + 901_000)
    assert [(e.action, e.started_at_ms, e.details["last_seen_at"]) for e in ev] == [
        ("open", T0 + 900_000, None)
    ]


def test_offline_silence_inside_a_batch_is_found_once_final() -> None:
    st_ = OFF.new_state(offline_after_s=300, since_ms=T0)
    ev = OFF.feed(st_, heard_ms=secs(0, 10, 500, 510, 600))
    assert [(e.action, e.started_at_ms - T0, e.ended_at_ms) for e in ev] == [
        ("open", 310_000, None),
        ("close", 310_000, T0 + 500_000),
    ]
    assert OFF.advance(st_, watermark_ms=T0 + 700_000) == []


def test_offline_ignores_a_silence_a_late_reading_fills() -> None:
    st_ = OFF.new_state(offline_after_s=300, since_ms=T0)
    ev = OFF.feed(st_, heard_ms=secs(0, 310))  # a 310 s gap, but 290 may still come
    ev += OFF.feed(st_, heard_ms=secs(290))
    ev += OFF.advance(st_, watermark_ms=T0 + 400_000)
    assert ev == []


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.sampled_from([1, 10, 100, 290, 300, 301, 320, 331, 400, 900]), max_size=25),
    delays=st.lists(st.integers(0, 30_000), min_size=26, max_size=26),
    cuts=st.lists(st.integers(0, 25), max_size=6),
)
def test_offline_out_of_order_within_lateness_matches_sorted_gaps(gaps, delays, cuts) -> None:
    thr_ms = 300_000
    heard = [T0]
    for g in gaps:
        heard.append(heard[-1] + g * S)
    arrival = [
        h
        for _, h in sorted(zip(delays[: len(heard)], heard, strict=True), key=lambda p: p[1] + p[0])
    ]
    assert len(arrival) == len(heard)
    st_ = OFF.new_state(offline_after_s=300, since_ms=T0 - 1000)
    ev: list[AlertEvent] = []
    bounds = sorted({0, len(arrival), *[c for c in cuts if c <= len(arrival)]})
    for a, b in itertools.pairwise(bounds):
        ev += OFF.feed(st_, heard_ms=np.asarray(arrival[a:b], np.int64))
        st_ = OfflineState.from_dict(json.loads(json.dumps(st_.to_dict())))
    end = heard[-1] + 1
    ev += OFF.advance(st_, watermark_ms=end)
    want = [(a + thr_ms, b) for a, b in itertools.pairwise(heard) if b - a > thr_ms]
    got = [(e.started_at_ms, e.ended_at_ms) for e in episodes(ev).values()]
    assert sorted(got) == want


# -- smoke alarm ------------------------------------------------------------------------------


SMOKE = SmokeAlarm()


def test_smoke_alarm_opens_on_alarm_and_closes_on_normal_at_once() -> None:
    st_ = SMOKE.new_state()
    ev = SMOKE.feed(st_, ts_ms=secs(0, 60), smoke_state=["normal", "alarm"], obscuration=[0, 3.2])
    assert [(e.action, e.started_at_ms - T0) for e in ev] == [("open", 60_000)]  # not held back
    ev += SMOKE.feed(st_, ts_ms=secs(90, 120), smoke_state=["fault", "alarm"], obscuration=[0, 8])
    ev += SMOKE.feed(st_, ts_ms=secs(300), smoke_state=["normal"], obscuration=[0.1])
    (ep,) = episodes(ev).values()
    assert ep.action == "close"
    assert ep.ended_at_ms == T0 + 120_000
    assert ep.details == {"obscuration": 8}
    assert severity(ep.kind) == "critical"


def test_smoke_test_never_alerts() -> None:
    st_ = SMOKE.new_state()
    assert SMOKE.feed(st_, ts_ms=secs(0, 1, 2), smoke_state=["test"] * 3) == []


def test_smoke_late_normal_splits_as_in_order_delivery_would() -> None:
    st_ = SMOKE.new_state()
    ev = SMOKE.feed(st_, ts_ms=secs(0, 20), smoke_state=["alarm", "alarm"])
    ev += SMOKE.feed(st_, ts_ms=secs(10), smoke_state=["normal"])
    assert spans(ev) == [("smoke_alarm", None, 0, 0), ("smoke_alarm", None, 20, None)]


# -- panic button -----------------------------------------------------------------------------


PANIC = PanicButton()


def test_panic_press_latches_through_reset_until_resolved() -> None:
    st_ = PANIC.new_state()
    ev = PANIC.feed_button(st_, ts_ms=secs(0), event=["press"])
    assert [(e.action, e.details) for e in ev] == [("open", {"source": "button"})]
    ev += PANIC.feed_button(st_, ts_ms=secs(5, 10), event=["reset", "test"])
    ev += PANIC.advance(st_, watermark_ms=T0 + 3_600_000)
    assert [e.action for e in ev] == ["open"]  # the reset alone does not close it
    ev += PANIC.feed_button(st_, ts_ms=secs(20), event=["press"])  # same alert, refined
    ev += PANIC.resolve(st_)
    assert [e.action for e in ev] == ["open", "update", "close"]
    assert ev[-1].ended_at_ms == T0 + 20_000
    assert PANIC.resolve(st_) == []
    ev2 = PANIC.feed_button(st_, ts_ms=secs(30), event=["press"])
    assert [(e.action, e.number) for e in ev2] == [("open", 2)]


def test_panic_test_press_never_alerts() -> None:
    st_ = PANIC.new_state()
    assert PANIC.feed_button(st_, ts_ms=secs(0, 1), event=["test", "reset"]) == []


def test_panic_alarm_bit_held_high_across_batches_opens_once() -> None:
    st_ = PANIC.new_state()
    ev = PANIC.feed_gps(st_, ts_ms=secs(0, 1), alarm=[0, 1])
    for k in range(2, 50, 3):
        ev += PANIC.feed_gps(st_, ts_ms=secs(k, k + 1, k + 2), alarm=[1 | 2, 1, 1])
        st_ = PanicState.from_dict(json.loads(json.dumps(st_.to_dict())))
    ev += PANIC.advance(st_, watermark_ms=T0 + 55_000)
    assert [(e.action, e.started_at_ms - T0, e.details) for e in ev] == [
        ("open", 1000, {"source": "gps_alarm"})
    ]
    # Resolved while the bit is still high: no new alert until it falls and rises again.
    ev = PANIC.resolve(st_)
    ev += PANIC.feed_gps(st_, ts_ms=secs(60, 61), alarm=[1, 1])
    ev += PANIC.feed_gps(st_, ts_ms=secs(62, 63, 64), alarm=[0, -1, 1])
    assert [(e.action, e.number, e.started_at_ms - T0) for e in ev] == [
        ("close", 1, 1000),
        ("open", 2, 64_000),
    ]


def test_panic_first_fix_with_the_bit_set_is_an_edge_and_missing_alarm_is_neutral() -> None:
    st_ = PANIC.new_state()
    ev = PANIC.feed_gps(st_, ts_ms=secs(0, 1, 2), alarm=[1, -1, 1])
    assert [e.action for e in ev] == ["open"]


# -- device fault -----------------------------------------------------------------------------


FAULT = DeviceFault()


def test_fault_bits_open_on_rising_edge_one_episode_per_source() -> None:
    st_ = FAULT.new_state()
    a = [0, 1 << 4, (1 << 4) | (1 << 7), 1 << 7, 0, 0]
    ev = FAULT.feed_gps(st_, ts_ms=secs(*range(6)), alarm=a)
    assert spans(ev) == [
        ("device_fault", "gnss_fault", 1, 2),
        ("device_fault", "undervoltage", 2, 3),
    ]
    assert {e.details["fault"] for e in ev} == {"gnss_fault", "undervoltage"}


def test_fault_bit_held_high_across_batches_opens_once_then_clears() -> None:
    st_ = FAULT.new_state()
    ev: list[AlertEvent] = []
    for k in range(0, 30, 3):
        ev += FAULT.feed_gps(st_, ts_ms=secs(k, k + 1, k + 2), alarm=[1 << 8] * 3)
        st_ = FaultState.from_dict(json.loads(json.dumps(st_.to_dict())))
    assert [e.action for e in ev] == ["open"]
    ev += FAULT.feed_gps(st_, ts_ms=secs(31), alarm=[0])
    assert spans(ev) == [("device_fault", "power_off", 0, 29)]


def test_smoke_and_button_faults() -> None:
    st_ = FAULT.new_state()
    ev = FAULT.feed_smoke(
        st_, ts_ms=secs(0, 1, 2, 3), smoke_state=["fault", "alarm", "test", "normal"]
    )
    ev += FAULT.feed_button(
        st_, ts_ms=secs(10, 11, 12, 13), event=["tamper", "fault", "press", "restore"]
    )
    assert spans(ev) == [
        ("device_fault", "button_fault", 11, 11),
        ("device_fault", "button_tamper", 10, 10),
        ("device_fault", "smoke_fault", 0, 0),
    ]
    assert FAULT.advance(st_, watermark_ms=T0 + 100_000) == []


# -- clock skew -------------------------------------------------------------------------------


SKEW = ClockSkew()


def test_clock_skew_opens_beyond_five_minutes_and_closes_back_within() -> None:
    st_ = SKEW.new_state()
    rx = secs(0, 10, 20, 30, 40)
    ts = rx + np.asarray([0, 301, 400, 300, 0]) * S
    ev = SKEW.feed(st_, ts_ms=ts, received_ms=rx, live_clock=True)
    assert spans(ev) == [("clock_skew", None, 10, 20)]
    assert episodes(ev)[("clock_skew", None, 1)].details == {"skew_s": 400}


def test_clock_skew_is_not_evaluated_under_the_event_clock_nor_for_backfill() -> None:
    st_ = SKEW.new_state()
    rx = secs(0, 10)
    assert SKEW.feed(st_, ts_ms=rx - 3_600_000, received_ms=rx, live_clock=False) == []
    assert (
        SKEW.feed(st_, ts_ms=rx - 3_600_000, received_ms=rx, live_clock=True, backfill=[1, 1]) == []
    )


def test_clock_skew_one_message_of_many_fixes_counts_once_by_its_newest_fix() -> None:
    st_ = SKEW.new_state()
    rx = np.full(5, T0)
    ts = T0 - np.asarray([400, 350, 320, 310, 10]) * S  # a batch gathered over 390 s
    assert SKEW.feed(st_, ts_ms=ts, received_ms=rx, live_clock=True) == []


# -- properties: batch splits and reordering give the same alerts --------------------------------


PROP = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def drives(draw: st.DrawFn):
    """A bus drive: fixes 1–10 s apart, speeds around the limit, windows switching."""
    n = draw(st.integers(0, 80))
    gaps = draw(st.lists(st.sampled_from([1, 2, 5, 5, 10]), min_size=n, max_size=n))
    ts = T0 + np.cumsum(np.asarray(gaps, np.int64)) * S
    speed = np.asarray(
        draw(st.lists(st.sampled_from([0.0, 3.0, 40.0, 59.0, 61.0, 75.0]), min_size=n, max_size=n))
    )
    block = draw(st.integers(1, 30))
    window = (np.arange(n) // block) % 2 == 0
    dist = np.asarray(
        draw(st.lists(st.sampled_from([10.0, 99.0, 150.0, 600.0]), min_size=n, max_size=n))
    )
    return ts, speed, window, dist


def run_gps_rules(ts, speed, window, dist, order, cuts):
    rules = [Speeding(), RouteDeviation(), OutOfHours()]
    states = [r.new_state() for r in rules]
    ev: list[AlertEvent] = []
    bounds = sorted({0, len(order), *[c for c in cuts if c <= len(order)]})
    for a, b in itertools.pairwise(bounds):
        i = np.asarray(order[a:b], np.intp)
        n = i.shape[0]
        lon, lat = 120.7 + i * 1e-4, np.full(n, 31.3)
        ev += rules[0].feed(
            states[0], ts_ms=ts[i], speed_kmh=speed[i], limit_kmh=np.full(n, 60.0),
            lon_deg=lon, lat_deg=lat,
        )  # fmt: skip
        ev += rules[1].feed(
            states[1], ts_ms=ts[i], distance_m=dist[i], in_service_window=window[i],
            school_day=np.ones(n, bool), lon_deg=lon, lat_deg=lat,
        )  # fmt: skip
        ev += rules[2].feed(
            states[2], ts_ms=ts[i], speed_kmh=speed[i], in_service_window=window[i],
            school_day=np.ones(n, bool), lon_deg=lon, lat_deg=lat,
        )  # fmt: skip
        states = [EpisodeState.from_dict(json.loads(json.dumps(s.to_dict()))) for s in states]
    end = int(ts[-1]) + 60_000 if len(ts) else T0
    for r, s in zip(rules, states, strict=True):
        ev += r.advance(s, watermark_ms=end)
    return ev


@PROP
@given(drive=drives(), data=st.data())
def test_gps_rules_same_alerts_for_any_split_and_reordering_within_30_s(drive, data) -> None:
    ts, speed, window, dist = drive
    n = len(ts)
    in_order = run_gps_rules(ts, speed, window, dist, list(range(n)), [])
    delays = data.draw(st.lists(st.integers(0, 30_000), min_size=n, max_size=n))
    order = sorted(range(n), key=lambda i: int(ts[i]) + delays[i])
    cuts = data.draw(st.lists(st.integers(0, n), max_size=10))
    shuffled = run_gps_rules(ts, speed, window, dist, order, cuts)
    assert spans(shuffled) == spans(in_order)
    final_in = {k: e.details for k, e in episodes(in_order).items()}
    final_sh = {k: e.details for k, e in episodes(shuffled).items()}
    assert len(final_in) == len(final_sh)
    for a, b in zip(
        sorted(final_in.values(), key=str), sorted(final_sh.values(), key=str), strict=True
    ):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert math.isclose(a[key], b[key], abs_tol=0.11)
            else:
                assert a[key] == b[key]


@st.composite
def fleets(draw: st.DrawFn):
    """A few GPS devices' fixes, interleaved, each device at most 30 s out of order."""
    rows = []
    for d in range(draw(st.integers(1, 4))):
        ts, speed, window, dist = draw(drives())
        n = len(ts)
        # Some silences longer than the 60 s offline threshold used below.
        silence = draw(st.lists(st.sampled_from([0] * 12 + [50, 70, 200]), min_size=n, max_size=n))
        ts = ts + np.cumsum(np.asarray(silence, np.int64)) * S
        alarm = np.asarray(
            draw(
                st.lists(
                    st.sampled_from([-1, 0, 0, 1, 16, 17, 128, 256 + 1]), min_size=n, max_size=n
                )
            )
        )
        skew = np.asarray(
            draw(st.lists(st.sampled_from([0, 5, 299, 301, -400]), min_size=n, max_size=n))
        )
        delays = draw(st.lists(st.integers(0, 30_000), min_size=n, max_size=n))
        for i in range(n):
            # Receive time: a message every fix; ts - received = skew.
            rows.append((int(ts[i]) + delays[i], d, int(ts[i]), speed[i], window[i], dist[i],
                         alarm[i], int(ts[i]) - skew[i] * S))  # fmt: skip
    rows.sort(key=lambda r: r[0])
    cuts = draw(st.lists(st.integers(0, len(rows)), max_size=8))
    bounds = sorted({0, len(rows), *cuts})
    ticks = draw(st.lists(st.booleans(), min_size=len(bounds), max_size=len(bounds)))
    return rows, bounds, ticks


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=fleets(), parked=st.booleans())
def test_feed_many_equals_one_feed_per_device_for_every_gps_rule(fleet, parked: bool) -> None:
    rows, bounds, ticks = fleet
    n_dev = 1 + max((r[1] for r in rows), default=0)
    speeding, deviation, ooh = Speeding(), RouteDeviation(), OutOfHours()
    panic, fault, skew, offline = PanicButton(), DeviceFault(), ClockSkew(), DeviceOffline()

    def fresh():
        return {
            "speeding": [speeding.new_state() for _ in range(n_dev)],
            "deviation": [deviation.new_state() for _ in range(n_dev)],
            "ooh": [ooh.new_state() for _ in range(n_dev)],
            "panic": [panic.new_state() for _ in range(n_dev)],
            "fault": [fault.new_state() for _ in range(n_dev)],
            "skew": [skew.new_state() for _ in range(n_dev)],
            "offline": [offline.new_state(offline_after_s=60, since_ms=T0) for _ in range(n_dev)],
        }

    one, many = fresh(), fresh()
    # Parked quiet states (as the engine keeps them), released before every tick.
    lots = {
        name: Parking(capacity=3, positions=name != "skew") if parked else None
        for name in ("speeding", "deviation", "ooh", "skew", "panic")
    }

    # The offline states' times kept in a book's arrays (as the engine keeps them).
    book = OfflineBook() if parked else None
    if book is not None:
        for d, state in enumerate(many["offline"]):
            book.add(d, state)

    def advance_offline(wm: int) -> dict[int, list[AlertEvent]]:
        if book is None:
            return offline.advance_many(many["offline"], watermark_ms=wm)
        return offline.advance_keys(many["offline"], np.arange(n_dev), book, watermark_ms=wm)

    def release() -> None:
        for name, lot in lots.items():
            if lot is not None:
                states = many[name]
                lot.release([st.bit for st in states] if name == "panic" else states)

    want: dict[int, list[AlertEvent]] = {d: [] for d in range(n_dev)}
    got: dict[int, list[AlertEvent]] = {d: [] for d in range(n_dev)}
    tickers = [
        ("speeding", speeding),
        ("deviation", deviation),
        ("ooh", ooh),
        ("panic", panic),
        ("fault", fault),
    ]
    for (a, b), tick in zip(itertools.pairwise(bounds), ticks, strict=False):
        if tick and a < len(rows):
            # An engine tick at a valid watermark: nothing older is still to come.
            wm = min(r[2] for r in rows[a:]) - 1
            release()
            for name, rule in tickers:
                for d in range(n_dev):
                    want[d] += rule.advance(one[name][d], watermark_ms=wm)  # type: ignore[attr-defined]
                for d, evs in rule.advance_many(many[name], watermark_ms=wm).items():  # type: ignore[attr-defined]
                    got[d] += evs
            for d in range(n_dev):
                want[d] += offline.advance(one["offline"][d], watermark_ms=wm)
            for d, evs in advance_offline(wm).items():
                got[d] += evs
        part = rows[a:b]
        cols = [np.asarray(c) for c in zip(*part, strict=True)] if part else []
        if not part:
            continue
        _, dev, ts, speed, window, dist, alarm, rx = cols
        dev, ts, rx, alarm = dev.astype(np.int64), ts.astype(np.int64), rx.astype(np.int64), alarm
        k = len(part)
        common = {"lon_deg": 120.7 + (ts % 977) * 1e-5, "lat_deg": np.full(k, 31.3)}
        for d in range(n_dev):
            m = dev == d
            if not m.any():
                continue
            c = {key: v[m] for key, v in common.items()}
            w = want[d]
            w += speeding.feed(one["speeding"][d], ts_ms=ts[m], speed_kmh=speed[m],
                               limit_kmh=np.full(m.sum(), 60.0), **c)  # fmt: skip
            w += deviation.feed(one["deviation"][d], ts_ms=ts[m], distance_m=dist[m],
                                in_service_window=window[m], school_day=np.ones(m.sum(), bool),
                                **c)  # fmt: skip
            w += ooh.feed(one["ooh"][d], ts_ms=ts[m], speed_kmh=speed[m],
                          in_service_window=window[m], school_day=np.ones(m.sum(), bool),
                          **c)  # fmt: skip
            w += panic.feed_gps(one["panic"][d], ts_ms=ts[m], alarm=alarm[m])
            w += fault.feed_gps(one["fault"][d], ts_ms=ts[m], alarm=alarm[m])
            w += skew.feed(one["skew"][d], ts_ms=ts[m], received_ms=rx[m], live_clock=True)
            w += offline.feed(one["offline"][d], heard_ms=ts[m])
        results = [
            speeding.feed_many(many["speeding"], device=dev, ts_ms=ts, speed_kmh=speed,
                               limit_kmh=np.full(k, 60.0), **common, parking=lots["speeding"]),
            deviation.feed_many(many["deviation"], device=dev, ts_ms=ts, distance_m=dist,
                                in_service_window=window, school_day=np.ones(k, bool), **common,
                                parking=lots["deviation"]),
            ooh.feed_many(many["ooh"], device=dev, ts_ms=ts, speed_kmh=speed,
                          in_service_window=window, school_day=np.ones(k, bool), **common,
                          parking=lots["ooh"]),
            panic.feed_gps_many(many["panic"], device=dev, ts_ms=ts, alarm=alarm,
                                parking=lots["panic"]),
            fault.feed_gps_many(many["fault"], device=dev, ts_ms=ts, alarm=alarm),
            skew.feed_many(many["skew"], device=dev, ts_ms=ts, received_ms=rx, live_clock=True,
                           parking=lots["skew"]),
            offline.feed_many(many["offline"], device=dev, heard_ms=ts, book=book),
        ]  # fmt: skip
        for per in results:
            for d, evs in per.items():
                got[d] += evs
    end = T0 + 10**7
    release()
    for name, rule in tickers:
        for d in range(n_dev):
            want[d] += rule.advance(one[name][d], watermark_ms=end)  # type: ignore[attr-defined]
        for d, evs in rule.advance_many(many[name], watermark_ms=end).items():  # type: ignore[attr-defined]
            got[d] += evs
    for d in range(n_dev):
        want[d] += offline.advance(one["offline"][d], watermark_ms=end)
    for d, evs in advance_offline(end).items():
        got[d] += evs
    for d in range(n_dev):
        # Per rule the order of events is the same; across rules it may differ.
        assert sorted(got[d], key=repr) == sorted(want[d], key=repr)


def test_offline_advance_many_opens_exactly_when_the_silence_exceeds_the_threshold() -> None:
    states = [OFF.new_state(offline_after_s=300, since_ms=T0) for _ in range(3)]
    OFF.feed_many(states, device=[0, 1, 1], heard_ms=secs(10, 20, 100))
    assert OFF.advance_many(states, watermark_ms=T0 + 300_000) == {}  # not more than 300 s
    got = OFF.advance_many(states, watermark_ms=T0 + 310_001)
    assert {d: [(e.action, e.started_at_ms - T0) for e in evs] for d, evs in got.items()} == {
        0: [("open", 310_000)],
        2: [("open", 300_000)],
    }
    got = OFF.advance_many(states, watermark_ms=T0 + 400_001)
    assert {d: [e.action for e in evs] for d, evs in got.items()} == {1: ["open"]}


def test_episode_advance_many_skips_quiet_states_but_moves_their_watermark() -> None:
    rule = Speeding()
    states = [rule.new_state() for _ in range(2)]
    rule.feed_many(
        states,
        device=[0] * 12 + [1] * 3,
        ts_ms=np.r_[secs(*range(12)), secs(0, 1, 2)],
        speed_kmh=[70] * 12 + [40] * 3,
        limit_kmh=np.full(15, 60.0),
    )
    assert not states[0].quiet and states[1].quiet
    got = rule.advance_many(states, watermark_ms=T0 + 11_000)
    assert [(d, [e.action for e in evs]) for d, evs in got.items()] == [(0, ["open"])]
    assert states[1].watermark_ms == T0 + 11_000


@settings(max_examples=200, deadline=None)
@given(
    action=st.sampled_from(["open", "update", "close"]),
    ended=st.sampled_from([None, 1_790_000_050_000]),
    late=st.booleans(),
)
def test_coalesce_of_one_event_is_the_general_rule(action, ended, late) -> None:
    """The one-event fast path gives what the grouping loop gives."""
    from alerts.engine import coalesce

    ev = AlertEvent(
        kind="speeding",
        action=action,
        number=3,
        source=None,
        started_at_ms=1_790_000_000_000,
        ended_at_ms=ended if action != "open" else None,
        at_ms=1_790_000_040_000,
        late=late,
        details={"max_speed_kmh": 70.0},
    )
    # Two identical events take the general path and must reduce to the same one.
    assert coalesce([ev]) == coalesce([ev, ev])[-1:]


def round_column(values: np.ndarray, digits: int) -> list[float]:
    """round_rows of one column."""
    return [row[0] for row in round_rows(values.reshape(-1, 1), [digits])]


def _same_floats(got: list[float], want: list[float]) -> bool:
    # Bit for bit: -0.0 against 0.0 and NaN against NaN as well.
    return [repr(g) for g in got] == [repr(w) for w in want]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=50),
    st.sampled_from([1, 3, 7]),
)
def test_round_column_rounds_as_python_does(values: list[float], digits: int) -> None:
    got = round_column(np.asarray(values, np.float64), digits)
    assert _same_floats(got, [round(v, digits) for v in values])


@pytest.mark.parametrize("digits", [1, 3, 7])
def test_round_column_at_halves_and_on_real_coordinates(digits: int) -> None:
    rng = np.random.default_rng(digits)
    k = rng.integers(-(10**10), 10**10, 20_000)
    scale = 10.0**digits
    halves = (k + 0.5) / scale  # nearest doubles to halves: either side of them
    near = np.concatenate([halves, np.nextafter(halves, np.inf), np.nextafter(halves, -np.inf)])
    coords = np.concatenate([rng.uniform(-180, 180, 20_000), rng.uniform(0, 3_000, 20_000)])
    for values in (near, coords, -coords):
        got = round_column(values, digits)
        assert _same_floats(got, [round(float(v), digits) for v in values])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(allow_nan=True, allow_infinity=True, width=64),
            st.floats(min_value=-1e4, max_value=1e4),
            st.floats(min_value=-180, max_value=180),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_round_rows_rounds_each_column_as_python_does(rows: list[tuple[float, ...]]) -> None:
    digits = [1, 3, 7]
    got = round_rows(np.asarray(rows, np.float64), digits)
    want = [[round(v, d) for v, d in zip(row, digits, strict=True)] for row in rows]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert _same_floats(g, w)


#: Events of one kind on a few devices: (device, episode number, late, action, ended).
_column_events = st.lists(
    st.tuples(
        st.integers(0, 4),
        st.integers(0, 2),
        st.booleans(),
        st.sampled_from([0, 1, 2]),
        st.sampled_from([NO_TS, 1_790_000_050_000]),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(_column_events)
def test_coalesce_columns_is_coalesce(events: list[tuple[int, int, bool, int, int]]) -> None:
    """The columnar coalescing keeps, per device and in order, what coalesce keeps."""
    from alerts.engine import coalesce, coalesce_columns

    alerts = [
        AlertEvent(
            "speeding", ACTIONS[a], n, None, 1_790_000_000_000, None if e == NO_TS else e, 0, lt, {}
        )
        for _, n, lt, a, e in events
    ]
    want: dict[int, list[tuple[object, ...]]] = {}
    for d in sorted({d for d, *_ in events}):
        mine = [ev for (dd, *_), ev in zip(events, alerts, strict=True) if dd == d]
        want[d] = [(ev.action, ev.number, ev.late, ev.ended_at_ms) for ev in coalesce(mine)]
    cols = np.array(events, np.int64).reshape(-1, 5).T
    rows, action, ended = coalesce_columns(cols[0], cols[1], cols[2], cols[3], cols[4])
    got: dict[int, list[tuple[object, ...]]] = {}
    for r, a, e in zip(rows.tolist(), action.tolist(), ended.tolist(), strict=True):
        d, n, lt, _, _ = events[r]
        got.setdefault(d, []).append((ACTIONS[a], n, lt, None if e == NO_TS else e))
    assert got == want


@settings(max_examples=150, deadline=None)
@given(
    _column_events,
    st.sampled_from(["speeding", "route_deviation", "out_of_hours"]),
    st.integers(0, 2**32 - 1),
)
def test_fleet_changes_are_those_of_the_alert_events(
    events: list[tuple[int, int, bool, int, int]], kind: str, seed: int
) -> None:
    """Columns straight to store changes = AlertEvents, coalesce and to_change, per device."""
    from alerts import _fleet as kn
    from alerts.fleet import FleetEvents

    rng = np.random.default_rng(seed)
    n = len(events)
    cols = np.array(events, np.int64).reshape(-1, 5)
    ints = np.zeros((n, kn.MI), np.int64)
    ints[:, kn.M_NUMBER] = cols[:, 1]
    ints[:, kn.M_STARTED] = 1_790_000_000_000 + rng.integers(0, 10**6, n)
    ints[:, kn.M_OPENED] = ints[:, kn.M_STARTED] + 10_000
    ints[:, kn.M_LAST_MET] = ints[:, kn.M_STARTED] + rng.integers(0, 10**6, n)
    ints[:, kn.M_CLOSED] = np.where(cols[:, 4] == NO_TS, NO_TS, ints[:, kn.M_LAST_MET] + 5_000)
    ints[:, kn.M_LATE] = cols[:, 2]
    floats = rng.uniform(0, 200, (n, kn.MF))
    floats[:, kn.A_START_LON] = rng.uniform(120, 121, n)
    floats[rng.uniform(0, 1, n) < 0.2, kn.A_START_LON] = np.nan
    ev = FleetEvents(cols[:, 0], cols[:, 3], ints, floats)
    rule = {
        "speeding": Speeding(),
        "route_deviation": RouteDeviation(),
        "out_of_hours": OutOfHours(),
    }[kind]
    found = rule._fleet_alerts(ev, None, ["R-a", "R-b"])
    # As a mapping the run gives its AlertEvents: the reference (device 4 is not registered).
    assert_same_changes(found, found)
