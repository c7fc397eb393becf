"""Alerts scored against the simulator's ground truth: precision, recall, start error per kind.

Pure. A ground-truth record with ``expected == "alert"`` is found when an
alert of the same device and kind overlaps its ``[start, end]`` (with
``slack_s`` on both sides); each alert matches at most one record, nearest
start first. Precision counts every alert of the kind (an alert on a
near-miss, or on nothing scripted, is a false positive); recall counts the
records expecting an alert. ``start_error_s_max`` is the largest
``|alert started_at - record start|`` among the matches.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["score"]


@dataclass
class _Tally:
    alerts: int = 0
    expected: int = 0
    errors_s: list[float] = field(default_factory=list)


def _ms(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return int(value.timestamp() * 1000)


def score(
    ground_truth: Iterable[Mapping[str, Any]],
    alerts: Iterable[Mapping[str, Any]],
    *,
    clock: str = "event",
    slack_s: float = 60.0,
) -> dict[str, Any]:
    """Score ``alerts`` against ``ground_truth``; see the module docstring.

    Returns ``{"kinds": {kind: {precision, recall, start_error_s_max, alerts,
    expected, found}}, "misses": [...], "false_positives": [...]}``.
    ``alerts``: mappings with ``device_id``, ``kind``, ``started_at``,
    ``ended_at`` (datetimes, RFC 3339 text or epoch ms). Records that only
    hold under the other clock (``clock_skew`` is live-only) are left out.
    """
    slack = int(slack_s * 1000)
    # clock_skew is evaluated under the live clock only (contract §3).
    truth = [r for r in ground_truth if clock == "live" or r["kind"] != "clock_skew"]
    wanted: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in truth:
        if r["expected"] == "alert":
            wanted[(r["device"], r["kind"])].append(r)
    got: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for a in alerts:
        if clock == "event" and a["kind"] == "clock_skew":
            continue
        got[(a["device_id"], a["kind"])].append(a)

    kinds = sorted({k for _, k in wanted} | {k for _, k in got})
    stats = {k: _Tally() for k in kinds}
    misses: list[dict[str, Any]] = []
    false_positives: list[dict[str, Any]] = []
    for key in sorted(set(wanted) | set(got)):
        kind = key[1]
        records = sorted(wanted.get(key, []), key=lambda r: _ms(r["start"]) or 0)
        candidates = sorted(got.get(key, []), key=lambda a: _ms(a["started_at"]) or 0)
        tally = stats[kind]
        tally.alerts += len(candidates)
        tally.expected += len(records)
        used: set[int] = set()
        for r in records:
            start = _ms(r["start"]) or 0
            end = _ms(r.get("end")) or start
            best: tuple[int, int] | None = None
            for i, a in enumerate(candidates):
                if i in used:
                    continue
                a_start = _ms(a["started_at"]) or 0
                a_end = _ms(a.get("ended_at"))
                overlaps = a_start <= end + slack and (a_end is None or a_end >= start - slack)
                if overlaps and (best is None or abs(a_start - start) < best[1]):
                    best = (i, abs(a_start - start))
            if best is None:
                misses.append(dict(r))
                continue
            used.add(best[0])
            tally.errors_s.append(best[1] / 1000.0)
        for i, a in enumerate(candidates):
            if i not in used:
                false_positives.append({k: str(v) for k, v in a.items()})

    result: dict[str, Any] = {}
    for kind, t in stats.items():
        found = len(t.errors_s)
        result[kind] = {
            "precision": round(found / t.alerts, 4) if t.alerts else 1.0,
            "recall": round(found / t.expected, 4) if t.expected else 1.0,
            "start_error_s_max": round(max(t.errors_s), 3) if t.errors_s else None,
            "alerts": t.alerts,
            "expected": t.expected,
            "found": found,
        }
    return {"kinds": result, "misses": misses, "false_positives": false_positives}
