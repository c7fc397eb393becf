"""School-day and service-window masks over event times.

Times are epoch milliseconds (UTC). Local dates and times of day come from
an IANA timezone (default Asia/Shanghai); everything that depends on the
date is computed once per distinct local date, then spread to the events.

A school day (contract §2) is a working day of the national calendar
(public holidays off, adjusted working weekends, 调休, on), from the
``chinese_calendar`` package, that is not inside a break, plus the extra
school days, minus the extra days off. For a year the package does not cover
the national calendar falls back to Monday–Friday, with one warning logged
per such year and process.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from zoneinfo import ZoneInfo

import chinese_calendar
import numpy as np
import numpy.typing as npt

from core.jit import jit

__all__ = [
    "DEFAULT_TIMEZONE",
    "SchoolCalendar",
    "ServiceWindows",
    "calendar_masks",
    "school_day_mask",
    "service_window_mask",
]

#: Local time of the fleet unless the fleet document says otherwise.
DEFAULT_TIMEZONE: Final = "Asia/Shanghai"

_log = logging.getLogger(__name__)

_BOOL = npt.NDArray[np.bool_]
_I64 = npt.NDArray[np.int64]
_DAY_MS: Final = 86_400_000
_MINUTE_MS: Final = 60_000
_EPOCH: Final = dt.date(1970, 1, 1)
#: Above this many days between the first and last event, tables go per distinct day.
_DENSE_SPAN_DAYS: Final = 4096
_HHMM = re.compile(r"^(\d{2}):(\d{2})$")
_ALL_DAYS: Final = 0b1111111
_MON_FRI: Final = 0b0011111


def _date(value: dt.date | str) -> dt.date:
    return dt.date.fromisoformat(value) if isinstance(value, str) else value


def _epoch_days(days: Iterable[dt.date]) -> _I64:
    return np.array([(d - _EPOCH).days for d in days], dtype=np.int64)


@dataclass(frozen=True)
class SchoolCalendar:
    """Local overrides of the national calendar (the fleet document's ``calendar``).

    ``breaks``: (first day, last day) pairs, both inclusive; ``extra_school_days``
    and ``extra_days_off``: single days. All are local dates.
    """

    breaks: tuple[tuple[dt.date, dt.date], ...] = ()
    extra_school_days: frozenset[dt.date] = frozenset()
    extra_days_off: frozenset[dt.date] = frozenset()

    @classmethod
    def from_dates(
        cls,
        *,
        breaks: Iterable[tuple[dt.date | str, dt.date | str]] = (),
        extra_school_days: Iterable[dt.date | str] = (),
        extra_days_off: Iterable[dt.date | str] = (),
    ) -> SchoolCalendar:
        """Build from dates or ISO ``YYYY-MM-DD`` strings."""
        spans = tuple((_date(a), _date(b)) for a, b in breaks)
        if any(a > b for a, b in spans):
            raise ValueError("a break must not end before it starts")
        return cls(
            breaks=spans,
            extra_school_days=frozenset(_date(d) for d in extra_school_days),
            extra_days_off=frozenset(_date(d) for d in extra_days_off),
        )

    @classmethod
    def from_document(cls, calendar: Mapping[str, Any] | None) -> SchoolCalendar:
        """Build from the fleet document's ``calendar`` object (contract §2), or none."""
        if not calendar:
            return cls()
        return cls.from_dates(
            breaks=[(b["start"], b["end"]) for b in calendar.get("breaks", [])],
            extra_school_days=calendar.get("extra_school_days", []),
            extra_days_off=calendar.get("extra_days_off", []),
        )


def _minutes(value: str) -> int:
    match = _HHMM.match(value)
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"time of day must be HH:MM, got {value!r}")
    return int(match[1]) * 60 + int(match[2])


