"""``/alerts``: the monitoring room's queue; acknowledge and resolve."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, Field

from alerts.store import acknowledge, resolve
from api.deps import PoolDep, Principal, PrincipalDep, require_roles
from api.errors import ApiError
from api.pagination import decode_cursor, encode_cursor

__all__ = ["AlertPublic", "router"]

router = APIRouter(tags=["alerts"])

Kind = Literal[
    "speeding",
    "route_deviation",
    "out_of_hours",
    "device_offline",
    "smoke_alarm",
    "panic_button",
    "device_fault",
    "clock_skew",
]


class AlertPublic(BaseModel):
    """An alert as contract §3 shows it."""

    id: str
    kind: Kind
    severity: Literal["minor", "major", "critical"]
    state: Literal["active", "cleared"]
    acknowledged: bool
    late: bool
    device_id: str
    bus_id: str | None
    school_id: str | None
    operator_id: str | None
    district_id: str | None
    started_at: datetime
    ended_at: datetime | None
    details: dict[str, Any]
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolution_note: str | None = None


class AlertPage(BaseModel):
    """One page of alerts, newest first."""

    items: list[AlertPublic]
    next: str | None


class Decision(BaseModel):
    """A person's note on an acknowledgement or resolution."""

    note: str = Field(default="", max_length=2000)


_COLUMNS = (
    "id, kind, severity, state, acknowledged, late, device_id, bus_id, school_id, operator_id,"
    " district_id, started_at, ended_at, details, acknowledged_at, acknowledged_by, resolved_at,"
    " resolved_by, resolution_note"
)


def alert_public(row: Any) -> AlertPublic:
    """An alerts row as the API shows it."""
    data = dict(row)
    data["id"] = str(data["id"])
    if isinstance(data["details"], str):
        data["details"] = json.loads(data["details"])
    return AlertPublic(**data)


def _scope_sql(principal: Principal, args: list[Any]) -> str:
    if principal.school_id is not None:
        args.append(principal.school_id)
        return f" AND school_id = ${len(args)}"
    if principal.operator_id is not None:
        args.append(principal.operator_id)
        return f" AND operator_id = ${len(args)}"
    return ""


@router.get("/alerts", response_model=AlertPage)
async def list_alerts(
    pool: PoolDep,
    principal: PrincipalDep,
    kind: Kind | None = None,
    state: Literal["active", "cleared"] | None = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    bus: str | None = None,
    device: str | None = None,
    school: str | None = None,
    operator: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = None,
) -> AlertPage:
    """Alerts newest first; ``since``/``until`` filter ``started_at``."""
    args: list[Any] = []
    where = "TRUE" + _scope_sql(principal, args)
    for column, value in (
        ("kind", kind),
        ("state", state),
        ("bus_id", bus),
        ("device_id", device),
        ("school_id", school),
        ("operator_id", operator),
    ):
        if value is not None:
            args.append(value)
            where += f" AND {column} = ${len(args)}"
    if since is not None:
        args.append(since)
        where += f" AND started_at >= ${len(args)}"
    if until is not None:
        args.append(until)
        where += f" AND started_at < ${len(args)}"
    after = decode_cursor(cursor)
    if after is not None:
        stamp, _, alert_id = after.partition("|")
        try:
            key = (datetime.fromisoformat(stamp), uuid.UUID(alert_id))
        except ValueError as exc:
            raise ApiError(422, "invalid_request", "游标无效 bad cursor") from exc
        args.extend(key)
        where += f" AND (started_at, id) < (${len(args) - 1}, ${len(args)})"
    args.append(limit + 1)
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM alerts WHERE {where}"
        f" ORDER BY started_at DESC, id DESC LIMIT ${len(args)}",
        *args,
    )
    items = [alert_public(r) for r in rows[:limit]]
    following = None
    if len(rows) > limit:
        last = items[-1]
        following = encode_cursor(f"{last.started_at.isoformat()}|{last.id}")
    return AlertPage(items=items, next=following)


async def _visible(pool: Any, principal: Principal, alert_id: str) -> Any:
    try:
        key = uuid.UUID(alert_id)
    except ValueError:
        key = None
    row = None
    if key is not None:
        args: list[Any] = [key]
        scope = _scope_sql(principal, args)
        row = await pool.fetchrow(
            f"SELECT {_COLUMNS} FROM alerts WHERE id = $1{scope}",
            *args,
        )
    if row is None:
        raise ApiError(404, "not_found", f"告警不存在 no alert {alert_id}")
    return row


@router.get("/alerts/{alert_id}", response_model=AlertPublic)
async def get_alert(alert_id: str, pool: PoolDep, principal: PrincipalDep) -> AlertPublic:
    """One alert; 404 outside the caller's scope."""
    return alert_public(await _visible(pool, principal, alert_id))


_DECIDERS = require_roles("admin", "monitor")


@router.post("/alerts/{alert_id}/ack", response_model=AlertPublic, dependencies=[_DECIDERS])
async def ack_alert(
    alert_id: str, decision: Decision, pool: PoolDep, principal: PrincipalDep
) -> AlertPublic:
    """Acknowledge an alert (monitor, admin)."""
    row = await _visible(pool, principal, alert_id)
    async with pool.acquire() as conn, conn.transaction():
        await acknowledge(conn, row["id"], by=_who(principal), note=decision.note or None)
    return alert_public(await _visible(pool, principal, alert_id))


@router.post("/alerts/{alert_id}/resolve", response_model=AlertPublic, dependencies=[_DECIDERS])
async def resolve_alert(
    alert_id: str, decision: Decision, pool: PoolDep, principal: PrincipalDep
) -> AlertPublic:
    """Resolve an alert (monitor, admin): it is cleared; the only way a panic alert clears."""
    row = await _visible(pool, principal, alert_id)
    async with pool.acquire() as conn, conn.transaction():
        await resolve(conn, row["id"], by=_who(principal), note=decision.note or None)
    return alert_public(await _visible(pool, principal, alert_id))


def _who(principal: Principal) -> str:
    return principal.name or f"{principal.role}#{principal.token_id}"
