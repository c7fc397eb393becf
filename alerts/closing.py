"""The closing loop: everything that happens after an alert, as one background entry point.

``ClosingLoop(settings).run()`` runs four supervised tasks in one
``asyncio.TaskGroup`` (conventions #7), each round in its own transaction:

* ``outbox``   delivers due webhooks and e-mails (:mod:`alerts.outbox`);
* ``notices``  puts new violations into notices, sends the due ones, and
  escalates unanswered ones into the ledger (:mod:`alerts.notices`);
* ``ledger``   runs the monitoring rules and flags overdue entries for
  supervision (:mod:`alerts.ledger`);
* ``digest``   at ``digest_local_time`` builds yesterday's digest once (a
  ``digest_runs`` row decides which process does it) and mails it through
  the outbox (:mod:`alerts.digest`).

A task that loses the database waits with a capped, jittered exponential
backoff and tries again; nothing is held in memory between rounds, so a
restart (or a second process) loses and duplicates nothing. Cancelling
``run()`` stops it. :meth:`ClosingLoop.run_once` does one round of each at a
given time, for tests and the CLI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any, Final, TypeAlias
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import psycopg

from alerts.digest import DigestRules, build_digest, render_html, render_xlsx
from alerts.ledger import (
    LedgerRules,
    flag_overdue,
    ledger_xlsx,
    local_timezone,
    month_rows,
    scan_monitoring,
)
from alerts.notices import NoticePolicy, collect_notices, escalate_overdue
from alerts.outbox import (
    DeliveryPolicy,
    DeliveryRound,
    SmtpConfig,
    deliver_due,
    email_message,
    webhook_secret,
)
from alerts.outbox import enqueue as enqueue_delivery
from core.db import AsyncConnection
from core.errors import ConfigError
from core.settings import Settings

__all__ = [
    "ClosingLoop",
    "RoundReport",
    "cli_digest",
    "cli_ledger_export",
    "cli_webhook_secret",
    "enqueue_digest_mail",
]

log = logging.getLogger("anxiao.closing")

#: Errors a round survives: the database or a receiver went away.
_TRANSIENT: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.CannotConnectNowError,
    # A connection the server dropped while it sat idle in the pool can fail this way.
    asyncpg.exceptions.InternalClientError,
    psycopg.OperationalError,
)
_BACKOFF_INITIAL_S: Final = 0.2
_BACKOFF_MAX_S: Final = 30.0
_COMMAND_TIMEOUT_S: Final = 60.0
Pool: TypeAlias = "asyncpg.Pool[Any]"


@dataclass(slots=True)
class RoundReport:
    """What one :meth:`ClosingLoop.run_once` did."""

    notices_sent: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)
    hazards_created: dict[str, list[int]] = field(default_factory=dict)
    supervised: list[int] = field(default_factory=list)
    digest_day: date | None = None
    deliveries: DeliveryRound = field(default_factory=DeliveryRound)


class ClosingLoop:
    """Notices, ledger scans, digests and the outbox, supervised (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        s = settings
        smtp = (
            SmtpConfig(
                host=s.smtp_host,
                port=s.smtp_port,
                sender=s.smtp_from,
                username=s.smtp_username,
                password=s.smtp_password,
                starttls=s.smtp_starttls,
                timeout_s=s.smtp_timeout_s,
            )
            if s.smtp_host
            else None
        )
        self.delivery = DeliveryPolicy(
            max_attempts=s.outbox_max_attempts,
            backoff_initial_s=s.outbox_backoff_initial_s,
            backoff_max_s=s.outbox_backoff_max_s,
            webhook_timeout_s=s.webhook_timeout_s,
            smtp=smtp,
        )
        self.ledger_rules = LedgerRules(
            offline_after_s=s.ledger_offline_after_s,
            repeat_violations=s.ledger_repeat_violations,
            repeat_window_days=s.ledger_repeat_window_days,
            button_test_days=s.ledger_button_test_days,
            deadline_days=s.ledger_auto_deadline_days,
        )
        self.digest_rules = DigestRules(
            repeat_violations=s.ledger_repeat_violations,
            repeat_window_days=s.ledger_repeat_window_days,
            test_window_days=s.ledger_button_test_days,
        )
        hour, minute = (int(x) for x in s.digest_local_time.split(":"))
        self.digest_at = dtime(hour, minute)
        self.digest_to = [a.strip() for a in s.digest_email_to.split(",") if a.strip()]
        self._http: httpx.AsyncClient | None = None

    # ------------------------------------------------------------ entry points
    async def run(self) -> None:
        """Run every task until cancelled; survives database restarts."""
        self._http = httpx.AsyncClient(follow_redirects=False)
        try:
            poll_s = self.settings.closing_poll_s
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._every("outbox", poll_s, self._outbox), name="outbox")
                tasks.create_task(self._every("notices", poll_s, self._notices), name="notices")
                tasks.create_task(
                    self._every("ledger", self.settings.ledger_scan_interval_s, self._ledger),
                    name="ledger",
                )
                tasks.create_task(
                    self._every("digest", max(poll_s, 30.0), self._digest), name="digest"
                )
        finally:
            http, self._http = self._http, None
            await http.aclose()

    async def run_once(self, *, now: datetime | None = None) -> RoundReport:
        """One round of each task as of ``now`` (default: the current time)."""
        now = now or datetime.now(UTC)
        report = RoundReport()
        pool = await self._pool()
        async with httpx.AsyncClient(follow_redirects=False) as http:
            self._http = http
            try:
                for step in (self._notices, self._ledger, self._digest, self._outbox):
                    await step(pool, now, report)
            finally:
                self._http = None
                await _quiet_close(pool)
        return report

    # ------------------------------------------------------------------- tasks
    async def _timezone(self, conn: AsyncConnection) -> str:
        return await local_timezone(conn, default=self.settings.timezone)

    def _notice_policy(self, timezone: str) -> NoticePolicy:
        s = self.settings
        return NoticePolicy(
            batch_window_s=s.notice_batch_window_s,
            answer_window_s=s.notice_answer_window_s,
            critical_over_ratio=s.notice_critical_over_ratio,
            email_sender=s.smtp_from,
            timezone=timezone,
            escalation_deadline_days=s.ledger_auto_deadline_days,
        )

    async def _outbox(self, pool: Pool, now: datetime, report: RoundReport) -> None:
        assert self._http is not None
        done = await deliver_due(pool, policy=self.delivery, http=self._http)
        report.deliveries.delivered += done.delivered
        report.deliveries.retried += done.retried
        report.deliveries.failed += done.failed

    async def _notices(self, pool: Pool, now: datetime, report: RoundReport) -> None:
        async with pool.acquire() as conn:
            policy = self._notice_policy(await self._timezone(conn))
            done = await collect_notices(conn, now=now, policy=policy)
            report.notices_sent += done.sent
            report.escalated += await escalate_overdue(conn, now=now, policy=policy)

    async def _ledger(self, pool: Pool, now: datetime, report: RoundReport) -> None:
        async with pool.acquire() as conn:
            timezone = await self._timezone(conn)
            counts = await scan_monitoring(
                conn, now=now, timezone=timezone, rules=self.ledger_rules
            )
            for rule, c in counts.items():
                report.hazards_created.setdefault(rule, []).extend(c.created)
            today = now.astimezone(ZoneInfo(timezone)).date()
            report.supervised += await flag_overdue(conn, today=today)

    async def _digest(self, pool: Pool, now: datetime, report: RoundReport) -> None:
        async with pool.acquire() as conn:
            timezone = await self._timezone(conn)
            local = now.astimezone(ZoneInfo(timezone))
            if local.time() < self.digest_at:
                return
            day = local.date() - timedelta(days=1)
            if await conn.fetchval("SELECT 1 FROM digest_runs WHERE day = $1", day):
                return
        digest = await asyncio.to_thread(self._build, day, timezone, now)
        async with pool.acquire() as conn, conn.transaction():
            won = await conn.fetchval(
                "INSERT INTO digest_runs (day, content) VALUES ($1, $2::jsonb)"
                " ON CONFLICT (day) DO NOTHING RETURNING day",
                day,
                json.dumps(digest, ensure_ascii=False, default=str),
            )
            if won is None:
                return  # another process built it first
            if self.digest_to:
                await enqueue_digest_mail(
                    conn, digest, sender=self.settings.smtp_from, to=self.digest_to
                )
        report.digest_day = day
        log.info("digest of %s built%s", day, " and queued for mail" if self.digest_to else "")

    def _build(self, day: date, timezone: str, now: datetime) -> dict[str, Any]:
        with psycopg.connect(self.settings.database_url) as conn:
            return build_digest(conn, day=day, timezone=timezone, rules=self.digest_rules, now=now)

    # ------------------------------------------------------------- supervision
    async def _every(
        self,
        name: str,
        interval_s: float,
        step: Callable[[Pool, datetime, RoundReport], Awaitable[None]],
    ) -> None:
        # Each task has a small pool of its own: after a failure it is thrown away whole
        # (a connection the server dropped can leave asyncpg's protocol in a state that
        # neither reset nor release repairs) and the task reconnects after a backoff.
        backoff_s = _BACKOFF_INITIAL_S
        pool: Pool | None = None
        try:
            while True:
                try:
                    if pool is None:
                        pool = await self._pool()
                    await step(pool, datetime.now(UTC), RoundReport())
                except _TRANSIENT as exc:
                    log.warning("closing %s: %s; retrying in %.1f s", name, exc, backoff_s)
                    if pool is not None:
                        pool.terminate()
                        pool = None
                    await asyncio.sleep(backoff_s * random.uniform(0.5, 1.0))
                    backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)
                    continue
                backoff_s = _BACKOFF_INITIAL_S
                await asyncio.sleep(interval_s)
        finally:
            if pool is not None:
                await _quiet_close(pool)

    async def _pool(self) -> Pool:
        # asyncpg (architecture decision 7: the loop is async), with a command timeout so
        # that a query on a half-dead connection fails instead of hanging the task.
        pool = await asyncpg.create_pool(
            self.settings.database_url,
            min_size=1,
            max_size=2,
            command_timeout=_COMMAND_TIMEOUT_S,
            server_settings={"application_name": "anxiao-closing"},
        )
        assert pool is not None  # only a lazy pool is None
        return pool


