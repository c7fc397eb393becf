"""Helpers shared by the test suite: readiness probes and small MQTT clients."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from core.settings import MqttUrl
from simulators.serving import free_port, wait_ready

__all__ = ["connect_mqtt", "running_serve", "wait_for_broker", "wait_for_database"]

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


@contextlib.contextmanager
def running_serve(
    database_url: str, *, clock: str, client_id: str, root: Path
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run ``anxiao serve`` on a free loopback port until the block ends.

    Yields the base URL once ``/readyz`` answers 200 (ingest subscribed), and the
    process. On exit it stops the service with SIGTERM and prints its output,
    which pytest shows when the test failed.
    """
    port = free_port()
    env = {
        **os.environ,
        "ANXIAO_DATABASE_URL": database_url,
        "ANXIAO_HTTP_PORT": str(port),
        "ANXIAO_INGEST_CLIENT_ID": client_id,
        # The broker forgets the test's session soon after it ends.
        "ANXIAO_INGEST_SESSION_EXPIRY_S": "60",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "anxiao", "serve", "--clock", clock],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=2.0) as http:
            wait_ready(http, process, timeout_s=60)
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        if process.stdout:
            print(process.stdout.read())
            process.stdout.close()
