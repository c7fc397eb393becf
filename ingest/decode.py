"""Decoding and validation of the wire contract (contract §1) into columns.

:func:`decode_messages` turns a batch of raw MQTT messages into one column set
per channel plus the dead letters, and accounts for every message: each one
is either rows (a GPS batch can be several rows, and some of its fixes may be
dead letters while the others are stored) or a dead letter, never neither.

Only the envelope (size, topic, device, JSON) is looked at message by
message; fields are checked column-wise: ``[fix.get("lat") for fix in fixes]``
becomes a float64 array and the range checks are array expressions. The
per-message Python objects (orjson's dicts) are dropped once the columns are
built.

Reason codes (in the order they are checked):

* ``too_large`` -- the payload exceeds ``max_payload_bytes`` (256 KiB);
* ``bad_topic`` -- not ``anxiao/v1/dev/{device_id}/{channel}`` with a valid id
  and a known channel;
* ``unknown_device`` -- no registered, unretired device has that id;
* ``bad_json`` -- not UTF-8 JSON, or not a JSON object;
* ``missing_field`` -- a required field is absent or null (``ts``, ``lat``,
  ``lon``, ``state``, ``event``), or a GPS batch is empty;
* ``bad_time`` -- ``ts`` is neither integer epoch milliseconds nor an RFC 3339
  string with an offset, or lies outside the validity window around the
  receive time (``max_past_s`` before, ``max_future_s`` after);
* ``out_of_range`` -- a value of the wrong type or outside its range, an
  unknown ``state``/``event``, (0, 0), a batch of more than 1000 fixes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any, Final, TypeVar

import numpy as np
import orjson
from numpy.typing import NDArray

from ingest.columns import (
    BUTTON_EVENTS,
    SMOKE_STATES,
    ButtonColumns,
    GpsColumns,
    HeartbeatColumns,
    SmokeColumns,
)

__all__ = [
    "CHANNELS",
    "REASONS",
    "BatchDecoder",
    "DeadLetters",
    "Decoded",
    "Limits",
    "decode_messages",
    "parse_ts_ms",
]

CHANNELS: Final = ("gps", "heartbeat", "smoke", "button")
REASONS: Final = (
    "bad_json",
    "bad_topic",
    "unknown_device",
    "missing_field",
    "out_of_range",
    "bad_time",
    "too_large",
)
TOPIC_PREFIX: Final = "anxiao/v1/dev/"
_CHANNEL_SET: Final = frozenset(CHANNELS)
_DEVICE_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
#: Integer ts outside this range cannot be a time any validity window accepts.
_TS_BOUND_MS: Final = 2**53
_DWORD_MAX: Final = 2**32 - 1
_NUMBER: Final = frozenset({int, float})
_NONE: Final = frozenset({type(None)})
_OK, _MISSING, _BAD = 0, 1, 2
_SMOKE_CODE: Final = {s: i for i, s in enumerate(SMOKE_STATES)}
_BUTTON_CODE: Final = {s: i for i, s in enumerate(BUTTON_EVENTS)}
#: Readings cut into columns at a time (see decode_messages).
_CHUNK_ROWS: Final = 512


@dataclass(frozen=True, slots=True)
class Limits:
    """Validity limits (contract §1 defaults come from the settings)."""

    max_past_ms: int = 7 * 86_400_000
    max_future_ms: int = 300_000
    max_speed_kmh: float = 250.0
    max_payload_bytes: int = 256 * 1024
    max_batch_fixes: int = 1000


@dataclass(slots=True)
class DeadLetters:
    """Dead letters of a batch, column-wise (payloads differ in size, so lists)."""

    received_ms: list[int] = field(default_factory=list)
    topic: list[str] = field(default_factory=list)
    payload: list[bytes] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)
    detail: list[str] = field(default_factory=list)
    device_id: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.reason)

    def add(
        self,
        received_ms: int,
        topic: str,
        payload: bytes,
        reason: str,
        detail: str,
        device_id: str | None,
    ) -> None:
        """Append one dead letter."""
        self.received_ms.append(received_ms)
        self.topic.append(topic)
        self.payload.append(payload)
        self.reason.append(reason)
        self.detail.append(detail)
        self.device_id.append(device_id)

    def counts(self) -> dict[str, int]:
        """Dead letters per reason code."""
        found: dict[str, int] = {}
        for reason in self.reason:
            found[reason] = found.get(reason, 0) + 1
        return found


@dataclass(frozen=True, slots=True)
class Decoded:
    """One batch, decoded: per-channel columns (sorted, deduplicated) and dead letters."""

    gps: GpsColumns
    heartbeat: HeartbeatColumns
    smoke: SmokeColumns
    button: ButtonColumns
    dead: DeadLetters
    messages: int
    #: Readings dropped because the same batch already held them, per channel.
    batch_duplicates: dict[str, int]
    #: Well-formed device ids that the directory did not know.
    unknown_ids: frozenset[str]

    @property
    def readings(self) -> int:
        """Valid readings kept (after in-batch deduplication)."""
        return len(self.gps) + len(self.heartbeat) + len(self.smoke) + len(self.button)


def parse_ts_ms(value: object) -> int | None:
    """Epoch milliseconds of a contract ``ts`` value, or None if it is not one."""
    kind = type(value)
    if kind is int:
        ts = int(value)  # type: ignore[call-overload]
        return ts if -_TS_BOUND_MS < ts < _TS_BOUND_MS else None
    if kind is str:
        text = str(value)
        if _RFC3339.fullmatch(text) is None:
            return None
        try:
            moment = datetime.fromisoformat(text.upper())
        except ValueError:
            return None
        # The pattern demands an offset, so the result is always aware.
        return (moment - _EPOCH) // _ONE_MS
    return None


def decode_messages(
    topics: Sequence[str],
    payloads: Sequence[bytes],
    received_ms: NDArray[np.int64],
    *,
    directory: Mapping[str, int],
    limits: Limits,
) -> Decoded:
    """Decode and validate one batch of messages (see the module docstring)."""
    decoder = BatchDecoder(topics, payloads, received_ms, directory=directory, limits=limits)
    while not decoder.done:
        decoder.step()
    return decoder.result()


class BatchDecoder:
    """:func:`decode_messages` in steps of a few milliseconds each.

    The service runs it on the event loop and yields between steps, so that
    database round trips of the batch being written meanwhile are not held up
    for a whole batch's decoding.
    """

    def __init__(
        self,
        topics: Sequence[str],
        payloads: Sequence[bytes],
        received_ms: NDArray[np.int64],
        *,
        directory: Mapping[str, int],
        limits: Limits,
    ) -> None:
        count = len(topics)
        self._batch = _Batch(
            topics=topics,
            payloads=payloads,
            received=received_ms.tolist(),
            received_ms=received_ms,
            keys=np.zeros(count, dtype=np.int32),
            device_ids=[""] * count,
            dead=DeadLetters(),
            limits=limits,
        )
        self._directory = directory
        self._count = count
        self._next = 0
        self._buckets = {c: _Bucket() for c in CHANNELS}
        self._parts: dict[str, list[Any]] = {c: [] for c in CHANNELS}
        self._unknown: set[str] = set()

    @property
    def done(self) -> bool:
        """Whether every message has been looked at (then call :meth:`result`)."""
        return self._next >= self._count

    def step(self, max_messages: int = _CHUNK_ROWS) -> None:
        """Decode messages until a chunk of columns is cut or ``max_messages`` are done."""
        batch = self._batch
        dead, received, keys, device_ids = batch.dead, batch.received, batch.keys, batch.device_ids
        topics, payloads = batch.topics, batch.payloads
        directory, buckets, unknown = self._directory, self._buckets, self._unknown
        loads = orjson.loads
        max_bytes = batch.limits.max_payload_bytes
        prefix_length = len(TOPIC_PREFIX)
        stop = min(self._count, self._next + max_messages)
        m = self._next
        while m < stop:
            topic = topics[m]
            payload = payloads[m]
            m += 1
            received_at = received[m - 1]
            if len(payload) > max_bytes:
                dead.add(
                    received_at,
                    topic,
                    payload,
                    "too_large",
                    f"{len(payload)} bytes > {max_bytes}",
                    _device_of(topic),
                )
                continue
            device, _, channel = topic[prefix_length:].partition("/")
            key = directory.get(device)
            if key is None or channel not in _CHANNEL_SET or not topic.startswith(TOPIC_PREFIX):
                if (
                    not topic.startswith(TOPIC_PREFIX)
                    or channel not in _CHANNEL_SET
                    or _DEVICE_ID.fullmatch(device) is None
                ):
                    dead.add(received_at, topic, payload, "bad_topic", _topic_problem(topic), None)
                else:
                    unknown.add(device)
                    dead.add(
                        received_at, topic, payload, "unknown_device", "no such device", device
                    )
                continue
            try:
                document = loads(payload)
            except orjson.JSONDecodeError as exc:
                dead.add(received_at, topic, payload, "bad_json", _clip(str(exc)), device)
                continue
            if type(document) is not dict:
                dead.add(
                    received_at, topic, payload, "bad_json", "payload is not a JSON object", device
                )
                continue
            keys[m - 1] = key
            device_ids[m - 1] = device
            bucket = buckets[channel]
            bucket.objects.append(document)
            bucket.messages.append(m - 1)
            listed = document.get("fixes") if channel == "gps" else None
            bucket.rows += len(listed) if type(listed) is list else 1
            if bucket.rows >= _CHUNK_ROWS:
                # Columns are cut from the objects while they are still in the CPU
                # cache: about twice as fast as one pass over the whole batch.
                self._cut(channel)
                break
        self._next = m

    def _cut(self, channel: str) -> None:
        bucket = self._buckets[channel]
        if bucket.objects:
            part = _DECODERS[channel](self._batch, bucket.objects, bucket.messages)
            self._parts[channel].append(part)
            self._buckets[channel] = _Bucket()

    def result(self) -> Decoded:
        """The decoded batch (decodes whatever :meth:`step` has not reached yet)."""
        while not self.done:
            self.step()
        for channel in CHANNELS:
            self._cut(channel)
        parts = self._parts
        gps, gps_dups = _merge(GpsColumns, parts["gps"])
        heartbeat, heartbeat_dups = _merge(HeartbeatColumns, parts["heartbeat"])
        smoke, smoke_dups = _merge(SmokeColumns, parts["smoke"])
        button, button_dups = _merge(ButtonColumns, parts["button"])
        return Decoded(
            gps=gps,
            heartbeat=heartbeat,
            smoke=smoke,
            button=button,
            dead=self._batch.dead,
            messages=self._count,
            batch_duplicates={
                "gps": gps_dups,
                "heartbeat": heartbeat_dups,
                "smoke": smoke_dups,
                "button": button_dups,
            },
            unknown_ids=frozenset(self._unknown),
        )


_C = TypeVar("_C", GpsColumns, HeartbeatColumns, SmokeColumns, ButtonColumns)


def _merge(kind: type[_C], parts: list[_C]) -> tuple[_C, int]:
    """One column set from the chunks: sorted by (device, ts), in-batch duplicates dropped."""
    if not parts:
        return kind.empty(), 0
    if len(parts) == 1:
        merged = parts[0]
    else:
        merged = kind(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(kind)}
        )
    order, duplicates = _order(merged.device_key, merged.ts_ms)
    return merged.select(order), duplicates


# --------------------------------------------------------------------- helpers


@dataclass(frozen=True, slots=True)
class _Batch:
    """What the per-channel decoders share about the batch's messages."""

    topics: Sequence[str]
    payloads: Sequence[bytes]
    received: list[int]
    received_ms: NDArray[np.int64]
    keys: NDArray[np.int32]
    device_ids: list[str]
    dead: DeadLetters
    limits: Limits


