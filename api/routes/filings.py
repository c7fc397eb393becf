"""``/filings``: movement filings (报备) and detours that suppress what they cover."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, Field, model_validator

from api.deps import PoolDep, Principal, PrincipalDep
from api.errors import ApiError

__all__ = ["router"]

router = APIRouter(tags=["filings"])


class LineString(BaseModel):
    """A GeoJSON LineString in WGS-84 ``[lon, lat]``."""

    type: Literal["LineString"]
    coordinates: list[tuple[float, float]] = Field(min_length=2)

    @model_validator(mode="after")
    def _in_range(self) -> LineString:
        for lon, lat in self.coordinates:
            if not (-180 <= lon <= 180 and -90 <= lat <= 90):
                raise ValueError(f"[lon, lat] out of range: {[lon, lat]}")
        return self


class FilingCreate(BaseModel):
    """A filing as a bus operator or school submits it (contract §4)."""

    bus: str
    kind: Literal["movement", "detour"]
    from_: AwareDatetime = Field(alias="from")
    to: AwareDatetime
    reason: str = Field(min_length=1, max_length=2000)
    path: LineString | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FilingCreate:
        if self.from_ >= self.to:
            raise ValueError("from must be before to")
        if self.kind == "movement" and self.path is not None:
            raise ValueError("only a detour has a path")
        return self


class FilingPublic(BaseModel):
    """A stored filing."""

    id: int
    bus: str
    kind: Literal["movement", "detour"]
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    reason: str
    path: dict[str, Any] | None
    filed_by: str | None
    created_at: datetime


async def _bus_visible(pool: Any, principal: Principal, bus_id: str) -> None:
    row = await pool.fetchrow("SELECT school_id, operator_id FROM buses WHERE id = $1", bus_id)
    if row is None or not principal.sees(
        school_id=row["school_id"], operator_id=row["operator_id"]
    ):
        raise ApiError(404, "not_found", f"校车不存在 no bus {bus_id}")


def _public(row: Any) -> FilingPublic:
    return FilingPublic(
        id=row["id"],
        bus=row["bus_id"],
        kind=row["kind"],
        from_=row["valid_from"],
        to=row["valid_to"],
        reason=row["reason"],
        path=json.loads(row["path"]) if row["path"] else None,
        filed_by=row["filed_by"],
        created_at=row["created_at"],
    )


@router.post("/filings", status_code=201, response_model=FilingPublic, response_model_by_alias=True)
async def create_filing(
    filing: FilingCreate, pool: PoolDep, principal: PrincipalDep
) -> FilingPublic:
    """File a movement or a detour for a bus; scoped roles only for their own buses."""
    await _bus_visible(pool, principal, filing.bus)
    row = await pool.fetchrow(
        "INSERT INTO filings (bus_id, kind, valid_from, valid_to, reason, path, filed_by)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) RETURNING *",
        filing.bus,
        filing.kind,
        filing.from_,
        filing.to,
        filing.reason,
        filing.path.model_dump_json() if filing.path else None,
        principal.name or f"{principal.role}#{principal.token_id}",
    )
    if row is None:  # INSERT … RETURNING always returns the row
        raise ApiError(500, "internal", "filing not stored")
    await pool.execute("SELECT pg_notify('anxiao_filings', $1)", str(row["id"]))
    return _public(row)


@router.get("/filings", response_model=list[FilingPublic], response_model_by_alias=True)
async def list_filings(
    pool: PoolDep,
    principal: PrincipalDep,
    bus: str,
    since: AwareDatetime | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> list[FilingPublic]:
    """A bus's filings, newest first; ``since`` keeps those ending after it."""
    await _bus_visible(pool, principal, bus)
    rows = await pool.fetch(
        "SELECT * FROM filings WHERE bus_id = $1 AND ($2::timestamptz IS NULL OR valid_to > $2)"
        " ORDER BY valid_from DESC LIMIT $3",
        bus,
        since,
        limit,
    )
    return [_public(r) for r in rows]
