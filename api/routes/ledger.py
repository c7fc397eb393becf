"""``/ledger``: the hazard ledger (隐患台账) and its closed loop; the monthly XLSX export.

Anyone may read what their scope covers. Entries are added and moved along
the loop by admin, bureau and monitor, and by a school or operator for their
own entries; closing (销号) is a verification and belongs to admin, bureau
and monitor only, and never to whoever reported the fix.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field, field_validator

from alerts.ledger import (
    CATEGORIES,
    LEVELS,
    RULES,
    SOURCES,
    STATES,
    Actor,
    LedgerError,
    NewHazard,
    add_note,
    create_entry,
    ledger_xlsx,
    local_timezone,
    month_rows,
    postpone,
    transition,
)
from api.deps import PoolDep, Principal, PrincipalDep, require_roles
from api.errors import ApiError
from api.pagination import decode_cursor, encode_cursor

__all__ = ["actor_of", "ledger_error", "refused_as_http", "router"]

router = APIRouter(tags=["ledger"])

Level = Literal["general", "major", "serious"]
Category = Literal[
    "school_bus", "fire", "public_security", "food", "laboratory", "buildings", "other"
]
Source = Literal["self_check", "special_check", "spot_check", "peer_check", "inspection"]
State = Literal["found", "registered", "rectifying", "reported", "closed"]
_VERIFIERS = ("admin", "bureau", "monitor")
#: An entry id in a path: a positive bigint (larger ones are 422, not a database error).
HazardId = Annotated[int, Path(ge=1, le=2**63 - 1)]
_STATUS = {
    "not_found": 404,
    "forbidden_transition": 409,
    "same_verifier": 409,
    "not_sent": 409,
    "already_answered": 409,
}


def ledger_error(exc: LedgerError) -> ApiError:
    """The HTTP form of a refused ledger or notice operation."""
    return ApiError(_STATUS.get(exc.code, 422), exc.code, str(exc))


@asynccontextmanager
async def refused_as_http(pool: Any) -> AsyncIterator[Any]:
    """A connection whose refused ledger or notice operations become HTTP errors."""
    async with pool.acquire() as conn:
        try:
            yield conn
        except LedgerError as exc:
            raise ledger_error(exc) from exc


def actor_of(principal: Principal) -> Actor:
    """The principal as the ledger records it."""
    return Actor(principal.name or f"{principal.role}#{principal.token_id}", principal.token_id)


class HazardCreate(BaseModel):
    """A hazard found by a check (自查/专查/抽查/互查/督查)."""

    name: str = Field(min_length=1, max_length=200, description="风险名称")
    description: str = Field(default="", max_length=4000, description="风险表述")
    level: Level = Field(description="风险等级: general 一般, major 较大, serious 重大")
    category: Category
    source: Source
    measures: str = Field(default="", max_length=4000, description="化解措施")
    responsible_unit: str = Field(default="", max_length=200, description="责任部门")
    responsible_person: str = Field(default="", max_length=100, description="责任人员")
    deadline: date | None = Field(default=None, description="限期整改 (local date)")
    school_id: str | None = None
    bus_id: str | None = None
    operator_id: str | None = None
    device_id: str | None = None
    alert_ids: list[str] = Field(default_factory=list, max_length=1000)
    note: str = Field(default="", max_length=4000)
    evidence: str = Field(default="", max_length=4000)

    @field_validator("alert_ids")
    @classmethod
    def _uuids(cls, value: list[str]) -> list[str]:
        import uuid

        for item in value:
            uuid.UUID(item)
        return value


class Transition(BaseModel):
    """Move an entry: ``to`` the next state; registering may fill the seed's columns."""

    to: State
    note: str = Field(default="", max_length=4000)
    evidence: str = Field(default="", max_length=4000)
    measures: str | None = Field(default=None, max_length=4000)
    responsible_unit: str | None = Field(default=None, max_length=200)
    responsible_person: str | None = Field(default=None, max_length=100)
    deadline: date | None = None


class Note(BaseModel):
    """An evidence note."""

    note: str = Field(default="", max_length=4000)
    evidence: str = Field(default="", max_length=4000)


