"""FleetEpisodes (compiled, fleet-wide arrays) against the Python detector, event by event."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts import _core
from alerts.episodes import EpisodeDetector, EpisodeEvent, EpisodeState
from alerts.fleet import NO_TS, FleetEpisodes
from alerts.rules import AlertEvent, FleetAlerts
from alerts.store import EpisodeChange
from tests.alerts.reference import CLEAR, END, MET, NEUTRAL, Reading
from tests.alerts.registry import gps_device
from tests.alerts.test_episodes import (
    T0,
    detector_of,
    detectors,
    feed,
    fold,
    many_columns,
    streams,
)

PROP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _scalar_reference() -> Iterator[None]:
    """The reference runs its reading-by-reading pass, as the kernel does (same sums)."""
    saved = _core.SCALAR_MAX
    _core.SCALAR_MAX = 10**9
    try:
        yield
    finally:
        _core.SCALAR_MAX = saved


def fleet_feed(
    fleet: FleetEpisodes, states: list[EpisodeState], part: list[tuple[int, int, Reading]]
) -> dict[int, list[EpisodeEvent]]:
    device, ts, meets, columns = many_columns(part)
    return fleet.feed_many(states, device, ts, meets, **columns)


def keyed(events: list[EpisodeEvent]) -> list[tuple[object, ...]]:
    return [(e.action, e.episode.number, e.episode._key()) for e in events]


def run_both(
    det: EpisodeDetector,
    n_dev: int,
    batches: list[list[tuple[int, int, Reading]]],
    ticks: list[tuple[int, int | None] | None],
    capacity: int,
    emitted: int = 8,
) -> tuple[FleetEpisodes, list[EpisodeState], list[EpisodeState]]:
    """Feed the batches (a tick after some) to the fleet and to one Python state per device.

    Ticks follow the engine: every device that is not quiet advances to its
    newest reading minus ``behind`` ms, with an optional cut that far past
    the watermark. Asserts the same events per device throughout.
    """
    fleet = FleetEpisodes(det, capacity=capacity, emitted=emitted)
    fleet.ensure(n_dev)
    ref = [det.new_state() for _ in range(n_dev)]
    rows = [det.new_state() for _ in range(n_dev)]
    newest = [T0] * n_dev
    for part, tick in zip(batches, ticks, strict=True):
        want: dict[int, list[EpisodeEvent]] = {}
        for d in range(n_dev):
            mine = [r for _, dd, r in part if dd == d]
            if mine:
                want[d] = feed(det, ref[d], mine)
                newest[d] = max(newest[d], *(r.ts for r in mine))
        got = fleet_feed(fleet, rows, part)
        for d in range(n_dev):
            assert keyed(got.get(d, [])) == keyed(want.get(d, [])), f"device {d} after a batch"
        if tick is None:
            continue
        behind, cut = tick
        keys = np.arange(n_dev)
        wms = np.array([t - behind for t in newest], np.int64)
        cuts = np.array([NO_TS if cut is None else w + cut for w in wms.tolist()], np.int64)
        want = {}
        for d in range(n_dev):
            if not ref[d].quiet:
                want[d] = det.advance(
                    ref[d], watermark_ms=int(wms[d]), cut_ms=None if cut is None else int(cuts[d])
                )
        got = fleet.advance_many(rows, keys, wms, cuts)
        for d in range(n_dev):
            assert keyed(got.get(d, [])) == keyed(want.get(d, [])), f"device {d} after a tick"
        assert fleet.quiet(keys, rows).tolist() == [s.quiet for s in ref]
    return fleet, ref, rows


#: Every device of the rules tests below, as the registry knows them.
_DEVICES = {k: gps_device(k, f"gps-{k}") for k in range(4)}  # device 4 is not registered


def assert_same_changes(found: object, want: Mapping[int, list[AlertEvent]]) -> None:
    """The engine's changes of a fleet run's columns are those of its alert events."""
    from alerts.engine import coalesce, fleet_changes, to_change

    assert isinstance(found, FleetAlerts)
    expected = {
        _DEVICES[d].id: [to_change(_DEVICES[d].id, ev) for ev in coalesce(evs)]
        for d, evs in want.items()
        if evs and d in _DEVICES
    }
    got: dict[str, list[EpisodeChange]] = {}
    for change in fleet_changes(found, _DEVICES):
        got.setdefault(change.device_id, []).append(change)
    for d, evs in found.python.items():
        if d in _DEVICES:
            got[_DEVICES[d].id] = [to_change(_DEVICES[d].id, ev) for ev in coalesce(evs)]
    assert got == expected


@PROP
@given(data=st.data(), params=detectors)
def test_fleet_equals_the_python_detector(data: st.DataObject, params) -> None:
    """Interleaved devices, readings up to 90 s out of order (late lanes), ticks with cuts."""
    det = detector_of(
        params,
        report_progress=data.draw(st.booleans()),
        track_path=data.draw(st.booleans()),
        progress_every_s=data.draw(st.sampled_from([0.0, 0.0, 10.0, 15.5])),
    )
    n_dev = data.draw(st.integers(1, 4))
    streams_ = [data.draw(streams(max_runs=8)) for _ in range(n_dev)]
    tagged = [
        (r.ts + data.draw(st.sampled_from([0, 0, 0, 2_000, 20_000, 90_000])), d, r)
        for d, rs in enumerate(streams_)
        for r in rs
    ]
    tagged.sort(key=lambda t: t[0])
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(tagged)), max_size=10))))
    batches = [tagged[lo:hi] for lo, hi in itertools.pairwise([0, *cuts, len(tagged)])]
    batches = [b for b in batches if b]
    ticks = [
        data.draw(
            st.one_of(
                st.none(),
                st.tuples(st.sampled_from([0, 10_000, 30_000]), st.sampled_from([None, 4_000])),
            )
        )
        for _ in batches
    ]
    capacity = data.draw(st.sampled_from([2, 3, 5, 24]))
    # Few emitted episodes per row: flapping conditions are settled in Python.
    emitted = data.draw(st.sampled_from([4, 5, 8]))
    fleet, ref, rows = run_both(det, n_dev, batches, ticks, capacity, emitted)
    # The states agree after the run, too, read through the fleet or handed back.
    end = max((r.ts for rs in streams_ for r in rs), default=T0) + 10**8
    # (A copy while the row is hot; the state itself otherwise.)
    copies = [fleet.state(d, rows) if fleet.hot[d] else None for d in range(n_dev)]
    fleet.release(rows)
    assert not fleet.hot[:n_dev].any()
    for d in range(n_dev):
        want = det.advance(ref[d], watermark_ms=end)
        copy = copies[d]
        if copy is not None:
            assert keyed(det.advance(copy, watermark_ms=end)) == keyed(want)
        assert keyed(det.advance(rows[d], watermark_ms=end)) == keyed(want)
        assert (rows[d].phase, rows[d].watermark_ms) == (ref[d].phase, ref[d].watermark_ms)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), params=detectors)
def test_live_like_traffic_with_ticks(data: st.DataObject, params) -> None:
    """A reading or two per device per batch and a tick after each, like serve under load."""
    det = detector_of(params)
    n_dev = data.draw(st.integers(1, 3))
    tagged: list[tuple[int, int, Reading]] = []
    for d in range(n_dev):
        ts = T0
        for _ in range(data.draw(st.integers(1, 60))):
            ts += data.draw(st.sampled_from([1_000, 5_000, 10_000, 20_000]))
            code = data.draw(st.sampled_from([CLEAR] * 6 + [MET] * 4 + [NEUTRAL, END]))
            reading = Reading(
                ts=ts,
                code=code,
                value=80.0 + (ts % 7) if code == MET else 40.0,
                tag=float(ts),
                lon=120.7 + (ts % 997) * 1e-5,
                lat=31.3,
                backfill=False,
            )
            delay = data.draw(st.sampled_from([0, 0, 0, 0, 3_000, 15_000, 40_000]))
            tagged.append((ts + delay, d, reading))
    tagged.sort(key=lambda t: t[0])
    batches: list[list[tuple[int, int, Reading]]] = []
    i = 0
    while i < len(tagged):
        batches.append(tagged[i : i + data.draw(st.integers(1, 4))])
        i += len(batches[-1])
    ticks: list[tuple[int, int | None] | None] = [(30_000, None)] * len(batches)
    run_both(
        det,
        n_dev,
        batches,
        ticks,
        data.draw(st.sampled_from([3, 24])),
        data.draw(st.sampled_from([4, 8])),
    )


def test_a_device_too_busy_for_its_row_is_run_in_python_and_taken_back() -> None:
    det = EpisodeDetector(open_after_s=10, close_after_s=10, lateness_s=30)
    fleet = FleetEpisodes(det, capacity=4)
    rows = [det.new_state()]
    # Ten readings a second for 12 s: more than four wait for the watermark, so the row
    # is handed to the Python detector.
    burst = [(0, 0, Reading(ts=T0 + i * 100, code=MET, value=80.0 + i)) for i in range(120)]
    assert fleet_feed(fleet, rows, burst) == {}
    assert not fleet.hot[0]
    # Once the readings are final the state fits a row again: the open comes from there.
    events = fleet.advance_many(rows, np.array([0]), np.array([T0 + 60_000]))
    assert fleet.hot[0]
    (ev,) = events[0]
    assert ev.action == "open"
    assert (ev.episode.started_at_ms, ev.episode.opened_at_ms) == (T0, T0 + 10_000)
    assert (ev.episode.last_met_ms, ev.episode.max_value) == (T0 + 11_900, 199.0)
    ep = fleet.state(0, rows).open_episode
    assert ep is not None and ep._key() == ev.episode._key()


def test_rejects_bad_shapes_and_capacity() -> None:
    det = EpisodeDetector(open_after_s=10, close_after_s=10)
    with pytest.raises(ValueError, match="capacity"):
        FleetEpisodes(det, capacity=1)
    with pytest.raises(ValueError, match="emitted"):
        FleetEpisodes(det, emitted=3)
    fleet = FleetEpisodes(det)
    with pytest.raises(ValueError, match="device"):
        fleet.feed_many([det.new_state()], np.array([0, 0]), np.array([T0], np.int64), [True])


def test_fold_sees_each_episode_opened_once() -> None:
    """A smoke run through the fleet alone: open, updates, close, numbered from 1."""
    det = EpisodeDetector(open_after_s=10, close_after_s=10, lateness_s=0)
    fleet = FleetEpisodes(det)
    rows = [det.new_state()]
    events: list[EpisodeEvent] = []
    for i, code in enumerate([MET] * 5 + [CLEAR] * 5):
        part = [(0, 0, Reading(ts=T0 + i * 5_000, code=code, value=70.0 + i))]
        events += fleet_feed(fleet, rows, part).get(0, [])
    (ep,) = fold(events).values()
    assert (ep.number, ep.started_at_ms, ep.last_met_ms) == (1, T0, T0 + 20_000)
    assert ep.closed_at_ms == T0 + 35_000 and ep.max_value == 74.0


@pytest.mark.parametrize(
    ("seed", "capacity", "spread_ms"),
    # Small rows and readings beyond the lateness: much of it in Python (late lanes,
    # full rows); rows with room and readings within it: the kernels and their columns.
    [(s, 4, 40_000) for s in range(6)] + [(s, 48, 25_000) for s in range(6, 10)],
)
def test_rules_give_the_same_alerts_through_the_fleet(
    seed: int, capacity: int, spread_ms: int
) -> None:
    """Speeding, route deviation and out of hours, fed and ticked with and without a fleet."""
    from alerts.fleet import NO_TS as NONE
    from alerts.rules import OutOfHours, RouteDeviation, Speeding

    rng = np.random.default_rng(seed)
    n_dev, n_batches, per = 5, 80, 10
    speeding = Speeding(lateness_s=30, progress_every_s=float(seed % 3) * 10)
    deviation = RouteDeviation(lateness_s=30)
    ooh = OutOfHours(lateness_s=30)
    ids = ["R-a", "R-b", "R-c"]
    fleets = {
        n: FleetEpisodes(r.detector, capacity=capacity)
        for n, r in [("s", speeding), ("d", deviation), ("o", ooh)]
    }
    plain = {n: [EpisodeState() for _ in range(n_dev)] for n in fleets}
    rows = {n: [EpisodeState() for _ in range(n_dev)] for n in fleets}
    t = T0
    made: dict[str, int] = {}
    for _ in range(n_batches):
        dev = rng.integers(0, n_dev, per)
        ts = t + rng.integers(0, spread_ms, per)
        t += 5_000
        # Conditions that last (runs of minutes per device), with some noise.
        phase = (ts // 70_000 + dev) % 3
        speed = np.where(phase == 0, 90.0, np.where(phase == 1, 3.0, 40.0))
        speed = np.where(rng.uniform(0, 1, per) < 0.1, 65.0, speed)
        limit = rng.choice([np.nan, 60.0, 60.0, 30.0], per)
        lon = 120.7 + rng.uniform(0, 0.01, per)
        lat = 31.3 + rng.uniform(0, 0.01, per)
        window = (ts // 200_000 + dev) % 4 != 0
        inside = (ts // 90_000 + dev) % 2 == 0
        dist = rng.uniform(0, 300, per)
        route = rng.integers(0, 3, per)
        common = {"device": dev, "ts_ms": ts, "lon_deg": lon, "lat_deg": lat}
        for fleet_kw, states in ((None, plain), ("fleet", rows)):
            got = [
                speeding.feed_many(
                    states["s"],
                    speed_kmh=speed,
                    limit_kmh=limit,
                    **common,
                    **({} if fleet_kw is None else {"fleet": fleets["s"]}),
                ),
                deviation.feed_many(
                    states["d"],
                    distance_m=dist,
                    in_service_window=window,
                    school_day=window,
                    within_corridor=inside,
                    route_index=route,
                    route_ids=ids,
                    **common,
                    **({} if fleet_kw is None else {"fleet": fleets["d"]}),
                ),
                ooh.feed_many(
                    states["o"],
                    speed_kmh=speed,
                    in_service_window=~window,
                    school_day=np.ones(per, bool),
                    **common,
                    **({} if fleet_kw is None else {"fleet": fleets["o"]}),
                ),
            ]
            if fleet_kw is None:
                want = got
        assert got == want
        for found, events in zip(got, want, strict=True):
            assert_same_changes(found, events)
        for found in got:
            for evs in found.values():
                for ev in evs:
                    made[ev.kind] = made.get(ev.kind, 0) + 1
        # A tick: every device that is not quiet, with a cut for deviation.
        keys = np.arange(n_dev)
        wm = np.full(n_dev, t - 30_000, np.int64)
        cut = np.where(keys % 2 == 0, t - 31_000, NONE)
        want_tick = {}
        for name, rule in (("s", speeding), ("d", deviation), ("o", ooh)):
            out = {}
            for d in range(n_dev):
                st_ = plain[name][d]
                if st_.quiet:
                    continue
                if name == "d":
                    evs = deviation.advance(
                        st_,
                        watermark_ms=int(wm[d]),
                        window_end_ms=None if cut[d] == NONE else int(cut[d]),
                        route_ids=ids,
                    )
                else:
                    evs = rule.advance(st_, watermark_ms=int(wm[d]))
                if evs:
                    out[d] = evs
            want_tick[name] = out
        got_tick = {
            "s": speeding.advance_fleet(fleets["s"], rows["s"], keys, wm),
            "d": deviation.advance_route_fleet(fleets["d"], rows["d"], keys, wm, cut, ids),
            "o": ooh.advance_fleet(fleets["o"], rows["o"], keys, wm),
        }
        assert got_tick == want_tick
        for name, found in got_tick.items():
            assert_same_changes(found, want_tick[name])
    # Each rule had something to say (the comparison is not between two silences).
    assert set(made) == {"speeding", "route_deviation", "out_of_hours"}, made
