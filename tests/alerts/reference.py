"""Deliberately simple scalar reference of the contract §3 timing rules, one reading at a time.

Used only by tests, to check the vectorized detector in :mod:`alerts.episodes`
(conventions #3). It sees the whole stream sorted by event time, so it has
no notion of lateness, buffers or watermarks: whatever order readings arrive
in, the detector must end with exactly these episodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MET, CLEAR, END, NEUTRAL = 1, -1, -2, 0
_R_M = 6_371_008.8


@dataclass
class Reading:
    ts: int
    code: int
    value: float = math.nan
    tag: float = math.nan
    lon: float = math.nan
    lat: float = math.nan
    backfill: bool = False


@dataclass
class RefEpisode:
    started: int
    opened_at: int
    last_met: int
    late: bool
    closed_at: int | None = None
    max_value: float = math.nan
    tag: float = math.nan
    start: tuple[float, float] = (math.nan, math.nan)
    end: tuple[float, float] = (math.nan, math.nan)
    path_m: float = 0.0
    pending_m: float = field(default=0.0, repr=False)


def haversine_m(lon0: float, lat0: float, lon1: float, lat1: float) -> float:
    p0, p1 = math.radians(lat0), math.radians(lat1)
    a = (
        math.sin((p1 - p0) / 2) ** 2
        + math.cos(p0) * math.cos(p1) * math.sin(math.radians(lon1 - lon0) / 2) ** 2
    )
    return 2 * _R_M * math.asin(math.sqrt(min(a, 1.0)))


def reference(
    readings: list[Reading],
    *,
    open_s: float,
    close_s: float,
    gap_s: float | None = None,
    end_ms: int | None = None,
) -> list[RefEpisode]:
    """Episodes of a sorted stream, by the contract's words, one reading at a time."""
    open_ms = round(open_s * 1000)
    close_ms = None if math.isinf(close_s) else round(close_s * 1000)
    gap_ms = None if gap_s is None else round(gap_s * 1000)
    out: list[RefEpisode] = []
    phase = "idle"
    cur: RefEpisode | None = None  # candidate run or open episode
    clear_start = 0
    last_ts: int | None = None
    pos = (math.nan, math.nan)  # last known position

    def close(at: int) -> None:
        nonlocal phase, cur
        assert cur is not None
        cur.closed_at = at
        out.append(cur)
        cur = None
        phase = "idle"

    for r in readings:
        if gap_ms is not None and last_ts is not None and r.ts - last_ts > gap_ms:
            if phase in ("active", "closing"):
                close(last_ts + gap_ms)
            phase, cur = "idle", None
        last_ts = r.ts
        has_pos = not (math.isnan(r.lon) or math.isnan(r.lat))
        step = 0.0
        if has_pos:
            if not math.isnan(pos[0]):
                step = haversine_m(pos[0], pos[1], r.lon, r.lat)
            pos = (r.lon, r.lat)
        if phase in ("active", "closing"):
            assert cur is not None
            cur.pending_m += step

        if r.code == MET:
            if phase == "idle":
                cur = RefEpisode(started=r.ts, opened_at=0, last_met=r.ts, late=False)
                cur.start = cur.end = pos
                phase = "candidate"
                step = 0.0  # the run starts here: the way to its first reading is not in it
            assert cur is not None
            if phase == "candidate":
                cur.path_m += step
            else:
                cur.path_m += cur.pending_m
                cur.pending_m = 0.0
            phase = "active" if phase == "closing" else phase
            cur.last_met = r.ts
            cur.end = pos
            if not math.isnan(r.value) and (math.isnan(cur.max_value) or r.value > cur.max_value):
                cur.max_value, cur.tag = r.value, r.tag
            if phase == "candidate" and r.ts - cur.started >= open_ms:
                phase = "active"
                cur.opened_at = r.ts
                cur.late = r.backfill
        elif r.code == CLEAR:
            if phase == "candidate":
                phase, cur = "idle", None
            elif phase in ("active", "closing"):
                if phase == "active":
                    phase, clear_start = "closing", r.ts
                if close_ms is not None and r.ts - clear_start >= close_ms:
                    close(r.ts)
        elif r.code == END:
            if phase in ("active", "closing"):
                close(r.ts)
            phase, cur = "idle", None
        else:  # neutral: breaks the candidate run and the closing run
            if phase == "candidate":
                phase, cur = "idle", None
            elif phase == "closing":
                phase = "active"
    if (
        gap_ms is not None
        and end_ms is not None
        and last_ts is not None
        and end_ms - last_ts > gap_ms
        and phase in ("active", "closing")
    ):
        close(last_ts + gap_ms)
    if phase in ("active", "closing"):
        assert cur is not None
        out.append(cur)
    return out
