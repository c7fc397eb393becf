"""API: the FastAPI app, auth and scopes, routers per resource, SSE, the dashboard."""

__all__: list[str] = []
