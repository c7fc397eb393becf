"""The FastAPI application: ``create_app`` wires routers, errors and the pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

from api.errors import install_error_handlers
from api.routes import (
    alerts,
    dashboard,
    devices,
    digests,
    filings,
    fleet,
    ledger,
    live,
    notices,
    stream,
    tracks,
)
from api.stream import EventHub
from core.db import create_pool

__all__ = ["create_app"]


def create_app(*, database_url: str, pool_max_size: int = 10) -> FastAPI:
    """The anxiao HTTP API; the pool opens and closes with the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await create_pool(
            database_url=database_url, max_size=pool_max_size, application_name="anxiao-api"
        )
        await app.state.hub.start(database_url=database_url)
        try:
            yield
        finally:
            await app.state.hub.stop()
            await app.state.pool.close()

    app = FastAPI(
        title="安校 anxiao API",
        version="1",
        description="校车与校园安全监测 school-bus and campus safety monitoring (contract §4)",
        lifespan=lifespan,
    )
    app.state.database_url = database_url
    #: ``serve`` publishes positions into it; alert events come by LISTEN.
    app.state.hub = EventHub()
    install_error_handlers(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """200 while the service is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """200 once every part reports ready (``serve``: ingest subscribed), else 503."""
        check = getattr(app.state, "readiness", None)
        parts: dict[str, bool] = check() if check is not None else {}
        ready = all(parts.values())
        return JSONResponse({"ready": ready, "parts": parts}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def metrics() -> str:
        """Prometheus text format; ``serve`` installs the ingest metrics."""
        render = getattr(app.state, "metrics", None)
        return render() if render is not None else ""

    v1 = APIRouter(prefix="/api/v1")
    for module in (alerts, devices, filings, fleet, live, stream, tracks):
        v1.include_router(module.router)
    for module in (ledger, notices, digests):  # closing the loop (issue 7)
        v1.include_router(module.router)
    v1.include_router(dashboard.api_router)
    app.include_router(v1)
    app.include_router(dashboard.router)
    app.mount("/static", dashboard.static_files(), name="static")
    return app
