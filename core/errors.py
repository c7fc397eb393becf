"""The one error tree of anxiao.

::

    AnxiaoError
    ├── ConfigError            bad or missing setting
    ├── StoreError             the database refused or is unreachable
    │   └── MigrationError     a migration failed or the schema is newer than the code
    ├── FleetError             a fleet document is invalid (carries every problem)
    ├── CredentialError        a token or device secret cannot be issued or checked
    ├── BrokerError            the MQTT broker refused or is unreachable
    └── RejectedReading        one message failed validation (carries reason, device_id)

Library errors are translated at the edges with ``raise ... from exc``; only
``api/`` turns these into HTTP responses.
"""

from __future__ import annotations

__all__ = [
    "AnxiaoError",
    "BrokerError",
    "ConfigError",
    "CredentialError",
    "FleetError",
    "MigrationError",
    "RejectedReading",
    "StoreError",
]


class AnxiaoError(Exception):
    """Root of every error anxiao raises on purpose."""


class ConfigError(AnxiaoError):
    """A setting is missing, malformed or unsafe."""


class StoreError(AnxiaoError):
    """The database refused an operation or could not be reached."""


class MigrationError(StoreError):
    """A schema migration failed, or the database is ahead of this code."""


class FleetError(AnxiaoError):
    """A fleet document is invalid; ``problems`` lists each one with its path and id."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = "\n  ".join(problems[:50])
        more = f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"fleet document rejected ({len(problems)} problems):\n  {shown}{more}")


class CredentialError(AnxiaoError):
    """A token or device secret cannot be issued or verified."""


class BrokerError(AnxiaoError):
    """The MQTT broker refused a request or could not be reached."""


class RejectedReading(AnxiaoError):
    """One device message failed validation; it becomes a dead letter."""

    def __init__(self, reason: str, detail: str, *, device_id: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.device_id = device_id
        super().__init__(f"{reason}: {detail}")
