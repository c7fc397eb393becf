"""Delivery through the outbox: signed webhooks with retries across a restart, e-mail over SMTP.

The webhook receiver is a real HTTP server on 127.0.0.1 that fails the first
tries of each delivery; the SMTP sink is aiosmtpd on 127.0.0.1. The restart
test runs the closing loop as its own process (``anxiao closing``) and kills
it with SIGKILL in the middle of the retries.
"""

from __future__ import annotations

import email
import email.policy
import io
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from openpyxl import load_workbook

from alerts.closing import ClosingLoop
from alerts.outbox import DeliveryPolicy, verify
from api import create_app
from core.credentials import create_token
from simulators.serving import free_port
from tests.closing.support import (
    Receiver,
    closing_settings,
    fleet_with_contacts,
    run,
    store_violations,
    webhook_receiver,
)

ROOT = Path(__file__).resolve().parents[2]


def _closing_process(database_url: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "ANXIAO_DATABASE_URL": database_url,
        "ANXIAO_CLOSING_POLL_S": "0.1",
        "ANXIAO_NOTICE_BATCH_WINDOW_S": "0",
        "ANXIAO_OUTBOX_BACKOFF_INITIAL_S": "0.3",
        "ANXIAO_OUTBOX_BACKOFF_MAX_S": "1",
        "ANXIAO_LEDGER_SCAN_INTERVAL_S": "3600",
        "ANXIAO_SMTP_HOST": "",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "anxiao", "closing"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(process: subprocess.Popen[str], sig: int) -> str:
    if process.poll() is None:
        process.send_signal(sig)
    process.wait(30)
    assert process.stdout is not None
    with process.stdout:
        return process.stdout.read()


def _wait_until_recorded(database_url: str, *, count: int, timeout_s: float) -> None:
    """Readiness: the outbox says every webhook was delivered (the receiver may know first)."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            done = conn.execute(
                "SELECT count(*) FROM outbox WHERE channel = 'webhook' AND state = 'delivered'"
            ).fetchone()[0]
            if done == count:
                return
            assert time.monotonic() < deadline, f"only {done} of {count} deliveries recorded"
            time.sleep(0.05)


def test_webhooks_are_retried_signed_and_survive_a_restart(fresh_database_url) -> None:
    with webhook_receiver(fail_first=3) as rx:
        tag = fleet_with_contacts(fresh_database_url, webhook=f"{rx.url}/hook", mail=None)
        # Three critical violations (each its own notice) and two ordinary ones (one batch).
        run(store_violations(fresh_database_url, tag, [100.0, 70.0, 95.0, 66.0, 120.0]))
        first = _closing_process(fresh_database_url)
        try:
            rx.wait_for(lambda r: sum(s.status == 500 for s in r.seen) >= 5, timeout_s=60)
        finally:
            output = _stop(first, signal.SIGKILL)  # no chance to tidy up
        assert len(Receiver.notices(rx.delivered())) < 4, output
        second = _closing_process(fresh_database_url)
        try:
            rx.wait_for(lambda r: len(Receiver.notices(r.delivered())) == 4, timeout_s=60)
            _wait_until_recorded(fresh_database_url, count=4, timeout_s=30)
        finally:
            output = _stop(second, signal.SIGTERM)
        seen = list(rx.seen)

    with psycopg.connect(fresh_database_url) as conn:
        secret = conn.execute(
            "SELECT secret FROM operator_webhook_secrets WHERE operator_id = %s", (f"OP1-{tag}",)
        ).fetchone()[0]
        notices = [r[0] for r in conn.execute("SELECT id FROM notices ORDER BY id").fetchall()]
        rows = conn.execute(
            "SELECT id, state, attempts FROM outbox WHERE channel = 'webhook' ORDER BY id"
        ).fetchall()
    # Nothing lost: every notice's webhook was delivered and recorded as such.
    assert len(notices) == 4
    assert Receiver.notices([s for s in seen if s.status == 200]) == set(notices)
    assert [r[1] for r in rows] == ["delivered"] * 4, output
    # Every try carried a valid signature over its timestamp and body.
    tries: dict[str, list[Any]] = defaultdict(list)
    for s in seen:
        assert s.headers["x-anxiao-event"] == "notice"
        assert s.headers["content-type"].startswith("application/json")
        stamp = int(s.headers["x-anxiao-timestamp"])
        assert abs(stamp - time.time()) < 300
        assert verify(secret, stamp, s.body, s.headers["x-anxiao-signature"])
        assert not verify(secret, stamp, s.body + b" ", s.headers["x-anxiao-signature"])
        tries[s.headers["x-anxiao-delivery"]].append(s)
    # Each delivery failed three times before it went through; retries really happened.
    assert set(tries) == {str(r[0]) for r in rows}
    for delivery, attempts in tries.items():
        statuses = [a.status for a in attempts]
        assert statuses[:3] == [500, 500, 500], delivery
        assert 200 in statuses[3:], delivery


def test_a_delivery_given_up_is_visible_with_its_error(fresh_database_url) -> None:
    with webhook_receiver(fail_first=0) as rx:
        rx.always_fail_paths.add("/dead")
        tag = fleet_with_contacts(fresh_database_url, webhook=f"{rx.url}/dead", mail=None)
        run(store_violations(fresh_database_url, tag, [99.0]))
        loop = ClosingLoop(closing_settings(fresh_database_url, outbox_max_attempts=3))
        report = run(loop.run_once())
        assert len(report.notices_sent) == 1
        assert len(report.deliveries.retried) == 1
        deadline = time.monotonic() + 20
        failed: list[int] = []
        while not failed:  # readiness: poll the outbox until the retries are spent
            assert time.monotonic() < deadline, "the delivery was never given up"
            time.sleep(0.05)
            failed = run(loop.run_once()).deliveries.failed
        assert run(loop.run_once()).deliveries == type(report.deliveries)()  # nothing left
        assert len(rx.seen) == 3  # exactly max_attempts tries

    token = create_token(database_url=fresh_database_url, role="monitor", scope_id=None)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(database_url=fresh_database_url)) as client:
        page = client.get("/api/v1/outbox", params={"state": "failed"}, headers=headers).json()
        [item] = page["items"]
        assert item["id"] == failed[0]
        assert item["attempts"] == 3
        assert item["last_error"].startswith("_Refused: HTTP 500")
        assert item["failed_at"] is not None
        notice = client.get(f"/api/v1/notices/{report.notices_sent[0]}", headers=headers).json()
        assert [(d["channel"], d["state"]) for d in notice["deliveries"]] == [("webhook", "failed")]
        assert (
            client.get("/api/v1/outbox", params={"state": "lost"}, headers=headers).status_code
            == 422
        )


class _Sink:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


def test_notice_and_digest_mail_reach_an_smtp_sink(fresh_database_url) -> None:
    sink = _Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()  # returns once the server answers
    try:
        tag = fleet_with_contacts(fresh_database_url, webhook=None, mail="ops@example.cn")
        run(store_violations(fresh_database_url, tag, [70.0]))
        settings = closing_settings(
            fresh_database_url,
            smtp_host="127.0.0.1",
            smtp_port=controller.port,
            smtp_from="anxiao@bureau.example.cn",
            digest_email_to="safety@bureau.example.cn, office@bureau.example.cn",
            digest_local_time="00:00",
        )
        report = run(ClosingLoop(settings).run_once())
        assert len(report.deliveries.delivered) == 2
        again = run(ClosingLoop(settings).run_once())  # the digest is built once a day
        assert again.digest_day is None
        assert again.deliveries.delivered == []
    finally:
        controller.stop()
    assert report.digest_day is not None
    notice_mail, digest_mail = sorted(sink.envelopes, key=lambda e: len(e.rcpt_tos))
    assert notice_mail.rcpt_tos == ["ops@example.cn"]
    assert notice_mail.mail_from == "anxiao@bureau.example.cn"
    notice = email.message_from_bytes(notice_mail.content, policy=email.policy.default)
    assert notice["Subject"].startswith("安校校车违规通知 第")
    assert "超速" in notice.get_content()
    assert digest_mail.rcpt_tos == ["safety@bureau.example.cn", "office@bureau.example.cn"]
    digest = email.message_from_bytes(digest_mail.content, policy=email.policy.default)
    assert digest["Subject"] == f"安校每日通报 {report.digest_day} daily digest"
    page = digest.get_body(preferencelist=("html",)).get_content()
    assert "<svg" in page
    assert f"安校每日通报 · {report.digest_day}" in page
    [attachment] = list(digest.iter_attachments())
    assert attachment.get_filename() == f"anxiao-digest-{report.digest_day}.xlsx"
    book = load_workbook(io.BytesIO(attachment.get_content()))
    assert book.sheetnames[0] == "概况"
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM digest_runs").fetchone()[0] == 1


def test_the_backoff_doubles_within_its_jitter_and_is_capped() -> None:
    """Retry delays (pure: no wall-clock timing in tests)."""
    policy = DeliveryPolicy(backoff_initial_s=30.0, backoff_max_s=3600.0)
    for attempts, base_s in [(1, 30.0), (2, 60.0), (3, 120.0), (8, 3600.0), (20, 3600.0)]:
        for _ in range(50):
            assert 0.8 * base_s <= policy.delay_s(attempts) <= 1.2 * base_s