async def _quiet_close(pool: asyncpg.Pool[Any]) -> None:
    try:
        await asyncio.wait_for(pool.close(), timeout=5.0)
    except (TimeoutError, *_TRANSIENT):
        pool.terminate()


async def enqueue_digest_mail(
    conn: AsyncConnection, digest: dict[str, Any], *, sender: str, to: list[str]
) -> int:
    """Queue the digest e-mail (HTML body, XLSX attached) in the caller's transaction."""
    totals = digest["totals"]
    text = (
        f"安校每日通报 {digest['date']}：告警 {totals['alerts']} 起，"
        f"违规 {totals['violations']} 起，屡教不改校车 {len(digest['repeat_offenders'])} 辆；"
        f"新增隐患 {digest['ledger']['new']} 条，销号 {digest['ledger']['closed']} 条，"
        f"逾期 {digest['ledger']['overdue']} 条。详见附件。"
    )
    message = email_message(
        sender=sender,
        to=to,
        subject=f"安校每日通报 {digest['date']} daily digest",
        text=text,
        html=render_html(digest),
        attachments=[
            (
                f"anxiao-digest-{digest['date']}.xlsx",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                render_xlsx(digest),
            )
        ],
    )
    return await enqueue_delivery(
        conn, channel="email", target=", ".join(to), event="digest", body=message
    )


