"""Violation notices (违规通知) to bus operators, and their answers.

Each major violation of a bus (``speeding``, ``route_deviation``,
``out_of_hours``) goes into exactly one notice to the bus's operator
(``notice_items`` is keyed by the alert). Ordinary violations of one operator
are collected into one pending notice for ``batch_window_s`` from its first
violation; a critical one (speeding at least ``critical_over_ratio`` over the
limit: 50 % by default, the threshold of 道路交通安全法 §99) gets a notice of
its own at once. Sending a notice writes its outbox rows (webhook, e-mail) in
the same transaction. An operator answers with what it did; a notice left
unanswered past ``answer_due_at`` escalates into the hazard ledger.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from alerts.ledger import Actor, Detection, LedgerError, add_note, record_detections
from alerts.outbox import email_message, enqueue
from core.db import AsyncConnection

__all__ = [
    "KIND_LABELS",
    "VIOLATIONS",
    "NoticePolicy",
    "NoticeRound",
    "collect_notices",
    "escalate_overdue",
    "is_critical",
    "notice_document",
    "respond",
]

VIOLATIONS: Final = ("speeding", "route_deviation", "out_of_hours")
KIND_LABELS: Final = {
    "speeding": "超速",
    "route_deviation": "偏离核定路线",
    "out_of_hours": "非接送时段行驶",
}
_LOCK: Final = 0x616E78_6E6F74


@dataclass(frozen=True, slots=True)
class NoticePolicy:
    """Batching, answering and escalation of notices."""

    batch_window_s: int = 3600
    answer_window_s: int = 48 * 3600
    critical_over_ratio: float = 0.5
    email_sender: str = "anxiao@localhost"
    timezone: str = "Asia/Shanghai"
    escalation_deadline_days: int = 7


@dataclass(slots=True)
class NoticeRound:
    """What one :func:`collect_notices` call did."""

    added: int = 0
    sent: list[int] = field(default_factory=list)
    deliveries: int = 0


def is_critical(kind: str, details: Mapping[str, Any], *, over_ratio: float) -> bool:
    """Whether a violation is critical (sent at once): speeding ``over_ratio`` over its limit."""
    if kind != "speeding":
        return False
    speed, limit = details.get("max_speed_kmh"), details.get("limit_kmh")
    if not isinstance(speed, int | float) or not isinstance(limit, int | float) or limit <= 0:
        return False
    return bool(speed >= limit * (1 + over_ratio))


async def collect_notices(
    conn: AsyncConnection, *, now: datetime, policy: NoticePolicy
) -> NoticeRound:
    """Put new violations into notices and send the notices that are due, in one transaction."""
    done = NoticeRound()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        fresh = await conn.fetch(
            """
            SELECT a.id, a.operator_id, a.kind, a.details
              FROM alerts a LEFT JOIN notice_items n ON n.alert_id = a.id
             WHERE n.alert_id IS NULL AND a.kind = ANY($1::text[])
               AND a.bus_id IS NOT NULL AND a.operator_id IS NOT NULL
             ORDER BY a.started_at, a.id
            """,
            list(VIOLATIONS),
        )
        for alert in fresh:
            details = _json(alert["details"])
            if is_critical(alert["kind"], details, over_ratio=policy.critical_over_ratio):
                notice_id = await conn.fetchval(
                    "INSERT INTO notices (operator_id, critical, opened_at) VALUES ($1, true, $2)"
                    " RETURNING id",
                    alert["operator_id"],
                    now,
                )
            else:
                notice_id = await conn.fetchval(
                    "WITH new AS (INSERT INTO notices (operator_id, opened_at) VALUES ($1, $2)"
                    " ON CONFLICT (operator_id) WHERE state = 'pending' AND NOT critical"
                    " DO NOTHING RETURNING id)"
                    " SELECT id FROM new UNION ALL SELECT id FROM notices"
                    " WHERE operator_id = $1 AND state = 'pending' AND NOT critical",
                    alert["operator_id"],
                    now,
                )
            await conn.execute(
                "INSERT INTO notice_items (alert_id, notice_id) VALUES ($1, $2)",
                alert["id"],
                notice_id,
            )
            done.added += 1
        due = await conn.fetch(
            "SELECT id FROM notices WHERE state = 'pending'"
            " AND (critical OR opened_at <= $1::timestamptz - make_interval(secs => $2))"
            " ORDER BY id",
            now,
            policy.batch_window_s,
        )
        for row in due:
            done.deliveries += await _send(conn, row["id"], now=now, policy=policy)
            done.sent.append(row["id"])
    return done


async def notice_document(
    conn: AsyncConnection, notice_id: int, *, timezone: str
) -> dict[str, Any]:
    """A notice as JSON: the webhook body and the API's view."""
    tz = ZoneInfo(timezone)
    row = await conn.fetchrow(
        "SELECT n.*, o.name AS operator_name FROM notices n"
        " JOIN operators o ON o.id = n.operator_id WHERE n.id = $1",
        notice_id,
    )
    if row is None:
        raise LedgerError("not_found", f"通知不存在 no notice {notice_id}")
    items = await conn.fetch(
        "SELECT a.id, a.kind, a.severity, a.bus_id, b.plate, a.device_id, a.school_id,"
        " a.started_at, a.ended_at, a.details, a.late FROM notice_items i"
        " JOIN alerts a ON a.id = i.alert_id LEFT JOIN buses b ON b.id = a.bus_id"
        " WHERE i.notice_id = $1 ORDER BY a.started_at, a.id",
        notice_id,
    )
    return {
        "id": row["id"],
        "operator_id": row["operator_id"],
        "operator_name": row["operator_name"],
        "state": row["state"],
        "critical": row["critical"],
        "opened_at": _local(row["opened_at"], tz),
        "sent_at": _local(row["sent_at"], tz),
        "answer_due_at": _local(row["answer_due_at"], tz),
        "response": row["response"],
        "responded_at": _local(row["responded_at"], tz),
        "responded_by": row["responded_by"],
        "hazard_id": row["hazard_id"],
        "violations": [
            {
                "alert_id": str(i["id"]),
                "kind": i["kind"],
                "kind_label": KIND_LABELS[i["kind"]],
                "bus_id": i["bus_id"],
                "plate": i["plate"],
                "device_id": i["device_id"],
                "school_id": i["school_id"],
                "started_at": _local(i["started_at"], tz),
                "ended_at": _local(i["ended_at"], tz),
                "late": i["late"],
                "details": _json(i["details"]),
            }
            for i in items
        ],
    }


