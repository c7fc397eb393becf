"""The hazard ledger: every transition of the closed loop, every forbidden one, over the API."""

from __future__ import annotations

import io
import itertools
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from openpyxl import load_workbook

from alerts.ledger import (
    STATES,
    TRANSITIONS,
    Actor,
    LedgerError,
    NewHazard,
    create_entry,
    flag_overdue,
    transition,
)
from tests.api.conftest import get, post
from tests.closing.support import run, store_alert


def _entry(world: dict[str, Any], **extra: Any) -> dict[str, Any]:
    a = world["a"]
    return {
        "name": "校门口减速带损坏",
        "description": "校门口减速带缺失两段，放学时段车速偏快",
        "level": "major",
        "category": "school_bus",
        "source": "spot_check",
        "school_id": f"S001-{a}",
        **extra,
    }


def _move(client, token: str, hazard_id: int, to: str, **body: Any) -> Any:
    return post(client, token, f"/api/v1/ledger/{hazard_id}/transition", {"to": to, **body})


_REGISTER = {
    "measures": "补设减速带，放学时段安排护导",
    "responsible_unit": "星海小学总务处",
    "responsible_person": "王老师",
    "deadline": "2026-12-31",
}


def test_the_whole_loop_records_who_did_what(client, world) -> None:
    t = world["tokens"]
    created = post(client, t["school_a"], "/api/v1/ledger", _entry(world, note="抽查发现"))
    assert created.status_code == 201, created.text
    entry = created.json()
    hid = entry["id"]
    assert entry["state"] == "found"
    assert entry["state_label"] == "已排查"
    assert entry["level_label"] == "较大"
    assert entry["source_label"] == "抽查"
    assert entry["district_id"] == f"D01-{world['a']}"  # derived from the school
    assert entry["code"] == f"YH-{hid:06d}"

    # Registering needs the seed's columns: refused without them, nothing changes.
    bare = _move(client, t["school_a"], hid, "registered")
    assert bare.status_code == 422
    assert bare.json()["error"]["code"] == "missing_fields"
    assert "登记须填写" in bare.json()["error"]["message"]
    registered = _move(client, t["school_a"], hid, "registered", note="登记", **_REGISTER)
    assert registered.status_code == 200, registered.text
    assert registered.json()["responsible_person"] == "王老师"
    assert registered.json()["deadline"] == "2026-12-31"

    assert _move(client, t["school_a"], hid, "rectifying", note="开始整治").status_code == 200
    # Reporting the fix needs a note saying what was done.
    silent = _move(client, t["school_a"], hid, "reported")
    assert silent.status_code == 422
    assert silent.json()["error"]["code"] == "note_required"
    reported = _move(
        client, t["school_a"], hid, "reported", note="已补设减速带", evidence="photo-0012.jpg"
    )
    assert reported.status_code == 200
    assert reported.json()["reported_by"] == entry["created_by"]
    assert entry["created_by"].startswith("school#")

    # A school cannot verify its own fix; the bureau can.
    own = _move(client, t["school_a"], hid, "closed", note="自行销号")
    assert own.status_code == 403
    closed = _move(client, t["bureau"], hid, "closed", note="现场核验合格")
    assert closed.status_code == 200, closed.text
    body = closed.json()
    assert body["state"] == "closed"
    assert body["state_label"] == "已销号"
    assert body["closed_at"] is not None

    history = [(e["action"], e["from_state"], e["to_state"]) for e in body["events"]]
    assert history == [
        ("create", None, "found"),
        ("register", "found", "registered"),
        ("rectify", "registered", "rectifying"),
        ("report", "rectifying", "reported"),
        ("close", "reported", "closed"),
    ]
    by = [e["by"] for e in body["events"]]
    assert by[0] == by[3] != by[4]  # the school found and reported, the bureau closed
    assert body["events"][3]["evidence"] == "photo-0012.jpg"
    assert all(e["at"] for e in body["events"])


