"""Dependencies: the database pool, the calling principal and its scope.

Scope checks live here and nowhere else: a scoped role (``school``,
``operator``) sees only its own data, and an id outside its scope is answered
with 404, never 403, so ids cannot be probed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import asyncpg
from fastapi import Depends, Request

from api.errors import ApiError
from core.credentials import hash_token

__all__ = ["PoolDep", "Principal", "PrincipalDep", "require_roles"]


if TYPE_CHECKING:
    Pool = asyncpg.Pool[asyncpg.Record]
else:  # asyncpg's Pool is generic only in its stubs
    Pool = asyncpg.Pool


def _pool(request: Request) -> Pool:
    pool: Pool = request.app.state.pool
    return pool


PoolDep = Annotated[Pool, Depends(_pool)]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's role and, for scoped roles, its school or operator id."""

    token_id: int
    role: str
    scope_id: str | None
    name: str

    @property
    def school_id(self) -> str | None:
        """The school a ``school`` principal is confined to."""
        return self.scope_id if self.role == "school" else None

    @property
    def operator_id(self) -> str | None:
        """The operator an ``operator`` principal is confined to."""
        return self.scope_id if self.role == "operator" else None

    def sees(self, *, school_id: str | None, operator_id: str | None) -> bool:
        """Whether a row belonging to this school / operator is visible."""
        if self.role == "school":
            return school_id == self.scope_id
        if self.role == "operator":
            return operator_id == self.scope_id
        return True


async def _principal(request: Request, pool: PoolDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthenticated", "需要令牌 a bearer token is required")
    row = await pool.fetchrow(
        "SELECT id, role, scope_id, name FROM api_tokens"
        " WHERE token_hash = $1 AND revoked_at IS NULL",
        hash_token(token.strip()),
    )
    if row is None:
        raise ApiError(401, "unauthenticated", "令牌无效 unknown or revoked token")
    return Principal(row["id"], row["role"], row["scope_id"], row["name"])


PrincipalDep = Annotated[Principal, Depends(_principal)]


def require_roles(*roles: str) -> Any:
    """A dependency that refuses principals whose role is not in ``roles`` (403)."""

    async def check(principal: PrincipalDep) -> Principal:
        if principal.role not in roles:
            raise ApiError(
                403,
                "forbidden",
                f"角色 {principal.role} 无权操作 role {principal.role} may not do this",
            )
        return principal

    return Depends(check)
