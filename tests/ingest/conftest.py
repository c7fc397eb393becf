"""Fixtures of the ingest tests (the stack fixtures come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from ingest import IngestConfig
from tests.ingest.support import PrivateBroker, unique_prefix


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """Device-id prefix of this test alone."""
    return unique_prefix(request.node.name[5:9].replace("_", ""))


@pytest.fixture
def make_config(broker: Settings, database_url: str) -> Callable[..., IngestConfig]:
    """Ingest configuration for an in-process worker on the stack broker."""

    def make(prefix: str, **overrides: Any) -> IngestConfig:
        values: dict[str, Any] = {
            "database_url": database_url,
            "client_id": f"{prefix}ingest",
            "session_expiry_s": 120,
            "backoff_max_s": 1.0,
            **overrides,
        }
        return IngestConfig.from_settings(broker, **values)

    return make


@pytest.fixture
def private_broker() -> Iterator[PrivateBroker]:
    """A Mosquitto of this test's own, started; removed afterwards."""
    broker = PrivateBroker().start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Where child ingest processes write their output (kept by pytest on failure)."""
    return tmp_path
