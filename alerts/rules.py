"""The eight alert rules of contract §3, as thin layers over :mod:`alerts.episodes`.

Every rule is a frozen, keyword-only dataclass holding its thresholds (the
contract defaults, units in the names). Its methods take one device's
readings as NumPy arrays plus the masks and values the engine computed with
the geofence kernels (speed limit per fix, distance to the nearest assigned
route and whether the fix is within a corridor, service-window and
school-day masks, filing coverage), so nothing here touches geometry, the
database or MQTT. Each method mutates the device's state for that rule and
returns :class:`AlertEvent` values, which the engine stores: ``open`` inserts
the alert row, ``update`` refines it (a late reading, growing details),
``close`` clears it. An event names its episode by ``(kind, source,
number)``, unique per device.

Rules, their per-device state and their calls:

* :class:`Speeding`, :class:`EpisodeState`: ``feed``, ``feed_many``, ``advance``;
* :class:`RouteDeviation`, :class:`EpisodeState`: ``feed``, ``feed_many``,
  ``advance(window_end_ms=)``;
* :class:`OutOfHours`, :class:`EpisodeState`: ``feed``, ``feed_many``,
  ``advance(window_start_ms=)``;
* :class:`DeviceOffline`, :class:`OfflineState`: ``feed(heard_ms=)``, ``feed_many``,
  ``advance``;
* :class:`SmokeAlarm`, :class:`EpisodeState`: ``feed``, ``advance``;
* :class:`PanicButton`, :class:`PanicState`: ``feed_button``, ``feed_gps``,
  ``feed_gps_many``, ``advance``, ``resolve``;
* :class:`DeviceFault`, :class:`FaultState`: ``feed_smoke``, ``feed_button``, ``feed_gps``,
  ``feed_gps_many``, ``advance``;
* :class:`ClockSkew`, :class:`EpisodeState`: ``feed(live_clock=)``, ``feed_many``,
  ``advance``.

``feed`` takes one device's batch; ``feed_many(states, device=...)`` takes a
whole ingest batch of many devices (``device[i]`` indexes ``states``) and
returns ``{device index: events}``; it gives exactly the events of one
``feed`` per device, but a device with nothing under way costs microseconds.
Times are int64 epoch milliseconds (UTC). ``advance`` takes the device
watermark (see :meth:`alerts.episodes.EpisodeDetector.advance`): under the
event clock the newest event time seen minus the lateness; it lets
duration-based decisions become final and closes episodes without new
readings. Per committed ingest batch of GPS fixes, the engine calls::

    by_dev = speeding.feed_many(st.speeding, device=dev, ts_ms=ts, speed_kmh=v,
                                limit_kmh=limit, lon_deg=lon, lat_deg=lat, backfill=bf)
    by_dev = deviation.feed_many(st.deviation, device=dev, ts_ms=ts, distance_m=d,
                                 within_corridor=inside, route_index=ri, route_ids=ids,
                                 in_service_window=win, school_day=school,
                                 filing_covers=detour, lon_deg=lon, lat_deg=lat)
    by_dev = out_of_hours.feed_many(st.ooh, device=dev, ts_ms=ts, speed_kmh=v,
                                    in_service_window=win, school_day=school,
                                    filing_covers=moving_filed, lon_deg=lon, lat_deg=lat)
    by_dev = panic.feed_gps_many(st.panic, device=dev, ts_ms=ts, alarm=alarm)
    by_dev = fault.feed_gps_many(st.fault, device=dev, ts_ms=ts, alarm=alarm)
    by_dev = skew.feed_many(st.skew, device=dev, ts_ms=ts, received_ms=rx, live_clock=live)
    by_dev = offline.feed_many(st.offline, device=dev, heard_ms=ts)  # every channel

(smoke and button events, rare, go through the per-device ``feed`` calls),
then on every clock tick, for each device with something under way or
buffered, ``advance(state, watermark_ms=...)`` (``window_end_ms`` /
``window_start_ms`` when a service window ended or began), and
``panic.resolve(state)`` when a person resolves a panic alert. States are
rebuilt from ``to_dict()`` JSON after a restart.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from alerts import _fleet as kn
from alerts._offline import by_device_then_time, heard_fast
from alerts.episodes import (
    Action,
    Episode,
    EpisodeDetector,
    EpisodeEvent,
    EpisodeState,
    Parking,
    grow_rows,
)
from alerts.fleet import ACTIONS, NO_TS, FleetEpisodes, FleetEvents

__all__ = [
    "GPS_FAULT_BITS",
    "KINDS",
    "AlertEvent",
    "ClockSkew",
    "DeviceFault",
    "DeviceOffline",
    "FaultState",
    "FleetAlerts",
    "OfflineBook",
    "OfflineState",
    "OutOfHours",
    "PanicButton",
    "PanicState",
    "RouteDeviation",
    "SmokeAlarm",
    "Speeding",
    "ended_ms",
    "round_rows",
    "severity",
]

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_BOOL = npt.NDArray[np.bool_]

#: Alert kinds of contract §3 with their severity.
KINDS: Final[dict[str, str]] = {
    "speeding": "major",
    "route_deviation": "major",
    "out_of_hours": "major",
    "device_offline": "minor",
    "smoke_alarm": "critical",
    "panic_button": "critical",
    "device_fault": "minor",
    "clock_skew": "minor",
}

#: JT/T 808 alarm DWORD bits that are device faults, with the ``fault`` name each raises.
GPS_FAULT_BITS: Final[dict[int, str]] = {
    4: "gnss_fault",
    5: "gnss_antenna_cut",
    6: "gnss_antenna_short",
    7: "undervoltage",
    8: "power_off",
}
_EMERGENCY_BIT: Final = 0


def severity(kind: str, device_kind: str | None = None) -> str:
    """Severity of an alert kind; ``device_offline`` is major for a ``button`` device."""
    if kind == "device_offline" and device_kind == "button":
        return "major"
    return KINDS[kind]


class AlertEvent(NamedTuple):
    """One change of one alert episode on one device (immutable).

    ``action``: ``open`` (insert the alert, state active), ``update`` (refine:
    a late reading moved ``started_at`` or ``ended_at``, or details grew),
    ``close`` (state cleared; ``ended_at_ms`` set). ``number`` with ``kind``
    and ``source`` identifies the episode within the device (``source`` is
    the fault name for ``device_fault``, else ``None``). ``at_ms`` is the
    event time of the decision: the reading at which it opened or closed
    (for ``update``, the latest reading meeting the condition). ``details``
    holds the contract's keys for the kind, JSON-ready.

    A named tuple rather than a frozen dataclass: one is made per alert
    change, and a frozen dataclass's ``__init__`` costs three times as much.
    """

    kind: str
    action: Action
    number: int
    source: str | None
    started_at_ms: int
    ended_at_ms: int | None
    at_ms: int
    late: bool
    details: dict[str, Any]

    @property
    def key(self) -> tuple[str, str | None, int]:
        """Identity of the episode within its device."""
        return (self.kind, self.source, self.number)


# -- helpers -------------------------------------------------------------------------------------


def _f64(a: npt.ArrayLike, n: int, name: str) -> _F64:
    out = np.asarray(a, np.float64)
    if out.ndim == 0:
        return np.full(n, float(out))
    if out.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {out.shape}")
    return out


def _bool(a: npt.ArrayLike | None, n: int, name: str, default: bool) -> _BOOL:
    if a is None:
        return np.full(n, default)
    out = np.asarray(a, np.bool_)
    if out.ndim == 0:
        return np.full(n, bool(out))
    if out.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {out.shape}")
    return out


def _ts(a: npt.ArrayLike) -> _I64:
    out = np.asarray(a, np.int64)
    if out.ndim != 1:
        raise ValueError("ts_ms must be one-dimensional")
    return out


def _pos(lon: float, lat: float) -> list[float] | None:
    if math.isnan(lon) or math.isnan(lat):
        return None
    return [round(lon, 7), round(lat, 7)]


def _num(v: float, digits: int) -> float | None:
    return None if math.isnan(v) else round(v, digits)


def iso_utc(ts_ms: int) -> str:
    """RFC 3339 text of an epoch-millisecond time, UTC with offset."""
    return datetime.fromtimestamp(ts_ms / 1000.0, UTC).isoformat(timespec="milliseconds")


def _at(ev: EpisodeEvent) -> int:
    ep = ev.episode
    if ev.action == "open":
        return ep.opened_at_ms
    if ev.action == "close" and ep.closed_at_ms is not None:
        return ep.closed_at_ms
    return ep.last_met_ms


def _alerts(
    kind: str,
    events: list[EpisodeEvent],
    details: Callable[[Episode], dict[str, Any]],
    *,
    source: str | None = None,
) -> list[AlertEvent]:
    return [
        AlertEvent(
            kind=kind,
            action=ev.action,
            number=ev.episode.number,
            source=source,
            started_at_ms=ev.episode.started_at_ms,
            ended_at_ms=ev.episode.ended_at_ms,
            at_ms=_at(ev),
            late=ev.episode.late,
            details=details(ev.episode),
        )
        for ev in events
    ]


#: Details of every event of :class:`FleetEvents` columns, one dict per event, in order.
_DetailColumns = Callable[[FleetEvents], list[dict[str, Any]]]


class FleetAlerts(Mapping[int, list[AlertEvent]]):
    """The alert events of one fleet run: the rows' as columns, the Python detector's as objects.

    As a mapping it is what :func:`_alerts` gives per device (every event an
    :class:`AlertEvent`, made on first use). The engine reads the columns
    instead (:attr:`events`, :meth:`details`, :attr:`python`) and turns them
    into store changes without an :class:`AlertEvent` per event
    (:func:`alerts.engine.coalesce_columns`).
    """

    __slots__ = ("_built", "_columns", "events", "kind", "python")

    def __init__(
        self,
        kind: str,
        events: FleetEvents,
        columns: _DetailColumns,
        details: Callable[[Episode], dict[str, Any]],
    ) -> None:
        self.kind = kind
        #: The rows' events (their ``python`` part is in :attr:`python`).
        self.events = events
        #: The Python detector's events, per device, as alert events.
        self.python = {d: _alerts(kind, evs, details) for d, evs in events.python.items()}
        self._columns = columns
        self._built: dict[int, list[AlertEvent]] | None = None

    def details(self, rows: _I64) -> list[dict[str, Any]]:
        """The details of the rows' events ``rows``, in that order."""
        return self._columns(self.events.take(rows))

    def __getitem__(self, device: int) -> list[AlertEvent]:
        return self._dict()[device]

    def __iter__(self) -> Iterator[int]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def _dict(self) -> dict[int, list[AlertEvent]]:
        if self._built is None:
            self._built = self._build()
        return self._built

    def _build(self) -> dict[int, list[AlertEvent]]:
        out: dict[int, list[AlertEvent]] = {}
        ev = self.events
        if ev.device.size:
            i = ev.ints
            action = ev.action
            # _at: the opening reading, the close, else the latest meeting reading.
            at = np.where(
                action == kn.OPEN,
                i[:, kn.M_OPENED],
                np.where(
                    (action == kn.CLOSE) & _is_closed(ev), i[:, kn.M_CLOSED], i[:, kn.M_LAST_MET]
                ),
            )
            rows = zip(
                ev.device.tolist(),
                action.tolist(),
                i[:, kn.M_NUMBER].tolist(),
                i[:, kn.M_STARTED].tolist(),
                ended_ms(ev).tolist(),
                at.tolist(),
                (i[:, kn.M_LATE] != 0).tolist(),
                self._columns(ev),
                strict=True,
            )
            kind = self.kind
            for d, a, number, started, ended, at_ms, late, det in rows:
                # Positional, in field order (one per event).
                end = None if ended == NO_TS else ended
                alert = AlertEvent(kind, ACTIONS[a], number, None, started, end, at_ms, late, det)
                out.setdefault(d, []).append(alert)
        for d, evs in self.python.items():
            out.setdefault(d, []).extend(evs)
        return out


