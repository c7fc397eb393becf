"""The delivery outbox: webhooks and e-mails written with what they announce, sent later.

A notice or a digest writes its ``outbox`` rows in its own transaction, so
nothing announced can be lost and nothing is announced that was rolled back
(architecture decision 6). :func:`deliver_due` takes due rows one at a time
under ``FOR UPDATE SKIP LOCKED`` (several workers never send the same row at
once), sends it, and records the outcome: delivered, retried later with a
capped, jittered exponential backoff, or given up after ``max_attempts``
(state ``failed``, visible in the API). A crash between sending and
recording rolls the row back to pending, so delivery is at least once: a
receiver deduplicates by the ``X-Anxiao-Delivery`` header.

Webhook requests are signed: ``X-Anxiao-Signature: sha256=<hex>``, the
HMAC-SHA256 under the operator's secret of ``<X-Anxiao-Timestamp>.<body>``
(:func:`sign`; receivers check it with :func:`verify` or the same three lines).
"""

from __future__ import annotations

import asyncio
import email.policy
import hashlib
import hmac
import logging
import random
import secrets
import smtplib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Final

import asyncpg
import httpx

from core.db import AsyncConnection

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "DeliveryPolicy",
    "DeliveryRound",
    "SmtpConfig",
    "deliver_due",
    "email_message",
    "enqueue",
    "sign",
    "verify",
    "webhook_secret",
]

log = logging.getLogger("anxiao.outbox")

SIGNATURE_HEADER: Final = "X-Anxiao-Signature"
TIMESTAMP_HEADER: Final = "X-Anxiao-Timestamp"
DELIVERY_HEADER: Final = "X-Anxiao-Delivery"
EVENT_HEADER: Final = "X-Anxiao-Event"
_ERROR_CHARS: Final = 500


def sign(secret: str, timestamp_s: int, body: bytes) -> str:
    """The signature header value of ``body`` sent at ``timestamp_s`` (epoch seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp_s}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp_s: int, body: bytes, signature: str) -> bool:
    """Whether ``signature`` is :func:`sign`'s value (constant-time comparison)."""
    return hmac.compare_digest(sign(secret, timestamp_s, body), signature)


async def webhook_secret(conn: AsyncConnection, operator_id: str, *, rotate: bool = False) -> str:
    """The operator's webhook signing secret, created on first use; ``rotate`` makes a new one."""
    fresh = "whsec_" + secrets.token_urlsafe(32)
    if rotate:
        sql = (
            "INSERT INTO operator_webhook_secrets (operator_id, secret) VALUES ($1, $2)"
            " ON CONFLICT (operator_id) DO UPDATE SET secret = EXCLUDED.secret,"
            " created_at = now() RETURNING secret"
        )
    else:
        sql = (
            "WITH new AS (INSERT INTO operator_webhook_secrets (operator_id, secret)"
            " VALUES ($1, $2) ON CONFLICT (operator_id) DO NOTHING RETURNING secret)"
            " SELECT secret FROM new UNION ALL"
            " SELECT secret FROM operator_webhook_secrets WHERE operator_id = $1"
        )
    secret: str = await conn.fetchval(sql, operator_id, fresh)
    return secret


async def enqueue(
    conn: AsyncConnection,
    *,
    channel: str,
    target: str,
    event: str,
    body: bytes,
    notice_id: int | None = None,
    operator_id: str | None = None,
) -> int:
    """Write one delivery in the caller's transaction; return its id."""
    outbox_id: int = await conn.fetchval(
        "INSERT INTO outbox (channel, target, event, body, notice_id, operator_id)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        channel,
        target,
        event,
        body,
        notice_id,
        operator_id,
    )
    return outbox_id


