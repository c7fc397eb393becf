"""How the MQTT receiver cuts the stream into batches, on the stack broker.

Regression: a lone message (a button press on a quiet stream) waited the
whole ``batch_max_age_ms`` before its batch was sealed. Now a batch is sealed
as soon as the receiver has read everything the broker had sent, while a
backlog read faster than it is taken still forms full batches. The tests give
the age an hour, so a batch sealed by its age could never reach them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson

from core.settings import Settings
from ingest import IngestMetrics
from ingest.mqtt import MqttReceiver
from tests.ingest.support import drop_session, make_session, publish_all

#: Longer than any test may wait: an inbox sealed by its age fails the test.
AN_HOUR_S = 3600.0
BATCH = 500


def _filter(prefix: str) -> str:
    return f"anxiao/v1/dev/{prefix}btn/+"


def _topic(prefix: str) -> str:
    return f"anxiao/v1/dev/{prefix}btn/button"


@contextlib.asynccontextmanager
async def _receiving(
    broker: Settings, prefix: str, metrics: IngestMetrics | None = None
) -> AsyncIterator[MqttReceiver]:
    receiver = MqttReceiver(
        url=broker.mqtt,
        client_id=f"{prefix}rx",
        topic_filter=_filter(prefix),
        session_expiry_s=120,
        receive_maximum=20000,
        keepalive_s=30,
        batch_max_messages=BATCH,
        batch_max_bytes=4 * 1024 * 1024,
        backoff_initial_s=0.1,
        backoff_max_s=1.0,
        metrics=metrics or IngestMetrics(),
    )
    task = asyncio.create_task(receiver.run())
    try:
        await asyncio.wait_for(receiver.subscribed.wait(), 20)
        yield receiver
    finally:
        receiver.drain()
        await receiver.close()
        await asyncio.wait_for(task, 20)
        drop_session(broker.mqtt, f"{prefix}rx")


async def _publish(broker: Settings, prefix: str, count: int) -> None:
    messages = [(_topic(prefix), orjson.dumps({"i": i})) for i in range(count)]
    await asyncio.to_thread(publish_all, broker.mqtt, messages, client_id=f"{prefix}pub")


async def test_a_lone_message_is_sealed_at_once_not_after_the_batch_age(
    broker: Settings, prefix: str
) -> None:
    async with _receiving(broker, prefix) as receiver:
        waiting = asyncio.create_task(receiver.next_inbox(AN_HOUR_S))
        await _publish(broker, prefix, 1)
        inbox = await asyncio.wait_for(waiting, 30)
        assert inbox is not None and len(inbox) == 1 and len(inbox.mids) == 1
        assert receiver.ack(inbox)
        # The next one too: an idle stream never holds a message back.
        waiting = asyncio.create_task(receiver.next_inbox(AN_HOUR_S))
        await _publish(broker, prefix, 1)
        inbox = await asyncio.wait_for(waiting, 30)
        assert inbox is not None and len(inbox) == 1
        assert receiver.ack(inbox)


async def test_a_backlog_forms_full_batches_in_arrival_order(broker: Settings, prefix: str) -> None:
    # The session exists before the messages, so the broker queues them for it.
    make_session(broker.mqtt, f"{prefix}rx", _filter(prefix), expiry_s=120)
    await _publish(broker, prefix, 2 * BATCH + 200)
    metrics = IngestMetrics()
    async with _receiving(broker, prefix, metrics) as receiver:
        # Readiness: all of the backlog read while nobody takes a batch.
        for _ in range(600):
            if metrics.messages_received >= 2 * BATCH + 200:
                break
            await asyncio.sleep(0.05)
        inboxes = [await asyncio.wait_for(receiver.next_inbox(AN_HOUR_S), 30) for _ in range(3)]
        assert [0 if i is None else len(i) for i in inboxes] == [BATCH, BATCH, 200]
        payloads = [orjson.loads(p)["i"] for i in inboxes if i is not None for p in i.payloads]
        assert payloads == list(range(2 * BATCH + 200))  # one publisher: arrival order kept
        for inbox in inboxes:
            assert inbox is not None and receiver.ack(inbox)
