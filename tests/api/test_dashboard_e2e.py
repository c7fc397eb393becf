"""The monitoring-room dashboard end to end, in headless Chromium against ``anxiao serve``.

A real service process (ingest + API) on a free port, the real broker and a
database of this test's own; Debian's ``chromium`` driven by Playwright's
Python package (``scripts/web.sh`` installs both the browser and the
dashboard's Leaflet copy). Every wait is a readiness condition with a timeout.
Screenshots go to ``tests/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from alerts.store import EpisodeChange, apply_changes
from core.credentials import create_token
from core.fleet import import_fleet
from core.settings import Settings
from tests.core.sample_fleet import sample_fleet
from tests.support import connect_mqtt, running_serve

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("ANXIAO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Contract / issue 6: a panic alert must be on screen within 2 s.
PANIC_BUDGET_MS = 2000
ALARM = re.compile(r"\balarm\b")


@pytest.fixture
def service(fresh_database_url: str, broker: Settings) -> Iterator[dict[str, Any]]:
    """``anxiao serve --clock live`` on a sample fleet, ready by ``/readyz``; a monitor token."""
    tag = f"e2e{time.monotonic_ns() % 10**8}"
    import_fleet(sample_fleet(tag), database_url=fresh_database_url)
    with running_serve(
        fresh_database_url, clock="live", client_id=f"dashboard-e2e-{tag}", root=ROOT
    ) as (base, _process):
        leaflet = httpx.get(f"{base}/static/vendor/leaflet/leaflet.js", timeout=5.0)
        assert leaflet.status_code == 200, "Leaflet is not installed: run `bash scripts/web.sh`"
        yield {
            "base": base,
            "tag": tag,
            "token": create_token(database_url=fresh_database_url, role="monitor", scope_id=None),
            "database_url": fresh_database_url,
        }


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: run `bash scripts/web.sh` (installs Debian's chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console error: {message.text}")

    tab.on("console", on_console)
    yield tab
    context.close()
    assert problems == [], problems


# ------------------------------------------------------------------ devices
def _publish(settings: Settings, topic: str, payload: dict[str, Any]) -> None:
    gateway = connect_mqtt(settings.mqtt_gateway, client_id=f"gw-e2e-{time.monotonic_ns()}")
    try:
        gateway.publish(topic, json.dumps(payload), qos=1).wait_for_publish(5)
    finally:
        gateway.disconnect()
        gateway.loop_stop()


def publish_fix(settings: Settings, device: str, *, lon: float, lat: float, speed: float) -> None:
    """One GPS fix, as the bus's terminal sends it through the gateway, stamped now."""
    fix = {"ts": int(time.time() * 1000), "lon": lon, "lat": lat, "speed": speed, "heading": 45}
    _publish(settings, f"anxiao/v1/dev/{device}/gps", fix)


def press_by_mqtt(settings: Settings, service: dict[str, Any], device: str) -> None:
    """A button press over MQTT: the alerts engine in ``serve`` raises ``panic_button``."""
    _publish(
        settings,
        f"anxiao/v1/dev/{device}/button",
        {"ts": int(time.time() * 1000), "event": "press"},
    )


def store_episode(database_url: str, change: EpisodeChange) -> None:
    """Commit one episode change as the alerts engine does (NOTIFY included)."""

    async def write() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():
                await apply_changes(conn, [change])
        finally:
            await conn.close()

    # Playwright's sync API keeps an event loop running in this thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, write()).result(10)


#: The press goes over MQTT; the alerts engine inside ``anxiao serve`` raises the alert.
press_button: Callable[[Settings, dict[str, Any], str], None] = press_by_mqtt


