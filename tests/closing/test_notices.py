"""Violation notices: batching, critical ones at once, operators' answers, escalation."""

from __future__ import annotations

import email
import email.policy
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from alerts.notices import NoticePolicy, collect_notices, escalate_overdue, is_critical
from core.fleet import import_fleet
from tests.api.conftest import get, post
from tests.closing.support import run, store_alert
from tests.core.sample_fleet import sample_fleet

POLICY = NoticePolicy(batch_window_s=3600, answer_window_s=48 * 3600, critical_over_ratio=0.5)


@pytest.mark.parametrize(
    ("kind", "details", "critical"),
    [
        ("speeding", {"max_speed_kmh": 90.0, "limit_kmh": 60.0}, True),  # exactly 50 % over
        ("speeding", {"max_speed_kmh": 89.9, "limit_kmh": 60.0}, False),
        ("speeding", {"max_speed_kmh": 31.0, "limit_kmh": 20.0}, True),
        ("speeding", {}, False),
        ("route_deviation", {"max_distance_m": 5000}, False),
    ],
)
def test_critical_means_half_again_over_the_limit(kind, details, critical) -> None:
    assert is_critical(kind, details, over_ratio=0.5) is critical


async def _notices(conn: Any, operator_id: str) -> list[Any]:
    return await conn.fetch(
        "SELECT n.*, (SELECT array_agg(alert_id) FROM notice_items i WHERE i.notice_id = n.id)"
        " AS alerts FROM notices n WHERE operator_id = $1 ORDER BY id",
        operator_id,
    )


async def test_violations_are_batched_per_operator_and_critical_ones_go_at_once(
    fresh_database_url,
) -> None:
    t = secrets.token_hex(3)
    import_fleet(sample_fleet(t), database_url=fresh_database_url)
    gps, op = f"GPS-B1-{t}", f"OP1-{t}"
    t0 = datetime(2026, 11, 16, 7, 0, tzinfo=UTC)

    async def violation(minutes: int, kind: str, speed: float | None = None) -> Any:
        start = t0 + timedelta(minutes=minutes)
        details = {"max_speed_kmh": speed, "limit_kmh": 60.0} if speed else {"max_distance_m": 250}
        return await store_alert(
            fresh_database_url,
            gps,
            kind,
            start,
            ended_at=start + timedelta(seconds=40),
            details=details,
        )

    ordinary = [await violation(-5, "speeding", 70.0), await violation(-3, "route_deviation")]
    critical = await violation(-1, "speeding", 95.0)
    # A device fault is no violation, and a smoke alarm has no bus: neither becomes a notice.
    await store_alert(
        fresh_database_url, gps, "device_fault", t0, details={"fault": "undervoltage"}
    )
    conn = await asyncpg.connect(fresh_database_url)
    try:
        first = await collect_notices(conn, now=t0, policy=POLICY)
        assert first.added == 3
        # The batch opened first (its violations are older); the critical one went alone.
        notices = sorted(await _notices(conn, op), key=lambda n: not n["critical"])
        assert [(n["critical"], n["state"]) for n in notices] == [
            (True, "sent"),
            (False, "pending"),
        ]
        assert list(notices[0]["alerts"]) == [critical]
        assert sorted(notices[1]["alerts"]) == sorted(ordinary)
        assert first.sent == [notices[0]["id"]]
        assert notices[0]["answer_due_at"] == t0 + timedelta(hours=48)

        # Within the hour a new violation joins the same batch; nothing is sent.
        later = await violation(30, "out_of_hours")
        second = await collect_notices(conn, now=t0 + timedelta(minutes=30), policy=POLICY)
        assert (second.added, second.sent) == (1, [])
        # An hour after the batch opened it goes, with all three.
        third = await collect_notices(conn, now=t0 + timedelta(minutes=61), policy=POLICY)
        assert third.sent == [notices[1]["id"]]
        [batch] = [n for n in await _notices(conn, op) if not n["critical"]]
        assert batch["state"] == "sent"
        assert sorted(batch["alerts"]) == sorted([*ordinary, later])
        # Idempotent: nothing new, nothing resent, every violation in exactly one notice.
        again = await collect_notices(conn, now=t0 + timedelta(hours=3), policy=POLICY)
        assert (again.added, again.sent) == (0, [])
        assert await conn.fetchval("SELECT count(*) FROM notice_items") == 4

        # Each sent notice wrote a webhook and an e-mail in its own transaction.
        outbox = await conn.fetch("SELECT * FROM outbox ORDER BY id")
        assert all(o["created_at"] for o in outbox)
        assert [(o["notice_id"], o["channel"]) for o in outbox] == [
            (notices[0]["id"], "webhook"),
            (notices[0]["id"], "email"),
            (batch["id"], "webhook"),
            (batch["id"], "email"),
        ]
        assert {o["state"] for o in outbox} == {"pending"}
        body = json.loads(outbox[2]["body"])
        assert body["type"] == "violation_notice"
        assert body["notice"]["operator_id"] == op
        assert [v["kind_label"] for v in body["notice"]["violations"]] == [
            "超速",
            "偏离核定路线",
            "非接送时段行驶",
        ]
        assert body["notice"]["violations"][0]["plate"] == "苏E·X1234"
        assert body["notice"]["sent_at"].endswith("+08:00")
        assert body["message"].startswith("苏州园区校车服务有限公司：贵单位校车违规 超速 1 起")
        mail = email.message_from_bytes(outbox[1]["body"], policy=email.policy.default)
        assert mail["To"] == "ops@example.cn"
        assert mail["Subject"].startswith("【紧急】安校校车违规通知")
        assert "最高 95.0 km/h，限速 60.0 km/h" in mail.get_content()
    finally:
        await conn.close()


