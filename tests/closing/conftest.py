"""Fixtures for the closing-loop tests: the API fixtures (fleet, tokens, client) and alerts."""

from __future__ import annotations

from tests.api.conftest import client, world  # noqa: F401 — fixtures shared with the API tests
