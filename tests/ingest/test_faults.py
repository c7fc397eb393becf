"""Faults mid-stream: each run ends with exactly the published readings stored.

Each test publishes 50,000 GPS messages at QoS 1 from a background thread to
a Mosquitto of its own (configured like the stack's: persistence, ACL,
passwords) and breaks something while ``anxiao ingest`` -- a child process --
is storing them: the worker is killed with SIGKILL, PostgreSQL restarts,
Mosquitto restarts, or one of two workers sharing a subscription dies. The
database must end with every published (device, ts) once and nothing else.

The private broker keeps the flood and the broker restart away from the
shared stack broker, which other test runs use at the same time; the
PostgreSQL restart does touch the shared cluster, briefly (``-m fast``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.ingest.support import (
    BackgroundPublisher,
    IngestProcess,
    PrivateBroker,
    dead_letters,
    expected_keys,
    gps_count,
    gps_stream,
    make_session,
    register_devices,
    stored_gps_keys,
    wait_until,
)

pytestmark = pytest.mark.slow

MESSAGES = 50_000
DEVICES = 100
TOPIC = "anxiao/v1/dev/+/+"
#: Stored rows at which the fault is injected (the publisher is still busy then).
FAULT_AT = 5_000


class Run:
    """One fault scenario's stream, workers and checks."""

    def __init__(self, database_url: str, broker: PrivateBroker, prefix: str, log_dir: Path):
        self.database_url = database_url
        self.broker = broker
        self.prefix = prefix
        self.log_dir = log_dir
        register_devices(database_url, [f"{prefix}{i}" for i in range(DEVICES)])
        self.messages = gps_stream(prefix, DEVICES, MESSAGES)
        self.publisher = BackgroundPublisher(broker.service_url, self.messages, f"{prefix}pub")
        self.workers: list[IngestProcess] = []

    def worker(self, name: str, group: str | None = None) -> IngestProcess:
        client_id = f"{self.prefix}{name}"
        topic = f"$share/{group}/{TOPIC}" if group else TOPIC
        # The session exists before anything is published: the broker queues from now.
        make_session(self.broker.service_url, client_id, topic)
        worker = IngestProcess(
            database_url=self.database_url,
            mqtt_url=self.broker.service_url,
            client_id=client_id,
            log_dir=self.log_dir,
            group=group,
        )
        self.workers.append(worker)
        return worker

    def stored(self) -> int:
        return gps_count(self.database_url, self.prefix)

    def wait_for_fault_point(self) -> None:
        wait_until(lambda: self.stored() >= FAULT_AT, timeout_s=120, what=f"{FAULT_AT} rows")
        # Mid-stream: ingest is far from done (the publisher usually is too,
        # but on a crowded machine it may have handed everything to the broker).
        assert self.stored() < MESSAGES // 2

    def finish(self) -> None:
        """Wait for the publisher and for every row; check the stored set exactly."""
        self.publisher.finish()
        wait_until(lambda: self.stored() >= MESSAGES, timeout_s=240, what=f"{MESSAGES} rows")
        assert stored_gps_keys(self.database_url, self.prefix) == expected_keys(self.messages)
        assert dead_letters(self.database_url, self.prefix) == []

    def cleanup(self) -> None:
        for worker in self.workers:
            worker.stop_quietly()


def test_kill_9_of_the_worker_mid_stream(
    database_url: str, private_broker: PrivateBroker, prefix: str, log_dir: Path
) -> None:
    run = Run(database_url, private_broker, prefix, log_dir)
    worker = run.worker("ingest").start()
    try:
        run.publisher.start()
        run.wait_for_fault_point()
        worker.kill9()
        killed_at = run.stored()
        assert killed_at < MESSAGES
        worker.start()  # same client id: its session still holds what was not acked
        run.finish()
        metrics = worker.terminate()
    finally:
        run.cleanup()
    assert metrics["anxiao_ingest_messages_received_total"] >= MESSAGES - killed_at


