"""Registry pieces the alerts tests build their fleets from."""

from __future__ import annotations

import datetime as dt

from core.registry import Device

REGISTERED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def gps_device(key: int, device_id: str, bus_id: str | None = None) -> Device:
    """A registered GPS device of ``bus_id``, no school or operator, offline after 300 s."""
    return Device(
        key=key,
        id=device_id,
        kind="gps",
        bus_id=bus_id,
        school_id=None,
        operator_id=None,
        district_id=None,
        offline_after_s=300,
        registered_at=REGISTERED,
        retired=False,
    )
