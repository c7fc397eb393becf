"""While PostgreSQL restarts, the API answers 503 with Retry-After, never 500.

Regression, found by the schemathesis run while the stack's database was
restarted by another suite: asyncpg's CannotConnectNowError ("the database
system is shutting down", SQLSTATE 57P03) and psycopg's OperationalError (the
fleet export's connection) were answered with 500.
"""

from __future__ import annotations

import asyncpg
import psycopg
import pytest
from fastapi.testclient import TestClient

from api import create_app


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.AdminShutdownError(
            "terminating connection due to administrator command"
        ),
        psycopg.OperationalError("connection refused"),
    ],
    ids=["cannot-connect-now", "admin-shutdown", "psycopg-operational"],
)
def test_database_restart_is_503_with_retry_after(error: Exception) -> None:
    app = create_app(database_url="postgresql:///unused")

    async def failing() -> None:
        raise error

    app.add_api_route("/failing", failing)
    # No lifespan: nothing connects; the route alone raises what a restart raises.
    response = TestClient(app, raise_server_exceptions=False).get("/failing")
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "unavailable"
