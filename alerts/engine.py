"""The alerts engine: committed ingest batches in, alert changes out (pure, synchronous).

:class:`AlertEngine` holds the rules of contract §3 with one state per device
and rule (lists indexed by ``devices.key``), the fleet prepared for the
geofence kernels (:class:`alerts.geometry.FleetGeometry`) and the filings. Per
batch (:meth:`AlertEngine.process`) it computes, for all GPS fixes at once,
the projected positions, speed (derived from consecutive fixes when the
device sent none), speed limit, distance to the assigned routes, service
window, school day and filing masks, feeds every rule's ``feed_many`` and
turns the rules' events into :class:`alerts.store.EpisodeChange` values; on
every clock tick (:meth:`AlertEngine.tick`) it moves the watermarks so that
silent devices go offline and decisions that became certain are emitted.
:mod:`alerts.runner` does the I/O around it.

Clocks. Under the **event clock** the engine's "now" is the newest event time
it has seen (replays and simulations give the alerts live traffic would);
under the **live clock** it is wall time. A device's watermark is that now
minus the allowed lateness; under the live clock it is shifted by the
device's clock offset (``ts`` minus receive time) when that is more than
:data:`SKEW_TOLERANCE_MS`, so a slow clock does not make everything it sends
"late". ``device_offline`` counts silence in event time under the event
clock and in receive time under the live clock.

Duplicates (``new`` false) are not fed to the rules: they were seen before,
or they are in the database that the state was rebuilt from.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from alerts import _fleet as kn
from alerts.episodes import EpisodeState, Parking
from alerts.fleet import ACTIONS, NO_TS, FleetEpisodes
from alerts.geometry import Filing, FilingIndex, FleetGeometry, WindowEdges
from alerts.rules import (
    AlertEvent,
    ClockSkew,
    DeviceFault,
    DeviceOffline,
    FaultState,
    FleetAlerts,
    OfflineBook,
    OfflineState,
    OutOfHours,
    PanicButton,
    PanicState,
    RouteDeviation,
    SmokeAlarm,
    Speeding,
    ended_ms,
)
from alerts.store import EpisodeChange
from alerts.warm import warm_up
from core.registry import Device, Registry
from core.settings import Settings
from geofence import speed_limit_kmh
from ingest import IngestBatch

__all__ = [
    "SKEW_TOLERANCE_MS",
    "AlertEngine",
    "Clock",
    "RuleSet",
    "coalesce",
    "coalesce_columns",
    "fleet_changes",
]

Clock = Literal["live", "event"]
_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_BOOL = npt.NDArray[np.bool_]

#: Device clock offsets smaller than this (ms) are latency, not skew: left alone.
SKEW_TOLERANCE_MS: Final = 60_000
#: Speed is derived only between fixes at most this far apart (ms).
_SPEED_GAP_MS: Final = 60_000
#: Event-clock ticks happen when the clock moved at least this much (ms).
_TICK_EVERY_MS: Final = 1_000
#: Kinds whose rules the tick runs device by device (:meth:`AlertEngine._advance_other_rules`).
_PY_KINDS: Final = frozenset({"smoke_alarm", "clock_skew", "panic_button", "device_fault"})


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The eight rules with their thresholds."""

    speeding: Speeding
    deviation: RouteDeviation
    out_of_hours: OutOfHours
    offline: DeviceOffline
    smoke: SmokeAlarm
    panic: PanicButton
    fault: DeviceFault
    skew: ClockSkew
    lateness_s: float

    @staticmethod
    def from_settings(settings: Settings, *, clock: Clock) -> RuleSet:
        """Thresholds from the settings (contract §3 defaults)."""
        late = settings.allowed_lateness_s
        every = settings.progress_every_s
        return RuleSet(
            speeding=Speeding(
                open_after_s=settings.speeding_open_s,
                close_after_s=settings.speeding_close_s,
                default_limit_kmh=settings.default_limit_kmh,
                lateness_s=late,
                progress_every_s=every,
            ),
            deviation=RouteDeviation(
                open_after_s=settings.deviation_open_s,
                close_after_s=settings.deviation_close_s,
                lateness_s=late,
                progress_every_s=every,
            ),
            out_of_hours=OutOfHours(
                open_after_s=settings.out_of_hours_open_s,
                close_after_s=settings.out_of_hours_close_s,
                moving_kmh=settings.moving_kmh,
                lateness_s=late,
                progress_every_s=every,
            ),
            # Live: silence is measured on receive times, which are never out of order.
            offline=DeviceOffline(lateness_s=late if clock == "event" else 0.0),
            smoke=SmokeAlarm(lateness_s=late),
            panic=PanicButton(lateness_s=late),
            fault=DeviceFault(lateness_s=late),
            skew=ClockSkew(max_skew_s=settings.clock_skew_max_s, lateness_s=0.0),
            lateness_s=late,
        )


