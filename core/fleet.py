"""The fleet document (contract §2): validation, import and export.

A document is validated as a whole before anything is written, and every
problem names its field and id (``buses[B7].routes: unknown route R99``).
References may point at ids already in the database (ids the document omits
are left alone) unless ``prune`` is set, in which case the document is the
whole truth. Import runs in one transaction and ends with
``NOTIFY anxiao_fleet`` so running services reload the registry.

Keys starting with ``x_`` are extensions and are ignored; any other unknown
key is a problem, so a typo (``offline_afer_s``) never passes silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
import shapely
from psycopg.types.json import Jsonb

from core.errors import FleetError, StoreError

__all__ = [
    "SECTIONS",
    "ImportSummary",
    "export_fleet",
    "import_fleet",
    "load_document",
    "validate_document",
]

#: Sections of the document that hold lists of objects with ids, in import order.
SECTIONS: Final = ("districts", "operators", "schools", "routes", "buses", "devices", "speed_zones")
_TOP_KEYS: Final = frozenset({"timezone", "calendar", *SECTIONS})
_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "districts": frozenset({"id", "name", "area"}),
    "operators": frozenset({"id", "name", "email", "webhook"}),
    "schools": frozenset({"id", "name", "district", "location"}),
    "routes": frozenset({"id", "school", "corridor_m", "path"}),
    "buses": frozenset({"id", "plate", "operator", "school", "routes", "service_windows"}),
    "devices": frozenset({"id", "kind", "bus", "school", "offline_after_s"}),
    "speed_zones": frozenset({"id", "limit_kmh", "area", "valid_from", "valid_to", "reason"}),
}
_TABLES: Final[Mapping[str, str]] = {s: s for s in SECTIONS}
_SINGULAR: Final[Mapping[str, str]] = {
    "districts": "district",
    "operators": "operator",
    "schools": "school",
    "routes": "route",
    "buses": "bus",
    "devices": "device",
    "speed_zones": "speed zone",
}
_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DEVICE_KINDS: Final = ("gps", "smoke", "button")
_DAY_KINDS: Final = ("school", "weekdays", "daily")


def load_document(path: Path) -> dict[str, Any]:
    """Read a fleet document from a JSON file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError([f"cannot read {path}: {exc.strerror}"]) from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FleetError([f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]) from exc
    if not isinstance(document, dict):
        raise FleetError(["the document must be a JSON object"])
    return document


