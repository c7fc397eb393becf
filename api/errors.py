"""One error body shape for every failure: ``{"error": {"code", "message", "details"?}}``.

Only ``api/`` turns anxiao errors into HTTP responses; they happen here.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import CredentialError, FleetError, StoreError

__all__ = ["ApiError", "error_body", "install_error_handlers"]


class ApiError(Exception):
    """An error with an HTTP status, a stable code and a message for people."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON body of an error response."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def install_error_handlers(app: FastAPI) -> None:
    """Map anxiao and framework errors onto the one error body shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status)

    @app.exception_handler(FleetError)
    async def _fleet_error(_r: Request, exc: FleetError) -> JSONResponse:
        body = error_body("invalid_fleet", "车队文档无效 fleet document rejected", exc.problems)
        return JSONResponse(body, status_code=422)

    @app.exception_handler(CredentialError)
    async def _credential_error(_r: Request, exc: CredentialError) -> JSONResponse:
        return JSONResponse(error_body("bad_request", str(exc)), status_code=400)

    @app.exception_handler(StoreError)
    async def _store_error(_r: Request, exc: StoreError) -> JSONResponse:
        body = error_body("unavailable", "数据库不可用 database unavailable")
        return JSONResponse(body, status_code=503)

    @app.exception_handler(asyncpg.exceptions.PostgresConnectionError)
    # 57xxx: the server is starting, shutting down or restarting (57P01-57P03).
    @app.exception_handler(asyncpg.exceptions.OperatorInterventionError)
    @app.exception_handler(asyncpg.exceptions.InterfaceError)
    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(ConnectionError)
    async def _database_gone(_r: Request, exc: Exception) -> JSONResponse:
        # The pool drops the broken connection; the next request gets a new one.
        body = error_body("unavailable", "数据库暂不可用，请重试 database unavailable, retry")
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(asyncpg.exceptions.DataError)
    @app.exception_handler(psycopg.DataError)
    async def _unstorable(_r: Request, exc: Exception) -> JSONResponse:
        # A value the database cannot take (a NUL character, a date past year
        # 9999 in UTC): the request's fault, not the server's.
        body = error_body("invalid_request", "请求含无效的值 a value cannot be stored or compared")
        return JSONResponse(body, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _validation(_r: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"where": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()
        ]
        return JSONResponse(error_body("invalid_request", "请求无效 invalid request", details), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)
