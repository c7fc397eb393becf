"""Helpers of the ingest tests: devices, publishers, ingest runs, a private broker.

Everything waits with a bounded readiness probe (:func:`wait_until`), never a
bare sleep. Device ids, client ids and topics carry a per-test prefix so that
tests running at the same time against the shared stack never meet.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core.settings import MqttUrl
from ingest import IngestBatch, IngestConfig, Ingestor
from simulators.serving import free_port
from tests.support import wait_for_broker

ROOT = Path(__file__).resolve().parents[2]
SERVICE_USER = "svc~anxiao"
GATEWAY_USER = "gw~anxiao"
DEV_PASSWORD = "anxiao-dev"
T = TypeVar("T")


def unique_prefix(label: str) -> str:
    """A device-id prefix no other test (or concurrent run) uses."""
    return f"T{label}{secrets.token_hex(3)}-"


def now_ms() -> int:
    return int(time.time() * 1000)


def wait_until(
    probe: Callable[[], T | bool | None],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.05,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
        except (psycopg.OperationalError, OSError) as exc:  # a restart in progress
            last_error = exc
            value = None
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what} ({last_error})")
        time.sleep(interval_s)


# ------------------------------------------------------------------ database


def register_devices(database_url: str, ids: Iterable[str], kind: str = "gps") -> dict[str, int]:
    """Insert devices; return id -> key."""
    ids = list(ids)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (id, kind) SELECT unnest(%s::text[]), %s", (ids, kind))
        rows = conn.execute("SELECT id, key FROM devices WHERE id = ANY(%s)", (ids,)).fetchall()
    return {str(i): int(k) for i, k in rows}


def scalar(database_url: str, sql: str, *params: Any) -> Any:
    with psycopg.connect(database_url, connect_timeout=3) as conn:
        row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def gps_count(database_url: str, prefix: str) -> int:
    return int(
        scalar(
            database_url,
            "SELECT count(*) FROM gps_fixes g JOIN devices d ON d.key = g.device_key"
            " WHERE d.id LIKE %s",
            prefix + "%",
        )
    )


def stored_gps_keys(database_url: str, prefix: str) -> set[tuple[str, int]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT d.id, (extract(epoch FROM g.ts) * 1000)::int8 FROM gps_fixes g"
            " JOIN devices d ON d.key = g.device_key WHERE d.id LIKE %s",
            (prefix + "%",),
        ).fetchall()
    return {(str(i), int(t)) for i, t in rows}


def dead_letters(database_url: str, prefix: str) -> list[dict[str, Any]]:
    """Dead letters whose topic names a device with this prefix."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT topic, payload, reason, detail, device_id FROM dead_letters"
            " WHERE topic LIKE %s ORDER BY received_at",
            (f"anxiao/v1/dev/{prefix}%",),
        ).fetchall()
    return [
        {"topic": t, "payload": bytes(p), "reason": r, "detail": d, "device_id": i}
        for t, p, r, d, i in rows
    ]


# ---------------------------------------------------------------------- MQTT


