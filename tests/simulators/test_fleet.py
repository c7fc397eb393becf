"""The fleet document: valid per contract §2, importable, and shaped like the city it describes."""

from __future__ import annotations

import math

import pytest
import shapely

from core.fleet import export_fleet, import_fleet, validate_document
from simulators import CitySpec, build_city, dump_fleet, fleet_document
from simulators._time import parse_rfc3339_ms

START_MS = parse_rfc3339_ms("2026-11-23T06:00:00+08:00")


def _doc(buses: int, schools: int, seed: int = 7, prefix: str = "") -> dict:
    spec = CitySpec(buses=buses, schools=schools, seed=seed, start_ms=START_MS,
                    end_ms=START_MS + 7_200_000, id_prefix=prefix)  # fmt: skip
    return fleet_document(build_city(spec))


@pytest.mark.parametrize(("buses", "schools"), [(0, 1), (5, 2), (120, 30), (600, 200)])
def test_document_is_valid(buses, schools):
    doc = _doc(buses, schools)
    assert validate_document(doc) == []
    assert len(doc["buses"]) == buses
    assert len(doc["schools"]) == schools
    assert len(doc["districts"]) == 16


def test_city_lies_in_suzhou_industrial_park():
    doc = _doc(120, 30)
    points = [s["location"] for s in doc["schools"]]
    points += [c for r in doc["routes"] for c in r["path"]["coordinates"]]
    for lon, lat in points:
        assert 120.6 <= lon <= 120.85 and 31.25 <= lat <= 31.40
    districts = shapely.union_all(
        [shapely.Polygon(d["area"]["coordinates"][0]) for d in doc["districts"]]
    )
    # The 16 districts tile the city: no gaps, no overlaps.
    total = sum(shapely.Polygon(d["area"]["coordinates"][0]).area for d in doc["districts"])
    assert math.isclose(districts.area, total, rel_tol=1e-6)
    assert math.isclose(districts.area, 0.25 * 0.15, rel_tol=1e-3)
    for school in doc["schools"]:
        district = next(d for d in doc["districts"] if d["id"] == school["district"])
        area = shapely.Polygon(district["area"]["coordinates"][0])
        assert area.buffer(1e-9).covers(shapely.Point(school["location"]))


def test_routes_run_from_a_depot_to_their_school():
    doc = _doc(40, 10)
    schools = {s["id"]: s["location"] for s in doc["schools"]}
    for route in doc["routes"]:
        end = route["path"]["coordinates"][-1]
        lon, lat = schools[route["school"]]
        # The gate is the intersection next to the school (about 30 m away).
        assert math.hypot((end[0] - lon) * 95_000, (end[1] - lat) * 111_000) < 60
        assert route["corridor_m"] in (100, 150)


def test_speed_zones_cover_every_kind():
    doc = _doc(20, 8)
    zones = doc["speed_zones"]
    limits = sorted({z["limit_kmh"] for z in zones})
    assert limits == [20, 30, 80]
    assert sum(1 for z in zones if z["limit_kmh"] == 30) == 8
    temporary = [z for z in zones if z["limit_kmh"] == 20]
    assert all(z["valid_from"] and z["valid_to"] for z in temporary)
    states = set()
    for z in temporary:
        a, b = parse_rfc3339_ms(z["valid_from"]), parse_rfc3339_ms(z["valid_to"])
        states.add("past" if b <= START_MS else "future" if a > START_MS + 7_200_000 else "now")
    assert states == {"past", "now", "future"}


def test_devices_and_windows():
    doc = _doc(10, 4)
    kinds = {d["kind"] for d in doc["devices"]}
    assert kinds == {"gps", "smoke", "button"}
    gps = [d for d in doc["devices"] if d["kind"] == "gps"]
    assert sorted(d["bus"] for d in gps) == sorted(b["id"] for b in doc["buses"])
    assert any("offline_after_s" in d for d in doc["devices"] if d["kind"] == "smoke")
    for bus in doc["buses"]:
        assert bus["plate"].startswith("苏E·")
        windows = bus["service_windows"]
        assert [w["days"] for w in windows] == ["school", "school"]
        assert all(w["start"] < w["end"] for w in windows)
    assert len({b["plate"] for b in doc["buses"]}) == len(doc["buses"])


def test_same_seed_same_bytes_other_seed_other_city():
    assert dump_fleet(_doc(50, 10, seed=3)) == dump_fleet(_doc(50, 10, seed=3))
    assert dump_fleet(_doc(50, 10, seed=3)) != dump_fleet(_doc(50, 10, seed=4))


def test_document_imports(fresh_database_url):
    doc = _doc(30, 6, prefix="simfleet-")
    summary = import_fleet(doc, database_url=fresh_database_url)
    assert summary.inserted["buses"] == 30
    assert summary.inserted["devices"] == len(doc["devices"])
    again = import_fleet(doc, database_url=fresh_database_url)
    assert sum(again.inserted.values()) == 0
    stored = export_fleet(database_url=fresh_database_url)
    assert [b["id"] for b in stored["buses"]] == sorted(b["id"] for b in doc["buses"])
    assert stored["calendar"]["breaks"] == doc["calendar"]["breaks"]
