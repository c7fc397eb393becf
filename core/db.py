"""Database connections: two drivers, each where it is best (architecture decision 7).

asyncpg pools serve the hot async paths (ingest COPY, API queries); psycopg 3
serves migrations, the CLI and batch jobs (digests, retention), which call
``psycopg.connect`` directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

__all__ = ["AsyncConnection", "create_pool"]

#: A connection of its own or one borrowed from a pool.
AsyncConnection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"


async def create_pool(
    *, database_url: str, min_size: int = 1, max_size: int = 10, application_name: str = "anxiao"
) -> asyncpg.Pool[Any]:
    """An asyncpg pool for a hot async path (ingest, API)."""
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        server_settings={"application_name": application_name},
    )
    if pool is None:  # asyncpg's typing allows it; it never happens without a lazy pool.
        raise RuntimeError("asyncpg returned no pool")
    return pool