def _is_closed(ev: FleetEvents) -> _BOOL:
    """Whether each event's episode has closed."""
    closed: _BOOL = ev.ints[:, kn.M_CLOSED] != NO_TS
    return closed


def ended_ms(ev: FleetEvents) -> _I64:
    """Each event's ``ended_at_ms``: its last meeting reading once closed, else :data:`NO_TS`."""
    return np.where(_is_closed(ev), ev.ints[:, kn.M_LAST_MET], NO_TS)


def round_rows(values: _F64, digits: Sequence[int]) -> list[list[float]]:
    """``round(v, digits[c])`` of each value of ``values`` (rows, columns), by row, in NumPy.

    Python rounds the exact binary value half to even at ``digits`` decimals
    and returns the double nearest that decimal: ``rint(v * 10**digits) /
    10**digits`` is that same double whenever the product's own rounding error
    cannot move it across a half (``10**digits`` and the quotient are exact
    or correctly rounded). Values within a few units in the last place of a
    half, huge, or not finite are rounded by Python's ``round`` itself.
    """
    scale = np.array([10.0**d for d in digits])
    with np.errstate(all="ignore"):  # inf and NaN are left to round()
        scaled = values * scale
        out: list[list[float]] = (np.rint(scaled) / scale).tolist()
        off_half = np.abs(scaled - np.floor(scaled) - 0.5)
        doubtful = ~(off_half > 8.0 * np.spacing(np.abs(scaled))) | ~(np.abs(scaled) < 2.0**52)
    for r, c in zip(*np.nonzero(doubtful), strict=True):
        out[r][c] = round(float(values[r, c]), digits[c])
    return out


def _track_rows(ev: FleetEvents, *lead: tuple[_F64, int]) -> list[list[float]]:
    """Per event: the ``lead`` columns rounded to their digits, then :func:`_track`'s numbers.

    Those are the duration (s, 3 decimals) and the start and end longitude and
    latitude (7 decimals); :func:`_point` makes a position of a pair.
    """
    i, f = ev.ints, ev.floats
    duration = (i[:, kn.M_LAST_MET] - i[:, kn.M_STARTED]) / 1000.0
    track = [
        duration,
        *(f[:, c] for c in (kn.A_START_LON, kn.A_START_LAT, kn.A_END_LON, kn.A_END_LAT)),
    ]
    values = np.column_stack([*(v for v, _ in lead), *track])
    return round_rows(values, [*(d for _, d in lead), 3, 7, 7, 7, 7])


def _point(lon7: float, lat7: float) -> list[float] | None:
    """:func:`_pos` of an already rounded pair."""
    return None if lon7 != lon7 or lat7 != lat7 else [lon7, lat7]


def _edge_detector(lateness_s: float) -> EpisodeDetector:
    """A detector of levels: one reading opens, one clears; updates only when the episode moves."""
    return EpisodeDetector(
        open_after_s=0, close_after_s=0, lateness_s=lateness_s, report_progress=False
    )


def _track(ep: Episode) -> dict[str, Any]:
    return {
        "duration_s": round(ep.duration_s, 3),
        "start": _pos(ep.start_lon, ep.start_lat),
        "end": _pos(ep.end_lon, ep.end_lat),
    }


@dataclass(frozen=True, kw_only=True)
class _EpisodeRule:
    """Shared plumbing: a detector built from the rule's timing fields."""

    open_after_s: float
    close_after_s: float
    lateness_s: float = 30.0
    max_gap_s: float | None = None
    late_flush_after_s: float = 120.0
    #: Progress-only updates at most once per this many seconds of duration (0: all).
    progress_every_s: float = 0.0

    kind: ClassVar[str] = ""
    #: Whether details change with every reading (duration, track): see EpisodeDetector.
    progress: ClassVar[bool] = True
    #: Whether details show the distance travelled (``Episode.path_m``).
    path: ClassVar[bool] = False

    @functools.cached_property
    def detector(self) -> EpisodeDetector:
        """The generic detector with this rule's timing."""
        return EpisodeDetector(
            open_after_s=self.open_after_s,
            close_after_s=self.close_after_s,
            lateness_s=self.lateness_s,
            max_gap_s=self.max_gap_s,
            late_flush_after_s=self.late_flush_after_s,
            report_progress=self.progress,
            track_path=self.path,
            progress_every_s=self.progress_every_s,
        )

    def new_state(self) -> EpisodeState:
        """A fresh per-device state for this rule."""
        return EpisodeState()

    def _details(self, ep: Episode) -> dict[str, Any]:
        raise NotImplementedError

    def _detail_columns(
        self, ev: FleetEvents, route_ids: Sequence[str] | None
    ) -> list[dict[str, Any]]:
        """:meth:`_details` of every event of ``ev`` (the same dicts), built per column."""
        raise NotImplementedError

    def advance(self, state: EpisodeState, *, watermark_ms: int) -> list[AlertEvent]:
        """Move the device watermark; return what became certain (no readings needed)."""
        return _alerts(
            self.kind, self.detector.advance(state, watermark_ms=watermark_ms), self._details
        )

    def advance_many(
        self, states: Sequence[EpisodeState], *, watermark_ms: int
    ) -> dict[int, list[AlertEvent]]:
        """:meth:`advance` every state to one watermark (skips quiet ones); events by index."""
        per = self.detector.advance_many(states, watermark_ms=watermark_ms)
        return {d: _alerts(self.kind, evs, self._details) for d, evs in per.items()}

    def advance_fleet(
        self,
        fleet: FleetEpisodes,
        states: Sequence[EpisodeState],
        keys: _I64,
        watermark_ms: _I64,
        cut_ms: _I64 | None = None,
        details: Callable[[Episode], dict[str, Any]] | None = None,
        route_ids: Sequence[str] | None = None,
    ) -> Mapping[int, list[AlertEvent]]:
        """:meth:`advance` of the devices ``keys`` held by ``fleet`` (quiet ones skipped).

        ``watermark_ms`` and ``cut_ms`` per key (``cut_ms``: the rule's cut, e.g.
        a service window's end; :data:`alerts.fleet.NO_TS` for none).
        """
        ev = fleet.advance_events(states, keys, watermark_ms, cut_ms)
        return self._fleet_alerts(ev, details, route_ids)

    def _fleet_alerts(
        self,
        ev: FleetEvents,
        details: Callable[[Episode], dict[str, Any]] | None,
        route_ids: Sequence[str] | None,
    ) -> FleetAlerts:
        return FleetAlerts(
            self.kind,
            ev,
            lambda e: self._detail_columns(e, route_ids),
            self._details if details is None else details,
        )

    def _many(
        self,
        states: Sequence[EpisodeState],
        device: npt.ArrayLike,
        ts: _I64,
        cond: dict[str, Any],
        details: Callable[[Episode], dict[str, Any]] | None = None,
        parking: Parking | None = None,
        fleet: FleetEpisodes | None = None,
        route_ids: Sequence[str] | None = None,
    ) -> Mapping[int, list[AlertEvent]]:
        if fleet is not None:
            ev = fleet.feed_events(states, device, ts, **cond)
            return self._fleet_alerts(ev, details, route_ids)
        per = self.detector.feed_many(states, device, ts, **cond, parking=parking)
        fn = self._details if details is None else details
        return {d: _alerts(self.kind, evs, fn) for d, evs in per.items()}


