"""``ClosingLoop.run()``, the entry point ``serve`` runs: it works, loses its database
connections and carries on, and stops when cancelled."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from alerts.closing import ClosingLoop
from tests.closing.support import (
    closing_settings,
    fleet_with_contacts,
    store_violations,
    webhook_receiver,
)


async def _terminate_loop_connections(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'anxiao-closing' AND datname = current_database()"
            )
        )
    finally:
        await conn.close()


async def test_the_loop_survives_losing_its_connections_and_stops_when_cancelled(
    fresh_database_url,
) -> None:
    with webhook_receiver(fail_first=0) as rx:
        tag = fleet_with_contacts(fresh_database_url, webhook=f"{rx.url}/hook", mail=None)
        loop = ClosingLoop(closing_settings(fresh_database_url))
        task = asyncio.create_task(loop.run(), name="closing")
        try:
            await store_violations(fresh_database_url, tag, [100.0])
            await asyncio.to_thread(rx.wait_for, lambda r: len(r.delivered()) == 1, timeout_s=30)

            # The database drops every connection of the loop (a restart looks the same).
            assert await _terminate_loop_connections(fresh_database_url) >= 1
            # Another episode (a different start: the same start would be the same episode).
            await store_violations(fresh_database_url, tag, [110.0], hours_ago=2.0)
            await asyncio.to_thread(rx.wait_for, lambda r: len(r.delivered()) == 2, timeout_s=30)
            assert not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=10)
        assert task.cancelled()
        assert len(rx.notices(rx.delivered())) == 2
    # Nothing of the loop is left connected.
    assert await _terminate_loop_connections(fresh_database_url) == 0
