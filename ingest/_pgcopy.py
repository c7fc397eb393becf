"""PostgreSQL binary COPY encoding straight from NumPy columns.

A binary COPY row is a 16-bit field count followed, per field, by a 32-bit
length (-1 for NULL) and the value in network byte order. Rows whose NULLs
and text values are the same have the same layout, so each such group is one
NumPy structured array written with ``tobytes()``: no per-row Python work.
Typical batches have one or two groups (devices send the same fields).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = ["PG_EPOCH_MS", "CopyColumn", "encode_copy"]

#: 2000-01-01T00:00:00Z, PostgreSQL's timestamp epoch, in Unix milliseconds.
PG_EPOCH_MS: Final = 946_684_800_000
_HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags 0, no extension
_TRAILER: Final = b"\xff\xff"

PgType = Literal["int2", "int4", "int8", "float4", "float8", "bool", "timestamptz", "text"]
_WIRE: Final[dict[str, str]] = {
    "int2": ">i2",
    "int4": ">i4",
    "int8": ">i8",
    "float4": ">f4",
    "float8": ">f8",
    "bool": "?",
    "timestamptz": ">i8",
}


@dataclass(frozen=True, slots=True)
class CopyColumn:
    """One column to COPY.

    ``values`` holds the values (``timestamptz``: epoch milliseconds; ``text``:
    indices into ``vocab``); ``null`` marks NULLs, whose values are ignored.
    """

    name: str
    pgtype: PgType
    values: NDArray[np.generic]
    null: NDArray[np.bool_] | None = None
    vocab: tuple[str, ...] = ()


def encode_copy(columns: Sequence[CopyColumn], rows: int) -> memoryview:
    """Encode ``rows`` rows as one binary COPY stream (header to trailer).

    A memoryview, not bytes: asyncpg would take ``bytes`` for a file path.
    """
    if rows == 0:
        return memoryview(_HEADER + _TRAILER)
    group_id = np.zeros(rows, dtype=np.int64)
    radix = 1
    for column in columns:
        if column.pgtype == "text":
            group_id += column.values.astype(np.int64) * radix
            radix *= max(len(column.vocab), 1)
        if column.null is not None:
            group_id += column.null.astype(np.int64) * radix
            radix *= 2
    parts = [_HEADER]
    if radix == 1 or bool((group_id == group_id[0]).all()):
        parts.append(_encode_group(columns, np.arange(rows)))
    else:
        order = np.argsort(group_id, kind="stable")
        sorted_ids = group_id[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        ends = np.r_[starts[1:], rows]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            parts.append(_encode_group(columns, order[start:end]))
    parts.append(_TRAILER)
    return memoryview(b"".join(parts))


def _encode_group(columns: Sequence[CopyColumn], rows: NDArray[np.intp]) -> bytes:
    """Encode rows that share one layout (the first row decides NULLs and texts)."""
    first = int(rows[0])
    layout: list[tuple[str, str]] = [("count", ">i2")]
    fills: list[tuple[str, int, NDArray[np.generic] | bytes | None]] = []
    for i, column in enumerate(columns):
        length_field = f"l{i}"
        layout.append((length_field, ">i4"))
        if column.null is not None and bool(column.null[first]):
            fills.append((length_field, -1, None))
            continue
        value_field = f"v{i}"
        if column.pgtype == "text":
            encoded = column.vocab[int(column.values[first])].encode()
            layout.append((value_field, f"S{len(encoded)}" if encoded else "V0"))
            fills.append((length_field, len(encoded), None))
            if encoded:
                fills.append((value_field, 0, encoded))
            continue
        wire = _WIRE[column.pgtype]
        layout.append((value_field, wire))
        fills.append((length_field, np.dtype(wire).itemsize, None))
        values = column.values[rows]
        if column.pgtype == "timestamptz":
            values = (values.astype(np.int64) - PG_EPOCH_MS) * 1000
        fills.append((value_field, 0, values))
    record = np.empty(rows.shape[0], dtype=np.dtype(layout))
    record["count"] = len(columns)
    for field, length, data in fills:
        record[field] = length if data is None else data
    return record.tobytes()
