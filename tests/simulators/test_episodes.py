"""Contract §3 timing over sampled readings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from simulators.episodes import find_episodes
from tests.simulators.reference import episodes as reference_episodes


def s(*seconds):
    return [int(x * 1000) for x in seconds]


def test_opens_after_ten_seconds_and_starts_at_the_first_reading():
    ts = s(0, 5, 10, 15, 20, 25, 30, 35)
    over = [False, True, True, True, True, False, False, False]
    (ep,) = find_episodes(ts, over, open_s=10, close_s=10)
    assert (ep.start_ms, ep.end_ms) == (5000, 20000)


def test_five_seconds_over_is_not_an_episode():
    ts = s(0, 1, 2, 3, 4, 5, 6, 7, 30)
    over = [False, True, True, True, True, True, True, False, False]
    assert find_episodes(ts, over, open_s=10, close_s=10) == []


def test_a_short_dip_does_not_close():
    ts = s(*range(0, 60, 5))
    over = [True] * 4 + [False] + [True] * 3 + [False] * 4
    (ep,) = find_episodes(ts, over, open_s=10, close_s=10)
    assert (ep.start_ms, ep.end_ms) == (0, 35000)


def test_still_open_at_the_end():
    ts = s(0, 10, 20, 25)
    (ep,) = find_episodes(ts, [True, True, True, False], open_s=10, close_s=10)
    assert ep.end_ms is None


@given(st.lists(st.tuples(st.integers(1, 20), st.booleans()), max_size=60))
def test_same_as_the_reference(steps):
    ts, t = [], 0
    for dt, _ in steps:
        t += dt * 1000
        ts.append(t)
    meets = [m for _, m in steps]
    ours = [(e.start_ms, e.end_ms) for e in find_episodes(ts, meets, open_s=10, close_s=30)]
    theirs = [(a, b) for a, b, _i, _j in reference_episodes(ts, meets, 10, 30)]
    assert ours == theirs