def local_cluster(database_url: str) -> tuple[Path, Path]:
    """``pg_ctl`` and the data directory of the server behind ``database_url``, found from it.

    The server names its data directory; ``pg_ctl`` is the one beside the
    running postmaster's executable. Skips only when that server is not on
    this machine (its data directory is not here), as when the tests point at
    a remote database: it cannot be restarted from here.
    """
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    data = Path(str(row[0])) if row else Path()
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        pytest.skip(
            f"the database server is not on this machine (no {pid_file}): cannot restart it"
        )
    postmaster = Path(os.readlink(f"/proc/{pid_file.read_text().split()[0]}/exe"))
    return postmaster.parent / "pg_ctl", data


def test_postgresql_restart_mid_stream(
    database_url: str, private_broker: PrivateBroker, prefix: str, log_dir: Path
) -> None:
    pg_ctl, data = local_cluster(database_url)
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    run = Run(database_url, private_broker, prefix, log_dir)
    worker = run.worker("ingest").start()
    try:
        run.publisher.start()
        run.wait_for_fault_point()
        # The server's output goes to the stack's log file: a pipe to this
        # process would keep subprocess.run waiting for as long as the server runs.
        log = data.parent / "postgres.log"
        restart = [str(pg_ctl), "-D", str(data), "-l", str(log), "-m", "fast", "-w", "-t", "60"]
        subprocess.run(
            [*as_postgres, *restart, "restart"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=90,
        )
        run.finish()
        metrics = worker.terminate()
    finally:
        run.cleanup()
    assert metrics['anxiao_ingest_reconnects_total{target="database"}'] >= 1
    assert metrics["anxiao_ingest_store_retries_total"] >= 1


def test_mosquitto_restart_mid_stream(
    database_url: str, private_broker: PrivateBroker, prefix: str, log_dir: Path
) -> None:
    run = Run(database_url, private_broker, prefix, log_dir)
    worker = run.worker("ingest").start()
    try:
        run.publisher.start()
        run.wait_for_fault_point()
        private_broker.restart()  # SIGTERM: it saves sessions and queues, then starts again
        run.finish()
        metrics = worker.terminate()
    finally:
        run.cleanup()
    assert metrics['anxiao_ingest_reconnects_total{target="mqtt"}'] >= 1


def test_two_workers_in_a_shared_group_one_killed(
    database_url: str, private_broker: PrivateBroker, prefix: str, log_dir: Path
) -> None:
    group = f"{prefix}group"
    run = Run(database_url, private_broker, prefix, log_dir)
    first = run.worker("a", group).start()
    second = run.worker("b", group).start()
    try:
        run.publisher.start()
        run.wait_for_fault_point()
        first.kill9()
        # Mosquitto keeps dealing the dead worker its share (its session
        # persists) until it comes back with the same client id.
        first.start()
        run.finish()
        first_metrics = first.terminate()
        second_metrics = second.terminate()
    finally:
        run.cleanup()
    for metrics in (first_metrics, second_metrics):
        assert metrics['anxiao_ingest_readings_stored_total{channel="gps"}'] > 0


def test_sigterm_commits_and_acknowledges_what_it_holds(
    database_url: str, private_broker: PrivateBroker, prefix: str, log_dir: Path
) -> None:
    run = Run(database_url, private_broker, prefix, log_dir)
    worker = run.worker("ingest").start()
    try:
        run.publisher.start()
        run.wait_for_fault_point()
        first = worker.terminate()
        assert run.stored() < MESSAGES
        worker.start()
        run.finish()
        second = worker.terminate()
    finally:
        run.cleanup()
    received = first["anxiao_ingest_messages_received_total"]
    assert first["anxiao_ingest_messages_acked_total"] == received > 0
    assert first["anxiao_ingest_pending_messages"] == 0
    # Everything the first run received was committed and acknowledged before
    # it exited, so the broker redelivered none of it to the second run.
    assert run.publisher.repeated == 0, "the publisher itself sent duplicates"
    assert second['anxiao_ingest_duplicates_total{channel="gps"}'] == 0
    assert second["anxiao_ingest_messages_received_total"] == MESSAGES - received