class Postponement(BaseModel):
    """A new deadline with its written reason and plan."""

    deadline: date
    reason: str = Field(min_length=1, max_length=4000)


class HazardEvent(BaseModel):
    """One recorded step of an entry."""

    action: str
    from_state: str | None
    to_state: str | None
    at: datetime
    by: str
    note: str
    evidence: str


class HazardPublic(BaseModel):
    """A ledger entry; ``*_label`` are the seed's Chinese words."""

    id: int
    code: str
    name: str
    description: str
    level: Level
    level_label: str
    category: Category
    category_label: str
    measures: str
    responsible_unit: str
    responsible_person: str
    deadline: date | None
    source: str
    source_label: str
    rule: str | None
    rule_label: str | None
    state: State
    state_label: str
    overdue: bool
    supervised: bool
    supervised_at: datetime | None
    delay_reason: str | None
    school_id: str | None
    bus_id: str | None
    operator_id: str | None
    district_id: str | None
    device_id: str | None
    reported_by: str | None
    closed_by: str | None
    closed_at: datetime | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    detected_at: datetime | None
    last_detected_at: datetime | None
    condition_cleared_at: datetime | None
    details: dict[str, Any]
    alert_ids: list[str]
    events: list[HazardEvent] | None = None


class HazardPage(BaseModel):
    """One page of entries, newest first."""

    items: list[HazardPublic]
    next: str | None


_SELECT = """
SELECT h.*,
       (h.state <> 'closed' AND h.deadline <
          (now() AT TIME ZONE coalesce((SELECT timezone FROM fleet_meta LIMIT 1),
                                       'Asia/Shanghai'))::date) AS overdue,
       (SELECT coalesce(array_agg(x.alert_id::text ORDER BY x.linked_at), '{}')
          FROM hazard_alerts x WHERE x.hazard_id = h.id) AS alert_ids
  FROM hazards h
"""


