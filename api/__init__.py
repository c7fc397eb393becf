"""API: the FastAPI app, auth and scopes, routers per resource, SSE, the dashboard."""

from api.app import create_app

__all__ = ["create_app"]
