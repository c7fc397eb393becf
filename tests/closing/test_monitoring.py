"""Automatic ledger entries: each monitoring rule creates its entry once, updates it, clears it.

Scans look at the whole database, so every test here has a database of its own.
"""

from __future__ import annotations

import secrets
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from alerts.ledger import LedgerRules, scan_monitoring
from core.fleet import import_fleet
from tests.closing.support import (
    expected_alerts,
    load_simulation,
    simulate_day,
    store_alert,
    store_ground_truth,
)
from tests.core.sample_fleet import sample_fleet

# The async ``db`` fixture lives on the session loop (asyncio_default_fixture_loop_scope).
pytestmark = pytest.mark.asyncio(loop_scope="session")

TZ = "Asia/Shanghai"
RULES = LedgerRules()


@pytest.fixture
async def db(fresh_database_url: str) -> Any:
    conn = await asyncpg.connect(fresh_database_url)
    yield conn
    await conn.close()


def _fleet(url: str) -> str:
    tag = secrets.token_hex(3)
    import_fleet(sample_fleet(tag), database_url=url)
    return tag


async def _heard(db: Any, device_id: str, at: datetime) -> None:
    await db.execute(
        "INSERT INTO device_status (device_key, last_seen_at, last_event_at)"
        " SELECT key, $2, $2 FROM devices WHERE id = $1"
        " ON CONFLICT (device_key) DO UPDATE SET last_seen_at = $2, last_event_at = $2",
        device_id,
        at,
    )


async def _entries(db: Any, rule: str) -> list[Any]:
    return await db.fetch(
        "SELECT h.*, (SELECT array_agg(alert_id ORDER BY alert_id) FROM hazard_alerts x"
        " WHERE x.hazard_id = h.id) AS alerts FROM hazards h WHERE rule = $1 ORDER BY id",
        rule,
    )


async def _scan(db: Any, now: datetime) -> dict[str, Any]:
    return await scan_monitoring(db, now=now, timezone=TZ, rules=RULES)


async def test_device_offline_for_a_day_is_one_entry_until_it_is_heard_again(
    db, fresh_database_url
) -> None:
    t = _fleet(fresh_database_url)
    gps = f"GPS-B1-{t}"
    now = datetime.now(UTC).replace(microsecond=0)
    for device in (gps, f"SMK-S001-1-{t}", f"BTN-S001-1-{t}"):
        await _heard(db, device, now - timedelta(minutes=1))
    await _heard(db, gps, now - timedelta(hours=23))
    assert (await _scan(db, now))["device_offline"].created == []  # 23 h is not yet a hazard

    last_seen = now - timedelta(hours=25)
    await _heard(db, gps, last_seen)
    await db.execute("UPDATE device_status SET last_seen_at = $1", last_seen)  # GPS only now
    await _heard(db, f"SMK-S001-1-{t}", now)
    await _heard(db, f"BTN-S001-1-{t}", now)
    alert = await store_alert(
        fresh_database_url,
        gps,
        "device_offline",
        last_seen + timedelta(seconds=300),
        details={"last_seen_at": last_seen.isoformat(), "threshold_s": 300},
    )
    first = await _scan(db, now)
    assert len(first["device_offline"].created) == 1
    [entry] = await _entries(db, "device_offline")
    assert entry["subject"] == gps
    assert entry["device_id"] == gps
    assert entry["bus_id"] == f"B1-{t}"
    assert entry["operator_id"] == f"OP1-{t}"
    assert entry["school_id"] == f"S001-{t}"
    assert entry["district_id"] == f"D01-{t}"
    assert entry["state"] == "found"
    assert entry["source"] == "monitoring"
    assert entry["category"] == "school_bus"
    assert entry["name"].startswith("车载定位终端离线超过24小时")
    assert list(entry["alerts"]) == [alert]

    # Scanned again while it lasts: the same entry, updated, nothing new.
    again = await _scan(db, now + timedelta(minutes=10))
    assert again["device_offline"].created == []
    assert again["device_offline"].updated == 1
    [updated] = await _entries(db, "device_offline")
    assert updated["last_detected_at"] == now + timedelta(minutes=10)
    assert "约 25 小时" in updated["description"]

    # Heard again: the condition clears, the entry stays for a person to close.
    await _heard(db, gps, now + timedelta(minutes=11))
    cleared = await _scan(db, now + timedelta(minutes=12))
    assert cleared["device_offline"].cleared == 1
    [done] = await _entries(db, "device_offline")
    assert done["condition_cleared_at"] == now + timedelta(minutes=12)
    assert done["state"] == "found"

    # A new outage of more than a day is a new entry.
    later = now + timedelta(minutes=11, hours=25)
    for device in (f"SMK-S001-1-{t}", f"BTN-S001-1-{t}"):
        await _heard(db, device, later)
    assert len((await _scan(db, later))["device_offline"].created) == 1
    assert [e["subject"] for e in await _entries(db, "device_offline")] == [gps, gps]


