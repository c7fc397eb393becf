"""School-day and service-window masks against a per-timestamp datetime/zoneinfo loop."""

from __future__ import annotations

import datetime as dt
import logging
from zoneinfo import ZoneInfo

import chinese_calendar
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence import (
    SchoolCalendar,
    ServiceWindows,
    calendar_masks,
    school_day_mask,
    service_window_mask,
)
from geofence._calendar import _national_workdays

SH = "Asia/Shanghai"
UTC = dt.UTC
MORNING = {"days": "school", "start": "06:30", "end": "08:30"}
AFTERNOON = {"days": "school", "start": "15:30", "end": "17:30"}


def ms(year, month, day, hour=0, minute=0, second=0, millis=0, tz=SH) -> int:
    local = dt.datetime(year, month, day, hour, minute, second, millis * 1000, tzinfo=ZoneInfo(tz))
    return int(local.timestamp() * 1000)


def local_datetime(ts_ms: int, tz: str) -> dt.datetime:
    return (dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(milliseconds=ts_ms)).astimezone(
        ZoneInfo(tz)
    )


def ref_school_day(day: dt.date, calendar: dict) -> bool:
    try:
        school = chinese_calendar.is_workday(day)
    except NotImplementedError:
        school = day.weekday() < 5
    for b in calendar.get("breaks", []):
        if dt.date.fromisoformat(b["start"]) <= day <= dt.date.fromisoformat(b["end"]):
            school = False
    if day.isoformat() in calendar.get("extra_school_days", []):
        school = True
    if day.isoformat() in calendar.get("extra_days_off", []):
        school = False
    return school


def ref_in_window(ts_ms: int, windows: list[dict], calendar: dict, tz: str) -> bool:
    local = local_datetime(ts_ms, tz)
    for w in windows:
        days = w["days"]
        if days == "school":
            ok_day = ref_school_day(local.date(), calendar)
        elif days == "weekdays":
            ok_day = local.isoweekday() <= 5
        elif days == "daily":
            ok_day = True
        else:
            ok_day = local.isoweekday() in days
        start = dt.time.fromisoformat(w["start"])
        end = dt.time.fromisoformat(w["end"])
        if ok_day and start <= local.time().replace(tzinfo=None) < end:
            return True
    return False


def check_windows(ts, windows, calendar, tz=SH):
    got = service_window_mask(
        np.array(ts, dtype=np.int64), windows=windows, calendar=calendar, tz=tz
    )
    assert got.dtype == np.bool_ and got.shape == (len(ts),)
    want = [ref_in_window(t, windows, calendar, tz) for t in ts]
    np.testing.assert_array_equal(got, want)
    # Both masks at once give the same.
    inside, school = calendar_masks(
        np.array(ts, dtype=np.int64), windows=windows, calendar=calendar, tz=tz
    )
    np.testing.assert_array_equal(inside, want)
    school_want = [ref_school_day(local_datetime(t, tz).date(), calendar) for t in ts]
    np.testing.assert_array_equal(school, school_want)
    return got


def check_school(ts, calendar, tz=SH):
    got = school_day_mask(np.array(ts, dtype=np.int64), calendar=calendar, tz=tz)
    assert got.dtype == np.bool_ and got.shape == (len(ts),)
    want = [ref_school_day(local_datetime(t, tz).date(), calendar) for t in ts]
    np.testing.assert_array_equal(got, want)
    return got


def working_weekend_days(year: int) -> list[dt.date]:
    days = chinese_calendar.get_workdays(
        dt.date(year, 1, 1), dt.date(year, 12, 31), include_weekends=True
    )
    return [d for d in days if d.weekday() >= 5]


def test_adjusted_working_sunday_is_a_school_day() -> None:
    sundays = [d for d in working_weekend_days(2026) if d.weekday() == 6]
    assert sundays, "chinese_calendar should know 2026's adjusted working Sundays"
    day = sundays[0]
    ts = [ms(day.year, day.month, day.day, 7, 0), ms(day.year, day.month, day.day, 12, 0)]
    assert list(check_school(ts, {})) == [True, True]
    assert list(check_windows(ts, [MORNING], {})) == [True, False]
    # The Sunday before it is an ordinary weekend day.
    before = day - dt.timedelta(days=7)
    assert list(check_school([ms(before.year, before.month, before.day, 7)], {})) == [False]