def _weekday_bits(days: str | Sequence[int]) -> tuple[int, bool]:
    """(bit mask of ISO weekdays, Monday = bit 0; whether school days only)."""
    if days == "school":
        return _ALL_DAYS, True
    if days == "daily":
        return _ALL_DAYS, False
    if days == "weekdays":
        return _MON_FRI, False
    if isinstance(days, str):
        raise ValueError(f"unknown service window days {days!r}")
    bits = 0
    for d in days:
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 7:
            raise ValueError(f"weekday numbers must be ISO 1 (Monday) .. 7, got {d!r}")
        bits |= 1 << (d - 1)
    return bits, False


@dataclass(frozen=True)
class ServiceWindows:
    """Service windows of many buses as flat arrays (ragged by bus).

    Bus ``b``'s windows are rows ``offsets[b]:offsets[b + 1]``. Each window
    has a bit mask of ISO weekdays (Monday = bit 0), whether it runs on
    school days only, and ``[start_min, end_min)`` in minutes after local
    midnight (start inclusive, end exclusive; windows do not cross midnight).
    """

    offsets: _I64
    weekday_bits: _I64
    school_only: _BOOL
    start_min: _I64
    end_min: _I64

    @classmethod
    def from_document(
        cls, windows_per_bus: Sequence[Sequence[Mapping[str, Any]]]
    ) -> ServiceWindows:
        """Build from one list of fleet-document windows per bus (contract §2).

        A window is ``{"days": "school" | "weekdays" | "daily" | [ISO weekday
        numbers], "start": "HH:MM", "end": "HH:MM"}`` with start before end.
        """
        rows: list[tuple[int, bool, int, int]] = []
        offsets = [0]
        for windows in windows_per_bus:
            for w in windows:
                bits, school = _weekday_bits(w["days"])
                start, end = _minutes(w["start"]), _minutes(w["end"])
                if start >= end:
                    raise ValueError(f"window start {w['start']} must be before end {w['end']}")
                rows.append((bits, school, start, end))
            offsets.append(len(rows))
        columns = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
        return cls(
            offsets=np.array(offsets, dtype=np.int64),
            weekday_bits=np.array(columns[0], dtype=np.int64),
            school_only=np.array(columns[1], dtype=bool),
            start_min=np.array(columns[2], dtype=np.int64),
            end_min=np.array(columns[3], dtype=np.int64),
        )

    @property
    def n_buses(self) -> int:
        """Number of buses (window sets)."""
        return int(self.offsets.size - 1)


@functools.lru_cache(maxsize=64)
def _national_workdays(year: int) -> _BOOL:
    """Working days of the national calendar for one year, indexed by day of year - 1.

    Memoized: the national calendar is a pure function of the year, and the
    warning for an uncovered year is then logged once per process.
    """
    first = dt.date(year, 1, 1)
    n_days = (dt.date(year + 1, 1, 1) - first).days
    days = [first + dt.timedelta(days=i) for i in range(n_days)]
    try:
        flags = [chinese_calendar.is_workday(d) for d in days]
    except NotImplementedError:
        _log.warning(
            "chinese_calendar has no data for %d: school days that year are Monday to "
            "Friday plus the fleet calendar's overrides (upgrade chinesecalendar)",
            year,
        )
        flags = [d.weekday() < 5 for d in days]
    result = np.array(flags, dtype=bool)
    result.setflags(write=False)
    return result


def _school_days(days: _I64, calendar: SchoolCalendar) -> _BOOL:
    """School-day flag for each epoch day in ``days`` (few distinct values)."""
    flags = np.zeros(days.size, dtype=bool)
    if days.size == 0:
        return flags
    dates = days.astype("datetime64[D]")
    years = dates.astype("datetime64[Y]")
    day_of_year = (dates - years).astype(np.int64)
    year_no = years.astype(np.int64) + 1970
    for year in np.unique(year_no):
        here = year_no == year
        flags[here] = _national_workdays(int(year))[day_of_year[here]]
    if calendar.breaks:
        first = _epoch_days(b[0] for b in calendar.breaks)
        last = _epoch_days(b[1] for b in calendar.breaks)
        flags &= ~np.any((days[:, None] >= first) & (days[:, None] <= last), axis=1)
    if calendar.extra_school_days:
        flags |= np.isin(days, _epoch_days(calendar.extra_school_days))
    if calendar.extra_days_off:
        flags &= ~np.isin(days, _epoch_days(calendar.extra_days_off))
    return flags


