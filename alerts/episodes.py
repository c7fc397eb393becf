"""Generic episode detector: condition masks in, alert episodes out, per device.

Pure and synchronous: NumPy arrays in, a list of :class:`EpisodeEvent` out,
and a small mutable :class:`EpisodeState` per (device, rule) that carries
everything needed across batches. No database, no MQTT, no asyncio; the
alerts engine owns the states, persists or rebuilds them
(:meth:`EpisodeState.to_dict` / :meth:`EpisodeState.from_dict`, plain JSON),
and turns events into alert rows.

Timing (contract §3, "Timing, with sampled data")
-------------------------------------------------
A condition's duration is the event time from the first reading that meets
it to the latest reading that still meets it, over consecutive readings. An
episode opens at the reading where the opening condition's duration reaches
``open_after_s`` (``>=``); ``started_at`` is the first reading that met it.
Closing works the same way with the close condition and ``close_after_s``;
``ended_at`` is the last reading that met the opening condition. Per reading
the caller gives ``meets`` (the opening condition), optionally ``clears``
(the close condition; default ``~meets``) and ``ends`` (the episode ends at
once, e.g. the service window ended; such a reading never meets). A reading
that neither meets nor clears is neutral: it ends a candidate run and a
closing run, and does not move ``ended_at``.

Gaps in readings: by default (``max_gap_s=None``) silence does not break a
run, as the contract measures from the first to the latest meeting reading
whatever lies between. With ``max_gap_s`` set, two readings more than
``max_gap_s`` apart are never in the same run, and an open episode closes at
``last reading + max_gap_s`` (also from :meth:`EpisodeDetector.advance`, when
the watermark passes that time without readings).

Lateness (readings up to ``lateness_s`` out of order)
-----------------------------------------------------
Each state keeps the device's *watermark*: the newest event time seen minus
``lateness_s`` (raised further by :meth:`EpisodeDetector.advance`). Readings
older than the watermark are *final*: nothing can arrive before them any
more. Readings at or after it wait in a small sorted reorder buffer. On every
call the detector

1. runs the state machine over the readings that just became final, from the
   committed state (so those decisions are certain), then
2. runs it speculatively over the buffer, and keeps the leading decisions
   that no later reading can undo: opens with ``open_after_s == 0`` (one
   reading opens), closes at an ``ends`` reading or with ``close_after_s ==
   0``. A duration-based open or close is certain only once its readings are
   final, so it is emitted when the watermark passes it (``lateness_s`` after
   the deciding reading, or at once with ``lateness_s=0``); smoke, panic and
   fault alerts are never held back.
3. matches these episodes with the ones emitted before (by overlapping
   ``[started_at, last met]``) and emits the difference: ``open`` for a new
   episode, ``update`` when a late reading refined an episode (earlier
   ``started_at``, later ``ended_at``, details), ``close`` once. An episode is
   never emitted twice and a certain close is never undone; a late reading
   can split an episode (a close plus a new open), exactly as in-order
   delivery would have produced.

Hence any arrival order in which no reading is more than ``lateness_s`` late
gives the same final episodes as sorted delivery (property-tested).

Readings *older* than the watermark when they arrive (backfilled blind-area
data, JT/T 808 0x0704 type 1, or anything later than allowed) cannot join
the final history. They go to a separate *late lane*: a second state with
the same rules fed only by such readings, whose episodes all have
``late=True``. The lane is flushed (its open episode closed at its last
meeting reading, its candidate dropped) once the device watermark has moved
``late_flush_after_s`` past the last late reading fed to it. In the live
lane an episode is ``late`` when the reading that opened it was backfilled.

Episode numbers (``Episode.number``) are unique per state, assigned in the
order episodes are first emitted; the engine keys alert rows on (device,
rule, source, number).

:meth:`EpisodeDetector.feed_many` does the same for a batch of many devices
at once (an ingest commit): arrays are prepared once, and a device with
nothing under way and no reading meeting the condition only has its
readings kept aside (merged and trimmed once as many have piled up as are
buffered, at least ``_COMPACT_AT``), so
quiet devices cost a few microseconds each and no pass.

Engine usage, per device and rule::

    det = EpisodeDetector(open_after_s=10, close_after_s=10)
    state = det.new_state()            # or EpisodeState.from_dict(saved)
    for event in det.feed(state, ts_ms, meets, value=speed_kmh, tag=limit_kmh,
                          lon_deg=lon, lat_deg=lat, backfill=backfill):
        store(event)                   # open: insert, update: refine, close: clear
    for event in det.advance(state, watermark_ms=clock_ms - 30_000):
        store(event)                   # on every clock tick, without readings
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from alerts._core import (
    ACTIVE,
    CANDIDATE,
    CLEAR,
    CLOSING,
    END,
    IDLE,
    MET,
    Buf,
    Core,
    Ep,
    close_core,
    run_pass,
)

__all__ = [
    "Action",
    "Episode",
    "EpisodeDetector",
    "EpisodeEvent",
    "EpisodeState",
    "Parking",
    "grow_rows",
]

Action = Literal["open", "update", "close"]

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_BOOL = npt.NDArray[np.bool_]
_NAN: Final = math.nan
#: Watermark meaning "everything is final" when a late lane is flushed.
_FLUSH_ALL: Final = np.iinfo(np.int64).max // 2
#: Readings kept aside in the quiet case before they are merged and trimmed.
_COMPACT_AT: Final = 64
#: ``EpisodeState.due_ms`` when nothing is waiting for the watermark.
_NEVER: Final = int(np.iinfo(np.int64).max)
#: Whether :meth:`EpisodeDetector.advance` skips states with nothing due (tests turn
#: it off to check that skipping changes nothing).
_SKIP_UNDUE = True
_PHASES: Final = {IDLE: "idle", CANDIDATE: "candidate", ACTIVE: "active", CLOSING: "closing"}


@dataclass(frozen=True, slots=True)
class Episode:
    """Snapshot of one episode as currently known; all times are epoch milliseconds (UTC).

    ``started_at_ms``: first reading that met the opening condition.
    ``opened_at_ms``: the reading at which the duration reached the minimum.
    ``last_met_ms``: latest reading that met the opening condition so far.
    ``closed_at_ms``: the reading (or watermark-driven time) at which it closed;
    ``None`` while active. ``ended_at_ms`` (property) is ``last_met_ms`` once
    closed. ``max_value`` (NaN when no meeting reading had a value) and
    ``tag_at_max`` (the ``tag`` of the first reading reaching it) aggregate
    the per-reading ``value``/``tag``; ``start_*``/``end_*`` are the
    positions (degrees) of the first and latest meeting readings (the last
    known position when a reading had none); ``path_m`` is the distance
    travelled along the readings between them.
    """

    number: int
    started_at_ms: int
    opened_at_ms: int
    last_met_ms: int
    closed_at_ms: int | None
    late: bool
    max_value: float = _NAN
    tag_at_max: float = _NAN
    start_lon: float = _NAN
    start_lat: float = _NAN
    end_lon: float = _NAN
    end_lat: float = _NAN
    path_m: float = 0.0

    @property
    def active(self) -> bool:
        """The episode has not closed."""
        return self.closed_at_ms is None

    @property
    def ended_at_ms(self) -> int | None:
        """``last_met_ms`` once closed, else ``None``."""
        return None if self.closed_at_ms is None else self.last_met_ms

    @property
    def duration_s(self) -> float:
        """From ``started_at`` to the latest meeting reading, seconds."""
        return (self.last_met_ms - self.started_at_ms) / 1000.0

    def _key(self, progress: bool = True) -> tuple[Any, ...]:
        # What an update must show. NaN != NaN, so compare a NaN-free form.
        if not progress:
            fixed = (self.max_value, self.tag_at_max)
            return (
                self.started_at_ms,
                self.closed_at_ms,
                self.ended_at_ms,
                self.late,
                *(None if math.isnan(v) else v for v in fixed),
            )
        return (
            self.started_at_ms,
            self.opened_at_ms,
            self.last_met_ms,
            self.closed_at_ms,
            self.late,
            *(
                None if math.isnan(v) else v
                for v in (
                    self.max_value,
                    self.tag_at_max,
                    self.start_lon,
                    self.start_lat,
                    self.end_lon,
                    self.end_lat,
                    self.path_m,
                )
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (NaN as ``None``)."""
        return {f.name: _nan_to_none(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Episode:
        """Inverse of :meth:`to_dict`."""
        kw: dict[str, Any] = {
            f.name: (_NAN if d[f.name] is None and f.type == "float" else d[f.name])
            for f in dataclasses.fields(Episode)
        }
        return Episode(**kw)


@dataclass(frozen=True, slots=True)
class EpisodeEvent:
    """An ``open``, ``update`` or ``close`` of one episode, with its snapshot after it."""

    action: Action
    episode: Episode


@dataclass(slots=True)
class EpisodeState:
    """Everything one detector carries for one device between calls (small, JSON-able).

    ``core``: the state machine after the final readings; ``buf``: readings at
    or after the watermark, sorted; ``emitted``: episodes emitted and not yet
    final (active, or closed at or after the watermark); ``late_lane``: the
    state for readings that arrived older than the watermark (see module doc);
    ``dropped``: readings ignored because they were too late even for that lane.
    """

    core: Core = field(default_factory=Core)
    buf: Buf = field(default_factory=Buf.empty)
    watermark_ms: int | None = None
    max_ts_ms: int | None = None
    emitted: list[Episode] = field(default_factory=list)
    next_number: int = 1
    late_lane: EpisodeState | None = None
    late_lane_fed_at_ms: int | None = None
    is_late_lane: bool = False
    dropped: int = 0
    orphans: int = 0
    #: Quiet batches not merged into ``buf`` yet (see ``EpisodeDetector._feed``).
    pending: list[Buf] = field(default_factory=list, repr=False)
    pending_n: int = field(default=0, repr=False)
    #: Watermark at or below which an :meth:`EpisodeDetector.advance` can decide
    #: nothing new (the deciding reading of the first decision still uncertain, or
    #: the close of an emitted episode kept until final); ``None``: unknown.
    due_ms: int | None = field(default=None, repr=False)

    def _absorb(self) -> None:
        """Merge the quiet batches kept aside into ``buf`` (changes nothing observable)."""
        if self.pending:
            self.buf = _merge(self.buf, Buf.concat(*self.pending))
            self.pending = []
            self.pending_n = 0

    @property
    def phase(self) -> str:
        """``idle``, ``candidate``, ``active`` or ``closing`` after the final readings."""
        return _PHASES[self.core.phase]

    @property
    def quiet(self) -> bool:
        """Nothing under way nor buffered that could become an episode.

        An :meth:`EpisodeDetector.advance` of a quiet state can emit nothing
        (it would only trim buffered readings), so engines may skip it:
        :meth:`EpisodeDetector.advance_many` does.
        """
        return (
            self.core.phase == IDLE
            and not self.emitted
            and self.late_lane is None
            and not bool((self.buf.code == MET).any())
            # ``pending`` never holds a meeting reading: a batch is only set aside
            # when none of its readings meets (``EpisodeDetector.feed_many``).
        )

    @property
    def open_episode(self) -> Episode | None:
        """The emitted episode that is still active, if any."""
        for ep in reversed(self.emitted):
            if ep.active:
                return ep
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form; :meth:`from_dict` rebuilds an equal state."""
        self._absorb()
        b = self.buf
        return {
            "core": {
                f.name: _nan_to_none(getattr(self.core, f.name))
                for f in dataclasses.fields(self.core)
            },
            "buf": {
                "ts": b.ts.tolist(),
                "code": b.code.tolist(),
                "value": _floats_out(b.value),
                "tag": _floats_out(b.tag),
                "lon": _floats_out(b.lon),
                "lat": _floats_out(b.lat),
                "backfill": b.backfill.tolist(),
                "virtual": b.virtual.tolist(),
            },
            "watermark_ms": self.watermark_ms,
            "max_ts_ms": self.max_ts_ms,
            "emitted": [e.to_dict() for e in self.emitted],
            "next_number": self.next_number,
            "late_lane": None if self.late_lane is None else self.late_lane.to_dict(),
            "late_lane_fed_at_ms": self.late_lane_fed_at_ms,
            "is_late_lane": self.is_late_lane,
            "dropped": self.dropped,
            "orphans": self.orphans,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> EpisodeState:
        """Inverse of :meth:`to_dict`."""
        cd = d["core"]
        ckw: dict[str, Any] = {
            f.name: (_NAN if cd[f.name] is None and f.type == "float" else cd[f.name])
            for f in dataclasses.fields(Core)
        }
        core = Core(**ckw)
        bd = d["buf"]
        buf = Buf.from_columns(
            np.asarray(bd["ts"], np.int64),
            np.asarray(bd["code"], np.int8),
            _floats_in(bd["value"]),
            _floats_in(bd["tag"]),
            _floats_in(bd["lon"]),
            _floats_in(bd["lat"]),
            np.asarray(bd["backfill"], np.bool_),
            np.asarray(bd["virtual"], np.bool_),
        )
        lane = d["late_lane"]
        return EpisodeState(
            core=core,
            buf=buf,
            watermark_ms=d["watermark_ms"],
            max_ts_ms=d["max_ts_ms"],
            emitted=[Episode.from_dict(e) for e in d["emitted"]],
            next_number=d["next_number"],
            late_lane=None if lane is None else EpisodeState.from_dict(lane),
            late_lane_fed_at_ms=d["late_lane_fed_at_ms"],
            is_late_lane=d["is_late_lane"],
            dropped=d["dropped"],
            orphans=d["orphans"],
        )


def _nan_to_none(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def _floats_out(a: _F64) -> list[float | None]:
    return [None if math.isnan(x) else x for x in a.tolist()]


def _floats_in(xs: list[float | None]) -> _F64:
    return np.asarray([_NAN if x is None else x for x in xs], np.float64)


def _f64(a: npt.ArrayLike | None, n: int) -> _F64:
    if a is None:
        return np.full(n, _NAN)
    out = np.asarray(a, np.float64)
    if out.shape != (n,):
        raise ValueError(f"expected shape ({n},), got {out.shape}")
    return out


def _mask(a: npt.ArrayLike | None, n: int, default: bool) -> _BOOL:
    if a is None:
        return np.full(n, default)
    out = np.asarray(a, np.bool_)
    if out.shape != (n,):
        raise ValueError(f"expected shape ({n},), got {out.shape}")
    return out


def _batch(
    ts_ms: npt.ArrayLike,
    meets: npt.ArrayLike,
    clears: npt.ArrayLike | None,
    ends: npt.ArrayLike | None,
    value: npt.ArrayLike | None,
    tag: npt.ArrayLike | None,
    lon_deg: npt.ArrayLike | None,
    lat_deg: npt.ArrayLike | None,
    backfill: npt.ArrayLike | None,
) -> Buf:
    """Readings as a :class:`Buf` (unsorted), one code per reading."""
    ts = np.asarray(ts_ms, np.int64)
    if ts.ndim != 1:
        raise ValueError("ts_ms must be one-dimensional")
    n = ts.shape[0]
    met = _mask(meets, n, False)
    if clears is None:
        code = np.where(met, np.int8(MET), np.int8(CLEAR))
    else:
        code = np.zeros(n, np.int8)
        code[_mask(clears, n, False)] = CLEAR
        code[met] = MET
    if ends is not None:
        code[_mask(ends, n, False)] = END
    return Buf.from_columns(
        ts,
        code,
        _f64(value, n),
        _f64(tag, n),
        _f64(lon_deg, n),
        _f64(lat_deg, n),
        _mask(backfill, n, False),
        np.zeros(n, np.bool_),
    )


def _ms(seconds: float) -> int:
    return round(seconds * 1000.0)


@dataclass(frozen=True, kw_only=True)
class EpisodeDetector:
    """Timing parameters of one rule; its methods drive an :class:`EpisodeState`.

    ``open_after_s``/``close_after_s``: minimum duration of the opening and of
    the close condition (``close_after_s=math.inf``: never closes on readings,
    only on ``ends`` readings and gaps, e.g. a latched alarm). ``lateness_s``:
    how far out of order (event time) readings may arrive. ``max_gap_s``: see
    the module docstring (``None``: silence never breaks a run).
    ``late_flush_after_s``: how long after its last reading, in device
    watermark time, the late lane is flushed. ``report_progress``: emit an
    ``update`` whenever an active episode's latest meeting reading, end
    position or path moves on (rules whose details show duration or track);
    when ``False``, only when its start, ``late``, ``max_value``/``tag_at_max``
    or, once closed, its end changes. ``track_path=False``: ``path_m`` stays
    0 (for rules whose details do not show the distance travelled).
    ``progress_every_s`` (with ``report_progress``): an update that only
    moves the episode on (latest meeting reading, end position, path) is
    emitted when the duration enters a new ``progress_every_s`` step, not
    for every reading; a change of start, ``late``, ``max_value``/
    ``tag_at_max`` or the close is emitted at once, and the close carries
    everything. 0: every change.
    """

    open_after_s: float
    close_after_s: float
    lateness_s: float = 30.0
    max_gap_s: float | None = None
    late_flush_after_s: float = 120.0
    report_progress: bool = True
    track_path: bool = True
    progress_every_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.open_after_s >= 0 and self.close_after_s >= 0 and self.lateness_s >= 0):
            raise ValueError("open_after_s, close_after_s and lateness_s must be >= 0")
        if not self.progress_every_s >= 0:
            raise ValueError("progress_every_s must be >= 0")
        if self.max_gap_s is not None and not self.max_gap_s > 0:
            raise ValueError("max_gap_s must be > 0 or None")

    def new_state(self) -> EpisodeState:
        """A fresh state: idle, nothing heard."""
        return EpisodeState()

    # -- public driving API -------------------------------------------------------------

    def feed(
        self,
        state: EpisodeState,
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
    ) -> list[EpisodeEvent]:
        """Add one batch of a device's readings; return the events it makes certain.

        ``ts_ms`` (int64 epoch ms) need not be sorted nor newer than earlier
        batches; a reading with the same ``ts_ms`` as one already buffered is
        ignored (the caller removes duplicates). ``meets``/``clears``/``ends``
        are per-reading booleans (``ends`` wins, then ``meets``); ``value``
        (float, aggregated by max over meeting readings) and ``tag`` (float,
        reported at the max) feed the details; ``lon_deg``/``lat_deg`` (NaN:
        unknown) the positions and ``path_m``; ``backfill`` marks blind-area
        readings (episodes they open are ``late``).
        """
        batch = _batch(ts_ms, meets, clears, ends, value, tag, lon_deg, lat_deg, backfill)
        return self._feed(state, batch, counter=state)

    def feed_many(
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
        parking: Parking | None = None,
    ) -> dict[int, list[EpisodeEvent]]:
        """:meth:`feed` for a batch of many devices at once; events by device index.

        ``device`` (int) gives, per reading, the index of its device's state
        in ``states``; the other arrays are as for :meth:`feed`. The result is
        exactly what one :meth:`feed` per device would give, but the arrays
        are prepared once for the whole batch, and a device with nothing under
        way and no reading meeting the condition (the common case) costs a few
        microseconds of bookkeeping instead of a pass.

        ``parking`` (one :class:`Parking` per detector and list of states,
        kept by the caller) takes even that bookkeeping off the states: a
        quiet state is *parked*, and its readings until something happens
        are kept in fleet-wide arrays, with a few NumPy calls per batch for
        all parked devices together. A state is unparked (its readings
        handed back, exactly as :meth:`feed` would have kept them) before
        anything else touches it here. Callers must not :meth:`advance` a
        parked state (quiet states need no advance) and must
        :meth:`Parking.release` the states before using them otherwise.
        """
        batch = _batch(ts_ms, meets, clears, ends, value, tag, lon_deg, lat_deg, backfill)
        dev = np.asarray(device, np.int64)
        n = len(batch)
        if dev.shape != (n,):
            raise ValueError(f"device: expected shape ({n},), got {dev.shape}")
        return self._feed_many(states, dev, batch, parking)

    def _feed_many(
        self,
        states: Sequence[EpisodeState],
        dev: _I64,
        batch: Buf,
        parking: Parking | None,
    ) -> dict[int, list[EpisodeEvent]]:
        """:meth:`feed_many` of readings already in a :class:`Buf`."""
        n = len(batch)
        out: dict[int, list[EpisodeEvent]] = {}
        if n == 0:
            return out
        if n > 1 and not bool((dev[1:] >= dev[:-1]).all()):
            # Group by device, keeping arrival order within a device (duplicates of a
            # ts keep the first); ingest batches usually come grouped already.
            order = np.argsort(dev, kind="stable")
            batch = batch.take(order)
            dev = dev[order]
        starts = np.flatnonzero(np.r_[True, dev[1:] != dev[:-1]])
        met_any_a = np.logical_or.reduceat(batch.code == MET, starts)
        ts_min_a = np.minimum.reduceat(batch.ts, starts)
        ts_max_a = np.maximum.reduceat(batch.ts, starts)
        lateness_ms = _ms(self.lateness_s)
        if parking is not None:
            parking.ensure(len(states))
            slow = ~parking.park_many(
                batch, dev, starts, met_any_a, ts_min_a, ts_max_a, lateness_ms=lateness_ms
            )
            if not slow.any():
                return out
            stops_a = np.r_[starts[1:], n][slow]
            starts, met_any_a, ts_min_a, ts_max_a = (
                starts[slow],
                met_any_a[slow],
                ts_min_a[slow],
                ts_max_a[slow],
            )
            stops = stops_a.tolist()
        else:
            stops = [*starts[1:].tolist(), n]
        met_any = met_any_a.tolist()
        ts_min = ts_min_a.tolist()
        ts_max = ts_max_a.tolist()
        for d, lo, hi, has_met, tmin, tmax in zip(
            dev[starts].tolist(), starts.tolist(), stops, met_any, ts_min, ts_max, strict=True
        ):
            st = states[d]
            if parking is not None:
                parking.unpark(d, st)
            # A copy, so that readings kept aside do not hold on to the whole batch.
            part = Buf(batch.ts[lo:hi].copy(), batch.f[lo:hi].copy(), batch.k[lo:hi].copy())
            if (
                not has_met
                and st.core.phase == IDLE
                and not st.emitted
                and st.late_lane is None
                and (st.watermark_ms is None or tmin >= st.watermark_ms)
                and not (len(st.buf) and bool((st.buf.code == MET).any()))
            ):
                # Quiet: only bookkeeping (see _feed); no pass, no events.
                if st.max_ts_ms is None or tmax > st.max_ts_ms:
                    st.max_ts_ms = tmax
                wm = st.max_ts_ms - lateness_ms
                if st.watermark_ms is None or wm > st.watermark_ms:
                    st.watermark_ms = wm
                st.pending.append(part)
                st.pending_n += hi - lo
                if _compact_due(st):
                    self._settle(st, counter=st)
                if parking is not None:
                    parking.park(d, st)
                continue
            events = self._feed(st, part, counter=st)
            if events:
                out[d] = events
            if parking is not None and st.quiet:
                parking.park(d, st)
        return out

    def advance(
        self, state: EpisodeState, *, watermark_ms: int, cut_ms: int | None = None
    ) -> list[EpisodeEvent]:
        """Move the device watermark without readings; return the events that become certain.

        ``watermark_ms`` (device event time) promises that no reading older
        than it will arrive any more: under the event clock, the newest event
        time seen minus ``lateness_s``; under the live clock, wall time minus
        ``lateness_s`` shifted by the device's clock offset. ``cut_ms`` adds a
        virtual ``ends`` reading at that time (e.g. the end of the service
        window, so an open route deviation closes even if the bus falls
        silent); it is ignored when already final. Watermarks never move back.
        """
        events: list[EpisodeEvent] = []
        cut = cut_ms is not None and (state.watermark_ms is None or cut_ms >= state.watermark_ms)
        if (
            _SKIP_UNDUE
            and not cut
            and state.due_ms is not None
            and watermark_ms <= state.due_ms
            and not state.pending
            and state.late_lane is None
            and self._gap_ms is None  # a silence may close: always settle
        ):
            # Nothing can become certain: only the watermark moves (the readings now
            # older than it are finalized by the next pass, with the same result).
            if state.watermark_ms is None or watermark_ms > state.watermark_ms:
                state.watermark_ms = watermark_ms
            return events
        state._absorb()
        if cut:
            assert cut_ms is not None
            virt = Buf.from_columns(
                np.asarray([cut_ms], np.int64),
                np.asarray([END], np.int8),
                np.full(1, _NAN),
                np.full(1, _NAN),
                np.full(1, _NAN),
                np.full(1, _NAN),
                np.zeros(1, np.bool_),
                np.ones(1, np.bool_),
            )
            state.buf = _merge(state.buf, virt)
        if state.watermark_ms is None or watermark_ms > state.watermark_ms:
            state.watermark_ms = watermark_ms
        events += self._settle(state, counter=state)
        events += self._maybe_flush_lane(state)
        return events

    def advance_many(
        self, states: Sequence[EpisodeState], *, watermark_ms: int
    ) -> dict[int, list[EpisodeEvent]]:
        """:meth:`advance` every state to one watermark; events by index.

        Same result as one :meth:`advance` per state, but a quiet state only
        has its watermark raised (its buffer is trimmed with its next readings).
        """
        out: dict[int, list[EpisodeEvent]] = {}
        for i, st in enumerate(states):
            if st.quiet:
                if st.watermark_ms is None or watermark_ms > st.watermark_ms:
                    st.watermark_ms = watermark_ms
                continue
            events = self.advance(st, watermark_ms=watermark_ms)
            if events:
                out[i] = events
        return out

    # -- internals ----------------------------------------------------------------------

    @functools.cached_property
    def _open_ms(self) -> int:
        return _ms(self.open_after_s)

    @functools.cached_property
    def _close_ms(self) -> int | None:
        return None if math.isinf(self.close_after_s) else _ms(self.close_after_s)

    def _progress_due(self, prev: Episode, snap: Episode) -> bool:
        """Whether moving on from ``prev`` to ``snap`` is worth an update (``progress_every_s``)."""
        every = self._progress_ms
        return (
            every == 0
            or (snap.last_met_ms - snap.started_at_ms) // every
            != (prev.last_met_ms - prev.started_at_ms) // every
        )

    @functools.cached_property
    def _progress_ms(self) -> int:
        return _ms(self.progress_every_s)

    @functools.cached_property
    def _gap_ms(self) -> int | None:
        return None if self.max_gap_s is None else _ms(self.max_gap_s)

    def _feed(
        self, state: EpisodeState, batch: Buf, *, counter: EpisodeState
    ) -> list[EpisodeEvent]:
        events: list[EpisodeEvent] = []
        if len(batch) == 0:
            return events
        wm = state.watermark_ms
        if wm is not None:
            too_late = batch.ts < wm
            if too_late.any():
                old = batch.take(too_late)
                batch = batch.take(~too_late)
                if state.is_late_lane:
                    state.dropped += len(old)
                else:
                    events += self._feed_lane(state, old)
        if len(batch):
            top = int(batch.ts.max())
            if state.max_ts_ms is None or top > state.max_ts_ms:
                state.max_ts_ms = top
            candidate_wm = state.max_ts_ms - _ms(self.lateness_s)
            if state.watermark_ms is None or candidate_wm > state.watermark_ms:
                state.watermark_ms = candidate_wm
            if (
                state.core.phase == IDLE
                and not state.emitted
                and state.late_lane is None
                and not bool((batch.code == MET).any())
                and not bool((state.buf.code == MET).any())
            ):
                # The common case: nothing under way and nothing meeting the condition.
                # Nothing can be decided, so keep the batch aside (cheap) and merge it
                # only when a meeting reading comes or enough have piled up.
                state.pending.append(batch)
                state.pending_n += len(batch)
                if _compact_due(state):
                    events += self._settle(state, counter=counter)
            else:
                state.pending.append(batch)
                events += self._settle(state, counter=counter)
        if not state.is_late_lane:
            events += self._maybe_flush_lane(state)
        return events

    def _feed_lane(self, state: EpisodeState, old: Buf) -> list[EpisodeEvent]:
        if state.late_lane is None:
            state.late_lane = EpisodeState(is_late_lane=True)
        state.late_lane_fed_at_ms = state.watermark_ms
        return self._feed(state.late_lane, old, counter=state)

    def _maybe_flush_lane(self, state: EpisodeState) -> list[EpisodeEvent]:
        lane = state.late_lane
        if lane is None or state.watermark_ms is None or state.late_lane_fed_at_ms is None:
            return []
        if state.watermark_ms - state.late_lane_fed_at_ms <= _ms(self.late_flush_after_s):
            return []
        lane.watermark_ms = _FLUSH_ALL
        events = self._settle(lane, counter=state, flush=True)
        state.late_lane = None
        state.late_lane_fed_at_ms = None
        return events

    def _settle(
        self, state: EpisodeState, *, counter: EpisodeState, flush: bool = False
    ) -> list[EpisodeEvent]:
        """Finalize readings older than the watermark, speculate on the rest, reconcile."""
        wm = state.watermark_ms
        state.due_ms = None
        if wm is None:
            return []
        state._absorb()
        buf = state.buf
        k = int(np.searchsorted(buf.ts, wm, side="left"))
        want_value = not math.isnan(state.core.max_value) or bool((~np.isnan(buf.value)).any())
        want_pos = not math.isnan(state.core.prev_lon) or bool((~np.isnan(buf.lon)).any())
        kw: dict[str, Any] = {
            "open_ms": self._open_ms,
            "close_ms": self._close_ms,
            "gap_ms": self._gap_ms,
            "want_value": want_value,
            "want_pos": want_pos,
            "want_path": self.track_path,
        }
        core = state.core
        instant_open = self._open_ms == 0
        # Nothing final and nothing open: only an instant open could be certain.
        if (
            k == 0
            and not state.emitted
            and core.phase == IDLE
            and not flush
            and (not instant_open or not bool((buf.code == MET).any()))
        ):
            return []
        final_eps = run_pass(core, buf.take(slice(0, k)), **kw)
        tail = buf.take(slice(k, None))
        state.buf = tail
        gap_ms = self._gap_ms
        at_ms: int | None = None
        if core.last_ts_ms is not None and core.phase != IDLE:
            if flush:
                at_ms = core.last_ts_ms
            elif gap_ms is not None and len(tail) == 0 and wm - core.last_ts_ms > gap_ms:
                # Silence longer than max_gap_s, and certain: nothing older than wm can come.
                at_ms = core.last_ts_ms + gap_ms
        if at_ms is not None:
            closed = close_core(core, at_ms)
            if closed is not None:
                if final_eps and final_eps[-1].closed_at_ms is None:
                    final_eps[-1] = closed
                else:
                    final_eps.append(closed)
        if (
            not final_eps
            and not state.emitted
            and (not instant_open or not bool((tail.code == MET).any()))
        ):
            return []
        spec_eps = run_pass(core.copy(), tail, **kw)
        certain: list[Ep] = list(final_eps)
        if certain and certain[-1].closed_at_ms is None and spec_eps and spec_eps[0].continued:
            certain.pop()
        due = _NEVER
        for ep in spec_eps:
            if not ep.continued and not ep.open_instant:
                due = ep.opened_at_ms  # this open is certain once its reading is final
                break
            if ep.closed_at_ms is not None and not ep.close_instant:
                due = ep.closed_at_ms  # likewise this close
                ep.closed_at_ms = None  # the close may still be undone: report it as open
                certain.append(ep)
                break
            certain.append(ep)
        events = self._reconcile(state, certain, counter=counter)
        for ep_ in state.emitted:
            if ep_.closed_at_ms is not None:
                due = min(due, ep_.closed_at_ms)  # kept until final, then dropped
        state.due_ms = due
        return events

    def _reconcile(
        self, state: EpisodeState, eps: list[Ep], *, counter: EpisodeState
    ) -> list[EpisodeEvent]:
        """Diff the certain episodes against those emitted before; emit the changes."""
        wm = state.watermark_ms
        assert wm is not None
        lane = state.is_late_lane
        old = state.emitted
        out: list[EpisodeEvent] = []
        keep: list[Episode] = []

        def orphan(prev: Episode) -> None:
            # Cannot happen with the certainty rules above; if it ever does, never leave a
            # row open forever: close it as it was last known.
            state.orphans += 1
            if prev.active:
                out.append(
                    EpisodeEvent("close", dataclasses.replace(prev, closed_at_ms=prev.last_met_ms))
                )

        j = 0
        for ep in eps:
            while j < len(old) and old[j].last_met_ms < ep.started_ms:
                orphan(old[j])
                j += 1
            snap = _snapshot(ep, 0, late=lane)
            if j < len(old) and old[j].started_at_ms <= ep.last_met_ms:
                prev = old[j]
                j += 1
                snap = dataclasses.replace(snap, number=prev.number)
                if not prev.active and snap.active:
                    # A certain close is never undone; keep the emitted belief until final.
                    snap = prev
                elif prev.active and not snap.active:
                    out.append(EpisodeEvent("close", snap))
                elif snap._key(False) != prev._key(False) or (
                    self.report_progress
                    and snap._key() != prev._key()
                    and self._progress_due(prev, snap)
                ):
                    out.append(EpisodeEvent("update", snap))
            else:
                snap = dataclasses.replace(snap, number=counter.next_number)
                counter.next_number += 1
                out.append(EpisodeEvent("open", dataclasses.replace(snap, closed_at_ms=None)))
                if not snap.active:
                    out.append(EpisodeEvent("close", snap))
            if snap.active or (snap.closed_at_ms is not None and snap.closed_at_ms >= wm):
                keep.append(snap)
        while j < len(old):
            orphan(old[j])
            j += 1
        state.emitted = keep
        return out


def _compact_due(state: EpisodeState) -> bool:
    """Whether a quiet state's kept-aside readings should be merged and trimmed now.

    When more have piled up than the buffer holds (and at least
    ``_COMPACT_AT``): a device reporting many times a second keeps hundreds
    of readings within the lateness, and merging them on every batch would
    cost that much each time. When it happens changes nothing observable.
    """
    return state.pending_n > max(_COMPACT_AT, len(state.buf))


def _snapshot(ep: Ep, number: int, *, late: bool) -> Episode:
    return Episode(
        number=number,
        started_at_ms=ep.started_ms,
        opened_at_ms=ep.opened_at_ms,
        last_met_ms=ep.last_met_ms,
        closed_at_ms=ep.closed_at_ms,
        late=late or ep.late,
        max_value=ep.max_value,
        tag_at_max=ep.tag_at_max,
        start_lon=ep.start_lon,
        start_lat=ep.start_lat,
        end_lon=ep.end_lon,
        end_lat=ep.end_lat,
        path_m=ep.path_m,
    )


def _merge(buf: Buf, batch: Buf) -> Buf:
    """Sorted union of ``buf`` and ``batch``; a ``ts`` already in ``buf`` keeps the old reading."""
    if len(batch) == 0:
        return buf
    ts = batch.ts
    in_order = ts.shape[0] < 2 or bool(np.all(ts[1:] > ts[:-1]))
    if in_order and (len(buf) == 0 or int(ts[0]) > int(buf.ts[-1])):
        return batch if len(buf) == 0 else Buf.concat(buf, batch)
    both = Buf.concat(buf, batch)
    order = np.argsort(both.ts, kind="stable")
    both = both.take(order)
    keep = np.ones(len(both), np.bool_)
    keep[1:] = both.ts[1:] != both.ts[:-1]
    return both if bool(keep.all()) else both.take(keep)


def grow_rows(owner: object, names: Sequence[str], size: int) -> None:
    """Give each array attribute ``names`` of ``owner`` at least ``size`` rows (zeros added).

    Grown geometrically (at least doubled), so adding devices one by one stays cheap.
    """
    first = getattr(owner, names[0])
    have = int(first.shape[0])
    if size <= have:
        return
    rows = max(size, 2 * have, 64)
    for name in names:
        old = getattr(owner, name)
        new = np.zeros((rows, *old.shape[1:]), old.dtype)
        new[:have] = old
        setattr(owner, name, new)


#: :class:`Parking`'s per-device arrays.
_PARKING_COLUMNS: Final = (
    "parked",
    "max_ts",
    "wm",
    "n",
    "folded",
    "fold_ts",
    "ts",
    "f",
    "k",
    "fold_f",
    "fold_k",
)
#: "No time yet" in :class:`Parking`'s int64 columns.
_NO_TS: Final = int(np.iinfo(np.int64).min)


class Parking:
    """Quiet states of one detector kept in fleet-wide arrays (:meth:`EpisodeDetector.feed_many`).

    A quiet state (idle, nothing emitted, no late lane, no meeting reading
    buffered) can decide nothing until a reading meets the condition or
    arrives older than its watermark. While parked, its device's bookkeeping
    lives here, one row per device: ``max_ts``/``wm`` (the state's
    ``max_ts_ms``/``watermark_ms``) and the readings fed since parking, in
    arrival order (``n`` of at most ``capacity`` per device). The readings
    that became final (older than ``wm``) are folded into one, the newest:
    an idle pass over final non-meeting readings leaves only the last one's
    time and position behind. For that, every parked reading has a position
    (``positions=True``, GPS rules) or none does (``positions=False``, rules
    fed without positions); readings of a device that mix both are fed to
    its state instead. On
    :meth:`unpark` the readings go to the state's ``pending`` exactly as
    :meth:`EpisodeDetector.feed` would have kept them, so results are the
    same with or without parking (property-tested).
    """

    def __init__(self, capacity: int = 32, *, positions: bool = True) -> None:
        if capacity < 2:
            raise ValueError("capacity must be >= 2")
        self.capacity = capacity
        self.positions = positions
        self.parked: _BOOL = np.zeros(0, np.bool_)
        self.max_ts: _I64 = np.zeros(0, np.int64)
        self.wm: _I64 = np.zeros(0, np.int64)
        self.n: _I64 = np.zeros(0, np.int64)
        self.ts: _I64 = np.zeros((0, capacity), np.int64)
        self.f: _F64 = np.zeros((0, capacity, 4), np.float64)
        self.k: npt.NDArray[np.int8] = np.zeros((0, capacity, 3), np.int8)
        self.folded: _BOOL = np.zeros(0, np.bool_)
        self.fold_ts: _I64 = np.zeros(0, np.int64)
        self.fold_f: _F64 = np.zeros((0, 4), np.float64)
        self.fold_k: npt.NDArray[np.int8] = np.zeros((0, 3), np.int8)

    def __len__(self) -> int:
        return int(self.parked.shape[0])

    def ensure(self, size: int) -> None:
        """Rows for ``size`` devices (grown geometrically; new rows are not parked)."""
        grow_rows(self, _PARKING_COLUMNS, size)

    def is_parked(self, d: int) -> bool:
        """Whether device ``d``'s state is parked (so quiet)."""
        return d < self.parked.shape[0] and bool(self.parked[d])

    def park(self, d: int, st: EpisodeState) -> None:
        """Take over a quiet state's bookkeeping."""
        self.parked[d] = True
        self.max_ts[d] = _NO_TS if st.max_ts_ms is None else st.max_ts_ms
        self.wm[d] = _NO_TS if st.watermark_ms is None else st.watermark_ms
        self.n[d] = 0
        self.folded[d] = False

    def unpark(self, d: int, st: EpisodeState) -> None:
        """Hand a parked state its readings and watermark back (no-op when not parked)."""
        if d >= len(self) or not self.parked[d]:
            return
        self.parked[d] = False
        parts: list[Buf] = []
        if self.folded[d]:
            parts.append(
                Buf(
                    self.fold_ts[d : d + 1].copy(),
                    self.fold_f[d : d + 1].copy(),
                    self.fold_k[d : d + 1].copy(),
                )
            )
        m = int(self.n[d])
        if m:
            parts.append(Buf(self.ts[d, :m].copy(), self.f[d, :m].copy(), self.k[d, :m].copy()))
        if parts:
            part = parts[0] if len(parts) == 1 else Buf.concat(*parts)
            st.pending.append(part)
            st.pending_n += len(part)
        top, wm = int(self.max_ts[d]), int(self.wm[d])
        if top != _NO_TS and (st.max_ts_ms is None or top > st.max_ts_ms):
            st.max_ts_ms = top
        if wm != _NO_TS and (st.watermark_ms is None or wm > st.watermark_ms):
            st.watermark_ms = wm
        self.n[d] = 0
        self.folded[d] = False

    def release(self, states: Sequence[EpisodeState]) -> None:
        """Unpark every state (before using them other than through ``feed_many``)."""
        for d in np.flatnonzero(self.parked[: len(states)]).tolist():
            self.unpark(d, states[d])

    def park_many(
        self,
        batch: Buf,
        dev: _I64,
        starts: npt.NDArray[np.intp],
        met_any: _BOOL,
        ts_min: _I64,
        ts_max: _I64,
        *,
        lateness_ms: int,
    ) -> _BOOL:
        """Keep the readings of parked devices that stay quiet; True per group kept.

        ``batch`` is grouped by device (``dev``), groups beginning at
        ``starts``. A group is kept when its device is parked, none of its
        readings meets the condition nor is older than the watermark, every
        reading has a position (none has one, with ``positions=False``), and
        the device's row has room (after folding
        its final readings).
        """
        n = len(batch)
        g = dev[starts]
        counts = np.diff(np.r_[starts, n])
        lon, lat = batch.lon, batch.lat
        unknown = np.isnan(lon) | np.isnan(lat)
        pos_ok = np.logical_and.reduceat(~unknown if self.positions else unknown, starts)
        keep = self.parked[g] & ~met_any & (ts_min >= self.wm[g]) & pos_ok
        keep &= counts <= self.capacity
        if not keep.any():
            return keep
        full = keep & (self.n[g] + counts > self.capacity)
        if full.any():
            self._fold(g[full])
            keep &= self.n[g] + counts <= self.capacity
            if not keep.any():
                return keep
        kg = g[keep]
        top = np.maximum(self.max_ts[kg], ts_max[keep])
        self.max_ts[kg] = top
        self.wm[kg] = np.maximum(self.wm[kg], top - lateness_ms)
        rows = np.repeat(keep, counts)
        rd = dev[rows]
        rank = np.arange(n)[rows] - np.repeat(starts[keep], counts[keep])
        slot = self.n[rd] + rank
        self.ts[rd, slot] = batch.ts[rows]
        self.f[rd, slot] = batch.f[rows]
        self.k[rd, slot] = batch.k[rows]
        self.n[kg] += counts[keep]
        return keep

    def _fold(self, devices: _I64) -> None:
        """Fold each device's final readings (older than its watermark) into one, the newest."""
        cap = self.capacity
        ts = self.ts[devices]
        valid = np.arange(cap)[None, :] < self.n[devices][:, None]
        final = valid & (ts < self.wm[devices][:, None])
        has = final.any(axis=1)
        if has.any():
            masked = np.where(final, ts, _NO_TS)
            j = masked.argmax(axis=1)
            newest = masked[np.arange(devices.shape[0]), j]
            better = has & (~self.folded[devices] | (newest > self.fold_ts[devices]))
            bd, bj = devices[better], j[better]
            self.fold_ts[bd] = newest[better]
            self.fold_f[bd] = self.f[bd, bj]
            self.fold_k[bd] = self.k[bd, bj]
            self.folded[bd] = True
        kept = valid & ~final
        order = np.argsort(~kept, axis=1, kind="stable")
        rows = np.arange(devices.shape[0])[:, None]
        self.ts[devices] = ts[rows, order]
        self.f[devices] = self.f[devices][rows, order]
        self.k[devices] = self.k[devices][rows, order]
        self.n[devices] = kept.sum(axis=1)
