"""Rows of an in-memory Arrow table by position, read straight from its buffers.

A query fetches the metadata of its k hits. Arrow's ``take`` + ``to_pylist`` costs a
fixed ~140 µs for 10 rows however small the table, which was a quarter of a
single query's time on an IVF shard (benchmarks/search.py). Reading the few wanted
values from zero-copy numpy views over the column buffers costs ~50 µs and no memory:
the views share the table's buffers. Columns of a type the views do not cover fall
back to Arrow, so every column still reads the same values ``to_pylist`` gives.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

Reader = Callable[[np.ndarray], list]
_NUMBERS = {pa.int32(): np.int32, pa.int64(): np.int64, pa.float64(): np.float64}


class RowReader:
    """Row dicts of a table, as ``to_pylist`` gives them."""

    def __init__(self, table: pa.Table, names: Sequence[str] | None = None) -> None:
        """``table``: immutable while this reader lives (its buffers are viewed, not copied);
        ``names``: the columns of a row, in order (default: the table's; those the table lacks are null)."""
        self._blank = dict.fromkeys(names if names is not None else table.column_names)
        self._filled = [
            name for name in self._blank if name in table.column_names and table.column(name).null_count < len(table)
        ]
        self._readers = [_column_reader(table.column(name)) for name in self._filled]

    def __call__(self, positions: np.ndarray) -> list[dict]:
        """The rows at ``positions`` (row numbers), in that order."""
        positions = np.asarray(positions, dtype=np.int64)
        columns = [read(positions) for read in self._readers]
        return [self._blank | dict(zip(self._filled, values)) for values in zip(*columns)]


def _column_reader(column: pa.ChunkedArray) -> Reader:
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    values = _values_reader(array)
    if values is None:
        return lambda positions: array.take(pa.array(positions, pa.int64())).to_pylist()
    if array.null_count == 0:
        return values
    valid = np.frombuffer(array.buffers()[0], np.uint8)
    offset = array.offset

    def with_nulls(positions: np.ndarray) -> list:
        bit = positions + offset
        present = ((valid[bit >> 3] >> (bit & 7).astype(np.uint8)) & 1).astype(bool).tolist()
        return [value if ok else None for value, ok in zip(values(positions), present)]

    return with_nulls


def _values_reader(array: pa.Array) -> Reader | None:
    """Values at positions, nulls read as whatever the slot holds (``None``: no view for this type)."""
    kind = array.type
    buffers = array.buffers()
    if pa.types.is_string(kind):
        offsets = np.frombuffer(buffers[1], np.int32)[array.offset : array.offset + len(array) + 1]
        data = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")

        def strings(positions: np.ndarray) -> list:
            starts, ends = offsets[positions].tolist(), offsets[positions + 1].tolist()
            return [str(data[start:end], "utf-8") for start, end in zip(starts, ends)]

        return strings
    if kind in _NUMBERS:
        numbers = np.frombuffer(buffers[1], _NUMBERS[kind])[array.offset : array.offset + len(array)]
        return lambda positions: numbers[positions].tolist()
    if pa.types.is_timestamp(kind) and kind.unit in ("s", "us"):
        ticks = np.frombuffer(buffers[1], np.int64)[array.offset : array.offset + len(array)]
        unit = f"datetime64[{kind.unit}]"
        if kind.tz is None:
            return lambda positions: ticks[positions].astype(unit).tolist()
        if kind.tz not in ("UTC", "+00:00"):
            return None  # Arrow converts to the zone's local time
        zone = pa.scalar(0, kind).as_py().tzinfo  # the very tzinfo Arrow's as_py attaches
        return lambda positions: [moment.replace(tzinfo=zone) for moment in ticks[positions].astype(unit).tolist()]
    return None


class RowsOnDemand(Mapping[int, dict]):
    """Rows keyed by id, read all together the first time any of them is wanted.

    A query's hits share one: a search that only needs ids and scores (a search product
    joining on its own ids, a benchmark) never builds a row, as Lucene loads stored fields
    only for the documents a caller reads. Once read, the reader (and the generation's
    catalog it holds) is let go.
    """

    def __init__(self, read: Callable[[], dict[int, dict]]) -> None:
        self._read: Callable[[], dict[int, dict]] | None = read
        self._rows: dict[int, dict] | None = None
        self._lock = threading.Lock()

    def _all(self) -> dict[int, dict]:
        if self._rows is None:
            with self._lock:
                if self._rows is None and self._read is not None:
                    self._rows, self._read = self._read(), None
        return self._rows if self._rows is not None else {}

    def __getitem__(self, item_id: int) -> dict:
        return self._all()[item_id]

    def __reduce__(self) -> tuple:
        """Pickled and copied as the plain dict of its rows (its lock and reader stay behind)."""
        return dict, (self._all(),)

    def __iter__(self) -> Iterator[int]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())