def test_verifier_must_differ_from_the_reporter_and_reject_sends_it_back(client, world) -> None:
    t = world["tokens"]
    hid = post(client, t["monitor"], "/api/v1/ledger", _entry(world)).json()["id"]
    for to, extra in (("registered", _REGISTER), ("rectifying", {}), ("reported", {})):
        assert _move(client, t["monitor"], hid, to, note="监控室处理", **extra).status_code == 200
    same = _move(client, t["monitor"], hid, "closed", note="我来核验")
    assert same.status_code == 409
    assert same.json()["error"]["code"] == "same_verifier"
    assert same.json()["error"]["message"].startswith("销号须由报告整改者")
    assert get(client, t["bureau"], f"/api/v1/ledger/{hid}").json()["state"] == "reported"

    # Rejected back to rectifying (needs a reason), reported again by someone else.
    assert _move(client, t["bureau"], hid, "rectifying").status_code == 422
    back = _move(client, t["bureau"], hid, "rectifying", note="整改不到位，退回")
    assert back.status_code == 200
    assert back.json()["reported_by"] is None
    assert _move(client, t["bureau"], hid, "reported", note="二次整改完成").status_code == 200
    # Now the monitor did not report this round, so it may verify.
    assert _move(client, t["monitor"], hid, "closed", note="核验通过").status_code == 200
    actions = [
        e["action"] for e in get(client, t["admin"], f"/api/v1/ledger/{hid}").json()["events"]
    ]
    assert actions == ["create", "register", "rectify", "report", "reject", "report", "close"]


_ALL_PAIRS = list(itertools.product(STATES, STATES))
_FORBIDDEN = [(a, b) for a, b in _ALL_PAIRS if b not in TRANSITIONS[a]]
_PATH = ["found", "registered", "rectifying", "reported", "closed"]


@pytest.mark.parametrize(("state", "to"), _FORBIDDEN, ids=[f"{a}->{b}" for a, b in _FORBIDDEN])
async def test_every_forbidden_transition_is_refused(database_url, world, state, to) -> None:
    assert len(_FORBIDDEN) == 20  # 25 pairs, 5 allowed moves
    conn = await asyncpg.connect(database_url)
    try:
        reporter, verifier = Actor("学校 reporter", 1), Actor("教育局 verifier", 2)
        hid = await create_entry(
            conn,
            NewHazard(
                name="消防通道堆放杂物",
                level="general",
                category="fire",
                source="self_check",
                school_id=f"S001-{world['a']}",
                **{k: v for k, v in _REGISTER.items() if k != "deadline"},
                deadline=date(2026, 12, 31),
            ),
            by=reporter,
        )
        for step in _PATH[1 : _PATH.index(state) + 1]:
            who = verifier if step == "closed" else reporter
            await transition(conn, hid, to=step, by=who, note="按流程")
        events_before = await conn.fetchval(
            "SELECT count(*) FROM hazard_events WHERE hazard_id = $1", hid
        )
        with pytest.raises(LedgerError) as refused:
            await transition(conn, hid, to=to, by=verifier, note="越级")
        assert refused.value.code == "forbidden_transition"
        assert str(refused.value).startswith(f"不允许从「{STATES[state]}」变为「{STATES[to]}」")
        assert await conn.fetchval("SELECT state FROM hazards WHERE id = $1", hid) == state
        assert (
            await conn.fetchval("SELECT count(*) FROM hazard_events WHERE hazard_id = $1", hid)
            == events_before
        )
    finally:
        await conn.close()


