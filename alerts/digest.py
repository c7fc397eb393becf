"""The bureau's daily digest (每日通报): one local day in numbers, as JSON, HTML, CSV or XLSX.

:func:`build_digest` reads one local day ``[00:00, 24:00)`` in the fleet's
timezone: alerts started that day per kind, district, operator and bus;
repeat offenders (≥ N violations in the 7 days ending with the day); device
online rates per kind; alarm-test compliance; ledger movements; notices; and
a 7-day trend. A batch job, so psycopg 3 (architecture decision 7); every
figure is one SQL aggregate, and per-device facts use index probes on the
telemetry hypertables' natural keys ``(device_key, ts)``, never a scan of a
day's fixes. The renderers are pure functions of the JSON.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

from alerts._xlsx import workbook

__all__ = [
    "FORMATS",
    "KINDS",
    "DigestRules",
    "build_digest",
    "digest_tables",
    "render",
    "render_csv",
    "render_html",
    "render_xlsx",
]

#: Contract §3 alert kinds with their Chinese names, in display order.
KINDS: Final = {
    "speeding": "超速",
    "route_deviation": "偏离路线",
    "out_of_hours": "非接送时段行驶",
    "panic_button": "一键报警",
    "smoke_alarm": "烟感报警",
    "device_offline": "设备离线",
    "device_fault": "设备故障",
    "clock_skew": "时钟偏差",
}
VIOLATIONS: Final = ("speeding", "route_deviation", "out_of_hours")
DEVICE_KINDS: Final = {"gps": "车载定位", "smoke": "烟感", "button": "一键报警"}
#: format → media type.
FORMATS: Final = {
    "json": "application/json",
    "html": "text/html; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
_COLORS: Final = {
    "speeding": "#d62728",
    "route_deviation": "#ff7f0e",
    "out_of_hours": "#9467bd",
    "panic_button": "#8c0000",
    "smoke_alarm": "#e377c2",
    "device_offline": "#7f7f7f",
    "device_fault": "#bcbd22",
    "clock_skew": "#17becf",
}


@dataclass(frozen=True, slots=True)
class DigestRules:
    """Thresholds the digest reports against."""

    repeat_violations: int = 3
    repeat_window_days: int = 7
    test_window_days: int = 90
    trend_days: int = 7


def build_digest(
    conn: psycopg.Connection[Any],
    *,
    day: date,
    timezone: str,
    rules: DigestRules = DigestRules(),
    now: datetime | None = None,
) -> dict[str, Any]:
    """The digest of local ``day`` as a JSON-ready dict (see the module docstring).

    ``now`` bounds episodes still open (default: the current time), so a
    digest of today counts offline time only up to now.
    """
    tz = ZoneInfo(timezone)
    start = datetime.combine(day, time(), tz)
    end = start + timedelta(days=1)
    now = now or datetime.now(UTC)
    p = {"start": start, "end": end, "now": now, "tz": timezone}
    cur = conn.cursor(row_factory=dict_row)

    def rows(sql: str, **extra: Any) -> list[dict[str, Any]]:
        return cur.execute(sql, {**p, **extra}).fetchall()

    day_alerts = "SELECT * FROM alerts WHERE started_at >= %(start)s AND started_at < %(end)s"
    by_kind = dict.fromkeys(KINDS, 0)
    by_severity = {"critical": 0, "major": 0, "minor": 0}
    late = 0
    for r in rows(
        f"SELECT kind, severity, count(*) AS n, count(*) FILTER (WHERE late) AS late"
        f" FROM ({day_alerts}) a GROUP BY kind, severity"
    ):
        by_kind[r["kind"]] += r["n"]
        by_severity[r["severity"]] += r["n"]
        late += r["late"]

    def grouped(key_sql: str, join: str, name_sql: str) -> list[dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for r in rows(
            f"SELECT {key_sql} AS id, {name_sql} AS name, a.kind, count(*) AS n"
            f" FROM ({day_alerts}) a {join} WHERE {key_sql} IS NOT NULL"
            f" GROUP BY 1, 2, a.kind"
        ):
            entry = found.setdefault(
                r["id"],
                {"id": r["id"], "name": r["name"], "alerts": 0, "violations": 0, "by_kind": {}},
            )
            entry["alerts"] += r["n"]
            entry["by_kind"][r["kind"]] = r["n"]
            if r["kind"] in VIOLATIONS:
                entry["violations"] += r["n"]
        return sorted(found.values(), key=lambda e: (-e["violations"], -e["alerts"], e["id"]))

    districts = grouped("a.district_id", "LEFT JOIN districts d ON d.id = a.district_id", "d.name")
    operators = grouped("a.operator_id", "LEFT JOIN operators o ON o.id = a.operator_id", "o.name")
    buses = grouped("a.bus_id", "LEFT JOIN buses b ON b.id = a.bus_id", "b.plate")
    owner = {
        r["id"]: r
        for r in rows(
            "SELECT b.id, b.operator_id, b.school_id FROM buses b"
            " WHERE b.id IN (SELECT bus_id FROM alerts WHERE started_at >= %(start)s"
            " AND started_at < %(end)s)"
        )
    }
    for bus in buses:
        bus["plate"] = bus.pop("name")
        bus["operator_id"] = owner.get(bus["id"], {}).get("operator_id")
        bus["school_id"] = owner.get(bus["id"], {}).get("school_id")
    notices_by_operator = {
        r["operator_id"]: r
        for r in rows(
            "SELECT operator_id,"
            " count(*) FILTER (WHERE sent_at >= %(start)s AND sent_at < %(end)s) AS sent,"
            " count(*) FILTER (WHERE responded_at >= %(start)s AND responded_at < %(end)s)"
            "   AS answered,"
            " count(*) FILTER (WHERE escalated_at >= %(start)s AND escalated_at < %(end)s)"
            "   AS escalated"
            " FROM notices GROUP BY operator_id"
        )
    }
    for op in operators:
        counts = notices_by_operator.get(op["id"], {})
        op["notices_sent"] = counts.get("sent", 0)
        op["notices_answered"] = counts.get("answered", 0)

    repeat = rows(
        "SELECT a.bus_id, b.plate, b.operator_id, count(*) AS violations,"
        " array_agg(DISTINCT a.kind) AS kinds FROM alerts a JOIN buses b ON b.id = a.bus_id"
        " WHERE a.kind = ANY(%(violations)s) AND a.started_at < %(end)s"
        " AND a.started_at >= %(end)s::timestamptz - make_interval(days => %(window)s)"
        " GROUP BY a.bus_id, b.plate, b.operator_id HAVING count(*) >= %(min)s"
        " ORDER BY count(*) DESC, a.bus_id",
        violations=list(VIOLATIONS),
        window=rules.repeat_window_days,
        min=rules.repeat_violations,
    )
    for r in repeat:
        r["kinds"] = sorted(r["kinds"])

    devices = {}
    for r in rows(
        """
        WITH dev AS (SELECT d.key, d.id, d.kind FROM devices d WHERE d.retired_at IS NULL),
        heard AS (
            SELECT dev.key, dev.kind,
                   EXISTS (SELECT 1 FROM gps_fixes g WHERE g.device_key = dev.key
                            AND g.ts >= %(start)s AND g.ts < %(end)s)
                OR EXISTS (SELECT 1 FROM heartbeats h WHERE h.device_key = dev.key
                            AND h.ts >= %(start)s AND h.ts < %(end)s)
                OR EXISTS (SELECT 1 FROM sensor_events e WHERE e.device_key = dev.key
                            AND e.ts >= %(start)s AND e.ts < %(end)s) AS heard
              FROM dev),
        offline AS (
            SELECT dev.kind, count(*) AS alerts,
                   sum(extract(epoch FROM
                       least(coalesce(a.ended_at, 'infinity'), %(end)s, %(now)s)
                       - greatest(a.started_at, %(start)s))) AS seconds
              FROM alerts a JOIN dev ON dev.id = a.device_id
             WHERE a.kind = 'device_offline' AND a.started_at < %(end)s
               AND coalesce(a.ended_at, 'infinity') > %(start)s
             GROUP BY dev.kind)
        SELECT h.kind, count(*) AS devices, count(*) FILTER (WHERE h.heard) AS heard,
               coalesce(max(o.alerts), 0) AS offline_alerts,
               coalesce(max(o.seconds), 0) AS offline_s
          FROM heard h LEFT JOIN offline o ON o.kind = h.kind
         GROUP BY h.kind
        """
    ):
        span_s = max(min((now - start).total_seconds(), 86400.0), 0.0)
        device_s = r["devices"] * span_s
        offline_s = max(float(r["offline_s"]), 0.0)
        devices[r["kind"]] = {
            "devices": r["devices"],
            "heard": r["heard"],
            "heard_rate": _rate(r["heard"], r["devices"]),
            "offline_alerts": r["offline_alerts"],
            "offline_s": round(offline_s),
            "online_rate": _rate(device_s - offline_s, device_s) if device_s else None,
        }
    for kind in DEVICE_KINDS:
        devices.setdefault(
            kind,
            {
                "devices": 0,
                "heard": 0,
                "heard_rate": None,
                "offline_alerts": 0,
                "offline_s": 0,
                "online_rate": None,
            },
        )

    tests = {}
    for r in rows(
        """
        WITH t AS (  -- one pass over the window's test readings
            SELECT device_key, count(*) FILTER (WHERE ts >= %(start)s) AS today
              FROM sensor_events
             WHERE state = 'test' AND ts < %(end)s
               AND ts >= %(end)s::timestamptz - make_interval(days => %(window)s)
             GROUP BY device_key)
        SELECT d.kind, count(*) AS devices, count(t.device_key) AS tested,
               coalesce(sum(t.today), 0) AS tests_today
          FROM devices d LEFT JOIN t ON t.device_key = d.key
         WHERE d.kind IN ('button', 'smoke') AND d.retired_at IS NULL
         GROUP BY d.kind
        """,
        window=rules.test_window_days,
    ):
        tests[r["kind"]] = {
            "devices": r["devices"],
            "tested": r["tested"],
            "compliance_rate": _rate(r["tested"], r["devices"]),
            "tests_today": int(r["tests_today"]),
        }
    for kind in ("button", "smoke"):
        tests.setdefault(
            kind, {"devices": 0, "tested": 0, "compliance_rate": None, "tests_today": 0}
        )

    ledger = rows(
        """
        SELECT count(*) FILTER (WHERE created_at >= %(start)s AND created_at < %(end)s) AS new,
               count(*) FILTER (WHERE closed_at >= %(start)s AND closed_at < %(end)s) AS closed,
               count(*) FILTER (WHERE created_at < %(end)s
                                  AND (closed_at IS NULL OR closed_at >= %(end)s)) AS open,
               count(*) FILTER (WHERE created_at < %(end)s
                                  AND (closed_at IS NULL OR closed_at >= %(end)s)
                                  AND deadline < %(next_day)s) AS overdue,
               count(*) FILTER (WHERE created_at < %(end)s
                                  AND (closed_at IS NULL OR closed_at >= %(end)s)
                                  AND supervised) AS supervised
          FROM hazards
        """,
        next_day=day + timedelta(days=1),
    )[0]
    new_by_rule = {
        r["rule"] or "manual": r["n"]
        for r in rows(
            "SELECT rule, count(*) AS n FROM hazards WHERE created_at >= %(start)s"
            " AND created_at < %(end)s GROUP BY rule"
        )
    }
    notices = rows(
        "SELECT count(*) FILTER (WHERE sent_at >= %(start)s AND sent_at < %(end)s) AS sent,"
        " count(*) FILTER (WHERE responded_at >= %(start)s AND responded_at < %(end)s)"
        "   AS answered,"
        " count(*) FILTER (WHERE escalated_at >= %(start)s AND escalated_at < %(end)s)"
        "   AS escalated FROM notices"
    )[0]

    first = day - timedelta(days=rules.trend_days - 1)
    trend: dict[str, dict[str, Any]] = {
        (first + timedelta(days=i)).isoformat(): {"alerts": 0, "by_kind": dict.fromkeys(KINDS, 0)}
        for i in range(rules.trend_days)
    }
    for r in rows(
        "SELECT (started_at AT TIME ZONE %(tz)s)::date AS day, kind, count(*) AS n FROM alerts"
        " WHERE started_at >= %(first)s AND started_at < %(end)s GROUP BY 1, 2",
        first=datetime.combine(first, time(), tz),
    ):
        slot = trend[r["day"].isoformat()]
        slot["alerts"] += r["n"]
        slot["by_kind"][r["kind"]] += r["n"]

    return {
        "date": day.isoformat(),
        "timezone": timezone,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "built_at": now.astimezone(tz).isoformat(timespec="seconds"),
        "totals": {
            "alerts": sum(by_kind.values()),
            "violations": sum(by_kind[k] for k in VIOLATIONS),
            "late": late,
            "by_kind": by_kind,
            "by_severity": by_severity,
        },
        "districts": districts,
        "operators": operators,
        "buses": buses,
        "repeat_offenders": repeat,
        "devices": devices,
        "alarm_tests": tests,
        "ledger": {**ledger, "new_by_rule": new_by_rule},
        "notices": notices,
        "trend": [{"date": d, **v} for d, v in trend.items()],
        "rules": {
            "repeat_violations": rules.repeat_violations,
            "repeat_window_days": rules.repeat_window_days,
            "test_window_days": rules.test_window_days,
        },
    }


def _rate(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


# ------------------------------------------------------------------ rendering
Table = tuple[str, list[str], list[list[Any]]]


def _pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}%"


def digest_tables(d: dict[str, Any]) -> list[Table]:
    """The digest as titled tables (the HTML, CSV and XLSX share them)."""
    kinds = list(KINDS)
    kind_heads = [KINDS[k] for k in kinds]
    totals = d["totals"]
    overview: list[list[Any]] = [
        ["日期 date", d["date"]],
        ["告警总数 alerts", totals["alerts"]],
        ["违规总数 violations", totals["violations"]],
        ["补传数据 late (backfilled)", totals["late"]],
        *[[f"{KINDS[k]} {k}", totals["by_kind"][k]] for k in kinds],
        *[[f"严重程度 {s}", n] for s, n in totals["by_severity"].items()],
        ["违规通知发出 notices sent", d["notices"]["sent"]],
        ["违规通知反馈 notices answered", d["notices"]["answered"]],
        ["违规通知逾期升级 notices escalated", d["notices"]["escalated"]],
    ]
    tables: list[Table] = [("概况 overview", ["指标 metric", "数值 value"], overview)]

    def grouped(
        title: str, head: str, entries: list[dict[str, Any]], extra: Sequence[str] = ()
    ) -> Table:
        return (
            title,
            ["编号 id", head, "违规 violations", "告警 alerts", *kind_heads, *extra],
            [
                [
                    e["id"],
                    e.get("name") or e.get("plate") or "",
                    e["violations"],
                    e["alerts"],
                    *[e["by_kind"].get(k, 0) for k in kinds],
                    *[e[x] for x in extra],
                ]
                for e in entries
            ],
        )

    tables.append(grouped("片区 districts", "片区 name", d["districts"]))
    operators = grouped(
        "运营单位 operators", "名称 name", d["operators"], ("notices_sent", "notices_answered")
    )
    operators[1][-2:] = ["通知 notices", "反馈 answered"]
    tables.append(operators)
    tables.append(grouped("校车 buses", "车牌 plate", d["buses"]))
    tables.append(
        (
            "屡教不改 repeat offenders",
            ["校车 bus", "车牌 plate", "运营单位 operator", "违规次数 violations", "类型 kinds"],
            [
                [
                    r["bus_id"],
                    r["plate"],
                    r["operator_id"],
                    r["violations"],
                    "、".join(KINDS[k] for k in r["kinds"]),
                ]
                for r in d["repeat_offenders"]
            ],
        )
    )
    tables.append(
        (
            "设备在线率 device online rates",
            [
                "类型 kind",
                "设备数 devices",
                "当日有数据 heard",
                "有数据率 heard rate",
                "离线告警 offline alerts",
                "离线时长(秒) offline s",
                "在线率 online rate",
            ],
            [
                [
                    DEVICE_KINDS[k],
                    v["devices"],
                    v["heard"],
                    _pct(v["heard_rate"]),
                    v["offline_alerts"],
                    v["offline_s"],
                    _pct(v["online_rate"]),
                ]
                for k, v in d["devices"].items()
            ],
        )
    )
    tables.append(
        (
            "报警测试 alarm tests",
            [
                "类型 kind",
                "设备数 devices",
                f"{d['rules']['test_window_days']}天内已测试 tested",
                "合规率 compliance",
                "当日测试 tests today",
            ],
            [
                [
                    DEVICE_KINDS[k],
                    v["devices"],
                    v["tested"],
                    _pct(v["compliance_rate"]),
                    v["tests_today"],
                ]
                for k, v in d["alarm_tests"].items()
            ],
        )
    )
    ledger = d["ledger"]
    tables.append(
        (
            "隐患台账 ledger",
            ["指标 metric", "数值 value"],
            [
                ["新增 new", ledger["new"]],
                ["销号 closed", ledger["closed"]],
                ["在册未销号 open", ledger["open"]],
                ["逾期 overdue", ledger["overdue"]],
                ["挂牌督办 supervised", ledger["supervised"]],
            ],
        )
    )
    tables.append(
        (
            "近7日趋势 7-day trend",
            ["日期 date", "告警 alerts", *kind_heads],
            [[t["date"], t["alerts"], *[t["by_kind"][k] for k in kinds]] for t in d["trend"]],
        )
    )
    return tables


def render_csv(d: dict[str, Any]) -> str:
    """One CSV, a titled block per table; UTF-8 with a BOM so spreadsheets read the Chinese."""
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([f"安校每日通报 daily digest {d['date']}", d["timezone"]])
    for title, head, body in digest_tables(d):
        writer.writerow([])
        writer.writerow([title])
        writer.writerow(head)
        writer.writerows(body)
    return out.getvalue()


def render_xlsx(d: dict[str, Any]) -> bytes:
    """A workbook with one sheet per table."""
    return workbook((title.split(" ")[0], head, body) for title, head, body in digest_tables(d))


def trend_svg(d: dict[str, Any], *, width: int = 720, height: int = 260) -> str:
    """The 7-day trend as an inline SVG stacked bar chart (no script, no external file)."""
    trend = d["trend"]
    left, right, top, bottom = 48, 150, 16, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([t["alerts"] for t in trend] + [1])
    step = _nice_step(peak)
    ymax = step * -(-peak // step)
    slot = plot_w / len(trend)
    bar = slot * 0.6
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" role="img" aria-label="近7日告警趋势 7-day trend"'
        ' font-family="WenQuanYi Micro Hei, Noto Sans CJK SC, sans-serif" font-size="12">'
    ]
    for tick in range(0, ymax + 1, step):
        y = top + plot_h - plot_h * tick / ymax
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{tick}</text>'
        )
    for i, t in enumerate(trend):
        x = left + slot * i + (slot - bar) / 2
        y = top + plot_h
        for kind in KINDS:
            n = t["by_kind"][kind]
            if not n:
                continue
            h = plot_h * n / ymax
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}"'
                f' fill="{_COLORS[kind]}"><title>{KINDS[kind]} {n}</title></rect>'
            )
        parts.append(
            f'<text x="{x + bar / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle">{t["alerts"]}</text>'
            f'<text x="{x + bar / 2:.1f}" y="{height - 14}" text-anchor="middle" fill="#333">'
            f"{t['date'][5:]}</text>"
        )
    for j, kind in enumerate(KINDS):
        y = top + j * 18
        parts.append(
            f'<rect x="{width - right + 12}" y="{y}" width="12" height="12"'
            f' fill="{_COLORS[kind]}"/><text x="{width - right + 30}" y="{y + 10}">'
            f"{KINDS[kind]}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _nice_step(peak: int) -> int:
    for step in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000):
        if peak / step <= 6:
            return step
    return int(10 ** len(str(peak)))


_CSS: Final = """
body{font-family:"WenQuanYi Micro Hei","Noto Sans CJK SC","Microsoft YaHei",sans-serif;
margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px;border-left:4px solid #c00;
padding-left:8px}.sub{color:#666;margin-bottom:16px}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;
padding:8px 14px;min-width:110px}.card b{display:block;font-size:24px}
table{border-collapse:collapse;font-size:13px;margin-bottom:8px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}
"""


def render_html(d: dict[str, Any]) -> str:
    """A self-contained page (inline CSS and SVG) for e-mail and the browser."""
    esc = html.escape
    totals, ledger = d["totals"], d["ledger"]
    cards = [
        ("告警 alerts", totals["alerts"]),
        ("违规 violations", totals["violations"]),
        ("屡教不改 repeat offenders", len(d["repeat_offenders"])),
        ("新增隐患 new hazards", ledger["new"]),
        ("销号 closed", ledger["closed"]),
        ("逾期 overdue", ledger["overdue"]),
    ]
    out = [
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">',
        f"<title>安校每日通报 {esc(d['date'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>安校每日通报 · {esc(d['date'])}</h1>",
        f'<div class="sub">校车与校园安全 daily digest · {esc(d["from"])} — {esc(d["to"])}'
        f" · 生成于 built {esc(d['built_at'])}</div>",
        '<div class="cards">',
        *[f'<div class="card">{esc(label)}<b>{value}</b></div>' for label, value in cards],
        "</div><h2>近7日趋势 7-day trend</h2>",
        trend_svg(d),
    ]
    for title, head, body in digest_tables(d):
        if title.startswith("近7日"):
            continue
        out.append(f"<h2>{esc(title)}</h2>")
        if not body:
            out.append("<p>无 none</p>")
            continue
        out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>")
        out.extend(
            "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in body
        )
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def render(d: dict[str, Any], fmt: str) -> bytes:
    """The digest in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "json":
        import json

        return json.dumps(d, ensure_ascii=False, indent=1, default=str).encode()
    if fmt == "html":
        return render_html(d).encode()
    if fmt == "csv":
        return render_csv(d).encode()
    if fmt == "xlsx":
        return render_xlsx(d)
    raise ValueError(f"unknown digest format {fmt!r}: one of {', '.join(FORMATS)}")
