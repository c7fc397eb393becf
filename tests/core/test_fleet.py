"""Fleet document validation and import against the real database."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from anxiao.cli import main as cli_main
from core.errors import FleetError
from core.fleet import export_fleet, import_fleet, validate_document
from tests.core.sample_fleet import sample_fleet


def _normalized(doc: dict[str, Any]) -> dict[str, Any]:
    """A document in export's shape: sorted sections, absent optionals dropped, times parsed."""
    out = json.loads(json.dumps(doc))
    for section in (
        "districts",
        "operators",
        "schools",
        "routes",
        "buses",
        "devices",
        "speed_zones",
    ):
        out[section] = sorted(out.get(section, []), key=lambda item: item["id"])
    for zone in out["speed_zones"]:
        for key in ("valid_from", "valid_to"):
            if zone[key] is not None:
                zone[key] = datetime.fromisoformat(zone[key])
    for bus in out["buses"]:
        bus["routes"] = sorted(bus["routes"])
    return out


def test_valid_document_has_no_problems() -> None:
    assert validate_document(sample_fleet()) == []


def test_round_trip(fresh_database_url: str) -> None:
    doc = sample_fleet("rt")
    summary = import_fleet(doc, database_url=fresh_database_url)
    assert summary.inserted["buses"] == 1
    assert summary.inserted["devices"] == 3
    assert summary.calendar_replaced
    assert _normalized(export_fleet(database_url=fresh_database_url)) == _normalized(doc)


def test_import_is_idempotent(fresh_database_url: str) -> None:
    doc = sample_fleet("idem")
    import_fleet(doc, database_url=fresh_database_url)
    before = export_fleet(database_url=fresh_database_url)
    again = import_fleet(doc, database_url=fresh_database_url)
    assert sum(again.inserted.values()) == 0
    assert again.updated["devices"] == 3
    assert export_fleet(database_url=fresh_database_url) == before


def _counts(url: str) -> dict[str, int]:
    tables = [
        "districts",
        "operators",
        "schools",
        "routes",
        "buses",
        "bus_routes",
        "devices",
        "speed_zones",
        "calendar_breaks",
        "calendar_overrides",
        "fleet_meta",
    ]
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _bus_routes(doc: dict[str, Any]) -> None:
    doc["buses"][0]["routes"].append("R99")


def _open_ring(doc: dict[str, Any]) -> None:
    doc["districts"][0]["area"]["coordinates"][0].pop()


def _duplicate_route(doc: dict[str, Any]) -> None:
    doc["routes"].append(dict(doc["routes"][0]))


def _gps_without_bus(doc: dict[str, Any]) -> None:
    del doc["devices"][0]["bus"]


def _typo(doc: dict[str, Any]) -> None:
    doc["devices"][1]["offline_afer_s"] = 60


def _both_days(doc: dict[str, Any]) -> None:
    doc["calendar"]["extra_days_off"].append("2026-12-26")


def _bowtie(doc: dict[str, Any]) -> None:
    doc["speed_zones"][0]["area"]["coordinates"] = [
        [[120.0, 31.0], [120.1, 31.1], [120.1, 31.0], [120.0, 31.1], [120.0, 31.0]]
    ]


REJECTIONS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("unknown route", _bus_routes, "buses[B1-x].routes: unknown route R99"),
    ("open ring", _open_ring, "districts[D01-x].area.coordinates[0]"),
    (
        "one-point route",
        _set(["routes", 0, "path", "coordinates"], [[120.7, 31.3]]),
        "routes[R1-x].path.coordinates: needs at least 2 positions",
    ),
    (
        "latitude out of range",
        _set(["schools", 0, "location"], [120.7, 95.0]),
        "schools[S001-x].location: [lon, lat] out of range",
    ),
    ("duplicate id", _duplicate_route, "routes[R1-x]: duplicate id"),
    ("bad device id", _set(["devices", 2, "id"], "BTN S001/1"), "devices[2].id: must match"),
    ("gps without bus", _gps_without_bus, "devices[GPS-B1-x].bus: required"),
    (
        "window backwards",
        _set(["buses", 0, "service_windows", 0, "end"], "06:00"),
        "buses[B1-x].service_windows[0]: start 06:30 must be before end 06:00",
    ),
    (
        "bad weekday",
        _set(["buses", 0, "service_windows", 1, "days"], [0, 8]),
        "buses[B1-x].service_windows[1].days",
    ),
    ("unknown zone", _set(["timezone"], "Mars/Olympus"), "timezone: unknown time zone"),
    (
        "time without offset",
        _set(["speed_zones", 1, "valid_from"], "2026-12-01T00:00:00"),
        "speed_zones[Z2-x].valid_from: must be RFC 3339 with an offset",
    ),
    ("typo key", _typo, "devices[SMK-S001-1-x].offline_afer_s: unknown key"),
    ("both school day and day off", _both_days, "2026-12-26 is both"),
    ("self-intersecting zone", _bowtie, "speed_zones[Z1-x].area: invalid polygon"),
    ("zero limit", _set(["speed_zones", 0, "limit_kmh"], 0), "speed_zones[Z1-x].limit_kmh"),
    ("unknown operator", _set(["buses", 0, "operator"], "OP9"), "unknown operator OP9"),
]