def _public(row: Any, events: list[HazardEvent] | None = None) -> HazardPublic:
    details = row["details"]
    return HazardPublic(
        id=row["id"],
        code=f"YH-{row['id']:06d}",
        name=row["name"],
        description=row["description"],
        level=row["level"],
        level_label=LEVELS[row["level"]],
        category=row["category"],
        category_label=CATEGORIES[row["category"]],
        measures=row["measures"],
        responsible_unit=row["responsible_unit"],
        responsible_person=row["responsible_person"],
        deadline=row["deadline"],
        source=row["source"],
        source_label=SOURCES[row["source"]],
        rule=row["rule"],
        rule_label=RULES.get(row["rule"]) if row["rule"] else None,
        state=row["state"],
        state_label=STATES[row["state"]],
        overdue=bool(row["overdue"]),
        supervised=row["supervised"],
        supervised_at=row["supervised_at"],
        delay_reason=row["delay_reason"],
        school_id=row["school_id"],
        bus_id=row["bus_id"],
        operator_id=row["operator_id"],
        district_id=row["district_id"],
        device_id=row["device_id"],
        reported_by=row["reported_by"],
        closed_by=row["closed_by"],
        closed_at=row["closed_at"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        detected_at=row["detected_at"],
        last_detected_at=row["last_detected_at"],
        condition_cleared_at=row["condition_cleared_at"],
        details=json.loads(details) if isinstance(details, str) else dict(details),
        alert_ids=list(row["alert_ids"]),
        events=events,
    )


def _scope(principal: Principal, args: list[Any]) -> str:
    if principal.school_id is not None:
        args.append(principal.school_id)
        return f" AND h.school_id = ${len(args)}"
    if principal.operator_id is not None:
        args.append(principal.operator_id)
        return f" AND h.operator_id = ${len(args)}"
    return ""


@router.get("/ledger", response_model=HazardPage)
async def list_ledger(
    pool: PoolDep,
    principal: PrincipalDep,
    state: State | None = None,
    level: Level | None = None,
    source: Literal[Source, "monitoring"] | None = None,
    rule: Literal[
        "device_offline", "repeat_offender", "button_untested", "zero_data", "notice_unanswered"
    ]
    | None = None,
    school: str | None = None,
    operator: str | None = None,
    bus: str | None = None,
    overdue: bool | None = None,
    supervised: bool | None = None,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = None,
) -> HazardPage:
    """Ledger entries, newest first, filtered; ``overdue`` = open past the deadline."""
    args: list[Any] = []
    where = "TRUE" + _scope(principal, args)
    for column, value in (
        ("state", state),
        ("level", level),
        ("source", source),
        ("rule", rule),
        ("school_id", school),
        ("operator_id", operator),
        ("bus_id", bus),
        ("supervised", supervised),
    ):
        if value is not None:
            args.append(value)
            where += f" AND h.{column} = ${len(args)}"
    after = decode_cursor(cursor)
    if after is not None:
        if not after.isdigit():
            raise ApiError(422, "invalid_request", "游标无效 bad cursor")
        args.append(int(after))
        where += f" AND h.id < ${len(args)}"
    outer = ""
    if overdue is not None:
        outer = " WHERE overdue" if overdue else " WHERE NOT overdue"
    args.append(limit + 1)
    rows = await pool.fetch(
        f"SELECT * FROM ({_SELECT} WHERE {where}) e{outer} ORDER BY id DESC LIMIT ${len(args)}",
        *args,
    )
    items = [_public(r) for r in rows[:limit]]
    following = encode_cursor(str(items[-1].id)) if len(rows) > limit else None
    return HazardPage(items=items, next=following)


_WRITERS = require_roles("admin", "bureau", "monitor", "school", "operator")
_READERS = require_roles("admin", "bureau", "monitor")


@router.get("/ledger/export", dependencies=[_READERS], response_class=Response)
async def export_ledger(
    pool: PoolDep,
    month: str = Query(pattern=r"^20\d{2}-(0[1-9]|1[0-2])$", description="YYYY-MM"),
) -> Response:
    """The month's ledger as XLSX with the seed's Chinese columns (provincial upload)."""
    first = date.fromisoformat(f"{month}-01")
    async with pool.acquire() as conn:
        timezone = await local_timezone(conn, default="Asia/Shanghai")
        entries, events = await month_rows(conn, month=first, timezone=timezone)
    return Response(
        ledger_xlsx(entries, events),
        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        headers={"Content-Disposition": f'attachment; filename="anxiao-ledger-{month}.xlsx"'},
    )


async def _visible(pool: Any, principal: Principal, hazard_id: int) -> Any:
    args: list[Any] = [hazard_id]
    row = await pool.fetchrow(f"{_SELECT} WHERE h.id = $1{_scope(principal, args)}", *args)
    if row is None:
        raise ApiError(404, "not_found", f"隐患不存在 no ledger entry {hazard_id}")
    return row


async def _detail(pool: Any, principal: Principal, hazard_id: int) -> HazardPublic:
    row = await _visible(pool, principal, hazard_id)
    events = [
        HazardEvent(
            action=e["action"],
            from_state=e["from_state"],
            to_state=e["to_state"],
            at=e["at"],
            by=e["by_whom"],
            note=e["note"],
            evidence=e["evidence"],
        )
        for e in await pool.fetch(
            "SELECT * FROM hazard_events WHERE hazard_id = $1 ORDER BY id", hazard_id
        )
    ]
    return _public(row, events)


@router.get("/ledger/{hazard_id}", response_model=HazardPublic)
async def get_entry(hazard_id: HazardId, pool: PoolDep, principal: PrincipalDep) -> HazardPublic:
    """One entry with its whole history; 404 outside the caller's scope."""
    return await _detail(pool, principal, hazard_id)


@router.post("/ledger", status_code=201, response_model=HazardPublic, dependencies=[_WRITERS])
async def create_hazard(body: HazardCreate, pool: PoolDep, principal: PrincipalDep) -> HazardPublic:
    """Register a hazard found by a check; a school or operator only within its own scope."""
    school_id, operator_id = body.school_id, body.operator_id
    if principal.school_id is not None:
        if school_id not in (None, principal.school_id):
            raise ApiError(404, "not_found", f"学校不存在 no school {school_id}")
        school_id = principal.school_id
    if principal.operator_id is not None:
        if operator_id not in (None, principal.operator_id):
            raise ApiError(404, "not_found", f"运营单位不存在 no operator {operator_id}")
        operator_id = principal.operator_id
    await _check_refs(pool, principal, body)
    entry = NewHazard(
        **body.model_dump(exclude={"school_id", "operator_id"}),
        school_id=school_id,
        operator_id=operator_id,
    )
    async with refused_as_http(pool) as conn:
        hazard_id = await create_entry(conn, entry, by=actor_of(principal))
    return await _detail(pool, principal, hazard_id)


async def _check_refs(pool: Any, principal: Principal, body: HazardCreate) -> None:
    """Referenced ids exist and lie in the caller's scope (404 otherwise)."""
    for table, value, label in (
        ("schools", body.school_id, "学校 school"),
        ("operators", body.operator_id, "运营单位 operator"),
        ("devices", body.device_id, "设备 device"),
    ):
        if value is not None and not await pool.fetchval(
            f"SELECT 1 FROM {table} WHERE id = $1", value
        ):
            raise ApiError(404, "not_found", f"{label} 不存在: {value}")
    if body.bus_id is not None:
        bus = await pool.fetchrow(
            "SELECT school_id, operator_id FROM buses WHERE id = $1", body.bus_id
        )
        if bus is None or not principal.sees(
            school_id=bus["school_id"], operator_id=bus["operator_id"]
        ):
            raise ApiError(404, "not_found", f"校车不存在 no bus {body.bus_id}")
    if body.alert_ids:
        found = await pool.fetchval(
            "SELECT count(*) FROM alerts WHERE id = ANY($1::uuid[])", body.alert_ids
        )
        if found != len(set(body.alert_ids)):
            raise ApiError(404, "not_found", "告警不存在 an alert id is unknown")


@router.post("/ledger/{hazard_id}/transition", response_model=HazardPublic, dependencies=[_WRITERS])
async def transition_entry(
    hazard_id: HazardId, body: Transition, pool: PoolDep, principal: PrincipalDep
) -> HazardPublic:
    """Move an entry along 排查 → 登记 → 整治 → 报告 → 销账; refused moves are 409/422."""
    await _visible(pool, principal, hazard_id)
    if body.to == "closed" and principal.role not in _VERIFIERS:
        raise ApiError(
            403,
            "forbidden",
            "销号核验须由教育局、监控室或管理员进行 only bureau, monitor or admin verify and close",
        )
    fields = body.model_dump(
        include={"measures", "responsible_unit", "responsible_person", "deadline"},
        exclude_none=True,
    )
    async with refused_as_http(pool) as conn:
        await transition(
            conn,
            hazard_id,
            to=body.to,
            by=actor_of(principal),
            note=body.note,
            evidence=body.evidence,
            fields=fields,
        )
    return await _detail(pool, principal, hazard_id)


@router.post("/ledger/{hazard_id}/notes", response_model=HazardPublic, dependencies=[_WRITERS])
async def note_entry(
    hazard_id: HazardId, body: Note, pool: PoolDep, principal: PrincipalDep
) -> HazardPublic:
    """Add an evidence note."""
    await _visible(pool, principal, hazard_id)
    async with refused_as_http(pool) as conn:
        await add_note(
            conn, hazard_id, by=actor_of(principal), note=body.note, evidence=body.evidence
        )
    return await _detail(pool, principal, hazard_id)


@router.post("/ledger/{hazard_id}/postpone", response_model=HazardPublic, dependencies=[_WRITERS])
async def postpone_entry(
    hazard_id: HazardId, body: Postponement, pool: PoolDep, principal: PrincipalDep
) -> HazardPublic:
    """Move the deadline, with a written reason and plan; supervision stays."""
    await _visible(pool, principal, hazard_id)
    async with refused_as_http(pool) as conn:
        await postpone(
            conn, hazard_id, by=actor_of(principal), deadline=body.deadline, reason=body.reason
        )
    return await _detail(pool, principal, hazard_id)
