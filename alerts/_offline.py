"""Compiled kernel of :meth:`alerts.rules.DeviceOffline.feed_many` with an ``OfflineBook``.

For readings sorted by device, then time: each device that is *simple* in
the book (no episode, nothing pending) and heard without a silence longer
than its threshold, counting from its last heard time, only moves its last
heard time and watermark, here, in the book's arrays. The others are
returned, as ``[lo, hi)`` ranges of readings, for the Python rule.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from core.jit import jit

_I64 = npt.NDArray[np.int64]
_BOOL = npt.NDArray[np.bool_]

#: "Never heard" in the book's time columns (``alerts.rules._NO_MS``).
NO_MS: Final = int(np.iinfo(np.int64).min)


@jit
def heard_fast(
    dev: _I64,
    hs: _I64,
    simple: _BOOL,
    last: _I64,
    wm: _I64,
    since: _I64,
    thr: _I64,
    lateness_ms: int,
    slow_lo: _I64,
    slow_hi: _I64,
) -> int:
    """Update the simple devices heard within their threshold; the others' ranges (count)."""
    n = dev.shape[0]
    ns = 0
    i = 0
    while i < n:
        d = dev[i]
        j = i
        max_gap = 0
        while j + 1 < n and dev[j + 1] == d:
            max_gap = max(max_gap, hs[j + 1] - hs[j])
            j += 1
        first = hs[i]
        prev = since[d] if last[d] == NO_MS else last[d]
        t = thr[d]
        if simple[d] and max_gap <= t and first > prev and first - prev <= t:
            last[d] = hs[j]
            wm[d] = max(wm[d], hs[j] - lateness_ms)
        else:
            slow_lo[ns] = i
            slow_hi[ns] = j + 1
            ns += 1
        i = j + 1
    return ns


def by_device_then_time(dev: _I64, hs: _I64) -> npt.NDArray[np.intp]:
    """The order sorting readings by device, then time (one int64 sort when it fits)."""
    if dev.size == 0:
        return np.zeros(0, np.intp)
    lo = int(hs.min())
    if int(dev.min()) >= 0 and int(dev.max()) < (1 << 31) and int(hs.max()) - lo < (1 << 32):
        return np.argsort((dev << 32) | (hs - lo))
    return np.lexsort((hs, dev))