def email_message(
    *,
    sender: str,
    to: Sequence[str],
    subject: str,
    text: str,
    html: str | None = None,
    attachments: Sequence[tuple[str, str, bytes]] = (),
) -> bytes:
    """An RFC 5322 message (UTF-8): text, optional HTML, attachments ``(name, mime, data)``."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="anxiao")
    message.set_content(text, charset="utf-8")
    if html is not None:
        message.add_alternative(html, subtype="html", charset="utf-8")
    for name, mime, data in attachments:
        maintype, _, subtype = mime.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    # CRLF line ends: smtplib sends bytes as they are, and SMTP lines end in CRLF.
    return message.as_bytes(policy=email.policy.SMTP)


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """Where e-mails go; without it e-mails stay pending."""

    host: str
    port: int = 25
    sender: str = "anxiao@localhost"
    username: str = ""
    password: str = ""
    starttls: bool = False
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """Retries: ``max_attempts`` tries, waiting ``initial_s`` × 2ⁿ (capped, ±20 % jitter)."""

    max_attempts: int = 8
    backoff_initial_s: float = 30.0
    backoff_max_s: float = 3600.0
    webhook_timeout_s: float = 10.0
    smtp: SmtpConfig | None = None

    def delay_s(self, attempts: int) -> float:
        """Wait before the next try after ``attempts`` failed ones."""
        base = min(self.backoff_initial_s * 2.0 ** max(attempts - 1, 0), self.backoff_max_s)
        return base * random.uniform(0.8, 1.2)  # jitter, not a secret


@dataclass(slots=True)
class DeliveryRound:
    """What one :func:`deliver_due` call did (outbox ids)."""

    delivered: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


_CLAIM: Final = """
SELECT o.id, o.channel, o.target, o.event, o.body, o.attempts, o.operator_id,
       w.secret
  FROM outbox o
  LEFT JOIN operator_webhook_secrets w ON w.operator_id = o.operator_id
 WHERE o.state = 'pending' AND o.next_attempt_at <= now() AND o.channel = ANY($1::text[])
 ORDER BY o.next_attempt_at, o.id
 LIMIT 1
   FOR UPDATE OF o SKIP LOCKED
"""


async def deliver_due(
    pool: asyncpg.Pool[Any], *, policy: DeliveryPolicy, http: httpx.AsyncClient, limit: int = 50
) -> DeliveryRound:
    """Send up to ``limit`` due deliveries, one transaction each; return what happened."""
    done = DeliveryRound()
    channels = ["webhook"] + (["email"] if policy.smtp is not None else [])
    for _ in range(limit):
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_CLAIM, channels)
            if row is None:
                break
            secret = row["secret"]
            if row["channel"] == "webhook" and secret is None and row["operator_id"]:
                secret = await webhook_secret(conn, row["operator_id"])
            try:
                if row["channel"] == "webhook":
                    await _post(http, row, secret or "", policy)
                else:
                    assert policy.smtp is not None
                    await asyncio.to_thread(_send_mail, policy.smtp, row["target"], row["body"])
            except (httpx.HTTPError, smtplib.SMTPException, OSError, _Refused) as exc:
                attempts = row["attempts"] + 1
                error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
                if attempts >= policy.max_attempts:
                    await conn.execute(
                        "UPDATE outbox SET state = 'failed', attempts = $2, last_error = $3,"
                        " failed_at = now() WHERE id = $1",
                        row["id"],
                        attempts,
                        error,
                    )
                    done.failed.append(row["id"])
                    log.warning("outbox %d gave up after %d tries: %s", row["id"], attempts, error)
                else:
                    await conn.execute(
                        "UPDATE outbox SET attempts = $2, last_error = $3,"
                        " next_attempt_at = now() + make_interval(secs => $4) WHERE id = $1",
                        row["id"],
                        attempts,
                        error,
                        policy.delay_s(attempts),
                    )
                    done.retried.append(row["id"])
            else:
                await conn.execute(
                    "UPDATE outbox SET state = 'delivered', attempts = attempts + 1,"
                    " delivered_at = now(), last_error = NULL WHERE id = $1",
                    row["id"],
                )
                done.delivered.append(row["id"])
    return done


class _Refused(Exception):
    """The receiver answered, but not with 2xx."""


async def _post(http: httpx.AsyncClient, row: Any, secret: str, policy: DeliveryPolicy) -> None:
    body = bytes(row["body"])
    stamp = int(time.time())
    response = await http.post(
        row["target"],
        content=body,
        timeout=policy.webhook_timeout_s,
        headers={
            "Content-Type": "application/json; charset=utf-8",
            EVENT_HEADER: row["event"],
            DELIVERY_HEADER: str(row["id"]),
            TIMESTAMP_HEADER: str(stamp),
            SIGNATURE_HEADER: sign(secret, stamp, body),
            "User-Agent": "anxiao-outbox/1",
        },
    )
    if not 200 <= response.status_code < 300:
        raise _Refused(f"HTTP {response.status_code}: {response.text[:200]}")


def _send_mail(smtp: SmtpConfig, target: str, body: bytes) -> None:
    recipients = [a.strip() for a in target.split(",") if a.strip()]
    with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s) as client:
        if smtp.starttls:
            client.starttls()
        if smtp.username:
            client.login(smtp.username, smtp.password)
        client.sendmail(smtp.sender, recipients, body)
