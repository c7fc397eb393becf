"""The daily digest of a simulated day: its numbers against the simulator's ground truth.

The simulator's whole stream for 2026-11-16 (a Monday) is stored as ingest
stores it, minus one smoke sensor that stays silent all day; every episode
the ground truth expects is stored through the alert store. Each figure of
the digest is then recomputed from the simulator's own outputs. The formats
are checked as a person would: the XLSX opened with openpyxl, the CSV
parsed, the HTML rendered to PNG in headless Chromium (tests/artifacts/).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook

from alerts.digest import KINDS, build_digest, render_csv, render_html, render_xlsx
from api import create_app
from core.credentials import create_token
from core.migrate import migrate
from tests.closing.support import (
    expected_alerts,
    load_simulation,
    run,
    simulate_day,
    store_ground_truth,
)
from tests.conftest import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("ANXIAO_CHROMIUM", "/usr/bin/chromium")
TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 16)
VIOLATIONS = ("speeding", "route_deviation", "out_of_hours")


def _payloads(message: Any) -> list[dict[str, Any]]:
    body = json.loads(message.payload)
    return body.get("fixes", [body])


@pytest.fixture(scope="module")
def day(admin_database_url: str) -> Iterator[dict[str, Any]]:
    """A database holding one simulated day, and what the simulator says about it."""
    url = create_database(admin_database_url, prefix="anxiao_digest")
    migrate(database_url=url)
    sim = simulate_day(DAY.isoformat(), prefix=f"G{time.monotonic_ns() % 10**6}-")
    tested = {r["device"] for r in sim.ground_truth if r.get("test")}
    scenario_devices = {r["device"] for r in sim.ground_truth}
    silent = next(
        d["id"]
        for d in sim.fleet["devices"]
        if d["kind"] == "smoke" and d["id"] not in scenario_devices
    )
    sim.messages = [m for m in sim.messages if f"/dev/{silent}/" not in m.topic]
    run(load_simulation(sim, url))
    run(store_ground_truth(sim, url))
    start = datetime.combine(DAY, datetime.min.time(), TZ)
    with psycopg.connect(url) as conn:
        # Ledger movements on that day: three new entries, one closed, one overdue.
        for i, (state, deadline) in enumerate(
            (("found", DAY + timedelta(days=5)), ("closed", DAY), ("registered", DAY))
        ):
            conn.execute(
                "INSERT INTO hazards (name, level, category, source, state, deadline, created_by,"
                " created_at, closed_at) VALUES (%s, 'general', 'fire', 'self_check', %s, %s,"
                " 'test', %s, %s)",
                (
                    f"消防隐患 {i}",
                    state,
                    deadline,
                    start + timedelta(hours=9 + i),
                    start + timedelta(hours=15) if state == "closed" else None,
                ),
            )
        digest = build_digest(
            conn, day=DAY, timezone="Asia/Shanghai", now=start + timedelta(days=1, hours=1)
        )
    yield {"url": url, "sim": sim, "digest": digest, "silent": silent, "tested": tested}
    drop_database(admin_database_url, url)


def test_totals_per_kind_match_the_ground_truth(day) -> None:
    truth = expected_alerts(day["sim"])
    totals = day["digest"]["totals"]
    assert sum(totals["by_kind"].values()) == totals["alerts"] == len(truth) > 10
    assert totals["by_kind"] == {k: Counter(r["kind"] for r in truth)[k] for k in KINDS}
    assert totals["violations"] == sum(1 for r in truth if r["kind"] in VIOLATIONS)
    assert totals["late"] == sum(1 for r in truth if r.get("late"))
    assert totals["by_severity"]["critical"] == sum(
        1 for r in truth if r["kind"] in ("panic_button", "smoke_alarm")
    )


def test_per_district_operator_and_bus_match_the_ground_truth(day) -> None:
    sim, digest = day["sim"], day["digest"]
    fleet = sim.fleet
    bus = {b["id"]: b for b in fleet["buses"]}
    district = {s["id"]: s["district"] for s in fleet["schools"]}
    device = {d["id"]: d for d in fleet["devices"]}

    def school_of(r: dict[str, Any]) -> str:
        d = device[r["device"]]
        return d.get("school") or bus[d["bus"]]["school"]

    truth = expected_alerts(sim)
    by_district = Counter(district[school_of(r)] for r in truth)
    assert {d["id"]: d["alerts"] for d in digest["districts"]} == dict(by_district)
    on_buses = [r for r in truth if device[r["device"]].get("bus")]
    by_bus = Counter(device[r["device"]]["bus"] for r in on_buses)
    assert {b["id"]: b["alerts"] for b in digest["buses"]} == dict(by_bus)
    assert {b["id"]: b["plate"] for b in digest["buses"]} == {b: bus[b]["plate"] for b in by_bus}
    by_operator = Counter(bus[device[r["device"]]["bus"]]["operator"] for r in on_buses)
    assert {o["id"]: o["alerts"] for o in digest["operators"]} == dict(by_operator)
    violations = Counter(device[r["device"]]["bus"] for r in on_buses if r["kind"] in VIOLATIONS)
    assert {b["id"]: b["violations"] for b in digest["buses"] if b["violations"]} == dict(
        violations
    )
    repeat = {b for b, n in violations.items() if n >= 3}
    assert {r["bus_id"] for r in digest["repeat_offenders"]} == repeat
    # Busiest first.
    assert [d["violations"] for d in digest["districts"]] == sorted(
        (d["violations"] for d in digest["districts"]), reverse=True
    )


def test_device_online_rates_and_alarm_tests_match_the_simulation(day) -> None:
    sim, digest = day["sim"], day["digest"]
    kinds = {d["id"]: d["kind"] for d in sim.fleet["devices"]}
    heard = {m.topic.split("/")[3] for m in sim.messages}
    offline = [r for r in expected_alerts(sim) if r["kind"] == "device_offline"]
    for kind in ("gps", "smoke", "button"):
        figures = digest["devices"][kind]
        fleet_n = sum(1 for k in kinds.values() if k == kind)
        assert figures["devices"] == fleet_n
        assert figures["heard"] == sum(1 for d in heard if kinds[d] == kind)
        assert figures["heard_rate"] == round(figures["heard"] / fleet_n, 4)
        ours = [r for r in offline if kinds[r["device"]] == kind]
        assert figures["offline_alerts"] == len(ours)
        seconds = sum(
            (datetime.fromisoformat(r["end"]) - datetime.fromisoformat(r["start"])).total_seconds()
            for r in ours
        )
        assert figures["offline_s"] == round(seconds)
        assert figures["online_rate"] == round(1 - seconds / (fleet_n * 86400), 4)
    assert digest["devices"]["smoke"]["heard"] == digest["devices"]["smoke"]["devices"] - 1

    tests: Counter[str] = Counter()
    seen: set[tuple[str, Any]] = set()
    for m in sim.messages:
        for p in _payloads(m):
            if p.get("state") == "test" or p.get("event") == "test":
                seen.add((m.topic, p["ts"]))  # duplicates are stored once
    for topic, _ts in seen:
        tests[kinds[topic.split("/")[3]]] += 1
    tested_devices = {topic.split("/")[3] for topic, _ts in seen}
    assert day["tested"] <= tested_devices  # the scenarios' test presses are among them
    for kind in ("button", "smoke"):
        figures = digest["alarm_tests"][kind]
        tested = {d for d in tested_devices if kinds[d] == kind}
        assert figures["tested"] == len(tested) >= 1
        assert figures["tests_today"] == tests[kind]
        assert figures["compliance_rate"] == round(len(tested) / figures["devices"], 4)


def test_ledger_movements_and_the_trend(day) -> None:
    digest = day["digest"]
    assert {k: digest["ledger"][k] for k in ("new", "closed", "open", "overdue")} == {
        "new": 3,
        "closed": 1,
        "open": 2,
        "overdue": 1,
    }
    trend = digest["trend"]
    assert [t["date"] for t in trend] == [
        (DAY - timedelta(days=6 - i)).isoformat() for i in range(7)
    ]
    assert trend[-1]["by_kind"] == digest["totals"]["by_kind"]
    assert all(t["alerts"] == 0 for t in trend[:-1])


def test_the_api_serves_every_format_and_refuses_bad_input(day) -> None:
    url, digest = day["url"], day["digest"]
    token = create_token(database_url=url, role="bureau", scope_id=None)
    headers = {"Authorization": f"Bearer {token}"}
    path = f"/api/v1/digests/{DAY}"
    with TestClient(create_app(database_url=url)) as client:
        served = client.get(path, headers=headers)
        assert served.status_code == 200
        body = served.json()
        assert body["built_at"] != digest["built_at"]
        assert {k: v for k, v in body.items() if k != "built_at"} == {
            k: v for k, v in json.loads(json.dumps(digest, default=str)).items() if k != "built_at"
        }
        for fmt, media in (
            ("html", "text/html"),
            ("csv", "text/csv"),
            ("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        ):
            response = client.get(path, params={"format": fmt}, headers=headers)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith(media)
        xlsx = client.get(path, params={"format": "xlsx"}, headers=headers)
        assert "anxiao-digest-2026-11-16.xlsx" in xlsx.headers["content-disposition"]
        school = create_token(
            database_url=url, role="school", scope_id=day["sim"].fleet["schools"][0]["id"]
        )
        assert client.get(path, headers={"Authorization": f"Bearer {school}"}).status_code == 403
        for bad in (
            "/api/v1/digests/2026-02-30",
            "/api/v1/digests/yesterday",
            "/api/v1/digests/2999-01-01",
        ):
            response = client.get(bad, headers=headers)
            assert response.status_code == 422, bad
            assert response.json()["error"]["code"] == "invalid_request"
        assert client.get(path, params={"format": "pdf"}, headers=headers).status_code == 422


def test_xlsx_and_csv_carry_the_same_numbers(day) -> None:
    digest = day["digest"]
    book = load_workbook(io.BytesIO(render_xlsx(digest)))
    assert book.sheetnames == [
        "概况",
        "片区",
        "运营单位",
        "校车",
        "屡教不改",
        "设备在线率",
        "报警测试",
        "隐患台账",
        "近7日趋势",
    ]
    overview = {r[0].value: r[1].value for r in book["概况"].iter_rows(min_row=2)}
    assert overview["告警总数 alerts"] == digest["totals"]["alerts"]
    assert overview["违规总数 violations"] == digest["totals"]["violations"]
    assert overview["超速 speeding"] == digest["totals"]["by_kind"]["speeding"]
    districts = [[c.value for c in r] for r in book["片区"].iter_rows(min_row=2)]
    assert [(r[0], r[3]) for r in districts] == [
        (d["id"], d["alerts"]) for d in digest["districts"]
    ]
    head = [c.value for c in book["校车"][1]]
    assert head[:4] == ["编号 id", "车牌 plate", "违规 violations", "告警 alerts"]
    trend = [[c.value for c in r] for r in book["近7日趋势"].iter_rows(min_row=2)]
    assert trend[-1][:2] == [DAY.isoformat(), digest["totals"]["alerts"]]
    online = {r[0].value: r[2].value for r in book["设备在线率"].iter_rows(min_row=2)}
    assert online["烟感"] == digest["devices"]["smoke"]["heard"]

    text = render_csv(digest)
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text[1:])))
    assert rows[0][0] == "安校每日通报 daily digest 2026-11-16"
    at = rows.index(["概况 overview"])
    assert rows[at + 1] == ["指标 metric", "数值 value"]
    assert rows[at + 3] == ["告警总数 alerts", str(digest["totals"]["alerts"])]


def test_the_html_renders_with_its_chart_in_chromium(day) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: run `bash scripts/web.sh` (installs Debian's chromium)")
    digest = day["digest"]
    page_html = render_html(digest)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "digest.html").write_text(page_html, encoding="utf-8")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_content(page_html, wait_until="load")
            assert page.title() == "安校每日通报 2026-11-16"
            cards = page.locator(".card b").all_inner_texts()
            assert cards[:2] == [
                str(digest["totals"]["alerts"]),
                str(digest["totals"]["violations"]),
            ]
            bars = page.locator("svg rect title").all_text_contents()
            kinds_today = [k for k, n in digest["totals"]["by_kind"].items() if n]
            assert bars == [f"{KINDS[k]} {digest['totals']['by_kind'][k]}" for k in kinds_today]
            box = page.locator("svg").bounding_box()
            assert box is not None and box["width"] > 600 and box["height"] > 200
            # The Chinese headline is drawn with a CJK font, not as empty boxes: wider than
            # the same number of Latin letters would be.
            width = page.evaluate(
                "() => { const c = document.createElement('canvas').getContext('2d');"
                " c.font = '16px WenQuanYi Micro Hei';"
                " return c.measureText('安校每日通报').width; }"
            )
            assert width > 60
            page.screenshot(path=str(ARTIFACTS / "digest.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "digest.png").stat().st_size > 20_000


def test_the_cli_prints_and_writes_the_digest(day, tmp_path) -> None:
    env = {**os.environ, "ANXIAO_DATABASE_URL": day["url"]}

    def anxiao(*args: str) -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "anxiao", *args]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, check=False)

    printed = anxiao("digest", "--date", DAY.isoformat())
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["totals"] == day["digest"]["totals"]
    out = tmp_path / "d.xlsx"
    assert (
        anxiao("digest", "--date", str(DAY), "--format", "xlsx", "--out", str(out)).returncode == 0
    )
    assert load_workbook(out).sheetnames[0] == "概况"
    refused = anxiao("digest", "--date", DAY.isoformat(), "--format", "xlsx")
    assert refused.returncode == 2
    assert b"--out" in refused.stderr
    bad = anxiao("digest", "--date", "16/11/2026")
    assert bad.returncode == 1
    assert "YYYY-MM-DD" in bad.stderr.decode()
    ledger = tmp_path / "ledger.xlsx"
    assert anxiao("ledger", "export", "--month", "2026-11", "--out", str(ledger)).returncode == 0
    sheet = load_workbook(ledger)["隐患台账"]
    assert [c.value for c in sheet[1]][2:5] == ["风险名称", "风险表述", "风险等级"]
    assert sheet.max_row == 1 + 3
    assert anxiao("ledger", "export", "--month", "2026-13", "--out", str(ledger)).returncode == 1
