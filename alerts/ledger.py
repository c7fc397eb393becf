"""The hazard ledger (隐患台账): entries, their closed loop, and automatic entries.

An entry carries seed 002's columns (风险名称 name, 风险表述 description,
风险等级 level, 化解措施 measures, 责任部门 responsible unit, 责任人员
responsible person) plus a deadline (限期整改), its source and its linked
alerts. Seed 001's closed loop::

    found ─register─▶ registered ─rectify─▶ rectifying ─report─▶ reported ─close─▶ closed
    (排查)            (登记)                (整治)       ◀─reject─ (报告)           (销账)

Every transition is an ``hazard_events`` row (who, when, note, evidence);
anything else is refused with :class:`LedgerError`. Closing (销号) needs a
verifier other than the principal who reported the fix. Entries past their
deadline, and every serious (重大) one, are put under supervision (挂牌督办).

Monitoring rules add entries on their own (:func:`scan_monitoring`): each
detection has a rule, a subject (device, bus, school) and an anchor (the
episode it belongs to), so an entry is created once, updated while the
condition lasts (new alerts linked to it) and marked cleared when it stops.
Closing stays a human decision.

asyncpg throughout: the API and the closing loop both call this.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from alerts._xlsx import workbook
from core.db import AsyncConnection
from core.errors import AnxiaoError

__all__ = [
    "CATEGORIES",
    "LEVELS",
    "MONITOR",
    "RULES",
    "SOURCES",
    "STATES",
    "TRANSITIONS",
    "Actor",
    "Detection",
    "LedgerError",
    "LedgerRules",
    "NewHazard",
    "add_note",
    "create_entry",
    "flag_overdue",
    "ledger_xlsx",
    "local_timezone",
    "month_rows",
    "postpone",
    "record_detections",
    "scan_monitoring",
    "transition",
]

#: 风险等级: stored code → the seed's word.
LEVELS: Final = {"general": "一般", "major": "较大", "serious": "重大"}
#: Categories named in the seeds.
CATEGORIES: Final = {
    "school_bus": "校车和交通",
    "fire": "消防",
    "public_security": "治安",
    "food": "食品",
    "laboratory": "实验室和危化品",
    "buildings": "校舍和设施",
    "other": "其他",
}
SOURCES: Final = {
    "self_check": "自查",
    "special_check": "专查",
    "spot_check": "抽查",
    "peer_check": "互查",
    "inspection": "督查",
    "monitoring": "监测规则",
}
STATES: Final = {
    "found": "已排查",
    "registered": "已登记",
    "rectifying": "整治中",
    "reported": "已报告整改",
    "closed": "已销号",
}
RULES: Final = {
    "device_offline": "设备离线超时",
    "repeat_offender": "屡次违规校车",
    "button_untested": "一键报警未按期测试",
    "zero_data": "零数据学校",
    "notice_unanswered": "违规通知逾期未反馈",
}
#: state → {target state: action}; everything else is refused.
TRANSITIONS: Final[Mapping[str, Mapping[str, str]]] = {
    "found": {"registered": "register"},
    "registered": {"rectifying": "rectify"},
    "rectifying": {"reported": "report"},
    "reported": {"closed": "close", "rectifying": "reject"},
    "closed": {},
}
_VIOLATIONS: Final = ("speeding", "route_deviation", "out_of_hours")
#: Transaction-level advisory lock: one monitoring scan at a time.
_SCAN_LOCK: Final = 0x616E78_6C6564


class LedgerError(AnxiaoError):
    """A ledger operation was refused; ``code`` is stable, the message Chinese first."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who does something: a display name and, for API callers, the token id."""

    name: str
    token_id: int | None = None


#: The monitoring rules themselves, as the author of automatic entries.
MONITOR: Final = Actor("监测规则 monitoring")


@dataclass(frozen=True, slots=True)
class NewHazard:
    """A ledger entry as a person registers it."""

    name: str
    level: str
    category: str
    source: str
    description: str = ""
    measures: str = ""
    responsible_unit: str = ""
    responsible_person: str = ""
    deadline: date | None = None
    school_id: str | None = None
    bus_id: str | None = None
    operator_id: str | None = None
    device_id: str | None = None
    alert_ids: Sequence[Any] = ()
    note: str = ""
    evidence: str = ""