def test_forbidden_transition_over_the_api_is_a_clear_409(client, world) -> None:
    t = world["tokens"]
    hid = post(client, t["admin"], "/api/v1/ledger", _entry(world)).json()["id"]
    skip = _move(client, t["admin"], hid, "closed", note="直接销号")
    assert skip.status_code == 409
    error = skip.json()["error"]
    assert error["code"] == "forbidden_transition"
    assert error["message"].startswith("不允许从「已排查」变为「已销号」")
    bogus = _move(client, t["admin"], hid, "done")
    assert bogus.status_code == 422  # not a state at all
    # Ledger columns only while registering.
    assert _move(client, t["admin"], hid, "registered", **_REGISTER).status_code == 200
    late = _move(client, t["admin"], hid, "rectifying", responsible_person="李四")
    assert late.status_code == 422


def test_overdue_entries_are_supervised_once_and_serious_ones_at_once(
    client, world, database_url
) -> None:
    t = world["tokens"]
    yesterday = (datetime.now(UTC) + timedelta(hours=8)).date() - timedelta(days=1)
    hid = post(client, t["admin"], "/api/v1/ledger", _entry(world)).json()["id"]
    assert (
        _move(
            client, t["admin"], hid, "registered", **{**_REGISTER, "deadline": str(yesterday)}
        ).status_code
        == 200
    )
    listed = get(client, t["bureau"], "/api/v1/ledger", overdue="true", limit=1000).json()
    assert hid in [e["id"] for e in listed["items"]]
    assert all(e["overdue"] for e in listed["items"])

    async def flag() -> list[int]:
        conn = await asyncpg.connect(database_url)
        try:
            return await flag_overdue(conn, today=yesterday + timedelta(days=1))
        finally:
            await conn.close()

    assert hid in run(flag())
    assert hid not in run(flag())  # flagged once
    entry = get(client, t["bureau"], f"/api/v1/ledger/{hid}").json()
    assert entry["supervised"] is True
    assert [e["action"] for e in entry["events"]].count("supervise") == 1

    serious = post(client, t["admin"], "/api/v1/ledger", _entry(world, level="serious")).json()
    assert serious["supervised"] is True
    assert serious["level_label"] == "重大"

    # Postponing needs a written reason; the deadline moves, supervision stays.
    assert (
        post(client, t["admin"], f"/api/v1/ledger/{hid}/postpone", {"deadline": "2027-01-31"})
    ).status_code == 422
    moved = post(
        client,
        t["admin"],
        f"/api/v1/ledger/{hid}/postpone",
        {"deadline": "2027-01-31", "reason": "寒假施工，列出整改计划：1月20日前完工"},
    ).json()
    assert moved["deadline"] == "2027-01-31"
    assert moved["delay_reason"].startswith("寒假施工")
    assert moved["overdue"] is False
    assert moved["supervised"] is True


def test_scopes_and_bad_input(client, world) -> None:
    t, b = world["tokens"], world["b"]
    mine = post(client, t["school_a"], "/api/v1/ledger", _entry(world)).json()["id"]
    other = post(client, t["admin"], "/api/v1/ledger", _entry(world, school_id=f"S001-{b}"))
    assert other.status_code == 201
    # Another scope sees nothing of it (404, not 403) and cannot act on it.
    assert get(client, t["operator_a2"], f"/api/v1/ledger/{mine}").status_code == 404
    assert get(client, t["school_a"], f"/api/v1/ledger/{other.json()['id']}").status_code == 404
    assert _move(client, t["operator_a2"], mine, "registered", **_REGISTER).status_code == 404
    ids = [
        e["id"] for e in get(client, t["school_a"], "/api/v1/ledger", limit=1000).json()["items"]
    ]
    assert mine in ids
    assert other.json()["id"] not in ids
    # A school cannot file for another school; unknown references are 404.
    foreign = post(client, t["school_a"], "/api/v1/ledger", _entry(world, school_id=f"S001-{b}"))
    assert foreign.status_code == 404
    ghost = post(client, t["admin"], "/api/v1/ledger", _entry(world, bus_id="no-such-bus"))
    assert ghost.status_code == 404
    # Bad input: 422 with the one error body.
    for bad in (
        _entry(world, level="high"),
        _entry(world, source="monitoring"),  # automatic entries only
        _entry(world, name=""),
        _entry(world, deadline="2026-13-01"),
        _entry(world, alert_ids=["not-a-uuid"]),
    ):
        response = post(client, t["admin"], "/api/v1/ledger", bad)
        assert response.status_code == 422, bad
        assert response.json()["error"]["code"] == "invalid_request"
    assert get(client, t["admin"], "/api/v1/ledger", cursor="!!").status_code == 422
    assert get(client, t["admin"], "/api/v1/ledger/123456789").status_code == 404


