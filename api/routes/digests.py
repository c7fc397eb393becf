"""``GET /digests/{date}``: the bureau's daily digest of a local date, on demand.

Built by :func:`alerts.digest.build_digest` over psycopg in a worker thread
(a batch job: architecture decision 7); ``format`` picks JSON, HTML, CSV or XLSX.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from alerts.digest import FORMATS, build_digest, render
from alerts.ledger import local_timezone
from api.deps import PoolDep, require_roles
from api.errors import ApiError

__all__ = ["router"]

router = APIRouter(tags=["digests"])


def _build(database_url: str, day: date, timezone: str) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn:
        return build_digest(conn, day=day, timezone=timezone)


@router.get(
    "/digests/{day}",
    dependencies=[require_roles("admin", "bureau", "monitor")],
    response_class=Response,
    responses={200: {"content": {media: {} for media in FORMATS.values()}}},
)
async def get_digest(
    day: date,
    request: Request,
    pool: PoolDep,
    format: Literal["json", "html", "csv", "xlsx"] = "json",
) -> Response:
    """The digest of local date ``day`` (YYYY-MM-DD); today's covers the day so far."""
    async with pool.acquire() as conn:
        timezone = await local_timezone(conn, default="Asia/Shanghai")
    today = datetime.now(UTC).astimezone(ZoneInfo(timezone)).date()
    if day > today:
        raise ApiError(
            422, "invalid_request", f"日期不能晚于今天 {today} the date is in the future"
        )
    if day < today - timedelta(days=3660):
        raise ApiError(422, "invalid_request", "日期过早 the date is more than 10 years ago")
    digest = await run_in_threadpool(_build, request.app.state.database_url, day, timezone)
    headers = {}
    if format in ("csv", "xlsx"):
        headers["Content-Disposition"] = f'attachment; filename="anxiao-digest-{day}.{format}"'
    return Response(render(digest, format), media_type=FORMATS[format], headers=headers)