_INSERT = """
INSERT INTO hazards (name, description, level, category, measures, responsible_unit,
                     responsible_person, deadline, source, school_id, bus_id, operator_id,
                     device_id, district_id, created_by, supervised, supervised_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
        coalesce($10, (SELECT school_id FROM buses WHERE id = $11),
                      (SELECT coalesce(d.school_id, b.school_id) FROM devices d
                         LEFT JOIN buses b ON b.id = d.bus_id WHERE d.id = $13)),
        $11,
        coalesce($12, (SELECT operator_id FROM buses WHERE id = $11)),
        $13,
        (SELECT district_id FROM schools WHERE id = coalesce($10,
            (SELECT school_id FROM buses WHERE id = $11),
            (SELECT coalesce(d.school_id, b.school_id) FROM devices d
               LEFT JOIN buses b ON b.id = d.bus_id WHERE d.id = $13))),
        $14, $3 = 'serious', CASE WHEN $3 = 'serious' THEN now() END)
RETURNING id
"""


async def create_entry(conn: AsyncConnection, entry: NewHazard, *, by: Actor) -> int:
    """Add an entry found by a person (state ``found``); return its id.

    A serious (重大) entry is under supervision from the start.
    """
    _check_code("level", entry.level, LEVELS)
    _check_code("category", entry.category, CATEGORIES)
    _check_code("source", entry.source, SOURCES)
    if entry.source == "monitoring":
        raise LedgerError(
            "invalid_source", "监测规则来源的条目由系统自动生成 monitoring entries are automatic"
        )
    async with conn.transaction():
        hazard_id: int = await conn.fetchval(
            _INSERT,
            entry.name,
            entry.description,
            entry.level,
            entry.category,
            entry.measures,
            entry.responsible_unit,
            entry.responsible_person,
            entry.deadline,
            entry.source,
            entry.school_id,
            entry.bus_id,
            entry.operator_id,
            entry.device_id,
            by.name,
        )
        await _link(conn, hazard_id, entry.alert_ids)
        await _event(
            conn, hazard_id, "create", None, "found", by, note=entry.note, evidence=entry.evidence
        )
    return hazard_id


def _check_code(what: str, value: str, codes: Mapping[str, str]) -> None:
    if value not in codes:
        choices = ", ".join(f"{k} ({v})" for k, v in codes.items())
        raise LedgerError("invalid_request", f"{what} 无效 unknown {what} {value!r}: {choices}")


async def _link(conn: AsyncConnection, hazard_id: int, alert_ids: Sequence[Any]) -> int:
    if not alert_ids:
        return 0
    linked = await conn.fetch(
        "INSERT INTO hazard_alerts (hazard_id, alert_id)"
        " SELECT $1, a.id FROM alerts a WHERE a.id = ANY($2::uuid[])"
        " ON CONFLICT DO NOTHING RETURNING alert_id",
        hazard_id,
        [str(a) for a in alert_ids],
    )
    return len(linked)


