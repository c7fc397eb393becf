"""Helpers shared by the test suite: readiness probes and small MQTT clients."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from core.settings import MqttUrl

__all__ = ["connect_mqtt", "wait_for_broker", "wait_for_database"]

_PROBE_DEADLINE_S = 30.0


def wait_for_database(url: str, *, deadline_s: float = _PROBE_DEADLINE_S) -> None:
    """Return once PostgreSQL accepts a query; fail after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > end:
                raise RuntimeError(f"database not reachable (run `make stack-up`): {exc}") from exc
            time.sleep(0.1)


def connect_mqtt(
    url: MqttUrl,
    *,
    client_id: str = "",
    username: str | None = None,
    password: str | None = None,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
) -> mqtt.Client:
    """Connect a paho client and start its loop; raise if the broker refuses."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    client.username_pw_set(username or url.username, password or url.password)
    result: dict[str, object] = {}
    answered = threading.Event()

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        result["reason"] = reason
        answered.set()

    client.on_connect = on_connect
    client.connect(url.host, url.port)
    client.loop_start()
    answered.wait(timeout=10)
    reason = result.get("reason")
    if reason is None or getattr(reason, "is_failure", True):
        client.loop_stop()
        client.disconnect()
        raise ConnectionRefusedError(f"broker refused the connection: {reason}")
    return client


def wait_for_broker(url: MqttUrl, *, deadline_s: float = _PROBE_DEADLINE_S) -> None:
    """Return once the broker accepts the service account; fail after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            client = connect_mqtt(url)
        except OSError as exc:
            if time.monotonic() > end:
                raise RuntimeError(f"broker not reachable (run `make stack-up`): {exc}") from exc
            time.sleep(0.1)
        else:
            client.loop_stop()
            client.disconnect()
            return