def test_pagination_walks_every_entry_once(client, world) -> None:
    t = world["tokens"]
    for i in range(5):
        post(client, t["school_a"], "/api/v1/ledger", _entry(world, name=f"分页 {i}"))
    seen: list[int] = []
    cursor = None
    while True:
        page = get(
            client,
            t["school_a"],
            "/api/v1/ledger",
            limit=2,
            **({"cursor": cursor} if cursor else {}),
        ).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) >= 5
    assert seen == sorted(seen, reverse=True)


def test_alerts_link_to_entries_and_the_month_exports_as_xlsx(client, world, database_url) -> None:
    t, a = world["tokens"], world["a"]
    started = datetime(2026, 11, 10, 7, 31, 5, tzinfo=UTC)
    alert_id = run(
        store_alert(
            database_url,
            f"GPS-B1-{a}",
            "speeding",
            started,
            ended_at=started + timedelta(seconds=42),
            details={"max_speed_kmh": 74.2, "limit_kmh": 60},
        )
    )
    created = post(
        client,
        t["monitor"],
        "/api/v1/ledger",
        _entry(world, name="导出测试：校车超速", bus_id=f"B1-{a}", alert_ids=[str(alert_id)]),
    ).json()
    assert created["alert_ids"] == [str(alert_id)]
    assert created["operator_id"] == f"OP1-{a}"  # derived from the bus
    _move(client, t["monitor"], created["id"], "registered", **_REGISTER)
    # Typed text may hold characters a worksheet cannot store: replaced, not a failure.
    odd = post(client, t["monitor"], "/api/v1/ledger", _entry(world, name="控制\x07字符"))
    assert odd.status_code == 201

    month = datetime.now(UTC).strftime("%Y-%m")
    response = get(client, t["bureau"], "/api/v1/ledger/export", month=month)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    book = load_workbook(io.BytesIO(response.content))
    assert book.sheetnames == ["隐患台账", "流转记录"]
    sheet = book["隐患台账"]
    head = [c.value for c in sheet[1]]
    # Seed 002's columns, in Chinese, then the deadline.
    for column in (
        "风险名称",
        "风险表述",
        "风险等级",
        "化解措施",
        "责任部门",
        "责任人员",
        "整改期限",
    ):
        assert column in head
    rows = [dict(zip(head, (c.value for c in r), strict=True)) for r in sheet.iter_rows(min_row=2)]
    ours = next(r for r in rows if r["编号"] == f"YH-{created['id']:06d}")
    assert ours["风险名称"] == "导出测试：校车超速"
    assert ours["风险等级"] == "较大"
    assert ours["风险类别"] == "校车和交通"
    assert ours["隐患来源"] == "抽查"
    assert ours["责任人员"] == "王老师"
    assert ours["状态"] == "已登记"
    assert ours["关联告警数"] == 1
    assert ours["整改期限"].date() == date(2026, 12, 31)
    assert "控制\ufffd字符" in [r["风险名称"] for r in rows]
    log = [[c.value for c in r] for r in book["流转记录"].iter_rows(min_row=2)]
    assert [r[2] for r in log if r[0] == ours["编号"]] == ["发现", "登记"]
    # Only the bureau's roles export; a bad month is 422.
    assert get(client, t["school_a"], "/api/v1/ledger/export", month=month).status_code == 403
    assert get(client, t["bureau"], "/api/v1/ledger/export", month="2026-13").status_code == 422
