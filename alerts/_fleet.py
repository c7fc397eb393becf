"""Compiled kernels of :class:`alerts.fleet.FleetEpisodes`: the episode detector in arrays.

This is :class:`alerts.episodes.EpisodeDetector` (``_feed`` without the late
lane, ``_settle``, ``_reconcile``, ``advance``) and the reading-by-reading
pass of :func:`alerts._core._scalar_pass`, written over fleet-wide arrays
with one row per device, compiled with Numba (:func:`core.jit.jit`). One
call handles every device of a batch or of a clock tick; a device whose
case the arrays cannot hold (a reading older than its watermark, which goes
to a late lane, or more buffered readings than a row has room for) is left
untouched and reported, and the caller hands it to the Python detector.

The Python detector is the reference: property tests feed both the same
readings and compare every event. Comments name the Python lines each part
follows.

Layout (``R`` devices, ``C`` readings buffered per device, ``E`` emitted
episodes per device; see :func:`_room` for why a settle never keeps more
than ``E``):

* ``si`` int64 ``[R, NI]``, ``sf`` float64 ``[R, NF]``: the core (``I_*``,
  ``F_*`` columns) and the bookkeeping of :class:`EpisodeState`. A row of
  ``si`` is two cache lines (:class:`~alerts.fleet.FleetEpisodes` starts its
  arrays on a 64-byte line); a quiet reading touches only the first.
* ``bts`` int64 ``[R, C]``, ``bf`` float64 ``[R, C, 4]`` (value, tag, lon,
  lat), ``bk`` int8 ``[R, C, 3]`` (code, backfill, virtual): the reorder
  buffer, sorted by ``ts``, ``si[:, I_NBUF]`` readings per row, of which
  ``si[:, I_NMET]`` meet the condition (kept up to date by every change of
  the buffer, so telling a quiet row reads no buffer). The three are strided
  views of one int64 array ``buf[R, C, BW]`` (:func:`buffer_views`): a
  reading is one 48-byte record, its floats, flags and, last, its ``ts``.
  Adding a reading reads the ``ts`` before its slot and writes the slot: 56
  bytes in a row, one or two cache lines (1.75 on average) where three
  separate arrays cost three or four.
* ``mi`` int64 ``[R, E, MI]``, ``mf`` float64 ``[R, E, MF]``: the emitted
  episodes (``M_*`` columns), ``si[:, I_NEM]`` per row.

``None`` in a time column is :data:`NO_TS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

from alerts._core import ACTIVE, CANDIDATE, CLEAR, CLOSING, END, IDLE, MET
from core.jit import jit, prefetch

_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def _inline(fn: _Fn) -> _Fn:
    """A helper compiled into its callers (no call, no reference counting of its arrays)."""
    return cast(_Fn, numba.njit(cache=True, nogil=True, inline="always")(fn))


_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_I8 = npt.NDArray[np.int8]
_BOOL = npt.NDArray[np.bool_]

#: ``None`` in int64 time columns.
NO_TS: Final = int(np.iinfo(np.int64).min)
#: ``due`` when nothing waits for the watermark.
NEVER: Final = int(np.iinfo(np.int64).max)


# Core and state, int64 columns. A row is two 64-byte cache lines (the arrays are
# aligned to one): the first holds all a quiet reading reads and writes.
I_PHASE: Final = 0
I_NEM: Final = 1
I_NBUF: Final = 2
I_NMET: Final = 3  # MET readings in the buffer (EpisodeState.quiet without a scan)
I_WM: Final = 4
I_MAX_TS: Final = 5
I_DUE: Final = 6
I_LAST_TS: Final = 7
I_RUN_START: Final = 8
I_OPENED: Final = 9
I_LAST_MET: Final = 10
I_CLEAR_START: Final = 11
I_LATE: Final = 12
I_NEXT: Final = 13
I_ORPHANS: Final = 14
NI: Final = 16  # (one spare)
#: Columns copied for a speculative pass: ``0 .. I_LATE``, the core among them
#: (phase, run start, opened, last met, clear start, last ts, late).
CORE_I: Final = I_LATE + 1

# Core, float64 columns. The episode aggregates (max .. pending) are in the same
# order in the episode scratch (X_*) and emitted (M_*) float columns, from 0.
F_PREV_LON: Final = 0
F_PREV_LAT: Final = 1
F_AGG: Final = 2  # first aggregate column
F_MAX: Final = 2
F_TAG: Final = 3
F_START_LON: Final = 4
F_START_LAT: Final = 5
F_END_LON: Final = 6
F_END_LAT: Final = 7
F_PATH: Final = 8
F_PENDING: Final = 9
NF: Final = 10

# Episodes seen by a pass (alerts._core.Ep), scratch rows.
X_STARTED: Final = 0
X_OPENED: Final = 1
X_LAST_MET: Final = 2
X_LATE: Final = 3
X_CONT: Final = 4
X_OPEN_INST: Final = 5
X_CLOSED: Final = 6
X_CLOSE_INST: Final = 7
XI: Final = 8
A_MAX: Final = 0
A_TAG: Final = 1
A_START_LON: Final = 2
A_START_LAT: Final = 3
A_END_LON: Final = 4
A_END_LAT: Final = 5
A_PATH: Final = 6
A_PENDING: Final = 7
XF: Final = 8

# Emitted episodes (alerts.episodes.Episode); floats are A_MAX .. A_PATH.
M_NUMBER: Final = 0
M_STARTED: Final = 1
M_OPENED: Final = 2
M_LAST_MET: Final = 3
M_CLOSED: Final = 4
M_LATE: Final = 5
MI: Final = 6
MF: Final = 7

# Events out: the device and action, then an Episode (M_* columns shifted by 2).
O_DEV: Final = 0
O_ACTION: Final = 1
OI: Final = 2 + MI
OPEN: Final = 0
UPDATE: Final = 1
CLOSE: Final = 2

# Parameters (int64 vector).
P_OPEN: Final = 0
P_CLOSE: Final = 1  # -1: never closes on readings
P_GAP: Final = 2  # -1: no max gap
P_LATENESS: Final = 3
P_PATH: Final = 4
P_PROGRESS: Final = 5
P_SKIP_UNDUE: Final = 6
P_PROGRESS_EVERY: Final = 7  # ms; 0: every change
NP_: Final = 8

# The reorder buffer, one record of BW int64 words per reading (see buffer_views).
BW: Final = 6
B_F: Final = 0  # words B_F .. B_F + 3: value, tag, lon, lat (float64)
B_K: Final = 8 * 4  # bytes B_K .. B_K + 2: code, backfill, virtual (int8); 5 bytes spare
B_TS: Final = 5  # ts (int64), last: right before the next record's first word

#: Groups ahead whose state row (its first line), and buffer slots, feed_groups prefetches.
_AHEAD_ROW: Final = 16
_AHEAD_BUF: Final = 8

# Group status.
DONE: Final = 0
#: Not touched: the Python detector takes the whole group (or tick).
TO_PYTHON: Final = 1
#: Readings merged and watermark moved; the Python detector settles the state.
TO_SETTLE: Final = 2

_EARTH_RADIUS_M: Final = 6_371_008.8


def buffer_views(buf: _I64) -> tuple[_I64, _F64, _I8]:
    """``bts``, ``bf``, ``bk``: the reorder buffer's columns, as views of ``buf[R, C, BW]``.

    One record per reading rather than three arrays, so that adding a reading
    (most of what a batch does: every device's reading waits in its row)
    touches one or two cache lines, not three or four (module doc). The
    ``ts`` is the record's last word: the insertion compares the new reading
    with the ``ts`` just before its slot, so both are in the same 56 bytes.
    The kernels take the views (strided, not contiguous) and index them as
    they would separate arrays.
    """
    return (
        buf[:, :, B_TS],
        buf.view(np.float64)[:, :, B_F : B_F + 4],
        buf.view(np.int8)[:, :, B_K : B_K + 3],
    )


@_inline
def _haversine1(lon0: float, lat0: float, lon1: float, lat1: float) -> float:
    p0 = math.radians(lat0)
    p1 = math.radians(lat1)
    a = (
        math.sin((p1 - p0) * 0.5) ** 2
        + math.cos(p0) * math.cos(p1) * math.sin(math.radians(lon1 - lon0) * 0.5) ** 2
    )
    return 2.0 * _EARTH_RADIUS_M * math.asin(math.sqrt(min(a, 1.0)))


@_inline
def _ep_from_core(ci: _I64, cf: _F64, xi: _I64, xf: _F64, e: int) -> None:
    xi[e, X_STARTED] = ci[I_RUN_START]
    xi[e, X_OPENED] = ci[I_OPENED]
    xi[e, X_LAST_MET] = ci[I_LAST_MET]
    xi[e, X_LATE] = ci[I_LATE]
    xi[e, X_CONT] = 1
    xi[e, X_OPEN_INST] = 1
    xi[e, X_CLOSED] = NO_TS
    xi[e, X_CLOSE_INST] = 0
    for j in range(XF):
        xf[e, j] = cf[F_AGG + j]


@_inline
def _core_from_ep(ci: _I64, cf: _F64, xi: _I64, xf: _F64, e: int, phase: int) -> None:
    ci[I_PHASE] = phase
    ci[I_RUN_START] = xi[e, X_STARTED]
    ci[I_OPENED] = xi[e, X_OPENED]
    ci[I_LAST_MET] = xi[e, X_LAST_MET]
    ci[I_LATE] = xi[e, X_LATE]
    for j in range(XF):
        cf[F_AGG + j] = xf[e, j]


@_inline
def _reset_aggregates(ci: _I64, cf: _F64) -> None:
    cf[F_MAX] = math.nan
    cf[F_TAG] = math.nan
    cf[F_START_LON] = math.nan
    cf[F_START_LAT] = math.nan
    cf[F_END_LON] = math.nan
    cf[F_END_LAT] = math.nan
    cf[F_PATH] = 0.0
    cf[F_PENDING] = 0.0
    ci[I_LATE] = 0


@jit
def _scalar_pass(
    ci: _I64,
    cf: _F64,
    bts: _I64,
    bf: _F64,
    bk: _I8,
    lo: int,
    hi: int,
    p: _I64,
    xi: _I64,
    xf: _F64,
    ne: int,
) -> int:
    """alerts._core._scalar_pass over readings ``lo:hi``; episodes from row ``ne`` on; new count."""
    open_ms = p[P_OPEN]
    close_ms = p[P_CLOSE]
    gap_ms = p[P_GAP]
    want_path = p[P_PATH] != 0
    phase = ci[I_PHASE]
    cur = -1  # row of the open episode
    cand = False  # a candidate run, kept in row ne (not counted until it opens)
    if phase in (ACTIVE, CLOSING):
        _ep_from_core(ci, cf, xi, xf, ne)
        cur = ne
        ne += 1
    elif phase == CANDIDATE:
        _ep_from_core(ci, cf, xi, xf, ne)
        xi[ne, X_CONT] = 0
        xi[ne, X_OPEN_INST] = 0
        cand = True
    clear_start = ci[I_CLEAR_START]
    last_ts = ci[I_LAST_TS]
    plon = cf[F_PREV_LON]
    plat = cf[F_PREV_LAT]
    for i in range(lo, hi):
        t = bts[i]
        c = bk[i, 0]
        if gap_ms >= 0 and last_ts != NO_TS and t - last_ts > gap_ms:
            if cur >= 0:
                xi[cur, X_CLOSED] = last_ts + gap_ms
                xi[cur, X_CLOSE_INST] = 0
                cur = -1
            cand = False
            phase = IDLE
        last_ts = t
        step = 0.0
        x = bf[i, 2]
        y = bf[i, 3]
        if not (math.isnan(x) or math.isnan(y)):
            if want_path and not (math.isnan(plon) or math.isnan(plat)):
                step = _haversine1(plon, plat, x, y)
            plon = x
            plat = y
        if cur >= 0:
            xf[cur, A_PENDING] += step
        if c == MET:
            if phase == IDLE:
                xi[ne, X_STARTED] = t
                xi[ne, X_OPENED] = 0
                xi[ne, X_LAST_MET] = t
                xi[ne, X_LATE] = 0
                xi[ne, X_CONT] = 0
                xi[ne, X_OPEN_INST] = 0
                xi[ne, X_CLOSED] = NO_TS
                xi[ne, X_CLOSE_INST] = 0
                for j in range(XF):
                    xf[ne, j] = math.nan
                xf[ne, A_START_LON] = plon
                xf[ne, A_START_LAT] = plat
                xf[ne, A_PATH] = 0.0
                xf[ne, A_PENDING] = 0.0
                cand = True
                phase = CANDIDATE
            elif phase == CANDIDATE:
                xf[ne, A_PATH] += step
            else:
                xf[cur, A_PATH] += xf[cur, A_PENDING]
                xf[cur, A_PENDING] = 0.0
                phase = ACTIVE
            e = ne if phase == CANDIDATE else cur
            xi[e, X_LAST_MET] = t
            xf[e, A_END_LON] = plon
            xf[e, A_END_LAT] = plat
            v = bf[i, 0]
            # Strictly greater: on ties the earliest reading keeps the tag.
            if v > -math.inf and (math.isnan(xf[e, A_MAX]) or v > xf[e, A_MAX]):
                xf[e, A_MAX] = v
                xf[e, A_TAG] = bf[i, 1]
            if phase == CANDIDATE and t - xi[ne, X_STARTED] >= open_ms:
                xi[ne, X_OPENED] = t
                xi[ne, X_LATE] = bk[i, 1]
                xi[ne, X_OPEN_INST] = 1 if open_ms == 0 else 0
                cur = ne
                ne += 1
                cand = False
                phase = ACTIVE
        elif c == CLEAR:
            if phase == CANDIDATE:
                cand = False
                phase = IDLE
            elif cur >= 0 and close_ms >= 0:
                if phase == ACTIVE:
                    phase = CLOSING
                    clear_start = t
                if t - clear_start >= close_ms:
                    xi[cur, X_CLOSED] = t
                    xi[cur, X_CLOSE_INST] = 1 if close_ms == 0 else 0
                    cur = -1
                    phase = IDLE
        elif c == END:
            if cur >= 0:
                xi[cur, X_CLOSED] = t
                xi[cur, X_CLOSE_INST] = 1
                cur = -1
            cand = False
            phase = IDLE
        elif phase == CANDIDATE:
            cand = False
            phase = IDLE
        elif phase == CLOSING:
            phase = ACTIVE
    ci[I_LAST_TS] = last_ts
    cf[F_PREV_LON] = plon
    cf[F_PREV_LAT] = plat
    if cur >= 0:
        _core_from_ep(ci, cf, xi, xf, cur, phase)
        ci[I_CLEAR_START] = clear_start
    elif cand:
        _core_from_ep(ci, cf, xi, xf, ne, CANDIDATE)
        ci[I_OPENED] = 0
    else:
        ci[I_PHASE] = IDLE
        _reset_aggregates(ci, cf)
    return ne


@_inline
def _same_f(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@_inline
def _emit(oi: _I64, of: _F64, no: int, d: int, action: int, mi: _I64, mf: _F64, closed: int) -> int:
    """Write one event (the episode in ``mi``/``mf``, with ``closed``); new event count."""
    oi[no, O_DEV] = d
    oi[no, O_ACTION] = action
    for j in range(MI):
        oi[no, 2 + j] = mi[j]
    oi[no, 2 + M_CLOSED] = closed
    for j in range(MF):
        of[no, j] = mf[j]
    return no + 1


@jit
def _reconcile(
    d: int,
    si: _I64,
    mi: _I64,
    mf: _F64,
    xi: _I64,
    xf: _F64,
    cert: _I64,
    ncert: int,
    p: _I64,
    ki: _I64,
    kf: _F64,
    si1: _I64,
    sf1: _F64,
    oi: _I64,
    of: _F64,
    no: int,
) -> int:
    """alerts.episodes.EpisodeDetector._reconcile; the kept episodes replace row ``d``'s."""
    wm = si[d, I_WM]
    progress = p[P_PROGRESS] != 0
    nem = si[d, I_NEM]
    nk = 0
    j = 0
    for q in range(ncert + 1):
        last = q == ncert
        e = -1 if last else cert[q]
        # Orphans: emitted episodes that ended before this one (or all remaining, at the end).
        while j < nem and (last or mi[d, j, M_LAST_MET] < xi[e, X_STARTED]):
            si[d, I_ORPHANS] += 1
            if mi[d, j, M_CLOSED] == NO_TS:
                no = _emit(oi, of, no, d, CLOSE, mi[d, j], mf[d, j], mi[d, j, M_LAST_MET])
            j += 1
        if last:
            break
        # The snapshot (alerts.episodes._snapshot), number 0.
        si1[M_NUMBER] = 0
        si1[M_STARTED] = xi[e, X_STARTED]
        si1[M_OPENED] = xi[e, X_OPENED]
        si1[M_LAST_MET] = xi[e, X_LAST_MET]
        si1[M_CLOSED] = xi[e, X_CLOSED]
        si1[M_LATE] = xi[e, X_LATE]
        for f in range(MF):
            sf1[f] = xf[e, f]
        if j < nem and mi[d, j, M_STARTED] <= xi[e, X_LAST_MET]:
            prev = j
            j += 1
            si1[M_NUMBER] = mi[d, prev, M_NUMBER]
            prev_active = mi[d, prev, M_CLOSED] == NO_TS
            snap_active = si1[M_CLOSED] == NO_TS
            if not prev_active and snap_active:
                # A certain close is never undone; keep the emitted belief until final.
                for f in range(MI):
                    si1[f] = mi[d, prev, f]
                for f in range(MF):
                    sf1[f] = mf[d, prev, f]
            elif prev_active and not snap_active:
                no = _emit(oi, of, no, d, CLOSE, si1, sf1, si1[M_CLOSED])
            else:
                # The fixed key (EpisodeDetector._reconcile, Episode._key(False)) ...
                differs = (
                    si1[M_STARTED] != mi[d, prev, M_STARTED]
                    or si1[M_CLOSED] != mi[d, prev, M_CLOSED]
                    or si1[M_LATE] != mi[d, prev, M_LATE]
                    or not _same_f(sf1[A_MAX], mf[d, prev, A_MAX])
                    or not _same_f(sf1[A_TAG], mf[d, prev, A_TAG])
                    # ended_at (last met once closed)
                    or (si1[M_CLOSED] != NO_TS and si1[M_LAST_MET] != mi[d, prev, M_LAST_MET])
                )
                if progress and not differs:
                    # ... or the progress key, when its step is due (_progress_due).
                    moved = (
                        si1[M_OPENED] != mi[d, prev, M_OPENED]
                        or si1[M_LAST_MET] != mi[d, prev, M_LAST_MET]
                    )
                    for f in range(A_START_LON, A_PATH + 1):
                        moved = moved or not _same_f(sf1[f], mf[d, prev, f])
                    every = p[P_PROGRESS_EVERY]
                    differs = moved and (
                        every == 0
                        or (si1[M_LAST_MET] - si1[M_STARTED]) // every
                        != (mi[d, prev, M_LAST_MET] - mi[d, prev, M_STARTED]) // every
                    )
                if differs:
                    no = _emit(oi, of, no, d, UPDATE, si1, sf1, si1[M_CLOSED])
        else:
            si1[M_NUMBER] = si[d, I_NEXT]
            si[d, I_NEXT] += 1
            no = _emit(oi, of, no, d, OPEN, si1, sf1, NO_TS)
            if si1[M_CLOSED] != NO_TS:
                no = _emit(oi, of, no, d, CLOSE, si1, sf1, si1[M_CLOSED])
        if si1[M_CLOSED] == NO_TS or si1[M_CLOSED] >= wm:
            for f in range(MI):
                ki[nk, f] = si1[f]
            for f in range(MF):
                kf[nk, f] = sf1[f]
            nk += 1
    if nk > mi.shape[1]:
        # _room's bound guarantees this never happens; never write past the row.
        raise RuntimeError("FleetEpisodes: more episodes kept than a row holds")
    for r in range(nk):
        for f in range(MI):
            mi[d, r, f] = ki[r, f]
        for f in range(MF):
            mf[d, r, f] = kf[r, f]
    si[d, I_NEM] = nk
    return no


@jit
def _settle(
    d: int,
    si: _I64,
    sf: _F64,
    bts: _I64,
    bf: _F64,
    bk: _I8,
    mi: _I64,
    mf: _F64,
    p: _I64,
    xi: _I64,
    xf: _F64,
    cert: _I64,
    ci2: _I64,
    cf2: _F64,
    ki: _I64,
    kf: _F64,
    si1: _I64,
    sf1: _F64,
    oi: _I64,
    of: _F64,
    no: int,
) -> int:
    """alerts.episodes.EpisodeDetector._settle for row ``d`` (no flush: no late lanes here)."""
    wm = si[d, I_WM]
    si[d, I_DUE] = NO_TS
    if wm == NO_TS:
        return no
    n = si[d, I_NBUF]
    ts = bts[d]
    k = 0
    while k < n and ts[k] < wm:
        k += 1
    ci = si[d]
    cf = sf[d]
    instant_open = p[P_OPEN] == 0
    # Only a meeting reading can open on non-final readings (when opening is instant).
    can_open = instant_open and si[d, I_NMET] > 0
    if k == 0 and si[d, I_NEM] == 0 and ci[I_PHASE] == IDLE and not can_open:
        return no
    nf = _scalar_pass(ci, cf, ts, bf[d], bk[d], 0, k, p, xi, xf, 0)
    # The final readings are consumed: the tail moves to the front of the row.
    if k:
        gone = 0
        for i in range(k):
            if bk[d, i, 0] == MET:
                gone += 1
        si[d, I_NMET] -= gone
        for i in range(k, n):
            bts[d, i - k] = bts[d, i]
            for f in range(4):
                bf[d, i - k, f] = bf[d, i, f]
            for f in range(3):
                bk[d, i - k, f] = bk[d, i, f]
        n -= k
        si[d, I_NBUF] = n
    gap_ms = p[P_GAP]
    if (
        ci[I_LAST_TS] != NO_TS
        and ci[I_PHASE] != IDLE
        and gap_ms >= 0
        and n == 0
        and wm - ci[I_LAST_TS] > gap_ms
    ):
        # Silence longer than max_gap_s, and certain (alerts._core.close_core).
        at = ci[I_LAST_TS] + gap_ms
        if ci[I_PHASE] in (ACTIVE, CLOSING):
            e = nf - 1 if nf > 0 and xi[nf - 1, X_CLOSED] == NO_TS else nf
            _ep_from_core(ci, cf, xi, xf, e)
            xi[e, X_CLOSED] = at
            if e == nf:
                nf += 1
        ci[I_PHASE] = IDLE
        _reset_aggregates(ci, cf)
    if nf == 0 and si[d, I_NEM] == 0 and not (instant_open and si[d, I_NMET] > 0):
        return no
    for f in range(CORE_I):
        ci2[f] = ci[f]
    for f in range(NF):
        cf2[f] = cf[f]
    ns = _scalar_pass(ci2, cf2, ts, bf[d], bk[d], 0, n, p, xi, xf, nf) - nf
    ncert = nf
    for q in range(nf):
        cert[q] = q
    if ncert and xi[nf - 1, X_CLOSED] == NO_TS and ns and xi[nf, X_CONT] != 0:
        ncert -= 1
    due = NEVER
    for e in range(nf, nf + ns):
        if xi[e, X_CONT] == 0 and xi[e, X_OPEN_INST] == 0:
            due = xi[e, X_OPENED]  # this open is certain once its reading is final
            break
        if xi[e, X_CLOSED] != NO_TS and xi[e, X_CLOSE_INST] == 0:
            due = xi[e, X_CLOSED]  # likewise this close
            xi[e, X_CLOSED] = NO_TS  # the close may still be undone: report it as open
            cert[ncert] = e
            ncert += 1
            break
        cert[ncert] = e
        ncert += 1
    no = _reconcile(d, si, mi, mf, xi, xf, cert, ncert, p, ki, kf, si1, sf1, oi, of, no)
    for r in range(si[d, I_NEM]):
        c = mi[d, r, M_CLOSED]
        if c != NO_TS and c < due:
            due = c  # kept until final, then dropped
    si[d, I_DUE] = due
    return no


@_inline
def _insert(d: int, si: _I64, bts: _I64, bf: _F64, bk: _I8, t: int, rf: _F64, rk: _I8) -> None:
    """Add one reading to row ``d``'s sorted buffer unless its ``ts`` is there (the old wins).

    :func:`feed_groups` has this written out (see there).
    """
    n = si[d, I_NBUF]
    i = n
    while i > 0 and bts[d, i - 1] > t:
        i -= 1
    if i > 0 and bts[d, i - 1] == t:
        return
    for r in range(n, i, -1):
        bts[d, r] = bts[d, r - 1]
        for f in range(4):
            bf[d, r, f] = bf[d, r - 1, f]
        for f in range(3):
            bk[d, r, f] = bk[d, r - 1, f]
    bts[d, i] = t
    for f in range(4):
        bf[d, i, f] = rf[f]
    for f in range(3):
        bk[d, i, f] = rk[f]
    si[d, I_NBUF] = n + 1
    if rk[0] == MET:
        si[d, I_NMET] += 1


@_inline
def _quiet_of(phase: int, nem: int, nmet: int) -> bool:
    """EpisodeState.quiet from a row's phase, emitted and buffered MET counts."""
    return phase == IDLE and nem == 0 and nmet == 0


@_inline
def _quiet(d: int, si: _I64) -> bool:
    """EpisodeState.quiet: idle, nothing emitted, no meeting reading buffered."""
    return _quiet_of(si[d, I_PHASE], si[d, I_NEM], si[d, I_NMET])


@jit
def _settle_quiet(d: int, si: _I64, sf: _F64, bts: _I64, bf: _F64, bk: _I8) -> bool:
    """:func:`_settle` of a quiet row without its pass; False (row untouched): not that case.

    A quiet row (idle, nothing emitted, no meeting reading buffered: so its
    final readings, older than the watermark, all do not meet the condition):
    the pass over them, from idle, opens nothing and closes nothing (a CLEAR,
    END or NEUTRAL reading, a gap: each leaves the phase idle), so all it
    leaves in the core is the last reading's ``ts``, the last known position
    and the aggregates reset; the second pass and the reconcile have nothing
    to do (nothing final, nothing emitted, no meeting reading), so ``due`` is
    unknown. No step is measured: in idle no episode takes it.

    ``I_NMET`` counts the meeting readings of the buffer (every change of the
    buffer keeps it) and a quiet row has none, so the final readings' flags
    are read only as a safety net: a meeting one returns False and the caller
    runs the full :func:`_settle`.
    """
    if not _quiet_of(si[d, I_PHASE], si[d, I_NEM], si[d, I_NMET]):
        return False
    wm = si[d, I_WM]
    n = si[d, I_NBUF]
    k = 0
    if wm != NO_TS:
        # The first reading at or after the watermark, from the end: the tail is short.
        k = n
        while k > 0 and bts[d, k - 1] >= wm:
            k -= 1
        for i in range(k):
            if bk[d, i, 0] == MET:
                return False  # (I_NMET says there is none: a safety net, never taken)
    si[d, I_DUE] = NO_TS
    if k == 0:
        return True  # _settle returns before its pass
    si[d, I_LAST_TS] = bts[d, k - 1]
    for i in range(k - 1, -1, -1):
        x = bf[d, i, 2]
        y = bf[d, i, 3]
        if not (math.isnan(x) or math.isnan(y)):
            sf[d, F_PREV_LON] = x
            sf[d, F_PREV_LAT] = y
            break
    # _reset_aggregates (the phase stays idle).
    sf[d, F_MAX] = math.nan
    sf[d, F_TAG] = math.nan
    sf[d, F_START_LON] = math.nan
    sf[d, F_START_LAT] = math.nan
    sf[d, F_END_LON] = math.nan
    sf[d, F_END_LAT] = math.nan
    sf[d, F_PATH] = 0.0
    sf[d, F_PENDING] = 0.0
    si[d, I_LATE] = 0
    # The final readings are consumed: the tail moves to the front of the row.
    for i in range(k, n):
        bts[d, i - k] = bts[d, i]
        for f in range(4):
            bf[d, i - k, f] = bf[d, i, f]
        for f in range(3):
            bk[d, i - k, f] = bk[d, i, f]
    si[d, I_NBUF] = n - k
    return True


def scratch(capacity: int) -> tuple[_I64, _F64, _I64, _I64, _F64, _I64, _F64, _I64, _F64]:
    """Work arrays for one kernel call (episodes of two passes, kept episodes, copies)."""
    rows = 2 * capacity + 4
    return (
        np.zeros((rows, XI), np.int64),
        np.zeros((rows, XF), np.float64),
        np.zeros(rows, np.int64),
        np.zeros(CORE_I, np.int64),
        np.zeros(NF, np.float64),
        np.zeros((rows, MI), np.int64),
        np.zeros((rows, MF), np.float64),
        np.zeros(MI, np.int64),
        np.zeros(MF, np.float64),
    )


def events_per_device(capacity: int, emitted: int) -> int:
    """Most events one device's settle can write (opens and closes of two passes, orphans)."""
    return 2 * (2 * capacity + 4) + emitted


@_inline
def _room(d: int, si: _I64, bts: _I64, bk: _I8, p: _I64, emitted: int) -> bool:
    """Whether a settle of row ``d`` keeps at most ``emitted`` episodes (else: Python settles).

    A settle keeps the episodes still active or closed at or after the
    watermark. Those are: the open one (final or continued), one closed by a
    silence after the final readings, the candidate of the final readings
    opening in the tail, and one per meeting run starting in the tail, so at
    most 3 + the meeting runs that start in the buffer (a run starts at a
    meeting reading after a non-meeting one, the buffer's start, or a gap).
    """
    gap_ms = p[P_GAP]
    runs = 0
    prev_met = False
    for i in range(si[d, I_NBUF]):
        met = bk[d, i, 0] == MET
        if met and (not prev_met or (gap_ms >= 0 and i > 0 and bts[d, i] - bts[d, i - 1] > gap_ms)):
            runs += 1
        prev_met = met
    return runs + 3 <= emitted


@jit
def feed_groups(
    hot: _BOOL,
    si: _I64,
    sf: _F64,
    bts: _I64,
    bf: _F64,
    bk: _I8,
    mi: _I64,
    mf: _F64,
    p: _I64,
    buf: _I64,
    dev: _I64,
    lo: _I64,
    hi: _I64,
    ts: _I64,
    rf: _F64,
    rk: _I8,
    status: npt.NDArray[np.int8],
    g0: int,
    oi: _I64,
    of: _F64,
    no: int,
    per_device: int,
    xi: _I64,
    xf: _F64,
    cert: _I64,
    ci2: _I64,
    cf2: _F64,
    ki: _I64,
    kf: _F64,
    si1: _I64,
    sf1: _F64,
) -> tuple[int, int]:
    """Feed groups ``g0..`` (device ``dev[g]``, readings ``lo[g]:hi[g]``); (next group, events).

    Stops early, returning the next group, when the event arrays may not hold
    another device's events. ``status[g]`` is :data:`TO_PYTHON` for a device
    the arrays cannot handle (not hot, a reading older than its watermark,
    no room in its buffer); its row is left as it was. ``buf``: the array
    ``bts``, ``bf``, ``bk`` are views of (:func:`buffer_views`), for prefetching.
    """
    cap = bts.shape[1]
    lateness = p[P_LATENESS]
    ng = dev.shape[0]
    for g in range(g0, ng):
        if no + per_device > oi.shape[0]:
            return g, no
        # Rows are far apart in memory: ask for the rows a few groups ahead now, so
        # their cache misses overlap this group's work (the state row first, then,
        # once it is in, the buffer slots it points to).
        if g + _AHEAD_ROW < ng:
            prefetch(si, dev[g + _AHEAD_ROW] * NI)
        if g + _AHEAD_BUF < ng:
            d2 = dev[g + _AHEAD_BUF]
            n2 = si[d2, I_NBUF]
            slot = d2 * cap + n2
            if n2 + (hi[g + _AHEAD_BUF] - lo[g + _AHEAD_BUF]) > cap:
                # A full row: its tail moves to its first slots (_settle_quiet).
                slot = d2 * cap
                prefetch(buf, (slot + n2) * BW - 1)
                prefetch(buf, slot * BW + 8)
            # The slot the reading goes to, and the ts before it (buffer_views):
            # 56 bytes in a row, at most two lines.
            prefetch(buf, slot * BW - 1)
            prefetch(buf, slot * BW + BW - 1)
        d = dev[g]
        a = lo[g]
        b = hi[g]
        wm = si[d, I_WM]
        ok = hot[d]
        if ok and wm != NO_TS:
            for i in range(a, b):
                if ts[i] < wm:
                    ok = False  # for the late lane
                    break
        if (
            ok
            and si[d, I_NBUF] + (b - a) > cap
            and _quiet_of(si[d, I_PHASE], si[d, I_NEM], si[d, I_NMET])
            and not _settle_quiet(d, si, sf, bts, bf, bk)
        ):
            # Readings kept while quiet (below) fill the row: finalize what is final
            # (nothing can be emitted: nothing meets the condition). _settle_quiet does
            # that without the passes, unless a final reading meets (I_NMET says none).
            no = _settle(
                d,
                si,
                sf,
                bts,
                bf,
                bk,
                mi,
                mf,
                p,
                xi,
                xf,
                cert,
                ci2,
                cf2,
                ki,
                kf,
                si1,
                sf1,
                oi,
                of,
                no,
            )
        if not ok or si[d, I_NBUF] + (b - a) > cap:
            status[g] = TO_PYTHON
            continue
        status[g] = DONE
        if b == a:
            continue
        met = False
        top = ts[a]
        for i in range(a, b):
            top = max(top, ts[i])
            met = met or rk[i, 0] == MET
        quiet = not met and _quiet_of(si[d, I_PHASE], si[d, I_NEM], si[d, I_NMET])
        # _insert, written out: an inlined helper given arrays takes a reference to
        # each (an atomic operation in and out, per array and reading), which was
        # most of the cost of a quiet reading.
        n = si[d, I_NBUF]
        for j in range(a, b):
            t = ts[j]
            i = n
            while i > 0 and bts[d, i - 1] > t:
                i -= 1
            if i > 0 and bts[d, i - 1] == t:
                continue
            for r in range(n, i, -1):
                bts[d, r] = bts[d, r - 1]
                for f in range(4):
                    bf[d, r, f] = bf[d, r - 1, f]
                for f in range(3):
                    bk[d, r, f] = bk[d, r - 1, f]
            bts[d, i] = t
            for f in range(4):
                bf[d, i, f] = rf[j, f]
            for f in range(3):
                bk[d, i, f] = rk[j, f]
            n += 1
            if rk[j, 0] == MET:
                si[d, I_NMET] += 1
        si[d, I_NBUF] = n
        if si[d, I_MAX_TS] == NO_TS or top > si[d, I_MAX_TS]:
            si[d, I_MAX_TS] = top
        cwm = si[d, I_MAX_TS] - lateness
        if wm == NO_TS or cwm > wm:
            si[d, I_WM] = cwm
        if quiet:
            # Nothing under way and nothing meeting the condition: nothing can be
            # decided, so the readings just wait (EpisodeDetector._feed's quiet case).
            continue
        if not _room(d, si, bts, bk, p, mi.shape[1]):
            status[g] = TO_SETTLE
            continue
        no = _settle(
            d, si, sf, bts, bf, bk, mi, mf, p, xi, xf, cert, ci2, cf2, ki, kf, si1, sf1, oi, of, no
        )
    return dev.shape[0], no


@jit
def quiet_rows(si: _I64, rows: _I64) -> _BOOL:
    """EpisodeState.quiet per row: idle, nothing emitted, no meeting reading buffered."""
    out = np.zeros(rows.shape[0], np.bool_)
    for g in range(rows.shape[0]):
        out[g] = _quiet(rows[g], si)
    return out


@jit
def advance_rows(
    hot: _BOOL,
    si: _I64,
    sf: _F64,
    bts: _I64,
    bf: _F64,
    bk: _I8,
    mi: _I64,
    mf: _F64,
    p: _I64,
    dev: _I64,
    wms: _I64,
    cuts: _I64,
    status: npt.NDArray[np.int8],
    g0: int,
    oi: _I64,
    of: _F64,
    no: int,
    per_device: int,
    xi: _I64,
    xf: _F64,
    cert: _I64,
    ci2: _I64,
    cf2: _F64,
    ki: _I64,
    kf: _F64,
    si1: _I64,
    sf1: _F64,
) -> tuple[int, int]:
    """EpisodeDetector.advance of rows ``dev[g0:]`` to ``wms`` (``cuts``: NO_TS for none).

    A quiet row is left alone (as the engine's tick does). Same early stop and
    ``status`` as :func:`feed_groups`.
    """
    cap = bts.shape[1]
    virt_f = np.full(4, math.nan)
    virt_k = np.zeros(3, np.int8)
    virt_k[0] = END
    virt_k[2] = 1
    for g in range(g0, dev.shape[0]):
        if no + per_device > oi.shape[0]:
            return g, no
        d = dev[g]
        status[g] = DONE
        if not hot[d]:
            status[g] = TO_PYTHON
            continue
        if _quiet(d, si):
            continue
        wm = wms[g]
        cut_ms = cuts[g]
        cut = cut_ms != NO_TS and (si[d, I_WM] == NO_TS or cut_ms >= si[d, I_WM])
        if cut and si[d, I_NBUF] >= cap:
            status[g] = TO_PYTHON
            continue
        due = si[d, I_DUE]
        if p[P_SKIP_UNDUE] != 0 and not cut and due != NO_TS and wm <= due and p[P_GAP] < 0:
            # Nothing can become certain: only the watermark moves.
            if si[d, I_WM] == NO_TS or wm > si[d, I_WM]:
                si[d, I_WM] = wm
            continue
        if cut:
            _insert(d, si, bts, bf, bk, cut_ms, virt_f, virt_k)
        if si[d, I_WM] == NO_TS or wm > si[d, I_WM]:
            si[d, I_WM] = wm
        if not _room(d, si, bts, bk, p, mi.shape[1]):
            status[g] = TO_SETTLE
            continue
        no = _settle(
            d, si, sf, bts, bf, bk, mi, mf, p, xi, xf, cert, ci2, cf2, ki, kf, si1, sf1, oi, of, no
        )
    return dev.shape[0], no


@jit
def group_rows(dev: _I64) -> tuple[bool, _I64, _I64, _I64]:
    """(sorted, starts, stops, groups): the runs of equal ``dev`` if it is sorted.

    ``dev[starts[g]:stops[g]]`` all equal ``groups[g]``; one pass instead of a
    handful of NumPy ones. Not sorted: ``False`` and empty arrays.
    """
    n = dev.shape[0]
    ng = 0
    for i in range(n):
        if i > 0 and dev[i] < dev[i - 1]:
            empty = np.empty(0, np.int64)
            return False, empty, empty, empty
        if i == 0 or dev[i] != dev[i - 1]:
            ng += 1
    starts = np.empty(ng, np.int64)
    stops = np.empty(ng, np.int64)
    groups = np.empty(ng, np.int64)
    g = -1
    for i in range(n):
        if i == 0 or dev[i] != dev[i - 1]:
            g += 1
            starts[g] = i
            groups[g] = dev[i]
            if g > 0:
                stops[g - 1] = i
    if ng:
        stops[ng - 1] = n
    return True, starts, stops, groups