# -- 1. speeding --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Speeding(_EpisodeRule):
    """``speeding``: speed > limit for >= 10 s; closes after speed <= limit for >= 10 s.

    The caller gives ``limit_kmh`` per fix (lowest valid speed-zone limit;
    NaN means none, so ``default_limit_kmh``). A fix without a speed (NaN)
    neither meets nor clears. Details: ``max_speed_kmh`` and the
    ``limit_kmh`` at that fix, ``duration_s``, ``start``/``end`` ``[lon, lat]``.
    """

    open_after_s: float = 10.0
    close_after_s: float = 10.0
    default_limit_kmh: float = 60.0
    kind: ClassVar[str] = "speeding"

    def feed(
        self,
        state: EpisodeState,
        *,
        ts_ms: npt.ArrayLike,
        speed_kmh: npt.ArrayLike,
        limit_kmh: npt.ArrayLike,
        lon_deg: npt.ArrayLike | None = None,
        lat_deg: npt.ArrayLike | None = None,
        backfill: npt.ArrayLike | None = None,
    ) -> list[AlertEvent]:
        """Add a batch of one bus's fixes; return the alert events it makes certain."""
        ts = _ts(ts_ms)
        cond = self._cond(ts.shape[0], speed_kmh, limit_kmh, lon_deg, lat_deg, backfill)
        return _alerts(self.kind, self.detector.feed(state, ts, **cond), self._details)

    def feed_many(
        self,
        states: Sequence[EpisodeState],
        *,
        device: npt.ArrayLike,
        ts_ms: npt.ArrayLike,
        speed_kmh: npt.ArrayLike,
        limit_kmh: npt.ArrayLike,
        lon_deg: npt.ArrayLike | None = None,
        lat_deg: npt.ArrayLike | None = None,
        backfill: npt.ArrayLike | None = None,
        parking: Parking | None = None,
        fleet: FleetEpisodes | None = None,
    ) -> Mapping[int, list[AlertEvent]]:
        """:meth:`feed` for a batch of many buses (``device`` indexes ``states``).

        ``fleet`` holds the states instead (:class:`alerts.fleet.FleetEpisodes`).
        """
        ts = _ts(ts_ms)
        cond = self._cond(ts.shape[0], speed_kmh, limit_kmh, lon_deg, lat_deg, backfill)
        return self._many(states, device, ts, cond, parking=parking, fleet=fleet)

    def _cond(
        self,
        n: int,
        speed_kmh: npt.ArrayLike,
        limit_kmh: npt.ArrayLike,
        lon_deg: npt.ArrayLike | None,
        lat_deg: npt.ArrayLike | None,
        backfill: npt.ArrayLike | None,
    ) -> dict[str, Any]:
        speed = _f64(speed_kmh, n, "speed_kmh")
        limit = _f64(limit_kmh, n, "limit_kmh")
        limit = np.where(np.isnan(limit), self.default_limit_kmh, limit)
        return {
            "meets": speed > limit,
            "clears": speed <= limit,
            "value": speed,
            "tag": limit,
            "lon_deg": lon_deg,
            "lat_deg": lat_deg,
            "backfill": backfill,
        }

    def _details(self, ep: Episode) -> dict[str, Any]:
        return {
            "max_speed_kmh": _num(ep.max_value, 1),
            "limit_kmh": _num(ep.tag_at_max, 1),
            **_track(ep),
        }

    def _detail_columns(
        self, ev: FleetEvents, route_ids: Sequence[str] | None
    ) -> list[dict[str, Any]]:
        f = ev.floats
        return [
            {
                "max_speed_kmh": None if v != v else v,
                "limit_kmh": None if lim != lim else lim,
                "duration_s": s,
                "start": _point(x0, y0),
                "end": _point(x1, y1),
            }
            for v, lim, s, x0, y0, x1, y1 in _track_rows(
                ev, (f[:, kn.A_MAX], 1), (f[:, kn.A_TAG], 1)
            )
        ]