def test_public_holiday_is_not_a_school_day() -> None:
    ts = [ms(2026, 10, 1, 7, 0), ms(2026, 10, 2, 7, 0), ms(2026, 10, 9, 7, 0)]
    got = check_windows(ts, [MORNING], {})
    assert list(got) == [False, False, True]  # National Day off, a Friday after on


def test_break_extra_school_day_and_extra_day_off() -> None:
    calendar = {
        "breaks": [{"start": "2026-07-04", "end": "2026-08-31", "name": "暑假"}],
        "extra_school_days": ["2026-07-11", "2026-09-05"],  # Saturdays
        "extra_days_off": ["2026-09-09"],  # a Wednesday
    }
    days = [
        (2026, 7, 3),
        (2026, 7, 6),
        (2026, 8, 31),
        (2026, 9, 1),
        (2026, 7, 11),
        (2026, 9, 5),
        (2026, 9, 9),
    ]
    ts = [ms(*d, 7, 15) for d in days]
    got = check_school(ts, calendar)
    assert list(got) == [True, False, False, True, True, True, False]
    check_windows(ts, [MORNING], calendar)
    # The same calendar as a SchoolCalendar object gives the same mask.
    np.testing.assert_array_equal(
        school_day_mask(ts, calendar=SchoolCalendar.from_document(calendar)), got
    )


def test_window_edges_and_the_utc_date_differs_from_the_local_one() -> None:
    # 06:30 in Shanghai is 22:30 UTC the previous day.
    ts = [
        ms(2026, 11, 23, 6, 29, 59, 999),
        ms(2026, 11, 23, 6, 30),
        ms(2026, 11, 23, 8, 29, 59, 999),
        ms(2026, 11, 23, 8, 30),
        ms(2026, 11, 23, 16, 0),
        ms(2026, 11, 23, 0, 0),
    ]
    got = check_windows(ts, [MORNING, AFTERNOON], {})
    assert list(got) == [False, True, True, False, True, False]


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("daily", [True, True, True]),
        ("weekdays", [True, False, True]),  # weekdays ignore holidays: Oct 1 is a Thursday
        ([6, 7], [False, True, False]),
        ([4], [False, False, True]),
        ("school", [True, False, False]),
    ],
)
def test_day_kinds(days, expected) -> None:
    # Monday 2026-11-23, Saturday 2026-11-28, Thursday 2026-10-01 (National Day).
    ts = [ms(2026, 11, 23, 10), ms(2026, 11, 28, 10), ms(2026, 10, 1, 10)]
    got = check_windows(ts, [{"days": days, "start": "09:00", "end": "11:00"}], {})
    assert list(got) == expected


def test_year_without_national_data_falls_back_to_monday_friday(caplog) -> None:
    _national_workdays.cache_clear()
    ts = [
        ms(2031, 1, 6, 7),
        ms(2031, 1, 11, 7),
        ms(2031, 3, 3, 7),
        ms(2031, 3, 8, 7),
        ms(2031, 3, 8, 7),
    ]
    with caplog.at_level(logging.WARNING, logger="geofence._calendar"):
        got = check_school(ts, {"extra_school_days": ["2031-03-08"]})
        check_school(ts, {})
    assert list(got) == [True, False, True, True, True]
    warnings = [r for r in caplog.records if "2031" in r.getMessage()]
    assert len(warnings) == 1  # one per year, not per fix or per call


def test_many_buses_at_once() -> None:
    windows = ServiceWindows.from_document(
        [[MORNING, AFTERNOON], [], [{"days": "daily", "start": "00:00", "end": "23:59"}]]
    )
    assert windows.n_buses == 3
    ts = np.array(
        [ms(2026, 11, 23, 7), ms(2026, 11, 23, 7), ms(2026, 11, 28, 12), ms(2026, 11, 28, 7)]
    )
    bus = np.array([0, 1, 2, 0])
    got = service_window_mask(ts, windows=windows, bus_index=bus)
    np.testing.assert_array_equal(got, [True, False, True, False])


def test_empty_inputs() -> None:
    empty = np.zeros(0, dtype=np.int64)
    assert school_day_mask(empty).shape == (0,)
    assert service_window_mask(empty, windows=[MORNING]).shape == (0,)
    assert service_window_mask(empty, windows=[]).shape == (0,)
    assert not service_window_mask([ms(2026, 11, 23, 7)], windows=[]).any()