async def test_a_bus_with_three_major_violations_in_seven_days_is_a_repeat_offender(
    db, fresh_database_url
) -> None:
    t, other = _fleet(fresh_database_url), _fleet(fresh_database_url)
    now = datetime.now(UTC).replace(microsecond=0)
    ids = []
    for days, kind in ((6, "speeding"), (3, "route_deviation"), (1, "out_of_hours")):
        start = now - timedelta(days=days)
        ids.append(
            await store_alert(
                fresh_database_url,
                f"GPS-B1-{t}",
                kind,
                start,
                ended_at=start + timedelta(minutes=1),
                details={"max_speed_kmh": 70.0, "limit_kmh": 60.0} if kind == "speeding" else {},
            )
        )
    # Two violations and one minor alert on another bus: not a repeat offender.
    for days, kind in ((2, "speeding"), (1, "speeding"), (1, "clock_skew")):
        start = now - timedelta(days=days, minutes=5)
        await store_alert(
            fresh_database_url,
            f"GPS-B1-{other}",
            kind,
            start,
            ended_at=start + timedelta(minutes=1),
        )
    # An old violation (8 days ago) is outside the window.
    old = now - timedelta(days=8)
    await store_alert(
        fresh_database_url,
        f"GPS-B1-{other}",
        "route_deviation",
        old,
        ended_at=old + timedelta(minutes=1),
    )

    first = await _scan(db, now)
    assert len(first["repeat_offender"].created) == 1
    [entry] = await _entries(db, "repeat_offender")
    assert entry["bus_id"] == f"B1-{t}"
    assert entry["level"] == "major"
    assert entry["responsible_unit"] == "苏州园区校车服务有限公司"
    assert sorted(entry["alerts"]) == sorted(ids)

    fourth = await store_alert(
        fresh_database_url,
        f"GPS-B1-{t}",
        "speeding",
        now - timedelta(hours=1),
        ended_at=now - timedelta(minutes=59),
    )
    second = await _scan(db, now)
    assert second["repeat_offender"].created == []
    [entry] = await _entries(db, "repeat_offender")
    assert sorted(entry["alerts"]) == sorted([*ids, fourth])  # updated while it lasts
    assert '"violations": 4' in entry["details"]

    # A week later the window is empty: the condition clears, no new entry.
    quiet = await _scan(db, now + timedelta(days=7))
    assert quiet["repeat_offender"].cleared == 1
    assert quiet["repeat_offender"].created == []


async def test_an_emergency_button_untested_for_ninety_days(db, fresh_database_url) -> None:
    t, other = _fleet(fresh_database_url), _fleet(fresh_database_url)
    now = datetime.now(UTC).replace(microsecond=0)
    await db.execute("UPDATE devices SET registered_at = $1", now - timedelta(days=200))

    async def button_event(tag: str, at: datetime, event: str = "test") -> None:
        await db.execute(
            "INSERT INTO sensor_events (device_key, channel, ts, received_at, state)"
            " SELECT key, 'button', $2, $2, $3 FROM devices WHERE id = $1",
            f"BTN-S001-1-{tag}",
            at,
            event,
        )

    await button_event(t, now - timedelta(days=95))
    await button_event(t, now - timedelta(days=20), "press")  # a press is no test
    await button_event(other, now - timedelta(days=30))  # tested within 90 days
    first = await _scan(db, now)
    assert len(first["button_untested"].created) == 1
    [entry] = await _entries(db, "button_untested")
    assert entry["subject"] == f"BTN-S001-1-{t}"
    assert entry["school_id"] == f"S001-{t}"
    assert entry["category"] == "public_security"
    assert (now - timedelta(days=95)).astimezone(ZoneInfo(TZ)).date().isoformat() in entry[
        "description"
    ]
    assert (await _scan(db, now + timedelta(hours=1)))["button_untested"].created == []

    await button_event(t, now + timedelta(hours=2))  # the school tests it
    cleared = await _scan(db, now + timedelta(hours=3))
    assert cleared["button_untested"].cleared == 1
    assert len(await _entries(db, "button_untested")) == 1


