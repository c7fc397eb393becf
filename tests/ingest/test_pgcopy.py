"""Binary COPY encoding read back from PostgreSQL (values, NULLs, texts, layouts)."""

from __future__ import annotations

import asyncpg
import numpy as np

from ingest._pgcopy import CopyColumn, encode_copy

ROWS = 7


async def copy_and_read(database_url: str, columns: list[CopyColumn], rows: int) -> list[tuple]:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "CREATE TEMP TABLE t (i int4, small int2, big int8, r float4, d float8, b bool,"
            " at timestamptz, label text)"
        )
        await conn.copy_to_table(
            "t",
            source=encode_copy(columns, rows),  # type: ignore[arg-type]  # stubs lag asyncpg
            columns=[c.name for c in columns],
            format="binary",
        )
        records = await conn.fetch(
            "SELECT i, small, big, r, d, b, (extract(epoch FROM at) * 1000)::int8, label"
            " FROM t ORDER BY i"
        )
        return [tuple(r) for r in records]
    finally:
        await conn.close()


def columns(null_every: int) -> list[CopyColumn]:
    i = np.arange(ROWS)
    null = (i % null_every == 0) if null_every else None
    return [
        CopyColumn("i", "int4", i.astype(np.int32)),
        CopyColumn("small", "int2", (i - 3).astype(np.int16), null),
        CopyColumn("big", "int8", (i * 2**40).astype(np.int64), null),
        CopyColumn("r", "float4", (i / 4).astype(np.float32), null),
        CopyColumn("d", "float8", i * 1.5 - 2, null),
        CopyColumn("b", "bool", i % 2 == 0),
        CopyColumn("at", "timestamptz", 1_795_000_000_000 + i * 1001, null),
        CopyColumn("label", "text", i % 3, null, vocab=("smoke", "button", "是")),
    ]


async def test_values_survive_the_round_trip(database_url: str) -> None:
    got = await copy_and_read(database_url, columns(0), ROWS)
    expected = [
        (
            i,
            i - 3,
            i * 2**40,
            i / 4,
            i * 1.5 - 2,
            i % 2 == 0,
            1_795_000_000_000 + i * 1001,
            ("smoke", "button", "是")[i % 3],
        )
        for i in range(ROWS)
    ]
    assert got == expected


async def test_rows_with_nulls_and_different_texts_keep_their_values(database_url: str) -> None:
    got = await copy_and_read(database_url, columns(3), ROWS)
    for i, row in enumerate(got):
        assert row[0] == i
        if i % 3 == 0:
            assert row[1:5] == (None, None, None, None) and row[6:] == (None, None)
        else:
            assert row[1:5] == (i - 3, i * 2**40, i / 4, i * 1.5 - 2)
            assert row[6] == 1_795_000_000_000 + i * 1001
            assert row[7] == ("smoke", "button", "是")[i % 3]
        assert row[5] == (i % 2 == 0)


async def test_no_rows(database_url: str) -> None:
    assert await copy_and_read(database_url, columns(0), 0) == []
