"""The row reader against Arrow's own ``take`` + ``to_pylist`` on synthetic tables."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from mmsearch.store.rows import RowReader, RowsOnDemand


def table(n: int = 50) -> pa.Table:
    rng = np.random.default_rng(3)
    gaps = [None if i % 4 == 0 else i for i in range(n)]
    return pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64) * 7),
            "path": pa.array([f"/photos/é/{i}.jpg" if i % 5 else "" for i in range(n)]),
            "camera": pa.array([None if v is None else f"cam {v}" for v in gaps]),
            "width": pa.array(gaps, pa.int32()),
            "score": pa.array(rng.standard_normal(n)),
            "mtime": pa.array(rng.integers(0, 10**15, n), pa.timestamp("us", tz="UTC")),
            "taken_at": pa.array([None if v is None else v * 86_400 for v in gaps], pa.timestamp("s")),
            "local": pa.array(rng.integers(0, 10**12, n), pa.timestamp("ms", tz="Europe/Paris")),
            "flag": pa.array([i % 3 == 0 for i in range(n)]),
            "empty": pa.nulls(n, pa.string()),
        }
    )


@pytest.mark.parametrize("sliced", [False, True])
def test_rows_equal_arrow_to_pylist(sliced: bool) -> None:
    data = table().slice(7, 30) if sliced else table()  # a slice has buffer offsets to honour
    positions = np.array([0, 5, 4, 29, 12, 12, 8])
    got = RowReader(data)(positions)
    assert got == data.take(pa.array(positions)).to_pylist()
    assert [list(row) for row in got] == [data.column_names] * len(positions)
    dated = next(row for row in got if row["taken_at"] is not None)
    assert dated["mtime"].tzinfo is not None and dated["taken_at"].tzinfo is None


def test_more_chunks_and_names_beyond_the_table() -> None:
    data = pa.concat_tables([table(10), table(15)])  # two chunks per column
    reader = RowReader(data, ["id", "path", "missing", "width"])
    got = reader(np.array([14, 3]))
    want = data.take(pa.array([14, 3])).select(["id", "path", "width"]).to_pylist()
    assert got == [{"id": w["id"], "path": w["path"], "missing": None, "width": w["width"]} for w in want]
    assert list(got[0]) == ["id", "path", "missing", "width"]


def test_timestamps_keep_their_zone() -> None:
    moment = dt.datetime(2026, 11, 26, 23, 0, tzinfo=dt.timezone.utc)
    data = pa.table({"at": pa.array([moment], pa.timestamp("us", tz="UTC"))})
    assert RowReader(data)(np.array([0]))[0]["at"] == moment


def test_rows_on_demand_read_once_when_first_wanted_then_let_the_reader_go() -> None:
    reads: list[int] = []

    def read() -> dict[int, dict]:
        reads.append(1)
        return {7: {"id": 7, "path": "a"}, 9: {"id": 9, "path": "b"}}

    rows = RowsOnDemand(read)
    assert reads == []
    assert rows[9]["path"] == "b" and rows[7]["path"] == "a" and sorted(rows) == [7, 9] and len(rows) == 2
    assert reads == [1]
    assert rows._read is None  # the generation's catalog it closed over can be freed
