"""The alert store: episodes written once, updated while they last, closed once.

Every change is written together with an ``alert_events`` row and a
``NOTIFY anxiao_alerts`` carrying that row's id, in the caller's transaction,
so API processes that LISTEN see exactly what was committed (architecture
decision 6). Opening is idempotent: a second ``open`` of an episode that is
already active, or that was stored with the same start, updates it instead.
asyncpg: this runs on the ingest hot path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple

from alerts.rules import KINDS, severity
from core.db import AsyncConnection

__all__ = [
    "LATCHED_KINDS",
    "NOTIFY_CHANNEL",
    "EpisodeChange",
    "acknowledge",
    "apply_changes",
    "resolve",
    "severity_of",
]

NOTIFY_CHANNEL: Final = "anxiao_alerts"
#: Details of a change that gives none (read-only: one instance serves every change).
_NO_DETAILS: Final[Mapping[str, Any]] = MappingProxyType({})
#: Kinds that only a person can clear (GB 50394-2007 5.2.3: emergency buttons latch).
LATCHED_KINDS: Final = frozenset({"panic_button"})


def severity_of(kind: str, *, device_kind: str | None = None) -> str:
    """Contract §3 severity of an alert kind (an offline button is major)."""
    return severity(kind, device_kind)


class EpisodeChange(NamedTuple):
    """One change of one episode, as the rules decide it (immutable).

    A named tuple rather than a frozen dataclass: the engine makes one per
    alert change, and a frozen dataclass's ``__init__`` costs three times as much.
    """

    action: Literal["open", "update", "close"]
    kind: str
    device_id: str
    started_at: datetime
    ended_at: datetime | None = None
    details: Mapping[str, Any] = _NO_DETAILS
    episode_key: str = ""
    late: bool = False


_OPEN = """
INSERT INTO alerts (kind, severity, episode_key, late, device_id, bus_id, school_id,
                    operator_id, district_id, started_at, ended_at, details)
SELECT $1,
       CASE WHEN $1 = 'device_offline' AND d.kind = 'button' THEN 'major' ELSE $2 END,
       $3, $4, d.id, d.bus_id, s.id, b.operator_id, s.district_id, $5, $6, $7::jsonb
  FROM devices d
  LEFT JOIN buses b ON b.id = d.bus_id
  LEFT JOIN schools s ON s.id = coalesce(d.school_id, b.school_id)
 WHERE d.id = $8
ON CONFLICT DO NOTHING
RETURNING id
"""

_UPDATE = """
WITH target AS (
    SELECT id FROM alerts
     WHERE device_id = $1 AND kind = $2 AND episode_key = $3
       AND (state = 'active' OR started_at = $4)
     ORDER BY started_at = $4 DESC, state = 'active' DESC
     LIMIT 1
), next AS (
    SELECT a.id, $4::timestamptz AS started_at, coalesce($5, a.ended_at) AS ended_at,
           a.details || $6::jsonb AS details, a.late OR $7 AS late,
           CASE WHEN $8 AND a.kind <> ALL($9::text[]) THEN 'cleared' ELSE a.state END AS state
      FROM alerts a JOIN target USING (id)
)
UPDATE alerts a
   SET started_at = n.started_at, ended_at = n.ended_at, details = n.details, late = n.late,
       state = n.state, updated_at = now()
  FROM next n
 WHERE a.id = n.id
   -- A change that changes nothing (a replay after a restart) writes nothing.
   AND (a.started_at, a.ended_at, a.details, a.late, a.state)
       IS DISTINCT FROM (n.started_at, n.ended_at, n.details, n.late, n.state)
RETURNING a.id
"""


async def apply_changes(conn: AsyncConnection, changes: Sequence[EpisodeChange]) -> list[int]:
    """Store ``changes`` in the current transaction; return the alert_events ids written."""
    event_ids: list[int] = []
    latched = sorted(LATCHED_KINDS)
    for change in changes:
        details = json.dumps(dict(change.details), ensure_ascii=False, default=str)
        closing = change.action == "close"
        alert_id = None
        action = change.action
        if change.action == "open":
            alert_id = await conn.fetchval(
                _OPEN,
                change.kind,
                KINDS[change.kind],
                change.episode_key,
                change.late,
                change.started_at,
                change.ended_at,
                details,
                change.device_id,
            )
            if alert_id is None:
                action = "update"  # already stored: opening again refines it
        if alert_id is None:
            alert_id = await conn.fetchval(
                _UPDATE,
                change.device_id,
                change.kind,
                change.episode_key,
                change.started_at,
                change.ended_at,
                details,
                change.late,
                closing,
                latched,
            )
        if alert_id is None:
            continue  # nothing to change: already so, resolved by hand, or unknown device
        event_ids.append(await _event(conn, alert_id, action))
    return event_ids


async def _event(
    conn: AsyncConnection,
    alert_id: Any,
    action: str,
    *,
    by: str | None = None,
    note: str | None = None,
) -> int:
    event_id: int = await conn.fetchval(
        "INSERT INTO alert_events (alert_id, action, by_whom, note) VALUES ($1, $2, $3, $4)"
        " RETURNING id",
        alert_id,
        action,
        by,
        note,
    )
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(event_id))
    return event_id


async def acknowledge(conn: AsyncConnection, alert_id: Any, *, by: str, note: str | None) -> bool:
    """Mark an alert acknowledged; False when there is no such alert."""
    found = await conn.fetchval(
        "UPDATE alerts SET acknowledged = true, acknowledged_at = coalesce(acknowledged_at, now()),"
        " acknowledged_by = coalesce(acknowledged_by, $2), updated_at = now()"
        " WHERE id = $1 RETURNING id",
        alert_id,
        by,
    )
    if found is None:
        return False
    await _event(conn, alert_id, "ack", by=by, note=note)
    return True


async def resolve(conn: AsyncConnection, alert_id: Any, *, by: str, note: str | None) -> bool:
    """A person resolves an alert: it is cleared (the only way a latched alert clears)."""
    found = await conn.fetchval(
        "UPDATE alerts SET state = 'cleared', resolved_at = now(), resolved_by = $2,"
        " resolution_note = $3, acknowledged = true,"
        " acknowledged_at = coalesce(acknowledged_at, now()),"
        " acknowledged_by = coalesce(acknowledged_by, $2),"
        " ended_at = coalesce(ended_at, now()), updated_at = now()"
        " WHERE id = $1 RETURNING id",
        alert_id,
        by,
        note,
    )
    if found is None:
        return False
    await _event(conn, alert_id, "resolve", by=by, note=note)
    return True