@dataclass(slots=True)
class _Bucket:
    """Messages of one channel waiting to be cut into columns."""

    objects: list[object] = field(default_factory=list)
    messages: list[int] = field(default_factory=list)
    rows: int = 0


class _Problems:
    """The first problem of each row: checks are flagged in priority order."""

    def __init__(self, rows: int) -> None:
        self.code = np.zeros(rows, dtype=np.int16)
        self.checks: list[tuple[str, str, list[object] | None]] = [("", "", None)]

    def flag(
        self, mask: NDArray[np.bool_], reason: str, what: str, values: list[object] | None = None
    ) -> None:
        """Give ``reason`` to the rows in ``mask`` that have no earlier problem."""
        hit = mask & (self.code == 0)
        if hit.any():
            self.checks.append((reason, what, values))
            self.code[hit] = len(self.checks) - 1

    def ok(self) -> NDArray[np.bool_]:
        """Rows without any problem."""
        ok: NDArray[np.bool_] = self.code == 0
        return ok

    def describe(self, row: int) -> tuple[str, str]:
        """Reason code and human detail of a row's problem."""
        reason, what, values = self.checks[int(self.code[row])]
        if values is None:
            return reason, what
        return reason, f"{what}: {_clip(repr(values[row]))}"


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _device_of(topic: str) -> str | None:
    device, _, _ = topic[len(TOPIC_PREFIX) :].partition("/")
    if topic.startswith(TOPIC_PREFIX) and _DEVICE_ID.fullmatch(device):
        return device
    return None