def connect(
    url: MqttUrl,
    client_id: str,
    *,
    clean: bool = True,
    expiry_s: int = 0,
    username: str | None = None,
    password: str | None = None,
    inflight: int = 20,
) -> mqtt.Client:
    """A connected MQTT v5 client with its network loop running."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
    )
    client.username_pw_set(username or url.username, password or url.password)
    client.max_inflight_messages_set(inflight)  # only before connecting (paho 2.2)
    client.max_queued_messages_set(0)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = expiry_s
    properties.ReceiveMaximum = 65535
    answered = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        result["reason"] = reason
        answered.set()

    client.on_connect = on_connect
    client.connect(url.host, url.port, clean_start=clean, properties=properties)
    client.loop_start()
    if not answered.wait(10) or result["reason"].is_failure:
        client.loop_stop()
        raise ConnectionError(f"broker refused {client_id}: {result.get('reason')}")
    return client


def make_session(url: MqttUrl, client_id: str, topic_filter: str, *, expiry_s: int = 300) -> None:
    """Create a persistent session subscribed to ``topic_filter``: the broker queues from now."""
    client = connect(url, client_id, clean=True, expiry_s=expiry_s)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    client.subscribe(topic_filter, qos=1)
    assert subscribed.wait(10), "no SUBACK"
    client.disconnect()
    client.loop_stop()


def drop_session(url: MqttUrl, client_id: str) -> None:
    """End a persistent session (and the messages the broker queued for it)."""
    with contextlib.suppress(ConnectionError, OSError):
        client = connect(url, client_id, clean=True, expiry_s=0)
        client.disconnect()
        client.loop_stop()


def gateway_url(url: MqttUrl) -> MqttUrl:
    return MqttUrl(f"mqtt://{GATEWAY_USER}:{DEV_PASSWORD}@{url.host}:{url.port}")


def publish_all(
    url: MqttUrl,
    messages: Sequence[tuple[str, bytes]],
    *,
    client_id: str,
    window: int = 500,
    deadline_s: float = 180.0,
) -> int:
    """Publish at QoS 1 until the broker acknowledged every message; return how many twice.

    Window by window; a window that is not fully acknowledged (say the broker
    restarted) is published again on a new connection -- duplicates are the
    point of QoS 1, and ingest must absorb them.
    """
    deadline = time.monotonic() + deadline_s
    client: mqtt.Client | None = None
    start = 0
    repeated = 0
    while start < len(messages):
        if time.monotonic() > deadline:
            raise AssertionError(f"published only {start} of {len(messages)} messages")
        try:
            if client is None:
                client = connect(gateway_url(url), client_id, clean=True, inflight=window)
            infos = [client.publish(t, p, qos=1) for t, p in messages[start : start + window]]
            for info in infos:
                info.wait_for_publish(timeout=10)
                if not info.is_published():
                    raise TimeoutError("window not acknowledged")
            start += window
        except (ConnectionError, OSError, RuntimeError, ValueError):
            repeated += min(window, len(messages) - start)
            if client is not None:
                client.loop_stop()
                with contextlib.suppress(Exception):
                    client.disconnect()
            client = None
            time.sleep(0.2)  # the broker is restarting; retry on a new connection
    if client is not None:
        client.disconnect()
        client.loop_stop()
    return repeated


class BackgroundPublisher(threading.Thread):
    """:func:`publish_all` in a thread, so the test can break things meanwhile."""

    def __init__(self, url: MqttUrl, messages: Sequence[tuple[str, bytes]], client_id: str):
        super().__init__(daemon=True, name=f"publisher-{client_id}")
        self.url, self.messages, self.client_id = url, messages, client_id
        self.error: BaseException | None = None
        #: Messages published again after a window went unacknowledged.
        self.repeated = 0

    def run(self) -> None:
        try:
            self.repeated = publish_all(self.url, self.messages, client_id=self.client_id)
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout_s: float = 180.0) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), "publisher did not finish"
        if self.error is not None:
            raise self.error


def gps_stream(prefix: str, devices: int, count: int) -> list[tuple[str, bytes]]:
    """``count`` single-fix messages over ``devices`` devices, every (device, ts) unique."""
    base_ms = now_ms() - 3_600_000
    messages = []
    for i in range(count):
        device = i % devices
        ts = base_ms + (i // devices) * 1000 + device  # unique per device
        payload = {"ts": ts, "lat": 31.3 + (i % 997) * 1e-5, "lon": 120.7, "speed": 30.5}
        messages.append((f"anxiao/v1/dev/{prefix}{device}/gps", orjson.dumps(payload)))
    return messages


def expected_keys(messages: Iterable[tuple[str, bytes]]) -> set[tuple[str, int]]:
    return {(t.split("/")[3], int(orjson.loads(p)["ts"])) for t, p in messages}


# ------------------------------------------------------------ ingest in-process


@dataclass
class Recorder:
    """A rules hook that keeps every batch it is handed."""

    batches: list[IngestBatch] = field(default_factory=list)

    async def __call__(self, batch: IngestBatch, /) -> None:
        self.batches.append(batch)


@contextlib.asynccontextmanager
async def running_ingestor(config: IngestConfig, hook: Any = None) -> AsyncIterator[Ingestor]:
    """An in-process ingest worker, subscribed when entered, stopped and forgotten on exit."""
    import asyncio

    ingestor = Ingestor(config) if hook is None else Ingestor(config, hook=hook)
    task = asyncio.create_task(ingestor.run())
    try:
        ready = asyncio.create_task(ingestor.ready.wait())
        done, _ = await asyncio.wait({ready, task}, timeout=20, return_when="FIRST_COMPLETED")
        if task in done:
            task.result()  # raises what run() raised
        assert ready in done, "ingest did not subscribe in time"
        yield ingestor
    finally:
        ingestor.stop()
        await asyncio.wait_for(task, 30)
        drop_session(config.mqtt, config.client_id)


async def wait_async(
    probe: Callable[[], Any], *, timeout_s: float, what: str, interval_s: float = 0.05
) -> Any:
    """:func:`wait_until` for async tests (the ingest under test shares the loop)."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    while True:
        value = await asyncio.to_thread(probe)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


