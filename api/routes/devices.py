"""``GET /devices``: every visible device with its health."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import PoolDep, PrincipalDep
from api.errors import ApiError
from api.pagination import decode_cursor, encode_cursor
from core.registry import DEFAULT_OFFLINE_AFTER_S

__all__ = ["router"]

router = APIRouter(tags=["devices"])


class DevicePublic(BaseModel):
    """A device as the API shows it."""

    id: str
    kind: Literal["gps", "smoke", "button"]
    bus_id: str | None
    school_id: str | None
    operator_id: str | None
    online: bool
    offline_after_s: int
    last_seen_at: datetime | None
    last_event_at: datetime | None


class DevicePage(BaseModel):
    """One page of devices."""

    items: list[DevicePublic]
    next: str | None


_SELECT = """
SELECT d.id, d.kind, d.bus_id, coalesce(d.school_id, b.school_id) AS school_id,
       b.operator_id, d.offline_after_s, s.last_seen_at, s.last_event_at,
       now() AS now
  FROM devices d
  LEFT JOIN buses b ON b.id = d.bus_id
  LEFT JOIN device_status s ON s.device_key = d.key
 WHERE d.retired_at IS NULL
   AND ($1::text IS NULL OR coalesce(d.school_id, b.school_id) = $1)
   AND ($2::text IS NULL OR b.operator_id = $2)
"""


def _public(row: Any) -> DevicePublic:
    after_s = row["offline_after_s"] or DEFAULT_OFFLINE_AFTER_S[row["kind"]]
    seen = row["last_seen_at"]
    online = seen is not None and (row["now"] - seen).total_seconds() <= after_s
    return DevicePublic(
        id=row["id"],
        kind=row["kind"],
        bus_id=row["bus_id"],
        school_id=row["school_id"],
        operator_id=row["operator_id"],
        online=online,
        offline_after_s=after_s,
        last_seen_at=seen,
        last_event_at=row["last_event_at"],
    )


@router.get("/devices", response_model=DevicePage)
async def list_devices(
    pool: PoolDep,
    principal: PrincipalDep,
    kind: Literal["gps", "smoke", "button"] | None = None,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = None,
) -> DevicePage:
    """Devices in id order, with online state and the latest receive and event times."""
    after = decode_cursor(cursor)
    rows = await pool.fetch(
        _SELECT + " AND ($3::text IS NULL OR d.id > $3) AND ($4::text IS NULL OR d.kind = $4)"
        " ORDER BY d.id LIMIT $5",
        principal.school_id,
        principal.operator_id,
        after,
        kind,
        limit + 1,
    )
    items = [_public(r) for r in rows[:limit]]
    return DevicePage(items=items, next=encode_cursor(items[-1].id) if len(rows) > limit else None)


@router.get("/devices/{device_id}", response_model=DevicePublic)
async def get_device(device_id: str, pool: PoolDep, principal: PrincipalDep) -> DevicePublic:
    """One device; 404 when it does not exist or lies outside the caller's scope."""
    row = await pool.fetchrow(
        _SELECT + " AND d.id = $3", principal.school_id, principal.operator_id, device_id
    )
    if row is None:
        raise ApiError(404, "not_found", f"设备不存在 no device {device_id}")
    return _public(row)