def _topic_problem(topic: str) -> str:
    if not topic.startswith(TOPIC_PREFIX):
        return f"topic must start with {TOPIC_PREFIX}"
    device, _, channel = topic[len(TOPIC_PREFIX) :].partition("/")
    if _DEVICE_ID.fullmatch(device) is None:
        return "device id must match [A-Za-z0-9_.-]{1,64}"
    return f"channel must be one of {', '.join(CHANNELS)}, got {_clip(channel, 40)!r}"


def _numbers(values: list[object]) -> tuple[NDArray[np.float64], NDArray[np.int8]]:
    """Float64 column and per-row state (ok, missing, not a number)."""
    rows = len(values)
    kinds = set(map(type, values))
    if kinds <= _NUMBER:
        try:
            return np.array(values, dtype=np.float64), np.zeros(rows, dtype=np.int8)
        except OverflowError:  # an integer too large for a float; sort it out below
            pass
    elif kinds == _NONE:
        return np.full(rows, np.nan), np.full(rows, _MISSING, dtype=np.int8)
    column = np.full(rows, np.nan)
    state = np.zeros(rows, dtype=np.int8)
    for i, value in enumerate(values):
        kind = type(value)
        if kind is float or kind is int:
            try:
                column[i] = value
            except OverflowError:
                state[i] = _BAD
        elif value is None:
            state[i] = _MISSING
        else:
            state[i] = _BAD
    return column, state