# --------------------------------------------------------------------- test
def test_monitoring_room_end_to_end(service: dict[str, Any], broker: Settings, page: Page) -> None:
    tag, base = service["tag"], service["base"]
    bus, gps, button = f"B1-{tag}", f"GPS-B1-{tag}", f"BTN-S001-1-{tag}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    # Log in with a monitor token; the fleet is drawn and the stream is live.
    page.goto(base + "/")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#login h1")).to_contain_text("监控室")
    page.fill("#token-input", service["token"])
    page.click("#login-submit")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#stream-status")).to_have_attribute("data-state", "live")
    expect(page.locator(f'[data-school="S001-{tag}"] .school-name')).to_have_text("星海小学")
    expect(page.locator(".district-label")).to_have_text("片区一")
    expect(page.locator("#who")).to_contain_text("监控室")
    # Device health: one button, one smoke detector, one GPS; none heard yet.
    expect(page.locator(".rate-button .rate-label")).to_have_text("一键报警联网率")
    expect(page.locator(".rate-button .rate-count")).to_have_text("0 / 1")

    # A simulated bus moves: two fixes over MQTT, the marker follows.
    marker = page.locator(f'path[data-bus="{bus}"]')
    publish_fix(broker, gps, lon=120.705, lat=31.3025, speed=32.0)
    expect(marker).to_have_attribute("data-lon", "120.705")
    first_box, first_path = marker.bounding_box(), marker.get_attribute("d")
    expect(marker).to_have_attribute("data-state", "moving")
    publish_fix(broker, gps, lon=120.7125, lat=31.3065, speed=36.5)
    expect(marker).to_have_attribute("data-lon", "120.7125")
    expect(marker).to_have_attribute("data-lat", "31.3065")
    second_box = marker.bounding_box()
    assert first_box is not None and second_box is not None
    assert marker.get_attribute("d") != first_path
    # East and north on screen: right and up.
    assert second_box["x"] > first_box["x"] + 5, (first_box, second_box)
    assert second_box["y"] < first_box["y"] - 5, (first_box, second_box)
    expect(page.locator('[data-count="moving"]')).to_have_text("1")
    expect(page.locator(".rate-gps .rate-count")).to_have_text("1 / 1")

    # A panic alert appears within 2 s, with the alarm sound, on the school.
    item = page.locator('#alert-queue li[data-kind="panic_button"]')
    expect(item).to_have_count(0)
    pressed = time.monotonic()
    press_button(broker, service, button)
    item.wait_for(state="visible", timeout=PANIC_BUDGET_MS)
    shown_ms = (time.monotonic() - pressed) * 1000
    assert shown_ms <= PANIC_BUDGET_MS, shown_ms
    print(f"panic alert on screen {shown_ms:.0f} ms after the press")
    expect(item.locator(".kind")).to_have_text("一键报警")
    expect(item.locator(".severity")).to_have_text("紧急")
    expect(item.locator(".alert-subject")).to_contain_text("星海小学")
    school = page.locator(f'[data-school="S001-{tag}"]')
    expect(school).to_have_class(ALARM)
    page.wait_for_function("() => Number(document.body.dataset.beeps || 0) >= 1")
    expect(page.locator("#alert-count")).to_have_text("1")
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"))

    # Acknowledge with a note.
    item.locator('button[data-action="ack"]').click()
    dialog = page.locator("#decision")
    expect(dialog).to_be_visible()
    expect(page.locator("#decision-title")).to_have_text("确认告警")
    page.fill("#decision-note", "已电话联系学校安保")
    page.click("#decision-submit")
    expect(dialog).to_be_hidden()
    expect(item).to_have_attribute("data-acknowledged", "true")
    expect(item.locator('button[data-action="ack"]')).to_have_count(0)

    # Resolve: a note is required, then the alert leaves the queue.
    item.locator('button[data-action="resolve"]').click()
    expect(page.locator("#decision-title")).to_have_text("处置并关闭告警")
    page.click("#decision-submit")
    expect(page.locator("#decision-error")).to_be_visible()
    page.fill("#decision-note", "误触，已复位按钮")
    page.click("#decision-submit")
    expect(dialog).to_be_hidden()
    expect(item).to_have_count(0)
    expect(page.locator("#alert-empty")).to_be_visible()
    expect(school).not_to_have_class(ALARM)

    headers = {"Authorization": f"Bearer {service['token']}"}
    with httpx.Client(base_url=base, headers=headers, timeout=5.0) as http:
        alerts = http.get("/api/v1/alerts", params={"kind": "panic_button"}).json()["items"]
    assert len(alerts) == 1
    assert alerts[0]["state"] == "cleared" and alerts[0]["acknowledged"] is True
    assert alerts[0]["resolution_note"] == "误触，已复位按钮"

    # Play the bus's track back over the last hour.
    page.click("#playback-open")
    playback = page.locator("#playback")
    expect(playback).to_be_visible()
    page.select_option("#playback-bus", bus)
    page.click("#playback-load")
    expect(playback).to_have_attribute("data-points", "2")
    expect(page.locator("path.track-line")).to_have_count(1)
    expect(page.locator("#playback-info")).to_contain_text("2 个定位点")
    page.click("#playback-play")
    expect(page.locator("#playback-slider")).to_have_value("1", timeout=15_000)
    page.screenshot(path=str(ARTIFACTS / "dashboard-playback.png"))

    # English is one click away and stays after a reload (token kept too).
    page.locator("#app [data-action=lang]").click()
    expect(page.locator("#alerts-title")).to_contain_text("Alert queue")
    page.reload()
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator(".rate-button .rate-label")).to_have_text("Panic buttons online")
    expect(page.locator('[data-count="moving"]')).to_have_text("1")
    page.screenshot(path=str(ARTIFACTS / "dashboard-en.png"))


def test_school_sees_its_own_and_cannot_decide(
    server: str, world: dict[str, Any], database_url: str, page: Page
) -> None:
    """A school's token: its own devices only, no fleet filters, no ack/resolve buttons."""
    a = world["a"]
    page.goto(server + "/")
    page.fill("#token-input", world["tokens"]["school_a"])
    page.click("#login-submit")
    expect(page.locator("#stream-status")).to_have_attribute("data-state", "live")
    expect(page.locator("#who")).to_contain_text(f"学校 · S001-{a}")
    expect(page.locator("#filter-district")).to_be_hidden()  # the fleet is not for schools
    # Its one button (last heard an hour ago) is offline; the other school's are not counted.
    expect(page.locator(".rate-button .rate-count")).to_have_text("0 / 1")
    expect(page.locator(f'#health-offline li[data-device="BTN-S001-1-{a}"]')).to_be_visible()
    expect(
        page.locator(f'#health-offline li[data-device="BTN-S001-1-{world["b"]}"]')
    ).to_have_count(0)
    # An alert of its own arrives live, without the buttons only monitor and admin may use.
    key = f"e2e-{time.monotonic_ns()}"  # a fault source of its own: no other test's episode
    change = EpisodeChange(
        "open",
        "device_fault",
        f"SMK-S001-1-{a}",
        datetime.now(UTC),
        details={"fault": "smoke"},
        episode_key=key,
    )
    store_episode(database_url, change)
    item = page.locator(f'#alert-queue li[data-kind="device_fault"]:has-text("SMK-S001-1-{a}")')
    expect(item.first).to_be_visible()
    expect(item.first.locator('button[data-action="locate"]')).to_be_visible()
    expect(page.locator('#alert-queue button[data-action="ack"]')).to_have_count(0)
    expect(page.locator('#alert-queue button[data-action="resolve"]')).to_have_count(0)