# -- 2. route deviation --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RouteDeviation(_EpisodeRule):
    """``route_deviation``: outside every assigned corridor for >= 30 s, in service only.

    Only fixes inside a service window on a school day and not covered by a
    detour filing count; any other fix ends an open deviation at once (the
    window ended, a detour began). Closes after >= 30 s back within a
    corridor. ``within_corridor`` (from the geofence kernel, each route with
    its own ``corridor_m``) decides; without it, ``distance_m >
    default_corridor_m`` does. A fix with NaN ``distance_m`` and no
    ``within_corridor`` is unknown (e.g. a bus without routes) and neutral.
    Details: ``route_id`` (nearest route at the farthest fix: ``route_ids[
    route_index]``), ``max_distance_m``, ``duration_s``, ``start``, ``end``.
    """

    open_after_s: float = 30.0
    close_after_s: float = 30.0
    default_corridor_m: float = 100.0
    kind: ClassVar[str] = "route_deviation"

    def feed(
        self,
        state: EpisodeState,
        *,
        ts_ms: npt.ArrayLike,
        distance_m: npt.ArrayLike,
        in_service_window: npt.ArrayLike,
        school_day: npt.ArrayLike,
        within_corridor: npt.ArrayLike | None = None,
        route_index: npt.ArrayLike | None = None,
        route_ids: Sequence[str] | None = None,
        filing_covers: npt.ArrayLike | None = None,
        lon_deg: npt.ArrayLike | None = None,
        lat_deg: npt.ArrayLike | None = None,
        backfill: npt.ArrayLike | None = None,
    ) -> list[AlertEvent]:
        """Add a batch of one bus's fixes; return the alert events it makes certain."""
        ts = _ts(ts_ms)
        cond = self._cond(
            ts.shape[0],
            distance_m,
            in_service_window,
            school_day,
            within_corridor,
            route_index,
            filing_covers,
        )
        events = self.detector.feed(
            state, ts, **cond, lon_deg=lon_deg, lat_deg=lat_deg, backfill=backfill
        )
        ids = route_ids
        return _alerts(self.kind, events, lambda ep: self._route_details(ep, ids))

    def feed_many(
        self,
        states: Sequence[EpisodeState],
        *,
        device: npt.ArrayLike,
        ts_ms: npt.ArrayLike,
        distance_m: npt.ArrayLike,
        in_service_window: npt.ArrayLike,
        school_day: npt.ArrayLike,
        within_corridor: npt.ArrayLike | None = None,
        route_index: npt.ArrayLike | None = None,
        route_ids: Sequence[str] | None = None,
        filing_covers: npt.ArrayLike | None = None,
        lon_deg: npt.ArrayLike | None = None,
        lat_deg: npt.ArrayLike | None = None,
        backfill: npt.ArrayLike | None = None,
        parking: Parking | None = None,
        fleet: FleetEpisodes | None = None,
    ) -> Mapping[int, list[AlertEvent]]:
        """:meth:`feed` for many buses; ``route_index`` then indexes one shared ``route_ids``."""
        ts = _ts(ts_ms)
        cond = self._cond(
            ts.shape[0],
            distance_m,
            in_service_window,
            school_day,
            within_corridor,
            route_index,
            filing_covers,
        )
        cond.update(lon_deg=lon_deg, lat_deg=lat_deg, backfill=backfill)
        ids = route_ids
        return self._many(
            states,
            device,
            ts,
            cond,
            lambda ep: self._route_details(ep, ids),
            parking=parking,
            fleet=fleet,
            route_ids=ids,
        )

    def _cond(
        self,
        n: int,
        distance_m: npt.ArrayLike,
        in_service_window: npt.ArrayLike,
        school_day: npt.ArrayLike,
        within_corridor: npt.ArrayLike | None,
        route_index: npt.ArrayLike | None,
        filing_covers: npt.ArrayLike | None,
    ) -> dict[str, Any]:
        dist = _f64(distance_m, n, "distance_m")
        in_service = (
            _bool(in_service_window, n, "in_service_window", False)
            & _bool(school_day, n, "school_day", False)
            & ~_bool(filing_covers, n, "filing_covers", False)
        )
        if within_corridor is None:
            known = ~np.isnan(dist)
            outside = dist > self.default_corridor_m
        else:
            known = np.ones(n, np.bool_)
            outside = ~_bool(within_corridor, n, "within_corridor", True)
        return {
            "meets": in_service & known & outside,
            "clears": in_service & known & ~outside,
            "ends": ~in_service,
            "value": dist,
            "tag": None if route_index is None else _f64(route_index, n, "route_index"),
        }

    def advance(
        self,
        state: EpisodeState,
        *,
        watermark_ms: int,
        window_end_ms: int | None = None,
        route_ids: Sequence[str] | None = None,
    ) -> list[AlertEvent]:
        """Move the watermark; ``window_end_ms`` (a service window's end) closes a deviation.

        Give ``window_end_ms`` once the watermark has passed the end of the
        window the bus was in, so a deviation closes even if the bus falls
        silent; a fix after that time would have closed it the same way.
        """
        events = self.detector.advance(state, watermark_ms=watermark_ms, cut_ms=window_end_ms)
        ids = route_ids
        return _alerts(self.kind, events, lambda ep: self._route_details(ep, ids))

    def advance_route_fleet(
        self,
        fleet: FleetEpisodes,
        states: Sequence[EpisodeState],
        keys: _I64,
        watermark_ms: _I64,
        window_end_ms: _I64,
        route_ids: Sequence[str] | None = None,
    ) -> Mapping[int, list[AlertEvent]]:
        """:meth:`advance` for the devices ``keys`` held by ``fleet`` (per-key arrays)."""
        ids = route_ids
        return self.advance_fleet(
            fleet,
            states,
            keys,
            watermark_ms,
            window_end_ms,
            lambda ep: self._route_details(ep, ids),
            route_ids=ids,
        )

    def _route_details(self, ep: Episode, ids: Sequence[str] | None) -> dict[str, Any]:
        d = self._details(ep)
        if ids is not None and not math.isnan(ep.tag_at_max) and 0 <= ep.tag_at_max < len(ids):
            d["route_id"] = ids[int(ep.tag_at_max)]
        return d

    def _details(self, ep: Episode) -> dict[str, Any]:
        route = None if math.isnan(ep.tag_at_max) or ep.tag_at_max < 0 else int(ep.tag_at_max)
        max_d = None if math.isnan(ep.max_value) or math.isinf(ep.max_value) else ep.max_value
        return {
            "route_id": route,
            "max_distance_m": None if max_d is None else round(max_d, 1),
            **_track(ep),
        }

    def _detail_columns(
        self, ev: FleetEvents, route_ids: Sequence[str] | None
    ) -> list[dict[str, Any]]:
        # _route_details: the route's id where ids are given and the index is known.
        f = ev.floats
        tags = f[:, kn.A_TAG].tolist()
        ids: Sequence[str] = () if route_ids is None else route_ids
        routes = [
            None if t != t or t < 0 else ids[int(t)] if t < len(ids) else int(t) for t in tags
        ]
        top = f[:, kn.A_MAX]
        rows = _track_rows(ev, (np.where(np.isinf(top), np.nan, top), 1))
        return [
            {
                "route_id": r,
                "max_distance_m": None if m != m else m,
                "duration_s": s,
                "start": _point(x0, y0),
                "end": _point(x1, y1),
            }
            for r, (m, s, x0, y0, x1, y1) in zip(routes, rows, strict=True)
        ]


# -- 3. out of hours -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OutOfHours(_EpisodeRule):
    """``out_of_hours``: moving (>= 5 km/h) outside service for >= 60 s, no filing covering it.

    "Outside service" is outside every service window, or any time on a
    non-school day: ``~(in_service_window & school_day)``. Closes after
    >= 120 s stationary (< 5 km/h), or at once when a window begins or a
    movement filing starts covering the bus (both end the episode: the
    movement is then accounted for). Details: ``duration_s``, ``distance_m``
    travelled along the fixes from start to end, ``start``, ``end``.
    """

    open_after_s: float = 60.0
    close_after_s: float = 120.0
    moving_kmh: float = 5.0
    kind: ClassVar[str] = "out_of_hours"
    path: ClassVar[bool] = True

    def feed(
        self,
        state: EpisodeState,
        *,
        ts_ms: npt.ArrayLike,
        speed_kmh: npt.ArrayLike,
        in_service_window: npt.ArrayLike,
        school_day: npt.ArrayLike,
        filing_covers: npt.ArrayLike | None = None,
        lon_deg: npt.ArrayLike | None = None,
        lat_deg: npt.ArrayLike | None = None,
        backfill: npt.ArrayLike | None = None,
    ) -> list[AlertEvent]:
        """Add a batch of one bus's fixes; return the alert events it makes certain."""
        ts = _ts(ts_ms)
        cond = self._cond(ts.shape[0], speed_kmh, in_service_window, school_day, filing_covers)
        events = self.detector.feed(
            state, ts, **cond, lon_deg=lon_deg, lat_deg=lat_deg, backfill=backfill
        )
        return _alerts(self.kind, events, self._details)

    def feed_many(
        self,
        states: Sequence[EpisodeState],
        *,
        device: npt.ArrayLike,
        ts_ms: npt.ArrayLike,
        speed_kmh: npt.ArrayLike,
        in_service_window: npt.ArrayLike,
        school_day: npt.ArrayLike,
        filing_covers: npt.ArrayLike | None = None,
        lon_deg: npt.ArrayLike | None = None,
        lat_deg: npt.ArrayLike | None = None,
        backfill: npt.ArrayLike | None = None,
        parking: Parking | None = None,
        fleet: FleetEpisodes | None = None,
    ) -> Mapping[int, list[AlertEvent]]:
        """:meth:`feed` for a batch of many buses (``device`` indexes ``states``)."""
        ts = _ts(ts_ms)
        cond = self._cond(ts.shape[0], speed_kmh, in_service_window, school_day, filing_covers)
        cond.update(lon_deg=lon_deg, lat_deg=lat_deg, backfill=backfill)
        return self._many(states, device, ts, cond, parking=parking, fleet=fleet)

    def _cond(
        self,
        n: int,
        speed_kmh: npt.ArrayLike,
        in_service_window: npt.ArrayLike,
        school_day: npt.ArrayLike,
        filing_covers: npt.ArrayLike | None,
    ) -> dict[str, Any]:
        speed = _f64(speed_kmh, n, "speed_kmh")
        in_service = _bool(in_service_window, n, "in_service_window", False) & _bool(
            school_day, n, "school_day", False
        )
        stop = in_service | _bool(filing_covers, n, "filing_covers", False)
        return {
            "meets": (speed >= self.moving_kmh) & ~stop,
            "clears": speed < self.moving_kmh,
            "ends": stop,
        }

    def advance(
        self, state: EpisodeState, *, watermark_ms: int, window_start_ms: int | None = None
    ) -> list[AlertEvent]:
        """Move the watermark; ``window_start_ms`` (a service window began) closes the episode."""
        events = self.detector.advance(state, watermark_ms=watermark_ms, cut_ms=window_start_ms)
        return _alerts(self.kind, events, self._details)

    def _details(self, ep: Episode) -> dict[str, Any]:
        d = _track(ep)
        known = not math.isnan(ep.start_lon)
        return {
            "duration_s": d["duration_s"],
            "distance_m": round(ep.path_m, 1) if known else None,
            "start": d["start"],
            "end": d["end"],
        }

    def _detail_columns(
        self, ev: FleetEvents, route_ids: Sequence[str] | None
    ) -> list[dict[str, Any]]:
        # The distance travelled is known once the episode has a start.
        return [
            {
                "duration_s": s,
                "distance_m": None if x0 != x0 else p,
                "start": _point(x0, y0),
                "end": _point(x1, y1),
            }
            for p, s, x0, y0, x1, y1 in _track_rows(ev, (ev.floats[:, kn.A_PATH], 1))
        ]


