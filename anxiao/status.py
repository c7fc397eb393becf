"""``anxiao status``: database facts from core plus a broker login probe."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from core.settings import MqttUrl, Settings
from core.status import database_status

__all__ = ["broker_status", "collect_status"]


def broker_status(url: MqttUrl, *, timeout_s: float = 3.0) -> tuple[bool, str | None]:
    """Whether the broker accepts the service account's login, and why not."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(url.username, url.password)
    answered = threading.Event()
    outcome: list[Any] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        outcome.append(reason)
        answered.set()

    client.on_connect = on_connect
    try:
        client.connect(url.host, url.port, keepalive=10)
    except OSError as exc:
        return False, str(exc)
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            return False, f"no answer within {timeout_s} s"
        reason = outcome[0]
        return (False, str(reason)) if reason.is_failure else (True, None)
    finally:
        client.disconnect()
        client.loop_stop()


def collect_status(*, settings: Settings) -> dict[str, Any]:
    """Everything ``anxiao status`` reports (contract §5)."""
    status = database_status(database_url=settings.database_url)
    url = settings.mqtt
    ok, error = broker_status(url)
    status.update(
        {
            "broker_ok": ok,
            "mqtt_host": url.host,
            "mqtt_port": url.port,
            "http_port": settings.http_port,
        }
    )
    if error:
        status["broker_error"] = error
    return status
