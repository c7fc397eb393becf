"""The ``anxiao`` entry point as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _anxiao(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "anxiao", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_status_json_reports_the_stack(database_url: str, settings: Settings) -> None:
    result = _anxiao("status", "--json", env={"ANXIAO_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["database_ok"] is True and status["broker_ok"] is True
    assert status["schema_version"] == status["schema_latest"] >= 1
    assert status["timescaledb_edition"] in ("apache", "timescale")
    assert (status["mqtt_host"], status["mqtt_port"], status["http_port"]) == (
        settings.mqtt.host,
        settings.mqtt.port,
        settings.http_port,
    )


def test_status_reports_an_unreachable_broker(database_url: str, settings: Settings) -> None:
    wrong = f"mqtt://svc~anxiao:wrong@{settings.mqtt.host}:{settings.mqtt.port}"
    result = _anxiao(
        "status", "--json", env={"ANXIAO_DATABASE_URL": database_url, "ANXIAO_MQTT_URL": wrong}
    )
    assert result.returncode == 1
    status = json.loads(result.stdout)
    assert status["broker_ok"] is False and status["database_ok"] is True
    assert "broker_error" in status


def test_migrate_twice(empty_database_url: str) -> None:
    first = _anxiao("migrate", env={"ANXIAO_DATABASE_URL": empty_database_url})
    assert first.returncode == 0 and "applied 0001_initial" in first.stderr
    second = _anxiao("migrate", env={"ANXIAO_DATABASE_URL": empty_database_url})
    assert second.returncode == 0 and "up to date" in second.stderr


def test_errors_are_one_clear_line(tmp_path: Path, database_url: str) -> None:
    result = _anxiao(
        "fleet", "import", str(tmp_path / "missing.json"), env={"ANXIAO_DATABASE_URL": database_url}
    )
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr
