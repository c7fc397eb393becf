"""The simulated message stream: a pure function of the run's parameters.

:func:`simulate` builds the city and the fleet document, plans every bus and
campus device, places the scenarios, turns plans into readings (with GNSS
noise), readings into MQTT messages (with drops, duplicates, late and
backfilled delivery, clock skew, optional batching) and evaluates each
scenario's probe against what was actually emitted. Nothing here touches
the network or the wall clock: the same :class:`RunSpec` always yields the
same messages, byte for byte, in the same order (``send_ms``, the simulated
time a message is handed to the broker).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import numpy as np
import orjson
import shapely
from numpy.typing import NDArray

from simulators._geo import to_lonlat, to_xy
from simulators._time import day_start_ms, local_dates, parse_rfc3339_ms
from simulators.city import City, CitySpec, Device, build_city, dump_fleet, fleet_document, rng_for
from simulators.plan import BusPlan, RouteCache, build_plans
from simulators.scenarios import (
    DEFAULT_SCENARIOS,
    CampusPlan,
    CorridorGuard,
    DeviceLog,
    Planner,
    campus_phase_ms,
)

__all__ = [
    "DEFAULT_START",
    "Message",
    "RunSpec",
    "Simulation",
    "simulate",
    "topic_for",
]

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]

#: A school day (Monday) at 06:00 local time: the default start of a run.
DEFAULT_START: Final = "2026-11-23T06:00:00+08:00"
_P_NOISE, _P_IMPAIR, _P_FIELDS, _P_CAMPUS_FIELDS, _P_BLIND = 400, 401, 402, 403, 404
#: GNSS error: smooth wander (multipath, atmosphere) plus white noise, per axis (m).
GNSS_WANDER_M: Final = 3.5
GNSS_WHITE_M: Final = 2.0
_GNSS_SIGMA_M: Final = math.hypot(GNSS_WANDER_M, GNSS_WHITE_M)
#: Errors are clipped at this many sigmas (so scenario margins are guaranteed).
_CLIP_SIGMAS: Final = 3.0
PARKED_FIX_S: Final = 300
PARKED_HEARTBEAT_S: Final = 60
_GUARD_M: Final = 1.5
_U32: Final = 1 << 32


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run; equal specs give identical outputs."""

    buses: int = 5
    schools: int = 2
    seed: int = 7
    start: str = DEFAULT_START
    duration_s: float = 2 * 3600.0
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    #: Fixes per gps message in live traffic (1 = one fix per message).
    batch: int = 1
    #: A batch is sent once its oldest fix is this old, even if not full.
    batch_window_s: float = 30.0
    #: Drops, duplicates, late delivery and random blind areas.
    impairments: bool = True
    #: Prepended to every id (tests and benchmarks use their own).
    id_prefix: str = ""

    @property
    def start_ms(self) -> int:
        """Start of the run, epoch ms."""
        return parse_rfc3339_ms(self.start)

    @property
    def end_ms(self) -> int:
        """End of the run (exclusive), epoch ms."""
        return self.start_ms + round(self.duration_s * 1000)


class Message(NamedTuple):
    """One MQTT publication: simulated send time (epoch ms), topic and payload."""

    send_ms: int
    topic: str
    payload: bytes


def topic_for(device_id: str, channel: str) -> str:
    """The contract topic of a device's channel."""
    return f"anxiao/v1/dev/{device_id}/{channel}"


@dataclass
class Simulation:
    """The outputs of one run."""

    spec: RunSpec
    city: City
    fleet: dict[str, Any]
    messages: list[Message]
    ground_truth: list[dict[str, Any]]
    filings: list[dict[str, Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def fleet_bytes(self) -> bytes:
        """The fleet document file."""
        return dump_fleet(self.fleet)

    def ground_truth_bytes(self) -> bytes:
        """The ground truth, one JSON object per line."""
        return b"".join(orjson.dumps(r) + b"\n" for r in self.ground_truth)

    def filings_bytes(self) -> bytes:
        """The filings as a JSON array of ``POST /filings`` bodies."""
        return orjson.dumps(self.filings, option=orjson.OPT_INDENT_2) + b"\n"

    def stream_lines(self) -> Iterator[bytes]:
        """The publish stream as JSON lines ``{"send_ms", "topic", "payload"}``."""
        for m in self.messages:
            yield (
                b'{"send_ms":%d,"topic":%s,"payload":%s}\n'
                % (m.send_ms, orjson.dumps(m.topic), m.payload)
            )

    def write(self, out_dir: Path) -> list[Path]:
        """Write ``fleet.json``, ``ground_truth.jsonl`` and ``filings.json`` to ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {
            "fleet.json": self.fleet_bytes(),
            "ground_truth.jsonl": self.ground_truth_bytes(),
            "filings.json": self.filings_bytes(),
        }
        paths = []
        for name, data in files.items():
            path = out_dir / name
            path.write_bytes(data)
            paths.append(path)
        return paths


def simulate(spec: RunSpec) -> Simulation:
    """Run the whole simulation for ``spec`` (no I/O)."""
    unknown = sorted(set(spec.scenarios) - set(DEFAULT_SCENARIOS))
    if unknown:
        raise ValueError(f"未知场景 unknown scenarios: {', '.join(unknown)}")
    if not 1 <= spec.batch <= 1000:
        raise ValueError("--batch 必须在 1..1000 之间 must be within 1..1000")
    start_ms, end_ms = spec.start_ms, spec.end_ms
    if end_ms <= start_ms:
        raise ValueError("时长必须大于 0 duration must be > 0")
    city = build_city(
        CitySpec(
            buses=spec.buses,
            schools=spec.schools,
            seed=spec.seed,
            start_ms=start_ms,
            end_ms=end_ms,
            id_prefix=spec.id_prefix,
        )
    )
    routes = RouteCache(city)
    plans = build_plans(city, routes, start_ms, end_ms)
    planner = Planner(city, routes, plans, start_ms, end_ms)
    planner.place(list(spec.scenarios))
    probe_devices = {p.device for p in planner.probes}

    out = _Collector()
    logs: dict[str, DeviceLog] = {}
    for d_index, device in enumerate(city.devices):
        keep = device.id in probe_devices
        if device.kind == "gps":
            assert device.bus is not None
            guards = [g for g in planner.guards if g.bus == device.bus]
            log = _gps_device(city, spec, plans[device.bus], device, d_index, guards, out, keep)
        else:
            log = _campus_device(city, spec, d_index, device, planner.campus[d_index], out, keep)
        if log is not None:
            logs[device.id] = log

    ground_truth = [probe.evaluate(logs[probe.device]) for probe in planner.probes]
    ground_truth.sort(key=lambda r: (r["start"] or "~", r["device"], r["scenario"]))
    filings = sorted(planner.filings, key=lambda f: (f["from"], f["bus"]))
    return Simulation(
        spec=spec,
        city=city,
        fleet=fleet_document(city),
        messages=out.messages(),
        ground_truth=ground_truth,
        filings=filings,
        skipped=planner.skipped,
    )


class _Collector:
    """Gathers messages of all devices and orders them by send time."""

    def __init__(self) -> None:
        self.send: list[int] = []
        self.device: list[int] = []
        self.topics: list[str] = []
        self.payloads: list[bytes] = []

    def add(self, send_ms: int, device: int, topic: str, payload: bytes) -> None:
        self.send.append(send_ms)
        self.device.append(device)
        self.topics.append(topic)
        self.payloads.append(payload)

    def messages(self) -> list[Message]:
        send = np.asarray(self.send, dtype=np.int64)
        dev = np.asarray(self.device, dtype=np.int64)
        local = np.arange(len(send), dtype=np.int64)
        order = np.lexsort((local, dev, send))
        topics, payloads = self.topics, self.payloads
        return [Message(int(send[i]), topics[i], payloads[i]) for i in order.tolist()]


def _grid(phase_ms: int, step_ms: int, a_ms: int, b_ms: int) -> I64:
    """Times ``phase + k * step`` within ``[a_ms, b_ms)``."""
    k0 = -(-(a_ms - phase_ms) // step_ms)
    k1 = -(-(b_ms - phase_ms) // step_ms)
    return phase_ms + step_ms * np.arange(k0, k1, dtype=np.int64)


def _inside(t: I64, spans: list[tuple[int, int]]) -> NDArray[np.bool_]:
    mask = np.zeros(len(t), dtype=bool)
    for a, b in spans:
        mask |= (t >= a) & (t < b)
    return mask


def _round_trip(x: F64, y: F64) -> tuple[F64, F64, F64, F64]:
    """Round positions to what a message carries (6 decimals) and project them back."""
    lon, lat = to_lonlat(x, y)
    lon, lat = np.round(lon, 6), np.round(lat, 6)
    xr, yr = to_xy(lon, lat)
    return lon, lat, xr, yr


@dataclass
class _Readings:
    """A device's readings before delivery: true times, device times and payload fields."""

    true_ms: I64
    ts_ms: I64
    channel: list[str]
    fields: list[dict[str, Any]]
    is_fix: NDArray[np.bool_]
    blind: NDArray[np.bool_]
    droppable: NDArray[np.bool_]


def _gps_device(
    city: City,
    spec: RunSpec,
    plan: BusPlan,
    device: Device,
    d_index: int,
    guards: list[CorridorGuard],
    out: _Collector,
    keep_log: bool,
) -> DeviceLog | None:
    start_ms, end_ms = spec.start_ms, spec.end_ms
    acc = [(max(a, start_ms), min(b, end_ms)) for a, b in plan.acc_on(city)]
    acc = [(a, b) for a, b in acc if b > a]
    step = plan.interval_s * 1000
    on_t = [_grid(plan.phase_ms, step, a, b) for a, b in acc]
    parked_spans = plan.parked(city, start_ms, end_ms)
    off_fix = [_grid(plan.phase_ms, PARKED_FIX_S * 1000, a, b) for a, b in parked_spans]
    hb = [_grid(plan.phase_ms, PARKED_HEARTBEAT_S * 1000, a, b) for a, b in parked_spans]
    fix_t = np.sort(np.concatenate([np.zeros(0, dtype=np.int64), *on_t, *off_fix]))
    hb_t = np.concatenate([np.zeros(0, dtype=np.int64), *hb])
    hb_t = hb_t[(hb_t - plan.phase_ms) % (PARKED_FIX_S * 1000) != 0]
    acc_on = _inside(fix_t, acc)

    x, y, heading, speed = _bus_state(city, plan, fix_t)
    alarm = np.zeros(len(fix_t), dtype=np.int64)
    for a, b, bits in plan.alarm_bits:
        alarm[(fix_t >= a) & (fix_t < b)] |= bits
    positioned = np.ones(len(fix_t), dtype=bool)
    for a, b in plan.freezes:
        m = (fix_t >= a) & (fix_t < b)
        if m.any():
            k = int(np.flatnonzero(m)[0])
            x[m], y[m], heading[m], speed[m] = x[k], y[k], heading[k], 0.0
            positioned[m] = False

    # GNSS error: a smooth wander plus white noise, worse in urban canyons, clipped.
    g = rng_for(city.spec.seed, _P_NOISE, d_index)
    t_s = fix_t / 1000.0
    err = []
    for _axis in range(2):
        periods = g.uniform(40, 400, 4)
        phases = g.uniform(0, 2 * np.pi, 4)
        wander = sum(np.sin(2 * np.pi * t_s / p + f) for p, f in zip(periods, phases, strict=True))
        err.append(wander * GNSS_WANDER_M / math.sqrt(2) + g.normal(0, GNSS_WHITE_M, len(t_s)))
    factor = city.noise_factor(x, y)
    ex, ey = err[0] * factor, err[1] * factor
    radius = np.hypot(ex, ey)
    limit = _CLIP_SIGMAS * _GNSS_SIGMA_M * factor
    scale = np.where(radius > limit, limit / np.maximum(radius, 1e-9), 1.0)
    nx, ny = x + ex * scale, y + ey * scale
    frozen = ~positioned
    if frozen.any():  # a receiver without a fix repeats its last position
        nx[frozen], ny[frozen] = _hold(nx, frozen), _hold(ny, frozen)
    for guard in guards:
        _apply_guard(city, guard, fix_t, nx, ny)
    lon, lat, ex_m, ey_m = _round_trip(nx, ny)

    gf = rng_for(city.spec.seed, _P_FIELDS, d_index)
    n = len(fix_t)
    moving = speed >= 1.0
    speed_rep = np.where(moving, np.maximum(speed + gf.normal(0, 0.3, n), 0.0), 0.0).round(1)
    heading_rep = np.where(moving, (heading + gf.normal(0, 2.0, n)) % 360.0, heading).astype(
        np.int64
    )
    heading_rep %= 360
    alt = (4.0 + 1.5 * np.sin(nx / 1700.0) + gf.normal(0, 0.8, n)).round(1)
    canyon = factor > 1.0
    sats = np.clip(np.rint(gf.normal(11, 1.5, n)) - 4 * canyon, 4, 20).astype(np.int64)
    hdop = np.clip(0.8 + 0.15 * gf.normal(0, 1, n) + 1.2 * canyon, 0.5, 9.9).round(1)
    sats[frozen], hdop[frozen] = 0, 99.9
    seq0 = _U32 - 300 if d_index == 0 else int(gf.integers(0, _U32))
    seq = (seq0 + np.arange(n, dtype=np.int64)) % _U32
    status = acc_on.astype(np.int64) | (positioned.astype(np.int64) << 1)

    hb_rssi = gf.integers(-95, -55, len(hb_t))

    # Merge fixes and heartbeats by time; ``src`` indexes the fix arrays (-1: heartbeat).
    true_ms = np.concatenate([fix_t, hb_t])
    src = np.concatenate([np.arange(n), np.full(len(hb_t), -1)])
    order = np.argsort(true_ms, kind="stable")
    true_ms, src = true_ms[order], src[order]
    keep = ~_inside(true_ms, plan.silences)
    true_ms, src = true_ms[keep], src[keep]
    blinds = list(plan.blinds)
    if spec.impairments:
        blinds += _random_blinds(city, plan, d_index, acc)
    blind = _inside(true_ms, blinds)
    # Heartbeats are not stored through a blind area; fixes are, and sent late.
    keep = ~(blind & (src < 0))
    true_ms, src, blind = true_ms[keep], src[keep], blind[keep]
    ts_ms = true_ms.copy()
    for a, b, skew in plan.skews:
        ts_ms[(true_ms >= a) & (true_ms < b)] += skew
    is_fix = src >= 0

    # Payloads, "ts" first, built once.
    ts_values = _rfc3339_many(ts_ms) if device.ts_format == "rfc3339" else ts_ms.tolist()
    j = src[is_fix]
    fix_dicts = [
        {
            "ts": t,
            "lat": la,
            "lon": lo,
            "speed": sp,
            "heading": hd,
            "alt": al,
            "sats": sa,
            "hdop": hp,
            "seq": sq,
            "alarm": am,
            "status": st,
        }
        for t, la, lo, sp, hd, al, sa, hp, sq, am, st in zip(
            [v for v, f in zip(ts_values, is_fix.tolist(), strict=True) if f],
            *(c[j].tolist() for c in (lat, lon, speed_rep, heading_rep, alt, sats, hdop)),
            *(c[j].tolist() for c in (seq, alarm, status)),
            strict=True,
        )
    ]
    hb_ts = [v for v, f in zip(ts_values, is_fix.tolist(), strict=True) if not f]
    hb_dicts = [{"ts": t, "rssi": q} for t, q in zip(hb_ts, hb_rssi.tolist(), strict=False)]
    fix_iter, hb_iter = iter(fix_dicts), iter(hb_dicts)
    fields: list[dict[str, Any]] = [next(fix_iter) if f else next(hb_iter) for f in is_fix.tolist()]
    readings = _Readings(
        true_ms=true_ms,
        ts_ms=ts_ms,
        channel=["gps" if f else "heartbeat" for f in is_fix.tolist()],
        fields=fields,
        is_fix=is_fix,
        blind=blind,
        droppable=~_inside(true_ms, plan.protected) & ~blind,
    )
    sent = _deliver(city, spec, device, d_index, readings, blinds, out, keep_log=keep_log)
    if not keep_log:
        return None
    j = np.where(is_fix, src, 0)
    nan = np.full(len(src), np.nan)
    return _log(
        readings,
        sent,
        np.where(is_fix, ex_m[j], nan) if n else nan,
        np.where(is_fix, ey_m[j], nan) if n else nan,
        np.where(is_fix, speed_rep[j], nan) if n else nan,
        np.where(is_fix, alarm[j], 0) if n else np.zeros(len(src), dtype=np.int64),
    )


def _rfc3339_many(ts_ms: I64) -> list[str]:
    """:func:`format_rfc3339` for many times at once (Asia/Shanghai is always +08:00)."""
    local = (ts_ms + 8 * 3_600_000).astype("datetime64[ms]")
    text: list[str] = np.datetime_as_string(local, unit="ms").tolist()
    return [t[:-4] + "+08:00" if t.endswith(".000") else t + "+08:00" for t in text]


def _hold(values: F64, frozen: NDArray[np.bool_]) -> F64:
    """Repeat the last value before each frozen run through the run."""
    idx = np.where(~frozen, np.arange(len(values)), 0)
    np.maximum.accumulate(idx, out=idx)
    return values[idx][frozen]


def _bus_state(city: City, plan: BusPlan, t_ms: I64) -> tuple[F64, F64, F64, F64]:
    """Position, heading and true speed (km/h) of a bus at times ``t_ms``."""
    n = len(t_ms)
    x, y, heading, speed = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    legs = sorted(plan.legs, key=lambda leg: leg.depart_ms)
    if not legs:
        route = city.routes[city.buses[plan.bus].route]
        x[:], y[:] = route.vx[0], route.vy[0]
        return x, y, heading, speed
    departs = np.array([leg.depart_ms for leg in legs], dtype=np.int64)
    idx = np.searchsorted(departs, t_ms, side="right") - 1
    for i, leg in enumerate(legs):
        m = idx == i
        if not m.any():
            continue
        prof = leg.profile(city)
        rel = np.minimum((t_ms[m] - leg.depart_ms) / 1000.0, prof.duration_s)
        x[m], y[m], heading[m], speed[m] = prof.state(rel)
    before = idx < 0
    if before.any():
        first = legs[0].path
        x[before], y[before], heading[before] = first.x[0], first.y[0], first.heading_deg[0]
    return x, y, heading, speed


def _apply_guard(city: City, guard: CorridorGuard, t_ms: I64, x: F64, y: F64) -> None:
    """Move fixes out of the corridor edge's guard band; break long runs outside."""
    leg = guard.leg
    prof = leg.profile(city)
    t0 = leg.depart_ms + int(prof.time_at(guard.s0_m) * 1000)
    t1 = leg.depart_ms + int(prof.time_at(guard.s1_m) * 1000)
    sel = np.flatnonzero((t_ms >= t0) & (t_ms <= t1))
    if not sel.size:
        return
    r = city.routes[guard.route]
    line = shapely.LineString(np.column_stack([r.vx, r.vy]))
    c = guard.corridor_m
    for _ in range(4):
        _lon, _lat, xr, yr = _round_trip(x[sel], y[sel])
        pts = shapely.points(xr, yr)
        d = shapely.distance(line, pts)
        target = np.full(len(sel), np.nan)
        band = np.abs(d - c) < _GUARD_M
        target[band] = np.where(d[band] >= c, c + 2 * _GUARD_M, c - 2 * _GUARD_M)
        if guard.max_run_s is not None:
            outside = d > c
            ts = t_ms[sel]
            k = 0
            while k < len(sel):
                if not outside[k]:
                    k += 1
                    continue
                j = k
                while j + 1 < len(sel) and outside[j + 1]:
                    j += 1
                if (ts[j] - ts[k]) / 1000 >= guard.max_run_s:
                    mid = (k + j) // 2
                    target[mid] = c - 2 * _GUARD_M
                    outside[mid] = False
                    continue  # re-scan the two halves
                k = j + 1
        move = np.flatnonzero(~np.isnan(target))
        if not move.size:
            return
        near = shapely.line_interpolate_point(line, shapely.line_locate_point(line, pts[move]))
        nx, ny = shapely.get_x(near), shapely.get_y(near)
        dx, dy = xr[move] - nx, yr[move] - ny
        norm = np.maximum(np.hypot(dx, dy), 1e-9)
        x[sel[move]] = nx + dx / norm * target[move]
        y[sel[move]] = ny + dy / norm * target[move]


def _random_blinds(
    city: City,
    plan: BusPlan,
    d_index: int,
    acc: list[tuple[int, int]],
) -> list[tuple[int, int]]:
    """Occasional tunnels and underground car parks: 1–3 minutes without a network."""
    g = rng_for(city.spec.seed, _P_BLIND, d_index)
    out = []
    for a, b in acc:
        draw, length_ms, at = g.random(), int(g.uniform(60, 180)) * 1000, g.random()
        if draw > 0.2 or b - a < length_ms + 10 * 60_000:
            continue
        t0 = a + 5 * 60_000 + int(at * (b - a - length_ms - 10 * 60_000))
        t1 = t0 + length_ms
        busy = plan.protected + plan.blinds + plan.silences
        if all(t1 + 60_000 <= p or t0 - 60_000 >= q for p, q in busy):
            out.append((t0, t1))
    return out


def _dumps(obj: Any) -> bytes:
    """Serialise to JSON as an exact-size bytes object.

    ``orjson.dumps`` returns bytes backed by a 4 KiB allocation however short
    the text; millions of kept payloads would need gigabytes, so copy once.
    """
    return bytes(memoryview(orjson.dumps(obj)))


def _deliver(
    city: City,
    spec: RunSpec,
    device: Device,
    d_index: int,
    r: _Readings,
    blinds: list[tuple[int, int]],
    out: _Collector,
    *,
    keep_log: bool,
) -> I64:
    """Turn readings into messages; return each reading's first send time (-1 = never).

    This is the hot loop of large runs: one payload per message, no copies.
    """
    g = rng_for(city.spec.seed, _P_IMPAIR, d_index)
    n = len(r.true_ms)
    latency = g.integers(150, 1500, n)
    send = r.true_ms + latency
    dropped = np.zeros(n, dtype=bool)
    dup = np.zeros(n, dtype=bool)
    if spec.impairments:
        draw = g.random(n)
        dropped = (draw < 0.004) & r.droppable
        dropped[1:] &= ~dropped[:-1]  # never two in a row
        if n:
            dropped[0] = dropped[-1] = False
        late = (g.random(n) < 0.004) & ~r.blind
        send = send + np.where(late, g.integers(2000, 20000, n), 0)
        dup = g.random(n) < 0.004
    dup_delay = g.integers(500, 8000, n)
    first_send = np.full(n, -1, dtype=np.int64)
    end_ms = spec.end_ms
    topics = {c: topic_for(device.id, c) for c in ("gps", "heartbeat", "smoke", "button")}
    gps_topic = topics["gps"]
    add = out.add
    dumps = _dumps
    fields = r.fields

    def emit(at_ms: int, topic: str, payload: bytes, members: list[int], again: bool) -> None:
        if at_ms >= end_ms:
            return
        add(at_ms, d_index, topic, payload)
        if again:
            add(at_ms + int(dup_delay[members[-1]]), d_index, topic, payload)
        if keep_log:
            for i in members:
                if first_send[i] < 0 or at_ms < first_send[i]:
                    first_send[i] = at_ms

    # Backfilled fixes: one batch (or several) per blind area, after it ends.
    for a, b in sorted(blinds):
        members = np.flatnonzero(r.blind & (r.true_ms >= a) & (r.true_ms < b)).tolist()
        at = b + int(g.integers(5000, 25000))
        for c in range(0, len(members), 500):
            chunk = members[c : c + 500]
            body = {"fixes": [fields[i] for i in chunk], "backfill": True}
            emit(at + c, gps_topic, dumps(body), chunk, False)

    live = ~r.blind & ~dropped
    if spec.batch == 1:
        # One message per reading: the common case, kept lean.
        for i, at, again, channel in zip(
            np.flatnonzero(live).tolist(),
            send[live].tolist(),
            dup[live].tolist(),
            [r.channel[i] for i in np.flatnonzero(live).tolist()],
            strict=True,
        ):
            if at >= end_ms:
                continue
            payload = dumps(fields[i])
            topic = topics[channel]
            add(at, d_index, topic, payload)
            if again:
                add(at + int(dup_delay[i]), d_index, topic, payload)
            if keep_log:
                first_send[i] = at if first_send[i] < 0 else min(at, int(first_send[i]))
        return first_send

    group: list[int] = []
    window_ms = int(spec.batch_window_s * 1000)

    def flush() -> None:
        if group:
            body = {"fixes": [fields[i] for i in group], "backfill": False}
            last = group[-1]
            emit(int(send[last]), gps_topic, dumps(body), list(group), bool(dup[last]))
            group.clear()

    for i in np.flatnonzero(live).tolist():
        if r.is_fix[i]:
            if group and int(r.true_ms[i]) - int(r.true_ms[group[0]]) >= window_ms:
                flush()
            group.append(i)
            if len(group) >= spec.batch:
                flush()
        else:
            topic = topics[r.channel[i]]
            emit(int(send[i]), topic, dumps(fields[i]), [i], bool(dup[i]))
    flush()
    return first_send


def _log(r: _Readings, sent: I64, fx: F64, fy: F64, fsp: F64, fal: I64) -> DeviceLog:
    """What the device's published messages carried, first copies, sorted by ts."""
    ok = sent >= 0
    order = np.flatnonzero(ok)[np.argsort(r.ts_ms[ok], kind="stable")]
    fix = order[r.is_fix[order]]
    events = [
        (int(r.ts_ms[i]), int(sent[i]), r.channel[i], r.fields[i])
        for i in order.tolist()
        if r.channel[i] in ("smoke", "button")
    ]
    return DeviceLog(
        ts_ms=r.ts_ms[order],
        send_ms=sent[order],
        fix_ts=r.ts_ms[fix],
        fix_send=sent[fix],
        fix_x=fx[fix],
        fix_y=fy[fix],
        fix_speed=fsp[fix],
        fix_alarm=fal[fix],
        fix_backfill=r.blind[fix],
        events=events,
    )


def _campus_device(
    city: City,
    spec: RunSpec,
    d_index: int,
    device: Device,
    plan: CampusPlan,
    out: _Collector,
    keep_log: bool,
) -> DeviceLog | None:
    start_ms, end_ms = spec.start_ms, spec.end_ms
    g = rng_for(city.spec.seed, _P_CAMPUS_FIELDS, d_index)
    hb_t = _grid(campus_phase_ms(city, d_index), device.heartbeat_s * 1000, start_ms, end_ms)
    battery0 = float(g.uniform(55, 100))
    rssi = g.integers(-90, -50, len(hb_t)).tolist()
    days = (hb_t - start_ms) / 86_400_000
    battery = np.floor(battery0 - 0.05 * days).astype(np.int64).tolist()
    items: list[tuple[int, str, dict[str, Any]]] = [
        (t, "heartbeat", {"battery": b, "rssi": q})
        for t, b, q in zip(hb_t.tolist(), battery, rssi, strict=True)
    ]
    items += [e for e in plan.events if start_ms <= e[0] < end_ms]
    items += _monthly_test(city, d_index, device, plan, start_ms, end_ms)
    items.sort(key=lambda e: (e[0], e[1]))
    true_ms = np.array([e[0] for e in items], dtype=np.int64)
    keep = ~_inside(true_ms, plan.silences)
    items = [e for e, k in zip(items, keep.tolist(), strict=True) if k]
    true_ms = true_ms[keep]
    ts_ms = true_ms.copy()
    for a, b, skew in plan.skews:
        ts_ms[(true_ms >= a) & (true_ms < b)] += skew
    channel = [e[1] for e in items]
    is_hb = np.array([c == "heartbeat" for c in channel], dtype=bool)
    ts_values = _rfc3339_many(ts_ms) if device.ts_format == "rfc3339" else ts_ms.tolist()
    readings = _Readings(
        true_ms=true_ms,
        ts_ms=ts_ms,
        channel=channel,
        fields=[{"ts": t, **e[2]} for t, e in zip(ts_values, items, strict=True)],
        is_fix=np.zeros(len(items), dtype=bool),
        blind=np.zeros(len(items), dtype=bool),
        droppable=is_hb & ~_inside(true_ms, plan.protected),
    )
    sent = _deliver(city, spec, device, d_index, readings, [], out, keep_log=keep_log)
    if not keep_log:
        return None
    empty = np.zeros(len(items))
    return _log(readings, sent, empty, empty, empty, np.zeros(len(items), dtype=np.int64))


def _monthly_test(
    city: City, d_index: int, device: Device, plan: CampusPlan, start_ms: int, end_ms: int
) -> list[tuple[int, str, dict[str, Any]]]:
    """The monthly test of a smoke sensor or button, on its own day of the month."""
    g = rng_for(city.spec.seed, _P_CAMPUS_FIELDS, d_index, 1)
    day_of_month = int(g.integers(1, 29))
    minute = 9 * 60 + int(g.integers(0, 240))
    out: list[tuple[int, str, dict[str, Any]]] = []
    for day in local_dates(start_ms, end_ms):
        if day.day != day_of_month or not city.school_calendar.is_school_day(day):
            continue
        t = day_start_ms(day) + minute * 60_000 + int(g.integers(0, 60)) * 1000
        if not (start_ms <= t < end_ms - 60_000) or not plan.is_free(t, t + 60_000):
            continue
        if device.kind == "button":
            out.append((t, "button", {"event": "test"}))
        else:
            out.append((t, "smoke", {"state": "test", "obscuration": 0.0}))
            out.append((t + 20_000, "smoke", {"state": "normal", "obscuration": 0.0}))
    return out
