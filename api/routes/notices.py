"""``/notices``: violation notices to operators, their answers, and the delivery outbox.

An operator sees its own notices and answers them; bureau, monitor and admin
see all. ``POST /notices/webhook-secret`` hands an operator the secret its
webhook deliveries are signed with (header ``X-Anxiao-Signature``).
``GET /outbox`` shows deliveries, including the ones given up (``failed``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from alerts.ledger import local_timezone
from alerts.notices import notice_document, respond
from alerts.outbox import SIGNATURE_HEADER, TIMESTAMP_HEADER, webhook_secret
from api.deps import PoolDep, Principal, PrincipalDep, require_roles
from api.errors import ApiError
from api.pagination import decode_cursor, encode_cursor
from api.routes.ledger import actor_of, refused_as_http

__all__ = ["router"]

router = APIRouter(tags=["notices"])

NoticeState = Literal["pending", "sent", "answered", "escalated"]
NoticeId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class Violation(BaseModel):
    """One violation in a notice."""

    alert_id: str
    kind: str
    kind_label: str
    bus_id: str | None
    plate: str | None
    device_id: str
    school_id: str | None
    started_at: str | None
    ended_at: str | None
    late: bool
    details: dict[str, Any]


class Delivery(BaseModel):
    """One outbox row: a webhook call or an e-mail, and how it went."""

    id: int
    channel: Literal["webhook", "email"]
    target: str
    event: str
    notice_id: int | None
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    failed_at: datetime | None


class NoticePublic(BaseModel):
    """A violation notice as the operator and the bureau see it."""

    id: int
    operator_id: str
    operator_name: str
    state: NoticeState
    critical: bool
    opened_at: str | None
    sent_at: str | None
    answer_due_at: str | None
    response: str | None
    responded_at: str | None
    responded_by: str | None
    hazard_id: int | None
    violations: list[Violation]
    deliveries: list[Delivery] = Field(default_factory=list)


class NoticePage(BaseModel):
    """One page of notices, newest first."""

    items: list[NoticePublic]
    next: str | None


class Response(BaseModel):
    """What the operator did about the violations."""

    text: str = Field(min_length=1, max_length=4000)


class WebhookSecret(BaseModel):
    """The secret an operator's webhook deliveries are signed with, and how."""

    operator_id: str
    secret: str
    signature_header: str
    timestamp_header: str
    scheme: str


class DeliveryPage(BaseModel):
    """One page of deliveries, newest first."""

    items: list[Delivery]
    next: str | None


_DELIVERY_COLUMNS = (
    "id, channel, target, event, notice_id, state, attempts, next_attempt_at, last_error,"
    " created_at, delivered_at, failed_at"
)


async def _notice(pool: Any, notice_id: int, *, timezone: str) -> NoticePublic:
    async with pool.acquire() as conn:
        document = await notice_document(conn, notice_id, timezone=timezone)
    deliveries = await pool.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM outbox WHERE notice_id = $1 ORDER BY id", notice_id
    )
    return NoticePublic(**document, deliveries=[Delivery(**dict(d)) for d in deliveries])


async def _timezone(pool: Any) -> str:
    async with pool.acquire() as conn:
        return await local_timezone(conn, default="Asia/Shanghai")


def _scope(principal: Principal, args: list[Any]) -> str:
    if principal.school_id is not None:
        # A school sees notices about its own buses.
        args.append(principal.school_id)
        return (
            f" AND EXISTS (SELECT 1 FROM notice_items i JOIN alerts a ON a.id = i.alert_id"
            f" WHERE i.notice_id = n.id AND a.school_id = ${len(args)})"
        )
    if principal.operator_id is not None:
        args.append(principal.operator_id)
        return f" AND n.operator_id = ${len(args)}"
    return ""