def test_dst_timezone_switch_days() -> None:
    tz = "Europe/Berlin"
    windows = [
        {"days": "daily", "start": "01:30", "end": "03:30"},
        {"days": "weekdays", "start": "07:00", "end": "08:00"},
    ]
    start = ms(2026, 3, 28, 0, tz="UTC")
    ts = list(range(start, start + 3 * 86_400_000, 7 * 60_000 + 1))
    start = ms(2026, 10, 24, 0, tz="UTC")
    ts += list(range(start, start + 3 * 86_400_000, 7 * 60_000 + 1))
    check_windows(ts, windows, {}, tz=tz)
    check_school(ts, {}, tz=tz)


def test_validation() -> None:
    with pytest.raises(TypeError, match="integer"):
        school_day_mask(np.array([1.5]))
    with pytest.raises(ValueError, match="before end"):
        ServiceWindows.from_document([[{"days": "daily", "start": "22:00", "end": "02:00"}]])
    with pytest.raises(ValueError, match="HH:MM"):
        ServiceWindows.from_document([[{"days": "daily", "start": "7:00", "end": "08:00"}]])
    with pytest.raises(ValueError, match="ISO"):
        ServiceWindows.from_document([[{"days": [0], "start": "07:00", "end": "08:00"}]])
    with pytest.raises(ValueError, match="unknown"):
        ServiceWindows.from_document([[{"days": "holidays", "start": "07:00", "end": "08:00"}]])
    with pytest.raises(ValueError, match="break"):
        SchoolCalendar.from_dates(breaks=[("2026-02-01", "2026-01-01")])
    several = ServiceWindows.from_document([[MORNING], [MORNING]])
    with pytest.raises(ValueError, match="bus_index"):
        service_window_mask([0], windows=several)
    with pytest.raises(ValueError, match="range"):
        service_window_mask([0], windows=several, bus_index=[2])


hhmm = st.tuples(st.integers(0, 23), st.integers(0, 59)).map(lambda hm: f"{hm[0]:02d}:{hm[1]:02d}")


@st.composite
def windows_lists(draw):
    out = []
    for _ in range(draw(st.integers(0, 3))):
        a, b = sorted(draw(st.lists(hhmm, min_size=2, max_size=2, unique=True)))
        days = draw(
            st.one_of(
                st.sampled_from(["school", "weekdays", "daily"]),
                st.lists(st.integers(1, 7), max_size=3),
            )
        )
        out.append({"days": days, "start": a, "end": b})
    return out


dates = st.dates(dt.date(2004, 1, 1), dt.date(2032, 12, 31))


@st.composite
def calendars(draw):
    breaks = []
    for _ in range(draw(st.integers(0, 2))):
        a = draw(dates)
        breaks.append(
            {
                "start": a.isoformat(),
                "end": (a + dt.timedelta(days=draw(st.integers(0, 60)))).isoformat(),
            }
        )
    extra = [d.isoformat() for d in draw(st.lists(dates, max_size=3))]
    off = [d.isoformat() for d in draw(st.lists(dates, max_size=3))]
    return {"breaks": breaks, "extra_school_days": extra, "extra_days_off": off}


timestamps = st.integers(ms(2004, 1, 2), ms(2032, 12, 30))


@settings(max_examples=200, deadline=None)
@given(
    base=timestamps,
    offsets=st.lists(st.integers(-3 * 86_400_000, 3 * 86_400_000), max_size=25),
    spread=st.lists(timestamps, max_size=5),
    windows=windows_lists(),
    calendar=calendars(),
    tz=st.sampled_from([SH, "UTC", "America/New_York", "Asia/Kolkata"]),
)
def test_property_matches_reference(base, offsets, spread, windows, calendar, tz) -> None:
    # Mostly clustered times (as in a batch), some spread over the years.
    ts = [base + o for o in offsets] + spread
    # Calendar overrides near the events, so they matter.
    near = local_datetime(base, tz).date()
    calendar["extra_school_days"].append((near + dt.timedelta(days=1)).isoformat())
    calendar["extra_days_off"].append((near - dt.timedelta(days=1)).isoformat())
    calendar["breaks"].append(
        {
            "start": (near + dt.timedelta(days=2)).isoformat(),
            "end": (near + dt.timedelta(days=2)).isoformat(),
        }
    )
    logging.getLogger("geofence._calendar").setLevel(logging.ERROR)
    try:
        check_windows(ts, windows, calendar, tz=tz)
        check_school(ts, calendar, tz=tz)
    finally:
        logging.getLogger("geofence._calendar").setLevel(logging.NOTSET)