def _integers(values: list[object]) -> tuple[NDArray[np.int64], NDArray[np.int8]]:
    """Int64 column (-1 where unusable) and per-row state (ok, missing, bad)."""
    rows = len(values)
    kinds = set(map(type, values))
    if kinds == {int}:
        try:
            return np.array(values, dtype=np.int64), np.zeros(rows, dtype=np.int8)
        except OverflowError:
            pass
    elif kinds == _NONE:
        return np.full(rows, -1, dtype=np.int64), np.full(rows, _MISSING, dtype=np.int8)
    column = np.full(rows, -1, dtype=np.int64)
    state = np.zeros(rows, dtype=np.int8)
    for i, value in enumerate(values):
        if type(value) is int:
            if -(2**63) <= value < 2**63:
                column[i] = value
            else:
                state[i] = _BAD
        elif value is None:
            state[i] = _MISSING
        else:
            state[i] = _BAD
    return column, state


def _timestamps(values: list[object]) -> tuple[NDArray[np.int64], NDArray[np.int8]]:
    """Epoch-millisecond column and per-row state (ok, missing, not a contract ts)."""
    rows = len(values)
    if set(map(type, values)) == {int}:
        try:
            column = np.array(values, dtype=np.int64)
        except OverflowError:
            pass
        else:
            state = np.zeros(rows, dtype=np.int8)
            state[np.abs(column) >= _TS_BOUND_MS] = _BAD
            return column, state
    column = np.zeros(rows, dtype=np.int64)
    state = np.zeros(rows, dtype=np.int8)
    for i, value in enumerate(values):
        if value is None:
            state[i] = _MISSING
            continue
        ts = parse_ts_ms(value)
        if ts is None:
            state[i] = _BAD
        else:
            column[i] = ts
    return column, state


def _field(objects: list[dict[str, object]], name: str) -> list[object]:
    """One field of every object (None where absent), without a Python frame per object."""
    return list(map(dict.get, objects, repeat(name)))


def _check_ts(
    problems: _Problems,
    values: list[object],
    ts_ms: NDArray[np.int64],
    state: NDArray[np.int8],
    received_ms: NDArray[np.int64],
    limits: Limits,
) -> None:
    problems.flag(
        state == _BAD, "bad_time", "ts is neither epoch ms nor RFC 3339 with offset", values
    )
    age_ms = received_ms - ts_ms
    problems.flag(
        age_ms > limits.max_past_ms,
        "bad_time",
        f"ts more than {limits.max_past_ms // 1000} s before receive time",
        values,
    )
    problems.flag(
        -age_ms > limits.max_future_ms,
        "bad_time",
        f"ts more than {limits.max_future_ms // 1000} s after receive time",
        values,
    )


def _optional_number(
    problems: _Problems,
    objects: list[dict[str, object]],
    name: str,
    low: float,
    high: float,
    *,
    present: set[str],
    high_open: bool = False,
    integral: bool = False,
) -> NDArray[np.float64]:
    """Check an optional number field; NaN where absent."""
    if name not in present:  # no object of the chunk has it: nothing to look at
        return np.full(len(objects), np.nan)
    values = _field(objects, name)
    column, state = _numbers(values)
    problems.flag(state == _BAD, "out_of_range", f"{name} is not a number", values)
    with np.errstate(invalid="ignore"):
        outside = (column < low) | ((column >= high) if high_open else (column > high))
        if integral:
            outside |= column != np.floor(column)
    bound = f"[{low:g}, {high:g})" if high_open else f"[{low:g}, {high:g}]"
    problems.flag((state == _OK) & outside, "out_of_range", f"{name} outside {bound}", values)
    return column


def _optional_dword(
    problems: _Problems, objects: list[dict[str, object]], name: str, *, present: set[str]
) -> NDArray[np.int64]:
    if name not in present:
        return np.full(len(objects), -1, dtype=np.int64)
    values = _field(objects, name)
    column, state = _integers(values)
    problems.flag(state == _BAD, "out_of_range", f"{name} is not an integer", values)
    problems.flag(
        (state == _OK) & ((column < 0) | (column > _DWORD_MAX)),
        "out_of_range",
        f"{name} outside [0, 2^32)",
        values,
    )
    return column


def _dead_rows(
    batch: _Batch,
    problems: _Problems,
    row_message: NDArray[np.intp],
    row_payload: list[bytes | None] | None = None,
    row_label: list[str] | None = None,
) -> None:
    """Turn every row with a problem into a dead letter."""
    for row in np.flatnonzero(problems.code).tolist():
        m = int(row_message[row])
        reason, detail = problems.describe(row)
        payload = batch.payloads[m]
        if row_payload is not None:
            own = row_payload[row]
            if own is not None:
                payload = own
        if row_label is not None and row_label[row]:
            detail = f"{row_label[row]}: {detail}"
        batch.dead.add(
            batch.received[m], batch.topics[m], payload, reason, detail, batch.device_ids[m]
        )


def _order(device_key: NDArray[np.int32], ts_ms: NDArray[np.int64]) -> tuple[NDArray[np.intp], int]:
    """Rows sorted by (device, ts) keeping the first arrival of each; and how many dropped."""
    order = np.lexsort((ts_ms, device_key))  # stable: equal keys keep arrival order
    if order.shape[0] < 2:
        return order, 0
    sorted_key = device_key[order]
    sorted_ts = ts_ms[order]
    same = (sorted_key[1:] == sorted_key[:-1]) & (sorted_ts[1:] == sorted_ts[:-1])
    if not same.any():
        return order, 0
    keep = np.r_[True, ~same]
    return order[keep], int(same.sum())


# ------------------------------------------------------------------ channels


def _decode_gps(batch: _Batch, documents: list[object], messages: list[int]) -> GpsColumns:
    limits = batch.limits
    fixes: list[object] = []
    fix_message: list[int] = []
    fix_backfill: list[bool] = []
    fix_position: list[int] = []
    for document, m in zip(documents, messages, strict=True):
        assert type(document) is dict
        if "fixes" not in document:
            fixes.append(document)
            fix_message.append(m)
            fix_backfill.append(False)
            fix_position.append(-1)
            continue
        listed = document["fixes"]
        backfill = document.get("backfill", False)
        problem = None
        if type(listed) is not list:
            problem = ("out_of_range", "fixes is not a list")
        elif not listed:
            problem = ("missing_field", "fixes is empty")
        elif len(listed) > limits.max_batch_fixes:
            problem = (
                "out_of_range",
                f"{len(listed)} fixes in one batch > {limits.max_batch_fixes}",
            )
        elif backfill is not None and type(backfill) is not bool:
            problem = ("out_of_range", "backfill is not a boolean")
        if problem is not None:
            batch.dead.add(
                batch.received[m],
                batch.topics[m],
                batch.payloads[m],
                problem[0],
                problem[1],
                batch.device_ids[m],
            )
            continue
        count = len(listed)
        fixes.extend(listed)
        fix_message.extend([m] * count)
        fix_backfill.extend([bool(backfill)] * count)
        fix_position.extend(range(count))
    rows = len(fixes)
    if rows == 0:
        return GpsColumns.empty()
    row_message = np.array(fix_message, dtype=np.intp)
    problems = _Problems(rows)
    objects: list[dict[str, object]]
    if set(map(type, fixes)) == {dict}:
        objects = fixes  # type: ignore[assignment]
    else:
        not_object = np.fromiter((type(f) is not dict for f in fixes), bool, rows)
        problems.flag(not_object, "out_of_range", "fix is not a JSON object")
        objects = [f if type(f) is dict else {} for f in fixes]
    received_ms = batch.received_ms[row_message]
    ts_values = _field(objects, "ts")
    lat_values = _field(objects, "lat")
    lon_values = _field(objects, "lon")
    ts_ms, ts_state = _timestamps(ts_values)
    lat, lat_state = _numbers(lat_values)
    lon, lon_state = _numbers(lon_values)
    problems.flag(ts_state == _MISSING, "missing_field", "ts is required")
    problems.flag(lat_state == _MISSING, "missing_field", "lat is required")
    problems.flag(lon_state == _MISSING, "missing_field", "lon is required")
    _check_ts(problems, ts_values, ts_ms, ts_state, received_ms, limits)
    problems.flag(lat_state == _BAD, "out_of_range", "lat is not a number", lat_values)
    problems.flag(lon_state == _BAD, "out_of_range", "lon is not a number", lon_values)
    problems.flag(np.abs(lat) > 90, "out_of_range", "lat outside [-90, 90]", lat_values)
    problems.flag(np.abs(lon) > 180, "out_of_range", "lon outside [-180, 180]", lon_values)
    problems.flag((lat == 0) & (lon == 0), "out_of_range", "position is (0, 0)")
    # The fields any fix of the chunk has (devices tend to send the same ones).
    present: set[str] = set().union(*objects)
    speed = _optional_number(problems, objects, "speed", 0.0, limits.max_speed_kmh, present=present)
    heading = _optional_number(
        problems, objects, "heading", 0.0, 360.0, present=present, high_open=True
    )
    alt = _optional_number(problems, objects, "alt", -100_000.0, 100_000.0, present=present)
    sats = _optional_number(problems, objects, "sats", 0.0, 255.0, present=present, integral=True)
    hdop = _optional_number(problems, objects, "hdop", 0.0, 1000.0, present=present)
    seq = _optional_dword(problems, objects, "seq", present=present)
    alarm = _optional_dword(problems, objects, "alarm", present=present)
    status = _optional_dword(problems, objects, "status", present=present)
    good = problems.ok()
    if not good.all():
        # A bad fix of a batch is stored alone, not with the whole batch.
        row_payload: list[bytes | None] = [
            orjson.dumps(f) if bad and p >= 0 else None
            for f, p, bad in zip(fixes, fix_position, (~good).tolist(), strict=True)
        ]
        labels = [f"fixes[{p}]" if p >= 0 else "" for p in fix_position]
        _dead_rows(batch, problems, row_message, row_payload, labels)
    chosen = np.flatnonzero(good)
    return GpsColumns(
        device_key=batch.keys[row_message[chosen]],
        ts_ms=ts_ms[chosen],
        received_ms=received_ms[chosen],
        lat=lat[chosen],
        lon=lon[chosen],
        speed_kmh=speed[chosen].astype(np.float32),
        heading_deg=heading[chosen].astype(np.float32),
        alt_m=alt[chosen].astype(np.float32),
        sats=np.nan_to_num(sats[chosen], nan=-1.0).astype(np.int16),
        hdop=hdop[chosen].astype(np.float32),
        seq=seq[chosen],
        alarm=alarm[chosen],
        status=status[chosen],
        backfill=np.array(fix_backfill, dtype=np.bool_)[chosen],
        new=np.ones(chosen.shape[0], dtype=np.bool_),
    )


@dataclass(frozen=True, slots=True)
class _Rows:
    """The start of a single-reading channel: required fields checked, ``ts`` parsed."""

    objects: list[dict[str, object]]
    row_message: NDArray[np.intp]
    problems: _Problems
    ts_ms: NDArray[np.int64]
    received_ms: NDArray[np.int64]
    #: Codes of the required text field (``state``, ``event``), -1 where unusable.
    text: NDArray[np.int64]


