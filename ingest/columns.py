"""Column arrays of one committed batch, and the rules hook that receives them.

This is the hand-off from ingest to the alerts engine (architecture: "columns,
not objects, on the hot path"). After every commit, ingest calls the rules
hook once with an :class:`IngestBatch`: per channel, a few NumPy arrays of
equal length, one element per stored reading.

Conventions shared by every column set:

* rows are sorted by ``(device_key, ts_ms)`` -- per-device event-time order,
  so a rule can split a channel by device with ``np.unique(device_key,
  return_index=True)`` and walk each device's readings in order;
* ``device_key`` is ``devices.key`` (int32), never the text id;
* ``ts_ms`` is the device's event time, ``received_ms`` the service's receive
  time, both int64 milliseconds since the Unix epoch (UTC);
* an optional number the device did not send is NaN (floats) or -1 (integers);
* ``new`` is False for a reading that was already stored (a redelivered
  duplicate); the hook sees it again, flagged, so that state rebuilt after a
  crash can still be checked against it, but it must not raise an alert twice.

A reading is handed to the hook after it is committed; if the process dies
between the commit and the hook, the hook never sees it (its redelivery is
flagged ``new=False``). The alerts engine rebuilds its state from the database
after a restart (architecture decision 5), which covers that window.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol, Self

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BUTTON_EVENTS",
    "SMOKE_STATES",
    "ButtonColumns",
    "GpsColumns",
    "HeartbeatColumns",
    "IngestBatch",
    "RulesHook",
    "SmokeColumns",
    "no_rules",
]

#: Values of a smoke detector's ``state`` (contract §1).
SMOKE_STATES = ("normal", "alarm", "fault", "test")
#: Values of a one-button alarm's ``event`` (contract §1).
BUTTON_EVENTS = ("press", "reset", "tamper", "fault", "restore", "test")

Int32 = NDArray[np.int32]
Int64 = NDArray[np.int64]
Float32 = NDArray[np.float32]
Float64 = NDArray[np.float64]
Bool = NDArray[np.bool_]
Text = NDArray[np.str_]


class _Columns:
    """Shared behaviour of the column sets (all fields are equal-length arrays)."""

    device_key: Int32
    ts_ms: Int64
    received_ms: Int64

    def __len__(self) -> int:
        return int(self.device_key.shape[0])

    def select(self, rows: Bool | Int64) -> Self:
        """A column set of the chosen rows (a boolean mask or row indices)."""
        chosen = {f.name: getattr(self, f.name)[rows] for f in fields(self)}  # type: ignore[arg-type]
        return type(self)(**chosen)

    @classmethod
    def empty(cls) -> Self:
        """A column set with no rows and the right dtypes."""
        return cls(**{f.name: np.empty(0, dtype=_DTYPES[f.name]) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, eq=False)
class GpsColumns(_Columns):
    """GPS fixes (table ``gps_fixes``)."""

    device_key: Int32
    ts_ms: Int64
    received_ms: Int64
    lat: Float64
    lon: Float64
    #: km/h; NaN when the device sent none (derive it from consecutive fixes).
    speed_kmh: Float32
    heading_deg: Float32
    alt_m: Float32
    #: Satellites in use; -1 when not sent.
    sats: NDArray[np.int16]
    hdop: Float32
    #: Per-device counter (wraps at 2**32); -1 when not sent.
    seq: Int64
    #: JT/T 808 alarm DWORD; -1 when not sent.
    alarm: Int64
    #: JT/T 808 status DWORD; -1 when not sent.
    status: Int64
    #: True for blind-area data sent late (``"backfill": true`` batches).
    backfill: Bool
    new: Bool


@dataclass(frozen=True, slots=True, eq=False)
class HeartbeatColumns(_Columns):
    """Heartbeats (table ``heartbeats``): the device says it is alive."""

    device_key: Int32
    ts_ms: Int64
    received_ms: Int64
    #: 0..100; NaN when not sent.
    battery_pct: Float32
    #: NaN when not sent.
    rssi_dbm: Float32
    new: Bool


@dataclass(frozen=True, slots=True, eq=False)
class SmokeColumns(_Columns):
    """Smoke detector readings (table ``sensor_events``, channel ``smoke``)."""

    device_key: Int32
    ts_ms: Int64
    received_ms: Int64
    #: One of :data:`SMOKE_STATES`.
    state: Text
    #: %/m; NaN when not sent.
    obscuration: Float32
    battery_pct: Float32
    new: Bool


@dataclass(frozen=True, slots=True, eq=False)
class ButtonColumns(_Columns):
    """One-button alarm events (table ``sensor_events``, channel ``button``)."""

    device_key: Int32
    ts_ms: Int64
    received_ms: Int64
    #: One of :data:`BUTTON_EVENTS`.
    event: Text
    new: Bool


_DTYPES: dict[str, type[np.generic] | str] = {
    "device_key": np.int32,
    "ts_ms": np.int64,
    "received_ms": np.int64,
    "lat": np.float64,
    "lon": np.float64,
    "speed_kmh": np.float32,
    "heading_deg": np.float32,
    "alt_m": np.float32,
    "sats": np.int16,
    "hdop": np.float32,
    "seq": np.int64,
    "alarm": np.int64,
    "status": np.int64,
    "backfill": np.bool_,
    "new": np.bool_,
    "battery_pct": np.float32,
    "rssi_dbm": np.float32,
    "state": "<U7",
    "event": "<U7",
    "obscuration": np.float32,
}


@dataclass(frozen=True, slots=True)
class IngestBatch:
    """Everything one transaction stored, per channel, handed to the rules hook."""

    gps: GpsColumns
    heartbeat: HeartbeatColumns
    smoke: SmokeColumns
    button: ButtonColumns
    #: Wall-clock time of the commit, epoch milliseconds.
    committed_ms: int
    #: Messages in the batch, stored or not (dead letters are not handed over).
    messages: int
    dead_letters: int

    @property
    def readings(self) -> int:
        """Readings handed over (duplicates included)."""
        return len(self.gps) + len(self.heartbeat) + len(self.smoke) + len(self.button)

    @classmethod
    def empty(cls, *, committed_ms: int = 0) -> IngestBatch:
        """A batch without rows (for tests and replays)."""
        return cls(
            gps=GpsColumns.empty(),
            heartbeat=HeartbeatColumns.empty(),
            smoke=SmokeColumns.empty(),
            button=ButtonColumns.empty(),
            committed_ms=committed_ms,
            messages=0,
            dead_letters=0,
        )


class RulesHook(Protocol):
    """Called once per committed batch, in commit order, on ingest's event loop.

    The call is awaited before the next batch is handed over, so a slow hook
    slows ingest (backpressure) rather than piling batches up in memory. An
    exception is logged and counted (``anxiao_ingest_hook_errors_total``);
    the readings are stored and acknowledged regardless.
    """

    async def __call__(self, batch: IngestBatch, /) -> None:
        """Run the rules over one committed batch."""


async def no_rules(batch: IngestBatch, /) -> None:
    """Do nothing: the default hook until the alerts engine plugs in."""