@pytest.mark.parametrize(
    ("label", "mutate", "expected"), REJECTIONS, ids=[r[0] for r in REJECTIONS]
)
def test_rejection_changes_nothing(
    fresh_database_url: str, label: str, mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    import_fleet(sample_fleet("x"), database_url=fresh_database_url)
    before_doc = export_fleet(database_url=fresh_database_url)
    before_counts = _counts(fresh_database_url)
    bad = sample_fleet("x")
    bad["buses"][0]["plate"] = "苏E·CHANGED"  # a valid change that must not land either
    mutate(bad)
    with pytest.raises(FleetError) as caught:
        import_fleet(bad, database_url=fresh_database_url)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems
    assert export_fleet(database_url=fresh_database_url) == before_doc
    assert _counts(fresh_database_url) == before_counts


def test_partial_document_may_reference_stored_ids(fresh_database_url: str) -> None:
    doc = sample_fleet("p")
    import_fleet(doc, database_url=fresh_database_url)
    extra = {"devices": [{"id": "GPS-EXTRA-p", "kind": "gps", "bus": "B1-p"}]}
    summary = import_fleet(extra, database_url=fresh_database_url)
    assert summary.inserted["devices"] == 1
    stored = export_fleet(database_url=fresh_database_url)
    assert {d["id"] for d in stored["devices"]} == {d["id"] for d in doc["devices"]} | {
        "GPS-EXTRA-p"
    }
    # The calendar is left alone when the document has none.
    assert stored["calendar"]["breaks"] == doc["calendar"]["breaks"]


def test_prune_removes_what_the_document_omits(fresh_database_url: str) -> None:
    import_fleet(sample_fleet("old"), database_url=fresh_database_url)
    import_fleet(sample_fleet("new"), database_url=fresh_database_url, prune=True)
    stored = export_fleet(database_url=fresh_database_url)
    for section in (
        "districts",
        "operators",
        "schools",
        "routes",
        "buses",
        "devices",
        "speed_zones",
    ):
        assert all(item["id"].endswith("-new") for item in stored[section]), section
    with psycopg.connect(fresh_database_url) as conn:
        retired = conn.execute(
            "SELECT count(*) FROM devices WHERE retired_at IS NOT NULL AND id LIKE '%-old'"
        ).fetchone()[0]
    assert retired == 3  # devices keep their ids for history


def test_prune_checks_references_against_the_document_only(fresh_database_url: str) -> None:
    import_fleet(sample_fleet("keep"), database_url=fresh_database_url)
    only_devices = {"devices": [{"id": "GPS-Z", "kind": "gps", "bus": "B1-keep"}]}
    with pytest.raises(FleetError, match=r"devices\[GPS-Z\]\.bus: unknown bus B1-keep"):
        import_fleet(only_devices, database_url=fresh_database_url, prune=True)


def test_cli_import(
    fresh_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ANXIAO_DATABASE_URL", fresh_database_url)
    good = tmp_path / "fleet.json"
    good.write_text(json.dumps(sample_fleet("cli"), ensure_ascii=False), encoding="utf-8")
    assert cli_main(["fleet", "import", str(good)]) == 0
    assert "buses: 1 new, 0 updated" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"buses": [', encoding="utf-8")
    assert cli_main(["fleet", "import", str(bad)]) == 1
    assert "not JSON" in capsys.readouterr().err