def _channel_rows(
    batch: _Batch,
    documents: list[object],
    messages: list[int],
    text: tuple[str, Mapping[str, int]] | None = None,
) -> _Rows:
    """Missing fields first, then ``ts``, then the required text field's value."""
    objects: list[dict[str, object]] = documents  # type: ignore[assignment]
    row_message = np.array(messages, dtype=np.intp)
    problems = _Problems(len(objects))
    received_ms = batch.received_ms[row_message]
    ts_values = _field(objects, "ts")
    ts_ms, ts_state = _timestamps(ts_values)
    problems.flag(ts_state == _MISSING, "missing_field", "ts is required")
    codes = np.zeros(0, dtype=np.int64)
    text_values: list[object] = []
    if text is not None:
        name, vocabulary = text
        text_values = _field(objects, name)
        codes = np.fromiter(
            (vocabulary.get(v, -1) if type(v) is str else -1 for v in text_values),
            np.int64,
            len(text_values),
        )
        missing = np.fromiter((v is None for v in text_values), bool, len(text_values))
        problems.flag(missing, "missing_field", f"{name} is required")
    _check_ts(problems, ts_values, ts_ms, ts_state, received_ms, batch.limits)
    if text is not None:
        name, vocabulary = text
        problems.flag(
            codes < 0, "out_of_range", f"{name} must be one of {', '.join(vocabulary)}", text_values
        )
    return _Rows(objects, row_message, problems, ts_ms, received_ms, codes)


def _finish(batch: _Batch, rows: _Rows) -> tuple[NDArray[np.intp], NDArray[np.int32]]:
    """Dead-letter the bad rows; return the kept rows and their device keys."""
    good = rows.problems.ok()
    if not good.all():
        _dead_rows(batch, rows.problems, rows.row_message)
    chosen = np.flatnonzero(good)
    return chosen, batch.keys[rows.row_message[chosen]]


def _decode_heartbeat(
    batch: _Batch, documents: list[object], messages: list[int]
) -> HeartbeatColumns:
    rows = _channel_rows(batch, documents, messages)
    present: set[str] = set().union(*rows.objects)
    battery = _optional_number(rows.problems, rows.objects, "battery", 0.0, 100.0, present=present)
    rssi = _optional_number(rows.problems, rows.objects, "rssi", -200.0, 0.0, present=present)
    chosen, device_key = _finish(batch, rows)
    return HeartbeatColumns(
        device_key=device_key,
        ts_ms=rows.ts_ms[chosen],
        received_ms=rows.received_ms[chosen],
        battery_pct=battery[chosen].astype(np.float32),
        rssi_dbm=rssi[chosen].astype(np.float32),
        new=np.ones(chosen.shape[0], dtype=np.bool_),
    )


def _decode_smoke(batch: _Batch, documents: list[object], messages: list[int]) -> SmokeColumns:
    rows = _channel_rows(batch, documents, messages, ("state", _SMOKE_CODE))
    present: set[str] = set().union(*rows.objects)
    obscuration = _optional_number(
        rows.problems, rows.objects, "obscuration", 0.0, 100.0, present=present
    )
    battery = _optional_number(rows.problems, rows.objects, "battery", 0.0, 100.0, present=present)
    chosen, device_key = _finish(batch, rows)
    return SmokeColumns(
        device_key=device_key,
        ts_ms=rows.ts_ms[chosen],
        received_ms=rows.received_ms[chosen],
        state=np.array(SMOKE_STATES, dtype="<U7")[rows.text[chosen]],
        obscuration=obscuration[chosen].astype(np.float32),
        battery_pct=battery[chosen].astype(np.float32),
        new=np.ones(chosen.shape[0], dtype=np.bool_),
    )


def _decode_button(batch: _Batch, documents: list[object], messages: list[int]) -> ButtonColumns:
    rows = _channel_rows(batch, documents, messages, ("event", _BUTTON_CODE))
    chosen, device_key = _finish(batch, rows)
    return ButtonColumns(
        device_key=device_key,
        ts_ms=rows.ts_ms[chosen],
        received_ms=rows.received_ms[chosen],
        event=np.array(BUTTON_EVENTS, dtype="<U7")[rows.text[chosen]],
        new=np.ones(chosen.shape[0], dtype=np.bool_),
    )


_DECODERS: Final[dict[str, Any]] = {
    "gps": _decode_gps,
    "heartbeat": _decode_heartbeat,
    "smoke": _decode_smoke,
    "button": _decode_button,
}
