"""``GET /stream``: Server-Sent Events of alert changes and bus positions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from api.deps import PoolDep, PrincipalDep
from api.stream import ALERT_EVENT_SQL, EventHub, alert_event_payload, format_sse

__all__ = ["router"]

router = APIRouter(tags=["stream"])

_KEEPALIVE_S = 15.0
_REPLAY_LIMIT = 1000


@router.get("/stream", response_class=StreamingResponse)
async def stream(
    request: Request,
    pool: PoolDep,
    principal: PrincipalDep,
    last_event_id: int | None = Header(default=None, alias="Last-Event-ID"),
) -> StreamingResponse:
    """``event: alert`` (with ids, resumable by ``Last-Event-ID``) and ``event: position``."""
    hub: EventHub = request.app.state.hub

    async def events() -> AsyncIterator[bytes]:
        async with hub.subscribe(
            school_id=principal.school_id, operator_id=principal.operator_id
        ) as subscriber:
            yield b": connected\n\n"
            if last_event_id is not None:
                # Subscribed first, replayed second: nothing falls in between;
                # an event in both is skipped by its id below.
                rows = await pool.fetch(
                    ALERT_EVENT_SQL + " WHERE e.id > $1 ORDER BY e.id LIMIT $2",
                    last_event_id,
                    _REPLAY_LIMIT,
                )
                replayed = 0
                for row in rows:
                    payload = alert_event_payload(row)
                    replayed = payload["event_id"]
                    if subscriber.sees(payload):
                        yield format_sse("alert", payload, event_id=replayed)
            else:
                replayed = 0
            while True:
                try:
                    message = await asyncio.wait_for(subscriber.queue.get(), _KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if message is None:
                    return
                if replayed and message.startswith(b"id: "):
                    event_id = int(message[4 : message.index(b"\n")])
                    if event_id <= replayed:
                        continue
                yield message

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