def test_operators_answer_and_unanswered_notices_escalate_into_the_ledger(
    client, world, database_url
) -> None:
    t, a = world["tokens"], world["a"]
    now = datetime.now(UTC).replace(microsecond=0)

    async def notice_for(started: datetime, *, sent_at: datetime) -> int:
        alert = await store_alert(
            database_url,
            f"GPS-B1-{a}",
            "route_deviation",
            started,
            ended_at=started + timedelta(minutes=2),
            details={"max_distance_m": 320.0, "route_id": f"R1-{a}"},
        )
        conn = await asyncpg.connect(database_url)
        try:
            await collect_notices(
                conn, now=sent_at, policy=NoticePolicy(batch_window_s=0, answer_window_s=86400)
            )
            return await conn.fetchval(
                "SELECT notice_id FROM notice_items WHERE alert_id = $1", alert
            )
        finally:
            await conn.close()

    answered = run(notice_for(now - timedelta(hours=2), sent_at=now - timedelta(hours=1)))
    seen = get(client, t["operator_a"], f"/api/v1/notices/{answered}")
    assert seen.status_code == 200, seen.text
    assert seen.json()["state"] == "sent"
    assert [d["channel"] for d in seen.json()["deliveries"]] == ["webhook", "email"]
    assert get(client, t["operator_a2"], f"/api/v1/notices/{answered}").status_code == 404
    assert get(client, t["school_a"], f"/api/v1/notices/{answered}").status_code == 200
    mine = get(client, t["operator_a"], "/api/v1/notices", limit=500).json()["items"]
    assert answered in [n["id"] for n in mine]
    assert {n["operator_id"] for n in mine} == {f"OP1-{a}"}

    url = f"/api/v1/notices/{answered}/response"
    assert post(client, t["monitor"], url, {"text": "已处理"}).status_code == 403
    assert post(client, t["operator_a"], url, {"text": ""}).status_code == 422
    assert post(client, t["operator_a2"], url, {"text": "不是我的"}).status_code == 404
    done = post(client, t["operator_a"], url, {"text": "已约谈驾驶员并重新培训核定路线"})
    assert done.status_code == 200
    assert done.json()["state"] == "answered"
    assert done.json()["response"] == "已约谈驾驶员并重新培训核定路线"
    twice = post(client, t["operator_a"], url, {"text": "再答一次"})
    assert twice.status_code == 409
    assert twice.json()["error"]["code"] == "already_answered"

    # Sent 26 h ago with a day to answer: overdue, escalated into the ledger once.
    overdue = run(notice_for(now - timedelta(hours=27), sent_at=now - timedelta(hours=26)))

    async def escalate() -> list[int]:
        conn = await asyncpg.connect(database_url)
        try:
            return await escalate_overdue(conn, now=now, policy=NoticePolicy())
        finally:
            await conn.close()

    assert overdue in run(escalate())
    assert overdue not in run(escalate())
    assert answered not in run(escalate())
    notice = get(client, t["operator_a"], f"/api/v1/notices/{overdue}").json()
    assert notice["state"] == "escalated"
    hazard = get(client, t["bureau"], f"/api/v1/ledger/{notice['hazard_id']}").json()
    assert hazard["rule"] == "notice_unanswered"
    assert hazard["rule_label"] == "违规通知逾期未反馈"
    assert hazard["operator_id"] == f"OP1-{a}"
    assert hazard["alert_ids"] == [notice["violations"][0]["alert_id"]]
    assert hazard["name"] == f"违规通知逾期未反馈：苏州园区校车服务有限公司 第{overdue}号"
    # The operator can see the entry about it, and a late answer is noted on it.
    assert get(client, t["operator_a"], f"/api/v1/ledger/{hazard['id']}").status_code == 200
    late = post(client, t["operator_a"], f"/api/v1/notices/{overdue}/response", {"text": "补报"})
    assert late.json()["state"] == "escalated"
    events = get(client, t["bureau"], f"/api/v1/ledger/{hazard['id']}").json()["events"]
    assert events[-1]["action"] == "note"
    assert "补报" in events[-1]["note"]