async def _event(
    conn: AsyncConnection,
    hazard_id: int,
    action: str,
    from_state: str | None,
    to_state: str | None,
    by: Actor,
    *,
    note: str = "",
    evidence: str = "",
    at: datetime | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO hazard_events (hazard_id, action, from_state, to_state, by_whom, by_token,"
        " note, evidence, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, coalesce($9, now()))",
        hazard_id,
        action,
        from_state,
        to_state,
        by.name,
        by.token_id,
        note,
        evidence,
        at,
    )


#: Fields a person may fill in while registering an entry.
REGISTER_FIELDS: Final = ("measures", "responsible_unit", "responsible_person", "deadline")


async def transition(
    conn: AsyncConnection,
    hazard_id: int,
    *,
    to: str,
    by: Actor,
    note: str = "",
    evidence: str = "",
    fields: Mapping[str, Any] | None = None,
) -> str:
    """Move an entry along the closed loop; return the action taken.

    ``fields`` (only when registering) fills the seed's columns the entry
    still lacks. Refused with :class:`LedgerError`: an unknown entry
    (``not_found``), a move the loop does not allow (``forbidden_transition``),
    registering without measures, responsible unit and person and deadline
    (``missing_fields``), reporting or rejecting without a note
    (``note_required``), closing by the principal who reported the fix
    (``same_verifier``).
    """
    if to not in STATES:
        _check_code("state", to, STATES)
    updates = dict(fields or {})
    unknown = sorted(set(updates) - set(REGISTER_FIELDS))
    if unknown:
        raise LedgerError("invalid_request", f"不能修改的字段 fields not settable: {unknown}")
    async with conn.transaction():
        row = await conn.fetchrow("SELECT * FROM hazards WHERE id = $1 FOR UPDATE", hazard_id)
        if row is None:
            raise LedgerError("not_found", f"隐患不存在 no ledger entry {hazard_id}")
        state = row["state"]
        action = TRANSITIONS[state].get(to)
        if action is None:
            allowed = "、".join(f"{STATES[s]} {s}" for s in TRANSITIONS[state]) or "无 none"
            raise LedgerError(
                "forbidden_transition",
                f"不允许从「{STATES[state]}」变为「{STATES[to]}」，可变为：{allowed}"
                f" — transition {state} → {to} is not allowed",
            )
        if updates and action != "register":
            raise LedgerError(
                "invalid_request", "只有登记时可填写台账字段 ledger fields are set when registering"
            )
        merged = {name: updates.get(name, row[name]) for name in REGISTER_FIELDS}
        if action == "register":
            missing = [n for n in REGISTER_FIELDS if merged[n] in (None, "")]
            if missing:
                raise LedgerError(
                    "missing_fields",
                    "登记须填写化解措施、责任部门、责任人员和整改期限 registering needs "
                    f"measures, responsible unit and person and a deadline; missing: {missing}",
                )
        if action in ("report", "reject") and not note.strip():
            raise LedgerError(
                "note_required",
                "须写明整改情况或退回理由 a note is required: what was done, or why it goes back",
            )
        if action == "close" and _same_principal(row, by):
            raise LedgerError(
                "same_verifier",
                f"销号须由报告整改者（{row['reported_by']}）以外的人核验 — an entry is closed"
                " only by someone other than who reported it rectified",
            )
        await conn.execute(
            """
            UPDATE hazards SET state = $2, measures = $3, responsible_unit = $4,
                   responsible_person = $5, deadline = $6, updated_at = now(),
                   reported_by = CASE $7 WHEN 'report' THEN $8 WHEN 'reject' THEN NULL
                                 ELSE reported_by END,
                   reported_by_token = CASE $7 WHEN 'report' THEN $9 WHEN 'reject' THEN NULL
                                       ELSE reported_by_token END,
                   closed_by = CASE WHEN $7 = 'close' THEN $8 END,
                   closed_at = CASE WHEN $7 = 'close' THEN now() END
             WHERE id = $1
            """,
            hazard_id,
            to,
            merged["measures"],
            merged["responsible_unit"],
            merged["responsible_person"],
            merged["deadline"],
            action,
            by.name,
            by.token_id,
        )
        await _event(conn, hazard_id, action, state, to, by, note=note, evidence=evidence)
    return action


def _same_principal(row: Any, by: Actor) -> bool:
    if row["reported_by_token"] is not None and by.token_id is not None:
        return bool(row["reported_by_token"] == by.token_id)
    return bool(row["reported_by"] == by.name)


async def add_note(
    conn: AsyncConnection, hazard_id: int, *, by: Actor, note: str, evidence: str = ""
) -> None:
    """Add an evidence note (photo reference, inspection record) to an entry."""
    if not (note.strip() or evidence.strip()):
        raise LedgerError("note_required", "备注或证据不能为空 a note or evidence is required")
    async with conn.transaction():
        state = await conn.fetchval("SELECT state FROM hazards WHERE id = $1", hazard_id)
        if state is None:
            raise LedgerError("not_found", f"隐患不存在 no ledger entry {hazard_id}")
        await conn.execute("UPDATE hazards SET updated_at = now() WHERE id = $1", hazard_id)
        await _event(conn, hazard_id, "note", state, state, by, note=note, evidence=evidence)


async def postpone(
    conn: AsyncConnection, hazard_id: int, *, by: Actor, deadline: date, reason: str
) -> None:
    """Move an open entry's deadline with a written reason and plan (seed 002: 说明情况)."""
    if not reason.strip():
        raise LedgerError(
            "note_required", "延期须写明原因和整改计划 a postponement needs a reason and a plan"
        )
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT state, deadline FROM hazards WHERE id = $1 FOR UPDATE", hazard_id
        )
        if row is None:
            raise LedgerError("not_found", f"隐患不存在 no ledger entry {hazard_id}")
        if row["state"] == "closed":
            raise LedgerError(
                "forbidden_transition", "已销号的隐患不能延期 a closed entry cannot be postponed"
            )
        await conn.execute(
            "UPDATE hazards SET deadline = $2, delay_reason = $3, updated_at = now() WHERE id = $1",
            hazard_id,
            deadline,
            reason,
        )
        note = f"整改期限 {row['deadline']} → {deadline}: {reason}"
        await _event(conn, hazard_id, "postpone", row["state"], row["state"], by, note=note)