async def test_a_school_whose_devices_sent_nothing_all_day(db, fresh_database_url) -> None:
    loud, silent = _fleet(fresh_database_url), _fleet(fresh_database_url)
    tz = ZoneInfo(TZ)
    day = datetime(2026, 11, 16, tzinfo=tz)  # a Monday, local midnight

    async def heartbeat(device: str, at: datetime) -> None:
        await db.execute(
            "INSERT INTO heartbeats (device_key, ts, received_at)"
            " SELECT key, $2, $2 FROM devices WHERE id = $1",
            device,
            at,
        )

    await heartbeat(f"SMK-S001-1-{loud}", day + timedelta(hours=12))
    await heartbeat(f"GPS-B1-{silent}", day - timedelta(minutes=1))  # the day before only
    first = await _scan(db, day + timedelta(days=1, hours=1))
    assert len(first["zero_data"].created) == 1
    [entry] = await _entries(db, "zero_data")
    assert entry["subject"] == f"S001-{silent}"
    assert entry["name"] == f"零数据学校：星海小学（S001-{silent}）"
    assert "2026-11-16" in entry["description"]

    # Silent the next day too: still the one entry, now about both days.
    await heartbeat(f"GPS-B1-{loud}", day + timedelta(days=1, hours=8))
    second = await _scan(db, day + timedelta(days=2, hours=1))
    assert second["zero_data"].created == []
    assert second["zero_data"].updated == 1
    [entry] = await _entries(db, "zero_data")
    assert '"last_silent_day": "2026-11-17"' in entry["details"]

    # Data again: cleared.
    await heartbeat(f"BTN-S001-1-{silent}", day + timedelta(days=2, hours=9))
    await heartbeat(f"SMK-S001-1-{loud}", day + timedelta(days=2, hours=9))
    third = await _scan(db, day + timedelta(days=3, hours=1))
    assert third["zero_data"].cleared == 1
    assert third["zero_data"].created == []


async def test_entries_from_a_simulated_day_are_created_once(db, fresh_database_url) -> None:
    sim = simulate_day("2026-11-16", prefix=f"M{secrets.token_hex(2)}-", buses=12, schools=3)
    await load_simulation(sim, fresh_database_url)
    await store_ground_truth(sim, fresh_database_url)
    end = datetime(2026, 11, 17, tzinfo=ZoneInfo(TZ))
    devices = [d["id"] for d in sim.fleet["devices"]]
    schools = {d.get("school") for d in sim.fleet["devices"]} | {
        b["school"] for b in sim.fleet["buses"]
    }
    schools.discard(None)
    violations = Counter(
        r["bus"]
        for r in expected_alerts(sim)
        if r["kind"] in ("speeding", "route_deviation", "out_of_hours")
    )

    # Just after the day: every school sent data, no device is silent for a day.
    after = await _scan(db, end + timedelta(hours=1))
    assert after["zero_data"].created == []
    assert after["device_offline"].created == []
    assert len(after["repeat_offender"].created) == sum(1 for n in violations.values() if n >= 3)

    # A day and an hour later nothing more came: every device is a day offline, every
    # school sent nothing on the 17th — each an entry, once.
    later = await _scan(db, end + timedelta(hours=25))
    assert sorted(e["subject"] for e in await _entries(db, "device_offline")) == sorted(devices)
    assert sorted(e["subject"] for e in await _entries(db, "zero_data")) == sorted(schools)
    again = await _scan(db, end + timedelta(hours=26))
    assert all(c.created == [] for c in again.values())
    assert len(later["device_offline"].created) == len(devices)
    assert await db.fetchval("SELECT count(*) FROM hazards") == len(devices) + len(schools) + len(
        after["repeat_offender"].created
    )
