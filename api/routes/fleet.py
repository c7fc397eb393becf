"""``PUT /fleet`` and ``GET /fleet``: the reference data as one document (admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.concurrency import run_in_threadpool

from api.deps import require_roles
from core.fleet import export_fleet, import_fleet

__all__ = ["router"]

router = APIRouter(tags=["fleet"])


@router.put("/fleet", dependencies=[require_roles("admin")])
async def put_fleet(
    request: Request, document: Annotated[dict[str, Any], Body()], prune: bool = False
) -> dict[str, Any]:
    """Upsert a fleet document (contract §2); 422 lists every problem and changes nothing."""
    summary = await run_in_threadpool(
        import_fleet, document, database_url=request.app.state.database_url, prune=prune
    )
    return {
        "inserted": summary.inserted,
        "updated": summary.updated,
        "pruned": summary.pruned,
        "calendar_replaced": summary.calendar_replaced,
    }


@router.get("/fleet", dependencies=[require_roles("admin", "bureau", "monitor")])
async def get_fleet(request: Request) -> dict[str, Any]:
    """The stored reference data as a fleet document."""
    return await run_in_threadpool(export_fleet, database_url=request.app.state.database_url)
