"""The local stack's database role can do what the test harness needs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.conftest import create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a superuser session via runuser, needs root")
def test_a_database_with_a_superuser_session_can_be_dropped(admin_database_url: str) -> None:
    """TimescaleDB's scheduler is such a session; it once made teardown fail intermittently."""
    url = create_database(admin_database_url, prefix="anxiao_drop")
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    psql = ["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/psql", "-X", "-At"]
    socket_dir = str(ROOT / ".stack" / "pg" / "run")
    session = subprocess.Popen(
        [*psql, "-h", socket_dir, "-p", str(parts.port), "-d", name,
         "-c", "SELECT 'attached'", "-c", "SELECT pg_sleep(60)"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        # Readiness: psql prints the first result once its session is attached.
        assert session.stdout is not None
        assert session.stdout.readline().strip() == "attached"
        drop_database(admin_database_url, url)
        with psycopg.connect(admin_database_url) as conn:
            left = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
            assert left.fetchone()[0] == 0
    finally:
        session.kill()
        session.wait(10)
        if session.stdout:
            session.stdout.close()