# -- 4. device offline ---------------------------------------------------------------------------


@dataclass(slots=True)
class OfflineState:
    """Per-device state of :class:`DeviceOffline` (JSON-able through ``to_dict``).

    ``offline_after_s``: the device's threshold. ``since_ms``: when counting
    starts for a device never heard (registration, or first event time seen
    under the event clock). ``last_final_ms``: latest heard time older than
    the watermark (``None``: never heard); ``pending_ms``: heard times at or
    after the watermark, sorted. ``episodes``: emitted episodes not final yet,
    as ``[number, last_seen_ms or None, closed_at_ms or None]``.
    """

    offline_after_s: float
    since_ms: int
    last_final_ms: int | None = None
    pending_ms: list[int] = field(default_factory=list)
    watermark_ms: int | None = None
    max_heard_ms: int | None = None
    episodes: list[list[int | None]] = field(default_factory=list)
    next_number: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> OfflineState:
        """Inverse of :meth:`to_dict`."""
        return OfflineState(**d)


@dataclass(frozen=True, kw_only=True)
class DeviceOffline:
    """``device_offline``: nothing heard (any channel) for more than ``offline_after_s``.

    ``started_at`` = last heard + ``offline_after_s`` (a device never heard
    counts from ``since_ms``); details ``last_seen_at`` (RFC 3339, ``None``
    if never heard) and ``threshold_s``; closes when the device is heard
    again (``ended_at`` = that time). Heard times and watermark must use
    one clock: event times with ``lateness_s`` under the event clock, or
    receive times with ``lateness_s=0`` and ``watermark_ms`` = now under the
    live clock. An episode opens as soon as it is certain: when the watermark
    passes last heard + threshold (nothing older than the watermark can still
    arrive), or when a batch shows a silence whose end is final. A heard time
    already older than the watermark on arrival changes nothing (the
    silence it would shorten was already decided).
    """

    lateness_s: float = 30.0
    kind: ClassVar[str] = "device_offline"

    #: Contract defaults of ``offline_after_s`` per device kind.
    DEFAULT_OFFLINE_AFTER_S: ClassVar[dict[str, float]] = {
        "gps": 300.0,
        "button": 300.0,
        "smoke": 900.0,
    }

    def new_state(self, *, offline_after_s: float, since_ms: int) -> OfflineState:
        """A state for a device with its threshold, counting from ``since_ms`` until heard."""
        return OfflineState(offline_after_s=offline_after_s, since_ms=since_ms)

    def feed(self, state: OfflineState, *, heard_ms: npt.ArrayLike) -> list[AlertEvent]:
        """Record that the device was heard at these times (any channel, any order)."""
        hs = np.unique(_ts(heard_ms))
        if hs.size == 0:
            return []
        if state.watermark_ms is not None:
            hs = hs[hs >= state.watermark_ms]
        if state.last_final_ms is not None:
            hs = hs[hs > state.last_final_ms]
        if hs.size == 0:
            return []
        pend = np.union1d(np.asarray(state.pending_ms, np.int64), hs)
        state.pending_ms = [int(x) for x in pend]
        top = int(pend[-1])
        if state.max_heard_ms is None or top > state.max_heard_ms:
            state.max_heard_ms = top
        wm = state.max_heard_ms - round(self.lateness_s * 1000)
        return self._settle(state, wm)

    def feed_many(
        self,
        states: Sequence[OfflineState],
        *,
        device: npt.ArrayLike,
        heard_ms: npt.ArrayLike,
        book: OfflineBook | None = None,
    ) -> dict[int, list[AlertEvent]]:
        """:meth:`feed` for a batch of many devices (``device`` indexes ``states``).

        A device heard without a silence longer than its threshold anywhere
        (the common case) only moves its last heard time, watermark included;
        with a ``book`` (every device's state added to it), that is done for
        all such devices at once in its arrays.
        """
        hs = _ts(heard_ms)
        dev = np.asarray(device, np.int64)
        if dev.shape != hs.shape:
            raise ValueError("device must match heard_ms")
        out: dict[int, list[AlertEvent]] = {}
        if hs.size == 0:
            return out
        lateness_ms = round(self.lateness_s * 1000)
        if book is not None:
            order = by_device_then_time(dev, hs)
            hs, dev = hs[order], dev[order]
            lo_a = np.empty(hs.shape[0], np.int64)
            hi_a = np.empty(hs.shape[0], np.int64)
            ns = heard_fast(
                dev,
                hs,
                book.simple,
                book.last,
                book.wm,
                book.since,
                book.thr,
                lateness_ms,
                lo_a,
                hi_a,
            )
            starts, stops = lo_a[:ns], hi_a[:ns]
            max_gap_a = np.asarray(
                [int(np.diff(hs[a:b]).max(initial=0)) for a, b in zip(starts, stops, strict=True)],
                np.int64,
            )
        else:
            order = np.lexsort((hs, dev))
            hs, dev = hs[order], dev[order]
            starts = np.flatnonzero(np.r_[True, dev[1:] != dev[:-1]])
            stops = np.r_[starts[1:], hs.shape[0]]
            gaps = np.r_[0, np.diff(hs)]
            gaps[starts] = 0
            max_gap_a = np.maximum.reduceat(gaps, starts)
        max_gap = max_gap_a.tolist()
        for d, lo, hi, mg in zip(
            dev[starts].tolist(), starts.tolist(), stops.tolist(), max_gap, strict=True
        ):
            st = states[d]
            if book is not None:
                book.sync_to(d, st)
            first, last = int(hs[lo]), int(hs[hi - 1])
            thr_ms = round(st.offline_after_s * 1000)
            if not st.episodes and mg <= thr_ms and _no_silence(st, first, thr_ms):
                # No silence over the threshold among the times known: a late reading
                # could only shorten them, so the latest time is all that matters.
                st.pending_ms = []
                st.last_final_ms = st.max_heard_ms = last
                wm = st.max_heard_ms - lateness_ms
                if st.watermark_ms is None or wm > st.watermark_ms:
                    st.watermark_ms = wm
                if book is not None:
                    book.sync_from(d, st)
                continue
            events = self.feed(st, heard_ms=hs[lo:hi])
            if events:
                out[d] = events
            if book is not None:
                book.sync_from(d, st)
        return out

    def advance_many(
        self, states: Sequence[OfflineState], *, watermark_ms: int
    ) -> dict[int, list[AlertEvent]]:
        """:meth:`advance` every state to one watermark; events by index.

        A device heard within its threshold, with nothing pending, costs a comparison.
        """
        out: dict[int, list[AlertEvent]] = {}
        for d, st in enumerate(states):
            if not st.episodes and not st.pending_ms:
                base = st.since_ms if st.last_final_ms is None else st.last_final_ms
                if watermark_ms - base <= round(st.offline_after_s * 1000):
                    if st.watermark_ms is None or watermark_ms > st.watermark_ms:
                        st.watermark_ms = watermark_ms
                    continue
            events = self.advance(st, watermark_ms=watermark_ms)
            if events:
                out[d] = events
        return out

    def advance_keys(
        self,
        states: Sequence[OfflineState | None],
        keys: _I64,
        book: OfflineBook,
        *,
        watermark_ms: int,
    ) -> dict[int, list[AlertEvent]]:
        """:meth:`advance` the states of ``keys`` (each in ``book``); events by key.

        Simple devices still within their threshold only have their
        watermark raised, in the book's arrays, all at once.
        """
        out: dict[int, list[AlertEvent]] = {}
        if keys.size == 0:
            return out
        within = book.simple[keys] & (watermark_ms - book._base(keys) <= book.thr[keys])
        quiet = keys[within]
        book.wm[quiet] = np.maximum(book.wm[quiet], watermark_ms)
        for d in keys[~within].tolist():
            st = states[d]
            assert st is not None
            book.sync_to(d, st)
            events = self.advance(st, watermark_ms=watermark_ms)
            book.sync_from(d, st)
            if events:
                out[d] = events
        return out

    def advance(self, state: OfflineState, *, watermark_ms: int) -> list[AlertEvent]:
        """Move the watermark (clock tick): opens when the silence becomes certain."""
        return self._settle(state, watermark_ms)

    def _settle(self, state: OfflineState, wm: int) -> list[AlertEvent]:
        if state.watermark_ms is None or wm > state.watermark_ms:
            state.watermark_ms = wm
        wm = state.watermark_ms
        thr_ms = round(state.offline_after_s * 1000)
        # Episodes keyed by the last heard time before the silence (None: never heard).
        found: list[tuple[int | None, int | None]] = []  # (last_seen, closed_at)
        prev = state.last_final_ms
        pend = state.pending_ms
        k = 0
        while k < len(pend) and pend[k] < wm:
            h = pend[k]
            if h - (state.since_ms if prev is None else prev) > thr_ms:
                found.append((prev, h))
            prev = h
            k += 1
        state.last_final_ms = prev
        state.pending_ms = pend[k:]
        base = state.since_ms if prev is None else prev
        if wm - base > thr_ms:
            found.append((prev, state.pending_ms[0] if state.pending_ms else None))
        return self._reconcile(state, found, wm, thr_ms)

    def _reconcile(
        self,
        state: OfflineState,
        found: list[tuple[int | None, int | None]],
        wm: int,
        thr_ms: int,
    ) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        known = {e[1]: e for e in state.episodes}
        keep: list[list[int | None]] = []
        for last_seen, closed_at in found:
            prev = known.pop(last_seen, None)
            if prev is None:
                number = state.next_number
                state.next_number += 1
                out.append(self._event(state, "open", number, last_seen, None, thr_ms))
                if closed_at is not None:
                    out.append(self._event(state, "close", number, last_seen, closed_at, thr_ms))
            else:
                number = int(prev[0])  # type: ignore[arg-type]
                if prev[2] is None and closed_at is not None:
                    out.append(self._event(state, "close", number, last_seen, closed_at, thr_ms))
                elif prev[2] is not None and closed_at is not None and closed_at != prev[2]:
                    out.append(self._event(state, "update", number, last_seen, closed_at, thr_ms))
                elif prev[2] is not None and closed_at is None:
                    closed_at = prev[2]  # a close is never undone
            if closed_at is None or closed_at >= wm:
                keep.append([number, last_seen, closed_at])
        # Episodes not found again are final (their close is older than the watermark).
        state.episodes = keep
        return out

    def _event(
        self,
        state: OfflineState,
        action: Action,
        number: int,
        last_seen: int | None,
        closed_at: int | None,
        thr_ms: int,
    ) -> AlertEvent:
        started = (state.since_ms if last_seen is None else last_seen) + thr_ms
        return AlertEvent(
            kind=self.kind,
            action=action,
            number=number,
            source=None,
            started_at_ms=started,
            ended_at_ms=closed_at,
            at_ms=started if action == "open" else (closed_at or started),
            late=False,
            details={
                "last_seen_at": None if last_seen is None else iso_utc(last_seen),
                "threshold_s": state.offline_after_s,
            },
        )


