"""One detector's episode states for the whole fleet, in arrays, run by compiled kernels.

:class:`FleetEpisodes` gives the results of :meth:`EpisodeDetector.feed_many`
and :meth:`EpisodeDetector.advance` (one state per device) for a whole
batch or clock tick in one compiled call (:mod:`alerts._fleet`): no Python
runs per device, whether the device is quiet or has an episode under way.
The kernels hand their events over as columns (:class:`FleetEvents`), from
which the rules build their alerts.

The rare cases stay with the Python detector, on the device's
:class:`EpisodeState` in the caller's list: a reading older than the
device's watermark (it goes to the late lane), more than ``capacity``
readings waiting in the reorder buffer (a device reporting many times a
second), or a late lane still open. The row is then handed to the state
(*evicted*); once the state is plain again (no late lane, the buffer and
the emitted episodes fit a row) it is taken back (*admitted*). The results
are the same either way: property tests compare every event with one
Python :meth:`EpisodeDetector.feed` per device.

While a row is hot, the device's :class:`EpisodeState` in the caller's
list is stale: read a device's state through :meth:`FleetEpisodes.state`,
or call :meth:`FleetEpisodes.release` to hand every row back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

from alerts import _fleet as kn
from alerts._core import MET, Buf, Core
from alerts.episodes import (
    Action,
    Episode,
    EpisodeDetector,
    EpisodeEvent,
    EpisodeState,
    Parking,
    _batch,
    _ms,
)

__all__ = ["NO_TS", "FleetEpisodes", "FleetEvents"]

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_BOOL = npt.NDArray[np.bool_]
_T = TypeVar("_T", bound=np.generic)

NO_TS: Final = kn.NO_TS
#: Action of each event code of the kernels.
ACTIONS: Final[tuple[Action, Action, Action]] = ("open", "update", "close")
#: The row arrays and parameters, as the kernels take them.
_Rows = tuple[
    "_BOOL", "_I64", "_F64", "_I64", "_F64", "npt.NDArray[np.int8]", "_I64", "_F64", "_I64"
]
#: A kernel call: (first group, event ints, event floats, events so far) -> (next group, events).
_Call = Callable[[int, "_I64", "_F64", int], tuple[int, int]]


def _zeros(shape: tuple[int, ...], dtype: np.dtype[_T]) -> npt.NDArray[_T]:
    """``np.zeros`` starting on a 64-byte cache line (so is each ``si`` row: 128 bytes)."""
    size = math.prod(shape) * dtype.itemsize
    raw = np.zeros(size + 64, np.uint8)
    at = -raw.ctypes.data % 64
    return raw[at : at + size].view(dtype).reshape(shape)


def _opt(v: int) -> int | None:
    return None if v == NO_TS else v


def _ts(v: int | None) -> int:
    return NO_TS if v is None else v


@dataclass(frozen=True)
class FleetEvents:
    """The events of one kernel run, as columns, and those of the Python detector.

    ``device``, ``action`` (0 open, 1 update, 2 close: :data:`ACTIONS`),
    ``ints`` (``M_*`` columns of :mod:`alerts._fleet`: number, started,
    opened, last met, closed or :data:`NO_TS`, late) and ``floats``
    (max value, tag at max, start lon/lat, end lon/lat, path m) hold one
    row per event of the rows, in order; ``python`` the events of devices
    the Python detector ran (a device's events are all in one or the other).
    :meth:`by_device` gives them as :class:`EpisodeEvent`s; the rules build
    their alerts from the columns directly (:class:`alerts.rules.FleetAlerts`).
    """

    device: _I64
    action: _I64
    ints: _I64
    floats: _F64
    python: dict[int, list[EpisodeEvent]] = field(default_factory=dict)

    def take(self, rows: _I64) -> FleetEvents:
        """The events of the rows ``rows``, in that order (without the Python detector's)."""
        return FleetEvents(self.device[rows], self.action[rows], self.ints[rows], self.floats[rows])

    def by_device(self) -> dict[int, list[EpisodeEvent]]:
        """Every event as an :class:`EpisodeEvent`, per device, in order."""
        out: dict[int, list[EpisodeEvent]] = {}
        rows = zip(
            self.device.tolist(),
            self.action.tolist(),
            self.ints.tolist(),
            self.floats.tolist(),
            strict=True,
        )
        for d, a, ri, rf in rows:
            out.setdefault(d, []).append(EpisodeEvent(ACTIONS[a], _episode(ri, rf)))
        for d, events in self.python.items():
            out.setdefault(d, []).extend(events)
        return out


class FleetEpisodes:
    """Every device's :class:`EpisodeState` of one detector, one row per device.

    ``capacity``: readings a row buffers (those not yet older than the
    watermark: 30 at one fix a second); a device needing more is run by the
    Python detector until it fits again. ``emitted``: episodes a row keeps
    (active, or closed within the lateness); a settle that could keep more
    (a condition flapping faster than the lateness) is done in Python.
    Memory per device is about ``capacity × 48 + emitted × 104 + 209`` bytes
    (3.3 KB with the defaults).
    """

    def __init__(
        self,
        detector: EpisodeDetector,
        *,
        capacity: int = 48,
        emitted: int = 8,
        positions: bool = True,
    ) -> None:
        if capacity < 2:
            raise ValueError("capacity must be >= 2")
        if emitted < 4:
            raise ValueError("emitted must be >= 4")
        self.detector = detector
        self.capacity = capacity
        self.max_emitted = emitted
        #: Quiet states of devices run by the Python detector (too busy for a row),
        #: parked in fleet-wide arrays as :meth:`EpisodeDetector.feed_many` does.
        #: ``positions``: whether the rule's readings carry positions (see Parking).
        self.parking = Parking(positions=positions)
        close_ms = detector._close_ms
        gap_ms = detector._gap_ms
        self.params: _I64 = np.zeros(kn.NP_, np.int64)
        self.params[kn.P_OPEN] = detector._open_ms
        self.params[kn.P_CLOSE] = -1 if close_ms is None else close_ms
        self.params[kn.P_GAP] = -1 if gap_ms is None else gap_ms
        self.params[kn.P_LATENESS] = _ms(detector.lateness_s)
        self.params[kn.P_PATH] = int(detector.track_path)
        self.params[kn.P_PROGRESS] = int(detector.report_progress)
        self.params[kn.P_SKIP_UNDUE] = 1
        self.params[kn.P_PROGRESS_EVERY] = detector._progress_ms
        e = emitted
        self.hot: _BOOL = np.zeros(0, np.bool_)
        self.si: _I64 = np.zeros((0, kn.NI), np.int64)
        self.sf: _F64 = np.zeros((0, kn.NF), np.float64)
        #: The reorder buffer, one record per reading; bts, bf, bk are views of it.
        self.buf: _I64 = np.zeros((0, capacity, kn.BW), np.int64)
        self.bts, self.bf, self.bk = kn.buffer_views(self.buf)
        self.mi: _I64 = np.zeros((0, e, kn.MI), np.int64)
        self.mf: _F64 = np.zeros((0, e, kn.MF), np.float64)
        self._scratch = kn.scratch(capacity)
        self._per_device = kn.events_per_device(capacity, emitted)

    def __len__(self) -> int:
        return int(self.hot.shape[0])

    # -- rows ------------------------------------------------------------------------------

    def ensure(self, size: int) -> None:
        """Rows for ``size`` devices; new rows hold a fresh state (grown geometrically)."""
        have = len(self)
        if size <= have:
            return
        rows = max(size, 2 * have, 64)
        for name in ("hot", "si", "sf", "buf", "mi", "mf"):
            old = getattr(self, name)
            new = _zeros((rows, *old.shape[1:]), old.dtype)
            new[:have] = old
            setattr(self, name, new)
        self.bts, self.bf, self.bk = kn.buffer_views(self.buf)
        self.hot[have:] = True
        fresh = self.si[have:]
        for col in (kn.I_LAST_TS, kn.I_WM, kn.I_MAX_TS, kn.I_DUE):
            fresh[:, col] = NO_TS
        fresh[:, kn.I_NEXT] = 1
        self.sf[have:] = math.nan
        self.sf[have:, kn.F_PATH] = 0.0
        self.sf[have:, kn.F_PENDING] = 0.0

    def evict(self, d: int, st: EpisodeState) -> None:
        """Hand row ``d`` to its Python state (no-op when the row is not hot)."""
        if d >= len(self) or not self.hot[d]:
            return
        self.hot[d] = False
        si, sf = self.si[d].tolist(), self.sf[d].tolist()
        st.core = Core(
            phase=si[kn.I_PHASE],
            run_start_ms=si[kn.I_RUN_START],
            opened_at_ms=si[kn.I_OPENED],
            last_met_ms=si[kn.I_LAST_MET],
            clear_start_ms=si[kn.I_CLEAR_START],
            last_ts_ms=_opt(si[kn.I_LAST_TS]),
            prev_lon=sf[kn.F_PREV_LON],
            prev_lat=sf[kn.F_PREV_LAT],
            max_value=sf[kn.F_MAX],
            tag_at_max=sf[kn.F_TAG],
            start_lon=sf[kn.F_START_LON],
            start_lat=sf[kn.F_START_LAT],
            end_lon=sf[kn.F_END_LON],
            end_lat=sf[kn.F_END_LAT],
            path_m=sf[kn.F_PATH],
            pending_m=sf[kn.F_PENDING],
            late=bool(si[kn.I_LATE]),
        )
        n = si[kn.I_NBUF]
        st.buf = Buf(self.bts[d, :n].copy(), self.bf[d, :n].copy(), self.bk[d, :n].copy())
        st.pending = []
        st.pending_n = 0
        st.watermark_ms = _opt(si[kn.I_WM])
        st.max_ts_ms = _opt(si[kn.I_MAX_TS])
        st.due_ms = _opt(si[kn.I_DUE])
        st.next_number = si[kn.I_NEXT]
        st.orphans = si[kn.I_ORPHANS]
        m = si[kn.I_NEM]
        st.emitted = [
            _episode(ri, rf)
            for ri, rf in zip(self.mi[d, :m].tolist(), self.mf[d, :m].tolist(), strict=True)
        ]

    def admit(self, d: int, st: EpisodeState) -> bool:
        """Take a plain Python state back into row ``d``; whether it fits (else it stays)."""
        if self.hot[d] or st.late_lane is not None or st.is_late_lane:
            return bool(self.hot[d])
        if self.parking.is_parked(d):
            return False  # quiet, and cheap where it is
        if len(st.buf) + st.pending_n > self.capacity or len(st.emitted) > self.max_emitted:
            return False  # (before merging what is kept aside: a busy device stays cheap)
        st._absorb()
        n, m = len(st.buf), len(st.emitted)
        c = st.core
        si = self.si[d]
        si[:] = 0
        si[kn.I_PHASE] = c.phase
        si[kn.I_RUN_START] = c.run_start_ms
        si[kn.I_OPENED] = c.opened_at_ms
        si[kn.I_LAST_MET] = c.last_met_ms
        si[kn.I_CLEAR_START] = c.clear_start_ms
        si[kn.I_LAST_TS] = _ts(c.last_ts_ms)
        si[kn.I_LATE] = int(c.late)
        si[kn.I_WM] = _ts(st.watermark_ms)
        si[kn.I_MAX_TS] = _ts(st.max_ts_ms)
        si[kn.I_DUE] = _ts(st.due_ms)
        si[kn.I_NEXT] = st.next_number
        si[kn.I_NBUF] = n
        si[kn.I_NEM] = m
        si[kn.I_ORPHANS] = st.orphans
        si[kn.I_NMET] = int(np.count_nonzero(st.buf.k[:, 0] == MET))
        self.sf[d] = (
            c.prev_lon,
            c.prev_lat,
            c.max_value,
            c.tag_at_max,
            c.start_lon,
            c.start_lat,
            c.end_lon,
            c.end_lat,
            c.path_m,
            c.pending_m,
        )
        self.bts[d, :n] = st.buf.ts
        self.bf[d, :n] = st.buf.f
        self.bk[d, :n] = st.buf.k
        for r, ep in enumerate(st.emitted):
            self.mi[d, r] = (
                ep.number,
                ep.started_at_ms,
                ep.opened_at_ms,
                ep.last_met_ms,
                _ts(ep.closed_at_ms),
                int(ep.late),
            )
            self.mf[d, r] = (
                ep.max_value,
                ep.tag_at_max,
                ep.start_lon,
                ep.start_lat,
                ep.end_lon,
                ep.end_lat,
                ep.path_m,
            )
        self.hot[d] = True
        return True

    def state(self, d: int, states: Sequence[EpisodeState]) -> EpisodeState:
        """Device ``d``'s state as an :class:`EpisodeState` (a copy while the row is hot)."""
        if d < len(self) and self.hot[d]:
            st = EpisodeState()
            self.evict(d, st)
            self.hot[d] = True
            return st
        self.parking.unpark(d, states[d])
        return states[d]

    def take(self, d: int, st: EpisodeState) -> None:
        """Make ``st`` (device ``d``'s state) current: from its row, or unparked.

        Use it before reading or changing the state outside this class; then
        :meth:`admit` it back.
        """
        self.evict(d, st)
        self.parking.unpark(d, st)

    def release(self, states: Sequence[EpisodeState]) -> None:
        """Hand every hot row to its state (before using the states other than through here)."""
        self.parking.release(states)
        for d in np.flatnonzero(self.hot[: len(states)]).tolist():
            self.evict(d, states[d])

    def quiet(self, keys: _I64, states: Sequence[EpisodeState]) -> _BOOL:
        """:attr:`EpisodeState.quiet` per device of ``keys``."""
        keys = np.asarray(keys, np.int64)
        self.ensure(len(states))
        out = kn.quiet_rows(self.si, keys)
        cold = np.flatnonzero(~self.hot[keys])
        for g in cold.tolist():
            d = int(keys[g])
            out[g] = self.parking.is_parked(d) or states[d].quiet
        return out

    def open_last_met(self, keys: _I64, states: Sequence[EpisodeState]) -> _I64:
        """Latest meeting reading of each device's open emitted episode (``NO_TS``: none)."""
        keys = np.asarray(keys, np.int64)
        self.ensure(len(states))
        out = np.full(keys.shape[0], NO_TS, np.int64)
        nem = self.si[keys, kn.I_NEM]
        has = self.hot[keys] & (nem > 0)
        g = np.flatnonzero(has)
        if g.size:
            last = self.mi[keys[g], nem[g] - 1]
            # Only the last emitted episode can be active (the earlier ones closed).
            active = last[:, kn.M_CLOSED] == NO_TS
            out[g[active]] = last[active, kn.M_LAST_MET]
        for g1 in np.flatnonzero(~self.hot[keys]).tolist():
            if self.parking.is_parked(int(keys[g1])):
                continue  # quiet: nothing emitted
            ep = states[int(keys[g1])].open_episode
            if ep is not None:
                out[g1] = ep.last_met_ms
        return out

    # -- driving ---------------------------------------------------------------------------

    def feed_many(
        self,
        states: Sequence[EpisodeState],
        device: npt.ArrayLike,
        ts_ms: npt.ArrayLike,
        meets: npt.ArrayLike,
        **columns: npt.ArrayLike | None,
    ) -> dict[int, list[EpisodeEvent]]:
        """:meth:`EpisodeDetector.feed_many` (same arguments and results) over the rows.

        ``columns``: the keyword columns of :meth:`feed_events` (``clears`` .. ``backfill``).
        """
        return self.feed_events(states, device, ts_ms, meets, **columns).by_device()

    def feed_events(
        self,
        states: Sequence[EpisodeState],
        device: npt.ArrayLike,
        ts_ms: npt.ArrayLike,
        meets: npt.ArrayLike,
        *,
        clears: npt.ArrayLike | None = None,
        ends: npt.ArrayLike | None = None,
        value: npt.ArrayLike | None = None,
        tag: npt.ArrayLike | None = None,
        lon_deg: npt.ArrayLike | None = None,
        lat_deg: npt.ArrayLike | None = None,
        backfill: npt.ArrayLike | None = None,
    ) -> FleetEvents:
        """:meth:`feed_many` with its events as :class:`FleetEvents`."""
        batch = _batch(ts_ms, meets, clears, ends, value, tag, lon_deg, lat_deg, backfill)
        dev = np.asarray(device, np.int64)
        n = len(batch)
        if dev.shape != (n,):
            raise ValueError(f"device: expected shape ({n},), got {dev.shape}")
        if n == 0:
            return _no_events()
        ordered, starts, stops, groups = kn.group_rows(dev)
        if not ordered:
            order = np.argsort(dev, kind="stable")
            batch = batch.take(order)
            dev = dev[order]
            starts, stops, groups = kn.group_rows(dev)[1:]
        self.ensure(len(states))
        self.parking.ensure(len(states))
        status = np.zeros(groups.shape[0], np.int8)
        out = self._run(
            lambda g0, oi, of, no: kn.feed_groups(
                *self._rows(),
                self.buf,
                groups,
                starts,
                stops,
                batch.ts,
                batch.f,
                batch.k,
                status,
                g0,
                oi,
                of,
                no,
                self._per_device,
                *self._scratch,
            ),
            groups.shape[0],
        )
        det = self.detector
        for g in np.flatnonzero(status == kn.TO_SETTLE).tolist():
            self._settle_in_python(int(groups[g]), states, out.python)
        cold = np.flatnonzero(status == kn.TO_PYTHON)
        if cold.size:
            # Devices the rows cannot hold: the Python detector, with their quiet
            # states parked (one NumPy pass for all of them, as before the rows).
            for d in groups[cold].tolist():
                self.evict(d, states[d])
            rows = np.repeat(status == kn.TO_PYTHON, stops - starts)
            found = det._feed_many(states, dev[rows], batch.take(rows), self.parking)
            for d, events in found.items():
                out.python.setdefault(d, []).extend(events)
            for d in groups[cold].tolist():
                self.admit(d, states[d])
        return out

    def advance_many(
        self,
        states: Sequence[EpisodeState],
        keys: npt.ArrayLike,
        watermark_ms: npt.ArrayLike,
        cut_ms: npt.ArrayLike | None = None,
    ) -> dict[int, list[EpisodeEvent]]:
        """:meth:`EpisodeDetector.advance` of each device in ``keys`` that is not quiet.

        ``watermark_ms`` and ``cut_ms`` (:data:`NO_TS`: no cut) per key. A
        quiet state is skipped, watermark included (as the engine's tick does).
        """
        return self.advance_events(states, keys, watermark_ms, cut_ms).by_device()

    def advance_events(
        self,
        states: Sequence[EpisodeState],
        keys: npt.ArrayLike,
        watermark_ms: npt.ArrayLike,
        cut_ms: npt.ArrayLike | None = None,
    ) -> FleetEvents:
        """:meth:`advance_many` with its events as :class:`FleetEvents`."""
        dev = np.asarray(keys, np.int64)
        if dev.size == 0:
            return _no_events()
        self.ensure(len(states))
        wms = np.asarray(watermark_ms, np.int64)
        cuts = np.full(dev.shape[0], NO_TS, np.int64) if cut_ms is None else np.asarray(cut_ms)
        status = np.zeros(dev.shape[0], np.int8)
        out = self._run(
            lambda g0, oi, of, no: kn.advance_rows(
                *self._rows(),
                dev,
                wms,
                cuts,
                status,
                g0,
                oi,
                of,
                no,
                self._per_device,
                *self._scratch,
            ),
            dev.shape[0],
        )
        det = self.detector
        for g in np.flatnonzero(status != kn.DONE).tolist():
            d = int(dev[g])
            st = states[d]
            self.evict(d, st)
            if status[g] == kn.TO_SETTLE:
                self._settle_in_python(d, states, out.python)
                continue
            if self.parking.is_parked(d) or st.quiet:
                self.admit(d, st)
                continue
            cut = int(cuts[g])
            events = det.advance(st, watermark_ms=int(wms[g]), cut_ms=None if cut == NO_TS else cut)
            if events:
                out.python.setdefault(d, []).extend(events)
            self.admit(d, st)
        return out

    def _rows(self) -> _Rows:
        """The row arrays and parameters, in the kernels' argument order."""
        return (
            self.hot,
            self.si,
            self.sf,
            self.bts,
            self.bf,
            self.bk,
            self.mi,
            self.mf,
            self.params,
        )

    def _settle_in_python(
        self, d: int, states: Sequence[EpisodeState], out: dict[int, list[EpisodeEvent]]
    ) -> None:
        """Settle a row the kernel left at ``TO_SETTLE`` in Python.

        Its readings are in and its watermark moved (what ``_feed`` and
        ``advance`` do first); only the settle was too big for the row.
        """
        st = states[d]
        self.evict(d, st)
        events = self.detector._settle(st, counter=st)
        if events:
            out.setdefault(d, []).extend(events)
        self.admit(d, st)

    def _run(self, call: _Call, groups: int) -> FleetEvents:
        """Call a kernel until every group is done, growing the event arrays as needed."""
        size = max(64, 2 * self._per_device)
        oi = np.zeros((size, kn.OI), np.int64)
        of = np.zeros((size, kn.MF), np.float64)
        no = 0
        g0 = 0
        while True:
            g0, no = call(g0, oi, of, no)
            if g0 >= groups:
                break
            grown_i = np.zeros((2 * oi.shape[0], kn.OI), np.int64)
            grown_f = np.zeros((2 * of.shape[0], kn.MF), np.float64)
            grown_i[:no] = oi[:no]
            grown_f[:no] = of[:no]
            oi, of = grown_i, grown_f
        return FleetEvents(oi[:no, kn.O_DEV], oi[:no, kn.O_ACTION], oi[:no, 2:], of[:no])


def _episode(ri: list[int], rf: list[float]) -> Episode:
    closed = ri[kn.M_CLOSED]
    # Positional, in field order (the hot path: one per event).
    return Episode(
        ri[kn.M_NUMBER],
        ri[kn.M_STARTED],
        ri[kn.M_OPENED],
        ri[kn.M_LAST_MET],
        None if closed == NO_TS else closed,
        bool(ri[kn.M_LATE]),
        *rf,
    )


def _no_events() -> FleetEvents:
    return FleetEvents(
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros((0, kn.MI), np.int64),
        np.zeros((0, kn.MF), np.float64),
    )


_warm = False


def warm_up() -> None:
    """Compile (or load from the cache) every kernel, so no batch waits for the compiler.

    Run once per process before the first batch (the engine does); the
    first run after an install compiles for about ten seconds, later ones
    load the cached machine code.
    """
    global _warm
    if _warm:
        return
    det = EpisodeDetector(open_after_s=1, close_after_s=1, lateness_s=1)
    fleet = FleetEpisodes(det, capacity=2)
    states = [EpisodeState()]
    t0 = 1_000_000
    fleet.feed_many(states, [0, 0], np.array([t0, t0 + 2_000], np.int64), [True, True])
    fleet.advance_many(
        states, np.zeros(1, np.int64), np.array([t0 + 5_000]), np.array([t0 + 6_000])
    )
    fleet.quiet(np.zeros(1, np.int64), states)
    _warm = True