# ------------------------------------------------------------ ingest processes


class IngestProcess:
    """``anxiao ingest`` as a child process (killable with SIGKILL)."""

    def __init__(
        self,
        *,
        database_url: str,
        mqtt_url: MqttUrl,
        client_id: str,
        log_dir: Path,
        group: str | None = None,
    ) -> None:
        self.database_url = database_url
        self.mqtt_url = mqtt_url
        self.client_id = client_id
        self.group = group
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> IngestProcess:
        self.runs += 1
        url = self.mqtt_url
        env = {
            **os.environ,
            "ANXIAO_DATABASE_URL": self.database_url,
            "ANXIAO_MQTT_URL": f"mqtt://{url.username}:{url.password}@{url.host}:{url.port}",
            "ANXIAO_INGEST_SESSION_EXPIRY_S": "300",
            "ANXIAO_INGEST_BACKOFF_MAX_S": "1.0",
        }
        args = [sys.executable, "-m", "anxiao", "ingest", "--client-id", self.client_id]
        args += ["--metrics-on-exit"]
        if self.group:
            args += ["--group", self.group]
        self.stdout = self.log_dir / f"{self.client_id}-{self.runs}.out"
        self.stderr = self.log_dir / f"{self.client_id}-{self.runs}.err"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=err)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout_s: float = 60.0) -> dict[str, float]:
        """SIGTERM, wait for a clean exit, return the metrics it printed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        assert code == 0, f"ingest exited with {code}: {self.stderr.read_text()[-3000:]}"
        return parse_metrics(self.stdout.read_text())

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


# ------------------------------------------------------------ private broker


class PrivateBroker:
    """A Mosquitto of the test's own, configured like the stack's (persistence, ACL, passwords).

    For tests that restart the broker or flood it: the shared stack broker
    serves other test runs at the same time.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="anxiao-mqtt-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        (self.dir / "data").mkdir()
        passwd = self.dir / "passwd"
        passwd.touch()
        for user in (SERVICE_USER, GATEWAY_USER):
            subprocess.run(
                ["mosquitto_passwd", "-b", str(passwd), user, DEV_PASSWORD],
                check=True,
                capture_output=True,
            )
        passwd.chmod(0o600)
        (self.dir / "acl").write_text(
            "pattern write anxiao/v1/dev/%u/#\n"
            f"user {SERVICE_USER}\ntopic read anxiao/v1/dev/#\n"
            f"user {GATEWAY_USER}\ntopic write anxiao/v1/dev/#\n"
        )
        run_as_root = "user root\n" if os.geteuid() == 0 else ""
        (self.dir / "mosquitto.conf").write_text(
            "per_listener_settings false\n"
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {passwd}\n"
            f"acl_file {self.dir / 'acl'}\n"
            f"{run_as_root}"
            f"log_dest file {self.dir / 'mosquitto.log'}\n"
            "persistence true\n"
            f"persistence_location {self.dir / 'data'}/\n"
            "autosave_interval 30\n"
            "persistent_client_expiration 1h\n"
            "max_inflight_messages 1000\n"
            "max_queued_messages 0\n"
            "max_queued_bytes 0\n"
            "max_packet_size 1048576\n"
        )

    @property
    def service_url(self) -> MqttUrl:
        return MqttUrl(f"mqtt://{SERVICE_USER}:{DEV_PASSWORD}@127.0.0.1:{self.port}")

    def start(self) -> PrivateBroker:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.dir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_broker(self.service_url)
        return self

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves its sessions and queued messages, then exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