#: "Never heard" / "no watermark yet" in :class:`OfflineBook`'s int64 columns.
_NO_MS: Final = int(np.iinfo(np.int64).min)


class OfflineBook:
    """Fleet-wide arrays that let :class:`DeviceOffline` skip the devices with nothing to decide.

    One row per device, indexed like the states. A *simple* device has no
    episode and no heard time pending; its last heard time (``last``,
    :data:`_NO_MS`: never heard) and watermark (``wm``) then live here, not
    in its :class:`OfflineState` (stale until :meth:`sync_to`), so hearing
    it within its threshold or a tick that finds it within its threshold
    is one NumPy operation for all such devices together. ``known``: a
    state exists (``thr``/``since`` are its threshold in ms and ``since_ms``).
    """

    def __init__(self) -> None:
        self.known: _BOOL = np.zeros(0, np.bool_)
        self.simple: _BOOL = np.zeros(0, np.bool_)
        self.last: _I64 = np.zeros(0, np.int64)
        self.wm: _I64 = np.zeros(0, np.int64)
        self.thr: _I64 = np.zeros(0, np.int64)
        self.since: _I64 = np.zeros(0, np.int64)

    def ensure(self, size: int) -> None:
        """Rows for ``size`` devices (new rows: no state)."""
        grow_rows(self, ("known", "simple", "last", "wm", "thr", "since"), size)

    def add(self, d: int, st: OfflineState) -> None:
        """A new state for device ``d`` (or one changed outside the rule: read it again)."""
        self.ensure(d + 1)
        self.known[d] = True
        self.thr[d] = round(st.offline_after_s * 1000)
        self.since[d] = st.since_ms
        self.sync_from(d, st)

    def sync_to(self, d: int, st: OfflineState) -> None:
        """Write a simple device's times back into its state (before the state is used)."""
        if not self.simple[d]:
            return
        self.simple[d] = False
        last, wm = int(self.last[d]), int(self.wm[d])
        st.last_final_ms = st.max_heard_ms = None if last == _NO_MS else last
        st.watermark_ms = None if wm == _NO_MS else wm

    def sync_from(self, d: int, st: OfflineState) -> None:
        """Take a state's times over when it is simple (no episode, nothing pending)."""
        simple = not st.episodes and not st.pending_ms and st.max_heard_ms == st.last_final_ms
        self.simple[d] = simple
        if simple:
            self.last[d] = _NO_MS if st.last_final_ms is None else st.last_final_ms
            self.wm[d] = _NO_MS if st.watermark_ms is None else st.watermark_ms

    def _base(self, d: _I64) -> _I64:
        last = self.last[d]
        return np.where(last == _NO_MS, self.since[d], last)


def _no_silence(st: OfflineState, first_ms: int, thr_ms: int) -> bool:
    """Whether no gap over ``thr_ms`` lies between the times known and the next, ``first_ms``."""
    prev = st.since_ms if st.last_final_ms is None else st.last_final_ms
    for t in [*st.pending_ms, first_ms]:
        if t <= prev or t - prev > thr_ms:
            return False
        prev = t
    return True


# -- 5. smoke alarm ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SmokeAlarm(_EpisodeRule):
    """``smoke_alarm``: opens on smoke ``state`` = ``alarm``, closes on ``normal``.

    ``fault`` and ``test`` readings neither open nor close (a test never
    alerts). Details: ``obscuration`` (the highest reported in the episode,
    %/m, ``None`` if never reported).
    """

    open_after_s: float = 0.0
    close_after_s: float = 0.0
    kind: ClassVar[str] = "smoke_alarm"
    progress: ClassVar[bool] = False

    def feed(
        self,
        state: EpisodeState,
        *,
        ts_ms: npt.ArrayLike,
        smoke_state: npt.ArrayLike,
        obscuration: npt.ArrayLike | None = None,
        backfill: npt.ArrayLike | None = None,
    ) -> list[AlertEvent]:
        """Add a batch of smoke readings (``smoke_state`` strings); return the alert events."""
        ts = _ts(ts_ms)
        n = ts.shape[0]
        s = np.asarray(smoke_state)
        events = self.detector.feed(
            state,
            ts,
            s == "alarm",
            clears=s == "normal",
            value=None if obscuration is None else _f64(obscuration, n, "obscuration"),
            backfill=backfill,
        )
        return _alerts(self.kind, events, self._details)

    def _details(self, ep: Episode) -> dict[str, Any]:
        return {"obscuration": _num(ep.max_value, 3)}


# -- 6. panic button -----------------------------------------------------------------------------