async def flag_overdue(conn: AsyncConnection, *, today: date) -> list[int]:
    """Put open entries whose deadline has passed under supervision (挂牌督办); return their ids."""
    async with conn.transaction():
        rows = await conn.fetch(
            "UPDATE hazards SET supervised = true, supervised_at = now(), updated_at = now()"
            " WHERE state <> 'closed' AND deadline < $1 AND NOT supervised RETURNING id, state",
            today,
        )
        for r in rows:
            await _event(
                conn,
                r["id"],
                "supervise",
                r["state"],
                r["state"],
                MONITOR,
                note="逾期未整改，挂牌督办",
            )
    return [r["id"] for r in rows]


# ------------------------------------------------------------ automatic entries
@dataclass(frozen=True, slots=True)
class LedgerRules:
    """Thresholds of the monitoring rules."""

    offline_after_s: int = 24 * 3600
    repeat_violations: int = 3
    repeat_window_days: int = 7
    button_test_days: int = 90
    deadline_days: int = 7


@dataclass(frozen=True, slots=True)
class Detection:
    """One condition a monitoring rule sees now; ``anchor`` names its episode."""

    rule: str
    subject: str
    anchor: str
    name: str
    description: str
    level: str
    category: str
    responsible_unit: str = ""
    school_id: str | None = None
    bus_id: str | None = None
    operator_id: str | None = None
    district_id: str | None = None
    device_id: str | None = None
    alert_ids: Sequence[Any] = ()
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ScanCounts:
    """What one rule's scan did."""

    created: list[int] = field(default_factory=list)
    updated: int = 0
    cleared: int = 0


