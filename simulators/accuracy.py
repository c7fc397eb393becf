"""Replay a simulated day through ``anxiao serve`` and score its alerts against the ground truth.

Used by ``bench/accuracy.py`` (default scenarios, a full day) and by the test
suite (small size). Steps, all on the local stack: simulate the files (fleet,
ground truth, filings), import the fleet and the filings into the given
database, start ``anxiao serve --clock <clock>`` on a free loopback port,
publish the same stream over MQTT as fast as the broker takes it, wait until
ingest has acknowledged everything it received and the rules have handled
every committed batch (read from ``/metrics``), then score the stored alerts
with :func:`simulators.score.score`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from core.fleet import import_fleet, load_document
from simulators.score import score
from simulators.serving import free_port, wait_ready

__all__ = ["replay_and_score"]

_METRIC = re.compile(r"^(anxiao_\w+?)(?:\{[^}]*\})? (\d+(?:\.\d+)?)$", re.MULTILINE)


#: How old replayed readings may be: ten years.
_REPLAY_VALID_S = 10 * 365 * 86400


def _metrics(http: httpx.Client) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in _METRIC.findall(http.get("/metrics").text):
        out[name] = out.get(name, 0.0) + float(value)
    return out


def _insert_filings(database_url: str, path: Path) -> int:
    filings = json.loads(path.read_text(encoding="utf-8"))
    with psycopg.connect(database_url) as conn, conn.transaction():
        for f in filings:
            conn.execute(
                "INSERT INTO filings (bus_id, kind, valid_from, valid_to, reason, path)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    f["bus"],
                    f["kind"],
                    f["from"],
                    f["to"],
                    f.get("reason", ""),
                    None if f.get("path") is None else json.dumps(f["path"]),
                ),
            )
    return len(filings)


def replay_and_score(
    database_url: str,
    *,
    workdir: Path,
    buses: int,
    schools: int,
    duration: str,
    start: str = "2026-11-23T06:00:00+08:00",
    seed: int = 7,
    clock: str = "event",
    id_prefix: str = "",
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Run the whole replay; return the score plus counts and timings."""
    sim_args = [
        "--buses", str(buses), "--schools", str(schools), "--duration", duration,
        "--seed", str(seed), "--start", start, "--quiet",
    ]  # fmt: skip
    if id_prefix:
        sim_args += ["--id-prefix", id_prefix]
    anxiao = [sys.executable, "-m", "anxiao"]
    files = workdir / "sim"
    subprocess.run(
        [*anxiao, "simulate", *sim_args, "--out", str(files), "--no-publish"],
        check=True,
        capture_output=True,
    )
    import_fleet(load_document(files / "fleet.json"), database_url=database_url)
    n_filings = _insert_filings(database_url, files / "filings.json")

    port = free_port()
    env = {
        **os.environ,
        "ANXIAO_DATABASE_URL": database_url,
        "ANXIAO_HTTP_PORT": str(port),
        "ANXIAO_INGEST_CLIENT_ID": f"anxiao-accuracy-{os.getpid()}-{port}",
        "ANXIAO_INGEST_SESSION_EXPIRY_S": "60",
        # A scripted day stays valid however long ago it was (contract §1's 7-day
        # window is for devices, not for replays of a fixed, reproducible day).
        "ANXIAO_MAX_PAST_S": str(_REPLAY_VALID_S),
    }
    log_path = workdir / "serve.log"
    with log_path.open("w") as log:
        serve = subprocess.Popen(
            [*anxiao, "serve", "--clock", clock], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=5.0) as http:
            wait_ready(http, serve, output=log_path.read_text)
            started = time.monotonic()
            subprocess.run(
                [*anxiao, "simulate", *sim_args, "--fast", "--client-id", f"acc-pub-{port}"],
                check=True,
                capture_output=True,
            )
            published_s = time.monotonic() - started
            deadline = time.monotonic() + timeout_s
            previous: dict[str, float] | None = None
            while True:  # drained: all received acked, every batch through the rules
                m = _metrics(http)
                drained = (
                    m.get("anxiao_ingest_messages_received_total", 0)
                    == m.get("anxiao_ingest_messages_acked_total", -1)
                    and m.get("anxiao_ingest_batches_total", 0)
                    == m.get("anxiao_rules_batches_total", -1)
                    and m.get("anxiao_rules_alert_changes_unstored", 1) == 0
                )
                if drained and m == previous:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not drained within {timeout_s} s: {m}")
                previous = m
                time.sleep(0.5)
            drained_s = time.monotonic() - started
            hook_errors = int(m.get("anxiao_ingest_hook_errors_total", 0))
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            serve.wait(60)

    with psycopg.connect(database_url) as conn:
        cur = conn.execute(
            "SELECT device_id, kind, started_at, ended_at, late, details FROM alerts"
        )
        columns = [c.name for c in cur.description or ()]
        alerts = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
        fixes = conn.execute("SELECT count(*) FROM gps_fixes").fetchone()
    truth = [
        json.loads(line)
        for line in (files / "ground_truth.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    result = score(truth, alerts, clock=clock)
    result.update(
        buses=buses,
        start=start,
        duration=duration,
        clock=clock,
        filings=n_filings,
        fixes=int(fixes[0]) if fixes else 0,
        alerts=len(alerts),
        hook_errors=hook_errors,
        serve_errors=[
            line
            for line in log_path.read_text(errors="replace").splitlines()
            if "ERROR" in line or "Traceback" in line or "Error:" in line
        ][:20],
        publish_s=round(published_s, 2),
        drained_s=round(drained_s, 2),
    )
    return result
