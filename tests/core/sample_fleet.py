"""A small, valid fleet document for tests, with ids made unique per call."""

from __future__ import annotations

import copy
import secrets
from typing import Any


def _square(lon: float, lat: float, half_deg: float) -> dict[str, Any]:
    ring = [
        [lon - half_deg, lat - half_deg],
        [lon + half_deg, lat - half_deg],
        [lon + half_deg, lat + half_deg],
        [lon - half_deg, lat + half_deg],
        [lon - half_deg, lat - half_deg],
    ]
    return {"type": "Polygon", "coordinates": [ring]}


def sample_fleet(tag: str | None = None) -> dict[str, Any]:
    """A document whose every id carries ``tag`` (random by default)."""
    t = tag or secrets.token_hex(3)
    doc: dict[str, Any] = {
        "timezone": "Asia/Shanghai",
        "districts": [{"id": f"D01-{t}", "name": "片区一", "area": _square(120.72, 31.31, 0.05)}],
        "operators": [
            {
                "id": f"OP1-{t}",
                "name": "苏州园区校车服务有限公司",
                "email": "ops@example.cn",
                "webhook": "https://ops.example.cn/hook",
            },
            {"id": f"OP2-{t}", "name": "第二校车公司"},
        ],
        "schools": [
            {
                "id": f"S001-{t}",
                "name": "星海小学",
                "district": f"D01-{t}",
                "location": [120.72, 31.31],
            },
        ],
        "routes": [
            {
                "id": f"R1-{t}",
                "school": f"S001-{t}",
                "corridor_m": 100.0,
                "path": {
                    "type": "LineString",
                    "coordinates": [[120.70, 31.30], [120.71, 31.305], [120.72, 31.31]],
                },
            },
            {
                "id": f"R2-{t}",
                "school": f"S001-{t}",
                "corridor_m": 80.0,
                "path": {"type": "LineString", "coordinates": [[120.73, 31.32], [120.72, 31.31]]},
            },
        ],
        "buses": [
            {
                "id": f"B1-{t}",
                "plate": "苏E·X1234",
                "operator": f"OP1-{t}",
                "school": f"S001-{t}",
                "routes": [f"R1-{t}", f"R2-{t}"],
                "service_windows": [
                    {"days": "school", "start": "06:30", "end": "08:30"},
                    {"days": [1, 2, 3, 4, 5], "start": "15:30", "end": "17:30"},
                ],
            },
        ],
        "devices": [
            {"id": f"GPS-B1-{t}", "kind": "gps", "bus": f"B1-{t}"},
            {
                "id": f"SMK-S001-1-{t}",
                "kind": "smoke",
                "school": f"S001-{t}",
                "offline_after_s": 900,
            },
            {"id": f"BTN-S001-1-{t}", "kind": "button", "school": f"S001-{t}"},
        ],
        "speed_zones": [
            {
                "id": f"Z1-{t}",
                "limit_kmh": 30.0,
                "area": _square(120.72, 31.31, 0.005),
                "valid_from": None,
                "valid_to": None,
                "reason": "school zone",
            },
            {
                "id": f"Z2-{t}",
                "limit_kmh": 20.0,
                "area": _square(120.71, 31.305, 0.003),
                "valid_from": "2026-12-01T00:00:00+08:00",
                "valid_to": "2026-12-31T00:00:00+08:00",
                "reason": "道路施工",
            },
        ],
        "calendar": {
            "breaks": [{"start": "2027-01-23", "end": "2027-02-21", "name": "寒假"}],
            "extra_school_days": ["2026-12-26"],
            "extra_days_off": ["2026-12-25"],
        },
    }
    return copy.deepcopy(doc)