# ------------------------------------------------------------- CLI helpers
def cli_digest(*, settings: Settings, day: str | None, fmt: str, mail: bool) -> bytes:
    """``anxiao digest``: ``day`` (default yesterday) in ``fmt``; queued for mail if asked."""
    from alerts.digest import render

    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT timezone FROM fleet_meta LIMIT 1").fetchone()
        timezone = row[0] if row else settings.timezone
        local_today = datetime.now(UTC).astimezone(ZoneInfo(timezone)).date()
        try:
            when = date.fromisoformat(day) if day else local_today - timedelta(days=1)
        except ValueError as exc:
            raise ConfigError(f"--date 须为 YYYY-MM-DD must be YYYY-MM-DD, got {day!r}") from exc
        loop = ClosingLoop(settings)
        digest = build_digest(conn, day=when, timezone=timezone, rules=loop.digest_rules)
    if mail:
        if not loop.digest_to:
            raise ConfigError("ANXIAO_DIGEST_EMAIL_TO is empty: nobody to mail the digest to")

        async def queue() -> None:
            conn = await asyncpg.connect(settings.database_url)
            try:
                async with conn.transaction():
                    await enqueue_digest_mail(
                        conn, digest, sender=settings.smtp_from, to=loop.digest_to
                    )
            finally:
                await conn.close()

        asyncio.run(queue())
    return render(digest, fmt)


def cli_ledger_export(*, settings: Settings, month: str, out: Path) -> int:
    """``anxiao ledger export``: write the month's XLSX; return the number of entries."""
    try:
        first = date.fromisoformat(f"{month}-01")
    except ValueError as exc:
        raise ConfigError(f"--month 须为 YYYY-MM must be YYYY-MM, got {month!r}") from exc

    async def rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        conn = await asyncpg.connect(settings.database_url)
        try:
            timezone = await local_timezone(conn, default=settings.timezone)
            return await month_rows(conn, month=first, timezone=timezone)
        finally:
            await conn.close()

    entries, events = asyncio.run(rows())
    out.write_bytes(ledger_xlsx(entries, events))
    return len(entries)


def cli_webhook_secret(*, settings: Settings, operator_id: str, rotate: bool) -> str:
    """``anxiao operator webhook-secret``: the operator's signing secret."""

    async def fetch() -> str:
        conn = await asyncpg.connect(settings.database_url)
        try:
            if not await conn.fetchval("SELECT 1 FROM operators WHERE id = $1", operator_id):
                raise ConfigError(f"运营单位不存在 no operator {operator_id}")
            return await webhook_secret(conn, operator_id, rotate=rotate)
        finally:
            await conn.close()

    return asyncio.run(fetch())
