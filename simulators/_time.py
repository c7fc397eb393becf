"""Time helpers: RFC 3339 text, durations, the local school calendar.

All simulated time is integer epoch milliseconds (UTC). Local time (service
windows, school days) is in the fleet document's time zone, Asia/Shanghai,
which has no daylight saving: the offset is always +08:00.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

__all__ = [
    "LOCAL_TZ",
    "TIMEZONE",
    "SchoolCalendar",
    "day_start_ms",
    "format_rfc3339",
    "local_dates",
    "local_datetime",
    "parse_duration_s",
    "parse_rfc3339_ms",
    "parse_speed_factor",
]

#: The fleet's time zone name, as written into the fleet document.
TIMEZONE: Final = "Asia/Shanghai"
LOCAL_TZ: Final = ZoneInfo(TIMEZONE)
_UTC = UTC
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def local_datetime(ts_ms: int) -> datetime:
    """Return the local (Asia/Shanghai) datetime of epoch milliseconds ``ts_ms``."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=_UTC).astimezone(LOCAL_TZ)


def format_rfc3339(ts_ms: int) -> str:
    """Format epoch milliseconds as RFC 3339 local time with offset.

    Whole seconds print without a fraction (``2026-11-23T07:31:05+08:00``),
    others with milliseconds (``…05.250+08:00``).
    """
    dt = local_datetime(ts_ms)
    whole = dt.strftime("%Y-%m-%dT%H:%M:%S")
    frac = ts_ms % 1000
    offset = dt.strftime("%z")
    offset = f"{offset[:3]}:{offset[3:]}"
    return f"{whole}.{frac:03d}{offset}" if frac else f"{whole}{offset}"


def parse_rfc3339_ms(text: str) -> int:
    """Parse RFC 3339 text with an offset into epoch milliseconds.

    Raises ``ValueError`` for text without an offset.
    """
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"时间缺少时区偏移 time without offset: {text!r}")
    delta = dt - datetime(1970, 1, 1, tzinfo=_UTC)
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def parse_duration_s(text: str) -> float:
    """Parse ``90s``, ``15m``, ``2h``, ``1.5d`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"无法识别的时长 not a duration: {text!r} (e.g. 30s, 15m, 2h, 1d)")
    return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]


def parse_speed_factor(text: str) -> float:
    """Parse a real-time speed factor such as ``60x``, ``1x`` or ``0.5``."""
    value = text.strip().lower().removesuffix("x")
    try:
        factor = float(value)
    except ValueError:
        raise ValueError(f"无法识别的倍速 not a speed factor: {text!r} (e.g. 1x, 60x)") from None
    if factor <= 0:
        raise ValueError(f"倍速必须大于 0 speed factor must be > 0: {text!r}")
    return factor


class SchoolCalendar:
    """School days per contract §2: national working days minus breaks, plus extras.

    The national calendar (public holidays, adjusted working weekends) comes
    from ``chinesecalendar``; for years it does not know, Monday to Friday
    are working days.
    """

    def __init__(
        self,
        *,
        breaks: Iterable[tuple[date, date]] = (),
        extra_school_days: Iterable[date] = (),
        extra_days_off: Iterable[date] = (),
    ) -> None:
        self._breaks = tuple(breaks)
        self._extra = frozenset(extra_school_days)
        self._off = frozenset(extra_days_off)

    def is_school_day(self, day: date) -> bool:
        """Return whether ``day`` is a school day."""
        if day in self._off:
            return False
        if day in self._extra:
            return True
        if any(start <= day <= end for start, end in self._breaks):
            return False
        return _is_workday(day)


def _is_workday(day: date) -> bool:
    import chinese_calendar

    try:
        return bool(chinese_calendar.is_workday(day))
    except NotImplementedError:
        return day.weekday() < 5


def day_start_ms(day: date) -> int:
    """Return epoch milliseconds of local midnight at the start of ``day``."""
    dt = datetime(day.year, day.month, day.day, tzinfo=LOCAL_TZ)
    return int(dt.timestamp()) * 1000


def local_dates(start_ms: int, end_ms: int) -> list[date]:
    """Return every local date touched by ``[start_ms, end_ms)``."""
    first = local_datetime(start_ms).date()
    last = local_datetime(max(start_ms, end_ms - 1)).date()
    return [first + timedelta(days=k) for k in range((last - first).days + 1)]