async def _send(
    conn: AsyncConnection, notice_id: int, *, now: datetime, policy: NoticePolicy
) -> int:
    row = await conn.fetchrow(
        "UPDATE notices SET state = 'sent', sent_at = $2,"
        " answer_due_at = $2::timestamptz + make_interval(secs => $3), updated_at = now()"
        " WHERE id = $1 RETURNING operator_id",
        notice_id,
        now,
        policy.answer_window_s,
    )
    assert row is not None
    contact = await conn.fetchrow(
        "SELECT webhook, email FROM operators WHERE id = $1", row["operator_id"]
    )
    document = await notice_document(conn, notice_id, timezone=policy.timezone)
    deliveries = 0
    if contact is not None and contact["webhook"]:
        body = {"type": "violation_notice", "message": _summary(document), "notice": document}
        await enqueue(
            conn,
            channel="webhook",
            target=contact["webhook"],
            event="notice",
            body=json.dumps(body, ensure_ascii=False, default=str).encode(),
            notice_id=notice_id,
            operator_id=row["operator_id"],
        )
        deliveries += 1
    if contact is not None and contact["email"]:
        n = len(document["violations"])
        level = "【紧急】" if document["critical"] else ""
        message = email_message(
            sender=policy.email_sender,
            to=[contact["email"]],
            subject=f"{level}安校校车违规通知 第{notice_id}号（{n} 起） notice #{notice_id}",
            text=_email_text(document),
        )
        await enqueue(
            conn,
            channel="email",
            target=contact["email"],
            event="notice",
            body=message,
            notice_id=notice_id,
            operator_id=row["operator_id"],
        )
        deliveries += 1
    return deliveries


def _summary(document: Mapping[str, Any]) -> str:
    counts: dict[str, int] = {}
    for v in document["violations"]:
        counts[v["kind_label"]] = counts.get(v["kind_label"], 0) + 1
    parts = "，".join(f"{k} {n} 起" for k, n in counts.items())
    return (
        f"{document['operator_name']}：贵单位校车违规 {parts}，请于 {document['answer_due_at']} 前"
        "通过安校平台反馈整改情况。"
    )


