"""``GET /buses/{bus_id}/track``: one bus's fixes over a time range, for playback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel

from api.deps import PoolDep, PrincipalDep
from api.errors import ApiError
from api.pagination import decode_cursor, encode_cursor

__all__ = ["router"]

router = APIRouter(tags=["tracks"])

#: Without ``since``, a track covers this long before ``until``.
DEFAULT_SPAN = timedelta(hours=1)


class TrackPoint(BaseModel):
    """One stored fix of the bus's GPS device(s)."""

    ts: datetime
    lon: float
    lat: float
    speed_kmh: float | None
    heading_deg: float | None
    device_id: str
    backfill: bool


class Track(BaseModel):
    """Fixes in time order (oldest first); ``next`` resumes after the last one when capped."""

    bus_id: str
    since: datetime
    until: datetime
    items: list[TrackPoint]
    next: str | None


@router.get("/buses/{bus_id}/track", response_model=Track)
async def bus_track(
    bus_id: str,
    pool: PoolDep,
    principal: PrincipalDep,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    limit: int = Query(5000, ge=1, le=20000),
    cursor: str | None = None,
) -> Track:
    """Fixes with ``since`` ≤ ts < ``until`` (default: the hour before now), oldest first.

    Every GPS device the bus has had counts, retired ones included, so a
    replaced terminal's history stays on the bus. 404 outside the caller's scope.
    """
    bus = await pool.fetchrow("SELECT school_id, operator_id FROM buses WHERE id = $1", bus_id)
    if bus is None or not principal.sees(
        school_id=bus["school_id"], operator_id=bus["operator_id"]
    ):
        raise ApiError(404, "not_found", f"校车不存在 no bus {bus_id}")
    end = until or datetime.now(UTC)
    start = since or end - DEFAULT_SPAN
    if start >= end:
        raise ApiError(422, "invalid_request", "since 必须早于 until: since must be before until")
    after = _after(decode_cursor(cursor))
    devices = await pool.fetch(
        "SELECT key, id FROM devices WHERE bus_id = $1 AND kind = 'gps'", bus_id
    )
    ids = {int(d["key"]): str(d["id"]) for d in devices}
    rows: list[Any] = []
    if ids:
        # (device_key, ts) is the hypertable's unique index: one range scan per device.
        rows = await pool.fetch(
            "SELECT device_key, ts, lon, lat, speed_kmh, heading_deg, backfill FROM gps_fixes"
            " WHERE device_key = ANY($1::int[]) AND ts >= $2 AND ts < $3"
            "   AND ($4::timestamptz IS NULL OR (ts, device_key) > ($4, $5))"
            " ORDER BY ts, device_key LIMIT $6",
            list(ids),
            start,
            end,
            after[0] if after else None,
            after[1] if after else 0,
            limit + 1,
        )
    items = [
        TrackPoint(
            ts=r["ts"],
            lon=r["lon"],
            lat=r["lat"],
            speed_kmh=r["speed_kmh"],
            heading_deg=r["heading_deg"],
            device_id=ids[r["device_key"]],
            backfill=r["backfill"],
        )
        for r in rows[:limit]
    ]
    following = None
    if len(rows) > limit:
        last = rows[limit - 1]
        following = encode_cursor(f"{last['ts'].isoformat()}|{last['device_key']}")
    return Track(bus_id=bus_id, since=start, until=end, items=items, next=following)


def _after(key: str | None) -> tuple[datetime, int] | None:
    if key is None:
        return None
    stamp, _, device_key = key.partition("|")
    try:
        ts = datetime.fromisoformat(stamp)
        key_int = int(device_key)
        if ts.tzinfo is None or not 0 <= key_int < 2**31:
            raise ValueError("cursor out of range")
        return ts, key_int
    except ValueError as exc:
        raise ApiError(422, "invalid_request", "游标无效 bad cursor") from exc
