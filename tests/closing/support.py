"""Helpers for the closing-loop tests: alerts through the real store, a signed-webhook receiver."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import asyncpg
import numpy as np
import psycopg

from alerts.store import EpisodeChange, apply_changes
from core.fleet import import_fleet
from core.settings import Settings
from ingest import Limits, decode_messages
from ingest.store import Store
from simulators import RunSpec, Simulation, simulate
from tests.core.sample_fleet import sample_fleet

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from a synchronous test."""
    return asyncio.run(coro)


async def store_alert(
    database_url: str,
    device_id: str,
    kind: str,
    started_at: datetime,
    *,
    ended_at: datetime | None = None,
    details: Mapping[str, Any] | None = None,
    late: bool = False,
) -> uuid.UUID:
    """Open (and, with ``ended_at``, close) one episode through ``apply_changes``; its id."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            changes = [
                EpisodeChange("open", kind, device_id, started_at, details=details or {}, late=late)
            ]
            if ended_at is not None:
                changes.append(
                    EpisodeChange("close", kind, device_id, started_at, ended_at=ended_at)
                )
            await apply_changes(conn, changes)
        alert_id = await conn.fetchval(
            "SELECT id FROM alerts WHERE device_id = $1 AND kind = $2 AND started_at = $3",
            device_id,
            kind,
            started_at,
        )
        assert alert_id is not None, f"no alert stored for {device_id}"
        return alert_id
    finally:
        await conn.close()


@dataclass
class Received:
    """One request the receiver saw."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at_s: float


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1; each delivery fails its first ``fail_first`` tries."""

    fail_first: int = 2
    always_fail_paths: set[str] = field(default_factory=set)
    seen: list[Received] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self.changed:
            delivery = headers.get("x-anxiao-delivery", "")
            tries = sum(1 for r in self.seen if r.headers.get("x-anxiao-delivery") == delivery)
            failing = path in self.always_fail_paths or tries < self.fail_first
            status = 500 if failing else 200
            self.seen.append(Received(path, headers, body, status, time.monotonic()))
            self.changed.notify_all()
            return status

    def delivered(self) -> list[Received]:
        with self.changed:
            return [r for r in self.seen if r.status == 200]

    def wait_for(self, condition: Any, *, timeout_s: float) -> None:
        """Block until ``condition(self)`` holds (a readiness wait, not a sleep)."""
        with self.changed:
            ok = self.changed.wait_for(lambda: condition(self), timeout=timeout_s)
        assert ok, f"receiver: condition not met within {timeout_s} s; saw {len(self.seen)}"

    @staticmethod
    def notices(received: list[Received]) -> set[int]:
        return {json.loads(r.body)["notice"]["id"] for r in received}


@contextmanager
def webhook_receiver(fail_first: int = 2) -> Iterator[Receiver]:
    """Serve a :class:`Receiver` on a free loopback port until the block ends."""
    receiver = Receiver(fail_first=fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = receiver.handle(self.path, headers, body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def simulate_day(day: str, *, prefix: str, buses: int = 20, schools: int = 4) -> Simulation:
    """One simulated local day (default scenarios) with ids under ``prefix``."""
    return simulate(
        RunSpec(
            buses=buses,
            schools=schools,
            start=f"{day}T00:00:00+08:00",
            duration_s=86400.0,
            id_prefix=prefix,
        )
    )


async def load_simulation(sim: Simulation, database_url: str, *, chunk: int = 5000) -> None:
    """Import the fleet and store the whole stream as ingest would (receive time = send time)."""
    import_fleet(sim.fleet, database_url=database_url)
    store = Store(database_url=database_url, refresh_s=3600)
    await store.connect()
    try:
        messages = sim.messages
        for i in range(0, len(messages), chunk):
            part = messages[i : i + chunk]
            decoded = decode_messages(
                [m.topic for m in part],
                [m.payload for m in part],
                np.array([m.send_ms for m in part], dtype=np.int64),
                directory=store.directory,
                limits=Limits(),
            )
            await store.write(decoded)
    finally:
        await store.close()


def expected_alerts(sim: Simulation) -> list[dict[str, Any]]:
    """Ground-truth episodes an event-clock service raises (clock skew needs a live clock)."""
    return [r for r in sim.ground_truth if r["expected"] == "alert" and r["kind"] != "clock_skew"]


async def store_ground_truth(sim: Simulation, database_url: str) -> list[uuid.UUID]:
    """Store every expected episode of ``sim`` through ``apply_changes``."""
    ids = []
    for r in expected_alerts(sim):
        details = {
            k: r[k]
            for k in ("max_speed_kmh", "limit_kmh", "duration_s", "distance_m", "threshold_s")
            if k in r
        }
        ids.append(
            await store_alert(
                database_url,
                r["device"],
                r["kind"],
                datetime.fromisoformat(r["start"]),
                ended_at=datetime.fromisoformat(r["end"]) if r.get("end") else None,
                details=details,
                late=bool(r.get("late")),
            )
        )
    return ids


def closing_settings(database_url: str, **extra: Any) -> Settings:
    """Settings for a fast closing loop: short polls and backoff, no batching, no SMTP."""
    base: dict[str, Any] = {
        "database_url": database_url,
        "closing_poll_s": 0.1,
        "notice_batch_window_s": 0,
        "outbox_backoff_initial_s": 0.2,
        "outbox_backoff_max_s": 1.0,
        "ledger_scan_interval_s": 3600.0,
        "smtp_host": "",
        "digest_email_to": "",
    }
    return Settings(**{**base, **extra})


def fleet_with_contacts(database_url: str, *, webhook: str | None, mail: str | None) -> str:
    """A sample fleet whose operator OP1 has this webhook and e-mail; its tag."""
    tag = secrets.token_hex(3)
    import_fleet(sample_fleet(tag), database_url=database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE operators SET webhook = %s, email = %s WHERE id = %s",
            (webhook, mail, f"OP1-{tag}"),
        )
    return tag


async def store_violations(
    database_url: str, tag: str, speeds: list[float], *, hours_ago: float = 1.0
) -> None:
    """One speeding episode on the tag's bus per speed (limit 60 km/h), a minute apart."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=hours_ago)
    for i, speed in enumerate(speeds):
        at = start + timedelta(minutes=i)
        await store_alert(
            database_url,
            f"GPS-B1-{tag}",
            "speeding",
            at,
            ended_at=at + timedelta(seconds=30),
            details={"max_speed_kmh": speed, "limit_kmh": 60.0},
        )
