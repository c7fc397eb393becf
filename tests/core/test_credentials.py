"""API tokens, device secrets and the broker's enforcement of them (real Mosquitto)."""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest

from anxiao.cli import main as cli_main
from core.credentials import (
    create_token,
    device_secret,
    hash_token,
    mosquitto_hash,
    mosquitto_verify,
)
from core.errors import CredentialError
from core.fleet import import_fleet
from core.settings import Settings
from tests.core.sample_fleet import sample_fleet
from tests.support import connect_mqtt


@pytest.fixture(scope="module")
def fleet_tag(database_url: str) -> str:
    tag = f"cred{time.monotonic_ns() % 10**8}"
    import_fleet(sample_fleet(tag), database_url=database_url)
    return tag


def test_token_is_stored_hashed(database_url: str, fleet_tag: str) -> None:
    token = create_token(database_url=database_url, role="school", scope_id=f"S001-{fleet_tag}")
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT role, scope_id FROM api_tokens WHERE token_hash = %s", (hash_token(token),)
        ).fetchone()
        assert row == ("school", f"S001-{fleet_tag}")
        stored = conn.execute(
            "SELECT count(*) FROM api_tokens WHERE token_hash = %s", (token.encode(),)
        ).fetchone()[0]
        assert stored == 0


@pytest.mark.parametrize(
    ("role", "scope", "message"),
    [
        ("school", None, "needs --scope"),
        ("operator", "OP-nope", "no such operator"),
        ("monitor", "S001", "takes no --scope"),
        ("root", None, "unknown role"),
    ],
)
def test_token_scope_rules(database_url: str, role: str, scope: str | None, message: str) -> None:
    with pytest.raises(CredentialError, match=message):
        create_token(database_url=database_url, role=role, scope_id=scope)


def test_token_cli_prints_only_the_token(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ANXIAO_DATABASE_URL", database_url)
    assert cli_main(["token", "create", "--role", "monitor", "--name", "监控室"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("axo_") and len(out.strip()) > 40


def test_mosquitto_hash_format() -> None:
    entry = mosquitto_hash("s3cret", salt=b"0123456789ab")
    assert entry.startswith("$7$101$")
    assert mosquitto_verify(entry, "s3cret") and not mosquitto_verify(entry, "wrong")


def _connect_device(settings: Settings, device_id: str, password: str) -> mqtt.Client:
    """Connect as a device, retrying briefly while the broker reloads its password file."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return connect_mqtt(
                settings.mqtt, client_id=device_id, username=device_id, password=password
            )
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _refused(settings: Settings, device_id: str, password: str) -> bool:
    try:
        client = connect_mqtt(
            settings.mqtt, client_id=f"{device_id}-x", username=device_id, password=password
        )
    except ConnectionRefusedError:
        return True
    client.disconnect()
    client.loop_stop()
    return False


def test_device_secret_is_stable_provisioned_and_rotatable(
    broker: Settings, database_url: str, fleet_tag: str
) -> None:
    settings = broker
    assert settings.mqtt_password_file is not None, "the local stack writes .stack/env"
    device = f"GPS-B1-{fleet_tag}"
    kwargs: dict[str, Any] = {
        "database_url": database_url,
        "device_id": device,
        "secret_key": settings.secret_key,
        "password_file": settings.mqtt_password_file,
        "broker_pid_file": settings.mqtt_pid_file,
    }
    first = device_secret(**kwargs)
    assert device_secret(**kwargs) == first
    client = _connect_device(settings, device, first)
    client.disconnect()
    client.loop_stop()
    assert _refused(settings, device, first + "x")

    rotated = device_secret(**kwargs, rotate=True)
    assert rotated != first
    client = _connect_device(settings, device, rotated)
    client.disconnect()
    client.loop_stop()
    assert _refused(settings, device, first)


def test_unknown_device_has_no_secret(database_url: str, settings: Settings) -> None:
    with pytest.raises(CredentialError, match="unknown device"):
        device_secret(database_url=database_url, device_id="NOPE-1", secret_key="k")


class _Collector:
    """A service-account subscriber that records what it receives."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topics: list[str] = []
        self.marker = threading.Event()
        self.client = connect_mqtt(settings.mqtt, client_id=f"collector-{time.monotonic_ns()}")
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(5)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.topics.append(msg.topic)
        if msg.topic.endswith("/marker"):
            self.marker.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_acl_confines_a_device_to_its_own_topic(
    broker: Settings, database_url: str, fleet_tag: str
) -> None:
    settings = broker
    device = f"BTN-S001-1-{fleet_tag}"
    other = f"SMK-S001-1-{fleet_tag}"
    secret = device_secret(
        database_url=database_url,
        device_id=device,
        secret_key=settings.secret_key,
        password_file=settings.mqtt_password_file,
        broker_pid_file=settings.mqtt_pid_file,
    )
    collector = _Collector(settings, "anxiao/v1/dev/#")
    try:
        # Publishing below another device's topic: the broker answers "not
        # authorized" in the v5 PUBACK (Mosquitto then drops the connection).
        forger = _connect_device(settings, device, secret)
        acked: list[Any] = []
        answered = threading.Event()

        def on_publish(_c: Any, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
            acked.append(reason)
            answered.set()

        forger.on_publish = on_publish
        forger.publish(f"anxiao/v1/dev/{other}/smoke", b'{"ts": 1}', qos=1)
        assert answered.wait(5)
        assert acked[0].is_failure and "authorized" in str(acked[0]).lower(), acked
        forger.disconnect()
        forger.loop_stop()

        # Subscribing to the service's topics: Mosquitto's ACL file grants the
        # SUBACK but checks read access on delivery, so the device receives
        # nothing, not even its own message. A client's packets are handled in
        # order and the broker queues deliveries before it sends the PUBACK, so
        # once the device holds its PUBACK, a delivery to it would have arrived.
        client = _connect_device(settings, device, secret)
        received: list[str] = []
        subscribed = threading.Event()
        client.on_subscribe = lambda *_a: subscribed.set()
        client.on_message = lambda _c, _u, msg: received.append(msg.topic)
        client.subscribe("anxiao/v1/dev/#", qos=1)
        assert subscribed.wait(5)
        own = client.publish(f"anxiao/v1/dev/{device}/marker", b"{}", qos=1)
        own.wait_for_publish(5)
        assert own.is_published()
        assert collector.marker.wait(5)  # the message was routed to readers
        assert received == []
        assert collector.topics.count(f"anxiao/v1/dev/{device}/marker") == 1
        assert not any(other in t for t in collector.topics), collector.topics
        client.disconnect()
        client.loop_stop()
    finally:
        collector.close()