def _utc_offset_ms(tz: ZoneInfo, utc_ms: int) -> int:
    moment = dt.datetime.fromtimestamp(utc_ms // 1000, tz=tz)
    offset = moment.utcoffset()
    return 0 if offset is None else int(offset.total_seconds() * 1000)


def _per_day(values: _I64) -> tuple[_I64, _I64]:
    """Distinct-ish days to tabulate and, for each value, its row in that table."""
    if values.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    first, last = int(values.min()), int(values.max())
    if last - first < _DENSE_SPAN_DAYS:
        return np.arange(first, last + 1, dtype=np.int64), values - first
    table, row = np.unique(values, return_inverse=True)
    return table.astype(np.int64), row.reshape(-1).astype(np.int64)


def _local_ms(ts_ms: _I64, tz_name: str) -> _I64:
    """Local wall-clock time as milliseconds since 1970-01-01 00:00 local."""
    tz = ZoneInfo(tz_name)
    utc_day = np.floor_divide(ts_ms, _DAY_MS)
    table, row = _per_day(utc_day)
    start = np.array([_utc_offset_ms(tz, int(d) * _DAY_MS) for d in table], dtype=np.int64)
    end = np.array([_utc_offset_ms(tz, (int(d) + 1) * _DAY_MS) for d in table], dtype=np.int64)
    local = ts_ms + start[row]
    # A UTC day whose offset changes (a DST switch) is resolved per event.
    for i in np.flatnonzero(start[row] != end[row]):
        local[i] = ts_ms[i] + _utc_offset_ms(tz, int(ts_ms[i]))
    return local


def _as_ts(ts_ms: npt.ArrayLike) -> _I64:
    ts = np.asarray(ts_ms)
    if ts.dtype.kind not in "iu":
        raise TypeError(f"ts_ms must be integer epoch milliseconds, got dtype {ts.dtype}")
    return ts.astype(np.int64, copy=False).reshape(-1)


def _as_calendar(calendar: SchoolCalendar | Mapping[str, Any] | None) -> SchoolCalendar:
    if isinstance(calendar, SchoolCalendar):
        return calendar
    return SchoolCalendar.from_document(calendar)


def school_day_mask(
    ts_ms: npt.ArrayLike,
    *,
    calendar: SchoolCalendar | Mapping[str, Any] | None = None,
    tz: str = DEFAULT_TIMEZONE,
) -> _BOOL:
    """Whether each event falls on a school day, by its local date in ``tz``.

    ``ts_ms``: integer epoch milliseconds (UTC), 1-D. ``calendar``: a
    :class:`SchoolCalendar` or the fleet document's ``calendar`` object.
    Returns bool (N,).
    """
    ts = _as_ts(ts_ms)
    local_day = np.floor_divide(_local_ms(ts, tz), _DAY_MS)
    table, row = _per_day(local_day)
    result: _BOOL = _school_days(table, _as_calendar(calendar))[row]
    return result


def service_window_mask(
    ts_ms: npt.ArrayLike,
    *,
    windows: ServiceWindows | Sequence[Mapping[str, Any]],
    bus_index: npt.ArrayLike | None = None,
    calendar: SchoolCalendar | Mapping[str, Any] | None = None,
    tz: str = DEFAULT_TIMEZONE,
) -> _BOOL:
    """Whether each event is inside one of its bus's service windows on a day of their kind.

    ``ts_ms``: integer epoch milliseconds (UTC), 1-D of length N.
    ``windows``: a :class:`ServiceWindows` of many buses with ``bus_index``
    (one index per event), or one bus's list of fleet-document windows
    (``bus_index`` omitted). A window applies on school days (``"school"``),
    Monday–Friday (``"weekdays"``), every day (``"daily"``) or the listed
    ISO weekdays, from ``start`` (inclusive) to ``end`` (exclusive) local
    time in ``tz``. Returns bool (N,).
    """
    return _masks(ts_ms, windows, bus_index, calendar, tz, school_days=False)[0]


def calendar_masks(
    ts_ms: npt.ArrayLike,
    *,
    windows: ServiceWindows | Sequence[Mapping[str, Any]],
    bus_index: npt.ArrayLike | None = None,
    calendar: SchoolCalendar | Mapping[str, Any] | None = None,
    tz: str = DEFAULT_TIMEZONE,
) -> tuple[_BOOL, _BOOL]:
    """:func:`service_window_mask` and :func:`school_day_mask` of the same events at once.

    The same arguments as :func:`service_window_mask`; one conversion to
    local time serves both. Returns (inside a window, on a school day), bool (N,) each.
    """
    return _masks(ts_ms, windows, bus_index, calendar, tz, school_days=True)


def _masks(
    ts_ms: npt.ArrayLike,
    windows: ServiceWindows | Sequence[Mapping[str, Any]],
    bus_index: npt.ArrayLike | None,
    calendar: SchoolCalendar | Mapping[str, Any] | None,
    tz: str,
    *,
    school_days: bool,
) -> tuple[_BOOL, _BOOL]:
    """Inside a window, and (``school_days``; else an empty array) on a school day."""
    ts = _as_ts(ts_ms)
    table_windows = (
        windows if isinstance(windows, ServiceWindows) else ServiceWindows.from_document([windows])
    )
    if bus_index is None:
        if table_windows.n_buses != 1:
            raise ValueError("bus_index is required with the windows of several buses")
        bus = np.zeros(ts.size, dtype=np.int64)
    else:
        bus = np.asarray(bus_index, dtype=np.int64).reshape(-1)
        if bus.size != ts.size:
            raise ValueError("ts_ms and bus_index must have the same length")
        if bus.size and (bus.min() < 0 or bus.max() >= table_windows.n_buses):
            raise ValueError("bus_index out of range of windows")
    local = _local_ms(ts, tz)
    table, row = _per_day(np.floor_divide(local, _DAY_MS))
    if school_days or np.any(table_windows.school_only):
        school = _school_days(table, _as_calendar(calendar))
    else:
        school = np.zeros(table.size, dtype=bool)
    inside = np.empty(ts.size, dtype=bool)
    _inside_windows(
        local,
        table,
        row,
        school,
        bus,
        table_windows.offsets,
        table_windows.weekday_bits,
        table_windows.school_only,
        table_windows.start_min,
        table_windows.end_min,
        inside,
    )
    return inside, school[row] if school_days else np.zeros(0, dtype=bool)


@jit
def _inside_windows(
    local_ms: _I64,
    day_table: _I64,
    day_row: _I64,
    school_day: _BOOL,
    bus: _I64,
    offsets: _I64,
    weekday_bits: _I64,
    school_only: _BOOL,
    start_min: _I64,
    end_min: _I64,
    out: _BOOL,
) -> None:
    """The loop of :func:`service_window_mask`: fills ``out`` (N).

    ``local_ms``: local wall-clock ms; its day is ``day_table[day_row]`` (epoch
    days), a school day per ``school_day[day_row]``; ``bus`` indexes the
    windows (rows ``offsets[bus]:offsets[bus + 1]``).
    """
    for i in range(local_ms.size):
        day = day_table[day_row[i]]
        minute = (local_ms[i] - day * _DAY_MS) // _MINUTE_MS
        # ISO weekday - 1 as a bit: 1970-01-01 was a Thursday.
        day_bit = 1 << ((day + 3) % 7)
        school = school_day[day_row[i]]
        inside = False
        for w in range(offsets[bus[i]], offsets[bus[i] + 1]):
            inside |= (
                (weekday_bits[w] & day_bit) != 0
                and start_min[w] <= minute < end_min[w]
                and (school or not school_only[w])
            )
        out[i] = inside
