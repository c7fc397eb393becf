"""A simulated scenario day replayed through ``anxiao serve``: every scripted alert, nothing else.

The small-size version of ``bench/accuracy.py``: 10 buses and 2 schools over
4 hours of a school day, with the simulator's noise, loss, duplicates,
reordering and backfill, over MQTT into a real ``serve --clock event``.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.settings import Settings
from simulators.accuracy import replay_and_score

#: Contract §3 minimum durations (s); a start may be off by that plus one reporting interval.
MIN_DURATION_S = {"speeding": 10, "route_deviation": 30, "out_of_hours": 60}
REPORTING_INTERVAL_S = 30


def test_every_scripted_alert_and_nothing_else(
    fresh_database_url: str, broker: Settings, tmp_path: Path
) -> None:
    result = replay_and_score(
        fresh_database_url,
        workdir=tmp_path,
        buses=10,
        schools=2,
        duration="4h",
        start="2026-11-23T06:00:00+08:00",  # a Monday; replays stay valid (see replay_and_score)
        id_prefix=f"A{os.getpid() % 10000}",
    )
    kinds = result["kinds"]
    assert set(kinds) == {
        "speeding",
        "route_deviation",
        "out_of_hours",
        "device_offline",
        "smoke_alarm",
        "panic_button",
        "device_fault",
    }, kinds
    detail = {
        "misses": result["misses"],
        "false_positives": result["false_positives"],
        "serve_errors": result["serve_errors"],
    }
    assert result["hook_errors"] == 0, detail
    for kind, k in kinds.items():
        assert (k["precision"], k["recall"]) == (1.0, 1.0), (kind, k, detail)
        bound = MIN_DURATION_S.get(kind, 0) + REPORTING_INTERVAL_S
        assert k["start_error_s_max"] <= bound, (kind, k)