async def record_detections(
    conn: AsyncConnection,
    rule: str,
    detections: Sequence[Detection],
    *,
    now: datetime,
    deadline: date,
    clear_missing: bool = True,
) -> ScanCounts:
    """Create or update one entry per detection; mark ongoing ones no longer seen as cleared.

    Call inside a transaction. An ongoing entry (same rule and subject, not
    yet cleared) is updated; otherwise the entry keyed ``rule:subject:anchor``
    is created, or found again if that episode was seen before.
    """
    counts = ScanCounts()
    ongoing = {
        r["subject"]: r["id"]
        for r in await conn.fetch(
            "SELECT id, subject FROM hazards WHERE rule = $1 AND condition_cleared_at IS NULL",
            rule,
        )
    }
    seen: set[str] = set()
    for det in detections:
        seen.add(det.subject)
        details = json.dumps(dict(det.details), ensure_ascii=False, default=str)
        hazard_id = ongoing.get(det.subject)
        if hazard_id is not None:
            await conn.execute(
                "UPDATE hazards SET last_detected_at = $2, description = $3,"
                " details = details || $4::jsonb, updated_at = now() WHERE id = $1",
                hazard_id,
                now,
                det.description,
                details,
            )
            counts.updated += 1
        else:
            row = await conn.fetchrow(
                """
                INSERT INTO hazards (name, description, level, category, responsible_unit,
                       deadline, source, rule, subject, auto_key, school_id, bus_id, operator_id,
                       district_id, device_id, created_by, detected_at, last_detected_at, details,
                       supervised, supervised_at)
                VALUES ($1, $2, $3, $4, $5, $6, 'monitoring', $7, $8, $9, $10, $11, $12, $13, $14,
                        $15, $16, $16, $17::jsonb, $3 = 'serious',
                        CASE WHEN $3 = 'serious' THEN now() END)
                ON CONFLICT (auto_key) DO UPDATE
                   SET condition_cleared_at = NULL, last_detected_at = EXCLUDED.last_detected_at,
                       updated_at = now()
                RETURNING id, (xmax = 0) AS inserted
                """,
                det.name,
                det.description,
                det.level,
                det.category,
                det.responsible_unit,
                deadline,
                rule,
                det.subject,
                f"{rule}:{det.subject}:{det.anchor}",
                det.school_id,
                det.bus_id,
                det.operator_id,
                det.district_id,
                det.device_id,
                MONITOR.name,
                now,
                details,
            )
            assert row is not None  # INSERT … ON CONFLICT DO UPDATE always returns the row
            hazard_id = row["id"]
            if row["inserted"]:
                counts.created.append(hazard_id)
                await _event(
                    conn, hazard_id, "create", None, "found", MONITOR, note=det.description
                )
            else:
                await _event(conn, hazard_id, "detect", None, None, MONITOR, note="再次出现 again")
        await _link(conn, hazard_id, det.alert_ids)
    if clear_missing:
        for subject, hazard_id in ongoing.items():
            if subject in seen:
                continue
            await conn.execute(
                "UPDATE hazards SET condition_cleared_at = $2, updated_at = now() WHERE id = $1",
                hazard_id,
                now,
            )
            await _event(
                conn, hazard_id, "clear", None, None, MONITOR, note="监测条件已消失 cleared"
            )
            counts.cleared += 1
    return counts


async def scan_monitoring(
    conn: AsyncConnection, *, now: datetime, timezone: str, rules: LedgerRules
) -> dict[str, ScanCounts]:
    """Run every monitoring rule as of ``now``; one transaction, one scanner at a time.

    ``zero_data`` looks at the last complete local day before ``now``.
    """
    tz = ZoneInfo(timezone)
    local_now = now.astimezone(tz)
    deadline = local_now.date() + timedelta(days=rules.deadline_days)
    yesterday = local_now.date() - timedelta(days=1)
    result: dict[str, ScanCounts] = {}
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCAN_LOCK)
        found = {
            "device_offline": await _offline_devices(conn, now, rules, tz),
            "repeat_offender": await _repeat_offenders(conn, now, rules),
            "button_untested": await _untested_buttons(conn, now, rules, tz),
            "zero_data": await _zero_data_schools(conn, yesterday, tz),
        }
        for rule, detections in found.items():
            result[rule] = await record_detections(
                conn, rule, detections, now=now, deadline=deadline
            )
    return result


_KIND_CATEGORY: Final = {"gps": "school_bus", "smoke": "fire", "button": "public_security"}
_KIND_LABEL: Final = {"gps": "车载定位终端", "smoke": "烟感探测器", "button": "一键报警装置"}