def _email_text(document: Mapping[str, Any]) -> str:
    lines = [
        _summary(document),
        "",
        f"通知编号 notice: {document['id']}",
        f"反馈期限 answer by: {document['answer_due_at']}",
        f"反馈方式 answer at: POST /api/v1/notices/{document['id']}/response",
        "",
    ]
    for i, v in enumerate(document["violations"], 1):
        d = v["details"]
        extra = ""
        if v["kind"] == "speeding":
            extra = f"，最高 {d.get('max_speed_kmh')} km/h，限速 {d.get('limit_kmh')} km/h"
        elif v["kind"] == "route_deviation":
            extra = f"，最远偏离 {d.get('max_distance_m')} m"
        elif v["kind"] == "out_of_hours":
            extra = f"，行驶 {d.get('distance_m')} m"
        lines.append(
            f"{i}. {v['plate'] or v['bus_id']} {v['kind_label']} {v['started_at']}"
            f" — {v['ended_at'] or '进行中'}{extra}"
        )
    lines += ["", "此邮件由安校系统自动发送 sent by anxiao."]
    return "\n".join(lines)


async def respond(conn: AsyncConnection, notice_id: int, *, text: str, by: Actor) -> str:
    """Record an operator's answer (what it did); return the notice's new state.

    A notice that already escalated stays escalated; the answer is noted on its ledger entry.
    """
    if not text.strip():
        raise LedgerError("note_required", "反馈内容不能为空 the answer must say what was done")
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT state, hazard_id FROM notices WHERE id = $1 FOR UPDATE", notice_id
        )
        if row is None:
            raise LedgerError("not_found", f"通知不存在 no notice {notice_id}")
        if row["state"] == "pending":
            raise LedgerError(
                "not_sent", "通知尚未发出，暂不能反馈 the notice has not been sent yet"
            )
        if row["state"] == "answered":
            raise LedgerError("already_answered", "该通知已反馈 the notice was already answered")
        state = "answered" if row["state"] == "sent" else row["state"]
        await conn.execute(
            "UPDATE notices SET state = $2, response = $3, responded_at = now(),"
            " responded_by = $4, updated_at = now() WHERE id = $1",
            notice_id,
            state,
            text,
            by.name,
        )
        if row["hazard_id"] is not None:
            await add_note(
                conn, row["hazard_id"], by=by, note=f"运营单位反馈 operator's answer: {text}"
            )
            await conn.execute(
                "UPDATE hazards SET condition_cleared_at = coalesce(condition_cleared_at, now())"
                " WHERE id = $1",
                row["hazard_id"],
            )
    return state


async def escalate_overdue(
    conn: AsyncConnection, *, now: datetime, policy: NoticePolicy
) -> list[int]:
    """Turn notices unanswered past their deadline into ledger entries; return the notice ids."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        rows = await conn.fetch(
            """
            SELECT n.id, n.operator_id, n.critical, n.answer_due_at, o.name,
                   array_agg(i.alert_id) AS alert_ids, count(i.alert_id) AS n
              FROM notices n JOIN operators o ON o.id = n.operator_id
              LEFT JOIN notice_items i ON i.notice_id = n.id
             WHERE n.state = 'sent' AND n.answer_due_at <= $1
             GROUP BY n.id, o.name ORDER BY n.id
            """,
            now,
        )
        if not rows:
            return []
        deadline: date = now.astimezone(ZoneInfo(policy.timezone)).date() + timedelta(
            days=policy.escalation_deadline_days
        )
        detections = [
            Detection(
                rule="notice_unanswered",
                subject=str(r["id"]),
                anchor="1",
                name=f"违规通知逾期未反馈：{r['name']} 第{r['id']}号",
                description=f"{r['name']} 未在 {r['answer_due_at'].isoformat()} 前反馈第{r['id']}号"
                f"违规通知（{r['n']} 起违规） — notice #{r['id']} unanswered by its deadline",
                level="major" if r["critical"] else "general",
                category="school_bus",
                responsible_unit=r["name"],
                operator_id=r["operator_id"],
                alert_ids=[a for a in r["alert_ids"] if a is not None],
                details={"notice_id": r["id"], "violations": r["n"]},
            )
            for r in rows
        ]
        await record_detections(
            conn,
            "notice_unanswered",
            detections,
            now=now,
            deadline=deadline,
            clear_missing=False,
        )
        await conn.execute(
            """
            UPDATE notices n SET state = 'escalated', escalated_at = $2, updated_at = now(),
                   hazard_id = h.id
              FROM hazards h
             WHERE n.id = ANY($1::bigint[]) AND h.rule = 'notice_unanswered'
               AND h.subject = n.id::text
            """,
            [r["id"] for r in rows],
            now,
        )
    return [r["id"] for r in rows]


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        loaded: dict[str, Any] = json.loads(value)
        return loaded
    return dict(value or {})


def _local(value: datetime | None, tz: ZoneInfo) -> str | None:
    return value.astimezone(tz).isoformat() if value is not None else None