class _States:
    """Per-rule state lists indexed by device key (grown as devices are registered)."""

    def __init__(self, rules: RuleSet) -> None:
        self.speeding: list[EpisodeState] = []
        self.deviation: list[EpisodeState] = []
        self.out_of_hours: list[EpisodeState] = []
        self.smoke: list[EpisodeState] = []
        self.skew: list[EpisodeState] = []
        self.panic: list[PanicState] = []
        self.fault: list[FaultState] = []
        self.offline: list[OfflineState | None] = []
        #: The offline states' times in fleet-wide arrays (DeviceOffline fast paths).
        self.offline_book = OfflineBook()
        #: The GPS episode rules' states in fleet-wide arrays, run by compiled kernels;
        #: the lists above hold only the devices handed to Python (see alerts.fleet).
        self.fleet = {
            "speeding": FleetEpisodes(rules.speeding.detector),
            "deviation": FleetEpisodes(rules.deviation.detector),
            "out_of_hours": FleetEpisodes(rules.out_of_hours.detector),
            "panic": FleetEpisodes(rules.panic.bit_detector, positions=False),
        }
        #: ``panic[k].bit`` for every device, in key order (the panic fleet's states).
        self.panic_bits: list[EpisodeState] = []
        #: Quiet states parked in fleet-wide arrays (EpisodeDetector.feed_many).
        self.parking = {
            "skew": Parking(positions=False),
        }

    def grow(self, size: int) -> None:
        for states in (self.speeding, self.deviation, self.out_of_hours, self.smoke, self.skew):
            states.extend(EpisodeState() for _ in range(size - len(states)))
        fresh = [PanicState() for _ in range(size - len(self.panic))]
        self.panic.extend(fresh)
        self.panic_bits.extend(p.bit for p in fresh)
        self.fault.extend(FaultState() for _ in range(size - len(self.fault)))
        self.offline.extend(None for _ in range(size - len(self.offline)))
        self.offline_book.ensure(size)


def _grow(array: npt.NDArray[Any], size: int, fill: Any) -> npt.NDArray[Any]:
    if array.size >= size:
        return array
    out = np.full(size, fill, dtype=array.dtype)
    out[: array.size] = array
    return out


