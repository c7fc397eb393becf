"""The lean publisher and the CLI against the local Mosquitto."""

from __future__ import annotations

import os
import secrets
import threading
import time

import pytest

from core.errors import BrokerError
from core.settings import Settings
from simulators import Message
from simulators.cli import main
from simulators.mqtt import MqttPublisher
from simulators.publisher import publish_stream
from tests.support import connect_mqtt


def _publisher(settings: Settings, **kw) -> MqttPublisher:
    return MqttPublisher.for_url(
        settings.mqtt_gateway, client_id=f"test-sim-{os.getpid()}-{secrets.token_hex(3)}", **kw
    )


class _Count:
    """Subscribe to one device's topics and count what arrives, with arrival times."""

    def __init__(self, settings: Settings, device: str) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        self.unique: set[bytes] = set()
        self.cond = threading.Condition()
        ready = threading.Event()
        self.client = connect_mqtt(settings.mqtt, client_id=f"test-sim-count-{device}")
        self.client.on_subscribe = lambda *_a: ready.set()
        self.client.on_message = self._on_message
        self.client.subscribe(f"anxiao/v1/dev/{device}/+", qos=1)
        assert ready.wait(10)

    def _on_message(self, _c, _u, msg) -> None:
        with self.cond:
            self.arrivals.append((time.monotonic(), bytes(msg.payload)))
            self.unique.add(bytes(msg.payload))
            self.cond.notify_all()

    def wait_for(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.arrivals) >= n, 30)

    def wait_for_unique(self, n: int) -> None:
        """Wait for ``n`` distinct payloads (QoS 1 may deliver some twice)."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.unique) >= n, 30)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_every_message_is_acknowledged_and_delivered_in_order(broker):
    device = f"tpub{secrets.token_hex(3)}"
    count = _Count(broker, device)
    n = 10_000
    messages = [
        Message(1_000 + i, f"anxiao/v1/dev/{device}/heartbeat", b'{"ts":%d}' % (1_000 + i))
        for i in range(n)
    ]
    client = _publisher(broker, window=500)  # a small window: the ack loop must keep up
    client.connect()
    try:
        stats = publish_stream(messages, client, speed=None, progress=False)
    finally:
        client.close()
    assert stats.messages == n and client.acked == n
    count.wait_for(n)
    count.close()
    assert [p for _t, p in count.arrivals] == [m.payload for m in messages]


def test_real_time_pacing(broker):
    device = f"tpace{secrets.token_hex(3)}"
    count = _Count(broker, device)
    # 6 s of simulated time at 10x: about 0.6 s of wall time.
    messages = [
        Message(i * 1000, f"anxiao/v1/dev/{device}/heartbeat", b'{"ts":%d}' % (i * 1000))
        for i in range(7)
    ]
    client = _publisher(broker)
    client.connect()
    try:
        stats = publish_stream(messages, client, speed=10.0, progress=False)
    finally:
        client.close()
    count.wait_for(7)
    count.close()
    assert 0.55 <= stats.seconds < 3.0
    spacing = [b[0] - a[0] for a, b in zip(count.arrivals, count.arrivals[1:], strict=False)]
    assert min(spacing) > 0.05 and max(spacing) < 0.5


def test_wrong_password_is_a_broker_error(broker):
    client = _publisher(broker, password="not-the-password")
    with pytest.raises(BrokerError, match=r"bad user name or password|not authorised"):
        client.connect()


def test_cli_lists_scenarios(capsys):
    assert main(["--list-scenarios"]) == 0
    out = capsys.readouterr().out
    assert "speeding_short" in out and "button_test" in out


def test_cli_rejects_unknown_scenarios(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--scenarios", "speeding,teleport", "--no-publish"])
    assert exc.value.code == 2
    assert "teleport" in capsys.readouterr().err


def test_cli_writes_files_and_publishes(broker, tmp_path, capsys):
    prefix = f"tcli{secrets.token_hex(2)}-"
    code = main(
        [
            "--buses", "2", "--schools", "1", "--duration", "20m", "--fast",
            "--scenarios", "smoke_alarm,button_panic", "--id-prefix", prefix,
            "--out", str(tmp_path), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "filings.json", "fleet.json", "ground_truth.jsonl",
    ]  # fmt: skip
    err = capsys.readouterr().err
    assert "完成 done" in err and "msg/s" in err
    assert len((tmp_path / "ground_truth.jsonl").read_text().splitlines()) == 2


def test_reconnects_and_resends_after_a_session_takeover(broker):
    """Another client takes our client id mid-stream: nothing is lost."""
    device = f"tre{secrets.token_hex(3)}"
    count = _Count(broker, device)
    client = _publisher(broker, window=2_000)
    client.connect()
    n = 6_000
    topic = f"anxiao/v1/dev/{device}/heartbeat"
    payloads = [b'{"ts":%d}' % (1_000 + i) for i in range(n)]
    try:
        for i, payload in enumerate(payloads):
            client.publish(topic, payload)
            if i == n // 2:
                client.flush()
                # The broker drops our connection when this one takes the id over.
                intruder = connect_mqtt(broker.mqtt_gateway, client_id=client.client_id)
                intruder.loop_stop()
                intruder.disconnect()
        client.drain(timeout_s=30)
    finally:
        client.close()
    assert client.reconnects >= 1
    count.wait_for_unique(n)
    count.close()
    received = {p for _t, p in count.arrivals}
    assert received == set(payloads)
