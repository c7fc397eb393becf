"""Opaque cursors for keyset pagination."""

from __future__ import annotations

import base64
import binascii

from api.errors import ApiError

__all__ = ["decode_cursor", "encode_cursor"]


def encode_cursor(key: str) -> str:
    """The cursor that resumes after ``key``."""
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    """The key a cursor resumes after; a malformed cursor is a 422."""
    if not cursor:
        return None
    try:
        key = base64.b64decode(
            cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True
        ).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ApiError(422, "invalid_request", f"游标无效 bad cursor {cursor!r}") from exc
    if not key:
        raise ApiError(422, "invalid_request", f"游标无效 bad cursor {cursor!r}")
    return key