@dataclass(slots=True)
class PanicState:
    """Per-device state of :class:`PanicButton` (JSON-able through ``to_dict``).

    ``bit``: episodes of gps alarm bit 0 being set (their starts are the
    rising edges; carried across batches, so a bit held high opens once).
    ``active``: the latched alert, ``[number, started_ms, last_edge_ms,
    source, late]`` or ``None``. ``resolved_upto_ms``: edges at or before
    this time belong to alerts already resolved.
    """

    bit: EpisodeState = field(default_factory=EpisodeState)
    active: list[Any] | None = None
    resolved_upto_ms: int | None = None
    max_ts_ms: int | None = None
    next_number: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {
            "bit": self.bit.to_dict(),
            "active": self.active,
            "resolved_upto_ms": self.resolved_upto_ms,
            "max_ts_ms": self.max_ts_ms,
            "next_number": self.next_number,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PanicState:
        """Inverse of :meth:`to_dict`."""
        return PanicState(
            bit=EpisodeState.from_dict(d["bit"]),
            active=d["active"],
            resolved_upto_ms=d["resolved_upto_ms"],
            max_ts_ms=d["max_ts_ms"],
            next_number=d["next_number"],
        )


@dataclass(frozen=True, kw_only=True)
class PanicButton:
    """``panic_button``: a button ``press``, or a rising edge of gps alarm bit 0; latched.

    The alert opens at the first press/edge (``started_at``) and stays
    active through later presses and edges, the button's ``reset`` and the
    bit falling back to 0; only :meth:`resolve` (a person, through the API)
    closes it, with ``ended_at`` = the last press/edge. A press or edge after
    the resolution opens a new alert. Details: ``source`` (``button`` or
    ``gps_alarm``, of the first press/edge). Never held back: a press is
    certain the moment it arrives.
    """

    lateness_s: float = 30.0
    kind: ClassVar[str] = "panic_button"

    @functools.cached_property
    def _bit_detector(self) -> EpisodeDetector:
        return _edge_detector(self.lateness_s)

    def new_state(self) -> PanicState:
        """A fresh per-device state."""
        return PanicState()

    def feed_button(
        self,
        state: PanicState,
        *,
        ts_ms: npt.ArrayLike,
        event: npt.ArrayLike,
        backfill: npt.ArrayLike | None = None,
    ) -> list[AlertEvent]:
        """Add button events (``press``/``reset``/``tamper``/``fault``/``restore``/``test``)."""
        ts = _ts(ts_ms)
        n = ts.shape[0]
        press = np.asarray(event) == "press"
        bf = _bool(backfill, n, "backfill", False)
        self._seen(state, ts)
        return self._edges(state, ts[press], bf[press], "button")

    def feed_gps(
        self,
        state: PanicState,
        *,
        ts_ms: npt.ArrayLike,
        alarm: npt.ArrayLike,
        backfill: npt.ArrayLike | None = None,
    ) -> list[AlertEvent]:
        """Add fixes with their alarm DWORD (negative: the fix had none)."""
        ts = _ts(ts_ms)
        a = np.asarray(alarm, np.int64)
        present = a >= 0
        bit = present & ((a >> _EMERGENCY_BIT) & 1).astype(np.bool_)
        events = self._bit_detector.feed(
            state.bit, ts, bit, clears=present & ~bit, backfill=backfill
        )
        return self._from_bit(state, events)

    def feed_gps_many(
        self,
        states: Sequence[PanicState],
        *,
        device: npt.ArrayLike,
        ts_ms: npt.ArrayLike,
        alarm: npt.ArrayLike,
        backfill: npt.ArrayLike | None = None,
        parking: Parking | None = None,
        fleet: FleetEpisodes | None = None,
        bits: Sequence[EpisodeState] | None = None,
    ) -> dict[int, list[AlertEvent]]:
        """:meth:`feed_gps` for a batch of many devices (``device`` indexes ``states``).

        ``parking`` (``positions=False``) parks the alarm-bit states of
        devices with nothing under way (:meth:`EpisodeDetector.feed_many`);
        or ``fleet`` holds them (:class:`alerts.fleet.FleetEpisodes` of
        :attr:`bit_detector`), with ``bits`` the states' ``bit`` in order.
        """
        ts = _ts(ts_ms)
        a = np.asarray(alarm, np.int64)
        present = a >= 0
        bit = present & ((a >> _EMERGENCY_BIT) & 1).astype(np.bool_)
        if fleet is not None:
            per = fleet.feed_many(
                [st.bit for st in states] if bits is None else bits,
                device,
                ts,
                bit,
                clears=present & ~bit,
                backfill=backfill,
            )
        else:
            per = self._bit_detector.feed_many(
                [st.bit for st in states],
                device,
                ts,
                bit,
                clears=present & ~bit,
                backfill=backfill,
                parking=parking,
            )
        out = {d: self._from_bit(states[d], evs) for d, evs in per.items()}
        return {d: evs for d, evs in out.items() if evs}

    def advance_fleet(
        self,
        fleet: FleetEpisodes,
        states: Sequence[PanicState],
        bits: Sequence[EpisodeState],
        keys: _I64,
        watermark_ms: _I64,
    ) -> dict[int, list[AlertEvent]]:
        """:meth:`advance` of the devices ``keys`` whose alarm bits ``fleet`` holds."""
        per = fleet.advance_many(bits, keys, watermark_ms)
        out = {d: self._from_bit(states[d], evs) for d, evs in per.items()}
        return {d: evs for d, evs in out.items() if evs}

    @property
    def bit_detector(self) -> EpisodeDetector:
        """The edge detector of gps alarm bit 0."""
        return self._bit_detector

    def advance(self, state: PanicState, *, watermark_ms: int) -> list[AlertEvent]:
        """Move the watermark (finalizes buffered alarm-bit readings)."""
        return self._from_bit(
            state, self._bit_detector.advance(state.bit, watermark_ms=watermark_ms)
        )

    def advance_many(
        self, states: Sequence[PanicState], *, watermark_ms: int
    ) -> dict[int, list[AlertEvent]]:
        """:meth:`advance` every state (skips quiet ones); events by index."""
        per = self._bit_detector.advance_many([st.bit for st in states], watermark_ms=watermark_ms)
        out = {d: self._from_bit(states[d], evs) for d, evs in per.items()}
        return {d: evs for d, evs in out.items() if evs}

    def resolve(self, state: PanicState, *, at_ms: int | None = None) -> list[AlertEvent]:
        """A person resolved the alert: close it. ``at_ms``: event time of the resolution.

        Presses and edges at or before ``at_ms`` (default: the newest event
        time seen from the device) count as handled. No-op when none is active.
        """
        if state.active is None:
            return []
        number, started, last, source, late = state.active
        seen = [t for t in (state.max_ts_ms, state.bit.max_ts_ms) if t is not None]
        at = (max(seen) if seen else None) if at_ms is None else at_ms
        at = last if at is None else max(at, last)
        state.active = None
        state.resolved_upto_ms = (
            at if state.resolved_upto_ms is None else max(at, state.resolved_upto_ms)
        )
        return [self._event("close", number, started, last, source, late, closed=at)]

    def _seen(self, state: PanicState, ts: _I64) -> None:
        if ts.size:
            top = int(ts.max())
            if state.max_ts_ms is None or top > state.max_ts_ms:
                state.max_ts_ms = top

    def _from_bit(self, state: PanicState, events: list[EpisodeEvent]) -> list[AlertEvent]:
        # A bit episode's start is a rising edge; a late reading may move it earlier
        # (an update) or split the episode (a new open): both are edges to the latch.
        opened = [ev.episode for ev in events if ev.action in ("open", "update")]
        if not opened:
            return []
        ts = np.asarray([e.started_at_ms for e in opened], np.int64)
        late = np.asarray([e.late for e in opened], np.bool_)
        return self._edges(state, ts, late, "gps_alarm")

    def _edges(self, state: PanicState, ts: _I64, late: _BOOL, source: str) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        order = np.argsort(ts, kind="stable")
        for t, lt in zip(ts[order].tolist(), late[order].tolist(), strict=True):
            if state.resolved_upto_ms is not None and t <= state.resolved_upto_ms:
                continue
            if state.active is None:
                number = state.next_number
                state.next_number += 1
                state.active = [number, t, t, source, bool(lt)]
                out.append(self._event("open", number, t, t, source, bool(lt)))
                continue
            number, started, last, src, was_late = state.active
            if t < started or t > last:
                state.active = [
                    number,
                    min(started, t),
                    max(last, t),
                    source if t < started else src,
                    bool(lt) if t < started else was_late,
                ]
                out.append(self._event("update", *state.active))
        return out

    def _event(
        self,
        action: Action,
        number: int,
        started: int,
        last: int,
        source: str,
        late: bool,
        *,
        closed: int | None = None,
    ) -> AlertEvent:
        return AlertEvent(
            kind=self.kind,
            action=action,
            number=number,
            source=None,
            started_at_ms=started,
            ended_at_ms=None if closed is None else last,
            at_ms={"open": started, "update": last}.get(action, closed or last),
            late=late,
            details={"source": source},
        )


# -- 7. device fault -----------------------------------------------------------------------------


@dataclass(slots=True)
class FaultState:
    """Per-device state of :class:`DeviceFault`: one episode state per fault source."""

    sources: dict[str, EpisodeState] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {"sources": {k: v.to_dict() for k, v in self.sources.items()}}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> FaultState:
        """Inverse of :meth:`to_dict`."""
        return FaultState({k: EpisodeState.from_dict(v) for k, v in d["sources"].items()})


@dataclass(frozen=True, kw_only=True)
class DeviceFault:
    """``device_fault``: one episode per fault source, named in ``source`` and ``fault``.

    Sources: ``smoke_fault`` (smoke ``fault`` until ``normal``),
    ``button_tamper`` and ``button_fault`` (until ``restore``), and the gps
    alarm bits 4–8 (:data:`GPS_FAULT_BITS`; a rising edge opens, the bit back
    to 0 closes; the bit's level is carried across batches, so a bit held
    high opens once). Other readings of the device neither open nor close.
    """

    lateness_s: float = 30.0
    kind: ClassVar[str] = "device_fault"

    @functools.cached_property
    def _detector(self) -> EpisodeDetector:
        return _edge_detector(self.lateness_s)

    def new_state(self) -> FaultState:
        """A fresh per-device state."""
        return FaultState()

    def feed_smoke(
        self,
        state: FaultState,
        *,
        ts_ms: npt.ArrayLike,
        smoke_state: npt.ArrayLike,
        backfill: npt.ArrayLike | None = None,
    ) -> list[AlertEvent]:
        """Add smoke readings (``state`` strings)."""
        s = np.asarray(smoke_state)
        return self._source(state, "smoke_fault", ts_ms, s == "fault", s == "normal", backfill)

    def feed_button(
        self,
        state: FaultState,
        *,
        ts_ms: npt.ArrayLike,
        event: npt.ArrayLike,
        backfill: npt.ArrayLike | None = None,
    ) -> list[AlertEvent]:
        """Add button events; ``restore`` clears both tamper and fault."""
        e = np.asarray(event)
        restore = e == "restore"
        out = self._source(state, "button_tamper", ts_ms, e == "tamper", restore, backfill)
        out += self._source(state, "button_fault", ts_ms, e == "fault", restore, backfill)
        return out

    def feed_gps(
        self,
        state: FaultState,
        *,
        ts_ms: npt.ArrayLike,
        alarm: npt.ArrayLike,
        backfill: npt.ArrayLike | None = None,
    ) -> list[AlertEvent]:
        """Add fixes with their alarm DWORD (negative: the fix had none)."""
        a = np.asarray(alarm, np.int64)
        present = a >= 0
        out: list[AlertEvent] = []
        for bit, name in GPS_FAULT_BITS.items():
            on = present & ((a >> bit) & 1).astype(np.bool_)
            if name not in state.sources and not on.any():
                continue  # never raised: no state needed until the bit first rises
            out += self._source(state, name, ts_ms, on, present & ~on, backfill)
        return out

    def feed_gps_many(
        self,
        states: Sequence[FaultState],
        *,
        device: npt.ArrayLike,
        ts_ms: npt.ArrayLike,
        alarm: npt.ArrayLike,
        backfill: npt.ArrayLike | None = None,
        watch: set[int] | None = None,
    ) -> dict[int, list[AlertEvent]]:
        """:meth:`feed_gps` for a batch of many devices (``device`` indexes ``states``).

        Only devices with a fault bit set in the batch, or a fault source
        already under way, are looked at: the rest cost nothing per device.
        ``watch`` (kept by the caller across batches): a superset of the
        devices with fault sources; only those are looked up (every device of
        the batch without it). Devices given a source here are added to it.
        """
        ts = _ts(ts_ms)
        dev = np.asarray(device, np.int64)
        a = np.asarray(alarm, np.int64)
        n = ts.shape[0]
        if dev.shape != (n,) or a.shape != (n,):
            raise ValueError("device and alarm must match ts_ms")
        bf = _bool(backfill, n, "backfill", False)
        present = a >= 0
        watched: dict[str, set[int]] = {}
        if watch is None:
            look: list[int] = np.unique(dev).tolist()
        else:
            seen = np.zeros(len(states), np.bool_)
            seen[dev] = True
            look = [d for d in watch if seen[d]]
        for d in look:
            sources = states[d].sources
            if sources:
                for name in sources:
                    watched.setdefault(name, set()).add(d)
        out: dict[int, list[AlertEvent]] = {}
        raised = np.bitwise_or.reduce(a[present]) if present.any() else 0
        for bit, name in GPS_FAULT_BITS.items():
            if not (raised >> bit) & 1 and name not in watched:
                continue  # no reading raises the bit and no source is under way
            on = present & ((a >> bit) & 1).astype(np.bool_)
            devs = watched.get(name, set()) | set(np.unique(dev[on]).tolist())
            if not devs:
                continue
            ids = np.fromiter(sorted(devs), np.int64)
            sel = np.isin(dev, ids)
            sub = []
            for d in ids.tolist():
                st = states[d].sources.get(name)
                if st is None:
                    st = states[d].sources[name] = EpisodeState()
                    if watch is not None:
                        watch.add(d)
                sub.append(st)
            per = self._detector.feed_many(
                sub,
                np.searchsorted(ids, dev[sel]),
                ts[sel],
                on[sel],
                clears=(present & ~on)[sel],
                backfill=bf[sel],
            )
            for k, evs in per.items():
                out.setdefault(int(ids[k]), []).extend(
                    _alerts(self.kind, evs, _fault_details(name), source=name)
                )
        return out

    def advance_many(
        self, states: Sequence[FaultState], *, watermark_ms: int
    ) -> dict[int, list[AlertEvent]]:
        """:meth:`advance` every state (skips sources with nothing under way); events by index."""
        out: dict[int, list[AlertEvent]] = {}
        for d, state in enumerate(states):
            for name, st in state.sources.items():
                if st.quiet:
                    if st.watermark_ms is None or watermark_ms > st.watermark_ms:
                        st.watermark_ms = watermark_ms
                    continue
                events = self._detector.advance(st, watermark_ms=watermark_ms)
                if events:
                    out.setdefault(d, []).extend(
                        _alerts(self.kind, events, _fault_details(name), source=name)
                    )
        return out

    def advance(self, state: FaultState, *, watermark_ms: int) -> list[AlertEvent]:
        """Move the watermark for every source."""
        out: list[AlertEvent] = []
        for name, st in state.sources.items():
            events = self._detector.advance(st, watermark_ms=watermark_ms)
            out += _alerts(self.kind, events, _fault_details(name), source=name)
        return out

    def _source(
        self,
        state: FaultState,
        name: str,
        ts_ms: npt.ArrayLike,
        on: _BOOL,
        off: _BOOL,
        backfill: npt.ArrayLike | None,
    ) -> list[AlertEvent]:
        st = state.sources.get(name)
        if st is None:
            if not on.any():
                return []
            st = state.sources[name] = EpisodeState()
        events = self._detector.feed(st, _ts(ts_ms), on, clears=off, backfill=backfill)
        return _alerts(self.kind, events, _fault_details(name), source=name)


def _fault_details(name: str) -> Callable[[Episode], dict[str, Any]]:
    return lambda _ep: {"fault": name}


# -- 8. clock skew -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClockSkew(_EpisodeRule):
    """``clock_skew``: the device's ``ts`` differs from receive time by > 300 s (live clock only).

    Evaluated on the receive-time axis (``started_at`` is the receive time of
    the first skewed message), because a skewed device clock is exactly what
    makes its own ``ts`` untrustworthy; backfilled readings are old on
    purpose and neither open nor close. For a message carrying several
    fixes, the newest fix represents it. Under the event clock, :meth:`feed`
    does nothing. Details: ``skew_s`` (``ts - received``, the largest in
    magnitude).
    """

    open_after_s: float = 0.0
    close_after_s: float = 0.0
    max_skew_s: float = 300.0
    kind: ClassVar[str] = "clock_skew"
    progress: ClassVar[bool] = False

    def feed(
        self,
        state: EpisodeState,
        *,
        ts_ms: npt.ArrayLike,
        received_ms: npt.ArrayLike,
        live_clock: bool,
        backfill: npt.ArrayLike | None = None,
    ) -> list[AlertEvent]:
        """Add one device's readings with their receive times; return the alert events."""
        if not live_clock:
            return []
        ts = _ts(ts_ms)
        _, rx, cond = self._cond(np.zeros(ts.shape[0], np.int64), ts, received_ms, backfill)
        if rx.size == 0:
            return []
        return _alerts(self.kind, self.detector.feed(state, rx, **cond), self._details)

    def feed_many(
        self,
        states: Sequence[EpisodeState],
        *,
        device: npt.ArrayLike,
        ts_ms: npt.ArrayLike,
        received_ms: npt.ArrayLike,
        live_clock: bool,
        backfill: npt.ArrayLike | None = None,
        parking: Parking | None = None,
    ) -> Mapping[int, list[AlertEvent]]:
        """:meth:`feed` for a batch of many devices (``device`` indexes ``states``)."""
        if not live_clock:
            return {}
        ts = _ts(ts_ms)
        dev = np.asarray(device, np.int64)
        dev, rx, cond = self._cond(dev, ts, received_ms, backfill)
        return self._many(states, dev, rx, cond, parking=parking)

    def _cond(
        self,
        dev: _I64,
        ts: _I64,
        received_ms: npt.ArrayLike,
        backfill: npt.ArrayLike | None,
    ) -> tuple[_I64, _I64, dict[str, Any]]:
        n = ts.shape[0]
        rx = _ts(received_ms)
        if rx.shape != (n,) or dev.shape != (n,):
            raise ValueError("received_ms and device must match ts_ms")
        live = ~_bool(backfill, n, "backfill", False)
        ts, rx, dev = ts[live], rx[live], dev[live]
        # One reading per message (device and receive time): the newest fix in it.
        order = np.lexsort((ts, rx, dev))
        ts, rx, dev = ts[order], rx[order], dev[order]
        last = np.ones(ts.shape[0], np.bool_)
        last[:-1] = (rx[1:] != rx[:-1]) | (dev[1:] != dev[:-1])
        ts, rx, dev = ts[last], rx[last], dev[last]
        skew_s = (ts - rx) / 1000.0
        skewed = np.abs(skew_s) > self.max_skew_s
        return dev, rx, {"meets": skewed, "value": np.abs(skew_s), "tag": skew_s}

    def _details(self, ep: Episode) -> dict[str, Any]:
        return {"skew_s": _num(ep.tag_at_max, 3)}
