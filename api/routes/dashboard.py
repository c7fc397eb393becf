"""The monitoring-room dashboard: the page at ``/``, its static assets, and ``/me``.

The page is plain HTML, CSS and ES modules under ``api/static/`` (no build
step). Leaflet comes from npm: ``scripts/web.sh`` copies it into
``api/static/vendor/`` so the page needs no CDN. The basemap tile URL is
``app.state.basemap_tile_url`` (empty by default: the map is drawn from the
fleet alone and reads well offline); the page finds it in a ``<meta>`` tag.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from api.deps import PrincipalDep

__all__ = ["STATIC_DIR", "api_router", "router", "static_files"]

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
_TILE_PLACEHOLDER = "__ANXIAO_TILE_URL__"

#: The page itself, outside ``/api/v1`` and outside the OpenAPI document.
router = APIRouter(include_in_schema=False)
#: What the page asks the API about its caller (under ``/api/v1``).
api_router = APIRouter(tags=["auth"])


class _RevalidatedStaticFiles(StaticFiles):
    """Static files that browsers revalidate (ETag → 304), so an upgrade is seen at once."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


def static_files() -> StaticFiles:
    """The ASGI app serving ``api/static/`` (mounted at ``/static``)."""
    return _RevalidatedStaticFiles(directory=STATIC_DIR)


def _content_security_policy(tile_url: str) -> str:
    images = "'self' data:"
    if tile_url:
        parts = urlsplit(tile_url.replace("{s}", "a"))
        # Tile hosts often rotate subdomains ({s}); allow the scheme rather than guess them.
        images += f" {parts.scheme}:" if "{s}" in tile_url else f" {parts.scheme}://{parts.netloc}"
    return (
        "default-src 'self'; script-src 'self'; connect-src 'self'; "
        f"img-src {images}; style-src 'self' 'unsafe-inline'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


@router.get("/", response_class=HTMLResponse)
async def dashboard(request: Request) -> HTMLResponse:
    """The monitoring-room page (zh-CN first, English by a toggle)."""
    tile_url = str(getattr(request.app.state, "basemap_tile_url", "") or "")
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    page = page.replace(_TILE_PLACEHOLDER, html.escape(tile_url, quote=True))
    return HTMLResponse(
        page,
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": _content_security_policy(tile_url),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


class Me(BaseModel):
    """The calling token's role and scope, so the page shows only what it may do."""

    role: Literal["admin", "bureau", "monitor", "school", "operator"]
    scope_id: str | None
    name: str
    can_decide: bool
    can_read_fleet: bool


@api_router.get("/me", response_model=Me)
async def me(principal: PrincipalDep) -> Me:
    """Who the bearer token belongs to."""
    return Me(
        role=principal.role,  # type: ignore[arg-type]
        scope_id=principal.scope_id,
        name=principal.name,
        can_decide=principal.role in ("admin", "monitor"),
        can_read_fleet=principal.role in ("admin", "bureau", "monitor"),
    )
