"""Alerts: rules as episode detectors, alert store, hazard ledger, notices, digests."""

from alerts.episodes import Episode, EpisodeDetector, EpisodeEvent, EpisodeState, Parking
from alerts.rules import (
    GPS_FAULT_BITS,
    KINDS,
    AlertEvent,
    ClockSkew,
    DeviceFault,
    DeviceOffline,
    FaultState,
    OfflineState,
    OutOfHours,
    PanicButton,
    PanicState,
    RouteDeviation,
    SmokeAlarm,
    Speeding,
    severity,
)

__all__ = [
    "GPS_FAULT_BITS",
    "KINDS",
    "AlertEvent",
    "ClockSkew",
    "DeviceFault",
    "DeviceOffline",
    "Episode",
    "EpisodeDetector",
    "EpisodeEvent",
    "EpisodeState",
    "FaultState",
    "OfflineState",
    "OutOfHours",
    "PanicButton",
    "PanicState",
    "Parking",
    "RouteDeviation",
    "SmokeAlarm",
    "Speeding",
    "severity",
]
