"""serve's hand-off from ingest to the rules: the real ingest, broker and database.

Regression: the rules ran inside ingest's write loop, so the next batch's
commit (mostly waiting on PostgreSQL) could not start until the rules of the
last one were done. Now committed batches go to the rules through a bounded
queue: ingest goes on committing while the rules work, waits when they are a
full queue behind, and nothing is lost or reordered, also when stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from anxiao.serve import RulesHandOff
from core.settings import Settings
from ingest import IngestBatch, IngestConfig, IngestMetrics, Ingestor
from tests.ingest.support import (
    drop_session,
    now_ms,
    publish_all,
    register_devices,
    wait_async,
)


class BlockingRules:
    """Rules that record each batch and stay on the first one until released."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.fail_on: int | None = None

    async def __call__(self, batch: IngestBatch) -> None:
        self.started.set()
        await self.release.wait()
        self.seen.append(batch.gps.ts_ms.tolist())
        if self.fail_on is not None and self.fail_on in batch.gps.ts_ms.tolist():
            raise RuntimeError("rules exploded")


@contextlib.asynccontextmanager
async def _serving(
    broker: Settings, database_url: str, prefix: str, rules: BlockingRules
) -> AsyncIterator[tuple[Ingestor, RulesHandOff]]:
    metrics = IngestMetrics()
    handoff = RulesHandOff(rules, max_batches=2, metrics=metrics)
    config = IngestConfig.from_settings(
        broker,
        database_url=database_url,
        client_id=f"{prefix}ingest",
        topic=f"anxiao/v1/dev/{prefix}gps/+",
        session_expiry_s=120,
        backoff_max_s=1.0,
    )
    ingestor = Ingestor(config, hook=handoff.hook, metrics=metrics)
    ingest = asyncio.create_task(ingestor.run())
    rules_task = asyncio.create_task(handoff.run())
    try:
        await asyncio.wait_for(ingestor.ready.wait(), 20)
        yield ingestor, handoff
    finally:
        rules.release.set()
        ingestor.stop()
        await asyncio.wait_for(ingest, 30)
        await asyncio.wait_for(handoff.close(), 30)
        await asyncio.wait_for(rules_task, 30)
        drop_session(broker.mqtt, config.client_id)


@pytest.fixture
def prefix(database_url: str) -> str:
    p = f"Tho{secrets.token_hex(3)}-"
    register_devices(database_url, [f"{p}gps"])
    return p


async def _publish(broker: Settings, prefix: str, ts_ms: int) -> None:
    fix = orjson.dumps({"ts": ts_ms, "lat": 31.3, "lon": 120.7})
    topic = f"anxiao/v1/dev/{prefix}gps/gps"
    await asyncio.to_thread(publish_all, broker.mqtt, [(topic, fix)], client_id=f"{prefix}pub")


async def _until(probe: Callable[[], bool], what: str) -> None:
    await wait_async(probe, timeout_s=20, what=what)


def _at_least(counter: Callable[[], int], n: int) -> Callable[[], bool]:
    return lambda: counter() >= n


async def test_ingest_commits_while_the_rules_are_busy_and_nothing_is_lost(
    broker: Settings, database_url: str, prefix: str
) -> None:
    rules = BlockingRules()
    t = now_ms() - 60_000
    async with _serving(broker, database_url, prefix, rules) as (ingestor, handoff):
        await _publish(broker, prefix, t)
        await asyncio.wait_for(rules.started.wait(), 20)  # the rules hold batch 1
        for i in range(1, 4):
            await _publish(broker, prefix, t + i)
            # Committed and acknowledged while the rules still hold the first batch.
            acked = _at_least(lambda: ingestor.metrics.messages_acked, i + 1)
            await _until(acked, f"ack {i + 1}")
        assert rules.seen == []
        assert handoff.queued <= 2
        rules.release.set()
        await _until(lambda: sum(len(b) for b in rules.seen) == 4, "the rules")
    assert [ts for b in rules.seen for ts in b] == [t, t + 1, t + 2, t + 3]  # commit order


async def test_a_full_hand_off_holds_ingest_back_and_stopping_drains_it(
    broker: Settings, database_url: str, prefix: str
) -> None:
    rules = BlockingRules()
    t = now_ms() - 60_000
    async with _serving(broker, database_url, prefix, rules) as (ingestor, handoff):
        await _publish(broker, prefix, t)
        await asyncio.wait_for(rules.started.wait(), 20)
        for i in range(1, 8):
            await _publish(broker, prefix, t + i)
            await _until(_at_least(lambda: ingestor.metrics.messages_received, i + 1), "receipt")
        # The queue is full and ingest waits on it: what it received is not all acked.
        await _until(lambda: handoff.queued == 2, "a full hand-off")
        assert ingestor.metrics.messages_acked < 8
        # Stopping (the context's exit) releases the rules, and every batch still arrives.
    assert sorted(ts for b in rules.seen for ts in b) == [t + i for i in range(8)]


async def test_a_failing_rules_batch_is_counted_and_the_next_ones_go_on(
    broker: Settings, database_url: str, prefix: str
) -> None:
    rules = BlockingRules()
    rules.release.set()
    t = now_ms() - 60_000
    rules.fail_on = t
    async with _serving(broker, database_url, prefix, rules) as (ingestor, _):
        await _publish(broker, prefix, t)
        await _until(lambda: ingestor.metrics.hook_errors == 1, "the error counted")
        await _publish(broker, prefix, t + 1)
        await _until(lambda: [t + 1] in rules.seen, "the next batch")