@router.get("/notices", response_model=NoticePage)
async def list_notices(
    pool: PoolDep,
    principal: PrincipalDep,
    state: NoticeState | None = None,
    operator: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = None,
) -> NoticePage:
    """Notices newest first; an operator sees its own."""
    args: list[Any] = []
    where = "TRUE" + _scope(principal, args)
    for column, value in (("state", state), ("operator_id", operator)):
        if value is not None:
            args.append(value)
            where += f" AND n.{column} = ${len(args)}"
    after = decode_cursor(cursor)
    if after is not None:
        if not after.isdigit():
            raise ApiError(422, "invalid_request", "游标无效 bad cursor")
        args.append(int(after))
        where += f" AND n.id < ${len(args)}"
    args.append(limit + 1)
    ids = [
        r["id"]
        for r in await pool.fetch(
            f"SELECT n.id FROM notices n WHERE {where} ORDER BY n.id DESC LIMIT ${len(args)}",
            *args,
        )
    ]
    timezone = await _timezone(pool)
    items = [await _notice(pool, i, timezone=timezone) for i in ids[:limit]]
    following = encode_cursor(str(items[-1].id)) if len(ids) > limit else None
    return NoticePage(items=items, next=following)


async def _visible(pool: Any, principal: Principal, notice_id: int) -> None:
    args: list[Any] = [notice_id]
    scope = _scope(principal, args)
    if not await pool.fetchval(f"SELECT 1 FROM notices n WHERE n.id = $1{scope}", *args):
        raise ApiError(404, "not_found", f"通知不存在 no notice {notice_id}")


@router.get("/notices/{notice_id}", response_model=NoticePublic)
async def get_notice(notice_id: NoticeId, pool: PoolDep, principal: PrincipalDep) -> NoticePublic:
    """One notice with its violations and deliveries."""
    await _visible(pool, principal, notice_id)
    return await _notice(pool, notice_id, timezone=await _timezone(pool))


@router.post(
    "/notices/{notice_id}/response",
    response_model=NoticePublic,
    dependencies=[require_roles("operator", "admin")],
)
async def answer_notice(
    notice_id: NoticeId, body: Response, pool: PoolDep, principal: PrincipalDep
) -> NoticePublic:
    """The operator answers with what it did (整改反馈); late answers are noted in the ledger."""
    await _visible(pool, principal, notice_id)
    async with refused_as_http(pool) as conn:
        await respond(conn, notice_id, text=body.text, by=actor_of(principal))
    return await _notice(pool, notice_id, timezone=await _timezone(pool))


@router.post(
    "/notices/webhook-secret",
    response_model=WebhookSecret,
    dependencies=[require_roles("operator", "admin")],
)
async def get_webhook_secret(
    pool: PoolDep,
    principal: PrincipalDep,
    operator: str | None = None,
    rotate: bool = False,
) -> WebhookSecret:
    """The operator's webhook signing secret (created on first call; ``rotate`` replaces it)."""
    operator_id = principal.operator_id or operator
    if operator_id is None:
        raise ApiError(422, "invalid_request", "须指定运营单位 operator is required")
    if principal.operator_id is not None and operator not in (None, principal.operator_id):
        raise ApiError(404, "not_found", f"运营单位不存在 no operator {operator}")
    if not await pool.fetchval("SELECT 1 FROM operators WHERE id = $1", operator_id):
        raise ApiError(404, "not_found", f"运营单位不存在 no operator {operator_id}")
    async with pool.acquire() as conn:
        secret = await webhook_secret(conn, operator_id, rotate=rotate)
    return WebhookSecret(
        operator_id=operator_id,
        secret=secret,
        signature_header=SIGNATURE_HEADER,
        timestamp_header=TIMESTAMP_HEADER,
        scheme="sha256=HEX(HMAC-SHA256(secret, timestamp + '.' + body))",
    )


@router.get(
    "/outbox",
    response_model=DeliveryPage,
    dependencies=[require_roles("admin", "bureau", "monitor")],
)
async def list_deliveries(
    pool: PoolDep,
    state: Literal["pending", "delivered", "failed"] | None = None,
    channel: Literal["webhook", "email"] | None = None,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = None,
) -> DeliveryPage:
    """Deliveries newest first; ``state=failed`` lists the ones given up."""
    after = decode_cursor(cursor)
    if after is not None and not after.isdigit():
        raise ApiError(422, "invalid_request", "游标无效 bad cursor")
    rows = await pool.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM outbox WHERE ($1::text IS NULL OR state = $1)"
        " AND ($2::text IS NULL OR channel = $2) AND ($3::bigint IS NULL OR id < $3)"
        " ORDER BY id DESC LIMIT $4",
        state,
        channel,
        int(after) if after is not None else None,
        limit + 1,
    )
    items = [Delivery(**dict(r)) for r in rows[:limit]]
    following = encode_cursor(str(items[-1].id)) if len(rows) > limit else None
    return DeliveryPage(items=items, next=following)