async def _offline_devices(
    conn: AsyncConnection, now: datetime, rules: LedgerRules, tz: ZoneInfo
) -> list[Detection]:
    rows = await conn.fetch(
        """
        SELECT d.id, d.kind, d.bus_id, coalesce(d.school_id, b.school_id) AS school_id,
               b.operator_id, s.district_id, st.last_seen_at, d.registered_at,
               coalesce(s.name, o.name, '') AS unit,
               (SELECT coalesce(array_agg(a.id), '{}') FROM alerts a
                 WHERE a.device_id = d.id AND a.kind = 'device_offline'
                   AND (a.state = 'active'
                        OR a.ended_at >= coalesce(st.last_seen_at, d.registered_at))) AS alert_ids
          FROM devices d
          LEFT JOIN buses b ON b.id = d.bus_id
          LEFT JOIN schools s ON s.id = coalesce(d.school_id, b.school_id)
          LEFT JOIN operators o ON o.id = b.operator_id
          LEFT JOIN device_status st ON st.device_key = d.key
         WHERE d.retired_at IS NULL
           AND coalesce(st.last_seen_at, d.registered_at)
               <= $1::timestamptz - make_interval(secs => $2)
         ORDER BY d.id
        """,
        now,
        rules.offline_after_s,
    )
    found = []
    for r in rows:
        seen = r["last_seen_at"]
        hours = (now - (seen or r["registered_at"])).total_seconds() / 3600
        label = _KIND_LABEL[r["kind"]]
        since = (
            f"最后通信 {seen.astimezone(tz).isoformat(timespec='seconds')}"
            if seen
            else "从未通信 never heard"
        )
        found.append(
            Detection(
                rule="device_offline",
                subject=r["id"],
                anchor=str(int(seen.timestamp())) if seen else "never",
                name=f"{label}离线超过{rules.offline_after_s // 3600}小时：{r['id']}",
                description=f"{label} {r['id']} 已离线约 {hours:.0f} 小时（{since}）"
                f" — device offline for about {hours:.0f} h",
                level="major" if r["kind"] == "button" else "general",
                category=_KIND_CATEGORY[r["kind"]],
                responsible_unit=r["unit"],
                school_id=r["school_id"],
                bus_id=r["bus_id"],
                operator_id=r["operator_id"],
                district_id=r["district_id"],
                device_id=r["id"],
                alert_ids=list(r["alert_ids"]),
                details={"last_seen_at": seen, "offline_h": round(hours, 1), "kind": r["kind"]},
            )
        )
    return found


async def _repeat_offenders(
    conn: AsyncConnection, now: datetime, rules: LedgerRules
) -> list[Detection]:
    rows = await conn.fetch(
        """
        SELECT a.bus_id, b.plate, b.operator_id, b.school_id, s.district_id,
               coalesce(o.name, '') AS unit, count(*) AS n, min(a.started_at) AS first_at,
               array_agg(a.id ORDER BY a.started_at) AS alert_ids,
               array_agg(DISTINCT a.kind) AS kinds
          FROM alerts a
          JOIN buses b ON b.id = a.bus_id
          LEFT JOIN schools s ON s.id = b.school_id
          LEFT JOIN operators o ON o.id = b.operator_id
         WHERE a.kind = ANY($1::text[])
           AND a.started_at > $2::timestamptz - make_interval(days => $3) AND a.started_at <= $2
         GROUP BY a.bus_id, b.plate, b.operator_id, b.school_id, s.district_id, o.name
        HAVING count(*) >= $4
         ORDER BY a.bus_id
        """,
        list(_VIOLATIONS),
        now,
        rules.repeat_window_days,
        rules.repeat_violations,
    )
    return [
        Detection(
            rule="repeat_offender",
            subject=r["bus_id"],
            anchor=str(int(r["first_at"].timestamp())),
            name=f"校车屡次违规：{r['plate']}（{r['bus_id']}）",
            description=f"校车 {r['plate']} 近 {rules.repeat_window_days} 天内违规 {r['n']} 次"
            f"（{'、'.join(sorted(r['kinds']))}） — {r['n']} major violations in"
            f" {rules.repeat_window_days} days",
            level="major",
            category="school_bus",
            responsible_unit=r["unit"],
            school_id=r["school_id"],
            bus_id=r["bus_id"],
            operator_id=r["operator_id"],
            district_id=r["district_id"],
            alert_ids=list(r["alert_ids"]),
            details={"violations": r["n"], "kinds": sorted(r["kinds"])},
        )
        for r in rows
    ]