# ------------------------------------------------------------------ validation
class _Problems:
    """Collects problems, each prefixed with the path of what it is about."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")


def validate_document(
    document: Mapping[str, Any], *, existing: Mapping[str, Iterable[str]] | None = None
) -> list[str]:
    """Return every problem of ``document``; an empty list means it may be imported.

    ``existing`` maps a section name to ids already stored that references may
    point at (none when pruning or when checking a document on its own).
    """
    p = _Problems()
    for key in document:
        if key not in _TOP_KEYS and not str(key).startswith("x_"):
            p.add(str(key), "unknown key")
    if "timezone" in document:
        tz = document["timezone"]
        if not isinstance(tz, str) or not _zone_ok(tz):
            p.add("timezone", f"unknown time zone {tz!r}")
    ids: dict[str, set[str]] = {}
    for section in SECTIONS:
        ids[section] = _section_ids(document, section, p)
    known = {s: ids[s] | set((existing or {}).get(s, ())) for s in SECTIONS}
    for section in SECTIONS:
        for where, item in _items(document, section):
            for key in item:
                if key not in _KEYS[section] and not str(key).startswith("x_"):
                    p.add(f"{where}.{key}", "unknown key")
            _CHECKS[section](where, item, known, p)
    if "calendar" in document:
        _check_calendar(document["calendar"], p)
    return p.items


def _zone_ok(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _section_ids(document: Mapping[str, Any], section: str, p: _Problems) -> set[str]:
    value = document.get(section, [])
    if not isinstance(value, list):
        p.add(section, "must be a list")
        return set()
    seen: set[str] = set()
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            p.add(f"{section}[{index}]", "must be an object")
            continue
        ident = item.get("id")
        if not isinstance(ident, str) or not _ID.match(ident):
            p.add(f"{section}[{index}].id", f"must match [A-Za-z0-9_.-]{{1,64}}, got {ident!r}")
        elif ident in seen:
            p.add(f"{section}[{ident}]", "duplicate id")
        else:
            seen.add(ident)
    return seen


def _items(document: Mapping[str, Any], section: str) -> Iterable[tuple[str, dict[str, Any]]]:
    value = document.get(section, [])
    if not isinstance(value, list):
        return
    for index, item in enumerate(value):
        if isinstance(item, dict):
            ident = item.get("id")
            label = ident if isinstance(ident, str) and ident else str(index)
            yield f"{section}[{label}]", item


def _text(where: str, item: Mapping[str, Any], key: str, p: _Problems, *, required: bool) -> None:
    value = item.get(key)
    if value is None:
        if required:
            p.add(f"{where}.{key}", "required")
    elif not isinstance(value, str) or not value.strip():
        p.add(f"{where}.{key}", "must be a non-empty string")


def _ref(
    where: str,
    item: Mapping[str, Any],
    key: str,
    target: str,
    known: Mapping[str, set[str]],
    p: _Problems,
    *,
    required: bool,
) -> None:
    value = item.get(key)
    if value is None:
        if required:
            p.add(f"{where}.{key}", "required")
    elif not isinstance(value, str) or value not in known[target]:
        p.add(f"{where}.{key}", f"unknown {_SINGULAR[target]} {value}")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _position_problem(pos: object) -> str | None:
    if not isinstance(pos, list | tuple) or len(pos) < 2 or not all(_number(c) for c in pos[:2]):
        return f"position must be [lon, lat], got {pos!r}"
    lon, lat = float(pos[0]), float(pos[1])
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        return f"[lon, lat] out of range: {[lon, lat]}"
    return None


def _check_positions(where: str, positions: object, minimum: int, p: _Problems) -> bool:
    if not isinstance(positions, list) or len(positions) < minimum:
        p.add(where, f"needs at least {minimum} positions")
        return False
    ok = True
    for i, pos in enumerate(positions):
        problem = _position_problem(pos)
        if problem:
            p.add(f"{where}[{i}]", problem)
            ok = False
    return ok


def _check_area(where: str, area: object, p: _Problems, *, required: bool) -> None:
    if area is None:
        if required:
            p.add(where, "required")
        return
    if not isinstance(area, dict) or area.get("type") not in ("Polygon", "MultiPolygon"):
        p.add(where, "must be a GeoJSON Polygon or MultiPolygon")
        return
    coords = area.get("coordinates")
    polygons = [coords] if area["type"] == "Polygon" else coords
    if not isinstance(polygons, list) or not polygons:
        p.add(f"{where}.coordinates", "must be a non-empty list")
        return
    ok = True
    for pi, rings in enumerate(polygons):
        if not isinstance(rings, list) or not rings:
            p.add(f"{where}.coordinates", "a polygon needs at least one ring")
            ok = False
            continue
        for ri, ring in enumerate(rings):
            label = f"{where}.coordinates" + (f"[{pi}]" if area["type"] == "MultiPolygon" else "")
            if not _check_positions(f"{label}[{ri}]", ring, 4, p):
                ok = False
            elif list(ring[0][:2]) != list(ring[-1][:2]):
                p.add(f"{label}[{ri}]", "ring is not closed (first position != last)")
                ok = False
    if ok:
        geometry = shapely.from_geojson(json.dumps(area))
        if not geometry.is_valid:
            p.add(where, f"invalid polygon: {shapely.is_valid_reason(geometry)}")


def _check_time(where: str, value: object, p: _Problems) -> datetime | None:
    if value is None:
        return None
    parsed = parse_rfc3339(value)
    if parsed is None:
        p.add(where, f"must be RFC 3339 with an offset or null, got {value!r}")
    return parsed


def parse_rfc3339(value: object) -> datetime | None:
    """Parse an RFC 3339 time that carries an offset; None when it is not one."""
    if not isinstance(value, str) or "T" not in value.upper():
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _check_district(where: str, d: Mapping[str, Any], known: Any, p: _Problems) -> None:
    _text(where, d, "name", p, required=True)
    _check_area(f"{where}.area", d.get("area"), p, required=False)


def _check_operator(where: str, o: Mapping[str, Any], known: Any, p: _Problems) -> None:
    _text(where, o, "name", p, required=True)
    email = o.get("email")
    if email is not None and (not isinstance(email, str) or not _EMAIL.match(email)):
        p.add(f"{where}.email", f"not an e-mail address: {email!r}")
    hook = o.get("webhook")
    if hook is not None and (not isinstance(hook, str) or not re.match(r"^https?://\S+$", hook)):
        p.add(f"{where}.webhook", f"must be an http(s) URL, got {hook!r}")


def _check_school(where: str, s: Mapping[str, Any], known: Any, p: _Problems) -> None:
    _text(where, s, "name", p, required=True)
    _ref(where, s, "district", "districts", known, p, required=False)
    if s.get("location") is not None:
        problem = _position_problem(s["location"])
        if problem:
            p.add(f"{where}.location", problem)


def _check_route(where: str, r: Mapping[str, Any], known: Any, p: _Problems) -> None:
    _ref(where, r, "school", "schools", known, p, required=False)
    corridor: Any = r.get("corridor_m", 100)
    if not _number(corridor) or corridor <= 0:
        p.add(f"{where}.corridor_m", f"must be a number of metres > 0, got {corridor!r}")
    path = r.get("path")
    if not isinstance(path, dict) or path.get("type") != "LineString":
        p.add(f"{where}.path", "must be a GeoJSON LineString")
    else:
        _check_positions(f"{where}.path.coordinates", path.get("coordinates"), 2, p)


def _check_windows(where: str, windows: object, p: _Problems) -> None:
    if not isinstance(windows, list):
        p.add(where, "must be a list")
        return
    for i, w in enumerate(windows):
        at = f"{where}[{i}]"
        if not isinstance(w, dict):
            p.add(at, "must be an object")
            continue
        days = w.get("days")
        if isinstance(days, list):
            if not days or not all(isinstance(d, int) and 1 <= d <= 7 for d in days):
                p.add(f"{at}.days", f"ISO weekday numbers 1..7 expected, got {days!r}")
        elif days not in _DAY_KINDS:
            p.add(f"{at}.days", f"must be school, weekdays, daily or a list of 1..7, got {days!r}")
        start, end = w.get("start"), w.get("end")
        for key, value in (("start", start), ("end", end)):
            if not isinstance(value, str) or not _HHMM.match(value):
                p.add(f"{at}.{key}", f"must be HH:MM local time, got {value!r}")
        if isinstance(start, str) and isinstance(end, str) and start >= end and _HHMM.match(start):
            p.add(at, f"start {start} must be before end {end} (windows do not cross midnight)")


def _check_bus(where: str, b: Mapping[str, Any], known: Any, p: _Problems) -> None:
    _text(where, b, "plate", p, required=True)
    _ref(where, b, "operator", "operators", known, p, required=False)
    _ref(where, b, "school", "schools", known, p, required=False)
    routes = b.get("routes", [])
    if not isinstance(routes, list):
        p.add(f"{where}.routes", "must be a list of route ids")
    else:
        for r in routes:
            if not isinstance(r, str) or r not in known["routes"]:
                p.add(f"{where}.routes", f"unknown route {r}")
    _check_windows(f"{where}.service_windows", b.get("service_windows", []), p)


def _check_device(where: str, d: Mapping[str, Any], known: Any, p: _Problems) -> None:
    kind = d.get("kind")
    if kind not in _DEVICE_KINDS:
        p.add(f"{where}.kind", f"must be gps, smoke or button, got {kind!r}")
    _ref(where, d, "bus", "buses", known, p, required=kind == "gps")
    _ref(where, d, "school", "schools", known, p, required=kind in ("smoke", "button"))
    after = d.get("offline_after_s")
    if after is not None and (not isinstance(after, int) or isinstance(after, bool) or after <= 0):
        p.add(f"{where}.offline_after_s", f"must be a whole number of seconds > 0, got {after!r}")


def _check_zone(where: str, z: Mapping[str, Any], known: Any, p: _Problems) -> None:
    limit: Any = z.get("limit_kmh")
    if not _number(limit) or limit <= 0:
        p.add(f"{where}.limit_kmh", f"must be a speed in km/h > 0, got {limit!r}")
    _check_area(f"{where}.area", z.get("area"), p, required=True)
    start = _check_time(f"{where}.valid_from", z.get("valid_from"), p)
    end = _check_time(f"{where}.valid_to", z.get("valid_to"), p)
    if start is not None and end is not None and start >= end:
        p.add(where, "valid_from must be before valid_to")
    if z.get("reason") is not None and not isinstance(z["reason"], str):
        p.add(f"{where}.reason", "must be a string")


_CHECKS: Final = {
    "districts": _check_district,
    "operators": _check_operator,
    "schools": _check_school,
    "routes": _check_route,
    "buses": _check_bus,
    "devices": _check_device,
    "speed_zones": _check_zone,
}


def _parse_date(value: object) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _check_calendar(calendar: object, p: _Problems) -> None:
    if not isinstance(calendar, dict):
        p.add("calendar", "must be an object")
        return
    for key in calendar:
        if key not in ("breaks", "extra_school_days", "extra_days_off") and not key.startswith(
            "x_"
        ):
            p.add(f"calendar.{key}", "unknown key")
    breaks = calendar.get("breaks", [])
    if not isinstance(breaks, list):
        p.add("calendar.breaks", "must be a list")
        breaks = []
    for i, b in enumerate(breaks):
        at = f"calendar.breaks[{i}]"
        if not isinstance(b, dict):
            p.add(at, "must be an object")
            continue
        start, end = _parse_date(b.get("start")), _parse_date(b.get("end"))
        if start is None:
            p.add(f"{at}.start", f"must be a date YYYY-MM-DD, got {b.get('start')!r}")
        if end is None:
            p.add(f"{at}.end", f"must be a date YYYY-MM-DD, got {b.get('end')!r}")
        if start and end and start > end:
            p.add(at, f"start {start} is after end {end}")
    days: dict[str, set[date]] = {}
    for key in ("extra_school_days", "extra_days_off"):
        values = calendar.get(key, [])
        days[key] = set()
        if not isinstance(values, list):
            p.add(f"calendar.{key}", "must be a list of dates")
            continue
        for v in values:
            parsed = _parse_date(v)
            if parsed is None:
                p.add(f"calendar.{key}", f"not a date YYYY-MM-DD: {v!r}")
            else:
                days[key].add(parsed)
    for both in sorted(days.get("extra_school_days", set()) & days.get("extra_days_off", set())):
        p.add("calendar", f"{both} is both an extra school day and an extra day off")


# ---------------------------------------------------------------------- import
@dataclass
class ImportSummary:
    """What an import changed, per section."""

    inserted: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    pruned: dict[str, int] = field(default_factory=dict)
    calendar_replaced: bool = False

    def describe(self) -> str:
        """One line per section, for the CLI."""
        lines = []
        for section in SECTIONS:
            ins, upd = self.inserted.get(section, 0), self.updated.get(section, 0)
            pruned = self.pruned.get(section, 0)
            if ins or upd or pruned:
                verb = "retired" if section == "devices" else "pruned"
                lines.append(f"{section}: {ins} new, {upd} updated, {pruned} {verb}")
        if self.calendar_replaced:
            lines.append("calendar: replaced")
        return "\n".join(lines) or "nothing to import"


_Conn = psycopg.Connection[tuple[Any, ...]]


def import_fleet(
    document: Mapping[str, Any], *, database_url: str, prune: bool = False
) -> ImportSummary:
    """Validate and upsert ``document`` in one transaction; raise FleetError if invalid."""
    try:
        with psycopg.connect(database_url) as conn, conn.transaction():
            # One import at a time; readers are not blocked.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('anxiao_fleet_import'))")
            existing = {s: _stored_ids(conn, s) for s in SECTIONS}
            problems = validate_document(document, existing=None if prune else existing)
            if problems:
                raise FleetError(problems)
            summary = _write(conn, document, existing, prune=prune)
            conn.execute("NOTIFY anxiao_fleet")
            return summary
    except psycopg.OperationalError as exc:
        raise StoreError(f"cannot reach the database: {exc}") from exc


def _stored_ids(conn: _Conn, section: str) -> set[str]:
    sql = f"SELECT id FROM {_TABLES[section]}"
    if section == "devices":
        sql += " WHERE retired_at IS NULL"
    return {row[0] for row in conn.execute(sql)}


def _geo(value: object) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def _write(
    conn: _Conn, document: Mapping[str, Any], existing: Mapping[str, set[str]], *, prune: bool
) -> ImportSummary:
    summary = ImportSummary()
    if "timezone" in document:
        conn.execute(
            "INSERT INTO fleet_meta (timezone) VALUES (%s) ON CONFLICT (singleton)"
            " DO UPDATE SET timezone = EXCLUDED.timezone, imported_at = now()",
            (document["timezone"],),
        )
    rows = {s: [item for _, item in _items(document, s)] for s in SECTIONS}
    for section in SECTIONS:
        ids = {item["id"] for item in rows[section]}
        summary.inserted[section] = len(ids - existing[section])
        summary.updated[section] = len(ids & existing[section])
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO districts (id, name, area) VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE"
            " SET name = EXCLUDED.name, area = EXCLUDED.area, updated_at = now()",
            [(d["id"], d["name"], _geo(d.get("area"))) for d in rows["districts"]],
        )
        cur.executemany(
            "INSERT INTO operators (id, name, email, webhook) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email,"
            " webhook = EXCLUDED.webhook, updated_at = now()",
            [(o["id"], o["name"], o.get("email"), o.get("webhook")) for o in rows["operators"]],
        )
        cur.executemany(
            "INSERT INTO schools (id, name, district_id, lon, lat) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name,"
            " district_id = EXCLUDED.district_id, lon = EXCLUDED.lon, lat = EXCLUDED.lat,"
            " updated_at = now()",
            [
                (s["id"], s["name"], s.get("district"), *(s.get("location") or (None, None))[:2])
                for s in rows["schools"]
            ],
        )
        cur.executemany(
            "INSERT INTO routes (id, school_id, corridor_m, path) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET school_id = EXCLUDED.school_id,"
            " corridor_m = EXCLUDED.corridor_m, path = EXCLUDED.path, updated_at = now()",
            [
                (r["id"], r.get("school"), float(r.get("corridor_m", 100)), Jsonb(r["path"]))
                for r in rows["routes"]
            ],
        )
        cur.executemany(
            "INSERT INTO buses (id, plate, operator_id, school_id, service_windows)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET plate = EXCLUDED.plate,"
            " operator_id = EXCLUDED.operator_id, school_id = EXCLUDED.school_id,"
            " service_windows = EXCLUDED.service_windows, updated_at = now()",
            [
                (
                    b["id"],
                    b["plate"],
                    b.get("operator"),
                    b.get("school"),
                    Jsonb(b.get("service_windows", [])),
                )
                for b in rows["buses"]
            ],
        )
        cur.execute(
            "DELETE FROM bus_routes WHERE bus_id = ANY(%s)", ([b["id"] for b in rows["buses"]],)
        )
        cur.executemany(
            "INSERT INTO bus_routes (bus_id, route_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            [(b["id"], r) for b in rows["buses"] for r in b.get("routes", [])],
        )
        cur.executemany(
            "INSERT INTO devices (id, kind, bus_id, school_id, offline_after_s)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind,"
            " bus_id = EXCLUDED.bus_id, school_id = EXCLUDED.school_id,"
            " offline_after_s = EXCLUDED.offline_after_s, retired_at = NULL, updated_at = now()",
            [
                (d["id"], d["kind"], d.get("bus"), d.get("school"), d.get("offline_after_s"))
                for d in rows["devices"]
            ],
        )
        cur.executemany(
            "INSERT INTO speed_zones (id, limit_kmh, area, valid_from, valid_to, reason)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET"
            " limit_kmh = EXCLUDED.limit_kmh, area = EXCLUDED.area,"
            " valid_from = EXCLUDED.valid_from, valid_to = EXCLUDED.valid_to,"
            " reason = EXCLUDED.reason, updated_at = now()",
            [
                (
                    z["id"],
                    float(z["limit_kmh"]),
                    Jsonb(z["area"]),
                    parse_rfc3339(z.get("valid_from")),
                    parse_rfc3339(z.get("valid_to")),
                    z.get("reason"),
                )
                for z in rows["speed_zones"]
            ],
        )
    if "calendar" in document:
        _replace_calendar(conn, document["calendar"])
        summary.calendar_replaced = True
    if prune:
        for section in reversed(SECTIONS):
            keep = [item["id"] for item in rows[section]]
            if section == "devices":
                cur2 = conn.execute(
                    "UPDATE devices SET retired_at = now(), updated_at = now()"
                    " WHERE retired_at IS NULL AND NOT (id = ANY(%s))",
                    (keep,),
                )
            else:
                cur2 = conn.execute(
                    f"DELETE FROM {_TABLES[section]} WHERE NOT (id = ANY(%s))",
                    (keep,),
                )
            summary.pruned[section] = cur2.rowcount
    return summary


def _replace_calendar(conn: _Conn, calendar: Mapping[str, Any]) -> None:
    conn.execute("DELETE FROM calendar_breaks")
    conn.execute("DELETE FROM calendar_overrides")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO calendar_breaks (start_date, end_date, name) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            [
                (date.fromisoformat(b["start"]), date.fromisoformat(b["end"]), b.get("name", ""))
                for b in calendar.get("breaks", [])
            ],
        )
        cur.executemany(
            "INSERT INTO calendar_overrides (day, kind) VALUES (%s, %s)",
            [(date.fromisoformat(d), "school_day") for d in calendar.get("extra_school_days", [])]
            + [(date.fromisoformat(d), "day_off") for d in calendar.get("extra_days_off", [])],
        )


# ---------------------------------------------------------------------- export
def export_fleet(*, database_url: str) -> dict[str, Any]:
    """The stored reference data as a fleet document (active devices only)."""
    with psycopg.connect(database_url) as conn:
        meta = conn.execute("SELECT timezone FROM fleet_meta").fetchone()
        doc: dict[str, Any] = {"timezone": meta[0] if meta else "Asia/Shanghai"}
        doc["districts"] = [
            _drop_none({"id": i, "name": n, "area": a})
            for i, n, a in conn.execute("SELECT id, name, area FROM districts ORDER BY id")
        ]
        doc["operators"] = [
            _drop_none({"id": i, "name": n, "email": e, "webhook": w})
            for i, n, e, w in conn.execute(
                "SELECT id, name, email, webhook FROM operators ORDER BY id"
            )
        ]
        doc["schools"] = [
            _drop_none(
                {"id": i, "name": n, "district": d, "location": None if lon is None else [lon, lat]}
            )
            for i, n, d, lon, lat in conn.execute(
                "SELECT id, name, district_id, lon, lat FROM schools ORDER BY id"
            )
        ]
        doc["routes"] = [
            _drop_none({"id": i, "school": s, "corridor_m": c, "path": path})
            for i, s, c, path in conn.execute(
                "SELECT id, school_id, corridor_m, path FROM routes ORDER BY id"
            )
        ]
        doc["buses"] = [
            _drop_none(
                {
                    "id": i,
                    "plate": pl,
                    "operator": o,
                    "school": s,
                    "routes": list(r),
                    "service_windows": w,
                }
            )
            for i, pl, o, s, r, w in conn.execute(
                "SELECT b.id, b.plate, b.operator_id, b.school_id,"
                " coalesce(array_agg(br.route_id ORDER BY br.route_id)"
                "   FILTER (WHERE br.route_id IS NOT NULL), '{}'), b.service_windows"
                " FROM buses b LEFT JOIN bus_routes br ON br.bus_id = b.id"
                " GROUP BY b.id ORDER BY b.id"
            )
        ]
        doc["devices"] = [
            _drop_none({"id": i, "kind": k, "bus": b, "school": s, "offline_after_s": o})
            for i, k, b, s, o in conn.execute(
                "SELECT id, kind, bus_id, school_id, offline_after_s FROM devices"
                " WHERE retired_at IS NULL ORDER BY id"
            )
        ]
        doc["speed_zones"] = [
            {
                "id": i,
                "limit_kmh": lim,
                "area": a,
                "valid_from": None if f is None else f.isoformat(),
                "valid_to": None if t is None else t.isoformat(),
                **({"reason": r} if r is not None else {}),
            }
            for i, lim, a, f, t, r in conn.execute(
                "SELECT id, limit_kmh, area, valid_from, valid_to, reason"
                " FROM speed_zones ORDER BY id"
            )
        ]
        doc["calendar"] = {
            "breaks": [
                {"start": s.isoformat(), "end": e.isoformat(), "name": n}
                for s, e, n in conn.execute(
                    "SELECT start_date, end_date, name FROM calendar_breaks ORDER BY start_date"
                )
            ],
            "extra_school_days": [
                d.isoformat()
                for (d,) in conn.execute(
                    "SELECT day FROM calendar_overrides WHERE kind = 'school_day' ORDER BY day"
                )
            ],
            "extra_days_off": [
                d.isoformat()
                for (d,) in conn.execute(
                    "SELECT day FROM calendar_overrides WHERE kind = 'day_off' ORDER BY day"
                )
            ],
        }
    return doc


def _drop_none(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if v is not None}
