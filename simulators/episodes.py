"""Episode timing of contract §3 over sampled readings, for ground truth.

A condition's duration is the event time from the first reading that meets
it to the latest reading that still meets it; an episode opens when that
duration reaches ``open_s`` and starts at its first reading. It closes when
the opposite condition has lasted ``close_s`` the same way, and ends at the
last reading that met the opening condition. A reading that does not meet
the condition interrupts a run that has not opened yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Episode", "find_episodes", "runs"]


@dataclass(frozen=True)
class Episode:
    """One episode: times of its first and last readings meeting the condition.

    ``end_ms`` is None when the data ends before the close condition lasted
    long enough. ``first``/``last`` are the reading indices.
    """

    start_ms: int
    end_ms: int | None
    first: int
    last: int

    @property
    def duration_s(self) -> float:
        """Seconds from the first to the last reading that met the condition."""
        return ((self.end_ms if self.end_ms is not None else self.start_ms) - self.start_ms) / 1000


def find_episodes(
    ts_ms: Sequence[int], meets: Sequence[bool], *, open_s: float, close_s: float
) -> list[Episode]:
    """Return the episodes of a condition over readings sorted by ``ts_ms``.

    Readings with equal times count once (duplicates do not matter).
    """
    episodes: list[Episode] = []
    open_ = False
    run_first = -1  # first index of the current run meeting the condition
    last_meet = -1  # last index meeting the condition in an open episode
    clear_first = -1  # first index of the current run not meeting it (while open)
    for k, (t, m) in enumerate(zip(ts_ms, meets, strict=True)):
        if not open_:
            if m:
                if run_first < 0:
                    run_first = k
                if (t - ts_ms[run_first]) / 1000 >= open_s:
                    open_ = True
                    last_meet = k
                    clear_first = -1
            else:
                run_first = -1
            continue
        if m:
            last_meet = k
            clear_first = -1
        else:
            if clear_first < 0:
                clear_first = k
            if (t - ts_ms[clear_first]) / 1000 >= close_s:
                episodes.append(Episode(ts_ms[run_first], ts_ms[last_meet], run_first, last_meet))
                open_ = False
                run_first = -1
    if open_:
        episodes.append(Episode(ts_ms[run_first], None, run_first, last_meet))
    return episodes


def runs(meets: Sequence[bool]) -> list[tuple[int, int]]:
    """Return ``(first, last)`` reading indices of each uninterrupted run meeting the condition."""
    out: list[tuple[int, int]] = []
    first = -1
    for k, m in enumerate(meets):
        if m and first < 0:
            first = k
        elif not m and first >= 0:
            out.append((first, k - 1))
            first = -1
    if first >= 0:
        out.append((first, len(meets) - 1))
    return out