async def _untested_buttons(
    conn: AsyncConnection, now: datetime, rules: LedgerRules, tz: ZoneInfo
) -> list[Detection]:
    rows = await conn.fetch(
        """
        WITH t AS (  -- one pass over the test readings, not a probe per device and chunk
            SELECT device_key, max(ts) AS last_test FROM sensor_events
             WHERE state = 'test' AND channel = 'button' AND ts <= $1 GROUP BY device_key)
        SELECT d.id, d.school_id, s.district_id, coalesce(s.name, '') AS unit, t.last_test,
               d.registered_at
          FROM devices d
          LEFT JOIN schools s ON s.id = d.school_id
          LEFT JOIN t ON t.device_key = d.key
         WHERE d.kind = 'button' AND d.retired_at IS NULL
           AND coalesce(t.last_test, d.registered_at) <= $1::timestamptz - make_interval(days => $2)
         ORDER BY d.id
        """,
        now,
        rules.button_test_days,
    )
    found = []
    for r in rows:
        last = r["last_test"]
        since = (
            f"上次测试 {last.astimezone(tz).date().isoformat()}"
            if last
            else "从未测试 never tested"
        )
        found.append(
            Detection(
                rule="button_untested",
                subject=r["id"],
                anchor=str(int(last.timestamp())) if last else "never",
                name=f"一键报警超过{rules.button_test_days}天未测试：{r['id']}",
                description=f"一键报警装置 {r['id']} {since}，超过 {rules.button_test_days} 天"
                f" — emergency button not tested in {rules.button_test_days} days",
                level="general",
                category="public_security",
                responsible_unit=r["unit"],
                school_id=r["school_id"],
                district_id=r["district_id"],
                device_id=r["id"],
                details={"last_test_at": last},
            )
        )
    return found


async def _zero_data_schools(conn: AsyncConnection, day: date, tz: ZoneInfo) -> list[Detection]:
    start = datetime.combine(day, time(), tz)
    end = start + timedelta(days=1)
    rows = await conn.fetch(
        """
        WITH sd AS (
            SELECT d.key, d.id, coalesce(d.school_id, b.school_id) AS school_id
              FROM devices d LEFT JOIN buses b ON b.id = d.bus_id
             WHERE d.retired_at IS NULL)
        SELECT s.id, s.name, s.district_id,
               (SELECT count(*) FROM sd WHERE sd.school_id = s.id) AS devices
          FROM schools s
         WHERE EXISTS (SELECT 1 FROM sd WHERE sd.school_id = s.id)
           AND NOT EXISTS (
                SELECT 1 FROM sd WHERE sd.school_id = s.id AND (
                    EXISTS (SELECT 1 FROM gps_fixes g
                             WHERE g.device_key = sd.key AND g.ts >= $1 AND g.ts < $2)
                 OR EXISTS (SELECT 1 FROM heartbeats h
                             WHERE h.device_key = sd.key AND h.ts >= $1 AND h.ts < $2)
                 OR EXISTS (SELECT 1 FROM sensor_events e
                             WHERE e.device_key = sd.key AND e.ts >= $1 AND e.ts < $2)))
         ORDER BY s.id
        """,
        start,
        end,
    )
    return [
        Detection(
            rule="zero_data",
            subject=r["id"],
            anchor=day.isoformat(),
            name=f"零数据学校：{r['name']}（{r['id']}）",
            description=f"{r['name']} 的 {r['devices']} 台设备 {day.isoformat()} 全天无任何数据"
            f" — no device of the school sent anything on {day.isoformat()}",
            level="major",
            category="public_security",
            responsible_unit=r["name"],
            school_id=r["id"],
            district_id=r["district_id"],
            details={"last_silent_day": day.isoformat(), "devices": r["devices"]},
        )
        for r in rows
    ]


# ------------------------------------------------------------------ export
async def local_timezone(conn: AsyncConnection, *, default: str) -> str:
    """The fleet document's timezone, or ``default`` before any import."""
    tz: str | None = await conn.fetchval("SELECT timezone FROM fleet_meta LIMIT 1")
    return tz or default


#: The provincial upload's columns: seed 002's names first, then what anxiao adds.
EXPORT_COLUMNS: Final = (
    ("序号", "no"),
    ("编号", "id"),
    ("风险名称", "name"),
    ("风险表述", "description"),
    ("风险等级", "level"),
    ("风险类别", "category"),
    ("化解措施", "measures"),
    ("责任部门", "responsible_unit"),
    ("责任人员", "responsible_person"),
    ("整改期限", "deadline"),
    ("隐患来源", "source"),
    ("监测规则", "rule"),
    ("状态", "state"),
    ("是否逾期", "overdue"),
    ("挂牌督办", "supervised"),
    ("延期说明", "delay_reason"),
    ("学校", "school"),
    ("片区", "district"),
    ("关联告警数", "alerts"),
    ("发现时间", "created_at"),
    ("销号时间", "closed_at"),
    ("销号核验人", "closed_by"),
)


