"""Send a simulated stream to the broker, in real time or as fast as possible.

The stream itself comes from :func:`simulators.stream.simulate`; this loop
only paces it (``speed`` × real time against the messages' ``send_ms``, or
no pacing at all) and reports progress on stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from simulators._time import format_rfc3339
from simulators.mqtt import MqttPublisher
from simulators.stream import Message

__all__ = ["PublishStats", "publish_stream"]


@dataclass(frozen=True)
class PublishStats:
    """What a publishing run did."""

    messages: int
    bytes_sent: int
    seconds: float

    @property
    def msgs_per_s(self) -> float:
        """Acknowledged messages per second of wall time."""
        return self.messages / self.seconds if self.seconds > 0 else 0.0


class _Progress:
    """A one-line progress report on stderr: a rewritten line on a terminal, else every 10 s."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self.every_s = 0.5 if self.tty else 10.0
        self.started = time.monotonic()
        self.next_at = self.started + self.every_s

    def update(self, done: int, acked: int, send_ms: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now < self.next_at and not final):
            return
        self.next_at = now + self.every_s
        elapsed = max(now - self.started, 1e-9)
        pct = 100.0 * done / self.total if self.total else 100.0
        line = (
            f"发布 published {done:,}/{self.total:,} ({pct:5.1f}%) · 确认 acked {acked:,}"
            f" · {done / elapsed:,.0f} msg/s · 事件时间 event time {format_rfc3339(send_ms)}"
        )
        if self.tty:
            self.stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def publish_stream(
    messages: Sequence[Message],
    client: MqttPublisher,
    *,
    speed: float | None,
    progress: bool = True,
    stream: TextIO | None = None,
) -> PublishStats:
    """Publish ``messages`` in order; ``speed=None`` means as fast as possible.

    With a speed factor, a message goes out when ``(send_ms - first send_ms) /
    speed`` of wall time has passed since the start. Returns once the broker
    has acknowledged every message.
    """
    report = _Progress(len(messages), stream or sys.stderr, progress)
    start = time.monotonic()
    if not messages:
        return PublishStats(0, 0, 0.0)
    origin_ms = messages[0].send_ms
    publish = client.publish
    done = 0
    if speed is None:
        for done, message in enumerate(messages, start=1):
            publish(message.topic, message.payload)
            if not done & 0x3FFF:
                report.update(done, client.acked, message.send_ms)
    else:
        scale = 1.0 / (1000.0 * speed)
        for done, message in enumerate(messages, start=1):
            due = start + (message.send_ms - origin_ms) * scale
            wait_s = due - time.monotonic()
            if wait_s > 0:
                client.wait(wait_s)
                report.update(done - 1, client.acked, message.send_ms)
            publish(message.topic, message.payload)
    client.drain()
    seconds = time.monotonic() - start
    report.update(done, client.acked, messages[-1].send_ms, final=True)
    return PublishStats(done, client.bytes_sent, seconds)
