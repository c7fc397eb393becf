"""``GET /live/buses``: where every visible bus is now."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import PoolDep, PrincipalDep

__all__ = ["router"]

router = APIRouter(tags=["live"])


class BusPosition(BaseModel):
    """A bus's last known fix and its open alert kinds."""

    bus_id: str
    plate: str
    school_id: str | None
    operator_id: str | None
    device_id: str | None
    ts: datetime | None
    lon: float | None
    lat: float | None
    speed_kmh: float | None
    heading_deg: float | None
    open_alerts: list[str]


# The latest fix per GPS device comes from the (device_key, ts) unique index,
# one short index scan per device.
_LIVE = """
SELECT b.id AS bus_id, b.plate, b.school_id, b.operator_id, d.id AS device_id,
       f.ts, f.lon, f.lat, f.speed_kmh, f.heading_deg,
       coalesce((SELECT array_agg(DISTINCT a.kind ORDER BY a.kind) FROM alerts a
                  WHERE a.bus_id = b.id AND a.state = 'active'), '{}') AS open_alerts
  FROM buses b
  LEFT JOIN devices d ON d.bus_id = b.id AND d.kind = 'gps' AND d.retired_at IS NULL
  LEFT JOIN LATERAL (
        SELECT ts, lon, lat, speed_kmh, heading_deg FROM gps_fixes g
         WHERE g.device_key = d.key ORDER BY g.ts DESC LIMIT 1) f ON true
 WHERE ($1::text IS NULL OR b.school_id = $1) AND ($2::text IS NULL OR b.operator_id = $2)
 ORDER BY b.id, f.ts DESC NULLS LAST
"""


@router.get("/live/buses", response_model=list[BusPosition])
async def live_buses(pool: PoolDep, principal: PrincipalDep) -> list[BusPosition]:
    """Last known position, speed and time, and open alert kinds, of every visible bus."""
    rows = await pool.fetch(_LIVE, principal.school_id, principal.operator_id)
    seen: set[str] = set()
    out = []
    for row in rows:  # a bus with two GPS devices shows its freshest fix
        if row["bus_id"] in seen:
            continue
        seen.add(row["bus_id"])
        out.append(BusPosition(**{**dict(row), "open_alerts": list(row["open_alerts"])}))
    return out