async def month_rows(
    conn: AsyncConnection, *, month: date, timezone: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Entries open at some time in ``month`` (a date in it), and that month's events.

    Rows are ready for :func:`ledger_xlsx` (codes already turned into Chinese words).
    """
    tz = ZoneInfo(timezone)
    first = month.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    start, end = datetime.combine(first, time(), tz), datetime.combine(following, time(), tz)
    rows = await conn.fetch(
        """
        SELECT h.*, s.name AS school, di.name AS district,
               (SELECT count(*) FROM hazard_alerts x WHERE x.hazard_id = h.id) AS alerts
          FROM hazards h
          LEFT JOIN schools s ON s.id = h.school_id
          LEFT JOIN districts di ON di.id = h.district_id
         WHERE h.created_at < $2 AND (h.closed_at IS NULL OR h.closed_at >= $1)
         ORDER BY h.id
        """,
        start,
        end,
    )
    month_end = following - timedelta(days=1)
    entries = []
    for i, r in enumerate(rows, 1):
        closed_in_time = r["closed_at"] is not None and r["closed_at"] < end
        overdue = r["deadline"] is not None and r["deadline"] < month_end and not closed_in_time
        entries.append(
            {
                "no": i,
                "id": f"YH-{r['id']:06d}",
                "name": r["name"],
                "description": r["description"],
                "level": LEVELS[r["level"]],
                "category": CATEGORIES[r["category"]],
                "measures": r["measures"],
                "responsible_unit": r["responsible_unit"],
                "responsible_person": r["responsible_person"],
                "deadline": r["deadline"],
                "source": SOURCES[r["source"]],
                "rule": RULES.get(r["rule"] or "", ""),
                "state": STATES[r["state"]],
                "overdue": "是" if overdue else "否",
                "supervised": "是" if r["supervised"] else "否",
                "delay_reason": r["delay_reason"] or "",
                "school": r["school"] or "",
                "district": r["district"] or "",
                "alerts": r["alerts"],
                "created_at": r["created_at"].astimezone(tz).replace(tzinfo=None),
                "closed_at": r["closed_at"].astimezone(tz).replace(tzinfo=None)
                if r["closed_at"]
                else None,
                "closed_by": r["closed_by"] or "",
            }
        )
    events = [
        {
            "编号": f"YH-{r['hazard_id']:06d}",
            "时间": r["at"].astimezone(tz).replace(tzinfo=None),
            "操作": _ACTIONS.get(r["action"], r["action"]),
            "原状态": STATES.get(r["from_state"] or "", ""),
            "新状态": STATES.get(r["to_state"] or "", ""),
            "操作人": r["by_whom"],
            "说明": r["note"],
            "证据": r["evidence"],
        }
        for r in await conn.fetch(
            "SELECT * FROM hazard_events WHERE at >= $1 AND at < $2 ORDER BY at, id", start, end
        )
    ]
    return entries, events


_ACTIONS: Final = {
    "create": "发现",
    "register": "登记",
    "rectify": "整治",
    "report": "报告整改",
    "close": "核验销号",
    "reject": "退回整改",
    "note": "备注",
    "detect": "再次监测到",
    "clear": "监测条件消失",
    "supervise": "挂牌督办",
    "postpone": "延期",
}


def ledger_xlsx(entries: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]) -> bytes:
    """The monthly upload workbook: sheet 隐患台账 (seed columns) and sheet 流转记录."""
    return workbook(
        [
            (
                "隐患台账",
                [title for title, _ in EXPORT_COLUMNS],
                ([entry[key] for _, key in EXPORT_COLUMNS] for entry in entries),
            ),
            (
                "流转记录",
                ["编号", "时间", "操作", "原状态", "新状态", "操作人", "说明", "证据"],
                (list(event.values()) for event in events),
            ),
        ]
    )