class AlertEngine:
    """Rules over committed batches; see the module docstring."""

    def __init__(
        self,
        rules: RuleSet,
        *,
        clock: Clock,
        registry: Registry,
        filings: Iterable[Filing] = (),
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        warm_up()  # compile every kernel now, not on the first batch
        self.rules = rules
        self.clock: Clock = clock
        self._wall_ms = now_ms or (lambda: int(dt.datetime.now(dt.UTC).timestamp() * 1000))
        self._lateness_ms = round(rules.lateness_s * 1000)
        self.states = _States(rules)
        self._offset_ms: _I64 = np.zeros(0, dtype=np.int64)
        self._last_ts: _I64 = np.zeros(0, dtype=np.int64)
        self._last_x: _F64 = np.zeros(0)
        self._last_y: _F64 = np.zeros(0)
        #: Newest event time seen (event clock "now"), and the first one.
        self.event_now_ms: int | None = None
        self.first_event_ms: int | None = None
        self._last_tick_ms: int | None = None
        #: Devices whose episode rules may have something under way (ticks visit only these).
        self._busy: set[int] = set()
        #: Of those, the devices whose smoke, skew, panic or fault states may have
        #: something under way (the rules still run in Python, device by device).
        self._busy_py: set[int] = set()
        #: Devices that may have a fault source (DeviceFault.feed_gps_many looks only at these).
        self._fault_watch: set[int] = set()
        #: Devices checked for silence (all registered, not retired); None: to be listed.
        self._offline_keys: _I64 | None = None
        self._filings: list[Filing] = list(filings)
        self.registry = registry
        self.geometry = FleetGeometry(registry)
        self.filings = FilingIndex(self._filings, self.geometry)
        self._route_ids: list[str] = []
        #: Service-window edges of open episodes: deviation's window end, out of hours' next
        #: start (made by set_registry, with the geometry they belong to).
        self._edges: tuple[WindowEdges, WindowEdges]
        self.set_registry(registry)

    # -- configuration ---------------------------------------------------------------------

    def set_registry(self, registry: Registry) -> None:
        """A new fleet: prepare its geometry; keep every known device's state."""
        self.registry = registry
        self.geometry = FleetGeometry(registry)
        self._edges = (
            WindowEdges(self.geometry, start=False),
            WindowEdges(self.geometry, start=True),
        )
        self.filings = FilingIndex(self._filings, self.geometry)
        self._route_ids = [*self.geometry.route_ids, *self.filings.detour_route_ids]
        self._offline_keys = None
        size = max(registry.devices, default=-1) + 1
        self._ensure(size)
        book = self.states.offline_book
        for key, device in registry.devices.items():
            st = self.states.offline[key]
            if st is not None and st.offline_after_s != float(device.offline_after_s):
                book.sync_to(key, st)
                st.offline_after_s = float(device.offline_after_s)
                book.add(key, st)

    def set_filings(self, filings: Iterable[Filing]) -> None:
        """Replace the movement filings and detours."""
        self._filings = list(filings)
        self.filings = FilingIndex(self._filings, self.geometry)
        self._route_ids = [*self.geometry.route_ids, *self.filings.detour_route_ids]

    def _ensure(self, size: int) -> None:
        self.states.grow(size)
        self._offset_ms = _grow(self._offset_ms, size, 0)
        self._last_ts = _grow(self._last_ts, size, np.iinfo(np.int64).min)
        self._last_x = _grow(self._last_x, size, np.nan)
        self._last_y = _grow(self._last_y, size, np.nan)

    def _offline_state(self, key: int) -> OfflineState:
        st = self.states.offline[key]
        if st is None:
            device = self.registry.devices.get(key)
            threshold = float(device.offline_after_s) if device else 300.0
            if self.clock == "event":
                since = self.first_event_ms if self.first_event_ms is not None else 0
            else:
                since = int(device.registered_at.timestamp() * 1000) if device else self._wall_ms()
            st = self.rules.offline.new_state(offline_after_s=threshold, since_ms=since)
            self.states.offline[key] = st
            self.states.offline_book.add(key, st)
        return st

    # -- batches -----------------------------------------------------------------------------

    def process(self, batch: IngestBatch, *, replay: bool = False) -> list[EpisodeChange]:
        """Feed one committed batch to the rules; return the alert changes it decides.

        ``replay``: stored readings replayed after a restart; panic presses and
        edges are left out (latched alarms are seeded from their alert rows, and
        a press already resolved must not latch again).
        """
        events = _Found()
        channels = [batch.gps, batch.heartbeat, batch.smoke, batch.button]
        top = max((int(c.device_key.max()) for c in channels if len(c)), default=-1)
        if top < 0:
            return []
        self._ensure(top + 1)
        self._observe_clocks(channels, batch.gps.backfill)
        self._heard(channels, events)
        self._gps(batch, events, replay=replay)
        self._smoke(batch, events)
        self._button(batch, events, replay=replay)
        return self._changes(events)

    def _observe_clocks(self, channels: Sequence[Any], gps_backfill: _BOOL) -> None:
        """The event clock's now, and (live clock) each device's clock offset."""
        live = [c.new & ~gps_backfill if i == 0 else c.new for i, c in enumerate(channels)]
        ts = np.concatenate([c.ts_ms[m] for c, m in zip(channels, live, strict=True)])
        if ts.size == 0:
            return
        if self.clock == "event":
            # A replay runs faster than real time, so receive times say nothing about
            # a device's clock; every reading moves the event clock.
            newest = int(ts.max())
            if self.event_now_ms is None or newest > self.event_now_ms:
                self.event_now_ms = newest
            if self.first_event_ms is None:
                self.first_event_ms = int(ts.min())
            return
        keys = np.concatenate(
            [c.device_key[m].astype(np.int64) for c, m in zip(channels, live, strict=True)]
        )
        lag = ts - np.concatenate([c.received_ms[m] for c, m in zip(channels, live, strict=True)])
        order = np.argsort(keys, kind="stable")
        keys, lag = keys[order], lag[order]
        last = np.r_[keys[1:] != keys[:-1], True]
        offset = lag[last]
        offset[np.abs(offset) < SKEW_TOLERANCE_MS] = 0
        self._offset_ms[keys[last]] = offset

    def _heard(self, channels: Sequence[Any], events: _Found) -> None:
        keys = np.concatenate([c.device_key for c in channels]).astype(np.int64)
        if self.clock == "event":
            heard = np.concatenate([c.ts_ms for c in channels])
        else:
            heard = np.concatenate([c.received_ms for c in channels])
        if self.first_event_ms is None and heard.size:
            self.first_event_ms = int(heard.min())
        book = self.states.offline_book
        unknown = keys[~book.known[keys]]
        for k in np.unique(unknown).tolist():
            self._offline_state(k)
        states: list[OfflineState] = self.states.offline  # type: ignore[assignment]
        found = self.rules.offline.feed_many(states, device=keys, heard_ms=heard, book=book)
        for d, evs in found.items():
            events[d] += evs

    def _gps(self, batch: IngestBatch, events: _Found, *, replay: bool) -> None:
        gps = batch.gps
        if len(gps) == 0 or not gps.new.any():
            return
        g = gps.select(gps.new) if not gps.new.all() else gps
        keys = g.device_key.astype(np.int64)
        ts = g.ts_ms
        lon, lat = g.lon, g.lat
        bf = g.backfill
        x, y = self.geometry.project(lon, lat)
        speed = self._speed(keys, ts, x, y, g.speed_kmh.astype(np.float64))
        bus = self.geometry.bus_of(keys)
        routed = self.geometry.routed(bus)
        has_bus = bus >= 0
        st = self.states
        r = self.rules

        limit = speed_limit_kmh(
            x, y, ts, zones=self.geometry.zones, default_kmh=r.speeding.default_limit_kmh
        )
        self._collect(
            events,
            r.speeding.feed_many(
                st.speeding,
                device=keys,
                ts_ms=ts,
                speed_kmh=speed,
                limit_kmh=limit,
                lon_deg=lon,
                lat_deg=lat,
                backfill=bf,
                fleet=st.fleet["speeding"],
            ),
        )

        window, school = self.geometry.calendar_masks(ts, bus)
        rd = self.geometry.distances(x, y, bus)
        suppressed, det = self.filings.detour(x, y, bus, ts)
        on_detour = det.within_corridor
        nearer = det.distance_m < rd.distance_m
        distance = np.where(nearer, det.distance_m, rd.distance_m)
        n_main = len(self.geometry.route_ids)
        route_index = np.where(nearer, det.route_index + n_main, rd.route_index)
        if routed.any():
            self._collect(
                events,
                r.deviation.feed_many(
                    st.deviation,
                    device=keys,
                    ts_ms=ts,
                    distance_m=distance,
                    within_corridor=rd.within_corridor | on_detour,
                    route_index=route_index,
                    route_ids=self._route_ids,
                    in_service_window=window & routed,
                    school_day=school,
                    filing_covers=suppressed,
                    lon_deg=lon,
                    lat_deg=lat,
                    backfill=bf,
                    fleet=st.fleet["deviation"],
                ),
            )

        if has_bus.any():
            # Devices without a bus are never "outside service".
            self._collect(
                events,
                r.out_of_hours.feed_many(
                    st.out_of_hours,
                    device=keys,
                    ts_ms=ts,
                    speed_kmh=speed,
                    in_service_window=window | ~has_bus,
                    school_day=school | ~has_bus,
                    filing_covers=self.filings.movement_covers(bus, ts),
                    lon_deg=lon,
                    lat_deg=lat,
                    backfill=bf,
                    fleet=st.fleet["out_of_hours"],
                ),
            )

        alarm = g.alarm
        # Devices whose rules may now have something under way: a superset of the
        # readings meeting any condition (ticks then visit only these).
        maybe_py = (alarm > 0) | bf | (np.abs(ts - g.received_ms) > r.skew.max_skew_s * 1000)
        maybe = (
            (speed > limit)
            | (routed & window & ~(rd.within_corridor | on_detour))
            | ((speed >= r.out_of_hours.moving_kmh) & ~(window & school) & has_bus)
            | maybe_py
        )
        self._busy.update(np.unique(keys[maybe]).tolist())
        if maybe_py.any():
            self._busy_py.update(np.unique(keys[maybe_py]).tolist())
        if not replay:
            self._collect(
                events,
                r.panic.feed_gps_many(
                    st.panic,
                    device=keys,
                    ts_ms=ts,
                    alarm=alarm,
                    backfill=bf,
                    fleet=st.fleet["panic"],
                    bits=st.panic_bits,
                ),
            )
        self._collect(
            events,
            r.fault.feed_gps_many(
                st.fault, device=keys, ts_ms=ts, alarm=alarm, backfill=bf, watch=self._fault_watch
            ),
        )
        self._collect(
            events,
            r.skew.feed_many(
                st.skew,
                device=keys,
                ts_ms=ts,
                received_ms=g.received_ms,
                live_clock=self.clock == "live",
                backfill=bf,
                parking=st.parking["skew"],
            ),
        )

    def _speed(self, keys: _I64, ts: _I64, x: _F64, y: _F64, reported: _F64) -> _F64:
        """Reported speed, else derived from the previous fix of the same device (km/h)."""
        speed = reported.copy()
        missing = np.isnan(speed)
        if missing.any():
            prev_ts = np.r_[np.int64(0), ts[:-1]]
            prev_x = np.r_[np.nan, x[:-1]]
            prev_y = np.r_[np.nan, y[:-1]]
            first = np.r_[True, keys[1:] != keys[:-1]]
            prev_ts[first] = self._last_ts[keys[first]]
            prev_x[first] = self._last_x[keys[first]]
            prev_y[first] = self._last_y[keys[first]]
            gap = ts - prev_ts
            ok = missing & (gap > 0) & (gap <= _SPEED_GAP_MS)
            with np.errstate(invalid="ignore", divide="ignore"):
                derived = np.hypot(x - prev_x, y - prev_y) / (gap / 1000.0) * 3.6
            speed[ok] = derived[ok]
        last = np.r_[keys[1:] != keys[:-1], True]
        newer = ts[last] > self._last_ts[keys[last]]
        k = keys[last][newer]
        self._last_ts[k] = ts[last][newer]
        self._last_x[k] = x[last][newer]
        self._last_y[k] = y[last][newer]
        return speed

    def _smoke(self, batch: IngestBatch, events: _Found) -> None:
        smoke = batch.smoke
        for key, rows in _by_device(smoke.device_key, smoke.new):
            self._busy.add(key)
            self._busy_py.add(key)
            self._fault_watch.add(key)
            ts = smoke.ts_ms[rows]
            state = smoke.state[rows]
            events[key] += self.rules.smoke.feed(
                self.states.smoke[key],
                ts_ms=ts,
                smoke_state=state,
                obscuration=smoke.obscuration[rows].astype(np.float64),
            )
            events[key] += self.rules.fault.feed_smoke(
                self.states.fault[key], ts_ms=ts, smoke_state=state
            )

    def _button(self, batch: IngestBatch, events: _Found, *, replay: bool) -> None:
        button = batch.button
        for key, rows in _by_device(button.device_key, button.new):
            self._busy.add(key)
            self._busy_py.add(key)
            self._fault_watch.add(key)
            ts = button.ts_ms[rows]
            event = button.event[rows]
            if not replay:
                events[key] += self.rules.panic.feed_button(
                    self.states.panic[key], ts_ms=ts, event=event
                )
            events[key] += self.rules.fault.feed_button(
                self.states.fault[key], ts_ms=ts, event=event
            )

    @staticmethod
    def _collect(events: _Found, found: Mapping[int, list[AlertEvent]]) -> None:
        if isinstance(found, FleetAlerts):
            # Kept as columns; the Python detector's events join the others.
            events.columns.append(found)
            found = found.python
        for d, evs in found.items():
            events[d] += evs

    # -- clock ticks -------------------------------------------------------------------------

    def now_ms(self) -> int | None:
        """The engine's clock: newest event time (event clock) or wall time (live)."""
        return self.event_now_ms if self.clock == "event" else self._wall_ms()

    def tick(self, *, force: bool = False) -> list[EpisodeChange]:
        """Move every device's watermark to now − lateness; return the changes that became certain.

        Under the event clock it does nothing until the clock moved by a
        second since the last tick (unless ``force``).
        """
        now = self.now_ms()
        if now is None:
            return []
        if (
            not force
            and self._last_tick_ms is not None
            and now - self._last_tick_ms < _TICK_EVERY_MS
        ):
            return []
        self._last_tick_ms = now
        events = _Found()
        wm = now - self._lateness_ms
        self._advance_episode_rules(wm, events)
        self._advance_offline(now if self.clock == "live" else wm, events)
        return self._changes(events)

    def _advance_episode_rules(self, wm: int, events: _Found) -> None:
        """Advance the devices that may have something under way (:attr:`_busy`)."""
        if self._busy:
            self._advance_gps_rules(wm, events)
        if self._busy_py:
            self._advance_other_rules(wm, events)

    def _advance_gps_rules(self, wm: int, events: _Found) -> None:
        """The GPS episode rules, for every busy device at once (compiled)."""
        r, st = self.rules, self.states
        keys = np.fromiter(sorted(self._busy), np.int64, len(self._busy))
        kw = wm + self._offset_ms[keys]
        buses = self.geometry.bus_of(keys)
        fleet = st.fleet
        self._collect(events, r.speeding.advance_fleet(fleet["speeding"], st.speeding, keys, kw))
        # An open deviation closes at its service window's end, an out-of-hours
        # episode when the next window starts, even if the bus falls silent.
        last = fleet["deviation"].open_last_met(keys, st.deviation)
        self._collect(
            events,
            r.deviation.advance_route_fleet(
                fleet["deviation"],
                st.deviation,
                keys,
                kw,
                self._cuts(False, last, buses, kw),
                route_ids=self._route_ids,
            ),
        )
        last = fleet["out_of_hours"].open_last_met(keys, st.out_of_hours)
        self._collect(
            events,
            r.out_of_hours.advance_fleet(
                fleet["out_of_hours"], st.out_of_hours, keys, kw, self._cuts(True, last, buses, kw)
            ),
        )
        quiet = (
            fleet["speeding"].quiet(keys, st.speeding)
            & fleet["deviation"].quiet(keys, st.deviation)
            & fleet["out_of_hours"].quiet(keys, st.out_of_hours)
        )
        if quiet.any():
            self._busy.difference_update(keys[quiet].tolist())

    def _advance_other_rules(self, wm: int, events: _Found) -> None:
        """Smoke, clock skew, panic and fault, device by device (:attr:`_busy_py`)."""
        r, st = self.rules, self.states
        wall = self._wall_ms()
        lots = st.parking
        keys = np.fromiter(sorted(self._busy_py), np.int64, len(self._busy_py))
        kw = wm + self._offset_ms[keys]
        panic = st.fleet["panic"]
        self._collect(events, r.panic.advance_fleet(panic, st.panic, st.panic_bits, keys, kw))
        panic_quiet = panic.quiet(keys, st.panic_bits)
        for k, at, busy in zip(keys.tolist(), kw.tolist(), (~panic_quiet).tolist(), strict=True):
            simple: list[tuple[Any, EpisodeState, int, Parking | None]] = [
                (r.smoke, st.smoke[k], at, None),
                (r.skew, st.skew[k], wall, lots["skew"]),
            ]
            for rule, s, when, lot in simple:
                if _idle(s, lot, k):
                    continue
                events[k] += rule.advance(s, watermark_ms=when)
                busy = busy or not s.quiet
            f = st.fault[k]
            if f.sources and not all(x.quiet for x in f.sources.values()):
                events[k] += r.fault.advance(f, watermark_ms=at)
                busy = busy or not all(x.quiet for x in f.sources.values())
            if not busy:
                self._busy_py.discard(k)

    def _cuts(self, start: bool, last_met: _I64, buses: _I64, wm: _I64) -> _I64:
        """Per device, the window edge after its open episode's last meeting reading.

        ``start``: the next window's start (out of hours), else the end of the
        window it is in (deviation); :data:`NO_TS` when there is no open
        episode, no bus, no such edge or the watermark has not passed it yet.
        """
        cuts = np.full(last_met.shape[0], NO_TS, np.int64)
        g = np.flatnonzero((last_met != NO_TS) & (buses >= 0))
        if g.size:
            edge = self._edges[int(start)].at(buses[g], last_met[g])
            ok = (edge != NO_TS) & (edge <= wm[g])
            cuts[g[ok]] = edge[ok]
        return cuts

    def _advance_offline(self, wm: int, events: _Found) -> None:
        if self._offline_keys is None:
            self._offline_keys = np.asarray(
                [k for k, d in self.registry.devices.items() if not d.retired], dtype=np.int64
            )
        keys = self._offline_keys
        book = self.states.offline_book
        for k in keys[~book.known[keys]].tolist():
            self._offline_state(k)
        found = self.rules.offline.advance_keys(self.states.offline, keys, book, watermark_ms=wm)
        for k, evs in found.items():
            events[k] += evs

    # -- restart -----------------------------------------------------------------------------

    def seed(
        self,
        *,
        last_heard_ms: dict[int, int],
        active: Iterable[tuple[int | None, str, int, dict[str, Any]]],
    ) -> None:
        """After a replay: last heard times, and the offline and panic alerts still open.

        ``active``: ``(device key, kind, started_at ms, details)`` of active alert rows.
        """
        for key, heard in last_heard_ms.items():
            if key >= len(self.states.offline) or key not in self.registry.devices:
                continue
            st = self._offline_state(key)
            self.states.offline_book.sync_to(key, st)
            if st.max_heard_ms is None:
                st.last_final_ms = st.max_heard_ms = heard
            elif heard > st.max_heard_ms:
                self.rules.offline.feed(st, heard_ms=[heard])
            self.states.offline_book.sync_from(key, st)
        for k, kind, started_ms, details in active:
            if k is None or k >= len(self.states.offline):
                continue
            if kind == "device_offline":
                off = self._offline_state(k)
                self.states.offline_book.sync_to(k, off)
                if not off.episodes:
                    seen = details.get("last_seen_at")
                    last = None if seen is None else _parse_ms(seen)
                    off.episodes.append([off.next_number, last, None])
                    off.next_number += 1
                self.states.offline_book.sync_from(k, off)
            elif kind == "panic_button":
                p = self.states.panic[k]
                if p.active is None:
                    source = details.get("source", "button")
                    p.active = [p.next_number, started_ms, started_ms, source, False]
                    p.next_number += 1

    # -- people ------------------------------------------------------------------------------

    def resolved(self, key: int, *, at_ms: int | None = None) -> None:
        """A person resolved the device's panic alert: later presses open a new one."""
        if key < len(self.states.panic):
            state = self.states.panic[key]
            panic = self.states.fleet["panic"]
            panic.ensure(len(self.states.panic))
            panic.take(key, state.bit)  # its newest time counts
            self.rules.panic.resolve(state, at_ms=at_ms)
            panic.admit(key, state.bit)

    # -- output ------------------------------------------------------------------------------

    def _changes(self, events: _Found) -> list[EpisodeChange]:
        out: list[EpisodeChange] = []
        devices = self.registry.devices
        for key, evs in events.items():
            if not evs:
                continue
            self._busy.add(key)
            if any(ev.kind in _PY_KINDS for ev in evs):
                self._busy_py.add(key)
            device = devices.get(key)
            if device is None:
                continue
            for ev in coalesce(evs):
                out.append(to_change(device.id, ev))
        for found in events.columns:
            self._busy.update(found.events.device.tolist())
            out += fleet_changes(found, devices)
        return out


class _Found(defaultdict[int, list[AlertEvent]]):
    """One process or tick's alert events per device; fleet runs' kept apart as columns."""

    def __init__(self) -> None:
        super().__init__(list)
        #: Fleet runs' events (their Python detector's events are in the mapping).
        self.columns: list[FleetAlerts] = []


def _idle(state: EpisodeState, lot: Parking | None, key: int) -> bool:
    """Nothing under way: parked (known quiet without a look at its buffer), or quiet."""
    return (lot is not None and lot.is_parked(key)) or state.quiet


def _parse_ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


def _by_device(device_key: npt.NDArray[Any], new: _BOOL) -> list[tuple[int, _I64]]:
    rows = np.flatnonzero(new)
    if rows.size == 0:
        return []
    keys = device_key[rows].astype(np.int64)
    out: dict[int, list[int]] = defaultdict(list)
    for k, i in zip(keys.tolist(), rows.tolist(), strict=True):
        out[k].append(i)
    return [(k, np.asarray(v, dtype=np.int64)) for k, v in out.items()]


def coalesce(events: Sequence[AlertEvent]) -> list[AlertEvent]:
    """One batch's events per episode reduced to what the store needs, in order.

    An open followed by updates becomes one open with the latest data; any
    number of updates one update; a close stays a close (after its open).
    """
    if len(events) == 1:
        # The common case (one change of one episode): as the loop below would give it.
        ev = events[0]
        return [ev if ev.action == "close" or ev.ended_at_ms is None else _with(ev, ev.action)]
    groups: dict[tuple[str, str | None, int, bool], list[AlertEvent]] = {}
    for ev in events:
        groups.setdefault((*ev.key, ev.late), []).append(ev)
    out: list[AlertEvent] = []
    for group in groups.values():
        last = group[-1]
        opened = any(e.action == "open" for e in group)
        closed = last.action == "close"
        if opened:
            out.append(_with(last, "open"))
        elif not closed:
            out.append(_with(last, "update"))
        if closed:
            out.append(last)
    return out


def fleet_changes(found: FleetAlerts, devices: Mapping[int, Device]) -> list[EpisodeChange]:
    """The store changes of a fleet run's columns: :func:`coalesce` and :func:`to_change`.

    The same changes, in the same order per device, as those two give of the
    run's :class:`AlertEvent`s, without making one per event; details are
    built only for the events that coalescing keeps. Devices not in
    ``devices`` are left out; so are the run's Python detector's events
    (``found.python``).
    """
    ev = found.events
    if ev.device.size == 0:
        return []
    rows, action, ended = coalesce_columns(
        ev.device, ev.ints[:, kn.M_NUMBER], ev.ints[:, kn.M_LATE], ev.action, ended_ms(ev)
    )
    i = ev.ints[rows]
    kind = found.kind
    columns = zip(
        ev.device[rows].tolist(),
        action.tolist(),
        i[:, kn.M_STARTED].tolist(),
        ended.tolist(),
        (i[:, kn.M_LATE] != 0).tolist(),
        found.details(rows),
        strict=True,
    )
    out: list[EpisodeChange] = []
    for key, a, started, end, late, details in columns:
        device = devices.get(key)
        if device is None:
            continue
        # As to_change gives it (no fault source), positional in field order.
        out.append(
            EpisodeChange(
                ACTIONS[a],
                kind,
                device.id,
                _dt(started),
                None if end == NO_TS else _dt(end),
                details,
                "~late" if late else "",
                late,
            )
        )
    return out


def coalesce_columns(
    device: _I64, number: _I64, late: _I64, action: _I64, end_ms: _I64
) -> tuple[_I64, _I64, _I64]:
    """:func:`coalesce` of events given as columns: (rows, actions, ``ended_at_ms``) to store.

    Events are grouped per episode (device, number, late); each group gives
    one open (it opened) or update (it did not close) from its latest event,
    without an end, and then its close if its latest event is one. Groups
    come in the order of their first event, a group's open before its close,
    as :func:`coalesce` gives them device by device. ``end_ms`` is
    :data:`NO_TS` for none; ``action`` holds the codes of :data:`ACTIONS`.
    """
    n = device.size
    if n == 0:
        none = np.zeros(0, np.int64)
        return none, none, none
    if n == 1 or bool(np.all(device[1:] > device[:-1])):
        # One event per device (the common case): each kept as it is, ended only if a close.
        return np.arange(n), action, np.where(action == kn.CLOSE, end_ms, NO_TS)
    order = np.lexsort((late, number, device))  # stable: a group's events stay in order
    d, nb, lt = device[order], number[order], late[order]
    new_group = np.ones(n, np.bool_)
    new_group[1:] = (d[1:] != d[:-1]) | (nb[1:] != nb[:-1]) | (lt[1:] != lt[:-1])
    start = np.flatnonzero(new_group)
    first = order[start]
    last = order[np.append(start[1:], n) - 1]
    opened = np.logical_or.reduceat(action[order] == kn.OPEN, start)
    closed = action[last] == kn.CLOSE
    lead = opened | ~closed
    rows = np.concatenate([last[lead], last[closed]])
    actions = np.concatenate(
        [np.where(opened[lead], kn.OPEN, kn.UPDATE), np.full(int(closed.sum()), kn.CLOSE)]
    )
    ended = np.concatenate([np.full(int(lead.sum()), NO_TS), end_ms[last[closed]]])
    # Back in the order of each group's first event, its open or update before its close.
    at = np.concatenate([first[lead], first[closed]])
    then = np.concatenate(
        [np.zeros(int(lead.sum()), np.int64), np.ones(int(closed.sum()), np.int64)]
    )
    keep = np.lexsort((then, at))
    return rows[keep], actions[keep].astype(np.int64), ended[keep].astype(np.int64)


def _with(ev: AlertEvent, action: Any) -> AlertEvent:
    return AlertEvent(
        kind=ev.kind,
        action=action,
        number=ev.number,
        source=ev.source,
        started_at_ms=ev.started_at_ms,
        ended_at_ms=ev.ended_at_ms if action == "close" else None,
        at_ms=ev.at_ms,
        late=ev.late,
        details=ev.details,
    )


@functools.lru_cache(maxsize=1 << 16)
def _dt(ms: int) -> dt.datetime:
    # Cached: an open episode's every update repeats its start (datetimes are immutable).
    return dt.datetime.fromtimestamp(ms / 1000.0, dt.UTC)


def episode_key(ev: AlertEvent) -> str:
    """The store's episode key: the fault source, and late episodes apart from live ones."""
    key = ev.source or ""
    return f"{key}~late" if ev.late else key


def to_change(device_id: str, ev: AlertEvent) -> EpisodeChange:
    """An alert event of the rules as a change for :func:`alerts.store.apply_changes`."""
    ended = ev.ended_at_ms
    # Positional, in field order (one per change).
    return EpisodeChange(
        ev.action,
        ev.kind,
        device_id,
        _dt(ev.started_at_ms),
        None if ended is None else _dt(ended),
        ev.details,
        episode_key(ev),
        ev.late,
    )
