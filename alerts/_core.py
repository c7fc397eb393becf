"""Vectorized episode state machine over one time-sorted slice of readings.

This is the inner kernel of :mod:`alerts.episodes`; it knows nothing about
lateness, watermarks or emitted alerts. Each reading carries a code:

* ``MET`` (1): the opening condition holds;
* ``CLEAR`` (-1): the close condition holds;
* ``END`` (-2): the episode ends at once (a service window ended, a filing
  began, a cut from the engine); never opens anything;
* ``NEUTRAL`` (0): neither (e.g. speed unknown); breaks every run.

The machine has four phases: ``IDLE``, ``CANDIDATE`` (a run of MET readings
too short so far), ``ACTIVE`` (an episode is open) and ``CLOSING`` (open,
inside a run of CLEAR readings too short so far). A run is a maximal stretch
of consecutive readings with the same code (a gap longer than ``gap_ms``,
when set, also ends it). Its duration is ``ts`` of its latest reading minus
``ts`` of its first, so the episode opens at the first reading of a MET run
with ``ts - run_start >= open_ms`` and closes at the first reading of a CLEAR
run with ``ts - clear_start >= close_ms``, or at an END reading, or at a gap.

The pass is vectorized: runs come from the shifted mask, the reading where a
run reaches its minimum duration from one ``searchsorted``, and the Python
loop runs once per *episode*, not per reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from core.jit import jit

__all__ = [
    "ACTIVE",
    "CANDIDATE",
    "CLEAR",
    "CLOSING",
    "END",
    "IDLE",
    "MET",
    "NEUTRAL",
    "Buf",
    "Core",
    "Ep",
    "close_core",
    "run_pass",
]

_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_I8 = npt.NDArray[np.int8]
_BOOL = npt.NDArray[np.bool_]

MET: Final = 1
CLEAR: Final = -1
END: Final = -2
NEUTRAL: Final = 0

IDLE: Final = 0
CANDIDATE: Final = 1
ACTIVE: Final = 2
CLOSING: Final = 3

#: Mean Earth radius (IUGG), metres; haversine steps are well within 0.5 % of geodesic.
_EARTH_RADIUS_M: Final = 6_371_008.8
#: Passes over at most this many readings run reading by reading: for a handful of
#: readings (live traffic, one fix per device per batch) NumPy's fixed cost per call
#: is far above a short Python loop. Both paths are tested against the reference.
SCALAR_MAX = 12
_NAN: Final = math.nan


class Buf:
    """Readings sorted by ``ts`` with unique ``ts``, in three arrays.

    ``ts`` (int64), ``f`` (float64, one row per reading: value, tag, lon,
    lat) and ``k`` (int8 rows: code, backfill, virtual): merging, slicing or
    reordering a small buffer then costs three NumPy calls rather than eight,
    which is most of the cost of a live batch. The column properties are views.
    """

    __slots__ = ("f", "k", "ts")

    def __init__(self, ts: _I64, f: _F64, k: _I8) -> None:
        self.ts = ts
        self.f = f
        self.k = k

    @staticmethod
    def from_columns(
        ts: _I64,
        code: _I8,
        value: _F64,
        tag: _F64,
        lon: _F64,
        lat: _F64,
        backfill: _BOOL,
        virtual: _BOOL,
    ) -> Buf:
        """Build from one array per column (all of one length)."""
        n = ts.shape[0]
        f = np.empty((n, 4), np.float64)
        k = np.empty((n, 3), np.int8)
        c = np.ascontiguousarray
        # Contiguous arrays of these types: the one compiled signature (alerts.warm).
        _fill_rows(
            c(code, np.int8),
            c(value, np.float64),
            c(tag, np.float64),
            c(lon, np.float64),
            c(lat, np.float64),
            c(backfill, np.bool_),
            c(virtual, np.bool_),
            f,
            k,
        )
        return Buf(ts, f, k)

    @staticmethod
    def empty() -> Buf:
        """A buffer without readings."""
        return Buf(np.empty(0, np.int64), np.empty((0, 4), np.float64), np.empty((0, 3), np.int8))

    @property
    def code(self) -> _I8:
        """MET, CLEAR, END or NEUTRAL per reading."""
        return self.k[:, 0]

    @property
    def backfill(self) -> _BOOL:
        """Blind-area reading sent late."""
        return self.k[:, 1].view(np.bool_)

    @property
    def virtual(self) -> _BOOL:
        """A cut added by the engine, not a reading of the device."""
        return self.k[:, 2].view(np.bool_)

    @property
    def value(self) -> _F64:
        """Aggregated by max over meeting readings (NaN: none)."""
        return self.f[:, 0]

    @property
    def tag(self) -> _F64:
        """Reported at the max."""
        return self.f[:, 1]

    @property
    def lon(self) -> _F64:
        """Longitude, degrees (NaN: unknown)."""
        return self.f[:, 2]

    @property
    def lat(self) -> _F64:
        """Latitude, degrees (NaN: unknown)."""
        return self.f[:, 3]

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def take(self, index: npt.NDArray[np.intp] | _BOOL | slice) -> Buf:
        """The readings selected by ``index`` (a slice, a mask or indices)."""
        return Buf(self.ts[index], self.f[index], self.k[index])

    @staticmethod
    def concat(*parts: Buf) -> Buf:
        """The parts one after the other (not re-sorted)."""
        if len(parts) == 1:
            return parts[0]
        return Buf(
            np.concatenate([p.ts for p in parts]),
            np.concatenate([p.f for p in parts]),
            np.concatenate([p.k for p in parts]),
        )


@dataclass(slots=True)
class Core:
    """Phase-machine state after the readings processed so far (plain scalars).

    ``run_start_ms`` is the first MET reading of the candidate run, or the
    episode's ``started_at`` once active. The aggregate fields describe the
    candidate run or the open episode: ``max_value`` over its MET readings
    (NaN when none had a value) with ``tag_at_max`` taken at the first reading
    reaching it; start and end positions (degrees); ``path_m`` travelled from
    its first to its latest MET reading, plus ``pending_m`` travelled since.
    """

    phase: int = IDLE
    run_start_ms: int = 0
    opened_at_ms: int = 0
    last_met_ms: int = 0
    clear_start_ms: int = 0
    last_ts_ms: int | None = None
    prev_lon: float = _NAN
    prev_lat: float = _NAN
    max_value: float = _NAN
    tag_at_max: float = _NAN
    start_lon: float = _NAN
    start_lat: float = _NAN
    end_lon: float = _NAN
    end_lat: float = _NAN
    path_m: float = 0.0
    pending_m: float = 0.0
    late: bool = False

    def copy(self) -> Core:
        """An independent copy."""
        return Core(
            self.phase,
            self.run_start_ms,
            self.opened_at_ms,
            self.last_met_ms,
            self.clear_start_ms,
            self.last_ts_ms,
            self.prev_lon,
            self.prev_lat,
            self.max_value,
            self.tag_at_max,
            self.start_lon,
            self.start_lat,
            self.end_lon,
            self.end_lat,
            self.path_m,
            self.pending_m,
            self.late,
        )


@dataclass(slots=True)
class Ep:
    """One episode as seen by a pass: opened in it, or continued from before it.

    ``open_instant``/``close_instant`` say whether the decision rests on a
    single reading (so no reading arriving later can undo it): an open with
    ``open_ms == 0``, a close at an END reading or with ``close_ms == 0``.
    """

    started_ms: int
    opened_at_ms: int
    last_met_ms: int
    late: bool
    continued: bool
    open_instant: bool
    closed_at_ms: int | None = None
    close_instant: bool = False
    max_value: float = _NAN
    tag_at_max: float = _NAN
    start_lon: float = _NAN
    start_lat: float = _NAN
    end_lon: float = _NAN
    end_lat: float = _NAN
    path_m: float = 0.0
    pending_m: float = field(default=0.0, repr=False)


def _haversine_m(lon0: _F64, lat0: _F64, lon1: _F64, lat1: _F64) -> _F64:
    p0 = np.radians(lat0)
    p1 = np.radians(lat1)
    dp = p1 - p0
    dl = np.radians(lon1 - lon0)
    a = np.sin(dp * 0.5) ** 2 + np.cos(p0) * np.cos(p1) * np.sin(dl * 0.5) ** 2
    out: _F64 = 2.0 * _EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0)))
    return out


def _ep_from_core(core: Core) -> Ep:
    return Ep(
        started_ms=core.run_start_ms,
        opened_at_ms=core.opened_at_ms,
        last_met_ms=core.last_met_ms,
        late=core.late,
        continued=True,
        open_instant=True,
        max_value=core.max_value,
        tag_at_max=core.tag_at_max,
        start_lon=core.start_lon,
        start_lat=core.start_lat,
        end_lon=core.end_lon,
        end_lat=core.end_lat,
        path_m=core.path_m,
        pending_m=core.pending_m,
    )


def _core_from_ep(core: Core, ep: Ep, phase: int) -> None:
    core.phase = phase
    core.run_start_ms = ep.started_ms
    core.opened_at_ms = ep.opened_at_ms
    core.last_met_ms = ep.last_met_ms
    core.late = ep.late
    core.max_value = ep.max_value
    core.tag_at_max = ep.tag_at_max
    core.start_lon = ep.start_lon
    core.start_lat = ep.start_lat
    core.end_lon = ep.end_lon
    core.end_lat = ep.end_lat
    core.path_m = ep.path_m
    core.pending_m = ep.pending_m


def _reset_aggregates(core: Core) -> None:
    core.max_value = _NAN
    core.tag_at_max = _NAN
    core.start_lon = core.start_lat = _NAN
    core.end_lon = core.end_lat = _NAN
    core.path_m = core.pending_m = 0.0
    core.late = False


def close_core(core: Core, at_ms: int) -> Ep | None:
    """End whatever is under way at ``at_ms`` (a gap or a flush), as an END reading would.

    Returns the closed episode when one was open; a candidate run is dropped.
    """
    ep = None
    if core.phase in (ACTIVE, CLOSING):
        ep = _ep_from_core(core)
        ep.closed_at_ms = at_ms
    core.phase = IDLE
    _reset_aggregates(core)
    return ep


class _Slice:
    """Per-pass derived arrays, computed once and shared by the aggregation helpers."""

    __slots__ = ("cs", "lat_ff", "lon_ff", "met", "tag", "ts", "vmax")

    def __init__(
        self,
        core: Core,
        b: Buf,
        met: _BOOL,
        *,
        want_value: bool,
        want_pos: bool,
        want_path: bool = True,
    ):
        self.ts = b.ts
        self.met = met
        self.tag = b.tag
        n = len(b)
        self.vmax: _F64 | None = None
        if want_value:
            v = b.value
            self.vmax = np.where(met & ~np.isnan(v), v, -np.inf)
        self.lon_ff: _F64 | None = None
        self.lat_ff: _F64 | None = None
        self.cs: _F64 | None = None
        if want_pos:
            valid = ~(np.isnan(b.lon) | np.isnan(b.lat))
            last = np.maximum.accumulate(np.where(valid, np.arange(n), -1))
            known = last >= 0
            safe = np.maximum(last, 0)
            lon_ff = np.where(known, b.lon[safe], core.prev_lon)
            lat_ff = np.where(known, b.lat[safe], core.prev_lat)
            prev_lon = np.empty(n)
            prev_lat = np.empty(n)
            prev_lon[0] = core.prev_lon
            prev_lat[0] = core.prev_lat
            prev_lon[1:] = lon_ff[:-1]
            prev_lat[1:] = lat_ff[:-1]
            cs = np.zeros(n + 1)
            if want_path:
                step = _haversine_m(prev_lon, prev_lat, lon_ff, lat_ff)
                # A reading without a position, or the very first position, adds no distance.
                step = np.where(valid & ~np.isnan(step), step, 0.0)
                np.cumsum(step, out=cs[1:])
            self.lon_ff, self.lat_ff, self.cs = lon_ff, lat_ff, cs

    def extend(self, ep: Ep, lo: int, hi: int, *, step_lo: int) -> None:
        """Add the MET readings of index range ``[lo, hi]`` (``hi < lo``: none) to ``ep``.

        ``step_lo`` is the first reading whose step (distance from the reading
        before it) belongs to the episode: ``lo + 1`` for a run that starts
        here, ``0`` when it continues from an earlier pass.
        """
        if hi < lo:
            return
        ep.last_met_ms = int(self.ts[hi])
        if self.vmax is not None:
            seg = self.vmax[lo : hi + 1]
            k = int(np.argmax(seg))
            v = float(seg[k])
            # Strictly greater: on ties the earliest reading keeps the tag.
            if v > -math.inf and (math.isnan(ep.max_value) or v > ep.max_value):
                ep.max_value = v
                ep.tag_at_max = float(self.tag[lo + k])
        if self.cs is not None:
            assert self.lon_ff is not None
            assert self.lat_ff is not None
            ep.path_m += ep.pending_m + float(self.cs[hi + 1] - self.cs[step_lo])
            ep.pending_m = 0.0
            ep.end_lon = float(self.lon_ff[hi])
            ep.end_lat = float(self.lat_ff[hi])

    def pending_to_end(self, ep: Ep, after: int) -> None:
        """Distance travelled after reading ``after`` (-1: from the pass start) to the end."""
        if self.cs is not None:
            ep.pending_m += float(self.cs[-1] - self.cs[after + 1])

    def start_at(self, ep: Ep, s: int) -> None:
        """Set the start position from reading ``s``."""
        if self.lon_ff is not None and self.lat_ff is not None:
            ep.start_lon = float(self.lon_ff[s])
            ep.start_lat = float(self.lat_ff[s])
            ep.end_lon = ep.start_lon
            ep.end_lat = ep.start_lat


def _runs(mask: _BOOL, gap: _BOOL | None) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """First and last index of each maximal run of ``mask`` (a gap before a reading splits)."""
    starts = mask.copy()
    starts[1:] &= ~mask[:-1]
    ends = mask.copy()
    ends[:-1] &= ~mask[1:]
    if gap is not None:
        starts |= mask & gap
        ends[:-1] |= mask[:-1] & gap[1:]
    return np.flatnonzero(starts), np.flatnonzero(ends)


def run_pass(
    core: Core,
    b: Buf,
    *,
    open_ms: int,
    close_ms: int | None,
    gap_ms: int | None,
    want_value: bool,
    want_pos: bool,
    want_path: bool = True,
) -> list[Ep]:
    """Run the machine over ``b`` from ``core``; update ``core`` in place; return the episodes.

    The list holds the episode continued from before the pass (if one was
    open, first, even when ``b`` is empty), then every episode opened in the
    pass, in time order; each is closed (``closed_at_ms`` set) or, for the
    last one only, still open at the end. ``close_ms=None`` means never close
    on CLEAR readings (only END readings and gaps close). ``want_path=False``
    leaves ``path_m`` at 0 (positions are still tracked) for rules that do not
    report the distance travelled.
    """
    n = len(b)
    was_open = core.phase in (ACTIVE, CLOSING)
    if n == 0:
        return [_ep_from_core(core)] if was_open else []
    if n <= SCALAR_MAX:
        return _scalar_pass(
            core,
            b,
            open_ms=open_ms,
            close_ms=close_ms,
            gap_ms=gap_ms,
            want_value=want_value,
            want_pos=want_pos,
            want_path=want_path,
        )
    ts = b.ts
    code = b.code
    met = code == MET
    if not was_open and not met.any():
        # Common case: nothing under way and nothing meeting the condition.
        core.phase = IDLE
        _reset_aggregates(core)
        core.last_ts_ms = int(ts[-1])
        if want_pos:
            valid = np.flatnonzero(~(np.isnan(b.lon) | np.isnan(b.lat)))
            if valid.size:
                core.prev_lon = float(b.lon[valid[-1]])
                core.prev_lat = float(b.lat[valid[-1]])
        return []

    clear = code == CLEAR
    gap: _BOOL | None = None
    prev_ts = np.empty(n, np.int64)
    prev_ts[0] = core.last_ts_ms if core.last_ts_ms is not None else ts[0]
    prev_ts[1:] = ts[:-1]
    gap_ms_i = 0 if gap_ms is None else gap_ms
    if gap_ms is not None:
        gap = (ts - prev_ts) > gap_ms
    sl = _Slice(core, b, met, want_value=want_value, want_pos=want_pos, want_path=want_path)

    # MET runs and the reading where each reaches open_ms (continuing a candidate).
    m_starts, m_ends = _runs(met, gap)
    m_start_ts = ts[m_starts].copy()
    cont_met = core.phase == CANDIDATE and bool(met[0]) and not (gap is not None and bool(gap[0]))
    if cont_met:
        m_start_ts[0] = core.run_start_ms
    open_idx = np.searchsorted(ts, m_start_ts + open_ms, side="left")
    qual = open_idx <= m_ends
    q_run = np.flatnonzero(qual)
    q_start = m_starts[q_run]

    # Close points: CLEAR runs reaching close_ms, END readings, gaps (before the reading).
    idx_parts: list[_I64] = []
    at_parts: list[_I64] = []
    inst_parts: list[_BOOL] = []
    prio_parts: list[_I64] = []
    if close_ms is not None and clear.any():
        c_starts, c_ends = _runs(clear, gap)
        c_start_ts = ts[c_starts].copy()
        if core.phase == CLOSING and bool(clear[0]) and not (gap is not None and bool(gap[0])):
            c_start_ts[0] = core.clear_start_ms
        close_idx = np.searchsorted(ts, c_start_ts + close_ms, side="left")
        cq = close_idx[close_idx <= c_ends].astype(np.int64)
        idx_parts.append(cq)
        at_parts.append(ts[cq])
        inst_parts.append(np.full(cq.shape[0], close_ms == 0))
        prio_parts.append(np.ones(cq.shape[0], np.int64))
    else:
        c_starts = c_ends = np.empty(0, np.intp)
        c_start_ts = np.empty(0, np.int64)
    ends_idx = np.flatnonzero(code == END).astype(np.int64)
    if ends_idx.size:
        idx_parts.append(ends_idx)
        at_parts.append(ts[ends_idx])
        inst_parts.append(np.ones(ends_idx.shape[0], np.bool_))
        prio_parts.append(np.ones(ends_idx.shape[0], np.int64))
    if gap is not None and gap.any():
        g = np.flatnonzero(gap).astype(np.int64)
        idx_parts.append(g)
        at_parts.append(prev_ts[g] + gap_ms_i)
        # A gap could still be filled by a reading not yet received.
        inst_parts.append(np.zeros(g.shape[0], np.bool_))
        prio_parts.append(np.zeros(g.shape[0], np.int64))
    if idx_parts:
        cp_idx = np.concatenate(idx_parts)
        cp_at = np.concatenate(at_parts)
        cp_inst = np.concatenate(inst_parts)
        order = np.lexsort((np.concatenate(prio_parts), cp_idx))
        cp_idx, cp_at, cp_inst = cp_idx[order], cp_at[order], cp_inst[order]
        # Several reasons at one reading: the gap (before it) comes first and wins.
        first = np.ones(cp_idx.shape[0], np.bool_)
        first[1:] = cp_idx[1:] != cp_idx[:-1]
        cp_idx, cp_at, cp_inst = cp_idx[first], cp_at[first], cp_inst[first]
    else:
        cp_idx = np.empty(0, np.int64)
        cp_at = cp_idx
        cp_inst = np.empty(0, np.bool_)

    last_met = np.maximum.accumulate(np.where(met, np.arange(n), -1))
    eps: list[Ep] = []
    pos = 0
    open_ep: Ep | None = None
    open_from = 0  # first reading of the open episode's MET readings in this pass

    if was_open:
        ep = _ep_from_core(core)
        eps.append(ep)
        if cp_idx.size:
            p = int(cp_idx[0])
            sl.extend(ep, 0, int(last_met[p - 1]) if p > 0 else -1, step_lo=0)
            ep.closed_at_ms = int(cp_at[0])
            ep.close_instant = bool(cp_inst[0])
            pos = p
        else:
            open_ep = ep
    if open_ep is None:
        while True:
            r = int(np.searchsorted(q_start, pos, side="left"))
            if r == q_start.shape[0]:
                break
            k = int(q_run[r])
            s = int(m_starts[k])
            o = int(open_idx[k])
            ep = Ep(
                started_ms=int(m_start_ts[k]),
                opened_at_ms=int(ts[o]),
                last_met_ms=int(ts[s]),
                late=bool(b.backfill[o]),
                continued=False,
                open_instant=open_ms == 0,
            )
            if s == 0 and cont_met:
                # The candidate run from the previous pass continues: keep its aggregates.
                ep.max_value, ep.tag_at_max = core.max_value, core.tag_at_max
                ep.start_lon, ep.start_lat = core.start_lon, core.start_lat
                ep.end_lon, ep.end_lat = core.end_lon, core.end_lat
                ep.path_m = core.path_m
                step_lo = 0
            else:
                sl.start_at(ep, s)
                step_lo = s + 1
            eps.append(ep)
            c = int(np.searchsorted(cp_idx, o, side="right"))
            if c == cp_idx.shape[0]:
                open_ep, open_from = ep, s
                sl.extend(ep, s, int(last_met[n - 1]), step_lo=step_lo)
                if sl.cs is not None:
                    sl.pending_to_end(ep, int(last_met[n - 1]))
                break
            p = int(cp_idx[c])
            sl.extend(ep, s, int(last_met[p - 1]), step_lo=step_lo)
            ep.closed_at_ms = int(cp_at[c])
            ep.close_instant = bool(cp_inst[c])
            pos = p
    elif was_open:
        lm = int(last_met[n - 1])
        if lm >= 0:
            sl.extend(open_ep, 0, lm, step_lo=0)
            sl.pending_to_end(open_ep, lm)
        else:
            sl.pending_to_end(open_ep, -1)
        open_from = 0

    # State after the pass.
    core.last_ts_ms = int(ts[-1])
    if sl.lon_ff is not None and sl.lat_ff is not None:
        core.prev_lon = float(sl.lon_ff[-1])
        core.prev_lat = float(sl.lat_ff[-1])
    if open_ep is not None:
        phase = ACTIVE
        if bool(clear[-1]) and c_starts.shape[0] and int(c_starts[-1]) >= open_from:
            phase = CLOSING
            core.clear_start_ms = int(c_start_ts[-1])
        _core_from_ep(core, open_ep, phase)
        return eps
    # Idle, unless the last MET run reaches the end of the pass after the last close.
    if bool(met[-1]) and int(m_starts[-1]) >= pos:
        s = int(m_starts[-1])
        cand = Ep(
            started_ms=int(m_start_ts[-1]),
            opened_at_ms=0,
            last_met_ms=int(ts[s]),
            late=False,
            continued=False,
            open_instant=False,
        )
        if s == 0 and cont_met:
            cand.max_value, cand.tag_at_max = core.max_value, core.tag_at_max
            cand.start_lon, cand.start_lat = core.start_lon, core.start_lat
            cand.end_lon, cand.end_lat = core.end_lon, core.end_lat
            cand.path_m = core.path_m
            step_lo = 0
        else:
            sl.start_at(cand, s)
            step_lo = s + 1
        sl.extend(cand, s, n - 1, step_lo=step_lo)
        _core_from_ep(core, cand, CANDIDATE)
        core.opened_at_ms = 0
    else:
        core.phase = IDLE
        _reset_aggregates(core)
    return eps


def _haversine1(lon0: float, lat0: float, lon1: float, lat1: float) -> float:
    p0 = math.radians(lat0)
    p1 = math.radians(lat1)
    a = (
        math.sin((p1 - p0) * 0.5) ** 2
        + math.cos(p0) * math.cos(p1) * math.sin(math.radians(lon1 - lon0) * 0.5) ** 2
    )
    return 2.0 * _EARTH_RADIUS_M * math.asin(math.sqrt(min(a, 1.0)))


def _scalar_pass(
    core: Core,
    b: Buf,
    *,
    open_ms: int,
    close_ms: int | None,
    gap_ms: int | None,
    want_value: bool,
    want_pos: bool,
    want_path: bool = True,
) -> list[Ep]:
    """:func:`run_pass` one reading at a time, for a few readings (same results)."""
    ts = b.ts.tolist()
    code = b.code.tolist()
    backfill = b.backfill.tolist()
    value = b.value.tolist() if want_value else []
    tag = b.tag.tolist() if want_value else []
    lon = b.lon.tolist() if want_pos else []
    lat = b.lat.tolist() if want_pos else []
    phase = core.phase
    eps: list[Ep] = []
    cur: Ep | None = None  # the open episode
    cand: Ep | None = None  # the candidate run
    if phase in (ACTIVE, CLOSING):
        cur = _ep_from_core(core)
        eps.append(cur)
    elif phase == CANDIDATE:
        cand = _ep_from_core(core)
        cand.continued = False
        cand.open_instant = False
    clear_start = core.clear_start_ms
    last_ts = core.last_ts_ms
    plon, plat = core.prev_lon, core.prev_lat

    for i, t in enumerate(ts):
        c = code[i]
        if gap_ms is not None and last_ts is not None and t - last_ts > gap_ms:
            if cur is not None:
                cur.closed_at_ms = last_ts + gap_ms
                cur.close_instant = False
                cur = None
            cand = None
            phase = IDLE
        last_ts = t
        step = 0.0
        if want_pos:
            x, y = lon[i], lat[i]
            if not (math.isnan(x) or math.isnan(y)):
                if want_path and not (math.isnan(plon) or math.isnan(plat)):
                    step = _haversine1(plon, plat, x, y)
                plon, plat = x, y
        if cur is not None:
            cur.pending_m += step
        if c == MET:
            if phase == IDLE:
                cand = Ep(
                    started_ms=t,
                    opened_at_ms=0,
                    last_met_ms=t,
                    late=False,
                    continued=False,
                    open_instant=False,
                )
                if want_pos:
                    cand.start_lon, cand.start_lat = plon, plat
                phase = CANDIDATE
            elif phase == CANDIDATE:
                assert cand is not None
                cand.path_m += step
            else:
                assert cur is not None
                cur.path_m += cur.pending_m
                cur.pending_m = 0.0
                phase = ACTIVE
            ep = cand if phase == CANDIDATE else cur
            assert ep is not None
            ep.last_met_ms = t
            if want_pos:
                ep.end_lon, ep.end_lat = plon, plat
            if want_value:
                v = value[i]
                # Strictly greater: on ties the earliest reading keeps the tag.
                if v > -math.inf and (math.isnan(ep.max_value) or v > ep.max_value):
                    ep.max_value = v
                    ep.tag_at_max = tag[i]
            if phase == CANDIDATE and cand is not None and t - cand.started_ms >= open_ms:
                cand.opened_at_ms = t
                cand.late = bool(backfill[i])
                cand.open_instant = open_ms == 0
                cur, cand = cand, None
                eps.append(cur)
                phase = ACTIVE
        elif c == CLEAR:
            if phase == CANDIDATE:
                cand = None
                phase = IDLE
            elif cur is not None and close_ms is not None:
                if phase == ACTIVE:
                    phase = CLOSING
                    clear_start = t
                if t - clear_start >= close_ms:
                    cur.closed_at_ms = t
                    cur.close_instant = close_ms == 0
                    cur = None
                    phase = IDLE
        elif c == END:
            if cur is not None:
                cur.closed_at_ms = t
                cur.close_instant = True
                cur = None
            cand = None
            phase = IDLE
        elif phase == CANDIDATE:
            cand = None
            phase = IDLE
        elif phase == CLOSING:
            phase = ACTIVE

    core.last_ts_ms = last_ts
    if want_pos:
        core.prev_lon, core.prev_lat = plon, plat
    if cur is not None:
        _core_from_ep(core, cur, phase)
        core.clear_start_ms = clear_start
    elif cand is not None:
        _core_from_ep(core, cand, CANDIDATE)
        core.opened_at_ms = 0
    else:
        core.phase = IDLE
        _reset_aggregates(core)
    return eps


@jit
def _fill_rows(
    code: _I8,
    value: _F64,
    tag: _F64,
    lon: _F64,
    lat: _F64,
    backfill: _BOOL,
    virtual: _BOOL,
    f: _F64,
    k: _I8,
) -> None:
    """:meth:`Buf.from_columns`' rows, in one pass (column by column is seven strided ones)."""
    for i in range(code.shape[0]):
        f[i, 0] = value[i]
        f[i, 1] = tag[i]
        f[i, 2] = lon[i]
        f[i, 3] = lat[i]
        k[i, 0] = code[i]
        k[i, 1] = backfill[i]
        k[i, 2] = virtual[i]
